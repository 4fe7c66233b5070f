"""The greedy chaining of the runner, without Ray: what a stage's trials share, and how a winner is picked."""

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.plan.trials import stage_base
from fsd.tuning.search.stage import StageFailed, pick_winner
from search_spaces import get_schedule


def _result(config, scores, error=None):
    df = pd.DataFrame({"eval/score": scores})
    ckpt = SimpleNamespace(path=f"/ckpt/{config}")
    return SimpleNamespace(error=error, metrics_dataframe=df, config=config,
                           get_best_checkpoint=lambda metric, mode: ckpt)


def test_winner_is_the_best_epoch_mean_over_seeds_and_survives_json_lists():
    results = [
        _result({"beta": 1.0, "gamma_i+gamma_l": [0.1, 0.9], "seed": 1}, [0.5, 0.7]),
        _result({"beta": 1.0, "gamma_i+gamma_l": [0.1, 0.9], "seed": 2}, [0.5]),
        _result({"beta": 2.0, "gamma_i+gamma_l": [0.5, 0.5], "seed": 1}, [0.65]),
        _result({"beta": 2.0, "gamma_i+gamma_l": [0.5, 0.5], "seed": 2}, [0.61]),
        _result({"beta": 3.0, "gamma_i+gamma_l": [0.9, 0.1], "seed": 1}, [0.9], error=RuntimeError("crash")),
    ]
    point, score, _ = pick_winner(results, {"beta": (1.0, 2.0, 3.0), "gamma_i+gamma_l": ((0.1, 0.9),)})
    assert point == {"beta": 2.0, "gamma_i+gamma_l": (0.5, 0.5)}  # mean 0.63 beats mean 0.6; failed trial ignored
    assert score == pytest.approx(0.63)


def test_a_stage_where_every_trial_failed_names_the_cause():
    wrapped = RuntimeError("ray::ImplicitFunc.train()\n  File x, line 3\nOSError: no model.safetensors in /s\n")
    failed = [_result({"beta": 1.0}, [0.5], error=wrapped), _result({"beta": 2.0}, [0.5], error=ValueError("y"))]
    with pytest.raises(StageFailed, match="all 2 trial.s. of the stage failed; first error: OSError: no model."
                                          "safetensors in /s .*--resume"):
        pick_winner(failed, {"beta": (1.0, 2.0)})


def test_out_of_memory_says_how_to_pack_fewer_trials(monkeypatch):
    from fsd.tuning.search import trainable

    assert "--gpus-per-trial 0.5" in trainable.out_of_memory_message(0.25, 32)
    assert "4 trials per GPU" in trainable.out_of_memory_message(0.25, 32)
    assert "lower batch_size (16)" in trainable.out_of_memory_message(1.0, 16)

    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield

    monkeypatch.setattr(trainable, "distill", oom)
    monkeypatch.setattr(trainable.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(trainable, "_gpu_share", lambda: 0.25)
    with pytest.raises(trainable.TrialOutOfMemory, match="pack fewer with --gpus-per-trial 0.5"):
        trainable.train_trial({"alpha": 0.5}, {"task": "rte", "teacher": "t"})


def test_stage_base_takes_inherited_winners_fixed_values_and_the_budget():
    schedule = get_schedule("fsd", "rte", "smoke")
    spec = SearchSpec(task="rte", method="fsd", storage="/s", mlflow_uri="", teacher="t", student_layers=3)
    winners = {"vkd": {"alpha": 0.7, "temperature": 5.0, "epochs": 4, "lr": 2e-5},
               "fsdg-coarse": {"gamma_g": 1e-4, "lam": 0.1}}
    base = stage_base(spec, schedule, schedule.stage("fsdg-refine-g"), "/teacher", winners)
    assert base["alpha"] == 0.7 and base["temperature"] == 5.0 and base["lr"] == 2e-5 and base["lam"] == 0.1
    assert base["beta"] == 1.0 and base["method"] == "fsdg" and base["teacher"] == "/teacher"
    assert base["epochs"] == 1 and base["max_train_samples"] == 64 and base["memory_size"] == 8  # smoke budget


def test_students_start_from_the_teachers_backbone_even_given_a_fine_tuned_teacher(tmp_path):
    """--teacher <a fine-tuned folder> without --student-init: trials start from the backbone that teacher was
    fine-tuned from, not from the teacher's own fine-tuned layers; --student-init still wins."""
    from fsd.config import DistillConfig
    from fsd.models import TEACHER_META
    from fsd.train import student_backbone

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / TEACHER_META).write_text('{"task": "rte", "backbone": "packaged-minilm"}')
    schedule = get_schedule("vkd", "rte", "smoke")
    for init, expected in ((None, "packaged-minilm"), ("/my/bert", "/my/bert")):
        spec = SearchSpec(task="rte", method="vkd", storage="/s", mlflow_uri="", teacher=str(teacher),
                          student_init=init, student_layers=3)
        base = stage_base(spec, schedule, schedule.stage("vkd"), str(teacher), {})
        assert student_backbone(DistillConfig.from_dict({**base, "alpha": 0.5})) == expected


def test_set_values_reach_every_trial_but_grid_winners_and_fixed_values_win():
    schedule = get_schedule("fsd", "rte", "smoke")
    spec = SearchSpec(task="rte", method="fsd", storage="/s", mlflow_uri="", teacher="t",
                      extra={"lr": 3e-5, "alpha": 0.9, "batch_size": 16, "beta": 7.0, "epochs": 2})
    base = stage_base(spec, schedule, schedule.stage("vkd"), "/teacher", {})
    assert base["batch_size"] == 16 and base["lr"] == 3e-5 and base["epochs"] == 2  # --set beats the budget
    assert {**base, **{"alpha": 0.2}}["alpha"] == 0.2  # train_trial puts the grid point on top
    winners = {"vkd": {"alpha": 0.7, "temperature": 5.0, "epochs": 2, "lr": 2e-5}}
    later = stage_base(spec, schedule, schedule.stage("fsdg-coarse"), "/teacher", winners)
    assert later["alpha"] == 0.7 and later["lr"] == 2e-5  # an earlier stage's winner beats --set
    assert later["beta"] == 1.0  # so does the stage's fixed value
    assert later["batch_size"] == 16 and later["max_train_samples"] == 64  # the rest: --set, then the budget


def test_ties_go_by_the_rule_not_by_the_order_of_results():
    """Equal means: the point nearest the previous stage's winner, then the values' order; a restored
    experiment may list its trials in another order, and the grid's first point has no say."""
    a = _result({"alpha": 0.2}, [0.5])
    b = _result({"alpha": 0.7}, [0.5])
    a.metrics, b.metrics = {"trial_id": "ab12c_00000"}, {"trial_id": "ab12c_00001"}
    for order in ([a, b], [b, a]):
        assert pick_winner(order, {"alpha": (0.2, 0.7)})[0] == {"alpha": 0.2}
        assert pick_winner(order, {"alpha": (0.2, 0.7)}, reference={"alpha": 0.6})[0] == {"alpha": 0.7}


def test_a_points_checkpoint_among_tied_seeds_is_not_the_order_of_results():
    """The chaos soak found it: a resumed stage listed a re-run trial first, and the winner's student came from
    another seed than in the undisturbed run (same scores). Tied seeds: the lowest seed's checkpoint."""
    runs = [_result({"alpha": 0.2, "seed": s}, [0.5]) for s in (42, 43, 44)]
    for order in (runs, runs[::-1], runs[1:] + runs[:1]):
        assert pick_winner(order, {"alpha": (0.2,)})[2] == "/ckpt/{'alpha': 0.2, 'seed': 42}"
    better = _result({"alpha": 0.2, "seed": 44}, [0.75])
    assert pick_winner([*runs[:2], better], {"alpha": (0.2,)})[2] == "/ckpt/{'alpha': 0.2, 'seed': 44}"


def _rung_result(config, samples, scores, budget=400, trial_id="t"):
    df = pd.DataFrame({"eval/score": scores, "progress/samples": samples, "progress/budget": [budget] * len(scores)})
    r = _result(config, scores)
    r.metrics_dataframe, r.metrics = df, {"trial_id": trial_id}
    return r


def test_a_trial_stopped_at_a_rung_never_wins_even_with_the_best_score():
    """Halving: the stopped trial's rung score (0.9) is not comparable with a final score; the winner is the
    best of the trials that reached their budget, each ranked by its best evaluation."""
    stopped = _rung_result({"alpha": 0.2}, [100], [0.9], trial_id="a_00000")
    full = _rung_result({"alpha": 0.5}, [100, 200, 300, 400], [0.5, 0.7, 0.65, 0.6], trial_id="a_00001")
    other = _rung_result({"alpha": 0.7}, [100, 200, 300, 400], [0.6, 0.62, 0.64, 0.66], trial_id="a_00002")
    point, score, _ = pick_winner([stopped, full, other], {"alpha": (0.2, 0.5, 0.7)})
    assert point == {"alpha": 0.5} and score == pytest.approx(0.7)
    # a trial with a smaller budget (fewer epochs in the grid) that reached it is a candidate
    short = _rung_result({"alpha": 0.2}, [100, 200], [0.5, 0.8], budget=200, trial_id="a_00000")
    assert pick_winner([short, full], {"alpha": (0.2, 0.5)})[0] == {"alpha": 0.2}
    with pytest.raises(StageFailed, match="no trial reported a dev score at its full budget"):
        pick_winner([stopped], {"alpha": (0.2,)})


def test_optuna_samples_of_a_joint_key_are_points_like_grid_tuples():
    r = _rung_result({"gamma_i+gamma_l": "0.1|0.9"}, [400], [0.6])
    assert pick_winner([r], {"gamma_i+gamma_l": ((0.1, 0.9),)})[0] == {"gamma_i+gamma_l": (0.1, 0.9)}


def test_summary_shows_teacher_floor_and_both_scores_of_a_holdout_search(tmp_path):
    import json

    from fsd.models import TEACHER_META
    from fsd.tuning.plan.ledger import Ledger
    from fsd.tuning.results.summary import summary_table

    teacher = tmp_path / "teacher" / "sst2-abc"
    teacher.mkdir(parents=True)
    (teacher / TEACHER_META).write_text(json.dumps({"task": "sst2", "dev": {"eval/score": 0.8131}}))
    ledger = Ledger(tmp_path / "sst2-vkd")
    ledger.data.update(search={"select_on": "holdout"}, teacher=str(teacher), majority={"eval/score": 0.5092})
    ledger.data["stages"]["vkd"] = {"status": "done", "score": 0.8, "dev": {"dev/score": 0.7821},
                                    "winner": {"alpha": 0.5, "temperature": 10.0, "lr": 2e-4}}
    lines = summary_table(ledger, get_schedule("vkd", "sst2", "cpu")).splitlines()
    assert lines[1] == "| stage | winner | holdout score | dev score | paper |" and lines[2] == "|---|---|---|---|---|"
    assert lines[3] == "| teacher | sst2-abc | - | 81.31 | 92.09 |"
    assert lines[4] == "| majority class | the most frequent training label | - | 50.92 | - |"
    assert lines[5] == "| vkd | alpha=0.5, temperature=10.0, lr=0.0002 | 80.00 | 78.21 | 90.92 |"
    ledger.data["search"] = {"select_on": "dev"}
    assert summary_table(ledger, get_schedule("vkd", "sst2", "cpu")).splitlines()[5] == (
        "| vkd | alpha=0.5, temperature=10.0, lr=0.0002 | 80.00 | 90.92 |")


def test_the_summary_says_why_a_refine_stage_was_skipped_and_points_to_the_results(tmp_path):
    from fsd.tuning.plan.ledger import Ledger
    from fsd.tuning.results.summary import pointers, summary_table

    schedule = get_schedule("fsd", "rte", "smoke")
    ledger = Ledger(tmp_path / "rte-fsd")
    winner = {"alpha": 0.5, "gamma_g": 0.0, "lam": 0.1}
    ledger.data["stages"].update({
        "fsdg-coarse": {"status": "done", "score": 0.6, "winner": winner, "samples": 640, "model_version": "1"},
        "fsdg-refine-g": {"status": "done", "score": 0.6, "winner": winner, "trials": 0},
        "vkd": {"status": "done", "score": 0.55, "winner": winner, "samples": 999, "reused_from": "abc"}})
    table = summary_table(ledger, schedule)
    assert ("| fsdg-refine-g | skipped: fsdg-coarse's winner has gamma_g = 0, nothing to refine; its winner kept |"
            in table)
    text = pointers(ledger, schedule, str(tmp_path), f"sqlite:///{tmp_path}/mlflow.db", 754.0)
    lines = text.splitlines()
    assert lines[0].startswith("best student (stage fsdg-coarse): models:/fsd-rte-fsd@fsdg_coarse ")
    assert lines[1] == f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db --port 5000"
    assert lines[2].startswith(f"report: python tune_main.py --task rte --storage {tmp_path} --report ")
    assert "wall time 12 min 34 s; students trained on 640 samples" in lines[4]  # the reused stage not counted


def test_a_cut_short_ray_experiment_state_is_set_aside_before_a_restore(tmp_path):
    from fsd.tuning.search.services import restorable

    exp = tmp_path / "rte-vkd"
    exp.mkdir()
    (exp / "tuner.pkl").write_bytes(b"")  # what Ray's can_restore looks for
    assert not restorable(str(exp))  # no experiment state: nothing to restore from
    (exp / "experiment_state-2026-12-01_10-00-00.json").write_text('{"trial_data": []}')
    (exp / "experiment_state-2026-12-02_10-00-00.json").write_text('{"trial_da')  # the newest, cut short
    assert restorable(str(exp))  # from the older session's state
    assert sorted(p.name for p in exp.iterdir()) == ["experiment_state-2026-12-01_10-00-00.json",
                                                     "experiment_state-2026-12-02_10-00-00.json.unreadable",
                                                     "tuner.pkl"]
    (exp / "experiment_state-2026-12-01_10-00-00.json").write_text("")  # empty: the disk was full
    assert not restorable(str(exp))  # nothing left to restore: the stage starts afresh


def test_a_skipped_refine_stage_keeps_the_coarse_winner_and_its_dev_score():
    """Ranked on a holdout, the coarse stage's winner was measured on dev once; the refine stage that keeps it
    shows that dev score too (it printed `its dev score -`)."""
    from fsd.tuning.plan.spec import SearchSpec
    from fsd.tuning.plan.winners import carried, choose, stage_record
    from fsd.tuning.search.stage import stage_line

    coarse = {"status": "done", "score": 0.7083, "dev": {"dev/score": 0.6702}, "winner": {"gamma_g": 0.0},
              "checkpoint": "/c", "trials": 2, "run_id": "r1"}
    refine = get_schedule("fsd", "stsb", "smoke").stage("fsdg-refine-g")
    kept = stage_record(choose(None, carried({"fsdg-coarse": coarse}, refine, None, {})), "fsdg-refine-g")
    assert kept == {"status": "done", "winner": {"gamma_g": 0.0}, "score": 0.7083, "checkpoint": "/c",
                    "dev": {"dev/score": 0.6702}, "carried_from": "fsdg-coarse", "trained_in": "fsdg-coarse"}
    spec = SearchSpec(task="stsb", method="fsd", storage="/s", mlflow_uri="", teacher="t", select_on="holdout",
                      holdout_rows=500)
    line = stage_line(spec, "fsdg-refine-g", kept)
    assert line == "stage fsdg-refine-g: best holdout score 70.83, its dev score 67.02"
    without = {k: v for k, v in coarse.items() if k != "dev"}  # ranked on dev: nothing more
    assert "dev" not in stage_record(choose(None, carried({"fsdg-coarse": without}, refine, None, {})), "x")


def test_an_experiment_pickled_by_an_earlier_version_is_set_aside_and_the_stage_runs_afresh(tmp_path,
                                                                                                console_lines):
    """Ray pickles an experiment's scheduler and callbacks by module path; after fsd-tune's modules moved, a
    stage interrupted under the old layout cannot be restored: it is set aside with one line, not a crash."""
    from ray import tune

    from fsd.tuning.plan.spec import SearchSpec
    from fsd.tuning.search.services import open_tuner

    exp = tmp_path / "rte-vkd"
    exp.mkdir()
    (exp / "tuner.pkl").write_bytes(b"cfsd.tuning.halving\nDurableASHA\n.")  # a class of the old flat layout
    (exp / "experiment_state-2026-12-01_10-00-00.json").write_text('{"trial_data": []}')
    spec = SearchSpec(task="rte", method="vkd", storage=str(tmp_path), mlflow_uri="", teacher="t")
    tuner = open_tuner(spec, str(tmp_path), "rte-vkd", lambda config: None, {"x": tune.grid_search([1])},
                       tune.TuneConfig(), [])
    assert isinstance(tuner, tune.Tuner)
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("rte-vkd.unrestorable-")]
    assert (aside / "tuner.pkl").is_file() and not list(exp.glob("experiment_state-*.json"))  # a fresh one
    assert "cannot be restored by this version of fsd-tune (ModuleNotFoundError" in console_lines[-1]

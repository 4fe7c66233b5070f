"""distill() on a tiny random BERT and real RTE/STS-B rows: metrics, checkpoints, resume, determinism."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import fsd.config as config_mod
import fsd.loop as loop_mod
import fsd.teacher_source as teacher_source_mod
import fsd.train as train_mod
from fsd.config import DistillConfig
from fsd.objectives import OBJECTIVES, Objective
from fsd.train import distill, export_student, load_checkpoint


def _config(tiny_bert, glue_dir, tmp_path, **kw):
    values = {"task": "rte", "teacher": tiny_bert, "student_layers": 2, "epochs": 2, "batch_size": 16,
              "max_train_samples": 48, "max_eval_samples": 32, "data_dir": glue_dir, "storage": str(tmp_path),
              "lr": 1e-3, "seed": 7, **kw}
    return DistillConfig.from_dict(values)


def _run(config, resume_from=None, save_to=None):
    out = []
    for report in distill(config, resume_from):
        out.append(report.metrics)
        if save_to is not None:
            report.save(save_to / f"epoch{report.epoch}")
    return out


def _no_time(m):
    """The metrics that must not depend on wall time or on where the run started."""
    return {k: v for k, v in m.items()
            if not k.startswith("time/") and k not in ("train/samples_per_s", "run/resumed_from")}


def test_metrics_per_epoch(tiny_bert, glue_dir, tmp_path):
    runs = _run(_config(tiny_bert, glue_dir, tmp_path))
    assert [m["epoch"] for m in runs] == [1, 2]
    for m in runs:
        assert {"eval/score", "eval/accuracy", "train/loss", "train/ce", "train/kd", "eval/best_score"} <= set(m)
        assert m["train/loss"] == pytest.approx(m["train/ce"] + m["train/kd"], rel=1e-5)
        assert 0.0 <= m["eval/score"] <= 1.0
    assert runs[1]["eval/best_score"] == max(m["eval/score"] for m in runs)


def test_same_seed_same_numbers_other_seed_other_numbers(tiny_bert, glue_dir, tmp_path):
    a = _run(_config(tiny_bert, glue_dir, tmp_path, epochs=1))
    b = _run(_config(tiny_bert, glue_dir, tmp_path, epochs=1))
    c = _run(_config(tiny_bert, glue_dir, tmp_path, epochs=1, seed=8))
    assert _no_time(a[0]) == _no_time(b[0])
    assert a[0]["train/loss"] != c[0]["train/loss"]


def test_resume_continues_exactly(tiny_bert, glue_dir, tmp_path):
    config = _config(tiny_bert, glue_dir, tmp_path)
    straight = _run(config, save_to=tmp_path / "a")
    first = []
    for report in distill(config):  # killed after its first epoch's checkpoint
        first.append(report.metrics)
        report.save(tmp_path / "b" / "epoch1")
        break
    resumed = _run(config, resume_from=tmp_path / "b" / "epoch1", save_to=tmp_path / "b")
    assert _no_time(first[0]) == _no_time(straight[0])
    assert [m["epoch"] for m in resumed] == [2]
    assert resumed[0]["run/resumed_from"] == 1 and straight[1]["run/resumed_from"] == 0
    assert _no_time(resumed[0]) == _no_time(straight[1])
    sa, sb = load_checkpoint(tmp_path / "a" / "epoch2"), load_checkpoint(tmp_path / "b" / "epoch2")
    for name, value in sa["student"].items():
        assert torch.equal(value, sb["student"][name]), name


def test_checkpoint_is_one_plain_dict_and_exports_a_plain_student(tiny_bert, glue_dir, tmp_path):
    config = _config(tiny_bert, glue_dir, tmp_path, epochs=1)
    _run(config, save_to=tmp_path / "ck")
    state = load_checkpoint(tmp_path / "ck" / "epoch1")
    assert set(state) == {"student", "objective", "optimizer", "scheduler", "epoch", "step", "samples", "best_score",
                          "config", "rng", "metrics"}
    assert state["metrics"]["eval/score"] == state["best_score"]  # the report it was saved with
    assert DistillConfig.from_dict(state["config"]) == config
    assert not list((tmp_path / "ck" / "epoch1").glob("*.tmp"))
    out = export_student(tmp_path / "ck" / "epoch1", tmp_path / "student")
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    assert torch.equal(model.classifier.weight, state["student"]["classifier.weight"])


def test_nokd_never_loads_the_teacher(tiny_bert, glue_dir, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("teacher loaded")

    monkeypatch.setattr(teacher_source_mod, "load_teacher", boom)
    (m,) = _run(_config(tiny_bert, glue_dir, tmp_path, epochs=1, method="nokd"))
    assert set(k for k in m if k.startswith("train/") and k != "train/samples_per_s") == {"train/loss", "train/ce"}


def test_regression_task(tiny_bert_regression, glue_dir, tmp_path):
    (m,) = _run(_config(tiny_bert_regression, glue_dir, tmp_path, task="stsb", epochs=1))
    assert {"eval/pearson", "eval/spearman", "eval/score"} <= set(m)
    assert m["train/kd"] > 0


class _NaN(Objective):
    def forward(self, s, t, batch):
        bad = s.logits.sum() * float("nan")
        return bad, {"ce": s.logits.sum(), "broken": bad}


def test_non_finite_loss_names_the_part_and_step(tiny_bert, glue_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "nan_test", _NaN)
    monkeypatch.setattr(config_mod, "METHODS", (*config_mod.METHODS, "nan_test"))
    with pytest.raises(FloatingPointError, match=r"epoch 0 step 0 \(parts: \['broken'\]\)"):
        _run(_config(tiny_bert, glue_dir, tmp_path, method="nan_test"))


def test_rungs_every_n_samples_and_at_the_end(tiny_bert, glue_dir, tmp_path):
    """48 rows, batches of 16, 2 epochs: an evaluation whenever the samples seen cross a multiple of
    eval_every, and one at the end of the budget whatever eval_every is."""
    runs = _run(_config(tiny_bert, glue_dir, tmp_path, eval_every=20))
    assert [m["progress/samples"] for m in runs] == [32, 48, 64, 80, 96]  # 20, 40, 60, 80 crossed, then the end
    assert {m["progress/budget"] for m in runs} == {96}
    assert [m["epoch"] for m in runs] == pytest.approx([32 / 48, 1, 64 / 48, 80 / 48, 2])
    assert runs[-1]["eval/best_score"] == max(m["eval/score"] for m in runs)
    every = _run(_config(tiny_bert, glue_dir, tmp_path, eval_every=16, epochs=1))
    assert [m["progress/samples"] for m in every] == [16, 32, 48]


def test_resume_from_a_rung_inside_an_epoch_continues_exactly(tiny_bert, glue_dir, tmp_path):
    config = _config(tiny_bert, glue_dir, tmp_path, eval_every=16)
    straight = _run(config)
    for report in distill(config):  # killed after the checkpoint of its first rung, a third into epoch 1
        report.save(tmp_path / "r")
        break
    state = load_checkpoint(tmp_path / "r")
    assert (state["epoch"], state["step"], state["samples"]) == (0, 1, 16)
    resumed = _run(config, resume_from=tmp_path / "r")
    assert [m["progress/samples"] for m in resumed] == [32, 48, 64, 80, 96]
    assert resumed[0]["run/resumed_from"] == pytest.approx(1 / 3)
    assert [_no_time(m) for m in resumed] == [_no_time(m) for m in straight[1:]]


def test_holdout_run_is_ranked_on_the_holdout_and_never_evaluates_dev(tiny_bert, glue_dir, tmp_path, monkeypatch):
    config = _config(tiny_bert, glue_dir, tmp_path, holdout_rows=40, epochs=1)
    evaluated = []
    real = loop_mod.predict
    monkeypatch.setattr(loop_mod, "predict", lambda m, b, d: evaluated.append(b.num_examples) or real(m, b, d))
    reports = []
    for report in distill(config):
        reports.append(report.metrics)
        report.save(tmp_path / "ckpt")
    assert [m["eval/rows"] for m in reports] == [40.0] and evaluated == [40]  # only the holdout, once
    dev = train_mod.evaluate_on_dev(tmp_path / "ckpt")
    assert dev["dev/rows"] == 32.0 and evaluated == [40, 32]
    assert set(dev) >= {"dev/score", "dev/accuracy"} and not any(k.startswith("eval") for k in dev)
    # The 48 training rows are not the plain run's: the holdout left the training split first.
    plain = distill(_config(tiny_bert, glue_dir, tmp_path, epochs=1))
    assert next(plain).metrics["train/loss"] != reports[0]["train/loss"]


def test_tracked_relations_match_the_analysis_and_leave_training_alone(tiny_bert, glue_dir, tmp_path):
    from fsd.models import load_teacher, run_model
    from fsd.relations import relation_batch

    config = _config(tiny_bert, glue_dir, tmp_path, track_relations=True, epochs=1, eval_batch_size=8)
    tracked = []
    for report in distill(config):
        tracked.append(report.metrics)
        report.save(tmp_path / "ckpt")
    plain = _run(config.replace(track_relations=False))
    assert [_no_time(m) for m in plain] == [{k: v for k, v in _no_time(m).items() if not k.startswith("relations/")}
                                            for m in tracked]
    # The same numbers by hand: both models over the first 8 dev rows.
    inputs = train_mod.load_inputs(config)
    batch = inputs.dev["validation"].collate(list(range(8)))
    state = train_mod.load_checkpoint(tmp_path / "ckpt")
    student = train_mod.build_student(train_mod.student_backbone(config), 2, 2)
    student.load_state_dict(state["student"])
    teacher = load_teacher(config.teacher, 2)
    with torch.no_grad():
        want = relation_batch(run_model(teacher.eval(), batch, hidden=True).penultimate,
                              run_model(student.eval(), batch, hidden=True).penultimate, batch["attention_mask"])
    assert want and {f"relations/{k}": v for k, v in want.items()} == pytest.approx(
        {k: v for k, v in tracked[-1].items() if k.startswith("relations/")}, rel=1e-4)


def test_a_zero_memory_weight_gives_the_vkd_run(tiny_bert, glue_dir, tmp_path):
    """FSDG with gamma_g = 0 has VKD's loss; its setup (the student memory) must not shift the random numbers
    training draws, so it is VKD's run to the last digit of the dev score."""
    vkd = _run(_config(tiny_bert, glue_dir, tmp_path, epochs=1, memory_size=4))
    fsdg = _run(_config(tiny_bert, glue_dir, tmp_path, epochs=1, memory_size=4, method="fsdg", gamma_g=0.0))
    assert fsdg[0]["eval/score"] == vkd[0]["eval/score"]
    assert fsdg[0]["train/ce"] == pytest.approx(vkd[0]["train/ce"], rel=1e-6)
    assert fsdg[0]["train/kd"] == pytest.approx(vkd[0]["train/kd"], rel=1e-6)

"""What a stage keeps on disk: no optimiser state once a trial is over, no checkpoint of a trial that cannot
win, only the winner's once the stage is done (fsd/tuning/search/retention.py)."""

from types import SimpleNamespace

import torch

from fsd.checkpoints import RESUME, resumable, save_checkpoint
from fsd.tuning.search.retention import KeepWinners, keep_only, losers


def _t(i, score, config=None, samples=100, budget=100, over=True):
    return {"id": i, "config": config or {"lr": i}, "over": over,
            "result": {"eval/score": score, "eval/best_score": score, "progress/samples": samples,
                       "progress/budget": budget}}


def test_losers_are_the_stopped_and_the_points_below_the_best_finished_one():
    trials = [_t("a", 0.7), _t("b", 0.8), _t("c", 0.8), _t("d", 0.9, over=False), _t("e", 0.95, samples=30)]
    # d is still running (kept), e was stopped at a rung (never a winner), b and c tie (both kept).
    assert sorted(losers(trials, seeds=1)) == ["a", "e"]


def test_with_seeds_a_point_is_judged_once_all_its_runs_are_over_and_keeps_its_best_run():
    p, q = {"lr": 1}, {"lr": 2}
    trials = [_t("p1", 0.9, {**p, "seed": 1}), _t("p2", 0.5, {**p, "seed": 2}),
              _t("q1", 0.8, {**q, "seed": 1}), _t("q2", 0.8, {**q, "seed": 2}, over=False)]
    assert losers(trials, seeds=2) == ["p2"]  # q is not complete: nothing of it goes; p's weaker seed goes
    trials[3]["over"] = True  # q's mean 0.8 beats p's 0.7
    assert sorted(losers(trials, seeds=2)) == ["p1", "p2", "q2"]


def _checkpoint(folder):
    state = {"student": {"w": torch.ones(3)}, "objective": {}, "optimizer": {"state": {0: {"m": torch.ones(3)}}},
             "scheduler": {}, "rng": {"torch": torch.get_rng_state()}, "epoch": 1, "step": 0, "samples": 10,
             "best_score": 0.5, "config": {}}
    return save_checkpoint(folder, state)


def test_a_finished_stage_keeps_its_winners_checkpoint_only_and_no_resume_state(tmp_path):
    exp = tmp_path / "rte-vkd"
    winner = _checkpoint(exp / "trial_a" / "checkpoint_000001")
    _checkpoint(exp / "trial_a" / "checkpoint_000000")
    _checkpoint(exp / "trial_b" / "checkpoint_000000")
    assert keep_only(exp, {winner}) == 2
    assert [p.relative_to(exp).as_posix() for p in sorted(exp.glob("*/checkpoint_*"))] == ["trial_a/checkpoint_000001"]
    assert not resumable(winner) and not list(exp.rglob(RESUME[0]))
    assert (exp / "trial_a" / "checkpoint_000001" / "student" / "model.safetensors").is_file()


def test_the_callback_prunes_as_trials_end(tmp_path):
    def trial(i, score, status, samples=100):
        path = tmp_path / f"t{i}"
        _checkpoint(path / "checkpoint_000000")
        return SimpleNamespace(trial_id=i, path=str(path), config={"lr": i}, status=status,
                               last_result=_t(i, score, samples=samples)["result"])

    a, b, c = trial("a", 0.6, "TERMINATED"), trial("b", 0.9, "RUNNING"), trial("c", 0.2, "RUNNING")
    KeepWinners(seeds=1).on_trial_complete(0, [a, b, c], b)
    assert not resumable(tmp_path / "tb" / "checkpoint_000000")  # over: its optimiser state goes
    assert not (tmp_path / "ta" / "checkpoint_000000").exists()  # below b: cannot win
    assert resumable(tmp_path / "tc" / "checkpoint_000000")  # still running: untouched
    KeepWinners(seeds=1, delete=False).on_trial_complete(0, [a, b, c], c)  # --log-checkpoints all
    assert (tmp_path / "tc" / "checkpoint_000000").exists() and not resumable(tmp_path / "tc" / "checkpoint_000000")

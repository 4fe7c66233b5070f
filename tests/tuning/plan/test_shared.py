"""Stages shared across searches: the key that decides reuse, and ASHA rungs that survive a restore."""

import pickle

import pytest

from fsd.tuning.plan.shared import finished, save, stage_folder, stage_key
from fsd.tuning.plan.strategy import Strategy

BASE = {"task": "rte", "teacher": "/runs/teacher/rte-abc", "student_init": None, "student_layers": 3,
        "method": "vkd", "data_dir": "/glue", "storage": "/runs", "max_seq_len": 128, "seed": 42, "epochs": 2,
        "max_train_samples": 2000, "max_eval_samples": 1000, "cache_budget_gb": 10.0, "compile": False}
GRID = {"alpha": (0.2, 0.7), "lr": (1e-5, 5e-5)}
GRID_HOW = Strategy("grid")


def _key(base=BASE, grid=GRID, how=GRID_HOW, seeds=(42,), carried=None, name="vkd"):
    return stage_key(name, dict(base), dict(grid), how, list(seeds), carried)


def test_the_same_stage_has_the_same_key_whatever_the_search_or_speed_settings():
    assert _key() == _key()
    # what only changes speed, or where the storage folder was mounted, does not change the trials
    assert _key(base={**BASE, "compile": True, "cache_budget_gb": 0.0, "storage": "/elsewhere"}) == _key()
    assert _key(grid={"lr": (1e-5, 5e-5), "alpha": (0.2, 0.7)}) == _key()  # key order
    assert _key(grid={"alpha": [0.2, 0.7], "lr": [1e-5, 5e-5]}) == _key()  # as JSON reads tuples back
    # a carried winner is a whole trial's config (a folded point's): its speed settings do not count either
    winner = {**BASE, "alpha": 0.7, "lr": 3e-4}
    carried = [{"winner": winner, "score": 0.77}]
    assert _key(carried=carried) == _key(carried=[{"winner": {**winner, "cache_budget_gb": None, "compile": True,
                                                               "storage": "/elsewhere"}, "score": 0.77}])
    assert _key(carried=carried) != _key(carried=[{"winner": {**winner, "alpha": 0.2}, "score": 0.77}])


@pytest.mark.parametrize("change", [
    {"grid": {"alpha": (0.2, 0.5), "lr": (1e-5, 5e-5)}},  # the grid
    {"base": {**BASE, "alpha": 0.5}},  # a base value (an inherited winner, --set)
    {"base": {**BASE, "teacher": "/runs/teacher/rte-def"}},  # the teacher
    {"base": {**BASE, "data_dir": "/other-glue"}},  # the data
    {"base": {**BASE, "max_train_samples": 4000}},  # the budget
    {"base": {**BASE, "epochs": 3}},
    {"base": {**BASE, "student_layers": 2}},
    {"how": Strategy("halving", 3.0, 1 / 9)},  # the strategy
    {"how": Strategy("halving", 3.0, 1 / 9, cap=64_000)},  # what a budget lets it spend
    {"seeds": (42, 43)},
    {"carried": [{"winner": {"gamma_g": 1e-4}, "score": 0.6}]},  # a refine stage's coarse winner
    {"carried": [{"winner": {"gamma_g": 1e-4}, "score": 0.6}, {"winner": {"method": "vkd"}, "score": 0.5}]},
    {"name": "vkd-again"},
])
def test_any_difference_in_what_the_trials_run_is_another_stage(change):
    assert _key(**change) != _key()


def test_the_record_is_written_whole_and_read_back(tmp_path):
    folder = stage_folder(str(tmp_path), "rte", "vkd", _key())
    assert finished(folder) is None
    save(folder, {"winner": {"alpha": 0.2}, "score": 0.61, "trials": 4, "run_id": "r1", "search": "fsd"})
    assert finished(folder)["score"] == 0.61 and not list(tmp_path.rglob("*.tmp"))


def _asha(path, rungs):
    from fsd.tuning.search.halving import DurableASHA

    return DurableASHA(str(path), rungs, "eval/score", "max")


def test_asha_rungs_and_stops_survive_a_restore(tmp_path):
    """Ray restores a scheduler as it was pickled at the start of the experiment: our rungs come back from the
    file, so a trial restored after the kill is judged against the same rung scores, and a trial stopped
    before the kill stays stopped."""
    from types import SimpleNamespace

    from fsd.tuning.plan.rungs import rungs_for

    rungs = rungs_for(900, 1 / 9, 3.0)  # rungs at 100, 300
    path = tmp_path / "rungs.json"
    live = _asha(path, rungs)
    at_start = pickle.dumps(live)  # what Tuner.restore would unpickle
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(4)]
    for t in trials:
        live.on_trial_add(None, t)

    def report(s, t, samples, score):
        return s.on_trial_result(None, t, {"progress/samples": samples, "progress/budget": 900, "eval/score": score})

    assert report(live, trials[0], 100, 0.6) == "CONTINUE"
    assert report(live, trials[1], 100, 0.8) == "CONTINUE"
    assert report(live, trials[2], 100, 0.5) == "STOP"  # below the median of {0.6, 0.8}
    restored = pickle.loads(at_start)
    for t in trials:
        restored.on_trial_add(None, t)
    assert dict(restored._brackets[0]._rungs[-1][1]) == {"t0": 0.6, "t1": 0.8, "t2": 0.5}
    assert report(restored, trials[2], 200, 0.9) == "STOP"  # stopped before the kill: stays stopped
    assert report(restored, trials[3], 100, 0.55) == "STOP"  # judged against the rung as it was
    path.unlink()
    fresh = pickle.loads(at_start)
    fresh.on_trial_add(None, trials[3])
    assert report(fresh, trials[3], 100, 0.55) == "CONTINUE"  # what Ray alone would have done: empty rungs


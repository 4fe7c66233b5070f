"""How a stage's trials are generated and stopped in Ray Tune: the grid, successive halving (ASHA on
training samples) or Optuna TPE with the same halving; and an ASHA whose rungs survive a restore.

Ray saves the search algorithm with an experiment but not the scheduler (ray-project/ray#30838):
`Tuner.restore` rebuilds the scheduler as it was when the experiment began, with empty rungs, so a resumed
stage would promote trials an uninterrupted one stops. `DurableASHA` writes its rungs and its decisions to
a JSON file beside the experiment after every result and reads them back when it is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from fsd.storage import write_text
from fsd.tuning.plan import Rungs, joint_value

TIME_ATTR = "progress/samples"


class DurableASHA(ASHAScheduler):
    """ASHA over training samples whose rung scores and stop decisions persist in `path`.

    A trial stopped once is stopped again if a restore brings it back before Ray recorded the stop.
    """

    def __init__(self, path: str, rungs: Rungs, metric: str, mode: str):
        super().__init__(time_attr=TIME_ATTR, metric=metric, mode=mode, max_t=rungs.budget,
                         grace_period=rungs.first, reduction_factor=rungs.reduction_factor)
        self._path = path
        self._stopped: dict[str, float] = {}  # trial id -> samples where it was stopped
        self._load()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load()  # Tuner.restore: the rungs as they were when the driver died, not when it started

    def _load(self) -> None:
        path = Path(self._path)
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        (bracket,) = self._brackets
        recorded = {int(m): r for m, r in saved["rungs"].items()}
        for milestone, scores in bracket._rungs:
            scores.clear()
            scores.update(recorded.get(int(milestone), {}))
        self._stopped = saved["stopped"]

    def _save(self) -> None:
        (bracket,) = self._brackets
        state = {"rungs": {str(int(m)): dict(r) for m, r in bracket._rungs}, "stopped": self._stopped}
        write_text(self._path, json.dumps(state, sort_keys=True))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id in self._stopped:
            return TrialScheduler.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        budget = result.get("progress/budget", self._max_t)
        if action == TrialScheduler.STOP and result.get(TIME_ATTR, 0) < budget:
            self._stopped[trial.trial_id] = result[TIME_ATTR]
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
            self._save()


def param_space(strategy: str, grid: dict[str, tuple], seeds: list[int]) -> dict[str, Any]:
    """Grid and halving: every point (x seeds). Optuna: a categorical per parameter (joint values as "a|b",
    since Optuna's categoricals hold plain values only); seeds then repeat each sample."""
    if strategy == "optuna":
        return {k: tune.choice([joint_value(x) for x in v]) for k, v in grid.items()}
    space: dict[str, Any] = {k: tune.grid_search(list(v)) for k, v in grid.items()}
    if len(seeds) > 1:
        space["seed"] = tune.grid_search(seeds)
    return space


def tune_config(strategy: str, folder: str, name: str, rungs: Rungs | None, metric: str, mode: str,
                max_concurrent: int, num_samples: int) -> tune.TuneConfig:
    """The stage's TuneConfig: the scheduler of `rungs` (none for the grid) and, for optuna, TPE."""
    kwargs: dict[str, Any] = {"max_concurrent_trials": max_concurrent or None}
    if rungs is not None:
        kwargs["scheduler"] = DurableASHA(os.path.join(folder, "rungs.json"), rungs, metric, mode)
    else:
        kwargs.update(metric=metric, mode=mode)
    if strategy == "optuna":
        from optuna.samplers import TPESampler
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        os.makedirs(folder, exist_ok=True)  # Ray makes the stage's folder only when its trials start
        journal = JournalStorage(JournalFileBackend(os.path.join(folder, "optuna.journal")))
        # TPE learns from each trial's best evaluation (the winner rule's score; a stopped trial's is its rung's)
        searcher = OptunaSearch(metric="eval/best_score", mode=mode, study_name=name, storage=journal,
                                sampler=TPESampler(seed=0))
        kwargs["search_alg"] = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent or 2)
        kwargs["num_samples"] = num_samples
        kwargs.pop("max_concurrent_trials")
        kwargs.pop("metric", None)
        kwargs.pop("mode", None)
    return tune.TuneConfig(**kwargs)

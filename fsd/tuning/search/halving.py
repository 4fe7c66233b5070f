"""How a stage's trials are generated and stopped in Ray Tune: the grid, successive halving (ASHA on
training samples) or Optuna TPE with the same halving; and an ASHA whose rungs survive a restore.

Ray saves the search algorithm with an experiment but not the scheduler (ray-project/ray#30838):
`Tuner.restore` rebuilds the scheduler as it was when the experiment began, with empty rungs, so a resumed
stage would promote trials an uninterrupted one stops. `DurableASHA` writes its rungs and its decisions to
a JSON file beside the experiment after every result and reads them back when it is unpickled.

`DurableASHA` also keeps tied trials: Ray's cutoff is interpolated between two recorded scores, so a trial
tied with the one at the cutoff's rank was stopped (`rung_cutoff` says how ties are kept, and why).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm

from fsd.metrics import BUDGET, SAMPLES
from fsd.storage import write_text
from fsd.tuning.plan.ranking import METRIC, MODE, RUNG_BEST, RUNG_METRIC, RUNG_MODE, RUNG_TIE
from fsd.tuning.plan.rungs import Rungs
from fsd.tuning.search.no_repeats import NoRepeats
from search_spaces.joint import joint_value

TIME_ATTR = SAMPLES
GATE = "budget_gate.json"


def rung_cutoff(recorded: list[float], reduction_factor: float, tie: float = RUNG_TIE) -> float:
    """What a trial must reach at a rung to go on, from the values recorded there so far (higher is better).

    The value of the recorded trial at the rung's (1 - 1/rf) quantile, taken at that trial (numpy's "lower"
    percentile) and not between two of them as Ray interpolates it, less `tie`: a trial tied with that trial,
    or within `tie` of it, goes on. On the recorded SST-2 schedule Ray's cutoff (e.g. 55.83 between two
    majority-class 55.80s and one 55.90) stopped a stage winner tied at 55.80 there, and another winner trailed
    the cutoff by 0.4 points at the rung, inside the ranking split's sampling error (docs/results.md, "Rungs
    that keep the winner").
    """
    return float(np.percentile(recorded, (1 - 1 / reduction_factor) * 100, method="lower")) - tie


class _TiedBracket(_Bracket):
    """Ray's bracket (rungs, recording, the stop test `value < cutoff`) with `rung_cutoff` as its cutoff."""

    def __init__(self, rungs: Rungs, tie: float):
        super().__init__(rungs.first, rungs.budget, rungs.reduction_factor, 0)
        self.tie = tie

    def cutoff(self, recorded: dict) -> float | None:
        values = [v for v in recorded.values() if not np.isnan(v)]  # as Ray's nanpercentile skips them
        return rung_cutoff(values, self.rf, self.tie) if values else None


class DurableASHA(ASHAScheduler):
    """ASHA over training samples whose rung scores and stop decisions persist in `path`, and which keeps the
    trials tied with a rung's cutoff (`rung_cutoff`; `tie` in the metric's units).

    A trial stopped once is stopped again if a restore brings it back before Ray recorded the stop.
    """

    def __init__(self, path: str, rungs: Rungs, metric: str, mode: str, tie: float = RUNG_TIE):
        super().__init__(time_attr=TIME_ATTR, metric=metric, mode=mode, max_t=rungs.budget,
                         grace_period=rungs.first, reduction_factor=rungs.reduction_factor)
        self._brackets = [_TiedBracket(rungs, tie)]
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
        budget = result.get(BUDGET, self._max_t)
        if action == TrialScheduler.STOP and result.get(TIME_ATTR, 0) < budget:
            self._stopped[trial.trial_id] = result[TIME_ATTR]
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
            self._save()


class BudgetGate(SearchAlgorithm):
    """Wraps a stage's search algorithm: a trial is created only when `cap` pays for its whole budget after
    what every trial so far has spent and what the live ones may still spend. Its count is written to `path`
    beside the experiment after every change and read back when a restore unpickles it (as DurableASHA's)."""

    def __init__(self, inner: SearchAlgorithm, cap: float, per_trial: int, path: str):
        self.inner, self.cap, self.per_trial, self._path = inner, cap, per_trial, path
        self.spent: dict[str, float] = {}  # trial id -> samples it has trained
        self.live: set[str] = set()
        self.refused = False
        self._load()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load()

    def _load(self) -> None:
        if Path(self._path).is_file():
            saved = json.loads(Path(self._path).read_text())
            self.spent, self.refused, self.live = saved["spent"], saved["refused"], set(saved["live"])

    def _save(self) -> None:
        write_text(self._path, json.dumps({"spent": self.spent, "refused": self.refused, "live": sorted(self.live),
                                           "cap": self.cap, "per_trial": self.per_trial}))

    # What Tune asks of a search algorithm, passed on.
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def add_configurations(self, experiments) -> None:
        self.inner.add_configurations(experiments)

    @property
    def total_samples(self) -> int:
        return self.inner.total_samples

    @property
    def metric(self):
        return self.inner.metric

    def is_finished(self) -> bool:
        return self._finished or self.inner.is_finished()

    def has_checkpoint(self, dirpath: str) -> bool:
        return self.inner.has_checkpoint(dirpath)

    def save_to_dir(self, dirpath: str, **kwargs) -> None:
        self.inner.save_to_dir(dirpath, **kwargs)

    def restore_from_dir(self, dirpath: str) -> None:
        self.inner.restore_from_dir(dirpath)

    def next_trial(self):
        spent = sum(self.spent.values())
        if spent + self.per_trial > self.cap:
            # Refused only if the stage had another trial to start: a stage whose points all ran is not cut.
            if self.inner.next_trial() is not None:
                self.refused = True
                self._save()
                self.set_finished()  # what is spent only grows: no trial will fit again
            return None
        running = sum(self.per_trial - self.spent.get(t, 0.0) for t in self.live)
        if spent + running + self.per_trial > self.cap:
            return None  # the running trials may still spend it: asked again when one ends
        trial = self.inner.next_trial()
        if trial is not None:
            self.live.add(trial.trial_id)
            self._save()
        return trial

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.spent[trial_id] = float(result.get(TIME_ATTR, 0))
        self._save()
        self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result:
            self.spent[trial_id] = float(result.get(TIME_ATTR, self.spent.get(trial_id, 0)))
        self.live.discard(trial_id)
        self._save()
        self.inner.on_trial_complete(trial_id, result=result, error=error)


def gate_refused(folder: str) -> bool:
    """Whether a stage's BudgetGate (in `folder`) refused a trial because the budget was spent."""
    path = Path(folder) / GATE
    return path.is_file() and json.loads(path.read_text())["refused"]


def param_space(strategy: str, grid: dict[str, tuple], seeds: list[int]) -> dict[str, Any]:
    """Grid and halving: every point (x seeds). Optuna: a categorical per parameter (joint values as "a|b",
    since Optuna's categoricals hold plain values only); seeds then repeat each sample."""
    if strategy == "optuna":
        return {k: tune.choice([joint_value(x) for x in v]) for k, v in grid.items()}
    space: dict[str, Any] = {k: tune.grid_search(list(v)) for k, v in grid.items()}
    if len(seeds) > 1:
        space["seed"] = tune.grid_search(seeds)
    return space


def tune_config(strategy: str, folder: str, name: str, rungs: Rungs | None, max_concurrent: int,
                num_samples: int, gate: tuple[float, int] | None = None) -> tune.TuneConfig:
    """The stage's TuneConfig: the scheduler of `rungs` (none for the grid) ranking rungs by RUNG_METRIC, for
    optuna TPE learning from RUNG_BEST, and with `gate` (what the stage may spend, a trial's whole budget) a
    `BudgetGate` around the trials' generator."""
    kwargs: dict[str, Any] = {}
    if rungs is not None:
        kwargs["scheduler"] = DurableASHA(os.path.join(folder, "rungs.json"), rungs, RUNG_METRIC, RUNG_MODE)
    else:
        kwargs.update(metric=METRIC, mode=MODE)
    if strategy == "optuna":
        from optuna.samplers import TPESampler
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        from ray.tune.search import ConcurrencyLimiter, SearchGenerator
        from ray.tune.search.optuna import OptunaSearch

        os.makedirs(folder, exist_ok=True)  # Ray makes the stage's folder only when its trials start
        journal = JournalStorage(JournalFileBackend(os.path.join(folder, "optuna.journal")))
        # TPE learns from each trial's best evaluation (a stopped trial's is its rung's)
        searcher = OptunaSearch(metric=RUNG_BEST, mode=RUNG_MODE, study_name=name, storage=journal,
                                sampler=TPESampler(seed=0))
        # NoRepeats: TPE samples the finite grid with replacement; a point is trained once per stage.
        generator = SearchGenerator(ConcurrencyLimiter(NoRepeats(searcher), max_concurrent=max_concurrent or 2))
        kwargs.update(num_samples=num_samples)
        kwargs.pop("metric", None)
        kwargs.pop("mode", None)
    else:
        generator = BasicVariantGenerator(max_concurrent=max_concurrent or 0)
    kwargs["search_alg"] = BudgetGate(generator, *gate, os.path.join(folder, GATE)) if gate is not None else generator
    # A slot's next trial runs in the worker process its last one ran in: a new process would import torch,
    # transformers and Ray's worker again (a third of a cpu-preset trial's slot-time on 2 cores, bench/overhead.py).
    # distill() seeds every generator it draws from, and what a worker keeps between trials is read-only (the
    # data files' digests), so a reused worker trains to the same numbers (tests/test_overhead.py).
    kwargs["reuse_actors"] = True
    return tune.TuneConfig(**kwargs)

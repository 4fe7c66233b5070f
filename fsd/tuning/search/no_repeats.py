"""No point trained twice in a stage: Optuna's TPE samples a finite grid with replacement, and a point trained
again with the same seed gives the same score to the digit (training is deterministic), so a repeat would
only spend its budget again (8 of the 79 trials of a recorded paper-schedule search under Optuna).

`NoRepeats` sits between Ray's concurrency limiter and the Optuna searcher: a suggestion of a point a trial of
the stage has already finished is told to Optuna with that trial's result, and another point is asked for;
a suggestion of a point a trial is still running waits for that trial's result. Its state is saved with the
experiment (Ray's search generator saves each wrapper's `get_state`), so a restored stage remembers too.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ray.tune.search import Searcher

TRIES = 100  # suggestions asked for one trial before the stage is taken to have no new point left


def point_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


class NoRepeats(Searcher):
    """Wraps a searcher of a finite space: each point is trained once per stage (see the module docstring)."""

    def __init__(self, searcher: Searcher):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.results: dict[str, dict[str, Any]] = {}  # point -> the last result of the trial that trained it
        self.running: dict[str, str] = {}  # trial id -> its point
        self.inner: dict[str, str] = {}  # trial id -> the id the wrapped searcher knows it by
        self.waiting: dict[str, list[str]] = {}  # point -> the wrapped searcher's ids waiting for its result
        self.reused = 0  # suggestions answered from a recorded result instead of a trial

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        for attempt in range(TRIES):
            asked = trial_id if attempt == 0 else f"{trial_id}-again{attempt}"
            config = self.searcher.suggest(asked)
            if config is None or config == Searcher.FINISHED:
                return config
            key = point_key(config)
            if key in self.results:  # trained already: its result answers the searcher at once
                self.searcher.on_trial_complete(asked, result=self.results[key])
                self.reused += 1
            elif key in self.running.values():  # being trained: answered when that trial ends
                self.waiting.setdefault(key, []).append(asked)
                self.reused += 1
            else:
                self.running[trial_id], self.inner[trial_id] = key, asked
                return config
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(self.inner.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(self.inner.pop(trial_id, trial_id), result=result, error=error)
        key = self.running.pop(trial_id, None)
        if key is None:
            return
        if result and not error:
            self.results[key] = result
        for asked in self.waiting.pop(key, []):
            self.searcher.on_trial_complete(asked, result=None if error else result, error=error)

    def get_state(self) -> dict:
        state = self.__dict__.copy()
        del state["searcher"]
        return copy.deepcopy(state)

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

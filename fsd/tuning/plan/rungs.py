"""The arithmetic of halving: ASHA's rungs, where trials evaluate and stop, and the training samples and
evaluations a stage's trials are expected to spend (no Ray).

A trial's budget is `rows x epochs` training samples. Under `halving` (and `optuna`, which samples fewer
points and halves them the same way) a stage's trials are evaluated at rungs `first x rf^k` samples, the
first rung being `first_rung` of the largest budget; roughly 1/rf of the trials that reach a rung go on to
the next (ASHA), so the expected samples are counted as synchronous successive halving would spend them.
ASHA's asynchronous promotions let a few more trials through early on; bench/search_cost.py measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fsd.config import DistillConfig
from fsd.data import split_rows

EVALS_PER_RUN = 4  # evaluations of a --compare seed run: the points of Fig. 6


@dataclass(frozen=True)
class Rungs:
    """ASHA's rung schedule in training samples, as Ray's `ASHAScheduler` builds it."""

    budget: int  # max_t: the largest trial budget of the stage
    first: int  # grace_period
    reduction_factor: float

    @property
    def milestones(self) -> tuple[int, ...]:
        """The samples at which trials are compared (ascending); the budget itself ends every trial."""
        count = int(math.log(self.budget / self.first) / math.log(self.reduction_factor) + 1e-9 + 1)
        return tuple(int(self.first * self.reduction_factor ** k) for k in range(count))


def rungs_for(budget: int, first_rung: float, reduction_factor: float) -> Rungs:
    return Rungs(budget, max(1, round(budget * first_rung)), reduction_factor)


def eval_every(rows: int, evals_per_epoch: int) -> int:
    """Training samples between evaluations for `evals_per_epoch` rungs per epoch of `rows` rows."""
    return max(1, math.ceil(rows / evals_per_epoch))


def stop_point(milestone: int, every: int, budget: int) -> int:
    """Where a trial stopped at `milestone` has trained to: the first evaluation at or past it."""
    return min(budget, math.ceil(milestone / every) * every)


def expected_samples(trials: float, budget: int, rungs: Rungs | None, every: int) -> float:
    """Training samples of `trials` trials of `budget` samples each; with `rungs`, a 1/rf share of those
    reaching a rung goes on (at least one trial reaches the end)."""
    if rungs is None:
        return trials * budget
    total, alive, done = 0.0, float(trials), 0
    for milestone in rungs.milestones:
        point = stop_point(milestone, every, budget)
        if point >= budget:
            break
        total += alive * (point - done)
        alive, done = max(1.0, alive / rungs.reduction_factor), point
    return total + alive * (budget - done)


def expected_evaluations(trials: float, budget: int, rungs: Rungs | None, every: int) -> float:
    """Dev evaluations of those trials: one every `every` samples and one at the end of each."""
    if rungs is None:
        return trials * math.ceil(budget / every)
    return expected_samples(trials, budget, rungs, every) / every


def evaluation_interval(config: dict[str, Any]) -> int:
    """Training samples between the EVALS_PER_RUN evaluations of a --compare seed run of `config`."""
    c = DistillConfig.from_dict(config)
    rows = split_rows(c.task, c.data_dir, c.max_train_samples, holdout=c.holdout_rows or 0)[0]
    return max(1, math.ceil(rows * c.epochs / EVALS_PER_RUN))

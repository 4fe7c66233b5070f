"""Replay search strategies on a recorded grid: every trial's learning curve (dev score at each rung) was
recorded once; grid, successive halving (Ray's ASHA rule), random search and Optuna TPE are then simulated
on the table many times over shuffled trial orders, as tabular HPO benchmarks do (LCBench, HPOBench).

Time is measured in training samples: `workers` trials train at once, each at the same speed, so the order
in which results reach the scheduler is the order of `start + samples`. A trial's final score is its best
evaluation over its whole budget (what the search ranks and keeps as its checkpoint).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Curve:
    config: dict
    samples: tuple[int, ...]  # training samples at each evaluation, ascending; the last is the trial's budget
    scores: tuple[float, ...]
    losses: tuple[float, ...] = ()  # the ranking split's loss at each evaluation, where it was recorded

    @property
    def budget(self) -> int:
        return self.samples[-1]

    @property
    def final(self) -> float:
        return max(self.scores)


class Asha:
    """Ray 2.60's ASHA decision for one bracket (`_Bracket.on_result`, the `max_t` check of
    `AsyncHyperBandScheduler.on_trial_result`): a trial reaching a rung first is recorded there and stopped
    if its score is below the (1 - 1/rf) percentile of the scores recorded at that rung so far."""

    def __init__(self, milestones: tuple[int, ...], max_t: int, reduction_factor: float):
        self.rungs = {m: {} for m in sorted(milestones, reverse=True)}
        self.max_t, self.rf = max_t, reduction_factor

    def on_result(self, trial: int, t: int, score: float) -> bool:
        """Whether the trial goes on after this result."""
        go_on = True
        for milestone, recorded in self.rungs.items():  # descending
            # (Ray skips a rung the trial is recorded at and looks at the lower ones, with its default
            # stop_last_trials=True: a trial whose first result jumped past a rung gets recorded there later.)
            if t < milestone or trial in recorded:
                continue
            if recorded and score < np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100):
                go_on = False
            recorded[trial] = score
            break
        return go_on and t < self.max_t

    def decide(self, trial: int, curve: Curve, j: int) -> bool:
        """Whether `trial` goes on after its `j`-th evaluation of `curve` (what `simulate` asks a rule)."""
        return self.on_result(trial, curve.samples[j], curve.scores[j])


class Rule(Protocol):
    """What `simulate` asks at each evaluation: does trial run `trial` go on after evaluation `j` of `curve`?"""

    def decide(self, trial: int, curve: Curve, j: int) -> bool: ...


@dataclass(frozen=True)
class Outcome:
    chosen: int  # index of the winning curve (among those that reached their budget)
    samples: int  # training samples all trials processed
    started: int  # trials started (a TPE sample of a point already run counts again)
    finished: tuple[int, ...] = ()  # indices of the curves that reached their budget, in the order they did


def simulate(curves: list[Curve], source: Iterator[int], asha: Rule | None, workers: int,
             on_done: Callable[[int, float], None] | None = None) -> Outcome:
    """Run the trials `source` yields, `workers` at a time, stopping them as `asha` decides (anything with
    `decide(run, curve, j)`: `Asha`, or `rung_rules.ToolRungs`, the tool's own scheduler).

    `on_done(index, best score so far)` is told each trial's end (a model-based source learns from it)."""
    heap: list[tuple[int, int, int, int, int]] = []  # (time of the next result, run, curve, result index, start)
    used, finished, runs = 0, [], 0

    def start(now: int) -> None:
        nonlocal runs
        index = next(source, None)
        if index is not None:
            heapq.heappush(heap, (now + curves[index].samples[0], runs, index, 0, now))
            runs += 1

    for _ in range(workers):
        start(0)
    while heap:
        now, run, index, j, began = heapq.heappop(heap)
        curve = curves[index]
        go_on = asha.decide(run, curve, j) if asha else True
        if go_on and j + 1 < len(curve.samples):
            heapq.heappush(heap, (began + curve.samples[j + 1], run, index, j + 1, began))
            continue
        used += curve.samples[j]
        if j + 1 == len(curve.samples):
            finished.append(index)
        if on_done is not None:
            on_done(index, max(curve.scores[:j + 1]))
        start(now)
    chosen = max(sorted(set(finished)), key=lambda i: curves[i].final)  # ties: the first grid point
    return Outcome(chosen, used, runs, tuple(finished))


def shuffled(n: int, rng: np.random.Generator, k: int | None = None) -> Iterator[int]:
    """The grid in a random order (the first `k` points of it: random search)."""
    order = rng.permutation(n)
    return iter(order[:k].tolist() if k else order.tolist())


class TPESource:
    """Optuna TPE over the grid's values, told each trial's best score when it ends (as Ray's OptunaSearch
    tells the study when Tune reports a trial complete, stopped ones included)."""

    def __init__(self, curves: list[Curve], samples: int, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.curves, self.left = curves, samples
        keys = list(curves[0].config)
        self.space = {k: optuna.distributions.CategoricalDistribution(sorted({c.config[k] for c in curves}))
                      for k in keys}
        self.index = {tuple(c.config[k] for k in keys): i for i, c in enumerate(curves)}
        self.keys = keys
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        self.pending: dict[int, list] = {}

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self.left == 0:
            raise StopIteration
        self.left -= 1
        trial = self.study.ask(self.space)
        index = self.index[tuple(trial.params[k] for k in self.keys)]
        self.pending.setdefault(index, []).append(trial)
        return index

    def tell(self, index: int, value: float) -> None:
        self.study.tell(self.pending[index].pop(0), value)


@dataclass(frozen=True)
class Summary:
    name: str
    share: tuple[float, float]  # compute as a share of the grid's: mean, std over replays
    regret: tuple[float, float]  # grid's best final minus the chosen one's, x100 points: mean, std
    within: float  # share of replays whose regret is at most `tolerance` points


def summarise(name: str, curves: list[Curve], outcomes: list[Outcome], tolerance: float = 0.5) -> Summary:
    grid = sum(c.budget for c in curves)
    best = max(c.final for c in curves)
    shares = np.array([o.samples / grid for o in outcomes])
    regrets = np.array([100 * (best - curves[o.chosen].final) for o in outcomes])
    return Summary(name, (float(shares.mean()), float(shares.std())), (float(regrets.mean()), float(regrets.std())),
                   float(np.mean(regrets <= tolerance + 1e-9)))


def rung_rank_correlation(curves: list[Curve]) -> list[tuple[int, float]]:
    """Spearman's rho between the score at each evaluation point and the final score, over the trials."""
    from scipy.stats import spearmanr

    finals = [c.final for c in curves]
    points = sorted({s for c in curves for s in c.samples})
    out = []
    for p in points:
        at = [c.scores[c.samples.index(p)] if p in c.samples else math.nan for c in curves]
        keep = [i for i, v in enumerate(at) if not math.isnan(v)]
        if len(keep) > 2:
            rho = spearmanr([at[i] for i in keep], [finals[i] for i in keep]).statistic
            out.append((p, float(rho)))
    return out

"""Which signal ranks the trials at a rung, and whether the tool's own rung rules keep each stage's winner,
measured on recorded curves: the paper's whole FSD schedule on SST-2 under the grid, every trial's holdout
score and loss at each of its four evaluations (bench/results/sst2-paper-schedule/curves.json).

    python bench/rung_rules.py bench/results/sst2-paper-schedule/curves.json > bench/results/sst2-rungs/rules.md

`signals` measures, per stage and evaluation, how well the score and the loss there rank the trials' final
scores, how often the scores tie, and where the stage's grid winner stands. `RungRule` builds a Tune
scheduler (the tool's `DurableASHA`, or Ray's own `ASHAScheduler` for comparison) and `replay_stage` feeds a
stage's curves through it with bench/replay.py's simulator, the trials in grid order two at a time as the
recorded run started them (or shuffled).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import Curve, shuffled, simulate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fsd.metrics import BUDGET, SAMPLES, SCORE  # noqa: E402
from fsd.tuning.plan.ranking import RUNG_METRIC, RUNG_MODE, RUNG_TIE  # noqa: E402
from fsd.tuning.plan.rungs import rungs_for  # noqa: E402
from fsd.tuning.plan.spec import FIRST_RUNG, REDUCTION_FACTOR  # noqa: E402

LOSS = "eval/loss"
WORKERS = 2  # the recorded run's trials at once
RHO_RANKS = 0.6  # a rule of thumb: below it halving drops future winners (docs of /work/shared: SEARCH_BUDGET)


def load_stages(path: str | os.PathLike) -> dict[str, list[Curve]]:
    """Each stage's curves from a `bench/schedule.py record` file, in grid (trial number) order."""
    import json

    data = json.loads(Path(path).read_text())
    return {name: [Curve(t["config"], tuple(t["samples"]), tuple(t["scores"]), tuple(t["losses"]))
                   for t in stage["trials"]] for name, stage in data["stages"].items()}


def grid_winner(curves: list[Curve]) -> int:
    """The stage's winner under the grid: the best final score, on a tie the first grid point (as
    `fsd.tuning.search.stage.pick_winner` ranks trials in grid order)."""
    finals = [c.final for c in curves]
    return finals.index(max(finals))


# ---------------------------------------------------------------------------------------------- the signal
@dataclass(frozen=True)
class Signal:
    """How the trials stand at one evaluation of a stage."""

    samples: int
    rho_score: float  # Spearman of the score here with the final score; nan: every score tied
    rho_loss: float  # the same for minus the loss
    tied: float  # share of the trials whose score here equals another trial's
    above_by_score: int  # trials scoring strictly above the stage's grid winner here
    tied_with_winner: int  # other trials on the winner's score here
    above_by_loss: int  # trials with a strictly lower loss than the winner here


def _spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan  # one value: no ranking at all
    return float(spearmanr(x, y).statistic)


def signals(curves: list[Curve]) -> list[Signal]:
    """At each evaluation the stage's trials share: how the score and the loss rank the final scores, how
    often scores tie, and how many trials rank above the grid's winner by each."""
    finals = [c.final for c in curves]
    w = grid_winner(curves)
    out = []
    for j in range(min(len(c.samples) for c in curves)):
        scores, losses = [c.scores[j] for c in curves], [c.losses[j] for c in curves]
        counts = Counter(scores)
        out.append(Signal(curves[0].samples[j], _spearman(scores, finals), _spearman([-x for x in losses], finals),
                          sum(n for n in counts.values() if n > 1) / len(curves),
                          sum(s > scores[w] for s in scores), counts[scores[w]] - 1,
                          sum(x < losses[w] for x in losses)))
    return out


def first_ranking_share(stages: dict[str, list[Curve]], threshold: float = RHO_RANKS) -> float | None:
    """The earliest share of a trial's budget at which the score ranks the final scores: the mean over the
    stages of its rho is at least `threshold`, a stage whose scores all tie counting 0 (it ranks nothing)."""
    per_point: dict[float, list[float]] = {}
    for curves in stages.values():
        for s in signals(curves):
            rho = 0.0 if math.isnan(s.rho_score) else s.rho_score
            per_point.setdefault(s.samples / curves[0].budget, []).append(rho)
    return next((p for p, rhos in sorted(per_point.items()) if np.mean(rhos) >= threshold), None)


# ---------------------------------------------------------------------------------------------- the replay
class ToolRungs:
    """A Tune scheduler deciding a replay as it decides a live stage: a trial is added when it starts, told
    each result (training samples, budget, the score and the loss) and its end."""

    def __init__(self, scheduler: Any):
        from ray.tune.schedulers import TrialScheduler

        self.scheduler, self.trials, self._go = scheduler, {}, TrialScheduler.CONTINUE

    def decide(self, trial: int, curve: Curve, j: int) -> bool:
        t = self.trials.get(trial)
        if t is None:
            t = self.trials[trial] = SimpleNamespace(trial_id=f"replay_{trial:05d}")
            self.scheduler.on_trial_add(None, t)
        result = {SAMPLES: curve.samples[j], BUDGET: curve.budget, SCORE: curve.scores[j], LOSS: curve.losses[j]}
        go_on = self.scheduler.on_trial_result(None, t, result) == self._go and j + 1 < len(curve.samples)
        if not go_on:
            self.scheduler.on_trial_complete(None, t, result)
        return go_on


@dataclass(frozen=True)
class RungRule:
    """A rung rule to replay: the tool's (`DurableASHA`, `tie` kept) or, with `tie` None, Ray's own ASHA."""

    name: str
    first_rung: float = FIRST_RUNG
    metric: str = RUNG_METRIC
    mode: str = RUNG_MODE
    tie: float | None = RUNG_TIE
    reduction_factor: float = REDUCTION_FACTOR

    def scheduler(self, budget: int, folder: str) -> ToolRungs:
        from ray.tune.schedulers import ASHAScheduler

        from fsd.tuning.search.halving import TIME_ATTR, DurableASHA

        rungs = rungs_for(budget, self.first_rung, self.reduction_factor)
        if self.tie is None:
            return ToolRungs(ASHAScheduler(time_attr=TIME_ATTR, metric=self.metric, mode=self.mode, max_t=rungs.budget,
                                           grace_period=rungs.first, reduction_factor=rungs.reduction_factor))
        return ToolRungs(DurableASHA(os.path.join(folder, "rungs.json"), rungs, self.metric, self.mode, self.tie))


@dataclass(frozen=True)
class StageReplay:
    trials: int
    stopped: int  # trials stopped at a rung
    samples: int  # training samples the trials processed
    grid: int  # what the grid spent: every trial to its budget
    winner_kept: bool  # the grid's winner reached its full budget
    same_winner: bool  # and the replay picked it

    @property
    def share(self) -> float:
        return self.samples / self.grid


def replay_stage(curves: list[Curve], rule: RungRule, order: list[int] | None = None,
                 workers: int = WORKERS) -> StageReplay:
    """One stage's trials (grid order unless `order`) through `rule`'s scheduler, `workers` at a time."""
    with tempfile.TemporaryDirectory(prefix="rungs-") as folder:
        return replay_through(curves, rule.scheduler(max(c.budget for c in curves), folder), order, workers)


def replay_through(curves: list[Curve], rungs: ToolRungs, order: list[int] | None = None,
                   workers: int = WORKERS) -> StageReplay:
    """One stage's trials (grid order unless `order`) through a scheduler, `workers` at a time."""
    w = grid_winner(curves)
    out = simulate(curves, iter(order if order is not None else range(len(curves))), rungs, workers)
    reached = set(out.finished)
    return StageReplay(len(curves), len(curves) - len(reached), out.samples, sum(c.budget for c in curves),
                       w in reached, out.chosen == w)


# ---------------------------------------------------------------------------------------------- the report
RULES = (
    RungRule("Ray's ASHA on the loss, first rung 1/9 (the recorded halving run)", 1 / 9, LOSS, "min", None),
    RungRule("Ray's ASHA on the score, first rung 1/9", 1 / 9, SCORE, "max", None),
    RungRule("ties kept, on the loss, first rung 1/9", 1 / 9, LOSS, "min", 0.0),
    RungRule("ties kept, on the score, first rung 1/9", 1 / 9),
    RungRule("ties kept, on the score, first rung 1/3", 1 / 3),
    RungRule("ties kept, on the loss, first rung 3/4", 3 / 4, LOSS, "min", 0.0),
    RungRule("exact ties kept, on the score, first rung 3/4", 3 / 4, tie=0.0),
    RungRule("ties kept, on the score, first rung 3/4 (the defaults)"),
    RungRule("ties kept within 1 point, on the score, first rung 3/4", tie=0.01),
)


def _f(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.2f}"


def report(stages: dict[str, list[Curve]], orders: int) -> str:
    lines = ["## The signal at each evaluation", "",
             "rho: Spearman with the trial's final score (nan: every score tied); tied: share of trials whose score "
             "equals another's; the winner: the grid's stage winner, with the trials strictly above it by score "
             "(+ tied with it) and by loss.", "",
             "| stage | trials | samples | rho(score) | rho(-loss) | tied | above the winner by score (+ tied) "
             "| above it by loss |", "|---|---|---|---|---|---|---|---|"]
    pooled: dict[int, list[Signal]] = {}
    for name, curves in stages.items():
        for s in signals(curves):
            pooled.setdefault(s.samples, []).append(s)
            lines.append(f"| {name} | {len(curves)} | {s.samples} | {_f(s.rho_score)} | {_f(s.rho_loss)} | "
                         f"{s.tied:.0%} | {s.above_by_score} (+{s.tied_with_winner}) | {s.above_by_loss} |")
    lines += ["", "| samples | mean rho(score), tied stages as 0 | mean rho(-loss) | stages whose scores all tie |",
              "|---|---|---|---|"]
    for samples, at in sorted(pooled.items()):
        score = np.mean([0.0 if math.isnan(s.rho_score) else s.rho_score for s in at])
        lines.append(f"| {samples} | {score:.2f} | {np.mean([s.rho_loss for s in at]):.2f} | "
                     f"{sum(math.isnan(s.rho_score) for s in at)} of {len(at)} |")
    share = first_ranking_share(stages)
    lines += ["", f"The score first ranks (mean rho >= {RHO_RANKS}) at {share:.0%} of a trial's budget."
              if share is not None else "The score never ranks.", ""]
    lines += ["## Rung rules replayed", "",
              f"Every stage's trials in grid order, {WORKERS} at a time (the recorded run's), and over {orders} "
              "shuffled orders; rf 3; samples as a share of the grid's; winners kept: stages whose grid winner "
              "reached its full budget (of 9).", "",
              "| rule | grid order: samples | winners kept | lost | shuffled: mean samples | orders keeping every "
              "winner |", "|---|---|---|---|---|---|"]
    grid = sum(c.budget for curves in stages.values() for c in curves)
    for rule in RULES:
        runs = {name: replay_stage(curves, rule) for name, curves in stages.items()}
        spent = sum(r.samples for r in runs.values())
        lost = [name for name, r in runs.items() if not r.winner_kept]
        rng = np.random.default_rng(0)
        shuffled_spent, all_kept = [], 0
        for _ in range(orders):
            again = {name: replay_stage(curves, rule, list(shuffled(len(curves), rng))) for name, curves in
                     stages.items()}
            shuffled_spent.append(sum(r.samples for r in again.values()) / grid)
            all_kept += all(r.winner_kept for r in again.values())
        lines.append(f"| {rule.name} | {spent / grid:.1%} | {9 - len(lost)} | {', '.join(lost) or '-'} | "
                     f"{np.mean(shuffled_spent):.1%} | {all_kept / orders:.0%} |")
    lines += ["", "## The defaults, stage by stage", "",
              "| stage | trials | stopped at the rung | samples | of the grid's | grid winner kept | same winner | "
              "shuffled: orders losing the winner |", "|---|---|---|---|---|---|---|---|"]
    total = spent_all = 0
    defaults = RungRule("defaults")
    for name, curves in stages.items():
        r = replay_stage(curves, defaults)
        total, spent_all = total + r.grid, spent_all + r.samples
        rng = np.random.default_rng(0)
        lost = sum(not replay_stage(curves, defaults, list(shuffled(len(curves), rng))).winner_kept
                   for _ in range(orders))
        lines.append(f"| {name} | {r.trials} | {r.stopped} | {r.samples:,} | {r.share:.1%} | "
                     f"{'yes' if r.winner_kept else 'no'} | {'yes' if r.same_winner else 'no'} | "
                     f"{lost / orders:.0%} |")
    lines.append(f"| all | {sum(len(c) for c in stages.values())} | | {spent_all:,} | {spent_all / total:.1%} "
                 "| | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("curves")
    p.add_argument("--orders", type=int, default=100, help="shuffled trial orders per rule")
    args = p.parse_args()
    print(report(load_stages(args.curves), args.orders))


if __name__ == "__main__":
    main()

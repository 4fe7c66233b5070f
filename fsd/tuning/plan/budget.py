"""`--budget`: what a user can spend, planned over the stages of a search and never exceeded.

A budget is training samples (`2e6`), a share of the grid's samples (`20%`: what the paper's grid would train,
the grid strategy's count) or hours on this machine (`8h`, converted with --estimate's timed steps). The plan
gives each stage a share of it in proportion to what the grid would spend there, and picks per stage the
plan that fits: the most trials (Optuna's TPE samples, on a large grid). The first rung stays where the
search puts it (--first-rung): an earlier rung is where the score does not rank yet, so it saves nothing
(tied trials go on) or cuts the future winner (docs/results.md, "Rungs that keep the winner"). While a
stage runs, `fsd.tuning.search.halving.BudgetGate` starts a trial only when what is left pays for
its whole budget, after what the running trials may still spend and what the later stages are planned to
spend: the samples a search trains never exceed the budget.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from fsd.tuning.plan.rungs import expected_samples, rungs_for

MIN_TRIALS = 3  # TPE needs a few trials to learn from; fewer are not worth a stage


@dataclass(frozen=True)
class Budget:
    """What the user can spend: exactly one of samples, share (of the grid's samples) and hours."""

    text: str
    samples: float | None = None
    share: float | None = None
    hours: float | None = None


def parse(text: str) -> Budget:
    """`2e6` (training samples), `20%` (of the grid's) or `8h` (hours here).

    Raises:
        ValueError: anything else, or a value that is not positive (the message says what to write).
    """
    t = text.strip().lower()
    number = r"(\d+(?:\.\d*)?(?:e[+-]?\d+)?)"
    if m := re.fullmatch(number + r"\s*%", t):
        value, kind = float(m.group(1)), "share"
    elif m := re.fullmatch(number + r"\s*h", t):
        value, kind = float(m.group(1)), "hours"
    elif m := re.fullmatch(number, t):
        value, kind = float(m.group(1)), "samples"
    else:
        raise ValueError(f"--budget {text!r}: write training samples (2e6), a share of the grid's samples (20%) "
                         "or hours on this machine (8h)")
    if not value > 0 or (kind == "share" and value > 100):
        raise ValueError(f"--budget {text!r}: give a positive amount (a share at most 100%)")
    return Budget(text, **{kind: value / 100 if kind == "share" else value})


@dataclass(frozen=True)
class StagePlan:
    name: str
    points: int  # grid points after folding (a refine stage: at most this many)
    trials: int  # trials it starts (x seeds)
    first_rung: float  # halving's first rung, a share of a trial's budget
    per_trial: int  # training samples of a whole trial
    expected: float  # training samples it is expected to spend (its confirmation trials included)
    grid: float  # what the grid strategy would spend on it
    confirm: float = 0.0  # of `expected`, what its confirmation trials spend (paid before its own trials)


@dataclass(frozen=True)
class Plan:
    samples: float  # the budget, in training samples
    stages: tuple[StagePlan, ...]

    @property
    def expected(self) -> float:
        return sum(s.expected for s in self.stages)

    def stage(self, name: str) -> StagePlan | None:
        return next((s for s in self.stages if s.name == name), None)

    def cap(self, name: str, spent_before: float) -> float:
        """What stage `name` may spend: the budget less what was spent before it and what the stages after it
        are planned to spend."""
        names = [s.name for s in self.stages]
        later = sum(s.expected for s in self.stages[names.index(name) + 1:]) if name in names else 0.0
        return self.samples - spent_before - later

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "stages": [asdict(s) for s in self.stages]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(data["samples"], tuple(StagePlan(**s) for s in data["stages"]))


def in_samples(budget: Budget, grid_samples: float, samples_per_hour: float | None) -> float:
    """The budget in training samples (`samples_per_hour`: this machine's rate, needed for hours)."""
    if budget.samples is not None:
        return budget.samples
    if budget.share is not None:
        return budget.share * grid_samples
    if samples_per_hour is None:
        raise ValueError("--budget in hours needs the steps timed here (--estimate's)")
    return budget.hours * samples_per_hour


def make_plan(total: float, stages: list[dict[str, Any]], strategy: str, reduction_factor: float,
              first_rung: float, seeds: int) -> Plan:
    """Each stage's plan within `total` training samples: shares in proportion to what the grid would spend
    on each stage; a stage whose cheapest plan costs more than its share takes that plan, and the rest is
    shared again among the others (water-filling).

    Args:
        stages: per stage `name`, `points` (after folding), `per_trial` (samples of a whole trial), `every`
            (samples between evaluations), `grid` (samples the grid strategy would spend), and `confirm`
            (samples of its confirmation trials: set aside before the shares are made).
        strategy: "halving" (every point starts) or "optuna" (TPE samples as few as MIN_TRIALS points of a
            stage); both at `first_rung`.
    """
    options = {s["name"]: _options(s, strategy, reduction_factor, first_rung, seeds) for s in stages}
    cheapest = {name: min(opts) for name, opts in options.items()}
    reserved = sum(s.get("confirm", 0.0) for s in stages)
    forced: dict[str, tuple] = {}
    while True:
        free = [s for s in stages if s["name"] not in forced]
        left = total - reserved - sum(o[0] for o in forced.values())
        weight = sum(s["grid"] for s in free) or 1.0
        over = [s["name"] for s in free if cheapest[s["name"]][0] > left * s["grid"] / weight]
        if not over:
            break
        forced.update({name: cheapest[name] for name in over})
    out = []
    for s in stages:
        name = s["name"]
        if name in forced:
            cost, n, r = forced[name]
        else:
            share = left * s["grid"] / weight
            cost, n, r = max((o for o in options[name] if o[0] <= share), key=lambda o: (o[1], o[2]))
        confirm = s.get("confirm", 0.0)
        out.append(StagePlan(name, s["points"], n * seeds, r, s["per_trial"], cost + confirm, s["grid"], confirm))
    return Plan(total, tuple(out))


def _options(s: dict[str, Any], strategy: str, rf: float, first_rung: float, seeds: int) -> list[tuple]:
    """(expected samples, points started, first rung) of each plan a stage can take."""
    points, per_trial, every = s["points"], s["per_trial"], s["every"]
    counts = range(points, min(points, MIN_TRIALS) - 1, -1) if strategy == "optuna" else [points]
    rungs = rungs_for(per_trial, first_rung, rf)
    return [(expected_samples(n * seeds, per_trial, rungs, every), n, first_rung) for n in counts]


def format_plan(plan: Plan, budget: Budget) -> str:
    lines = [f"budget {budget.text}: {plan.samples:,.0f} training samples, planned {plan.expected:,.0f} "
             f"({plan.expected / plan.samples:.0%} of it)",
             "| stage | points | trials | first rung | expected samples | of the grid's |", "|---|---|---|---|---|---|"]
    for s in plan.stages:
        lines.append(f"| {s.name} | {s.points} | {s.trials} | {s.first_rung:.3f} | {s.expected:,.0f} | "
                     f"{s.expected / s.grid if s.grid else 0:.0%} |")
    if plan.expected > plan.samples:
        lines.append(f"the budget is below what every stage's smallest plan spends ({plan.expected:,.0f}): the "
                     "search stops starting trials when it is spent, and the stages after that do not run")
    return "\n".join(lines)


def spent_of(records: dict[str, dict[str, Any]]) -> float:
    """Training samples the search's own stages spent so far (stages reused from another search cost nothing)."""
    return float(sum(r.get("samples") or 0 for r in records.values() if not r.get("reused_from")))


def closing_line(record: dict[str, Any]) -> str:
    """The search's last word on its budget: planned against spent."""
    plan = Plan.from_json(record["plan"])
    spent = record.get("spent", 0.0)
    return (f"budget {record['text']}: {plan.samples:,.0f} training samples, planned {plan.expected:,.0f}, spent "
            f"{spent:,.0f} ({spent / plan.samples:.0%} of the budget)")

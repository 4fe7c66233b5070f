"""How a stage's grid is searched (`Strategy`: the grid, halving's rungs, Optuna's samples, --budget's cap, the
confirmations), and how many trials that runs on which seeds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fsd.tuning.plan.spec import SearchSpec

# Defaults measured by bench/search_cost.py on a recorded SST-2 grid (docs/results.md, "What halving saves on one
# stage"); the reduction factor and first rung are SearchSpec's defaults.
SAMPLE_SHARE = 1 / 3  # --strategy optuna: trials per stage as a share of its grid
OPTUNA_MIN_GRID = 20  # smaller grids run whole (under halving) even with --strategy optuna


@dataclass(frozen=True)
class Strategy:
    """How a stage's grid is searched: `kind` grid, halving or optuna; halving's rungs; Optuna's samples; with
    --budget, what the stage may spend (`cap`, training samples)."""

    kind: str
    reduction_factor: float | None = None
    first_rung: float | None = None
    num_samples: int | None = None
    cap: int | None = None
    confirm: tuple[int, int] | None = None  # (leading points, more seeds each) confirmed before a winner is named

    def key(self) -> dict[str, Any]:
        """As a stage's key records it (the values that are set)."""
        out: dict[str, Any] = {"strategy": self.kind}
        for name in ("reduction_factor", "first_rung", "num_samples", "cap", "confirm"):
            if getattr(self, name) is not None:
                out[name] = list(self.confirm) if name == "confirm" else getattr(self, name)
        return out


def strategy_of(spec: SearchSpec, grid: dict[str, tuple], planned=None, cap: float | None = None) -> Strategy:
    """How this stage's grid is searched: the grid, or halving's rungs (and optuna's number of samples); with
    --budget, the stage's plan (`fsd.tuning.plan.budget.StagePlan`) and what it may spend (`cap`)."""
    kind = stage_strategy(spec.strategy, grid_size(grid))
    if planned is not None:  # the budget's plan samples a grid of any size, or none
        kind = "optuna" if planned.trials // spec.seeds < grid_size(grid) else "halving"
    confirm = (spec.confirm_top, spec.confirm_seeds) if confirms(spec) else None
    if kind == "grid":
        return Strategy("grid", confirm=confirm)
    samples = None
    if kind == "optuna":
        samples = optuna_samples(grid_size(grid), spec.num_samples) if planned is None else \
            max(1, planned.trials // spec.seeds)
    return Strategy(kind, spec.reduction_factor, spec.first_rung if planned is None else planned.first_rung,
                    samples, None if cap is None else int(cap), confirm)


def stage_strategy(strategy: str, grid_size: int) -> str:
    """The strategy a stage of `grid_size` points runs: optuna only pays off on large grids."""
    if strategy == "optuna" and grid_size < OPTUNA_MIN_GRID:
        return "halving"
    return strategy


def optuna_samples(grid_size: int, num_samples: int | None) -> int:
    """Trials of an optuna stage: `--num-samples`, else SAMPLE_SHARE of the grid (never more than the grid)."""
    n = num_samples if num_samples is not None else math.ceil(SAMPLE_SHARE * grid_size)
    return max(1, min(n, grid_size))


def grid_size(grid: dict[str, tuple]) -> int:
    n = 1
    for values in grid.values():
        n *= len(values)
    return n


def seed_list(spec: SearchSpec) -> list[int]:
    return [spec.seed + i for i in range(spec.seeds)]


def confirms(spec: SearchSpec) -> bool:
    """Whether a stage trains its leading points on more seeds before it names a winner."""
    return spec.confirm_top > 0 and spec.confirm_seeds > 0


def confirm_runs(spec: SearchSpec, points: int) -> int:
    """The confirmation trials of a stage whose grid has `points` points that can reach the end (a stage
    with a single point has nothing to confirm it against)."""
    return min(spec.confirm_top, points) * spec.confirm_seeds if confirms(spec) and points > 1 else 0


def confirms_at_once(how: Strategy, points: int) -> bool:
    """Whether a stage's confirmation seeds run beside its own seed, in the stage's one experiment: a grid with
    no cap whose every one of its `points` is one of the leading points confirmed (the cpu preset's two-point
    stages). Its leaders are known before any trial runs, so nothing waits for a ranking; and in one experiment
    a slot's worker serves its next trial (`reuse_actors`), where a second experiment starts fresh workers."""
    return how.kind == "grid" and how.cap is None and how.confirm is not None and 1 < points <= how.confirm[0]


def confirm_seed_list(spec: SearchSpec) -> list[int]:
    """The seeds of the confirmation trials: the next ones after the `seeds` every point runs."""
    return [spec.seed + spec.seeds + i for i in range(spec.confirm_seeds)]


def stage_trials(spec: SearchSpec, grid: dict[str, tuple], how: Strategy) -> int:
    """How many Ray trials a stage over `grid` searched as `how` runs at most: its points (or Optuna's
    samples) times the seeds."""
    return (how.num_samples or grid_size(grid)) * spec.seeds

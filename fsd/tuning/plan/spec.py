"""SearchSpec: what tune_main.py resolved from the command line, and what a resumed search must keep.

Kept apart from runner.py so that checking a command line needs no Ray import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fsd.config import SPEED_FIELDS
from fsd.layout import Layout

HOLDOUT_ROWS = 1000  # --select-on holdout: at most this many training rows, and at most HOLDOUT_SHARE of them
HOLDOUT_SHARE = 0.1
# Halving's defaults. The reduction factor was measured by bench/search_cost.py on a recorded SST-2 grid
# (docs/results.md, "What halving saves on one stage"). The first rung is where the score first ranks the
# recorded paper schedule on SST-2 (bench/rung_rules.py; docs/results.md, "Rungs that keep the winner"): at 1/4
# and 1/2 of a trial every stage's scores tied or ranked against the final ones (mean rho 0.24 at 1/2, FSD's
# winner 16th of 24 there); at 3/4, rho 0.78 and every stage winner kept.
REDUCTION_FACTOR = 3.0
FIRST_RUNG = 3 / 4  # of a trial's budget
# The values a SearchSpec's choices take (and the command's flags offer): see fsd.tuning.plan.strategy for the
# strategies, ranking.py for the splits; "all" also keeps and logs every trial's best checkpoint.
STRATEGIES = ("grid", "halving", "optuna")
SELECT_ON = ("dev", "holdout")
LOG_CHECKPOINTS = ("best", "all")

# What a resumed search must agree on with the stored one (the rest, e.g. concurrency, may change).
IDENTITY = ("task", "method", "preset", "teacher", "teacher_epochs", "teacher_lr", "student_init", "student_layers",
            "data_dir", "seeds", "confirm_top", "confirm_seeds", "max_seq_len", "strategy", "reduction_factor",
            "first_rung", "num_samples", "extra", "grids", "select_on", "holdout_rows", "budget")
# DistillConfig values that change speed only (results equal up to float rounding): free to change on --resume.
SPEED_KEYS = SPEED_FIELDS


@dataclass(frozen=True)
class SearchSpec:
    """Everything tune_main.py resolved from the command line."""

    task: str
    method: str
    storage: str  # absolute root: teachers, data cache and memories shared by searches; one folder per search
    mlflow_uri: str
    teacher: str
    student_init: str | None = None
    student_layers: int = 6
    data_dir: str | None = None
    preset: str = "paper"
    stages: tuple[str, ...] = ()  # empty: all
    seeds: int = 1
    seed: int = 42
    confirm_top: int = 0  # a stage's leading points trained on more seeds before it names its winner (0: none)
    confirm_seeds: int = 0  # the seeds each of them gets, after the `seeds` every point runs
    fresh_seeds: int = 0  # after the search: its best and the untuned start points on this many fresh seeds
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    max_concurrent: int = 0
    max_failures: int = 1
    strategy: str = "grid"  # grid (the paper's), halving or optuna: see fsd.tuning.plan.strategy
    reduction_factor: float = REDUCTION_FACTOR
    first_rung: float = FIRST_RUNG  # of a trial's budget
    num_samples: int | None = None  # optuna: trials per large stage; None: a share of its grid
    budget: str | None = None  # --budget as written: training samples, a share of the grid's, or hours
    select_on: str = "dev"  # what trials are ranked on: dev (the paper's protocol) or a holdout of training rows
    holdout_rows: int | None = None  # with select_on holdout: its size (resolved from the data by the checks)
    max_seq_len: int = 128
    teacher_epochs: int = 3
    teacher_lr: float | None = None  # None: the task's paper value
    log_checkpoints: str = "best"
    verbose: bool = False  # Ray's and MLflow's own console output, which the search keeps off by default
    address: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more DistillConfig values for every trial (--set)
    grids: dict[str, tuple] = field(default_factory=dict)  # searched values that replace the schedule's (--grid)

    @property
    def holdout(self) -> dict[str, int]:
        """The DistillConfig values of the holdout every trial (and the teacher) of the search is ranked on."""
        if self.select_on != "holdout":
            return {}
        return {"holdout_rows": self.holdout_rows, "holdout_seed": self.seed}

    @property
    def folder(self) -> str:
        """This search's own folder: ledger, Ray experiments."""
        return str(Layout(self.storage).search(self.task, self.method))


def identity(spec: SearchSpec) -> dict[str, Any]:
    """The IDENTITY values of `spec` as the ledger stores them (JSON types, speed-only --set values left out)."""
    out = {k: getattr(spec, k) for k in IDENTITY}
    out["extra"] = {k: v for k, v in sorted(spec.extra.items()) if k not in SPEED_KEYS}
    out["grids"] = {k: list(v) for k, v in sorted(spec.grids.items())}  # as JSON reads them back
    return out


def method_spec(spec: SearchSpec, method: str) -> SearchSpec:
    """The search that `--compare` reuses, or runs first, for `method`: every stage, one seed per grid point
    (the comparison's own seeds come after)."""
    return dataclasses.replace(spec, method=method, seeds=1, stages=())

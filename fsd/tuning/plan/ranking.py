"""What a stage ranks its trials by and on: the metric its winner maximises, what halving's rungs and TPE rank by,
when a score ties with a rung's cutoff; the split the trials are ranked on and the kind of its score."""

from __future__ import annotations

from typing import Any

from fsd.config import DataSpec
from fsd.data import split_rows
from fsd.metrics import BEST_SCORE, SCORE
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.plan.trials import data_values
from search_spaces import Schedule

METRIC = SCORE  # what a stage's winner maximises (on dev, or on the holdout)
MODE = "max"
# What halving and TPE rank trials by at a rung: the ranking split's score, what the winner is picked by. The
# loss, which does not tie where early scores do, ranked the stage winners of the recorded SST-2 schedule far
# down where the score could not rank yet, so rungs ranked by it cut them; where every score ties, a rung keeps
# every trial instead (bench/rung_rules.py, its ranks in bench/results/sst2-rungs/rules.md; docs/results.md,
# "Rungs that keep the winner").
RUNG_METRIC, RUNG_MODE = SCORE, "max"
RUNG_BEST = BEST_SCORE  # what TPE learns from: a trial's best score (a stopped trial's, at its rung)
# Scores this close to a rung's cutoff are tied with it, and go on: half a point, well inside a holdout's
# sampling error, and the smallest tolerance tried that kept every stage winner of the recorded schedule
# (docs/results.md, "Rungs that keep the winner").
RUNG_TIE = 0.005


def ranking_split(spec: SearchSpec, schedule: Schedule) -> dict[str, Any]:
    """What the search's trials are ranked on: the split, its rows and the kind of score (accuracy, mcc, f1_acc,
    pearson_spearman): the size that bounds how finely one trial's score can rank."""
    data = DataSpec(**data_values(spec, schedule))
    held = spec.holdout.get("holdout_rows", 0)
    dev = split_rows(spec.task, spec.data_dir, data.max_train_samples, data.max_eval_samples, held)[1]
    return {"split": "holdout" if held else "dev", "rows": held or dev, "score": score_kind(spec.task)}


def score_kind(task: str) -> str:
    """The kind of a task's selection score: accuracy, mcc, f1_acc, or pearson_spearman (STS-B)."""
    from fsd.tasks import get_task

    found = get_task(task)
    return "pearson_spearman" if found.is_regression else found.score

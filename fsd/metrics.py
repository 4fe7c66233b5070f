"""GLUE dev metrics: F1 and MCC from scikit-learn, the correlations from scipy, accuracy as the share of equal
labels. scikit-learn and scipy are imported where a task needs them: every trial's worker imports this module,
and on an accuracy task they added about a second to each worker's start (docs/speed.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fsd.tasks import get_task

if TYPE_CHECKING:
    from fsd.data import Holdout

# What a run reports at each evaluation, by these names everywhere (the search ranks, stops and counts by them):
# this is their one spelling, every other module reads them here (tests/test_metric_names.py checks it).
SCORE = "eval/score"  # the task's selection metric on the ranking split (dev, or the holdout)
BEST_SCORE = "eval/best_score"  # the best SCORE of the run so far (a stopped trial's, at its rung)
LOSS = "eval/loss"  # the label loss on the ranking split
BEST_LOSS = "eval/best_loss"  # the lowest LOSS of the run so far
EVAL_ROWS = "eval/rows"  # rows of the ranking split evaluated
DEV_SCORE = "dev/score"  # SCORE measured on dev for a checkpoint ranked on a holdout (`fsd.train.evaluate_on_dev`)
SAMPLES = "progress/samples"  # training samples seen: the unit of rungs, budgets and curves
BUDGET = "progress/budget"  # the training samples of the whole run
SAMPLES_PER_S = "train/samples_per_s"  # training throughput of the epoch
TRAIN_S = "time/train_s"  # seconds training since the last evaluation
EPOCH_S = "time/epoch_s"  # a teacher epoch's training seconds (TRAIN_S under the teacher's name)
TOTAL_EPOCH_S = "time/total_epoch_s"  # a teacher epoch's seconds, its evaluation included
TEACHER_S = "time/teacher_s"  # of TRAIN_S, the seconds spent reading the teacher's outputs
SETUP_S = "time/setup_s"  # seconds before the first step
EVAL_S = "time/eval_s"  # seconds of the evaluation
RESUMED_FROM = "run/resumed_from"  # the samples a resumed run started from
STUDENT_PARAMS = "run/student_params"  # the student's parameter count


def reached_budget(result: dict) -> bool:
    """Whether a run whose last report is `result` trained to its full budget (one stopped at a rung did not;
    a report from before rungs existed has no progress and counts as whole)."""
    if SAMPLES not in result or BUDGET not in result:
        return True
    return float(result[SAMPLES]) >= float(result[BUDGET])


def _as_predictions(predictions: np.ndarray, regression: bool) -> np.ndarray:
    preds = np.asarray(predictions)
    if regression:
        return preds.reshape(-1).astype(np.float64)
    return preds.argmax(axis=-1) if preds.ndim == 2 else preds.astype(np.int64)


def glue_metrics(task: str, predictions, labels) -> dict[str, float]:
    """Every metric of `task` plus `score`, the primary selection metric.

    Args:
        task: a GLUE task name.
        predictions: class ids `[N]`, logits `[N, C]`, or regression outputs `[N]` / `[N, 1]`.
        labels: gold labels `[N]`.

    Returns:
        e.g. `{"accuracy": .., "f1": .., "score": (f1 + accuracy) / 2}` for MRPC and QQP; CoLA's score is
        Matthews correlation, STS-B's the mean of Pearson and Spearman, the rest accuracy.
    """
    spec = get_task(task)
    preds = _as_predictions(predictions, spec.is_regression)
    gold = np.asarray(labels).reshape(-1)
    if len(preds) != len(gold):
        raise ValueError(f"{len(preds)} predictions for {len(gold)} labels")
    out: dict[str, float] = {}
    if spec.is_regression:
        from scipy.stats import pearsonr, spearmanr

        # A constant prediction makes the correlations undefined; 0 is the honest score there.
        constant = np.ptp(preds) == 0 or np.ptp(gold) == 0
        out["pearson"] = 0.0 if constant else float(pearsonr(preds, gold)[0])
        out["spearman"] = 0.0 if constant else float(spearmanr(preds, gold)[0])
        out["score"] = (out["pearson"] + out["spearman"]) / 2
        return out
    out["accuracy"] = float(np.mean(gold == preds))  # sklearn's accuracy_score, to the bit (tests/test_metrics.py)
    if "f1" in spec.metrics or "mcc" in spec.metrics:
        from sklearn.metrics import f1_score, matthews_corrcoef

        if "f1" in spec.metrics:
            out["f1"] = float(f1_score(gold, preds, zero_division=0.0))
        if "mcc" in spec.metrics:
            out["mcc"] = float(matthews_corrcoef(gold, preds))
    out["score"] = {
        "accuracy": out["accuracy"],
        "mcc": out.get("mcc", 0.0),
        "f1_acc": (out.get("f1", 0.0) + out["accuracy"]) / 2,
    }[spec.score]
    return out


def majority(task: str, data_dir: str | None, max_train_samples: int | None, max_eval_samples: int | None,
             holdout: Holdout | None = None) -> dict[str, float] | None:
    """Dev metrics of always answering the most frequent training label, on the rows the runs saw (those
    left after the `holdout`): the floor a student must clear to have learnt anything (None for STS-B, a
    regression)."""
    from fsd.data import load_raw  # reading data is not what metrics need otherwise

    spec = get_task(task)
    if spec.is_regression:
        return None
    raw = load_raw(spec, data_dir)
    train = raw["train"]["label"]
    if holdout is not None:
        train = [train[i] for i in holdout.split(train, regression=False)[0]]
    train, dev = train[:max_train_samples], raw[spec.dev_splits[0]]["label"][:max_eval_samples]
    values, counts = np.unique(train, return_counts=True)
    guess = np.full(len(dev), values[counts.argmax()])
    return {f"eval/{k}": v for k, v in glue_metrics(task, guess, dev).items()}

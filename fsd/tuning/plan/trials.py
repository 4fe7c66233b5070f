"""What every trial of a stage shares before it runs: the search's data values (the teacher's too), the stage's
base config (its per-trial defaults, inherited winners and fixed values), its training rows and longest budget."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from fsd.config import DataSpec, DistillConfig, check_partial
from fsd.data import split_rows
from fsd.tuning.plan.rungs import eval_every
from fsd.tuning.plan.spec import SearchSpec
from search_spaces import Schedule, Stage

DATA_FIELDS = tuple(f.name for f in fields(DataSpec))


def data_values(spec: SearchSpec, schedule: Schedule) -> dict[str, Any]:
    """The `DataSpec` values of the search, the one source of its trials' (`stage_base`) and its teacher's
    (`teacher_spec`) data settings: the task, folder, length, seed and holdout of the command line, the
    preset's row limits and batch size, and --set's data values over those (a value the user set beats the
    preset's budget; the grid still beats both). Unset values are left out (DataSpec's defaults apply)."""
    values: dict[str, Any] = {"task": spec.task, "data_dir": spec.data_dir, "max_seq_len": spec.max_seq_len,
                              "seed": spec.seed, **spec.holdout}
    budget = schedule.budget
    for key in ("max_train_samples", "max_eval_samples", "batch_size"):
        if getattr(budget, key) is not None:
            values[key] = getattr(budget, key)
    values.update({k: v for k, v in spec.extra.items() if k in DATA_FIELDS})
    return values


def stage_base(spec: SearchSpec, schedule: Schedule, stage: Stage, teacher: str,
               winners: dict[str, dict[str, Any]], rows: int | None = None) -> dict[str, Any]:
    """The DistillConfig values every trial of `stage` shares, each checked against DistillConfig's field
    types (`fsd.config.check_partial`). With `rows` (training rows per epoch) and a strategy that halves, the
    trials evaluate `evals_per_epoch` times per epoch, unless --set says otherwise."""
    base: dict[str, Any] = {
        **data_values(spec, schedule),
        # No --student-init: the student starts from the backbone the teacher was fine-tuned from (its
        # fsd_teacher.json says which), never from the fine-tuned teacher itself (docs/method.md §1).
        "teacher": teacher, "student_init": spec.student_init, "student_layers": spec.student_layers,
        "method": stage.method, "storage": spec.storage, **spec.extra}
    for param, source in stage.inherit.items():
        base[param] = winners[source][param]
    base.update(stage.fixed)
    budget = schedule.budget
    for key in ("epochs", "memory_size"):
        if getattr(budget, key) is not None and key not in spec.extra:
            base[key] = getattr(budget, key)
    if rows is not None and spec.strategy != "grid" and "eval_every" not in spec.extra:
        base["eval_every"] = eval_every(rows, budget.evals_per_epoch)
    return check_partial(base)


def train_rows(spec: SearchSpec, schedule: Schedule) -> int:
    """Training rows per epoch of the search's trials (the --set or preset limit applied)."""
    limit = data_values(spec, schedule).get("max_train_samples")
    return split_rows(spec.task, spec.data_dir, limit, holdout=spec.holdout.get("holdout_rows", 0))[0]


def trial_budget(base: dict[str, Any], grid: dict[str, tuple], rows: int) -> int:
    """The training samples of the stage's longest trial."""
    epochs = max(grid["epochs"]) if "epochs" in grid else base.get("epochs", DistillConfig.epochs)
    return rows * epochs

"""The two ends a search's students are measured between: the teacher they distil (its recipe, fine-tuned once per
recipe) and the majority-class floor they must clear."""

from __future__ import annotations

from fsd.config import DataSpec
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.plan.trials import data_values
from search_spaces import Schedule


def majority_floor(spec: SearchSpec, schedule: Schedule) -> dict[str, float] | None:
    """The dev metrics of answering the search's most frequent training label (None for a regression)."""
    from fsd.data import Holdout
    from fsd.metrics import majority

    data = DataSpec(**data_values(spec, schedule))
    holdout = Holdout(spec.holdout_rows, spec.seed) if spec.select_on == "holdout" else None
    return majority(spec.task, spec.data_dir, data.max_train_samples, data.max_eval_samples, holdout)


def teacher_spec(spec: SearchSpec, schedule: Schedule):
    """The recipe of the search's teacher (fine-tuned once per recipe, or `spec.teacher` if already one): the
    rows the trials train on (`data_values`, --set's row limits included), in the paper's teacher batches."""
    from fsd.teacher import TeacherSpec, teacher_data

    data = DataSpec(**data_values(spec, schedule))
    return TeacherSpec(spec.teacher, teacher_data(data), epochs=spec.teacher_epochs, lr=spec.teacher_lr)

"""Disk space: what a search will hold at its fullest (--dry-run), a stage that cannot fit is not started, and
a disk that fills anyway stops the search with one line that names the folder and what the rest of the search
needs, so that the user frees space and resumes.

What a search keeps is bounded by its stages, not its trials (fsd/tuning/search/retention.py): each done stage keeps
its winner's checkpoint (the student's weights) and its MLflow copy; a running trial keeps up to two
checkpoints that can resume (its best and its latest: weights, AdamW's two moments, the student memory); the
teacher, its output cache and memory are written once. A checkpoint's size is measured on those already
written; before the first one, it is bounded by four times the teacher's weights.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from fsd.layout import Layout
from fsd.storage import free_bytes
from fsd.teacher_source import CACHE_DISK_SHARE
from fsd.tuning.plan.spec import SearchSpec
from search_spaces import Schedule

FULL_TEXTS = ("No space left on device", "database or disk is full", "Disk quota exceeded")


class DiskFull(RuntimeError):
    """The storage folder's disk cannot hold what the search must write next; the message says how much."""


def disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, is a full disk (an OSError, or SQLite's or Ray's
    wrapping of one, which only keep its text)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in FULL_TEXTS):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@dataclass
class Need:
    per_trial: int  # bytes a trial keeps
    measured: bool  # per_trial measured on this storage's checkpoints (else bounded from the teacher)
    trials: int  # trials still to run
    stages: int  # stages still to run (each logs its winner's student once more)

    @property
    def total(self) -> int:
        return (self.trials + self.stages) * self.per_trial

    def says(self) -> str:
        how = "measured" if self.measured else "at most, from the teacher's weights"
        return (f"about {size(self.total)} ({self.trials} trial(s) left x {size(self.per_trial)} a checkpoint, "
                f"{how})")


def per_trial_bytes(storage: str, teacher: str | None) -> tuple[int, bool] | None:
    """The largest trial checkpoint under `<storage>/stages`, else 4x the teacher's weights; None when
    neither can be read (a teacher named on the hub and not downloaded yet)."""
    sizes = [folder_bytes(p) for p in Layout(storage).stages.glob("*/*/*/checkpoint_*") if p.is_dir()]
    if sizes:
        return max(sizes), True
    if teacher and Path(teacher).is_dir():
        weights = sum(f.stat().st_size for f in Path(teacher).iterdir()
                      if f.suffix in (".safetensors", ".bin") and f.is_file())
        if weights:
            return 4 * weights, False
    return None


def need(spec: SearchSpec, schedule: Schedule, done: set[str], teacher: str | None) -> Need | None:
    """What the stages of `schedule` not in `done` will keep on disk (shared stages already run elsewhere
    count as nothing), or None when a checkpoint's size cannot be told yet."""
    from fsd.tuning.cost.count import search_cost

    per = per_trial_bytes(spec.storage, teacher)
    if per is None:
        return None
    left = [c for c in search_cost(spec, schedule).stages if not c.reused and c.name not in done]
    return Need(per[0], per[1], sum(c.runs for c in left), len(left))


def check_stage(spec: SearchSpec, stage: str, trials: int, teacher: str | None) -> None:
    """Stop before a stage whose trials' checkpoints cannot fit in the free space of the storage folder."""
    per = per_trial_bytes(spec.storage, teacher)
    if per is None:
        return
    wanted, free = (trials + 1) * per[0], free_bytes(spec.storage)
    if free < wanted:
        how = "measured" if per[1] else "at most, from the teacher's weights"
        raise DiskFull(f"not enough space in {spec.storage}: {size(free)} free, stage {stage} needs about "
                       f"{size(wanted)} ({trials} trial(s) x {size(per[0])} a checkpoint, {how}): free space there "
                       "or move the folder to a larger disk, then run again with --resume")


def full_message(spec: SearchSpec, schedule: Schedule, done: set[str], teacher: str | None,
                 error: BaseException) -> str:
    """The one line for a disk that filled up while the search wrote."""
    rest = need(spec, schedule, done, teacher)
    wanted = f"; the rest of the search needs {rest.says()}" if rest is not None else ""
    return (f"the disk of {spec.storage} is full ({size(free_bytes(spec.storage))} free){wanted}: free space there "
            "or move the folder to a larger disk, then run again with --resume (finished trials and stages are "
            f"kept; the write that failed: {_first_line(error)})")


def _first_line(error: BaseException) -> str:
    for e in (error, error.__cause__, error.__context__):
        if e is not None and isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(e)[:200]
    lines = [ln.strip() for ln in str(error).splitlines() if any(t in ln for t in FULL_TEXTS)]
    return (lines[0] if lines else type(error).__name__)[:200]


def size(n: float) -> str:
    """Bytes in the largest unit that keeps the number under 1,024 (binary units, as `df -h`)."""
    unit = "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            break
        n /= 1024
    return f"{n:,.0f} B" if unit == "B" else f"{n:,.1f} {unit}"


# ---------------------------------------------------------------------------------------------- the peak
@dataclass(frozen=True)
class Peak:
    """What a search holds on disk at its fullest, in bytes (an estimate from the models' shapes)."""

    student: int  # one student's weights (float32)
    resume: int  # what a resumable checkpoint adds: AdamW's moments, the student memory and its moments
    running: int  # trials at once
    stages: int  # trial stages: each keeps its winner's checkpoint and one MLflow copy of it
    teacher: int  # the fine-tuned teacher's weights
    cache: int  # at most: the teacher-output cache (float16 features at full length) and the teacher memory

    @property
    def total(self) -> int:
        kept = 2 * self.stages * self.student
        running = self.running * 2 * (self.student + self.resume)
        leader = self.student  # the stage's best finished trial so far, until the stage ends
        return kept + running + leader + self.teacher + self.cache

    def says(self) -> str:
        return (f"disk at its peak: about {size(self.total)} ({self.stages} stage winners kept and registered once "
                f"in MLflow, {size(2 * self.stages * self.student)}; {self.running} running trial(s) with two "
                f"resumable checkpoints each, {size(self.running * 2 * (self.student + self.resume))}; the teacher, "
                f"{size(self.teacher)}; its output cache and memory, {size(self.cache)})")


def peak(spec: SearchSpec, schedule: Schedule, stages: int, rows: int, cache_bytes: float | None = None) -> Peak | None:
    """The disk `schedule` needs at its fullest with `stages` trial stages to run over `rows` training rows (the
    teacher-output cache `cache_bytes` when measured, else at most full-length features), or None when the
    backbone's configuration is not on this machine (a hub model not downloaded yet)."""
    import os

    from fsd.models import teacher_meta
    from fsd.tasks import get_task

    task = get_task(spec.task)
    meta = teacher_meta(spec.teacher) if Path(spec.teacher).is_dir() else None
    backbone = spec.student_init or (meta or {}).get("backbone") or spec.teacher
    student = _shape(backbone, spec.student_layers, task.num_labels)
    teacher = _shape(spec.teacher, None, task.num_labels)
    if student is None or teacher is None:
        return None
    k = schedule.budget.memory_size or spec.extra.get("memory_size") or task.memory_size
    memory = any(s.method in ("fsdg", "fsd") for s in schedule.stages)
    s_memory = 3 * 4 * k * spec.max_seq_len * student[1] if memory else 0
    t_memory = 4 * k * spec.max_seq_len * teacher[1] if memory else 0
    features = 2 * rows * spec.max_seq_len * teacher[1]
    budget = spec.extra.get("cache_budget_gb")
    limit = budget * 1e9 if budget is not None else CACHE_DISK_SHARE * free_bytes(spec.storage)
    cache = int(min(features, limit) if cache_bytes is None else cache_bytes) + t_memory
    cores = os.cpu_count() or 1
    running = max(1, int(cores // spec.cpus_per_trial))
    if spec.gpus_per_trial:
        running = min(running, max(1, int(1 / spec.gpus_per_trial)))
    if spec.max_concurrent:
        running = min(running, spec.max_concurrent)
    return Peak(4 * student[0], 2 * 4 * student[0] + s_memory, running, stages, 4 * teacher[0], cache)


def _shape(name: str, layers: int | None, num_labels: int) -> tuple[int, int] | None:
    """(parameters, hidden size) of a sequence classifier on `name`'s configuration, cut to `layers`, read from
    this machine only (the hub is not contacted); None when it is not here."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from fsd.models import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name), local_files_only=True)
    except (OSError, ValueError):
        return None
    if layers is not None:
        config.num_hidden_layers = min(layers, config.num_hidden_layers)
    config.num_labels = num_labels
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return sum(p.numel() for p in model.parameters()), config.hidden_size

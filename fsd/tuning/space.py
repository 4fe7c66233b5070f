"""Disk space: a stage that cannot fit is not started, and a disk that fills anyway stops the search with one
line that names the folder and what the rest of the search needs, so that the user frees space and resumes.

What a search keeps is mostly trial checkpoints: one per trial (Ray keeps each trial's best), each about
three copies of the student's weights (weights and AdamW's two moments), plus the winner's exported student
and its MLflow copy. Their size is measured on the checkpoints already written; before the first one, it is
bounded by four times the teacher's weights (a student is at most as large as its teacher).
"""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path

from fsd.tuning.spec import SearchSpec
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
    sizes = [folder_bytes(p) for p in Path(storage, "stages").glob("*/*/*/checkpoint_*") if p.is_dir()]
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
    from fsd.tuning.cost import search_cost

    per = per_trial_bytes(spec.storage, teacher)
    if per is None:
        return None
    left = [c for c in search_cost(spec, schedule).stages if not c.reused and c.name not in done]
    return Need(per[0], per[1], sum(c.runs for c in left), len(left))


def free_bytes(storage: str) -> int:
    folder = Path(storage)
    while not folder.exists():  # a storage folder not created yet: its nearest existing parent's disk
        folder = folder.parent
    return shutil.disk_usage(folder).free


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

"""Checkpoint folders Ray never took: what a trial's copy into the storage folder leaves when it is cut short.

A trial writes its checkpoint in a folder of its own; Ray copies it into the storage folder file by file and
only once the copy is done sends the result that names it (`checkpoint_dir_name` in the trial's
`result.json`, ray/train/_internal/session.py `report`). Only a named checkpoint is ever registered, restored
from or picked as a winner. A copy cut short (a full disk, a killed worker or driver) leaves a folder that no
result names, some of its files whole and some empty or partial, and nothing reads it: the checks of stored
files pass over it (`fsd.tuning.command.stored`), and a stage that restores its experiment removes it first,
so that the retried trial's copy does not land on top of its remains.
"""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

CHECKPOINTS = "checkpoint_*"
RESULTS = "result.json"  # Ray's JSON-lines log of a trial's results, one object a line


def reported(trial: Path) -> set[str]:
    """The checkpoint folder names the results of `trial` (a trial's folder) name. Ray's `result.json` is read
    as data, line by line; a line cut short (the disk that cut the copy may have cut the log too) names
    nothing."""
    names: set[str] = set()
    try:
        text = (trial / RESULTS).read_text(errors="replace")
    except OSError:
        return names
    for line in text.splitlines():
        try:
            name = json.loads(line).get("checkpoint_dir_name")
        except (ValueError, AttributeError):
            continue
        if isinstance(name, str):
            names.add(name)
    return names


def unreported(experiments: Path, experiment: str | None = None) -> list[Path]:
    """The checkpoint folders under `experiments/<experiment>/<trial>/` (a stage folder; every experiment of it
    unless one is named) that no result of their trial names."""
    pattern = f"{'*' if experiment is None else glob.escape(experiment)}/*/{CHECKPOINTS}"
    out = []
    for trial in sorted({p.parent for p in experiments.glob(pattern) if p.is_dir()}):
        names = reported(trial)
        out += [p for p in sorted(trial.glob(CHECKPOINTS)) if p.is_dir() and p.name not in names]
    return out


def remove_unreported(experiment: Path) -> list[Path]:
    """Remove the checkpoint folders of `experiment` (one Ray experiment's folder) that no result names, and
    return them."""
    gone = unreported(experiment.parent, experiment.name)
    for folder in gone:
        shutil.rmtree(folder, ignore_errors=True)
    return gone

"""The teacher's pass that writes the teacher-output cache (fsd.teacher_source reads it): one pass over the
training rows in length-sorted windows, each field's rows at their places in a `.npy` file.

A pass cut short (a killed driver, a full disk) is taken up where it stopped: its files grow under a
`.partial` name, and after each window `<folder>/.pass.json` records how many batches they hold. The next
pass over the same fields goes on from there; the teacher computes each batch alone (eval mode, no dropout),
so the files come out as an uninterrupted pass writes them. Only a finished pass renames them to their final
names, so a reader never sees a half-written field.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fsd import failpoints
from fsd.data import Batches
from fsd.logs import console
from fsd.loop import autocast
from fsd.models import run_model
from fsd.progress import Progress
from fsd.storage import write_text

FEATURE_FIELDS = ("penultimate", "cls")
PASS_STATE = ".pass.json"  # a pass cut short: its fields, dtype, shapes and how many batches its files hold


def cache_file(field: str, dtype: str) -> str:
    """The file name of a field's cached rows."""
    return "logits.npy" if field == "logits" else f"{field}-{dtype}.npy"


def _partial(folder: Path, field: str, dtype: str) -> Path:
    return folder / f".{cache_file(field, dtype)}.partial"


def _shapes(teacher: torch.nn.Module, batches: Batches, dtype: str) -> dict[str, tuple[list[int], str]]:
    n, hidden, layers = batches.num_examples, teacher.config.hidden_size, teacher.config.num_hidden_layers
    return {"logits": ([n, teacher.config.num_labels], "float32"),
            "penultimate": ([int(np.sum(batches.lengths)), hidden], dtype), "cls": ([n, layers + 1, hidden], dtype)}


def _state(fields: tuple[str, ...], dtype: str, shapes: dict, batches_done: int) -> dict:
    return {"fields": list(fields), "dtype": dtype, "shapes": {f: shapes[f][0] for f in fields},
            "batches": batches_done}


def _batches_done(folder: Path, fields: tuple[str, ...], dtype: str, shapes: dict) -> int:
    """How many batches a pass cut short wrote for exactly these fields and shapes (0: none to go on from).
    Anything that does not match (another field set, a damaged record, a partial file of another shape) is
    not read: the pass starts afresh and overwrites it."""
    try:
        state = json.loads((folder / PASS_STATE).read_text())
        done = int(state["batches"])
        if state != _state(fields, dtype, shapes, done) or done < 0:
            return 0
        for f in fields:
            if list(np.load(_partial(folder, f, dtype), mmap_mode="r").shape) != shapes[f][0]:
                return 0
        return done
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _open(folder: Path, fields: tuple[str, ...], dtype: str, shapes: dict, fresh: bool) -> dict[str, np.memmap]:
    if fresh:
        return {f: np.lib.format.open_memmap(_partial(folder, f, dtype), mode="w+", dtype=shapes[f][1],
                                             shape=tuple(shapes[f][0])) for f in fields}
    return {f: np.load(_partial(folder, f, dtype), mmap_mode="r+") for f in fields}


@torch.no_grad()
def write_cache(folder: Path, fields: tuple[str, ...], teacher: torch.nn.Module, batches: Batches, dtype: str,
                device: torch.device) -> None:
    """One teacher pass over `batches` writing each of `fields` to `folder`, row i of each at its place (the
    rows run in length-sorted windows: half the padding of the stored order on QQP's lengths), going on from
    the last whole window of a pass over the same fields that was cut short."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = _shapes(teacher, batches, dtype)
    done = _batches_done(folder, fields, dtype, shapes)
    order = list(batches.by_length())
    skipped = sum(len(rows) for rows in order[:done])
    if done:
        console.info(f"teacher cache: going on from row {skipped:,} of {batches.num_examples:,}, where a pass cut "
                     "short stopped")
    out = _open(folder, fields, dtype, shapes, fresh=not done)
    teacher.eval()
    bar = Progress(batches.num_examples - skipped, f"teacher cache ({', '.join(fields)})", unit="row")
    for count, rows in enumerate(order[done:], start=done + 1):
        _write_batch(out, fields, teacher, batches, rows, device)
        bar.update(len(rows))
        if count % batches.GROUP_WINDOW == 0:  # a window written: recorded, and unmapped (one window's pages held)
            for f in fields:
                out[f].flush()
            write_text(folder / PASS_STATE, json.dumps(_state(fields, dtype, shapes, count)))
            out = _open(folder, fields, dtype, shapes, fresh=False)
        failpoints.reached("cache-pass")
    bar.close()
    for f in fields:
        out[f].flush()
    del out
    for f in fields:
        _partial(folder, f, dtype).replace(folder / cache_file(f, dtype))
    (folder / PASS_STATE).unlink(missing_ok=True)


def _write_batch(out: dict[str, np.memmap], fields: tuple[str, ...], teacher: torch.nn.Module, batches: Batches,
                 rows: list[int], device: torch.device) -> None:
    """The teacher's outputs for `rows`, each field's at the rows' places."""
    batch = {k: v.to(device) for k, v in batches.collate(rows).items()}
    with autocast(device):
        t = run_model(teacher, batch, hidden=any(f in fields for f in FEATURE_FIELDS))
    if "logits" in fields:
        out["logits"][rows] = t.logits.float().cpu().numpy()
    if "cls" in fields:
        out["cls"][rows] = torch.stack(t.cls, 1).float().cpu().numpy()
    if "penultimate" in fields:
        states = t.penultimate.float().cpu().numpy()  # padded on the right: a row's real tokens first
        lengths, offsets = batches.lengths, batches.offsets
        for j, i in enumerate(rows):
            out["penultimate"][offsets[i]:offsets[i + 1]] = states[j, :lengths[i]]

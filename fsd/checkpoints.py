"""A run's checkpoint as data: tensors in safetensors files and everything else in JSON, so that loading one
never unpickles (a checkpoint folder may be shared across Ray nodes and users; a pickle in it would run code
in every trial that resumes from it).

A checkpoint is a folder:
    student/model.safetensors, student/config.json   the student, a Hugging Face model folder (the exported
                                                     student adds its tokenizer here)
    checkpoint.json                                  where training stands (epoch, step, samples, best score)
                                                     and the run's configuration
    resume.safetensors, resume.json                  what only resuming needs: the objective's trainable state
                                                     (the student memory), optimiser, scheduler, RNG states

A finished trial drops the two `resume.*` files (`drop_resume_state`): nothing resumes it, and they are about
three quarters of its size (AdamW's two moments, the student memory). Checkpoints of the earlier format
(one `checkpoint.pt`) are read with `torch.load(weights_only=True)`, which refuses anything but tensors and
plain values.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fsd.logs import first_line
from fsd.storage import atomic_file, write_text

STUDENT = "student"
PROGRESS = "checkpoint.json"
RESUME = ("resume.safetensors", "resume.json")
OLD_FILE = "checkpoint.pt"  # the format before checkpoints were data
PROGRESS_KEYS = ("epoch", "step", "samples", "best_score", "config", "metrics")  # metrics: the report's
RESUME_KEYS = ("objective", "optimizer", "scheduler", "rng")


class UnsafeCheckpoint(ValueError):
    """A checkpoint that cannot be read as data (a pickle that would run code, or a damaged file)."""


def save_checkpoint(folder: str | os.PathLike, state: dict[str, Any], student_config=None) -> str:
    """Write `state` (the keys of `PROGRESS_KEYS`, `RESUME_KEYS` and `student`, a state dict) to `folder`,
    each file through a temporary name: a killed save never leaves a half-written file. `student_config` (a
    transformers config) makes `student/` a model folder `from_pretrained` loads."""
    folder = Path(folder)
    student = folder / STUDENT
    student.mkdir(parents=True, exist_ok=True)
    _save_tensors(student / "model.safetensors", {k: v for k, v in state["student"].items()})
    if student_config is not None:
        write_text(student / "config.json", student_config.to_json_string())
    tree, tensors = to_data({k: state[k] for k in RESUME_KEYS if k in state})
    _save_tensors(folder / RESUME[0], tensors)
    write_text(folder / RESUME[1], json.dumps(tree))
    # Last: a checkpoint.json names a whole checkpoint.
    write_text(folder / PROGRESS, json.dumps({k: state[k] for k in PROGRESS_KEYS if k in state}, default=_number))
    return str(folder)


def load_checkpoint(folder: str | os.PathLike, resume: bool = True) -> dict[str, Any]:
    """The state `save_checkpoint` wrote (without `RESUME_KEYS` when `resume` is False or they were dropped).

    Raises:
        UnsafeCheckpoint: an old-format file that is not plain data, or files that cannot be read.
        FileNotFoundError: no checkpoint in `folder`.
    """
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    if not (folder / PROGRESS).is_file() and (folder / OLD_FILE).is_file():
        return _load_old(folder / OLD_FILE)
    try:
        state = json.loads((folder / PROGRESS).read_text())
        state["student"] = load_file(folder / STUDENT / "model.safetensors")
        if resume and all((folder / name).is_file() for name in RESUME):
            tensors = load_file(folder / RESUME[0])
            state.update(from_data(json.loads((folder / RESUME[1]).read_text()), tensors))
    except FileNotFoundError:
        raise
    except (ValueError, OSError, KeyError, SafetensorError) as e:
        raise UnsafeCheckpoint(f"{folder} is not a readable checkpoint ({e})") from None
    return state


def drop_resume_state(folder: str | os.PathLike) -> int:
    """Remove what only resuming needs from a checkpoint whose run is over; returns the bytes freed."""
    freed = 0
    for name in RESUME:
        path = Path(folder) / name
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    return freed


def resumable(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return all((folder / name).is_file() for name in RESUME) or (folder / OLD_FILE).is_file()


def check_readable(folder: str | os.PathLike) -> None:
    """Raise `UnsafeCheckpoint` when `folder` holds an old-format checkpoint that is not plain data; a
    new-format one is safetensors and JSON, which cannot run code."""
    old = Path(folder) / OLD_FILE
    if old.is_file() and not (Path(folder) / PROGRESS).is_file():
        _load_old(old)


def _load_old(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as e:
        raise UnsafeCheckpoint(f"{path} holds more than tensors and plain values, so it is not loaded (loading "
                               f"it could run code: {first_line(e)}); delete that checkpoint folder, or the search's "
                               "stage folder, and run again with --resume to train it afresh") from None


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def _number(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


# ---------------------------------------------------------------------------------------------- nested state
def to_data(tree: Any, tensors: dict[str, torch.Tensor] | None = None, path: str = "") -> tuple[Any, dict]:
    """A nested state (dicts, lists, tuples, tensors, numbers, strings) as JSON values plus named tensors:
    a tensor becomes `{"tensor": name}`, a tuple `{"tuple": [...]}`, a dict whose keys are not all strings
    (an optimiser's state is keyed by parameter index) `{"pairs": [[key, value], ...]}`."""
    tensors = {} if tensors is None else tensors
    if isinstance(tree, torch.Tensor):
        name = path or "tensor"
        tensors[name] = tree
        return {"tensor": name}, tensors
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree):
            return {"dict": {k: to_data(v, tensors, f"{path}.{k}")[0] for k, v in tree.items()}}, tensors
        return {"pairs": [[k, to_data(v, tensors, f"{path}.{k}")[0]] for k, v in tree.items()]}, tensors
    if isinstance(tree, (list, tuple)):
        items = [to_data(v, tensors, f"{path}.{i}")[0] for i, v in enumerate(tree)]
        return ({"tuple": items} if isinstance(tree, tuple) else {"list": items}), tensors
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return {"value": tree}, tensors
    raise TypeError(f"{path or 'state'}: {type(tree).__name__} is neither a tensor nor a plain value")


def from_data(tree: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `to_data`."""
    (kind, value), = tree.items()
    if kind == "tensor":
        return tensors[value]
    if kind == "dict":
        return {k: from_data(v, tensors) for k, v in value.items()}
    if kind == "pairs":
        return {k: from_data(v, tensors) for k, v in value}
    if kind == "tuple":
        return tuple(from_data(v, tensors) for v in value)
    if kind == "list":
        return [from_data(v, tensors) for v in value]
    if kind == "value":
        return value
    raise UnsafeCheckpoint(f"unknown entry {kind!r} in a checkpoint's JSON")

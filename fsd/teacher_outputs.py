"""What the frozen teacher computes over the training set, built once and kept in the storage folder:
the teacher memory (k-means centroids of its flattened penultimate features, METHOD.md §4)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from fsd import failpoints
from fsd.data import Batches
from fsd.models import resolve_model_path, run_model
from fsd.objectives.memory import TeacherMemory
from fsd.objectives.structure import flatten_padded
from fsd.tasks import get_task

MEMORY_SEED = 0  # one memory per (task, teacher, K): every trial of a search shares it, whatever its seed


def model_fingerprint(name: str) -> str:
    """A hub id as is; a local folder by its files' names, sizes and modification times."""
    path = Path(resolve_model_path(name))
    if not path.is_dir():
        return name
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
    return f"{path}|{files}"


class TeacherFeatures:
    """Re-iterable over the teacher's flattened penultimate features `[b, max_seq_len * d]`, in row order,
    PAD rows zeroed when `masked` (`flatten_padded`: FSDG's batches, flattened to their own length, are a
    prefix of this layout). `penultimate`
    maps a batch on `device` to `[b, l, d]`: the live teacher, or the cached features the batch carries."""

    def __init__(self, penultimate: Callable[[dict], torch.Tensor], batches: Batches, max_seq_len: int,
                 masked: bool, device: torch.device):
        self.penultimate, self.batches, self.max_seq_len, self.masked, self.device = (
            penultimate, batches, max_seq_len, masked, device)

    @torch.no_grad()
    def __iter__(self) -> Iterator[torch.Tensor]:
        for rows in self.batches.in_row_order():
            batch = {k: v.to(self.device) for k, v in self.batches.collate(rows).items()}
            h = self.penultimate(batch).float()
            yield flatten_padded(h, batch["attention_mask"] if self.masked else None, self.max_seq_len)


def live_penultimate(teacher: torch.nn.Module) -> Callable[[dict], torch.Tensor]:
    return lambda batch: run_model(teacher, batch, hidden=True).penultimate


def cached_penultimate(batch: dict) -> torch.Tensor:
    return batch["teacher_penultimate"]


def memory_path(storage: str, key_fields: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    return Path(storage) / "memory" / f"{key_fields['task']}-k{key_fields['k']}-{digest}.pt"


def teacher_memory(config, penultimate: Callable[[dict], torch.Tensor], batches: Batches, data_key: str,
                   device: torch.device) -> torch.Tensor:
    """The teacher memory `[K, max_seq_len * d_T]` for this run: read from storage when a memory with the
    same key exists (task, teacher, K, iterations, init, length, masking, data), else fitted and saved."""
    k = config.memory_size or get_task(config.task).memory_size
    if k > batches.num_examples:
        raise ValueError(f"a memory of {k} centroids needs at least {k} training rows, got {batches.num_examples}: "
                         "lower memory_size or use more training rows")
    key = {"task": config.task, "teacher": model_fingerprint(config.teacher), "k": k,
           "iters": config.memory_iters, "init": config.memory_init, "max_seq_len": config.max_seq_len,
           "masked": config.structure_mask, "data": data_key, "rows": batches.num_examples, "seed": MEMORY_SEED}
    path = memory_path(config.storage, key)
    if path.is_file():
        centroids, _ = TeacherMemory.load(path, map_location=device)
        return centroids
    features = TeacherFeatures(penultimate, batches, config.max_seq_len, config.structure_mask, device)
    centroids = TeacherMemory.fit(features, k, iters=config.memory_iters, seed=MEMORY_SEED,
                                  init=config.memory_init, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    failpoints.reached("memory-fit")
    TeacherMemory.save(path, centroids, key)
    return centroids

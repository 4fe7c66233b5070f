"""What the frozen teacher computes over the training set, built once and kept in the storage folder:
the teacher memory (k-means centroids of its flattened penultimate features, METHOD.md §4)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

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
    """Re-iterable over the teacher's flattened penultimate features `[b, max_seq_len * d]`, in a fixed
    order, PAD rows zeroed when `masked` (`flatten_padded`, the layout FSDG uses for the student)."""

    def __init__(self, teacher: torch.nn.Module, batches: Batches, max_seq_len: int, masked: bool,
                 device: torch.device):
        self.teacher, self.batches, self.max_seq_len, self.masked, self.device = (
            teacher, batches, max_seq_len, masked, device)

    @torch.no_grad()
    def __iter__(self) -> Iterator[torch.Tensor]:
        order = list(range(self.batches.num_examples))
        for start in range(0, len(order), self.batches.batch_size):
            rows = order[start:start + self.batches.batch_size]
            batch = {k: v.to(self.device) for k, v in self.batches.collate(rows).items()}
            h = run_model(self.teacher, batch, hidden=True).penultimate.float()
            yield flatten_padded(h, batch["attention_mask"] if self.masked else None, self.max_seq_len)


def memory_path(storage: str, key_fields: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    return Path(storage) / "memory" / f"{key_fields['task']}-k{key_fields['k']}-{digest}.pt"


def teacher_memory(config, teacher: torch.nn.Module, batches: Batches, data_key: str,
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
    features = TeacherFeatures(teacher, batches, config.max_seq_len, config.structure_mask, device)
    centroids = TeacherMemory.fit(features, k, iters=config.memory_iters, seed=MEMORY_SEED,
                                  init=config.memory_init, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    TeacherMemory.save(path, centroids, key)
    return centroids

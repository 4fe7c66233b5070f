"""The teacher-output cache: one pass of the frozen teacher over the training set, kept as memory-mapped
`.npy` files in the storage folder and read by every trial instead of running the teacher.

What is kept is what the objectives read (`Objective.teacher_fields`):
  - `logits`       `[N, C]` float32, always;
  - `penultimate`  the penultimate layer's features of the *real* tokens only, `[sum of lengths, d]` in
                   float16 (or float32), row i at `offsets[i]:offsets[i+1]` (RKD, the FSD family);
  - `cls`          the [CLS] vector of every layer, `[N, L+1, d]` (PKD).
MiniLM's attention maps (`[h, l, l]` per sample) are not cached: it runs the teacher live.

The folder name is a digest of everything that changes the content (task, teacher files, tokenisation,
length, data files, rows, precision of the pass), so a stale cache is never read; each file is written
under a temporary name and renamed, so a killed pass never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from fsd import failpoints
from fsd.data import Batches
from fsd.models import ModelOutputs, resolve_model_path, run_model
from fsd.teacher_outputs import model_fingerprint

FEATURE_FIELDS = ("penultimate", "cls")


def cache_folder(storage: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(storage) / "cache" / f"{key['task']}-{digest}"


def _file(field: str, dtype: str) -> str:
    return "logits.npy" if field == "logits" else f"{field}-{dtype}.npy"


def feature_bytes(fields: tuple[str, ...], lengths: list[int], hidden: int, layers: int, dtype: str) -> int:
    """Disk needed by the feature fields (logits are negligible)."""
    size = np.dtype(dtype).itemsize
    total = 0
    if "penultimate" in fields:
        total += sum(lengths) * hidden * size
    if "cls" in fields:
        total += len(lengths) * (layers + 1) * hidden * size
    return total


class TeacherCache:
    """Read side: `attach(rows, batch)` adds the rows' cached outputs to a collated batch (as
    `teacher_<field>` tensors, features padded like the batch with zeros at PAD positions);
    `outputs(batch)` turns them into the `ModelOutputs` the objectives read."""

    def __init__(self, folder: Path, fields: tuple[str, ...], dtype: str, lengths: list[int]):
        self.folder, self.fields, self.dtype = Path(folder), fields, dtype
        self.arrays = {f: np.load(self.folder / _file(f, dtype), mmap_mode="r") for f in fields}
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        if "penultimate" in fields and self.arrays["penultimate"].shape[0] != self.offsets[-1]:
            raise ValueError(f"{self.folder}: cached features do not match the data's token count; delete the folder")

    def attach(self, rows: list[int], batch: dict[str, torch.Tensor]) -> None:
        batch["teacher_logits"] = torch.from_numpy(self.arrays["logits"][rows])
        if "cls" in self.fields:
            batch["teacher_cls"] = torch.from_numpy(self.arrays["cls"][rows])
        if "penultimate" in self.fields:
            feats = self.arrays["penultimate"]
            mask = batch["attention_mask"].bool()
            out = torch.zeros((*mask.shape, feats.shape[1]), dtype=getattr(torch, self.dtype))
            tokens = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in rows])
            out[mask] = torch.from_numpy(feats[tokens])  # real tokens in row-major order, as written
            batch["teacher_penultimate"] = out

    @staticmethod
    def outputs(batch: dict[str, torch.Tensor]) -> ModelOutputs:
        cls = batch.get("teacher_cls")
        pen = batch.get("teacher_penultimate")
        return ModelOutputs(batch["teacher_logits"],
                            penultimate_states=None if pen is None else pen.float(),
                            cls_states=None if cls is None else tuple(cls.float().unbind(1)))


@torch.no_grad()
def write_cache(folder: Path, fields: tuple[str, ...], teacher: torch.nn.Module, batches: Batches, dtype: str,
                device: torch.device, autocast) -> None:
    """One teacher pass over `batches` (in row order) writing each of `fields` to `folder`."""
    n, lengths = batches.num_examples, batches.lengths
    hidden, layers = teacher.config.hidden_size, teacher.config.num_hidden_layers
    shapes = {"logits": ((n, teacher.config.num_labels), "float32"),
              "penultimate": ((sum(lengths), hidden), dtype), "cls": ((n, layers + 1, hidden), dtype)}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = {f: folder / f".{_file(f, dtype)}.{os.getpid()}.tmp" for f in fields}
    out = {f: np.lib.format.open_memmap(tmp[f], mode="w+", dtype=shapes[f][1], shape=shapes[f][0]) for f in fields}
    teacher.eval()
    row, token = 0, 0
    for rows in batches.in_row_order():
        batch = {k: v.to(device) for k, v in batches.collate(rows).items() if not k.startswith("teacher_")}
        with autocast(device):
            t = run_model(teacher, batch, hidden=any(f in fields for f in FEATURE_FIELDS))
        if "logits" in fields:
            out["logits"][row:row + len(rows)] = t.logits.float().cpu().numpy()
        if "cls" in fields:
            out["cls"][row:row + len(rows)] = torch.stack(t.cls, 1).float().cpu().numpy()
        if "penultimate" in fields:
            real = t.penultimate[batch["attention_mask"].bool()].float().cpu().numpy()  # row-major: rows in order
            out["penultimate"][token:token + len(real)] = real
            token += len(real)
        row += len(rows)
        failpoints.reached("cache-pass")
    for f in fields:
        out[f].flush()
        del out[f]
        os.replace(tmp[f], folder / _file(f, dtype))


def open_cache(config, fields: tuple[str, ...] | None, batches: Batches, data_key: str, device: torch.device,
               load_teacher: Callable[[], torch.nn.Module], autocast, log: Callable[[str], None]
               ) -> TeacherCache | None:
    """The cache holding `fields` for this run's training rows, written first if a field is missing.

    Returns None (the caller runs the teacher live) when the cache is off, the objective cannot be served
    from it, or the features exceed `config.cache_budget_gb` (said through `log`).
    """
    if not config.teacher_cache or not fields:
        return None
    teacher_config = AutoConfig.from_pretrained(resolve_model_path(config.teacher))
    need = feature_bytes(fields, batches.lengths, teacher_config.hidden_size, teacher_config.num_hidden_layers,
                         config.cache_dtype)
    if need > config.cache_budget_gb * 1e9:
        log(f"teacher cache: the {'+'.join(f for f in fields if f in FEATURE_FIELDS)} features of {config.task} need "
            f"{need / 1e9:.2f} GB, over --cache-budget-gb {config.cache_budget_gb:g}: running the teacher live "
            f"(raise --cache-budget-gb to {need / 1e9 * 1.05:.1f} to cache them)")
        return None
    key = {"task": config.task, "teacher": model_fingerprint(config.teacher), "data": data_key,
           "rows": batches.num_examples, "precision": "bf16" if device.type == "cuda" else "fp32"}
    folder = cache_folder(config.storage, key)
    missing = tuple(f for f in fields if not (folder / _file(f, config.cache_dtype)).is_file())
    if missing:
        log(f"teacher cache: one teacher pass over {batches.num_examples} rows for {', '.join(missing)} -> {folder}")
        teacher = load_teacher()
        write_cache(folder, missing, teacher, batches, config.cache_dtype, device, autocast)
        (folder / "key.json").write_text(json.dumps(key, indent=1))
        del teacher
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return TeacherCache(folder, fields, config.cache_dtype, batches.lengths)

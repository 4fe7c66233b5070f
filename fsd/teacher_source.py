"""The frozen teacher as a run sees it: `TeacherSource.outputs(batch)` is what the objective reads of the
teacher for a batch, from the live model or from the teacher-output cache, and `memory()` the teacher
memory of FSDG (k-means centroids of its flattened penultimate features, docs/method.md §4).

The cache is one pass of the teacher over the training rows, kept as `.npy` files in the storage folder
(written through a memory map, read row ranges at a time with `preadv`: `NpyRows`) and read by every trial
instead of running the teacher. It keeps what the objectives read
(`Objective.cache_fields`):
  - `logits`       `[N, C]` float32, always;
  - `penultimate`  the penultimate layer's features of the *real* tokens only, `[sum of lengths, d]` in
                   float16 (or float32), row i at `offsets[i]:offsets[i+1]` (RKD, MiniLM, the FSD family);
  - `cls`          the [CLS] vector of every layer, `[N, L+1, d]` (PKD).
MiniLM's attention maps (`[h, l, l]` per sample) are too big to keep: the penultimate features are the
input of the teacher's last layer, so only that layer's self-attention runs live on them (a 1/L share of
the teacher's cost), giving its attention probabilities and values (equal to the full pass at real tokens,
which are all MiniLM's losses read).

The cache folder and the memory file are named by a digest of everything that changes their content
(task, teacher files, tokenisation, length, data, rows, precision; K and the fit for the memory), so a
stale one is never read; each file is written whole or not at all (fsd.storage; the cache's pass, which a
killed driver's successor takes up where it stopped, is fsd.cache_pass).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from fsd import failpoints
from fsd.cache_pass import FEATURE_FIELDS, cache_file, write_cache
from fsd.data import Batches
from fsd.layout import Layout
from fsd.logs import console
from fsd.models import ModelOutputs, load_teacher, resolve_model_path, run_model
from fsd.objectives import Objective
from fsd.objectives.structure import flatten_padded
from fsd.objectives.teacher_memory import TeacherMemory, memory_k, memory_rows_problem
from fsd.progress import Progress
from fsd.storage import content_key, free_bytes, one_builder, write_text
from fsd.tasks import get_task

log = logging.getLogger("fsd")
MEMORY_SEED = 0  # one memory per (task, teacher, K): every trial of a search shares it, whatever its seed
# Rows per batch of the memory's passes: k-means' matrix products run 3 times faster on 256 rows than on a
# training batch of 32 (K = 300, D = 128 x 384, 2 CPU cores), and 256 such rows take 50 MB.
FEATURE_ROWS = 256


def model_fingerprint(name: str) -> str:
    """A hub id as is; a local folder by its files' names, sizes and modification times."""
    path = Path(resolve_model_path(name))
    if not path.is_dir():
        return name
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
    return f"{path}|{files}"


def cache_folder(storage: str, key: dict) -> Path:
    return Layout(storage).cache(key['task'], content_key(key))


def memory_path(storage: str, key: dict) -> Path:
    return Layout(storage).memory(key['task'], key['k'], content_key(key))


def feature_bytes(fields: tuple[str, ...], lengths: np.ndarray, hidden: int, layers: int, dtype: str) -> int:
    """Disk needed by the feature fields (logits are negligible)."""
    size = np.dtype(dtype).itemsize
    total = 0
    if "penultimate" in fields:
        total += int(np.sum(lengths)) * hidden * size
    if "cls" in fields:
        total += len(lengths) * (layers + 1) * hidden * size
    return total


class NpyRows:
    """Rows of a `.npy` file, read with `os.preadv` rather than memory-mapped: every page of a mapped file that a
    process touches counts in its resident memory, up to the whole cache (9 GB for QQP's MiniLM features) in
    each trial and in the driver's memory fit, while pages read this way stay in the kernel's page cache,
    shared by all readers and given back when memory runs short."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.start = f.tell()
        if fortran:
            raise ValueError(f"{path}: not a C-ordered array")
        self.path, self.shape, self.dtype = path, shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.fd = os.open(path, os.O_RDONLY)

    def ranges(self, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """Rows `starts[j]:stops[j]` for every j, one after the other: `[sum(stops - starts), *shape[1:]]`."""
        out = np.empty((int((stops - starts).sum()), *self.shape[1:]), dtype=self.dtype)
        view, at = memoryview(out.reshape(-1).view(np.uint8)), 0
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            size = (b - a) * self.row_bytes
            if os.preadv(self.fd, [view[at:at + size]], self.start + a * self.row_bytes) != size:
                raise ValueError(f"{self.path} is shorter than its header says; delete its folder")
            at += size
        return out

    def __del__(self):
        if hasattr(self, "fd"):
            os.close(self.fd)


class TeacherCache:
    """Read side: `outputs(batch)` gathers the cached outputs of the batch's rows (`batch["index"]`), the
    features padded like the batch with zeros at PAD positions, on the batch's device."""

    def __init__(self, folder: Path, fields: tuple[str, ...], dtype: str, lengths: np.ndarray):
        self.folder, self.fields, self.dtype = Path(folder), fields, dtype
        self.arrays = {f: NpyRows(self.folder / cache_file(f, dtype)) for f in fields}
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        if "penultimate" in fields and self.arrays["penultimate"].shape[0] != self.offsets[-1]:
            raise ValueError(f"{self.folder}: cached features do not match the data's token count; delete the folder")

    def penultimate(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[n, l, d]` in the cache's dtype: the rows' real tokens where the batch's mask is 1, else zeros."""
        feats, mask = self.arrays["penultimate"], batch["attention_mask"].bool().cpu()
        rows = batch["index"].cpu().numpy()
        out = torch.zeros((*mask.shape, feats.shape[1]), dtype=getattr(torch, self.dtype))
        out[mask] = torch.from_numpy(feats.ranges(self.offsets[rows], self.offsets[rows + 1]))  # row-major, as written
        return out.to(batch["attention_mask"].device)

    def outputs(self, batch: dict[str, torch.Tensor]) -> ModelOutputs:
        rows, device = batch["index"].cpu().numpy(), batch["attention_mask"].device
        cls = None
        if "cls" in self.fields:
            cls = tuple(torch.from_numpy(self.arrays["cls"].ranges(rows, rows + 1)).to(device).float().unbind(1))
        return ModelOutputs(torch.from_numpy(self.arrays["logits"].ranges(rows, rows + 1)).to(device),
                            penultimate_states=self.penultimate(batch).float() if "penultimate" in self.fields
                            else None, cls_states=cls)


CACHE_DISK_SHARE = 0.5  # without --cache-budget-gb: the cache may take at most this share of the free disk


def cache_decision(need: float, budget_gb: float | None, storage: str) -> tuple[bool, str]:
    """Whether a cache of `need` bytes is written, and why, in words: within `budget_gb` when the user gave one,
    else within CACHE_DISK_SHARE of the storage folder's free disk (a cache that fits trains every FSD trial
    without the teacher; one that does not would fill the disk the checkpoints need)."""
    if budget_gb is not None:
        if need <= budget_gb * 1e9:
            return True, f"cached (--cache-budget-gb {budget_gb:g})"
        return False, (f"over --cache-budget-gb {budget_gb:g}: running the teacher live (raise --cache-budget-gb to "
                       f"{need / 1e9 * 1.05:.1f} to cache them)")
    free = free_bytes(storage)
    if need <= CACHE_DISK_SHARE * free:
        return True, f"cached ({free / 1e9:.1f} GB free in {storage})"
    return False, (f"more than {CACHE_DISK_SHARE:.0%} of the {free / 1e9:.1f} GB free in {storage}: running the "
                   f"teacher live (free disk there, or --cache-budget-gb {need / 1e9 * 1.05:.1f} to cache them)")


def open_cache(config, fields: tuple[str, ...] | None, batches: Batches, data_key: str, device: torch.device,
               num_labels: int) -> TeacherCache | None:
    """The cache holding `fields` for this run's training rows, written first (by a teacher loaded for that
    pass) if a field is missing.

    Returns None (the caller runs the teacher live) when the cache is off, the objective cannot be served
    from it, or a missing field does not fit (`cache_decision`, said on the console). A cache already written
    is read whatever the disk holds now: a trial that started while the disk was full would otherwise run the
    teacher live, whose features can differ from the cached ones in their last bits (the trial's batches on its
    thread against the cache pass's length-sorted windows on the driver's), and train another student than the
    same trial with the disk free.
    """
    if not config.teacher_cache or not fields:
        return None
    key = {"task": config.task, "teacher": model_fingerprint(config.teacher), "data": data_key,
           "rows": batches.num_examples, "precision": "bf16" if device.type == "cuda" else "fp32"}
    folder = cache_folder(config.storage, key)
    missing = _missing(folder, fields, config.cache_dtype)
    if missing and not _fits(config, missing, batches):
        return None
    if missing:
        with one_builder(folder, "teacher cache"):  # another search may be writing the same cache
            missing = _missing(folder, fields, config.cache_dtype)
            if missing:
                _write(config, folder, key, missing, batches, device, num_labels)
    return TeacherCache(folder, fields, config.cache_dtype, batches.lengths)


def _missing(folder: Path, fields: tuple[str, ...], dtype: str) -> tuple[str, ...]:
    return tuple(f for f in fields if not (folder / cache_file(f, dtype)).is_file())


def _fits(config, missing: tuple[str, ...], batches: Batches) -> bool:
    """Whether the `missing` fields fit the disk (`cache_decision`), said where features are concerned: when they
    are written, or at every run that pays for the live teacher."""
    teacher_config = AutoConfig.from_pretrained(resolve_model_path(config.teacher))
    need = feature_bytes(missing, batches.lengths, teacher_config.hidden_size, teacher_config.num_hidden_layers,
                         config.cache_dtype)
    cached, why = cache_decision(need, config.cache_budget_gb, config.storage)
    features = "+".join(f for f in missing if f in FEATURE_FIELDS)
    if features:
        console.info(f"teacher cache: the {features} features of {config.task} need {need / 1e9:.2f} GB; {why}")
    return cached


def _write(config, folder: Path, key: dict, missing: tuple[str, ...], batches: Batches, device: torch.device,
           num_labels: int) -> None:
    """One teacher pass writing the `missing` fields, then the key that names what they were made from."""
    console.info(f"teacher cache: one teacher pass over {batches.num_examples} rows for {', '.join(missing)} -> "
                 f"{folder}")
    teacher = load_teacher(config.teacher, num_labels).to(device)
    write_cache(folder, missing, teacher, batches, config.cache_dtype, device)
    write_text(folder / "key.json", json.dumps(key, indent=1))
    del teacher
    if device.type == "cuda":
        torch.cuda.empty_cache()


def last_attention(attention: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor
                   ) -> tuple[tuple[torch.Tensor], torch.Tensor]:
    """A BERT self-attention module's probabilities `[n, h, l, l]` (as a 1-tuple, the last layer's) and
    values `[n, h, l, d_head]` on its input `hidden` `[n, l, d]`, PAD keys (mask 0) excluded."""
    captured: list[torch.Tensor] = []
    handle = attention.value.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        _, probs = attention(hidden, attention_mask=additive)
    finally:
        handle.remove()
    n, l, d = captured[0].shape
    heads = attention.num_attention_heads
    return (probs,), captured[0].view(n, l, heads, d // heads).transpose(1, 2)


def live_attention(teacher: str, num_labels: int, device: torch.device) -> torch.nn.Module:
    """The teacher's last self-attention module (eager, frozen): what MiniLM's loss runs on the cached
    penultimate features, its input."""
    model = load_teacher(teacher, num_labels, "eager")
    return model.base_model.encoder.layer[-1].attention.self.to(device).eval().requires_grad_(False)


class TeacherSource:
    """What a run reads of the frozen teacher. `model` is the live teacher, None when the cache serves the
    training steps (then `attention` is the teacher's last self-attention for MiniLM, else None)."""

    def __init__(self, config, objective: Objective, train: Batches, data_key: str, device: torch.device,
                 model: torch.nn.Module | None, cache: TeacherCache | None, attention: torch.nn.Module | None):
        self.config, self.train, self.data_key, self.device = config, train, data_key, device
        self.needs = (objective.needs_hidden, objective.needs_attentions, objective.needs_values)
        self.model, self.cache, self.attention = model, cache, attention
        self.read_s = 0.0  # seconds spent in `outputs` so far: what serving the teacher costs a run's steps

    @classmethod
    def open(cls, config, objective: Objective, train: Batches, data_key: str,
             device: torch.device) -> TeacherSource:
        """The cache when the objective can be served from it (written first if missing), else the live
        teacher; neither for an objective without a teacher."""
        num_labels = get_task(config.task).num_labels
        attn = "eager" if objective.needs_attentions else "sdpa"  # sdpa cannot return attention probabilities
        cache = None
        if objective.needs_teacher:
            cache = open_cache(config, objective.cache_fields(), train, data_key, device, num_labels)
        model = attention = None
        if objective.needs_teacher and cache is None:
            model = load_teacher(config.teacher, num_labels, attn).to(device).eval().requires_grad_(False)
        elif cache is not None and objective.needs_attentions:  # MiniLM: the last layer's attention, live
            attention = live_attention(config.teacher, num_labels, device)
        return cls(config, objective, train, data_key, device, model, cache, attention)

    def live_model(self) -> torch.nn.Module:
        """The live teacher: the one the steps use, or one loaded now (the cache serves the steps)."""
        if self.model is not None:
            return self.model
        num_labels = get_task(self.config.task).num_labels
        return load_teacher(self.config.teacher, num_labels).to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def outputs(self, batch: dict[str, torch.Tensor]) -> ModelOutputs | None:
        """What the objective reads of the teacher for `batch` (None for an objective without one)."""
        started = time.perf_counter()
        try:
            if self.model is not None:
                return run_model(self.model, batch, *self.needs)
            if self.cache is None:
                return None
            out = self.cache.outputs(batch)
            if self.attention is not None:
                out.attentions, out.values = last_attention(self.attention, out.penultimate, batch["attention_mask"])
            return out
        finally:
            self.read_s += time.perf_counter() - started

    def penultimate(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's penultimate features `[n, l, d]` of `batch` (an objective that reads them live, or
        has them cached)."""
        if self.model is not None:
            return run_model(self.model, batch, hidden=True).penultimate
        return self.cache.penultimate(batch)

    def memory(self) -> torch.Tensor:
        """The teacher memory `[K, max_seq_len * d_T]` for this run: read from storage when a memory with the
        same key exists (task, teacher, K, iterations, init, length, masking, data), else fitted and saved."""
        c, rows = self.config, self.train.num_examples
        problem = memory_rows_problem(c.task, c.memory_size, rows)
        if problem is not None:
            raise ValueError(f"{problem}: lower memory_size or use more training rows")
        k = memory_k(c.task, c.memory_size)
        key = {"task": c.task, "teacher": model_fingerprint(c.teacher), "k": k, "iters": c.memory_iters,
               "init": c.memory_init, "max_seq_len": c.max_seq_len, "masked": c.structure_mask,
               "data": self.data_key, "rows": rows, "seed": MEMORY_SEED}
        path = memory_path(c.storage, key)
        if not path.is_file():
            with one_builder(path, "teacher memory"):  # another search may be fitting it
                if not path.is_file():
                    centroids = TeacherMemory.fit(self.features(), k, iters=c.memory_iters, seed=MEMORY_SEED,
                                                  init=c.memory_init, device=self.device)
                    failpoints.reached("memory-fit")
                    TeacherMemory.save(path, centroids, key)
        centroids, _ = TeacherMemory.load(path, map_location=self.device)
        return centroids

    def features(self) -> TeacherFeatures:
        return TeacherFeatures(self, self.train, self.config.max_seq_len, self.config.structure_mask, self.device)


class TeacherFeatures:
    """Re-iterable over the teacher's flattened penultimate features `[b, max_seq_len * d]`, in row order,
    PAD rows zeroed when `masked` (`flatten_padded`: FSDG's batches, flattened to their own length, are a
    prefix of this layout)."""

    def __init__(self, source: TeacherSource, batches: Batches, max_seq_len: int, masked: bool,
                 device: torch.device):
        self.source, self.batches, self.max_seq_len, self.masked, self.device = (
            source, batches, max_seq_len, masked, device)
        self.passes = 0

    @torch.no_grad()
    def __iter__(self) -> Iterator[torch.Tensor]:
        self.passes += 1  # k-means reads the features several times: each pass is shown
        with Progress(self.batches.num_examples, f"teacher memory: pass {self.passes} over the features",
                      unit="row") as bar:
            n = self.batches.num_examples
            for start in range(0, n, FEATURE_ROWS):
                rows = list(range(start, min(start + FEATURE_ROWS, n)))
                batch = {k: v.to(self.device) for k, v in self.batches.collate(rows).items()}
                h = self.source.penultimate(batch).float()
                yield flatten_padded(h, batch["attention_mask"] if self.masked else None, self.max_seq_len)
                bar.update(len(rows))

"""The generic training loop that teacher fine-tuning and distillation both sit on: device, seeding,
autocast, the optimiser, the steps of an epoch, prediction, GLUE evaluation and the batches of a task."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from fsd.config import DataSpec
from fsd.data import Batches, load_task_data
from fsd.layout import Layout
from fsd.metrics import EPOCH_S, EVAL_ROWS, SAMPLES_PER_S, TRAIN_S, glue_metrics
from fsd.models import run_model
from fsd.progress import Progress
from fsd.tasks import Task, get_task

log = logging.getLogger("fsd")
LossFn = Callable[[dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Host-to-GPU copies from pinned memory, so they overlap the previous step's kernels."""
    if device.type != "cuda":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def speed_up(device: torch.device) -> None:
    """TF32 for the float32 matmuls left outside bf16 autocast (Ampere and later); on the CPU, freed blocks kept
    for reuse (`keep_freed_memory`)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory()


# glibc's mallopt parameters (malloc.h) and the values set: blocks up to 256 MB come from the heap, and the heap
# is not given back to the kernel until 1 GB of it is free.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 256 << 20, 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep large freed blocks for reuse instead of unmapping them; whether it took.

    PyTorch's CPU allocator calls malloc and free directly. glibc serves a block over its mmap threshold (at
    most 32 MB by default) from fresh pages and unmaps it on free, so the tensors a step allocates anew and
    frees (the word embeddings' gradient, 30522 x d; the student memory's gradient, K x 128 d) are paged in
    again at every step: a page fault per 4 kB, about 18 ms for the 47 MB embedding gradient on this machine
    against 1 ms for the same zeros written into kept memory. The peak memory stays what the step needs.
    A no-op (False) off glibc. PyTorch's tuning guide suggests jemalloc or tcmalloc for the same reason;
    this needs no preloaded library."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, total_steps: int,
                   warmup_ratio: float = 0.0):
    """AdamW (eps 1e-8) with linear decay to 0 after an optional linear warm-up (docs/method.md §1); the fused
    kernel (one pass per parameter instead of one per operation: on this CPU a third of a VKD step)."""
    optimizer = torch.optim.AdamW(list(params), lr=lr, eps=1e-8, weight_decay=weight_decay, fused=True)
    warmup = int(warmup_ratio * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def training_step(batch: dict, loss_fn: LossFn, params: list[torch.nn.Parameter], optimizer, scheduler,
                  grad_clip: float, device: torch.device, where: str = "") -> dict[str, torch.Tensor]:
    """The one optimisation step that training takes (a search's trials, the teacher's fine-tuning,
    --estimate and the benchmarks): the loss under autocast, a non-finite loss refused (naming its parts and
    `where`), backward, gradient clipping at `grad_clip` (0: none), the optimiser's and the scheduler's steps.

    Returns:
        The detached loss parts, the total as `loss`.
    """
    with autocast(device):
        loss, parts = loss_fn(batch)
    if not torch.isfinite(loss):
        bad = [k for k, v in parts.items() if not torch.isfinite(v)]
        raise FloatingPointError(f"non-finite loss{' at ' + where if where else ''} (parts: {bad or ['total']})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    return {k: v.detach().float() for k, v in {"loss": loss, **parts}.items()}


def train_steps(batches: Batches, epoch: int, loss_fn: LossFn, params: list[torch.nn.Parameter], optimizer,
                scheduler, grad_clip: float, device: torch.device, skip: int = 0
                ) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """The optimisation steps of one epoch (`training_step`), after its first `skip` batches (a run resumed
    mid-epoch).

    Yields:
        (step, rows in the batch, detached loss parts with the total as `loss`) after each step.
    """
    for step, rows in enumerate(batches.batch_rows(epoch)):
        if step < skip:
            continue
        batch = to_device(batches.collate(rows), device)
        parts = training_step(batch, loss_fn, params, optimizer, scheduler, grad_clip, device,
                              where=f"epoch {epoch} step {step}")
        yield step, len(rows), parts


class Interval:
    """Means of the loss parts and the training throughput between two evaluations."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.samples, self.start = 0, 0, time.perf_counter()

    def add(self, rows: int, parts: dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps, self.samples = self.steps + 1, self.samples + rows

    def metrics(self) -> dict[str, float]:
        seconds = time.perf_counter() - self.start
        out = {f"train/{k}": float(v) / max(self.steps, 1) for k, v in self.sums.items()}
        out[SAMPLES_PER_S] = self.samples / seconds if seconds > 0 else 0.0
        out[TRAIN_S] = seconds
        return out


def train_epoch(batches: Batches, epoch: int, loss_fn: LossFn, params: list[torch.nn.Parameter],
                optimizer, scheduler, grad_clip: float, device: torch.device, progress: str | None = None
                ) -> dict[str, float]:
    """One pass over the training batches; returns the mean of each loss part and the throughput. With
    `progress`, the console shows it under that name (`fsd.progress.Progress`)."""
    interval = Interval()
    with Progress(batches.num_examples, progress or "", enabled=progress is not None) as bar:
        for _, rows, parts in train_steps(batches, epoch, loss_fn, params, optimizer, scheduler, grad_clip, device):
            interval.add(rows, parts)
            bar.update(rows)
    out = interval.metrics()
    out[EPOCH_S] = out.pop(TRAIN_S)
    return out


@torch.inference_mode()
def predict(model: torch.nn.Module, batches: Batches, device: torch.device) -> np.ndarray:
    """The model's logits of every row of `batches`, in the split's order. The rows run in length-sorted batches
    (`Batches.by_length`): on SST-2's dev split they pad 25,304 tokens instead of 46,064 in the stored order,
    and an evaluation takes about half the time. A row's prediction does not depend on the rows beside it; its
    logits may move in the last float32 bit with the batch's width (SDPA attention), so a score computed from
    predicted classes is the same and a loss or a correlation agrees to about 1e-7."""
    model.eval()
    out: torch.Tensor | None = None
    for rows in batches.by_length():
        with autocast(device):
            logits = run_model(model, to_device(batches.collate(rows), device)).logits.float().cpu()
        if out is None:
            out = torch.empty((batches.num_examples, logits.shape[1]), dtype=logits.dtype)
        out[rows] = logits
    return out.numpy()


def evaluate(model: torch.nn.Module, dev: dict[str, Batches], task: Task, device: torch.device) -> dict[str, float]:
    """GLUE metrics on each evaluation split: the first as `eval/<metric>` (with `eval/rows`), MNLI
    mismatched as `eval_mm/..`; each with `loss`, the labels' cross-entropy (MSE for a regression), which
    ranks students where the score ties (every student at the majority class early on)."""
    out: dict[str, float] = {}
    for i, batches in enumerate(dev.values()):
        prefix = "eval" if i == 0 else "eval_mm"
        logits = predict(model, batches, device)
        metrics = glue_metrics(task.name, logits, batches.labels.numpy())
        metrics["loss"] = label_loss_value(logits, batches.labels, task.is_regression)
        out.update({f"{prefix}/{k}": v for k, v in metrics.items()})
    out[EVAL_ROWS] = float(next(iter(dev.values())).num_examples)
    return out


def label_loss_value(logits: np.ndarray, labels: torch.Tensor, regression: bool) -> float:
    """The mean cross-entropy of `logits [n, c]` to the labels, or the MSE of `logits [n, 1]` to the gold scores."""
    scores = torch.from_numpy(logits).double()
    if regression:
        return float(torch.nn.functional.mse_loss(scores.squeeze(-1), labels.double()))
    return float(torch.nn.functional.cross_entropy(scores, labels.long()))


def make_batches(data: DataSpec, tokenizer, storage: str) -> tuple[Batches, dict[str, Batches], Batches | None]:
    """Train batches (shuffled per epoch with `data.seed`), one `Batches` per dev split and, with a holdout,
    the held-out training rows' (else None), from the tokenised cache in `storage`."""
    task = get_task(data.task)
    holdout = data.holdout
    splits = load_task_data(task, tokenizer, data.max_seq_len, data.data_dir, str(Layout(storage).data_cache),
                            data.max_train_samples, data.max_eval_samples, holdout)
    pad_to = data.max_seq_len if data.pad_to_max else None
    common = {"pad_id": tokenizer.pad_token_id, "pad_to": pad_to, "regression": task.is_regression}
    grouped = data.group_by_length and pad_to is None  # the paper: random batches
    train = Batches(splits["train"], data.batch_size, shuffle=True, seed=data.seed, group_by_length=grouped, **common)
    dev = {s: Batches(splits[s], data.eval_batch_size, **common) for s in task.dev_splits}
    held = Batches(splits["holdout"], data.eval_batch_size, **common) if holdout is not None else None
    return train, dev, held

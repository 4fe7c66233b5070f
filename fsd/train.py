"""One distillation run: `distill(config)` trains a student and yields per-epoch metrics and checkpoints.

Read top to bottom: setup -> data -> models -> objective -> optimiser -> resume -> loop. Also a plain
command line for one run without Ray: `python -m fsd.train --task rte --alpha 0.5 --temperature 10 ...`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from fsd.config import DistillConfig
from fsd.data import Batches, Holdout, cache_key, load_task_data
from fsd.metrics import glue_metrics
from fsd.models import build_student, load_teacher, load_tokenizer, run_model, teacher_meta
from fsd.objectives import Objective, Setup, build_objective
from fsd.relations import relation_batch
from fsd.tasks import Task, get_task
from fsd.teacher_cache import TeacherCache, open_cache
from fsd.teacher_outputs import cached_penultimate, live_penultimate, teacher_memory

log = logging.getLogger("fsd")
CHECKPOINT_FILE = "checkpoint.pt"
LossFn = Callable[[dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]


# ---------------------------------------------------------------------------------------------- helpers
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
    """TF32 for the float32 matmuls left outside bf16 autocast (Ampere and later)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, total_steps: int,
                   warmup_ratio: float = 0.0):
    """AdamW (eps 1e-8) with linear decay to 0 after an optional linear warm-up (METHOD.md §1)."""
    optimizer = torch.optim.AdamW(list(params), lr=lr, eps=1e-8, weight_decay=weight_decay)
    warmup = int(warmup_ratio * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def train_steps(batches: Batches, epoch: int, loss_fn: LossFn, params: list[torch.nn.Parameter], optimizer,
                scheduler, grad_clip: float, device: torch.device, skip: int = 0
                ) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """The optimisation steps of one epoch, after its first `skip` batches (a run resumed mid-epoch).

    Yields:
        (step, rows in the batch, detached loss parts with the total as `loss`) after each step.
    """
    for step, rows in enumerate(batches.batch_rows(epoch)):
        if step < skip:
            continue
        batch = to_device(batches.collate(rows), device)
        with autocast(device):
            loss, parts = loss_fn(batch)
        if not torch.isfinite(loss):
            bad = [k for k, v in parts.items() if not torch.isfinite(v)]
            raise FloatingPointError(f"non-finite loss at epoch {epoch} step {step} (parts: {bad or ['total']})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        yield step, len(rows), {k: v.detach().float() for k, v in {"loss": loss, **parts}.items()}


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
        out["train/samples_per_s"] = self.samples / seconds if seconds > 0 else 0.0
        out["time/train_s"] = seconds
        return out


def train_epoch(batches: Batches, epoch: int, loss_fn: LossFn, params: list[torch.nn.Parameter],
                optimizer, scheduler, grad_clip: float, device: torch.device) -> dict[str, float]:
    """One pass over the training batches; returns the mean of each loss part and the throughput."""
    interval = Interval()
    for _, rows, parts in train_steps(batches, epoch, loss_fn, params, optimizer, scheduler, grad_clip, device):
        interval.add(rows, parts)
    out = interval.metrics()
    out["time/epoch_s"] = out.pop("time/train_s")
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Batches, device: torch.device) -> np.ndarray:
    model.eval()
    chunks = []
    for batch in batches.epoch(0):
        with autocast(device):
            chunks.append(run_model(model, to_device(batch, device)).logits.float().cpu())
    return torch.cat(chunks).numpy()


def evaluate(model: torch.nn.Module, dev: dict[str, Batches], task: Task, device: torch.device) -> dict[str, float]:
    """GLUE metrics on each evaluation split: the first as `eval/<metric>` (with `eval/rows`), MNLI
    mismatched as `eval_mm/..`."""
    out: dict[str, float] = {}
    for i, batches in enumerate(dev.values()):
        prefix = "eval" if i == 0 else "eval_mm"
        metrics = glue_metrics(task.name, predict(model, batches, device), batches.labels.numpy())
        out.update({f"{prefix}/{k}": v for k, v in metrics.items()})
    out["eval/rows"] = float(next(iter(dev.values())).num_examples)
    return out


def make_batches(config_like, task: Task, tokenizer, storage: str, data_dir: str | None,
                 max_train: int | None, max_eval: int | None, seed: int, holdout: Holdout | None = None):
    """Train batches (shuffled per epoch), one `Batches` per dev split and, with `holdout`, the held-out
    training rows' (else None), from the tokenised cache."""
    data = load_task_data(task, tokenizer, config_like.max_seq_len, data_dir,
                          os.path.join(storage, "data_cache"), max_train, max_eval, holdout)
    pad_to = config_like.max_seq_len if getattr(config_like, "pad_to_max", False) else None
    common = {"pad_id": tokenizer.pad_token_id, "pad_to": pad_to, "regression": task.is_regression}
    grouped = getattr(config_like, "group_by_length", False) and pad_to is None  # the paper: random batches
    train = Batches(data["train"], config_like.batch_size, shuffle=True, seed=seed, group_by_length=grouped, **common)
    dev = {s: Batches(data[s], config_like.eval_batch_size, **common) for s in task.dev_splits}
    held = Batches(data["holdout"], config_like.eval_batch_size, **common) if holdout is not None else None
    return train, dev, held


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class Report:
    """What `distill` yields after each evaluation (a rung): flat metrics, and `save(dir)` for a resumable
    checkpoint. `epoch` is the 1-based epoch the evaluation fell in."""

    epoch: int
    metrics: dict[str, float]
    state: Callable[[], dict]

    def save(self, directory: str | os.PathLike) -> str:
        """Write `checkpoint.pt` (student, objective, optimiser, scheduler, position, best score, config, RNG)
        to a temporary name, then rename it: a killed save never leaves a half-written checkpoint."""
        path = Path(directory) / CHECKPOINT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)
        return str(path)


def student_backbone(config: DistillConfig) -> str:
    """The student's pre-trained init: explicit, else the backbone the teacher was fine-tuned from."""
    if config.student_init:
        return config.student_init
    meta = teacher_meta(config.teacher)
    return meta["backbone"] if meta else config.teacher


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    return torch.load(path, map_location="cpu", weights_only=False)


def prepare_teacher(config: DistillConfig, objective: Objective, train: Batches, data_key: str, task: Task,
                    device: torch.device, say: Callable[[str], None] = log.warning
                    ) -> tuple[torch.nn.Module | None, TeacherCache | None]:
    """The live teacher, or the cache that replaces it (written first if missing; the teacher used for that
    pass is dropped): with the cache, `train`'s batches carry the teacher's outputs and no teacher is held."""
    if not objective.needs_teacher:
        return None, None
    attn = "eager" if objective.needs_attentions else "sdpa"  # sdpa cannot return attention probabilities

    def load() -> torch.nn.Module:
        return load_teacher(config.teacher, task.num_labels, attn).to(device).eval().requires_grad_(False)

    cache = open_cache(config, objective.cache_fields(), train, data_key, device, load, autocast, say)
    if cache is None:
        return load(), None
    train.attach = cache.attach
    return None, cache


class RunInputs(NamedTuple):
    """What a run of a config starts from (and the driver's preparation too)."""

    task: Task
    device: torch.device
    train: Batches
    dev: dict[str, Batches]
    ranked: dict[str, Batches]  # what the run is evaluated (and ranked) on: `dev`, or the holdout
    objective: Objective  # on `device`
    data_key: str  # the training rows' cache key (tokenised data, and the holdout set aside)


def load_inputs(config: DistillConfig) -> RunInputs:
    """The task, the device, the tokenised batches (from the cache after the first time), the objective."""
    device, task = resolve_device(config.device), get_task(config.task)
    tokenizer = load_tokenizer(config.teacher)
    holdout = config.holdout
    train, dev, held = make_batches(config, task, tokenizer, config.storage, config.data_dir,
                                    config.max_train_samples, config.max_eval_samples, config.seed, holdout)
    objective = build_objective(config, regression=task.is_regression).to(device)
    key = cache_key(task, tokenizer, config.max_seq_len, config.data_dir)
    if holdout is not None:  # other training rows: every cache of them (teacher outputs, memory) is another
        key = f"{key}-{holdout.tag()}"
    return RunInputs(task, device, train, dev, {"holdout": held} if held is not None else dev, objective, key)


class Prepared(NamedTuple):
    rows: int  # training rows a run of the config sees per epoch
    memory_shape: tuple[int, ...] | None  # the teacher memory's, when the method uses one


def prepare_outputs(config: DistillConfig, say: Callable[[str], None] = print) -> Prepared:
    """Write what the trials of `config` read from storage: the tokenised data, the teacher-output cache and
    the teacher memory. A search calls it in its driver, so trials running in parallel only read them."""
    task, device, train, _, _, objective, data_key = load_inputs(config)
    teacher, cache = prepare_teacher(config, objective, train, data_key, task, device, say)
    if not objective.needs_memory:
        return Prepared(train.num_examples, None)
    shape = tuple(memory_source(config, teacher, cache, train, data_key, device)().shape)
    return Prepared(train.num_examples, shape)


def memory_source(config: DistillConfig, teacher: torch.nn.Module | None, cache: TeacherCache | None,
                  train: Batches, data_key: str, device: torch.device) -> Callable[[], torch.Tensor]:
    """The teacher memory for `Setup`, fitted (once per key) from the cached features or the live teacher."""
    penultimate = cached_penultimate if cache is not None else live_penultimate(teacher)
    return lambda: teacher_memory(config, penultimate, train, data_key, device)


def relation_probe(config: DistillConfig, teacher: torch.nn.Module | None, ranked: dict[str, Batches], task: Task,
                   device: torch.device) -> Callable[[torch.nn.Module], dict[str, float]]:
    """student -> `relations/<inter|intra>_<euclidean|cosine>` against the teacher on the first batch of the
    evaluation split (the teacher's side computed once; the teacher is loaded for it when the cache serves
    the training steps)."""
    batches = next(iter(ranked.values()))
    batch = to_device(batches.collate(batches.batch_rows(0)[0]), device)
    if teacher is None:
        teacher = load_teacher(config.teacher, task.num_labels).to(device).eval().requires_grad_(False)
    with torch.no_grad(), autocast(device):
        t_states = run_model(teacher.eval(), batch, hidden=True).penultimate.float()

    def probe(student: torch.nn.Module) -> dict[str, float]:
        was = student.training
        student.eval()
        with torch.no_grad(), autocast(device):
            s_states = run_model(student, batch, hidden=True).penultimate.float()
        student.train(was)
        return {f"relations/{k}": v for k, v in relation_batch(t_states, s_states, batch["attention_mask"]).items()}

    return probe


def make_loss_fn(objective: Objective, teacher: torch.nn.Module | None, student: torch.nn.Module) -> LossFn:
    """batch -> (loss, parts): the teacher's outputs without gradient (live, or cached in the batch), the
    student's, the objective."""
    needs = (objective.needs_hidden, objective.needs_attentions, objective.needs_values)

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t_out = None
        if teacher is not None:
            with torch.no_grad():
                t_out = run_model(teacher, batch, *needs)
        elif "teacher_logits" in batch:  # served by the teacher-output cache
            t_out = TeacherCache.outputs(batch)
        return objective(run_model(student, batch, *needs), t_out, batch)

    return loss_fn


def distill(config: DistillConfig, resume_from: str | os.PathLike | dict | None = None) -> Iterator[Report]:
    """Train a student on `config.task` with `config.method`, evaluating on dev (or on the holdout, when
    `config.holdout_rows` is set; dev is then not evaluated) every `config.eval_every` training samples (once
    per epoch when unset) and at the end.

    Args:
        config: the run's configuration; `config.teacher` must be fine-tuned on the task.
        resume_from: a checkpoint (file, folder or loaded dict) from `Report.save`; training continues after
            its step and gives the same results as an uninterrupted run (on CPU).

    Yields:
        One `Report` per evaluation; `metrics` has `eval/score` and the task's metrics, `eval/best_score`,
        the mean of `train/loss` and of each loss part since the last evaluation, `train/samples_per_s`,
        `progress/samples` (training samples seen), `progress/budget` (those of the whole run), `epoch`
        (epochs done, a fraction between evaluations inside an epoch), `run/resumed_from` (the epochs
        done where the run started: 0, or the checkpoint's after a resume), `run/student_params`,
        `eval/rows` and `time/eval_s` (the rows evaluated and the seconds it took).
    """
    seed_everything(config.seed)
    task, device, train, _, ranked, objective, data_key = load_inputs(config)
    speed_up(device)
    teacher, cache = prepare_teacher(config, objective, train, data_key, task, device)
    seed_everything(config.seed)  # the student's init must not depend on whether the teacher was loaded
    attn = "eager" if objective.needs_attentions else "sdpa"
    student = build_student(student_backbone(config), config.student_layers, task.num_labels, attn).to(device)
    objective.setup(Setup(teacher, student, config.max_seq_len,
                          memory_source(config, teacher, cache, train, data_key, device)))
    tracked = relation_probe(config, teacher, ranked, task, device) if config.track_relations else None
    # Training's random numbers (dropout) must not depend on what the objective's setup or the probe drew:
    # with one seed every method sees the same dropout, and a weight of 0 gives the run without its term.
    seed_everything(config.seed)
    if config.compile:
        student.compile(dynamic=True)  # in place: state_dict keys stay those of the plain model

    params = [p for p in [*student.parameters(), *objective.parameters()] if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, config.lr, config.weight_decay,
                                          len(train) * config.epochs, config.warmup_ratio)
    rows = train.num_examples
    budget, every = rows * config.epochs, config.eval_every or rows
    # Where training stands: the epoch, the batches done in it, the training samples seen overall.
    start_epoch, start_step, samples, best = 0, 0, 0, float("-inf")
    if resume_from is not None:
        state = resume_from if isinstance(resume_from, dict) else load_checkpoint(resume_from)
        student.load_state_dict(state["student"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, start_step, samples, best = state["epoch"], state["step"], state["samples"], state["best_score"]
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    resumed_from = samples / rows
    size = float(sum(p.numel() for p in student.parameters()))  # what inference runs (Table 8)

    loss_fn = make_loss_fn(objective, teacher, student)
    interval = Interval()
    for epoch in range(start_epoch, config.epochs):
        student.train()
        objective.train()
        skip = start_step if epoch == start_epoch else 0
        for step, n, parts in train_steps(train, epoch, loss_fn, params, optimizer, scheduler, config.grad_clip,
                                          device, skip):
            samples += n
            interval.add(n, parts)
            if samples // every == (samples - n) // every and samples < budget:
                continue
            metrics = interval.metrics()
            started = time.perf_counter()
            metrics.update(evaluate(student, ranked, task, device))
            metrics["time/eval_s"] = time.perf_counter() - started
            if tracked is not None:
                metrics.update(tracked(student))
            best = max(best, metrics["eval/score"])
            metrics.update({"epoch": samples / rows, "eval/best_score": best, "run/resumed_from": resumed_from,
                            "progress/samples": samples, "progress/budget": budget, "run/student_params": size})
            # The next position: the rest of this epoch, or the start of the next one.
            at = (epoch, step + 1) if step + 1 < len(train) else (epoch + 1, 0)

            def state(at: tuple[int, int] = at, samples: int = samples, best: float = best) -> dict:
                return {"student": student.state_dict(), "objective": objective.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "epoch": at[0], "step": at[1], "samples": samples, "best_score": best,
                        "config": config.to_dict(),
                        "rng": {"torch": torch.get_rng_state(),
                                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}

            yield Report(epoch + 1, metrics, state)
            student.train()  # evaluation left it in eval mode
            objective.train()
            interval = Interval()


def evaluate_on_dev(checkpoint: str | os.PathLike) -> dict[str, float]:
    """The dev metrics of a checkpoint's student, as `dev/<metric>` (`dev_mm/..` for MNLI mismatched): how a
    run ranked on the holdout is reported, for the winners only."""
    state = load_checkpoint(checkpoint)
    config = DistillConfig.from_dict(state["config"])
    inputs = load_inputs(config)
    student = build_student(student_backbone(config), config.student_layers, inputs.task.num_labels)
    student.load_state_dict(state["student"])
    metrics = evaluate(student.to(inputs.device), inputs.dev, inputs.task, inputs.device)
    return {k.replace("eval", "dev", 1): v for k, v in metrics.items()}


def export_student(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """A plain Hugging Face model folder of a checkpoint's student (no objective state, no memory)."""
    state = load_checkpoint(checkpoint)
    config = DistillConfig.from_dict(state["config"])
    task = get_task(config.task)
    student = build_student(student_backbone(config), config.student_layers, task.num_labels)
    student.load_state_dict(state["student"])
    student.save_pretrained(out_dir)
    load_tokenizer(config.teacher).save_pretrained(out_dir)
    return str(out_dir)


if __name__ == "__main__":
    from fsd.cli import main

    main()

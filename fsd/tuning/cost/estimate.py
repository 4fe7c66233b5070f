"""`--estimate`: a few real steps of the teacher and of each method's student on this machine (CPU, or the
GPU at the chosen share), turned into hours for the cost `--dry-run` counts. Nothing is written: the rows
are read from the data folder and tokenised in memory, the models loaded from their folders.

Trials are assumed to add up: on a CPU, `cores / --cpus-per-trial` of them at once, each timed with that many
threads; on a GPU, `1 / --gpus-per-trial` per device, each as fast as one alone (packing is measured by
bench/gpu_check.py, not here). A trial reading the teacher cache runs no teacher, so its step is timed with
the teacher's outputs computed beforehand.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from datasets import Dataset, DatasetDict

from fsd.config import DistillConfig
from fsd.data import Batches, load_raw, tokenise
from fsd.loop import autocast, make_optimizer, resolve_device, to_device, training_step
from fsd.models import build_student, load_teacher, load_tokenizer, run_model
from fsd.objectives import Setup, build_objective
from fsd.objectives.kd import label_loss
from fsd.objectives.teacher_memory import memory_k
from fsd.tasks import get_task
from fsd.teacher_source import TeacherSource, live_attention
from fsd.train import make_loss_fn, student_backbone
from fsd.tuning.cost.count import SearchCost
from fsd.tuning.plan.spec import SearchSpec
from search_spaces import Schedule

STEPS, WARMUP = 3, 1


@dataclass
class Rates:
    """Samples per second of one trial (or of the driver, for the teacher) on this machine."""

    device: str
    parallel: int  # trials at once
    student: dict[str, float]  # method -> training samples/s of one trial
    evaluation: float  # dev rows/s of one trial
    teacher_train: float
    teacher_forward: float


def sample_batches(spec: SearchSpec, tokenizer, batch_size: int) -> Batches:
    """STEPS + WARMUP batches of real training rows (synthetic full-length rows when the data is on the hub)."""
    task = get_task(spec.task)
    n = batch_size * (STEPS + WARMUP)
    if spec.data_dir is not None:
        raw = load_raw(task, spec.data_dir)["train"].select(range(n))
        data = tokenise(DatasetDict({"train": raw}), tokenizer, spec.max_seq_len)["train"]
    else:
        ids = [[tokenizer.cls_token_id] + [1000] * (spec.max_seq_len - 2) + [tokenizer.sep_token_id]] * n
        data = Dataset.from_dict({"input_ids": ids, "token_type_ids": [[0] * len(ids[0])] * n, "label": [0] * n})
    return Batches(data, batch_size, pad_id=tokenizer.pad_token_id, regression=task.is_regression)


def _timed(step, batches: list[dict]) -> float:
    """Samples per second of `step` over `batches`, after WARMUP untimed batches."""
    for b in batches[:WARMUP]:
        step(b)
    start = time.perf_counter()
    for b in batches[WARMUP:]:
        step(b)
    return sum(len(b["labels"]) for b in batches[WARMUP:]) / (time.perf_counter() - start)


def measure(spec: SearchSpec, schedules: list[Schedule]) -> Rates:
    """Time the teacher (fine-tuning step, forward pass) and a student step of each method of `schedules`."""
    task = get_task(spec.task)
    device = resolve_device("cuda" if spec.gpus_per_trial > 0 else "cpu")
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        parallel = max(1, round(1 / spec.gpus_per_trial)) * max(1, torch.cuda.device_count())
    else:
        parallel = max(1, int(cores // spec.cpus_per_trial))
    if spec.max_concurrent:
        parallel = min(parallel, spec.max_concurrent)
    backbone = student_backbone(DistillConfig(task=spec.task, teacher=spec.teacher, student_init=spec.student_init))
    tokenizer = load_tokenizer(spec.teacher)
    batch_size = spec.extra.get("batch_size", DistillConfig.batch_size)
    sample = sample_batches(spec, tokenizer, batch_size)
    batches = [to_device(b, device) for b in sample.epoch(0)]  # random batches: the teacher's fine-tuning, evaluation
    # The cache pass and the trials' training batches hold rows of similar lengths (`Batches.by_length`, and
    # `group_by_length` unless --set turns it off): timed on the sample's rows sorted by length.
    by_length = [to_device(sample.collate(rows), device) for rows in sample.by_length()]
    grouped = spec.extra.get("group_by_length", True) and not spec.extra.get("pad_to_max", False)

    torch.set_num_threads(cores)  # the teacher is fine-tuned and cached by the driver alone
    teacher = load_teacher(spec.teacher, task.num_labels).to(device)
    teacher.train()
    t_train = _timed(_training_step([p for p in teacher.parameters() if p.requires_grad],
                                    lambda b: (label_loss(run_model(teacher, b).logits, b["labels"],
                                                          task.is_regression), {}), device), batches)
    teacher.eval()
    t_forward = _timed(lambda b: _no_grad(teacher, b, device), by_length)

    torch.set_num_threads(max(1, int(spec.cpus_per_trial)) if device.type == "cpu" else cores)
    student_rates = {}
    for method in dict.fromkeys(s.method for schedule in schedules for s in schedule.stages if not s.prepare):
        student_rates[method] = _student_rate(spec, method, backbone, teacher, by_length if grouped else batches,
                                              device)
    student = build_student(backbone, spec.student_layers, task.num_labels).to(device).eval()
    evaluation = _timed(lambda b: _no_grad(student, b, device), batches)
    return Rates(device.type, parallel, student_rates, evaluation, t_train, t_forward)


def _no_grad(model, batch, device):
    with torch.no_grad(), autocast(device):
        run_model(model, batch)


def _training_step(params, loss_fn, device):
    """One step of `loss_fn(batch) -> (loss, parts)` over `params`: the step training takes
    (`fsd.loop.training_step`, gradient clipping included)."""
    optimizer, scheduler = make_optimizer(params, 1e-5, 0.0, 100)
    return lambda batch: training_step(batch, loss_fn, params, optimizer, scheduler, DistillConfig.grad_clip, device)


class _Precomputed:
    """The teacher's outputs of each timed batch, computed beforehand: what the cache serves a trial."""

    def __init__(self, outputs: dict[int, object]):
        self._outputs = outputs

    def outputs(self, batch: dict) -> object:
        return self._outputs[id(batch["input_ids"])]


def _student_rate(spec: SearchSpec, method: str, backbone: str, teacher, batches: list[dict], device) -> float:
    """One trial's samples/s for `method`: the training's own loss function over a teacher source that serves
    the teacher's outputs computed beforehand (as the cache does; for MiniLM its last self-attention runs in
    each step, wired as a run wires it)."""
    task = get_task(spec.task)
    config = DistillConfig(task=spec.task, teacher=spec.teacher, method=method, max_seq_len=spec.max_seq_len)
    objective = build_objective(config, task.is_regression).to(device)
    attn = "eager" if objective.needs_attentions else "sdpa"
    student = build_student(backbone, spec.student_layers, task.num_labels, attn).to(device)
    k = memory_k(spec.task, config.memory_size)
    width = spec.max_seq_len * teacher.config.hidden_size
    memory = torch.randn(k, width, device=device) if objective.needs_memory else None
    objective.setup(Setup(student, spec.max_seq_len, memory))
    cached = (objective.needs_hidden or objective.needs_attentions, False, False)
    precomputed = None
    if objective.needs_teacher:
        with torch.no_grad():
            precomputed = _Precomputed({id(b["input_ids"]): run_model(teacher, b, *cached) for b in batches})
    attention = live_attention(spec.teacher, task.num_labels, device) if objective.needs_attentions else None
    source = TeacherSource(config, objective, None, "", device, None, precomputed, attention)
    params = [p for p in [*student.parameters(), *objective.parameters()] if p.requires_grad]
    student.train()
    return _timed(_training_step(params, make_loss_fn(objective, source, student), device), batches)


def format_estimate(costs: list[SearchCost], schedules: list[Schedule], rates: Rates) -> str:
    """Hours per search and in total from the counted samples and the measured rates."""
    lines = [f"estimate on this machine ({rates.device}, {rates.parallel} trial(s) at once; timed over {STEPS} "
             "steps of batch 32 after a warm-up):",
             "| what | samples/s | hours |", "|---|---|---|"]
    total = 0.0
    for cost, schedule in zip(costs, schedules, strict=True):
        methods = {s.name: s.method for s in schedule.stages}
        for s in cost.stages:
            if s.reused or not s.samples:
                continue
            rate = rates.student[methods[s.name]] * rates.parallel
            hours = (s.samples / rate + s.evaluations / (rates.evaluation * rates.parallel)) / 3600
            total += hours
            lines.append(f"| {cost.method} / {s.name} | {rate:,.1f} | {hours:,.2f} |")
    teacher = max(c.teacher_samples for c in costs)
    if teacher:
        hours = teacher / rates.teacher_train / 3600
        total += hours
        lines.append(f"| teacher fine-tuning | {rates.teacher_train:,.1f} | {hours:,.2f} |")
    cache = max(c.cache_rows for c in costs)
    if cache:
        hours = cache / rates.teacher_forward / 3600
        total += hours
        lines.append(f"| teacher-output cache pass | {rates.teacher_forward:,.1f} | {hours:,.2f} |")
    lines.append(f"total: about {total:,.1f} hours")
    return "\n".join(lines)


def samples_per_hour(spec: SearchSpec, schedule: Schedule) -> float:
    """Training samples an hour on this machine for `schedule` (what `--budget 8h` is worth): each method's
    timed samples/s of one trial, trials at once, the stages weighed alike."""
    rates = measure(spec, [schedule])
    methods = [s.method for s in schedule.stages if not s.prepare]
    seconds = sum(1 / rates.student[m] for m in methods) / len(methods)  # per sample
    return 3600 * rates.parallel / seconds

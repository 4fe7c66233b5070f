"""Fine-tune a teacher once per (task, backbone, settings) with the paper's recipe, and reuse it."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fsd import failpoints
from fsd.config import DataSpec
from fsd.data import source_fingerprint
from fsd.layout import Layout
from fsd.logs import console
from fsd.loop import evaluate, make_batches, make_optimizer, resolve_device, seed_everything, speed_up, train_epoch
from fsd.metrics import EPOCH_S, SCORE, TOTAL_EPOCH_S
from fsd.models import TEACHER_META, load_teacher, load_tokenizer, run_model, teacher_meta, teacher_problem
from fsd.objectives.kd import label_loss
from fsd.storage import atomic_folder, content_key, one_builder
from fsd.tasks import get_task

# The paper's teacher batches whatever the student's: 32 rows, random order, padded per batch.
TEACHER_BATCHES = {"batch_size": 32, "eval_batch_size": 128, "pad_to_max": False, "group_by_length": False}


def teacher_data(data: DataSpec) -> DataSpec:
    """The teacher's data settings for a run on `data`: the same task, rows, length and holdout, in the
    paper's teacher batches."""
    return dataclasses.replace(data.data, **TEACHER_BATCHES)


@dataclass(frozen=True)
class TeacherSpec:
    """The paper's teacher recipe (docs/method.md §1): 3 epochs, lr 2e-5 (5e-5 for STS-B and WNLI), AdamW, no
    warm-up, linear decay, clip 1.0, on the rows of `data` (see `teacher_data`)."""

    backbone: str
    data: DataSpec
    epochs: int = 3
    lr: float | None = None  # None: the task's paper value

    @property
    def task(self) -> str:
        return self.data.task

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else get_task(self.task).teacher_lr

    def key(self) -> str:
        """Folder name: the task and a hash of everything that changes the fine-tuned weights (the dict of
        the flat recipe this spec replaced: teachers fine-tuned before keep their folders)."""
        d = self.data
        fields = {"task": d.task, "backbone": self.backbone, "data_dir": d.data_dir, "epochs": self.epochs,
                  "batch_size": d.batch_size, "max_seq_len": d.max_seq_len, "lr": self.resolved_lr, "seed": d.seed,
                  "max_train_samples": d.max_train_samples, "pad_to_max": d.pad_to_max,
                  "data": source_fingerprint(get_task(d.task), d.data_dir)}
        if d.group_by_length:
            fields["group_by_length"] = True
        if d.holdout_rows is not None:
            fields.update(holdout_rows=d.holdout_rows, holdout_seed=d.holdout_seed)
        return f"{get_task(d.task).name}-{content_key(fields, 12)}"

    def record(self) -> dict:
        return {"backbone": self.backbone, "epochs": self.epochs, "lr": self.lr, **asdict(self.data)}


def ensure_teacher(spec: TeacherSpec, storage: str, device: str = "auto") -> str:
    """Path of a teacher fine-tuned per `spec`: `spec.backbone` itself when it already is one for this
    task, else `storage/teacher/<key>`, fine-tuned now unless a finished one is there.

    Raises:
        ValueError: `spec.backbone` is a teacher fine-tuned on another task.
    """
    task = get_task(spec.task)
    meta = teacher_meta(spec.backbone)
    if meta is not None:
        problem = teacher_problem(spec.backbone, task.name, task.num_labels)
        if problem is not None:
            raise ValueError(f"teacher {problem}")
        return spec.backbone
    final = Layout(storage).teacher(spec.key())
    if (final / TEACHER_META).is_file():
        return str(final)
    with one_builder(final, f"teacher {task.name}"):  # a search beside this one may be fine-tuning it
        if not (final / TEACHER_META).is_file():
            with atomic_folder(final, replace=True) as tmp:  # a folder left without meta is no teacher: replaced
                finetune_teacher(spec, storage, str(tmp), device)
    return str(final)


def finetune_teacher(spec: TeacherSpec, storage: str, out_dir: str, device: str = "auto") -> dict:
    """Fine-tune `spec.backbone` on the task, save it with its tokenizer and a meta file to `out_dir`.

    Returns:
        The meta record: task, backbone, recipe, dev metrics and seconds per epoch.
    """
    seed_everything(spec.data.seed)
    dev_ = resolve_device(device)
    speed_up(dev_)
    task = get_task(spec.task)
    tokenizer = load_tokenizer(spec.backbone)
    train, dev, _ = make_batches(spec.data, tokenizer, storage)
    model = load_teacher(spec.backbone, task.num_labels).to(dev_)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, spec.resolved_lr, 0.0, len(train) * spec.epochs)

    def loss_fn(batch: dict):
        loss = label_loss(run_model(model, batch).logits, batch["labels"], task.is_regression)
        return loss, {}

    epochs = []
    for epoch in range(spec.epochs):
        model.train()
        started = time.perf_counter()
        metrics = train_epoch(train, epoch, loss_fn, params, optimizer, scheduler, 1.0, dev_,
                              progress=f"teacher {task.name} epoch {epoch + 1}/{spec.epochs}")
        metrics.update(evaluate(model, dev, task, dev_))
        metrics.update({"epoch": epoch + 1, TOTAL_EPOCH_S: time.perf_counter() - started})
        epochs.append(metrics)
        failpoints.reached("teacher-epoch")
        console.info(f"teacher {task.name} epoch {epoch + 1}/{spec.epochs}: dev score "
                     f"{100 * metrics[SCORE]:.2f} ({metrics[EPOCH_S]:.0f} s train)")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meta = {"task": task.name, "backbone": spec.backbone, "spec": spec.record(), "lr": spec.resolved_lr,
            "dev": {k: v for k, v in epochs[-1].items() if k.startswith("eval")}, "epochs": epochs,
            "torch": torch.__version__}
    # The meta file is written last: its presence marks a finished teacher.
    (Path(out_dir) / TEACHER_META).write_text(json.dumps(meta, indent=2))
    return meta

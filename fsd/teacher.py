"""Fine-tune a teacher once per (task, backbone, settings) with the paper's recipe, and reuse it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fsd import failpoints
from fsd.data import Holdout, source_fingerprint
from fsd.models import TEACHER_META, load_teacher, load_tokenizer, run_model, teacher_meta
from fsd.objectives.kd import label_loss
from fsd.tasks import get_task
from fsd.train import evaluate, make_batches, make_optimizer, resolve_device, seed_everything, train_epoch


@dataclass(frozen=True)
class TeacherSpec:
    """The paper's teacher recipe (METHOD.md §1): 3 epochs, batch 32, length 128, lr 2e-5 (5e-5 for
    STS-B and WNLI), AdamW, no warm-up, linear decay, clip 1.0."""

    task: str
    backbone: str
    data_dir: str | None = None
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 128
    max_seq_len: int = 128
    lr: float | None = None  # None: the task's paper value
    seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    pad_to_max: bool = False
    holdout_rows: int | None = None  # training rows the search ranks its trials on: the teacher never sees them
    holdout_seed: int = 42

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else get_task(self.task).teacher_lr

    def key(self) -> str:
        """Folder name: the task and a hash of everything that changes the fine-tuned weights."""
        fields = {**asdict(self), "lr": self.resolved_lr,
                  "data": source_fingerprint(get_task(self.task), self.data_dir)}
        fields.pop("eval_batch_size")
        fields.pop("max_eval_samples")
        if self.holdout_rows is None:  # the keys of teachers fine-tuned before holdouts existed stay valid
            fields.pop("holdout_rows")
            fields.pop("holdout_seed")
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
        return f"{get_task(self.task).name}-{digest}"


def ensure_teacher(spec: TeacherSpec, storage: str, device: str = "auto", log=print) -> str:
    """Path of a teacher fine-tuned per `spec`: `spec.backbone` itself when it already is one for this
    task, else `storage/teacher/<key>`, fine-tuned now unless a finished one is there.

    Raises:
        ValueError: `spec.backbone` is a teacher fine-tuned on another task.
    """
    task = get_task(spec.task)
    meta = teacher_meta(spec.backbone)
    if meta is not None:
        if meta["task"] != task.name:
            raise ValueError(f"teacher {spec.backbone} was fine-tuned on {meta['task']}, not {task.name}: "
                             "pass a teacher for this task, or its pre-trained backbone")
        return spec.backbone
    final = Path(storage) / "teacher" / spec.key()
    if (final / TEACHER_META).is_file():
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        finetune_teacher(spec, storage, str(tmp), device, log)
        if final.exists():  # an interrupted earlier attempt left no meta: it is not a teacher
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def finetune_teacher(spec: TeacherSpec, storage: str, out_dir: str, device: str = "auto", log=print) -> dict:
    """Fine-tune `spec.backbone` on the task, save it with its tokenizer and a meta file to `out_dir`.

    Returns:
        The meta record: task, backbone, recipe, dev metrics and seconds per epoch.
    """
    seed_everything(spec.seed)
    dev_ = resolve_device(device)
    task = get_task(spec.task)
    tokenizer = load_tokenizer(spec.backbone)
    holdout = None if spec.holdout_rows is None else Holdout(spec.holdout_rows, spec.holdout_seed)
    train, dev, _ = make_batches(spec, task, tokenizer, storage, spec.data_dir, spec.max_train_samples,
                                 spec.max_eval_samples, spec.seed, holdout)
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
        metrics = train_epoch(train, epoch, loss_fn, params, optimizer, scheduler, 1.0, dev_)
        metrics.update(evaluate(model, dev, task, dev_))
        metrics.update({"epoch": epoch + 1, "time/total_epoch_s": time.perf_counter() - started})
        epochs.append(metrics)
        failpoints.reached("teacher-epoch")
        log(f"teacher {task.name} epoch {epoch + 1}/{spec.epochs}: dev score {metrics['eval/score']:.4f} "
            f"({metrics['time/epoch_s']:.0f} s train)")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meta = {"task": task.name, "backbone": spec.backbone, "spec": asdict(spec), "lr": spec.resolved_lr,
            "dev": {k: v for k, v in epochs[-1].items() if k.startswith("eval")}, "epochs": epochs,
            "torch": torch.__version__}
    # The meta file is written last: its presence marks a finished teacher.
    (Path(out_dir) / TEACHER_META).write_text(json.dumps(meta, indent=2))
    return meta

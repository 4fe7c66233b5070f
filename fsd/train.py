"""One distillation run: `distill(config)` trains a student and yields per-epoch metrics and checkpoints.

Read top to bottom: setup -> data -> models -> objective -> optimiser -> resume -> loop (fsd/loop.py). One
run without Ray from the command line: `python -m fsd.cli --task rte --alpha 0.5 --temperature 10 ...`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from fsd.checkpoints import RESUME_KEYS, STUDENT, load_checkpoint, save_checkpoint
from fsd.config import DistillConfig
from fsd.data import Batches, cache_key
from fsd.loop import (
    Interval,
    LossFn,
    autocast,
    evaluate,
    make_batches,
    make_optimizer,
    resolve_device,
    seed_everything,
    speed_up,
    to_device,
    train_steps,
)
from fsd.metrics import (
    BEST_LOSS,
    BEST_SCORE,
    BUDGET,
    EVAL_S,
    LOSS,
    RESUMED_FROM,
    SAMPLES,
    SCORE,
    SETUP_S,
    STUDENT_PARAMS,
    TEACHER_S,
)
from fsd.models import build_student, load_tokenizer, run_model, teacher_meta
from fsd.objectives import Objective, Setup, build_objective
from fsd.progress import Progress
from fsd.relations import relation_batch
from fsd.tasks import Task, get_task
from fsd.teacher_source import TeacherSource


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class Report:
    """What `distill` yields after each evaluation (a rung): flat metrics, and `save(dir)` for a resumable
    checkpoint. `epoch` is the 1-based epoch the evaluation fell in."""

    epoch: int
    metrics: dict[str, float]
    state: Callable[[], dict]
    student_config: object = None  # the student's transformers config, so its folder loads with from_pretrained

    def save(self, directory: str | os.PathLike, resume: bool = True) -> str:
        """Write a checkpoint (student, objective, optimiser, scheduler, position, best score, config, RNG) as
        data, each file under a temporary name first (fsd.checkpoints); without `resume`, that of a run that is
        over: the student, its position and metrics, without what only resuming reads."""
        state = {k: v for k, v in self.state().items() if resume or k not in RESUME_KEYS}
        return save_checkpoint(directory, {**state, "metrics": self.metrics}, self.student_config)


def student_backbone(config: DistillConfig) -> str:
    """The student's pre-trained init: explicit, else the backbone the teacher was fine-tuned from."""
    if config.student_init:
        return config.student_init
    meta = teacher_meta(config.teacher)
    return meta["backbone"] if meta else config.teacher


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
    train, dev, held = make_batches(config.data, tokenizer, config.storage)
    objective = build_objective(config, regression=task.is_regression).to(device)
    key = cache_key(task, tokenizer, config.max_seq_len, config.data_dir)
    if holdout is not None:  # other training rows: every cache of them (teacher outputs, memory) is another
        key = f"{key}-{holdout.tag()}"
    return RunInputs(task, device, train, dev, {"holdout": held} if held is not None else dev, objective, key)


class Prepared(NamedTuple):
    rows: int  # training rows a run of the config sees per epoch
    memory_shape: tuple[int, ...] | None  # the teacher memory's, when the method uses one


def prepare_outputs(config: DistillConfig) -> Prepared:
    """Write what the trials of `config` read from storage: the tokenised data, the teacher-output cache and
    the teacher memory. A search calls it in its driver, so trials running in parallel only read them."""
    _, device, train, _, _, objective, data_key = load_inputs(config)
    source = TeacherSource.open(config, objective, train, data_key, device)
    if not objective.needs_memory:
        return Prepared(train.num_examples, None)
    return Prepared(train.num_examples, tuple(source.memory().shape))


def relation_probe(source: TeacherSource, ranked: dict[str, Batches], device: torch.device
                   ) -> Callable[[torch.nn.Module], dict[str, float]]:
    """student -> `relations/<inter|intra>_<euclidean|cosine>` against the teacher on the first batch of the
    evaluation split (the teacher's side computed once, by the live teacher: loaded for it when the cache
    serves the training steps)."""
    batches = next(iter(ranked.values()))
    batch = to_device(batches.collate(batches.batch_rows(0)[0]), device)
    with torch.no_grad(), autocast(device):
        t_states = run_model(source.live_model(), batch, hidden=True).penultimate.float()

    def probe(student: torch.nn.Module) -> dict[str, float]:
        was = student.training
        student.eval()
        with torch.no_grad(), autocast(device):
            s_states = run_model(student, batch, hidden=True).penultimate.float()
        student.train(was)
        return {f"relations/{k}": v for k, v in relation_batch(t_states, s_states, batch["attention_mask"]).items()}

    return probe


def make_loss_fn(objective: Objective, source: TeacherSource, student: torch.nn.Module) -> LossFn:
    """batch -> (loss, parts): the teacher's outputs (live or cached, without gradient), the student's, the
    objective."""
    needs = (objective.needs_hidden, objective.needs_attentions, objective.needs_values)

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return objective(run_model(student, batch, *needs), source.outputs(batch), batch)

    return loss_fn


def distill(config: DistillConfig, resume_from: str | os.PathLike | dict | None = None,
            progress: bool = False) -> Iterator[Report]:
    """Train a student on `config.task` with `config.method`, evaluating on dev (or on the holdout, when
    `config.holdout_rows` is set; dev is then not evaluated) every `config.eval_every` training samples (once
    per epoch when unset) and at the end.

    Args:
        config: the run's configuration; `config.teacher` must be fine-tuned on the task.
        resume_from: a checkpoint (file, folder or loaded dict) from `Report.save`; training continues after
            its step and gives the same results as an uninterrupted run (on CPU).
        progress: show each epoch's progress on the console (`fsd.progress.Progress`; the command line's run,
            not a search's trials).

    Yields:
        One `Report` per evaluation; `metrics` has `eval/score`, `eval/loss` and the task's metrics, their
        running best `eval/best_score` and `eval/best_loss`,
        the mean of `train/loss` and of each loss part since the last evaluation, `train/samples_per_s`,
        `progress/samples` (training samples seen), `progress/budget` (those of the whole run), `epoch`
        (epochs done, a fraction between evaluations inside an epoch), `run/resumed_from` (the epochs
        done where the run started: 0, or the checkpoint's after a resume), `run/student_params`,
        `eval/rows` and `time/eval_s` (the rows evaluated and the seconds it took), `time/train_s` (the seconds
        of training since the last evaluation), `time/teacher_s` (the part of them spent reading the teacher's
        outputs) and `time/setup_s` (the seconds the run took before its first step).
    """
    started = time.perf_counter()
    seed_everything(config.seed)
    task, device, train, _, ranked, objective, data_key = load_inputs(config)
    speed_up(device)
    source = TeacherSource.open(config, objective, train, data_key, device)
    seed_everything(config.seed)  # the student's init must not depend on whether the teacher was loaded
    attn = "eager" if objective.needs_attentions else "sdpa"
    student = build_student(student_backbone(config), config.student_layers, task.num_labels, attn).to(device)
    objective.setup(Setup(student, config.max_seq_len, source.memory() if objective.needs_memory else None))
    tracked = relation_probe(source, ranked, device) if config.track_relations else None
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
    start_epoch, start_step, samples, best, best_loss = 0, 0, 0, float("-inf"), float("inf")
    if resume_from is not None:
        state = resume_from if isinstance(resume_from, dict) else load_checkpoint(resume_from)
        student.load_state_dict(state["student"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, start_step, samples, best = state["epoch"], state["step"], state["samples"], state["best_score"]
        best_loss = state.get("metrics", {}).get(BEST_LOSS, best_loss)
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    resumed_from = samples / rows
    size = float(sum(p.numel() for p in student.parameters()))  # what inference runs (Table 8)

    loss_fn = make_loss_fn(objective, source, student)
    setup_s = time.perf_counter() - started  # data, models and the teacher's outputs opened: not training
    read_s = source.read_s
    interval = Interval()
    for epoch in range(start_epoch, config.epochs):
        student.train()
        objective.train()
        skip = start_step if epoch == start_epoch else 0
        bar = Progress(rows, f"epoch {epoch + 1}/{config.epochs}", enabled=progress)
        for step, n, parts in train_steps(train, epoch, loss_fn, params, optimizer, scheduler, config.grad_clip,
                                          device, skip):
            samples += n
            interval.add(n, parts)
            bar.update(n)
            if samples // every == (samples - n) // every and samples < budget:
                continue
            if step + 1 == len(train):
                bar.close()  # before the epoch's evaluation is reported
            metrics = interval.metrics()
            metrics[TEACHER_S], read_s = source.read_s - read_s, source.read_s  # a part of time/train_s
            metrics[SETUP_S] = setup_s
            started = time.perf_counter()
            metrics.update(evaluate(student, ranked, task, device))
            metrics[EVAL_S] = time.perf_counter() - started
            if tracked is not None:
                metrics.update(tracked(student))
            best, best_loss = max(best, metrics[SCORE]), min(best_loss, metrics[LOSS])
            metrics.update({"epoch": samples / rows, BEST_SCORE: best, BEST_LOSS: best_loss,
                            RESUMED_FROM: resumed_from, SAMPLES: samples, BUDGET: budget,
                            STUDENT_PARAMS: size})
            # The next position: the rest of this epoch, or the start of the next one.
            at = (epoch, step + 1) if step + 1 < len(train) else (epoch + 1, 0)

            def state(at: tuple[int, int] = at, samples: int = samples, best: float = best) -> dict:
                return {"student": student.state_dict(), "objective": objective.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "epoch": at[0], "step": at[1], "samples": samples, "best_score": best,
                        "config": config.to_dict(),
                        "rng": {"torch": torch.get_rng_state(),
                                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}

            yield Report(epoch + 1, metrics, state, student.config)
            student.train()  # evaluation left it in eval mode
            objective.train()
            interval = Interval()
        bar.close()


def load_student(checkpoint: str | os.PathLike) -> tuple[torch.nn.Module, DistillConfig]:
    """A checkpoint's student (on the CPU, in eval mode) and the configuration it was trained with."""
    state = load_checkpoint(checkpoint, resume=False)
    config = DistillConfig.from_dict(state["config"])
    student = build_student(student_backbone(config), config.student_layers, get_task(config.task).num_labels)
    student.load_state_dict(state["student"])
    return student.eval(), config


def evaluate_on_dev(checkpoint: str | os.PathLike) -> dict[str, float]:
    """The dev metrics of a checkpoint's student, as `dev/<metric>` (`dev_mm/..` for MNLI mismatched): how a
    run ranked on the holdout is reported, for the winners only."""
    student, config = load_student(checkpoint)
    inputs = load_inputs(config)
    metrics = evaluate(student.to(inputs.device), inputs.dev, inputs.task, inputs.device)
    return {k.replace("eval", "dev", 1): v for k, v in metrics.items()}


def export_student(checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> str:
    """A plain Hugging Face model folder of a checkpoint's student (no objective state, no memory), with its
    tokenizer. Without `out_dir`, the checkpoint's own `student/` folder is completed in place (no copy)."""
    folder = Path(checkpoint) / STUDENT if out_dir is None else Path(out_dir)
    if out_dir is None and (folder / "tokenizer_config.json").is_file():
        return str(folder)  # completed before
    student, config = load_student(checkpoint)
    if out_dir is not None or not (folder / "config.json").is_file():  # an old-format checkpoint has none
        student.save_pretrained(folder)
    load_tokenizer(config.teacher).save_pretrained(folder)
    return str(folder)

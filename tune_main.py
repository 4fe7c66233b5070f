"""fsd-tune: the paper's staged hyper-parameter search for Feature Structure Distillation of BERT on GLUE.

    python tune_main.py --task qqp                        # the paper's schedule for FSD on QQP
    python tune_main.py --task rte --preset smoke --data-dir ../shared/glue_data --teacher packaged-minilm
    python tune_main.py --task qqp --dry-run --preset paper  # print every stage and grid, run nothing

It fine-tunes (or reuses) the teacher, then runs each stage of the schedule as a Ray Tune experiment whose
trials are distillation runs; the best configuration of a stage fixes its parameters for the next. Every
trial is logged to MLflow. A killed search continues with the same command and --resume.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune_main.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--task", required=True, help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli")
    a("--method", default="fsd", help="what to search: fsd (the paper's 6 stages), vkd, pkd, rkd or minilm")
    a("--data-dir", default=None, help="local GLUE folder (GLUE download layout); default: nyu-mll/glue from the hub")
    a("--teacher", default="bert-base-uncased",
      help="pre-trained backbone to fine-tune as teacher (hub id, folder, or 'packaged-minilm' offline), or a "
           "teacher already fine-tuned on the task")
    a("--student-init", default=None, help="pre-trained backbone of the student (default: the teacher's backbone)")
    a("--student-layers", type=int, default=6, help="layers of the student: the first k of the backbone (paper: 6)")
    a("--storage", default="./fsd_runs",
      help="folder for teachers, caches and searches (one sub-folder per task and method)")
    a("--mlflow-uri", default=None, help="MLflow tracking URI (default: sqlite:///<storage>/mlflow.db)")
    a("--gpus-per-trial", type=float, default=None,
      help="GPU share of one trial; 0.25 packs four trials per GPU (default: 0.25 with CUDA, else 0)")
    a("--cpus-per-trial", type=float, default=1.0, help="CPU cores reserved per trial")
    a("--max-concurrent", type=int, default=0, help="at most this many trials at once (0: as resources allow)")
    a("--seeds", type=int, default=1, help="run every grid point with this many seeds and rank by their mean")
    a("--seed", type=int, default=42, help="first seed")
    a("--search", choices=["grid", "optuna"], default="grid",
      help="grid: the paper's grids; optuna: sample --num-samples points of each stage's grid (TPE)")
    a("--scheduler", choices=["fifo", "asha"], default="fifo", help="asha stops weak trials after an epoch")
    a("--num-samples", type=int, default=10, help="trials per stage with --search optuna")
    a("--preset", choices=["paper", "quick", "smoke"], default="paper",
      help="paper: the full schedule; quick: 2 values per parameter, 2 epochs, 2000 rows; smoke: a complete "
           "search in minutes on a CPU (1 epoch, 64 rows)")
    a("--stages", default=None, help="comma-separated stage names to run (see --dry-run); default all")
    a("--max-seq-len", type=int, default=128, help="tokens per sequence (paper: 128)")
    a("--teacher-epochs", type=int, default=3, help="teacher fine-tuning epochs (paper: 3)")
    a("--max-failures", type=int, default=1, help="retries of a crashed trial from its last checkpoint")
    a("--log-checkpoints", choices=["best", "all"], default="best",
      help="best: each stage's best student is logged as an MLflow model; all: also every trial's best checkpoint")
    a("--resume", action="store_true", help="continue the search stored in the storage folder")
    a("--address", default=None, help="address of an existing Ray cluster (default: start one locally)")
    a("--dry-run", action="store_true", help="print every stage, its grid, trial count and trial-epochs; run nothing")
    return p


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from fsd.tasks import get_task
    from search_spaces import format_schedule, get_schedule

    try:
        task = get_task(args.task).name
        schedule = get_schedule(args.method, task, args.preset)
    except ValueError as e:
        fail(str(e))
    names = [s.name for s in schedule.stages]
    stages = tuple(args.stages.split(",")) if args.stages else ()
    for name in stages:
        if name not in names:
            fail(f"--stages names {name!r}, which the {args.method} schedule lacks: choose from {', '.join(names)}")
    if args.dry_run:
        print(format_schedule(schedule))
        return
    run(args, task, schedule, stages)


def run(args, task: str, schedule, stages: tuple[str, ...]) -> None:
    from fsd.cli import quiet_libraries
    from fsd.tuning.ledger import Ledger
    from fsd.tuning.runner import IDENTITY, SearchSpec, run_search
    from fsd.tuning.summary import summary_table

    storage = str(Path(args.storage).expanduser().resolve())
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        fail(f"--data-dir {args.data_dir} is not a folder: point it at a GLUE download")
    gpus = args.gpus_per_trial
    if gpus is None:
        import torch

        gpus = 0.25 if torch.cuda.is_available() else 0.0
    spec = SearchSpec(
        task=task, method=args.method, storage=storage,
        mlflow_uri=args.mlflow_uri or f"sqlite:///{storage}/mlflow.db",
        teacher=str(Path(args.teacher).resolve()) if Path(args.teacher).exists() else args.teacher,
        student_init=args.student_init, student_layers=args.student_layers,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None, preset=args.preset,
        stages=stages, seeds=args.seeds, seed=args.seed, gpus_per_trial=gpus, cpus_per_trial=args.cpus_per_trial,
        max_concurrent=args.max_concurrent, max_failures=args.max_failures, search=args.search,
        scheduler=args.scheduler, num_samples=args.num_samples, max_seq_len=args.max_seq_len,
        teacher_epochs=args.teacher_epochs, log_checkpoints=args.log_checkpoints, address=args.address)
    ledger = Ledger(spec.folder)
    if ledger.exists and not args.resume:
        fail(f"a search already exists in {spec.folder}: add --resume to continue it, or choose another --storage")
    if args.resume:
        if not ledger.exists:
            fail(f"--resume: no search to resume in {spec.folder}; run without --resume to start one")
        stored = ledger.data.get("search", {})
        for key in IDENTITY:
            if key in stored and stored[key] != _jsonable(getattr(spec, key)):
                fail(f"--resume: {key} is {getattr(spec, key)!r} but the stored search used {stored[key]!r}; "
                     f"use the same value or another --storage")
    os.makedirs(spec.folder, exist_ok=True)
    quiet_libraries()
    ledger = run_search(spec, schedule)
    print(summary_table(ledger, schedule))


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


if __name__ == "__main__":
    main()

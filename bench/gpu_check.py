"""Packing trials on one GPU: samples/s and peak memory of one FSD trial alone vs four at once (what
`--gpus-per-trial 0.25` makes Ray do: four processes sharing the device), bert-base-sized teacher and
BERT6 student with random weights (the hub may be unreachable), batch 32, length 128, bf16 autocast.

    bash bench/gpu_check.sh                      # on a GPU machine: the whole check, under 8 minutes
    python bench/gpu_check.py --device cpu --tiny --steps 2   # the same code path on a CPU (tests)

Each trial runs in its own process, like a Ray worker. `live`: the teacher runs in every step; `cache`:
no teacher on the GPU, its logits and penultimate features come from pinned host memory (fp16) as the
teacher-output cache serves them. Needs only torch and transformers (no datasets, Ray or MLflow).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing


def models(tiny: bool):
    from transformers import BertConfig, BertForSequenceClassification

    size = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64) if tiny else {}
    teacher = BertForSequenceClassification(BertConfig(num_hidden_layers=2 if tiny else 12, **size))
    student = BertForSequenceClassification(BertConfig(num_hidden_layers=1 if tiny else 6, **size))
    return teacher, student


def trial(args: argparse.Namespace, mode: str, out) -> None:
    import torch

    from fsd.config import DistillConfig
    from fsd.loop import make_optimizer, training_step
    from fsd.models import ModelOutputs, run_model
    from fsd.objectives import Setup, build_objective

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    teacher, student = models(args.tiny)
    teacher = teacher.to(device).eval().requires_grad_(False) if mode == "live" else None
    student = student.to(device).train()
    if args.compile:
        student.compile(dynamic=True)
    d, length, n = student.config.hidden_size, args.length, args.batch_size
    config = DistillConfig(task="rte", teacher="random", method="fsd", max_seq_len=length, memory_size=100)
    objective = build_objective(config)
    objective.setup(Setup(student, length, torch.randn(100, length * d, device=device)))
    objective.to(device)
    params = [p for p in [*student.parameters(), *objective.parameters()] if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, 1e-5, 0.0, args.warmup + args.steps)
    zeros = torch.zeros(n, length, dtype=torch.long)
    batch = {"input_ids": torch.randint(1000, 30000, (n, length)), "token_type_ids": zeros,
             "attention_mask": torch.ones_like(zeros), "labels": torch.randint(0, 2, (n,))}
    cached = {"teacher_logits": torch.randn(n, 2), "teacher_penultimate": torch.randn(n, length, d).half()}
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
        cached = {k: v.pin_memory() for k, v in cached.items()}

    def loss_fn(b: dict) -> tuple:
        if teacher is not None:
            with torch.no_grad():
                t = run_model(teacher, b, hidden=True)
        else:
            c = {k: v.to(device, non_blocking=True) for k, v in cached.items()}
            t = ModelOutputs(c["teacher_logits"], penultimate_states=c["teacher_penultimate"].float())
        return objective(run_model(student, b, hidden=True), t, b)

    def step() -> None:  # the step training takes: autocast, the non-finite check, clipping, AdamW, schedule
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        training_step(b, loss_fn, params, optimizer, scheduler, config.grad_clip, device)

    for _ in range(args.warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    out.put({"samples_per_s": args.steps * n / seconds, "peak_gib": peak})


def run(args: argparse.Namespace, mode: str, trials: int) -> list[dict]:
    ctx = mp.get_context("spawn")  # CUDA cannot be shared by forked children
    out = ctx.Queue()
    procs = [ctx.Process(target=trial, args=(args, mode, out)) for _ in range(trials)]
    for p in procs:
        p.start()
    results = [out.get(timeout=args.timeout) for _ in procs]
    for p in procs:
        p.join()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--packs", default="1,4", help="trials at once, e.g. 1,4 (four = --gpus-per-trial 0.25)")
    p.add_argument("--modes", default="live,cache")
    p.add_argument("--compile", action="store_true", help="torch.compile the student")
    p.add_argument("--tiny", action="store_true", help="tiny models (checks the code path, not the GPU)")
    p.add_argument("--timeout", type=float, default=400)
    args = p.parse_args()
    import torch

    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    total = torch.cuda.get_device_properties(0).total_memory / 2**30 if args.device.startswith("cuda") else float("nan")
    print(f"device {gpu} ({total:.0f} GiB), torch {torch.__version__}, batch {args.batch_size}, length "
          f"{args.length}, FSD, teacher {'tiny' if args.tiny else 'bert-base (12 layers)'}, student "
          f"{'tiny' if args.tiny else 'BERT6'}, {'fp32' if gpu == 'cpu' else 'bf16 autocast'}"
          f"{', compiled' if args.compile else ''}")
    print("| teacher | trials at once | samples/s per trial | samples/s total | total / one trial alone "
          "| peak GiB per trial |")
    print("|---|---|---|---|---|---|")
    rows = []
    for mode in args.modes.split(","):
        alone = None
        for trials in map(int, args.packs.split(",")):
            res = run(args, mode, trials)
            per = sum(r["samples_per_s"] for r in res) / trials
            total_rate = per * trials
            alone = alone or total_rate
            peak = max(r["peak_gib"] for r in res)
            rows.append({"mode": mode, "trials": trials, "per_trial": per, "total": total_rate, "peak_gib": peak})
            print(f"| {mode} | {trials} | {per:.1f} | {total_rate:.1f} | {total_rate / alone:.2f} | {peak:.2f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

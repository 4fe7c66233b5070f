"""What distillation costs next to plain fine-tuning, measured in one run on the same batches:

  1. per method, the median training-step time / that of plain fine-tuning (CE only, same student, same
     batches, steps alternated so both see the same load on the machine), with the live teacher and
     with the teacher-output cache, padded to 128 (the paper) and with dynamic padding over
     length-grouped batches (our default); the paper's Table 8 beside them;
  2. the equivalence check: on the same batch, the loss with the cache (float16 and float32 features)
     against the live teacher, |difference| and whether it is under 1e-4;
  3. a whole `--preset quick` VKD stage (Ray Tune, all its trials): wall time with the cache and without.

    python bench/speed.py --data-dir ../shared/glue_data --task rte --teacher <teacher fine-tuned on RTE>

Teacher: a folder fine-tuned on the task (or `packaged-minilm`, whose head is then random); student: the
first --student-layers layers of --student-init (default: the packaged MiniLM). The FSDG memory is random here
(its values do not change the cost). One step = (teacher forward | cache read) + student forward/backward + AdamW step.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig

from fsd.config import DistillConfig
from fsd.data import cache_key
from fsd.logs import quiet_libraries, show_console
from fsd.loop import make_batches, make_optimizer, speed_up, to_device, training_step
from fsd.models import build_student, load_tokenizer, resolve_model_path
from fsd.objectives import OBJECTIVES, Setup, build_objective
from fsd.tasks import get_task
from fsd.teacher_source import TeacherSource
from fsd.train import make_loss_fn

PAPER = {"vkd": 1.00, "pkd": 1 / 0.96, "rkd": 1 / 0.77, "fsd": 1 / 0.92}  # Table 8 speeds, as time ratios
LAYOUTS = {"len 128": {"pad_to_max": True}, "dynamic": {"pad_to_max": False, "group_by_length": True}}


def config_for(args, storage: str, method: str, **kw) -> DistillConfig:
    return DistillConfig.from_dict({
        "task": args.task, "teacher": args.teacher, "student_init": args.student_init, "method": method,
        "student_layers": args.student_layers, "max_seq_len": 128, "batch_size": args.batch_size,
        "max_train_samples": args.steps * args.batch_size, "data_dir": args.data_dir, "storage": storage,
        "device": "cpu" if not torch.cuda.is_available() else "auto", **kw})


def build_step(config: DistillConfig):
    """(loss_fn, optimizer, scheduler, params, batches) for one method, live teacher or cache per config."""
    task = get_task(config.task)
    tok = load_tokenizer(config.teacher)
    train, _, _ = make_batches(config.replace(max_eval_samples=16).data, tok, config.storage)
    objective = build_objective(config, task.is_regression)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    speed_up(device)  # as a training run does
    source = TeacherSource.open(config, objective, train, cache_key(task, tok, 128, config.data_dir), device)
    attn = "eager" if objective.needs_attentions else "sdpa"
    torch.manual_seed(0)
    student = build_student(config.student_init, config.student_layers, task.num_labels, attn).to(device).train()
    if config.compile:  # as training does (fsd.train)
        student.compile(dynamic=True)
    d_t = AutoConfig.from_pretrained(resolve_model_path(config.teacher)).hidden_size
    memory = torch.randn(task.memory_size, 128 * d_t, device=device) if objective.needs_memory else None
    objective.setup(Setup(student, 128, memory))
    objective.to(device)
    params = [p for p in [*student.parameters(), *objective.parameters()] if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, 1e-5, 0.0, 10 * len(train))
    loss_fn = make_loss_fn(objective, source, student)
    return loss_fn, params, optimizer, scheduler, train, source.cache is not None, device


def stepper(config: DistillConfig):
    """A function timing one training step on batch i (collating and reading cache rows included), and
    whether the teacher's outputs come from the cache. The step is training's own (`fsd.loop.training_step`:
    autocast, the non-finite check, gradient clipping)."""
    loss_fn, params, optimizer, scheduler, train, cached, device = build_step(config)
    batches = train.batch_rows(0)

    def step(i: int) -> float:
        start = time.perf_counter()
        batch = to_device(train.collate(batches[i % len(batches)]), device)
        training_step(batch, loss_fn, params, optimizer, scheduler, config.grad_clip, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step, cached


def time_against(config: DistillConfig, base, steps: int) -> tuple[float, float, bool, float]:
    """(median step time / the baseline's, median step seconds, cached, total time / the baseline's): steps
    alternate with the baseline's on the same batches, so both see the same load on the machine. The totals'
    ratio is an epoch's over these batches; the medians' is one middle-length batch's (with length-grouped
    batches, a fixed cost per step weighs more on short batches than on long ones)."""
    step, cached = stepper(config)
    step(0), base(0)  # warm-up
    ours, theirs = [], []
    for i in range(steps):
        theirs.append(base(i))
        ours.append(step(i))
    return statistics.median(ours) / statistics.median(theirs), statistics.median(ours), cached, sum(ours) / sum(theirs)


def step_table(args, storage: str) -> None:
    baseline = args.baseline
    methods = [m for m in args.methods.split(",") if m != baseline]
    rows: dict[tuple[str, str, bool], float] = {}
    totals: dict[tuple[str, str, bool], float] = {}
    seconds: dict[tuple[str, str], float] = {}
    steps = 2 * args.steps  # every batch twice
    layouts = {k: v for k, v in LAYOUTS.items() if k in args.layouts.split(",")}
    bases = {layout: stepper(config_for(args, storage, baseline, **kw))[0] for layout, kw in layouts.items()}
    dynamic_vs_fixed = None
    if len(layouts) == 2:
        dynamic_vs_fixed, seconds[("dynamic", baseline)], _, _ = time_against(
            config_for(args, storage, baseline, **LAYOUTS["dynamic"]), bases["len 128"], steps)
    for layout, kw in layouts.items():
        base = bases[layout]
        for method in methods:
            for use_cache in (True,) if args.cache_only else (False, True):
                ratio, secs, cached, total = time_against(
                    config_for(args, storage, method, teacher_cache=use_cache, **kw), base, steps)
                if use_cache and not cached:
                    continue  # the method cannot be served from the cache (MiniLM): no row
                rows[(layout, method, use_cache)] = ratio
                totals[(layout, method, use_cache)] = total
                seconds[(layout, method)] = secs
    what = "plain fine-tuning step (CE only" if baseline == "nokd" else f"{baseline} step (teacher cache on"
    print(f"\n## step time / {what}, same student, same batches)\n{args.task}, batch "
          f"{args.batch_size}, medians of {steps} steps alternated with {baseline} steps, teacher "
          f"{args.teacher}, student {args.student_layers} layers of {args.student_init}, "
          f"{torch.get_num_threads()} threads, "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}")
    print("| method | len 128 live | len 128 cache | dynamic live | dynamic cache | paper (vs VKD) "
          "| s/step dynamic, best |")
    print("|---|---|---|---|---|---|---|")
    secs = f"{seconds[('dynamic', baseline)]:.3f}" if ("dynamic", baseline) in seconds else "-"
    print(f"| {baseline} | 1.00 | - | 1.00 | - | - | {secs} |")
    for m in methods:
        cells = [f"{rows[(layout, m, c)]:.2f}" if (layout, m, c) in rows else "-" for layout in LAYOUTS
                 for c in (False, True)]
        paper = f"{PAPER[m]:.2f}" if m in PAPER else "-"
        secs = f"{seconds[('dynamic', m)]:.3f}" if ("dynamic", m) in seconds else "-"
        print(f"| {m} | {' | '.join(cells)} | {paper} | {secs} |")
    print(f"\ntotal time of the {steps} alternated steps / the {baseline} steps' (an epoch over these batches):")
    columns = [(layout, c) for layout, m, c in totals if m == methods[0]]
    print("| method | " + " | ".join(f"{layout} {'cache' if c else 'live'}" for layout, c in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for m in methods:
        print(f"| {m} | " + " | ".join(f"{v:.2f}" for (_l, mm, _c), v in totals.items() if mm == m) + " |")
    if dynamic_vs_fixed is not None:
        print(f"{baseline} step, dynamic (length-grouped) / len 128: {dynamic_vs_fixed:.2f}")


def equivalence(args, storage: str) -> None:
    print("\n## equivalence: loss with the cache vs the live teacher, same batch, same student init")
    print("| method | cache dtype | live loss | cached loss | abs diff | < 1e-4 |")
    print("|---|---|---|---|---|---|")
    for method in [m for m in args.methods.split(",") if OBJECTIVES[m].teacher_fields]:
        losses = {}
        for label, kw in (("live", {"teacher_cache": False}), ("float16", {"cache_dtype": "float16"}),
                          ("float32", {"cache_dtype": "float32"})):
            loss_fn, *_rest, train, _cached, device = build_step(
                config_for(args, storage, method, pad_to_max=False, **kw))
            torch.manual_seed(1)  # the same dropout masks in every variant
            losses[label] = loss_fn(to_device(train.collate(train.batch_rows(0)[0]), device))[0].item()
        for dtype in ("float16", "float32"):
            diff = abs(losses[dtype] - losses["live"])
            print(f"| {method} | {dtype} | {losses['live']:.6f} | {losses[dtype]:.6f} | {diff:.2e} | "
                  f"{'yes' if diff < 1e-4 else 'NO'} |")


def stage_wall_time(args, storage: str) -> None:
    import ray

    from fsd.tuning.plan.spec import SearchSpec
    from fsd.tuning.search.runner import run_search
    from search_spaces import get_schedule

    schedule = get_schedule("vkd", args.task, "quick")
    print(f"\n## a whole --preset quick VKD stage ({schedule.stages[0].trial_count()} trials, "
          f"{schedule.budget.epochs} epochs, {schedule.budget.max_train_samples} training rows)")
    print("| teacher outputs | wall s | trials | best dev score |")
    print("|---|---|---|---|")
    times = {}
    for label, extra in (("live teacher", {"teacher_cache": False}), ("cache", {})):
        root = Path(storage) / label.replace(" ", "-")
        spec = SearchSpec(task=args.task, method="vkd", storage=str(root), mlflow_uri=f"sqlite:///{root}/mlflow.db",
                          teacher=args.teacher, student_init=args.student_init, student_layers=args.student_layers,
                          data_dir=args.data_dir, preset="quick", extra=extra)
        start = time.perf_counter()
        ledger = run_search(spec, schedule).ledger
        times[label] = time.perf_counter() - start
        rec = ledger.data["stages"]["vkd"]
        print(f"| {label} | {times[label]:.0f} | {rec['trials']} | {rec['score']:.4f} |")
        ray.shutdown()
    print(f"cache / live wall time: {times['cache'] / times['live teacher']:.2f} (the cache's one teacher pass "
          "included)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="rte")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--teacher", default="packaged-minilm")
    p.add_argument("--student-init", default="packaged-minilm", help="the student's backbone (its first layers)")
    p.add_argument("--student-layers", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--methods", default=",".join(m for m in OBJECTIVES if m != "nokd"))
    p.add_argument("--baseline", default="nokd", help="the method every step is timed against (alternated)")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="which of 'len 128' and 'dynamic' to time")
    p.add_argument("--cache-only", action="store_true", help="time the teacher-output cache only, not the live teacher")
    p.add_argument("--parts", default="steps,equivalence,stage", help="which of steps, equivalence, stage to run")
    args = p.parse_args()
    quiet_libraries()
    show_console()
    storage = tempfile.mkdtemp(prefix="fsd-bench-")
    try:
        parts = args.parts.split(",")
        if "steps" in parts:
            step_table(args, storage)
        if "equivalence" in parts:
            equivalence(args, storage)
        if "stage" in parts:
            stage_wall_time(args, storage)
    finally:
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()

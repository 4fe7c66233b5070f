"""The student's training step against this CPU's matmul peak, measured in one run (issue 37, item 3).

    python bench/step_rate.py --data-dir ../shared/glue_data --task sst2 --steps 40

For each method and thread count: the step's floating-point work (torch's FlopCounterMode over every batch:
the matmuls, attention included, of the forward and backward passes; the elementwise work and AdamW are not
counted, so the rate is of the arithmetic that a peak can be compared with), the step's seconds over the same
batches, and the matmul peak at that thread count (fp32 `torch.mm`, square 1024 and a BERT-layer shape: 16 x 64
tokens by 384 into 1536), timed in blocks alternated with the steps so that both see the same load. Printed: a
table of GFLOP/s and the share of the peak, and the step's time split (forward, backward, optimiser).

The batches are the search's (`cpu` preset: SST-2, batches of 16, length-grouped, the teacher-output cache), the
student the first 3 layers of the packaged MiniLM.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import torch
from speed import LAYOUTS, build_step, config_for
from torch.utils.flop_counter import FlopCounterMode

from fsd.logs import quiet_libraries, show_console
from fsd.loop import to_device, training_step


def matmul_rate(shape: tuple[int, int, int], repeats: int = 20) -> float:
    """GFLOP/s of fp32 `torch.mm` of (m x k) by (k x n): the median over `repeats` products."""
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(times) / 1e9


PEAK_SHAPES = {"square 1024": (1024, 1024, 1024), "BERT layer": (16 * 64, 384, 1536)}


def step_parts(config, steps: int) -> tuple[float, float, float, float, float]:
    """Over `steps` batches of the search's: (GFLOP counted, seconds of whole steps, and of their forward,
    backward and optimiser parts). Every step is training's own (`fsd.loop.training_step`); the forward is
    timed in a pass of its own (its graph dropped), the optimiser by stepping again on a step's gradients, and
    the backward (with clipping and the rest) is what the whole step leaves."""
    loss_fn, params, optimizer, scheduler, train, _cached, device = build_step(config)
    batches = [to_device(train.collate(rows), device) for rows in train.batch_rows(0)[:steps]]

    def step(batch):
        training_step(batch, loss_fn, params, optimizer, scheduler, config.grad_clip, device)

    for batch in batches[:2]:  # warm-up
        step(batch)
    with FlopCounterMode(display=False) as counter:
        for batch in batches:
            step(batch)
    flops = counter.get_total_flops() / 1e9
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    whole = time.perf_counter() - start
    forward = update = 0.0
    for batch in batches:
        t0 = time.perf_counter()
        loss_fn(batch)
        t1 = time.perf_counter()
        optimizer.step()  # on the gradients the last step left
        forward, update = forward + t1 - t0, update + time.perf_counter() - t1
    return flops, whole, forward, max(whole - forward - update, 0.0), update


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--teacher", default="packaged-minilm")
    p.add_argument("--student-init", default="packaged-minilm")
    p.add_argument("--student-layers", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--methods", default="vkd,fsd")
    p.add_argument("--threads", default="1,2", help="thread counts to measure at (a trial of two on 2 cores: 1)")
    p.add_argument("--compile", action="store_true", help="each method also with its student under torch.compile "
                   "(as --compile trains it), the row `<method>+compile`")
    args = p.parse_args()
    quiet_libraries()
    show_console()
    storage = tempfile.mkdtemp(prefix="fsd-rate-")
    rows, plain = [], {}
    try:
        # Each method's teacher-output cache built first, untimed: the instance that builds one stepped at
        # about twice the time of the next (0.58-0.63 s against 0.31 s for FSD on one thread), where a search's
        # trials always open a cache built before them.
        for method in args.methods.split(","):
            build_step(config_for(args, storage, method, teacher_cache=True, **LAYOUTS["dynamic"]))
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for method, compiled in [(m, c) for m in args.methods.split(",") for c in (False, True)
                                     if args.compile or not c]:
                before = {name: matmul_rate(shape) for name, shape in PEAK_SHAPES.items()}
                config = config_for(args, storage, method, teacher_cache=True, compile=compiled,
                                    **LAYOUTS["dynamic"])
                flops, whole, fwd, bwd, upd = step_parts(config, args.steps)
                if compiled:  # the same arithmetic as the plain student's, which the counter sees whole
                    flops = plain[(threads, method)]
                plain[(threads, method)] = flops
                after = {name: matmul_rate(shape) for name, shape in PEAK_SHAPES.items()}
                peak = {name: (before[name] + after[name]) / 2 for name in PEAK_SHAPES}
                label = method + ("+compile" if compiled else "")
                rows.append((threads, label, flops / args.steps, whole / args.steps, flops / whole, peak,
                             (fwd, bwd, upd)))
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    print(f"\n## the student's step against the matmul peak ({args.task}, batch {args.batch_size}, "
          f"{args.student_layers} layers, the search's length-grouped batches, teacher-output cache, "
          f"{args.steps} batches)")
    print("| threads | method | GFLOP a step | s a step | GFLOP/s | peak square 1024 | peak BERT layer | "
          "share of the BERT-layer peak | forward / backward / optimiser |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads, method, gflop, seconds, rate, peak, (fwd, bwd, upd) in rows:
        total = fwd + bwd + upd
        print(f"| {threads} | {method} | {gflop:.2f} | {seconds:.3f} | {rate:.1f} | {peak['square 1024']:.1f} | "
              f"{peak['BERT layer']:.1f} | {rate / peak['BERT layer']:.0%} | "
              f"{fwd / total:.0%} / {bwd / total:.0%} / {upd / total:.0%} |")
    by = {(t, m): s for t, m, _g, s, *_ in rows}
    for threads in sorted({t for t, *_ in rows}):
        if (threads, "vkd") in by and (threads, "fsd") in by:
            print(f"fsd step / vkd step at {threads} thread(s): {by[(threads, 'fsd')] / by[(threads, 'vkd')]:.2f}")


if __name__ == "__main__":
    main()

"""Training-step time of every method relative to plain fine-tuning (CE only) of the same student, on the
same batches, at fixed length 128 (the paper) and with per-batch padding (the paper's Table 8 as ratios).

    python bench/step_time.py --data-dir ../shared/glue_data --task rte --steps 6

One step = teacher forward (no grad) + student forward/backward + AdamW step. Ratios > 1 are slower.
Teacher: the packaged MiniLM (6 layers, hidden 384) unless --teacher; student: its first 3 layers.
The teacher memory for FSDG/FSD is random here (its values do not change the cost).
"""

from __future__ import annotations

import argparse
import time

import torch

from fsd.cli import quiet_libraries
from fsd.config import DistillConfig
from fsd.data import Batches, load_task_data
from fsd.models import build_student, load_teacher, load_tokenizer
from fsd.objectives import OBJECTIVES, Setup, build_objective
from fsd.tasks import get_task
from fsd.train import make_loss_fn, make_optimizer

PAPER = {"vkd": 1.00, "pkd": 1 / 0.96, "rkd": 1 / 0.77, "fsd": 1 / 0.92}  # Table 8 speeds, as time ratios


def time_method(method: str, args, batches: list[dict], task) -> float:
    config = DistillConfig.from_dict({"task": task.name, "teacher": args.teacher, "method": method,
                                      "student_layers": args.student_layers, "max_seq_len": 128})
    torch.manual_seed(0)
    objective = build_objective(config, task.is_regression)
    attn = "eager" if objective.needs_attentions else "sdpa"
    teacher = load_teacher(args.teacher, task.num_labels, attn).eval().requires_grad_(False)
    student = build_student(args.teacher, args.student_layers, task.num_labels, attn).train()
    d_t = teacher.config.hidden_size
    objective.setup(Setup(teacher, student, 128, lambda: torch.randn(task.memory_size, 128 * d_t)))
    if not objective.needs_teacher:
        teacher = None
    params = [*student.parameters(), *objective.parameters()]
    optimizer, scheduler = make_optimizer(params, 1e-5, 0.0, 10 * len(batches))
    loss_fn = make_loss_fn(objective, teacher, student)
    seconds = []
    for i, batch in enumerate([batches[0], *batches]):  # the first step warms up and is not counted
        start = time.perf_counter()
        loss, _ = loss_fn(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if i:
            seconds.append(time.perf_counter() - start)
    return sum(seconds) / len(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="rte")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--teacher", default="packaged-minilm")
    p.add_argument("--student-layers", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--methods", default=",".join(m for m in OBJECTIVES if m != "nokd"))
    args = p.parse_args()
    quiet_libraries()
    task = get_task(args.task)
    tok = load_tokenizer(args.teacher)
    data = load_task_data(task, tok, 128, args.data_dir, None, args.steps * args.batch_size)
    rows = {}
    for label, pad_to in (("len 128", 128), ("dynamic", None)):
        split = Batches(data["train"], args.batch_size, tok.pad_token_id, shuffle=True, pad_to=pad_to,
                        regression=task.is_regression)
        batches = list(split.epoch(0))
        base = time_method("nokd", args, batches, task)
        rows[label] = {"nokd": base, **{m: time_method(m, args, batches, task) for m in args.methods.split(",")}}
    print(f"\nstep time / plain fine-tuning step (CE only), {task.name}, batch {args.batch_size}, "
          f"{args.steps} steps, teacher {args.teacher}, student {args.student_layers} layers, "
          f"{torch.get_num_threads()} threads")
    print("| method | len 128 | dynamic | paper (time vs VKD) | s/step len 128 | s/step dynamic |")
    print("|---|---|---|---|---|---|")
    for m in rows["len 128"]:
        fixed, dyn = rows["len 128"], rows["dynamic"]
        paper = f"{PAPER[m]:.2f}" if m in PAPER else "-"
        print(f"| {m} | {fixed[m] / fixed['nokd']:.2f} | {dyn[m] / dyn['nokd']:.2f} | {paper} | "
              f"{fixed[m]:.3f} | {dyn[m]:.3f} |")
    speed = rows["dynamic"]["nokd"] / rows["len 128"]["nokd"]
    print(f"plain fine-tuning step, dynamic padding / len 128: {speed:.2f}")


if __name__ == "__main__":
    main()

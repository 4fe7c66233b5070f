"""Fine-tune a teacher per task with the paper's recipe and print its dev score and seconds per epoch.

    python bench/teacher_table.py --data-dir ../shared/glue_data --teacher packaged-minilm \
        --tasks rte,mrpc,stsb,cola --storage ./fsd_runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fsd.config import DataSpec
from fsd.logs import quiet_libraries, show_console
from fsd.models import TEACHER_META
from fsd.teacher import TeacherSpec, ensure_teacher, teacher_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="rte,mrpc,stsb,cola")
    p.add_argument("--teacher", default="packaged-minilm")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--storage", default="./fsd_runs")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=None, help="default: the paper's per task")
    p.add_argument("--max-train-samples", type=int, default=None)
    args = p.parse_args()
    quiet_libraries()
    show_console()
    rows = []
    for task in args.tasks.split(","):
        data = teacher_data(DataSpec(task, args.data_dir, max_train_samples=args.max_train_samples))
        spec = TeacherSpec(args.teacher, data, epochs=args.epochs, lr=args.lr)
        path = ensure_teacher(spec, args.storage)
        meta = json.loads((Path(path) / TEACHER_META).read_text())
        secs = [e["time/epoch_s"] for e in meta["epochs"]]
        rows.append((task, meta["dev"]["eval/score"], sum(secs) / len(secs), meta["epochs"][-1]))
        print(f"| {task} | {rows[-1][1]:.4f} | {rows[-1][2]:.0f} | "
              + ", ".join(f"{k[5:]}={v:.4f}" for k, v in meta["dev"].items()) + " |", flush=True)


if __name__ == "__main__":
    main()

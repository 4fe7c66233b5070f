"""The paper's whole FSD schedule where a student learns (SST-2, 3-layer MiniLM student, this CPU), under the
grid, halving and Optuna: what each hands back and what it spends.

    # 1. run a strategy (from a clone at a fixed commit, in the background; one CPU-heavy job at a time)
    python bench/schedule.py run grid --storage /work/runs/paper-grid > grid.console.txt 2>&1
    python bench/schedule.py run optuna --storage /work/runs/paper-optuna --budget 20%
    # 2. record every trial's curve of the grid run (score and loss at each evaluation), per stage
    python bench/schedule.py record /work/runs/paper-grid --out bench/results/sst2-paper-schedule/curves.json
    # 3. the rank correlation of the score and of the loss at each rung with the final score
    python bench/schedule.py rungs bench/results/sst2-paper-schedule/curves.json
    # 4. the table: trials run, stopped, folded away, skipped; samples and their share; winners; final students
    python bench/schedule.py table /work/runs/paper-grid /work/runs/paper-halving /work/runs/paper-optuna ...

The budget [ours]: the first 1,600 SST-2 training rows (a 1,000-row holdout set aside and ranked on), one
epoch in batches of 16, four evaluations a trial, student learning rates {1e-4, 2e-4, 3e-4} for the 3-layer
MiniLM (the paper's suit BERT-base); the teacher fine-tuned on the same rows for one epoch at 1e-4.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLUE = ROOT.parent / "shared" / "glue_data"
BUDGET = ["--task", "sst2", "--method", "fsd", "--preset", "paper", "--teacher", "packaged-minilm",
          "--student-layers", "3", "--set", "max_train_samples=1600", "--set", "batch_size=16",
          "--set", "eval_every=400", "--grid", "epochs=1", "--grid", "lr=1e-4,2e-4,3e-4",
          "--select-on", "holdout", "--teacher-epochs", "1", "--teacher-lr", "1e-4"]


def command(strategy: str, storage: str, data_dir: str, extra: list[str]) -> list[str]:
    how = [] if strategy == "grid" else ["--strategy", strategy]
    return [sys.executable, str(ROOT / "tune_main.py"), *BUDGET, *how, "--data-dir", data_dir, "--storage", storage,
            *extra]


def run(args: argparse.Namespace) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    resume = ["--resume"] if (Path(args.storage) / "sst2-fsd" / "ledger.json").is_file() else []
    cmd = command(args.strategy, args.storage, args.data_dir, [*args.extra, *resume])
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


# ---------------------------------------------------------------------------------------------- curves
def read_stage(folder: Path) -> list[dict]:
    """Each trial of a stage folder: its grid point, and its score and loss at each evaluation."""
    import pandas as pd

    trials = []
    for trial in sorted(folder.glob("*/train_trial_*")):
        if not (trial / "progress.csv").is_file():
            continue
        df = pd.read_csv(trial / "progress.csv")
        config = json.loads((trial / "params.json").read_text())
        trials.append({"trial": trial.name.split("_")[3], "config": config,
                       "samples": [int(x) for x in df["progress/samples"]],
                       "scores": [float(x) for x in df["eval/score"]],
                       "losses": [float(x) for x in df["eval/loss"]] if "eval/loss" in df else [],
                       "train_s": float(df["time/train_s"].sum())})
    return sorted(trials, key=lambda t: int(t["trial"]))


def stage_folders(storage: Path) -> dict[str, Path]:
    """The search's stage -> its shared stage folder, from its ledger."""
    ledger = json.loads((storage / "sst2-fsd" / "ledger.json").read_text())
    out = {}
    for name, record in ledger["stages"].items():
        if record.get("shared"):
            out[name] = storage / "stages" / f"sst2-{name}-{record['shared']}"
    return out


def record(args: argparse.Namespace) -> None:
    storage = Path(args.storage)
    stages = {name: read_stage(folder) for name, folder in stage_folders(storage).items()}
    out = {"task": "sst2", "every": 400, "command": " ".join(["python tune_main.py", *BUDGET]),
           "stages": {k: {"trials": v} for k, v in stages.items() if v}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{sum(len(v) for v in stages.values())} trials in {len(stages)} stages -> {args.out}")


# ---------------------------------------------------------------------------------------------- rungs
def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan  # all tied: no ranking at all
    return float(spearmanr(x, y).statistic)


def rung_correlations(trials: list[dict]) -> list[dict]:
    """At each evaluation: Spearman's rho of the score, and of minus the loss, with the final score (the best
    score over the trial's budget, what the winner rule ranks)."""
    finals = [max(t["scores"]) for t in trials]
    out = []
    for i in range(min(len(t["samples"]) for t in trials)):
        scores = [t["scores"][i] for t in trials]
        losses = [-t["losses"][i] for t in trials] if all(t["losses"] for t in trials) else []
        out.append({"samples": trials[0]["samples"][i], "score": spearman(scores, finals),
                    "loss": spearman(losses, finals) if losses else math.nan,
                    "score ties": len(scores) - len(set(scores))})
    return out


def rungs(args: argparse.Namespace) -> None:
    data = json.loads(Path(args.curves).read_text())
    print("| stage | trials | samples | rho(score) | rho(-loss) | tied scores |")
    print("|---|---|---|---|---|---|")
    pooled: dict[int, dict[str, list[float]]] = {}
    for name, stage in data["stages"].items():
        if len(stage["trials"]) < 3:
            continue
        for row in rung_correlations(stage["trials"]):
            print(f"| {name} | {len(stage['trials'])} | {row['samples']} | {row['score']:.2f} | {row['loss']:.2f} | "
                  f"{row['score ties']} |")
            at = pooled.setdefault(row["samples"], {"score": [], "loss": []})
            for k in ("score", "loss"):
                if not math.isnan(row[k]):
                    at[k].append(row[k])
    print("\nmean over stages (nan: every score tied, no ranking):")
    for samples, at in sorted(pooled.items()):
        mean = {k: (sum(v) / len(v) if v else math.nan) for k, v in at.items()}
        print(f"  {samples} samples: rho(score) {mean['score']:.2f}, rho(-loss) {mean['loss']:.2f}")


# ---------------------------------------------------------------------------------------------- the table
def summary(storage: Path) -> dict:
    """What a finished search ran and spent, per stage and in total, from its ledger and stage records."""
    ledger = json.loads((storage / "sst2-fsd" / "ledger.json").read_text())
    from search_spaces import get_schedule

    rows, folders = [], stage_folders(storage)
    for name in (s.name for s in get_schedule("fsd", "sst2").stages):  # the schedule's order
        r = ledger["stages"].get(name)
        if r is None or name == "memory":
            continue
        done = json.loads((folders[name] / "stage.json").read_text()) if name in folders and \
            (folders[name] / "stage.json").is_file() else {}
        rows.append({"stage": name, "trials": r.get("trials", 0), "stopped": r.get("stopped", 0),
                     "points": r.get("grid", {}).get("points"), "runs": r.get("grid", {}).get("runs"),
                     "skipped": r.get("skipped"), "samples": done.get("samples") or 0,
                     "holdout": r.get("score"), "dev": (r.get("dev") or {}).get("dev/score"),
                     "carried_from": r.get("carried_from"), "winner": {k: r["winner"].get(k) for k in
                     ("method", "alpha", "temperature", "lr", "beta", "gamma_i", "gamma_l", "gamma_g", "lam")}})
    return {"stages": rows, "best": ledger.get("best"), "budget": ledger.get("budget")}


def table(args: argparse.Namespace) -> None:
    """Per search: each stage's points, trials, stops, samples, scores and winner; then one line per search
    (the first is the reference whose samples the others' are a share of)."""
    rows = []
    for storage in args.storages:
        s = summary(Path(storage))
        print(f"\n{storage}")
        print("| stage | points | trials | stopped | samples | holdout | dev | winner |")
        print("|---|---|---|---|---|---|---|---|")
        for r in s["stages"]:
            won = "carried from " + r["carried_from"] if r["carried_from"] else ""
            print(f"| {r['stage']} | {r['points']} | {r['trials']} | {r['stopped']} | {r['samples']:,} | "
                  f"{_pct(r['holdout'])} | {_pct(r['dev'])} | {won or r['skipped'] or ''} |")
        st = s["stages"]
        rows.append({"search": Path(storage).name, "trials": sum(r["trials"] or 0 for r in st),
                     "stopped": sum(r["stopped"] or 0 for r in st),
                     "folded": sum((r["points"] or 0) - (r["runs"] or 0) for r in st if r["points"] is not None),
                     "skipped": sum(1 for r in st if r["skipped"]), "samples": sum(r["samples"] for r in st),
                     "best": s["best"]})
    print("\n| search | trials run | stopped at a rung | points folded away | stages skipped | training samples | "
          "share of the first's | best student (stage, holdout) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = f"{r['best']['stage']}, {_pct(r['best']['score'])}" if r["best"] else "-"
        print(f"| {r['search']} | {r['trials']} | {r['stopped']} | {r['folded']} | {r['skipped']} | {r['samples']:,} | "
              f"{r['samples'] / rows[0]['samples']:.1%} | {best} |")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("strategy", choices=["grid", "halving", "optuna"])
    r.add_argument("--storage", required=True)
    r.add_argument("--data-dir", default=str(GLUE))
    c = sub.add_parser("record")
    c.add_argument("storage")
    c.add_argument("--out", required=True)
    g = sub.add_parser("rungs")
    g.add_argument("curves")
    t = sub.add_parser("table")
    t.add_argument("storages", nargs="+")
    args, extra = p.parse_known_args()  # run: the flags it does not know go to tune_main.py (e.g. --budget 20%)
    if extra and args.what != "run":
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    {"run": run, "record": record, "rungs": rungs, "table": table}[args.what](args)


if __name__ == "__main__":
    main()

"""What a budgeted search saves over the paper's grid, measured on a real task where a 3-layer MiniLM student
learns on a CPU (SST-2).

    # 1. record: the full VKD grid (27 points) once, every trial evaluated every 750 samples
    python bench/search_cost.py record --teacher <SST-2 teacher folder> --storage /tmp/sc/record
    # 2. replay: grid, halving (several reduction factors and first rungs), random search and TPE on that table
    python bench/search_cost.py replay bench/results/sst2-vkd-curves.json
    # 3. live: --strategy halving and optuna for real, then each winner and the grid's re-trained with 3 seeds
    python bench/search_cost.py live --teacher <SST-2 teacher folder> --storage /tmp/sc

The budget (BUDGET below): the first 3,000 SST-2 training rows, 2 epochs (6,000 training samples a trial), the
full dev set (872 rows), student learning rates for a 3-layer MiniLM [ours] (the paper's suit BERT-base).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import Asha, Curve, TPESource, rung_rank_correlation, shuffled, simulate, summarise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fsd.tuning.plan.rungs import rungs_for  # noqa: E402

BUDGET = ["--task", "sst2", "--method", "vkd", "--student-layers", "3", "--preset", "paper", "--grid", "epochs=2",
          "--grid", "lr=5e-5,1e-4,2e-4", "--set", "max_train_samples=3000"]
EVERY = 750  # training samples between evaluations of the recorded grid (8 per trial)


def tune_main(args: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, str(ROOT / "tune_main.py"), *args], check=True, env=env)


def read_stage(folder: Path) -> list[dict]:
    """Each trial of a finished stage folder: its grid point, and its dev score at each evaluation."""
    import pandas as pd

    trials = []
    for trial in sorted(folder.glob("*/train_trial_*")):
        if not (trial / "progress.csv").is_file():  # not started (a stage still running)
            continue
        df = pd.read_csv(trial / "progress.csv")
        config = json.loads((trial / "params.json").read_text())
        trials.append({"trial": trial.name.split("_")[3], "config": config,
                       "samples": [int(x) for x in df["progress/samples"]],
                       "scores": [float(x) for x in df["eval/score"]], "train_s": float(df["time/train_s"].sum())})
    return sorted(trials, key=lambda t: int(t["trial"]))


def record(args: argparse.Namespace) -> None:
    storage = Path(args.storage)
    if not list(storage.glob("stages/sst2-vkd-*/stage.json")):
        tune_main([*BUDGET, "--data-dir", args.data_dir, "--teacher", args.teacher, "--storage", str(storage),
                   "--set", f"eval_every={EVERY}"])
    (folder,) = [p.parent for p in storage.glob("stages/sst2-vkd-*/stage.json")]
    trials = read_stage(folder)
    out = {"task": "sst2", "stage": "vkd", "every": EVERY, "teacher_dev": _teacher_score(args.teacher),
           "command": " ".join(["python tune_main.py", *BUDGET, "--set", f"eval_every={EVERY}"]), "trials": trials}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{len(trials)} trials recorded -> {args.out}")


def _teacher_score(teacher: str) -> float | None:
    from fsd.models import teacher_meta

    meta = teacher_meta(teacher)
    return meta["dev"]["eval/score"] if meta else None


def load_curves(path: str) -> list[Curve]:
    data = json.loads(Path(path).read_text())
    return [Curve(t["config"], tuple(t["samples"]), tuple(t["scores"])) for t in data["trials"]]


def halving_outcomes(curves: list[Curve], rf: float, first: float, workers: int, repeats: int, seed: int = 0):
    budget = max(c.budget for c in curves)
    rungs = rungs_for(budget, first, rf)
    rng = np.random.default_rng(seed)
    return [simulate(curves, shuffled(len(curves), rng), Asha(rungs.milestones, budget, rf), workers)
            for _ in range(repeats)]


def tpe_outcomes(curves: list[Curve], samples: int, workers: int, repeats: int, halve: tuple[float, float] | None):
    budget = max(c.budget for c in curves)
    out = []
    for seed in range(repeats):
        source = TPESource(curves, samples, seed)
        asha = None
        if halve:
            rungs = rungs_for(budget, halve[1], halve[0])
            asha = Asha(rungs.milestones, budget, halve[0])
        out.append(simulate(curves, source, asha, workers, on_done=source.tell))
    return out


def replay(args: argparse.Namespace) -> None:
    curves = load_curves(args.curves)
    n, w, r = len(curves), args.workers, args.repeats
    finals = sorted((c.final for c in curves), reverse=True)
    print(f"{n} recorded trials; best final dev score {100 * finals[0]:.2f}, median {100 * np.median(finals):.2f}, "
          f"worst {100 * finals[-1]:.2f}; {w} trials at once, {r} replays each")
    print("\nSpearman rank correlation of the score at each evaluation with the final score:")
    print("| samples | " + " | ".join(str(p) for p, _ in rung_rank_correlation(curves)) + " |")
    print("|---|" + "---|" * len(rung_rank_correlation(curves)))
    print("| rho | " + " | ".join(f"{rho:.2f}" for _, rho in rung_rank_correlation(curves)) + " |")
    rows = [summarise("grid", curves, [simulate(curves, iter(range(n)), None, w)])]
    rng = np.random.default_rng(1)
    for rf in (2.0, 3.0, 4.0):
        for first in (1 / 16, 1 / 9, 1 / 4):
            rows.append(summarise(f"halving rf={rf:g} first={first:.3f}", curves,
                                  halving_outcomes(curves, rf, first, w, r)))
    budget = max(c.budget for c in curves)
    rungs = rungs_for(budget, 1 / 9, 3.0)  # the defaults, in the grid's own order: what a live run does
    rows.append(summarise("halving rf=3 first=0.111, grid order", curves,
                          [simulate(curves, iter(range(n)), Asha(rungs.milestones, budget, 3.0), w)]))
    k = int(np.ceil(n / 3))
    rows.append(summarise(f"random {k} of {n}", curves,
                          [simulate(curves, shuffled(n, rng, k), None, w) for _ in range(r)]))
    tpe_r = min(r, args.tpe_repeats)
    rows.append(summarise(f"tpe {k} of {n}", curves, tpe_outcomes(curves, k, w, tpe_r, None)))
    rows.append(summarise(f"tpe {k} of {n} + halving rf=3 first=0.111", curves,
                          tpe_outcomes(curves, k, w, tpe_r, (3.0, 1 / 9))))
    print("\n| strategy | training samples, share of the grid's (std) | regret, points (std) | regret <= 0.5 |")
    print("|---|---|---|---|")
    for s in rows:
        print(f"| {s.name} | {s.share[0]:.1%} ({s.share[1]:.1%}) | {s.regret[0]:.2f} ({s.regret[1]:.2f}) | "
              f"{s.within:.0%} |")


def live(args: argparse.Namespace) -> None:
    """--strategy halving and optuna on the recorded budget, then every winner (and the grid's) with 3 seeds
    (a winner equal to an earlier one's is the same runs: its seed scores are shared, not run again)."""
    common = [*BUDGET, "--data-dir", args.data_dir, "--teacher", args.teacher, "--set", f"eval_every={EVERY}"]
    rows, seeded = [], {}
    for strategy in ("grid", "halving", "optuna"):
        storage = Path(args.storage) / ("record" if strategy == "grid" else strategy)
        flags = [*common, "--storage", str(storage)] + ([] if strategy == "grid" else ["--strategy", strategy])
        if not (storage / "sst2-vkd" / "ledger.json").is_file():
            tune_main(flags)
        record = json.loads((storage / "sst2-vkd" / "ledger.json").read_text())["stages"]["vkd"]
        winner = record["winner"]
        point = (winner["alpha"], winner["temperature"], winner["lr"])
        if point not in seeded:
            tune_main([*flags, "--compare", "vkd", "--seeds", str(args.seeds)])
            runs = json.loads((storage / "sst2-compare" / "compare.json").read_text())["runs"]["vkd"]
            seeded[point] = np.array([100 * r["eval/score"] for r in runs])
        stage = json.loads(next(storage.glob("stages/sst2-vkd-*/stage.json")).read_text())
        rows.append((strategy, record["trials"], record.get("stopped", 0), stage["samples"], point,
                     100 * record["score"], seeded[point]))
    grid_samples = rows[0][3]
    print("| strategy | trials | stopped at a rung | training samples (share of the grid's) | winner (alpha, T, lr) "
          f"| its search score | {args.seeds} seeds: mean (std) |")
    print("|---|---|---|---|---|---|---|")
    for strategy, trials, stopped, samples, point, score, scores in rows:
        print(f"| {strategy} | {trials} | {stopped} | {samples:,} ({samples / grid_samples:.0%}) | "
              f"{point[0]}, {point[1]}, {point[2]:g} | {score:.2f} | {scores.mean():.2f} ({scores.std(ddof=1):.2f}) |")
    out = Path(args.out)
    out.write_text(json.dumps([{"strategy": r[0], "trials": r[1], "stopped": r[2], "samples": r[3],
                                "winner": list(r[4]), "search_score": r[5], "seed_scores": r[6].tolist()}
                               for r in rows], indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record")
    r.add_argument("--teacher", required=True)
    r.add_argument("--storage", required=True)
    r.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "glue_data"))
    r.add_argument("--out", default=str(ROOT / "bench" / "results" / "sst2-vkd-curves.json"))
    q = sub.add_parser("replay")
    q.add_argument("curves")
    q.add_argument("--workers", type=int, default=2)
    q.add_argument("--repeats", type=int, default=500)
    q.add_argument("--tpe-repeats", type=int, default=50)
    v = sub.add_parser("live")
    v.add_argument("--teacher", required=True)
    v.add_argument("--storage", required=True, help="the folder holding record/ (the grid's storage)")
    v.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "glue_data"))
    v.add_argument("--seeds", type=int, default=3)
    v.add_argument("--out", default=str(ROOT / "bench" / "results" / "sst2-vkd-live.json"))
    args = p.parse_args()
    {"record": record, "replay": replay, "live": live}[args.command](args)


if __name__ == "__main__":
    main()

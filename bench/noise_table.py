"""Issue 34, item 8's table: the paper's whole FSD schedule on SST-2 under the recorded single-seed grid and
the noise-aware searches (`--confirm-top`/`--confirm-seeds`), each final student and the untuned start points
on the same 5 fresh seeds, the hold rate of declared winners, and the p-values.

    # per noise-aware search, once it and its --fresh-seeds are done: what the table reads from its storage
    python bench/noise_table.py collect <storage>/optuna --name optuna --out <folder>/optuna.json
    # the table (reads <folder>/*.json from `collect`, hold-<name>.json from bench/hold_rate.py, grid-final.json,
    # untuned-fsd.json and untuned-fsdil.json from bench/reseed.py, the recorded grid's files in
    # bench/results/sst2-paper-schedule/)
    python bench/noise_table.py table <folder> > <folder>/table.md

The p-values are one-sided t-tests that the row's fresh-seed mean is the higher, paired by seed (every row ran
seeds 1001-1005), uncorrected (each is one question: this row against that one).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from hold_rate import said_tied  # noqa: E402

from fsd.tuning.results.significance import greater  # noqa: E402

RECORDED = ROOT / "bench" / "results" / "sst2-paper-schedule"
UNTUNED = ("untuned fsd", "untuned fsdil")
# The searches whose own --fresh-seeds trained the untuned start points for the preset's 3 epochs (before
# df735b5 gave them the search's epochs): their start points are rows of their own.
THREE_EPOCH_START_POINTS = ("optuna",)
SEARCHED = "the search's best"


def collect(storage: Path, name: str) -> dict:
    """A finished search's ledger, samples trained (its confirmation seeds included) and wall time: from its
    first file to its last stage record (the search), then to its ledger's fresh-seed record (the fresh seeds)."""
    folder = storage / "sst2-fsd"
    ledger = json.loads((folder / "ledger.json").read_text())
    stages = [json.loads(p.read_text()) | {"_mtime": p.stat().st_mtime}
              for p in (storage / "stages").glob("*/stage.json")]
    first = min(p.stat().st_mtime for p in (storage / "teacher").rglob("*") if p.is_file())
    searched = max(s["_mtime"] for s in stages)
    return {"name": name, "ledger": ledger, "samples": sum(s.get("samples") or 0 for s in stages),
            "trials": sum(s.get("trials") or 0 for s in stages),
            "search_s": searched - first, "fresh_s": (folder / "ledger.json").stat().st_mtime - searched}


def verdicts(ledger: dict) -> tuple[int, int, int]:
    """Stages that trained their own winner and named it with a clear lead (declared), those that said tied,
    and those that handed on a carried winner or were skipped."""
    declared = tied = other = 0
    for name, r in ledger["stages"].items():
        e = r.get("evidence") or {}
        if name == "memory":
            continue
        if r.get("carried_from") or r.get("skipped") or "runner_up" not in e:
            other += 1
        elif said_tied(e):
            tied += 1
        else:
            declared += 1
    return declared, tied, other


def recorded_grid() -> dict:
    """The recorded single-seed grid: samples and wall time from its files, and its stages whose best final
    holdout score is shared by two or more trials (an exact tie, settled by trial order)."""
    table = (RECORDED / "table.md").read_text()
    samples = int(re.search(r"^\| grid \| \d+ \| \d+ \| \d+ \| \d+ \| ([\d,]+) \|", table, re.M)[1].replace(",", ""))
    real = re.search(r"real\s+(\d+)m([\d.]+)s", (RECORDED / "grid.time.txt").read_text())
    curves = json.loads((RECORDED / "curves.json").read_text())["stages"]
    ties = 0
    for stage in curves.values():
        finals = sorted((max(t["scores"]) for t in stage["trials"]), reverse=True)
        ties += len(finals) > 1 and finals[0] == finals[1]
    return {"samples": samples, "search_s": int(real[1]) * 60 + float(real[2]), "tied": ties,
            "declared": len(curves) - ties}


def _minutes(s: float) -> str:
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min" if s >= 3600 else f"{s / 60:.0f} min"


def _mean_sd(scores: dict[str, float]) -> str:
    v = [100 * x for x in scores.values()]
    return f"{statistics.fmean(v):.2f} ({statistics.stdev(v):.2f})"


def _p(a: dict[str, float], b: dict[str, float] | None) -> str:
    if b is None or a is b:
        return ""
    seeds = sorted(set(a) & set(b))
    p, _, _ = greater([a[s] for s in seeds], [b[s] for s in seeds], seeds, seeds)
    return f"{p:.3f}" if p == p else "-"


def _reseeded(folder: Path, name: str) -> dict[str, float] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text())["scores"] if path.is_file() else None


def table(folder: Path) -> None:
    searches = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))
                if not p.name.startswith(("hold-", "grid-final", "untuned-"))]
    grid = recorded_grid()
    grid_final = _reseeded(folder, "grid-final")
    holds = {s["name"]: json.loads((folder / f"hold-{s['name']}.json").read_text()) for s in searches
             if (folder / f"hold-{s['name']}.json").is_file()}
    fresh = {s["name"]: s["ledger"]["fresh"]["runs"] for s in searches}
    untuned = {k: _reseeded(folder, k.replace(" ", "-")) for k in UNTUNED}
    untuned = {k: v for k, v in untuned.items() if v is not None}
    best_untuned = max(untuned, key=lambda k: statistics.fmean(untuned[k].values()))
    rows = [("single-seed grid (recorded, 2026-12-05)", f"{grid['samples']:,}", _minutes(grid["search_s"]),
             f"{grid['declared']} / {grid['tied']} (exact ties)", "not measured", grid_final)]
    for s in searches:
        d, t, o = verdicts(s["ledger"])
        hold = holds.get(s["name"])
        said = f"{hold['held']} of {hold['declared']}" if hold else "not measured"
        rows.append((f"noise-aware {s['name']}", f"{s['samples']:,}", _minutes(s["search_s"]), f"{d} / {t}", said,
                     fresh[s["name"]][SEARCHED]["scores"]))
    for k, scores in untuned.items():
        rows.append((f"{k} (the search's epochs)", "0", "-", "-", "-", scores))
    for name, runs in fresh.items():
        if "vkd's winner" in runs:
            rows.append((f"VKD's winner (noise-aware {name})", "", "", "", "", runs["vkd's winner"]["scores"]))
    for name in THREE_EPOCH_START_POINTS:
        for k in UNTUNED:
            if k in fresh.get(name, {}):
                rows.append((f"{k}, 3 epochs ({name}'s --fresh-seeds)", "", "", "", "", fresh[name][k]["scores"]))
    three = _reseeded(folder, "grid-final-3ep")
    if three is not None:
        rows.append(("single-seed grid's final, 3 epochs", "", "", "", "", three))
    print(f"Fresh seeds {', '.join(sorted(grid_final))}; dev score x 100, mean (sd). p: one-sided paired t over the "
          f"5 seeds that the row's mean is the higher (best untuned start point: {best_untuned}).\n")
    print("| search | training samples (seeds included) | wall time | stages declared / tied | hold rate | "
          "fresh-seed dev | p vs best untuned | p vs single-seed grid's final |")
    print("|---|---|---|---|---|---|---|---|")
    for name, samples, wall, verdict, said, scores in rows:
        p_untuned = "" if scores is untuned[best_untuned] else _p(scores, untuned[best_untuned])
        p_grid = "" if scores is grid_final else _p(scores, grid_final)
        print(f"| {name} | {samples} | {wall} | {verdict} | {said} | {_mean_sd(scores)} | {p_untuned} | {p_grid} |")
    for name, hold in holds.items():
        print(f"\nHold rate of noise-aware {name}: each stage that trained its own winner and named a runner-up, "
              "both re-trained on the fresh seeds (dev x 100):\n")
        print("| stage | said | winner | runner-up | paired difference [95%] | winner still ahead |")
        print("|---|---|---|---|---|---|")
        for r in hold["rows"]:
            diff = "" if r["diff"] is None else f"{100 * r['diff']:+.2f} [{100 * r['lo']:+.2f}, {100 * r['hi']:+.2f}]"
            print(f"| {r['stage']} | {r['declared']} | {100 * r['winner']:.2f} | {100 * r['runner_up']:.2f} | {diff} | "
                  f"{'yes' if r['holds'] else 'no'} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("collect")
    c.add_argument("storage")
    c.add_argument("--name", required=True)
    c.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("folder")
    args = p.parse_args()
    if args.what == "collect":
        Path(args.out).write_text(json.dumps(collect(Path(args.storage), args.name), indent=1, default=str))
    else:
        table(Path(args.folder))


if __name__ == "__main__":
    main()

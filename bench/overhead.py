"""Where a search's time goes, trial by trial and stage by stage (issue 37, item 1).

    # a search in a fresh storage folder that reuses a prepared one's teacher, tokenised data and caches,
    # the driver recorded with py-spy (pip install py-spy); prints the table, writes overhead.json beside it
    python bench/overhead.py run --base <storage with a teacher> --out <folder> --profile -- --task sst2 \
        --data-dir ../shared/glue_data --student-layers 3 --preset cpu --method vkd --stages vkd
    # the table of a search's storage folder (with the driver's profile, when one was recorded)
    python bench/overhead.py table <storage> [--driver <storage>/driver.txt] [--json out.json]
    # a stage winner's analysis, three times in one process (the driver of a search of three stages)
    python bench/overhead.py analyse <a stage winner's checkpoint> --times 3

`run` links the base folder's `teacher/`, `data_cache/`, `cache/` and `memory/` into a new folder under
`--out`, passes the base's fine-tuned teacher as `--teacher` (the cache is keyed by the teacher's path, so
the caches are read, not rebuilt), runs `tune_main.py` of `--repo` (default: this clone) and prints the
table. A fresh folder each time: a stage run before in the same storage would be reused, not trained.

The table reads what a search leaves: each trial's `timeline.json` (when its worker process started, when the
trial began and ended, and per report when distill() handed it over, when the checkpoint was written and when
Tune let training go on), its results' `time/*` figures (`time/setup_s`: data, models and the teacher's
outputs opened; `time/train_s` with its part `time/teacher_s`, the cache read; `time/eval_s`) and the MLflow
runs of the search and its stages (start and end, as the driver saw them). Every figure is wall time; a
stage's trials share its slots (the most trials seen running at once, or `--slots`), so the shares are of
the stage's slot-time (its wall time x its slots). With `--driver` (`run --profile`), a raw `py-spy record
--idle --threads` profile of the driver adds where its main thread spent the search (Ray's start, MLflow,
the stage set-up, the winner's analysis...).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("teacher", "data_cache", "cache", "memory")
RATE = 20  # py-spy's samples a second
# The rows of a stage's table, in order: what each trial's slot-time went to.
ROWS = (("launch", "worker start, imports (a reused worker: its reset)"),
        ("setup", "model and data load (time/setup_s)"),
        ("steps", "training steps (time/train_s less the cache read)"),
        ("teacher", "teacher-output cache read (time/teacher_s)"),
        ("eval", "evaluations (time/eval_s)"),
        ("save", "checkpoint writes (in the trial)"),
        ("report", "report to Tune: checkpoint copied to storage, the driver's turn (MLflow, callbacks)"),
        ("other", "rest of the trial"),
        ("idle", "slot idle: stage set-up, between trials, the stage's wrap-up"))


def read_results(trial: Path) -> list[dict]:
    path = trial / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trial_parts(trial: Path, previous_end: float | None) -> dict | None:
    """One trial's seconds per row of ROWS (but idle), its span [begin, end] and its process, or None when it
    left no timeline (a trial of an older version, or one that failed)."""
    path = trial / "timeline.json"
    if not path.is_file():
        return None
    t = json.loads(path.read_text())
    results = [r for r in read_results(trial) if "time/train_s" in r]
    if "end" not in t or not results:
        return None
    # A fresh worker started for this trial; a reused one waited from its previous trial's end.
    fresh = previous_end is None or (t["process_start"] or 0) > previous_end
    begin = (t["process_start"] or t["start"]) if fresh else previous_end
    reports = t["reports"]
    parts = {"launch": t["start"] - begin,
             "setup": results[0].get("time/setup_s", 0.0),
             "teacher": sum(r.get("time/teacher_s", 0.0) for r in results),
             "eval": sum(r.get("time/eval_s", 0.0) for r in results),
             "save": sum(r["saved"] - r["ready"] for r in reports if r["saved"] is not None),
             "report": sum(r["reported"] - (r["saved"] if r["saved"] is not None else r["ready"]) for r in reports)}
    parts["steps"] = sum(r["time/train_s"] for r in results) - parts["teacher"]
    parts["other"] = (t["end"] - t["start"]) - sum(parts[k] for k in ("setup", "steps", "teacher", "eval", "save",
                                                                      "report"))
    return {"parts": parts, "begin": begin, "end": t["end"], "pid": t["pid"], "fresh": fresh,
            "score": results[-1].get("eval/best_score"), "reports": len(reports),
            "checkpoints": sum(1 for r in reports if r["saved"] is not None)}


def mlflow_runs(storage: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], max_results=10000)]


def stage_table(storage: Path, search: str, slots: int | None = None) -> dict:
    """Per stage of the search (`<task>-<method>`): its wall time, trials, and the seconds of each row, over
    `slots` trial slots (None: the most trials seen running at once, in any stage)."""
    ledger = json.loads((storage / search / "ledger.json").read_text())
    task = search.split("-")[0]
    runs = mlflow_runs(storage)
    given = slots is not None
    by_id = {r.info.run_id: r for r in runs}
    search_run = by_id.get(ledger.get("search_run_id"))
    out = {"search": search, "slots": slots or 1, "stages": [],
           "wall_s": (search_run.info.end_time - search_run.info.start_time) / 1000 if search_run and
           search_run.info.end_time else None}
    for name, record in ledger["stages"].items():
        run = by_id.get(record.get("run_id"))
        if not record.get("shared") or record.get("reused_from") or run is None or not run.info.end_time:
            continue
        folder = storage / "stages" / f"{task}-{name}-{record['shared']}"
        trials, last_end = [], {}
        for experiment in sorted(p for p in folder.glob(f"{task}-{name}*") if p.is_dir()):
            found = [p for p in experiment.glob("*") if (p / "timeline.json").is_file()]
            found.sort(key=lambda p: json.loads((p / "timeline.json").read_text())["start"])
            for trial in found:
                pid = json.loads((trial / "timeline.json").read_text())["pid"]
                parts = trial_parts(trial, last_end.get(pid))
                if parts is not None:
                    parts["trial"] = f"{experiment.name}/{'_'.join(trial.name.split('_')[2:4])}"
                    trials.append(parts)
                    last_end[pid] = parts["end"]
        if not trials:
            continue
        seen = max(sum(1 for u in trials if u["begin"] <= t["begin"] < u["end"]) for t in trials)
        if not given:
            slots = max(slots or 1, seen)
        start, end = run.info.start_time / 1000, run.info.end_time / 1000
        wall = end - start
        total = {k: sum(t["parts"][k] for t in trials) for k, _ in ROWS if k != "idle"}
        busy = sum(t["end"] - t["begin"] for t in trials)
        total["idle"] = -busy  # the stage's slot-time is added once the slots are known
        out["stages"].append({"stage": name, "wall_s": wall, "trials": len(trials), "seconds": total,
                              "before_first_s": min(t["begin"] for t in trials) - start,
                              "after_last_s": end - max(t["end"] for t in trials),
                              "fresh_workers": sum(t["fresh"] for t in trials),
                              "checkpoints": sum(t["checkpoints"] for t in trials),
                              "reports": sum(t["reports"] for t in trials),
                              "scores": {t["trial"]: t["score"] for t in trials}})
    out["slots"] = slots or 1
    for stage in out["stages"]:
        stage["seconds"]["idle"] += stage["wall_s"] * out["slots"]
    return out


# What the driver's main thread was doing, by the first of these found in a sampled stack (innermost first).
DRIVER = (("Ray start", ("init (ray/_private/worker.py",)),
          ("teacher fine-tuning", ("ensure_teacher",)),
          ("stage set-up: data, teacher outputs", ("prepare_outputs",)),
          ("winner: analysis (CKA, relations)", ("analyse_checkpoint",)),
          ("winner: export and MLflow model registration", ("export_student", "log_stage_model")),
          ("MLflow records (trial runs, metrics, tags)", ("mlflow",)),
          ("trials running (the driver waits on Ray)", ("fit (ray/tune",)),
          ("imports and the rest", ("",)))


def driver_profile(path: Path) -> dict[str, float]:
    """py-spy's raw output (`stack;frames count` per line, with --threads) -> seconds of the main thread per
    DRIVER category, at RATE samples a second (`run --profile`'s)."""
    counts: dict[str, int] = defaultdict(int)
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or "tune_main.py" not in stack:  # the main thread runs tune_main's frames
            continue
        for name, needles in DRIVER:
            if any(k in stack for k in needles):
                counts[name] += int(n)
                break
    rate = RATE
    return {k: counts[k] / rate for k, _ in DRIVER if counts[k]}


def markdown(table: dict, driver: dict[str, float] | None = None) -> str:
    lines = [f"search {table['search']}: {table['slots']} slots"
             + (f", wall {table['wall_s']:.1f} s (its MLflow run)" if table["wall_s"] else "")]
    for s in table["stages"]:
        slot_time = s["wall_s"] * table["slots"]
        lines += ["", f"stage {s['stage']}: {s['trials']} trials ({s['fresh_workers']} in a fresh worker), "
                      f"{s['checkpoints']} checkpoints of {s['reports']} reports, wall {s['wall_s']:.1f} s "
                      f"(set-up before its first trial {s['before_first_s']:.1f} s, after its last "
                      f"{s['after_last_s']:.1f} s)", "",
                  "| where | seconds | per trial | share of slot-time |", "|---|---|---|---|"]
        for key, label in ROWS:
            v = s["seconds"][key]
            lines.append(f"| {label} | {v:.1f} | {v / s['trials']:.2f} | {v / slot_time:.1%} |")
        lines.append(f"| slot-time (wall x slots) | {slot_time:.1f} | {slot_time / s['trials']:.2f} | 100% |")
    if driver:
        lines += ["", "the driver's main thread (py-spy, wall):", "", "| doing | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in driver.items()]
    return "\n".join(lines) + "\n"


def find_search(storage: Path) -> str:
    found = [p.parent.name for p in storage.glob("*/ledger.json")]
    if len(found) != 1:
        raise SystemExit(f"{storage}: {len(found)} searches ({', '.join(found)}); name one with --search")
    return found[0]


def table(args: argparse.Namespace) -> None:
    storage = Path(args.storage).resolve()
    found = stage_table(storage, args.search or find_search(storage), args.slots)
    driver = driver_profile(Path(args.driver)) if args.driver else None
    if args.json:
        Path(args.json).write_text(json.dumps({**found, "driver": driver}, indent=1))
    print(markdown(found, driver), end="")


def run(args: argparse.Namespace, extra: list[str]) -> None:
    base = Path(args.base).resolve()
    teachers = sorted(p for p in (base / "teacher").iterdir() if (p / "fsd_teacher.json").is_file())
    if len(teachers) != 1:
        raise SystemExit(f"{base}/teacher: {len(teachers)} fine-tuned teachers; the base needs exactly one")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix="run-", dir=args.out))
    for name in SHARED:
        if (base / name).is_dir():
            (storage / name).symlink_to(base / name)
    repo = Path(args.repo).resolve()
    cmd = [sys.executable, str(repo / "tune_main.py"), *extra, "--teacher", str(teachers[0]),
           "--storage", str(storage)]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    profile = storage / "driver.txt"
    if args.profile:  # the driver alone, sampled with its idle time (wall): `table --driver` reads it
        cmd = ["py-spy", "record", "--idle", "--threads", "--format", "raw", "-r", str(RATE), "-o", str(profile),
               "--", *cmd]
    started = time.monotonic()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL if args.quiet else None)
    print(f"{' '.join(cmd)}\nwall {time.monotonic() - started:.1f} s", file=sys.stderr)
    found = stage_table(storage, find_search(storage))
    driver = driver_profile(profile) if args.profile else None
    (storage / "overhead.json").write_text(json.dumps({**found, "driver": driver}, indent=1))
    print(markdown(found, driver), end="")


def analyse(args: argparse.Namespace) -> None:
    """The stage wrap-up's analysis (fsd.analysis.analyse_checkpoint) of `--times` stage winners against one
    teacher, each into a fresh folder, in one process as a search's driver does: seconds per call."""
    sys.path.insert(0, str(Path(args.repo).resolve()))
    from fsd.analysis import analyse_checkpoint

    out = Path(tempfile.mkdtemp(prefix="analysis-"))
    for i in range(args.times):
        started = time.perf_counter()
        metrics, _ = analyse_checkpoint(args.checkpoint, out / str(i))
        print(json.dumps({"call": i + 1, "seconds": round(time.perf_counter() - started, 2),
                          "cka_diagonal_mean": metrics["analysis/cka_diagonal_mean"]}), flush=True)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="a search in a fresh storage folder that reuses a base's teacher and caches")
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--repo", default=str(ROOT), help="the clone whose tune_main.py runs (default: this one)")
    p.add_argument("--quiet", action="store_true", help="the search's stdout thrown away")
    p.add_argument("--profile", action="store_true",
                   help="record the driver with py-spy (pip install py-spy) into <run folder>/driver.txt")
    p = sub.add_parser("table", help="where a search's time went, from its storage folder")
    p.add_argument("storage")
    p.add_argument("--search", help="<task>-<method>, when the folder holds several")
    p.add_argument("--driver", help="the driver's py-spy raw profile (`run --profile`'s driver.txt)")
    p.add_argument("--slots", type=int, help="trials at once (default: the most seen running at once)")
    p.add_argument("--json")
    p = sub.add_parser("analyse", help="time the winner's analysis of a stage, several times in one process")
    p.add_argument("checkpoint")
    p.add_argument("--times", type=int, default=3)
    p.add_argument("--repo", default=str(ROOT), help="the clone whose fsd/ analyses (default: this one)")
    args = parser.parse_args(argv)
    {"run": lambda: run(args, extra), "table": lambda: table(args), "analyse": lambda: analyse(args)}[args.cmd]()


if __name__ == "__main__":
    main()

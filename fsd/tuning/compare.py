"""`--compare vkd,pkd,rkd,minilm,fsd --seeds 5`: each method's best configuration (its search is run first
if it has not finished), re-run with N seeds, and the paper's Table 2/3 for the user's task: mean (std)
of every dev metric, the one-sided p-value of FSD against the best baseline, the teacher's row and the
paper's figures beside them. Written as Markdown and CSV, logged to MLflow, printed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from scipy import stats

from fsd.data import load_raw
from fsd.metrics import glue_metrics
from fsd.models import teacher_meta
from fsd.tasks import get_task
from fsd.tuning import lock, tracking
from fsd.tuning.ledger import Ledger
from fsd.tuning.outbox import Outbox
from fsd.tuning.runner import SearchSpec, run_search, trainable_for
from fsd.tuning.spec import method_spec
from fsd.tuning.summary import PAPER
from fsd.tuning.trainable import METRIC, MODE
from search_spaces import get_schedule


def compare_folder(spec: SearchSpec) -> str:
    return os.path.join(spec.storage, f"{spec.task}-compare")


def best_config(spec: SearchSpec, method: str, log=print) -> tuple[dict[str, Any], str]:
    """The winner of `method`'s last stage (searching first when needed) and the teacher it used.

    Raises:
        lock.Busy: another process runs that search.
    """
    mspec = method_spec(spec, method)
    schedule = get_schedule(method, spec.task, spec.preset, spec.grids)
    last = [s for s in schedule.stages if not s.prepare][-1].name
    with lock.held(mspec.folder):  # the same lock a plain search of that method takes
        ledger = Ledger(mspec.folder)
        if not ledger.done(last):
            log(f"compare: searching {method} first ({mspec.folder})")
            ledger = run_search(mspec, schedule, log)
    return dict(ledger.data["stages"][last]["winner"]), ledger.data["teacher"]


def experiment_name(task: str, method: str, config: dict[str, Any], seeds: list[int]) -> str:
    """The Ray experiment of one method's seed runs: named by what it runs, so a killed comparison resumes
    its own runs while another configuration or seed list gets fresh ones (the old ones stay on disk)."""
    key = json.dumps({"config": config, "seeds": seeds}, sort_keys=True, default=str)
    return f"{task}-compare-{method}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def seed_runs(spec: SearchSpec, method: str, config: dict[str, Any], seeds: list[int], outbox: Outbox,
              parent_run: str, exp_id: str) -> list[dict[str, float]]:
    """Every dev metric at the best epoch of each seed's run of `config`."""
    base = {k: v for k, v in config.items() if k != "seed"}
    name = experiment_name(spec.task, method, base, seeds)
    storage = os.path.join(compare_folder(spec), "ray")
    trainable = trainable_for(spec, base)
    exp_dir = os.path.join(storage, name)
    if tune.Tuner.can_restore(exp_dir):
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True)
    else:
        tracker = tracking.TrialTracker(spec.mlflow_uri, exp_id, parent_run, {"stage": "compare", "method": method,
                                                                             "task": spec.task}, base, outbox)
        tuner = tune.Tuner(
            trainable, param_space={"seed": tune.grid_search(seeds)},
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, max_concurrent_trials=spec.max_concurrent or None),
            run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=[tracker], verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=spec.max_failures)))
    rows = []
    for result in tuner.fit():
        df = result.metrics_dataframe
        if result.error or df is None or METRIC not in df:
            continue
        best = df.loc[df[METRIC].idxmax()]
        rows.append({k: float(best[k]) for k in df.columns if k.startswith(("eval/", "eval_mm/"))
                     and k != "eval/best_score"})
    return rows


def majority(task: str, data_dir: str | None, max_train_samples: int | None, max_eval_samples: int | None
             ) -> dict[str, float] | None:
    """Dev metrics of always answering the most frequent training label, on the rows the runs saw: the floor
    a student must clear to have learnt anything (None for STS-B, a regression)."""
    spec = get_task(task)
    if spec.is_regression:
        return None
    raw = load_raw(spec, data_dir)
    train, dev = raw["train"]["label"][:max_train_samples], raw[spec.dev_splits[0]]["label"][:max_eval_samples]
    values, counts = np.unique(train, return_counts=True)
    guess = np.full(len(dev), values[counts.argmax()])
    return {f"eval/{k}": v for k, v in glue_metrics(task, guess, dev).items()}


def table(task: str, runs: dict[str, list[dict[str, float]]], teacher: dict[str, float] | None,
          floor: dict[str, float] | None = None) -> tuple[str, list[dict[str, Any]], float | None]:
    """Markdown and CSV rows of mean (std) x 100 per metric and method (after the teacher's row, and the
    majority-class `floor`'s when given), and the one-sided Welch p-value of FSD's dev score over the best
    baseline's (None without FSD and a baseline with 2+ seeds)."""
    metrics = sorted({k for rows in runs.values() for r in rows for k in r}, key=lambda k: (k != METRIC, k))
    csv_rows: list[dict[str, Any]] = []
    if teacher:
        csv_rows.append({"method": "teacher", "seeds": 1, **{f"{k} mean": 100 * teacher[k] for k in metrics
                                                              if k in teacher}, "paper": PAPER["teacher"].get(task)})
    if floor:
        csv_rows.append({"method": "majority class", "seeds": 0,
                         **{f"{k} mean": 100 * floor[k] for k in metrics if k in floor}, "paper": None})
    for method, rows in runs.items():
        row: dict[str, Any] = {"method": method, "seeds": len(rows)}
        for k in metrics:
            values = np.array([r[k] for r in rows if k in r]) * 100
            row[f"{k} mean"] = float(values.mean()) if len(values) else float("nan")
            row[f"{k} std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        row["paper"] = PAPER.get(method, {}).get(task)
        csv_rows.append(row)
    p_value, versus = _p_value(runs)
    head = ["method", "seeds", *metrics, "paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in csv_rows:
        cells = [row["method"], str(row["seeds"])]
        for k in metrics:
            mean, std = row.get(f"{k} mean"), row.get(f"{k} std")
            spread = "" if std is None or np.isnan(std) else f" ({std:.2f})"
            cells.append("-" if mean is None else f"{mean:.2f}{spread}")
        cells.append("-" if row["paper"] is None else f"{row['paper']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    if p_value is not None:
        lines.append(f"\none-sided Welch t-test, fsd > {versus} on {METRIC}: p = {p_value:.4f}")
    return "\n".join(lines), csv_rows, p_value


def _p_value(runs: dict[str, list[dict[str, float]]]) -> tuple[float | None, str | None]:
    scores = {m: [r[METRIC] for r in rows if METRIC in r] for m, rows in runs.items()}
    baselines = {m: s for m, s in scores.items() if m != "fsd" and len(s) >= 2}
    if len(scores.get("fsd", [])) < 2 or not baselines:
        return None, None
    best = max(baselines, key=lambda m: np.mean(baselines[m]))
    result = stats.ttest_ind(scores["fsd"], baselines[best], equal_var=False, alternative="greater")
    return float(result.pvalue), best


def run_compare(spec: SearchSpec, methods: list[str], seeds: int, log=print) -> str:
    """Search (when needed) and re-run each method with `seeds` seeds; returns the Markdown table."""
    folder = Path(compare_folder(spec))
    folder.mkdir(parents=True, exist_ok=True)
    configs = {m: best_config(spec, m, log) for m in methods}
    outbox = Outbox(spec.mlflow_uri, folder / "mlflow_outbox.json", tracking.OPS)
    outbox.flush()
    exp_id = tracking.experiment_id(spec.mlflow_uri, spec.task)
    ledger = Ledger(folder)
    run_id = outbox.do("open_run", exp_id, ledger.data.get("run_id"), "compare", None,
                       {"task": spec.task, "methods": ",".join(methods), "seeds": str(seeds)})
    ledger.data["run_id"] = run_id
    ledger.save()
    seed_list = [spec.seed + i for i in range(seeds)]
    runs = {m: seed_runs(spec, m, cfg, seed_list, outbox, run_id, exp_id) for m, (cfg, _) in configs.items()}
    meta = teacher_meta(next(iter(configs.values()))[1])
    teacher = {k: v for k, v in (meta or {}).get("dev", {}).items() if isinstance(v, (int, float))}
    first = next(iter(configs.values()))[0]  # every method ran on the same rows
    floor = majority(spec.task, spec.data_dir, first.get("max_train_samples"), first.get("max_eval_samples"))
    markdown, rows, p_value = table(spec.task, runs, teacher or None, floor)
    (folder / "compare.md").write_text(markdown + "\n")
    (folder / "compare.csv").write_text(_csv(rows))
    (folder / "compare.json").write_text(json.dumps({"runs": runs, "p_value": p_value, "methods": methods,
                                                   "majority": floor}))
    metrics = {f"compare/{r['method']}/{METRIC.replace('/', '_')}_mean": r[f"{METRIC} mean"] for r in rows
               if f"{METRIC} mean" in r}
    if p_value is not None:
        metrics["compare/p_value"] = p_value
    outbox.do("log_analysis", run_id, metrics, [str(folder / "compare.md"), str(folder / "compare.csv")])
    outbox.do("close_run", run_id, "FINISHED")
    outbox.flush()
    return markdown


def _csv(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()

"""A configuration re-run on a list of seeds, as one Ray experiment in a folder of its own: what `--compare`
runs for each method (and Tables 4 and 5), and what `--fresh-seeds` runs after a search. Each seed's run is
evaluated `fsd.tuning.plan.rungs.EVALS_PER_RUN` times, its relations to the teacher tracked (Fig. 6); a run
ranked on a holdout is measured on dev at its best holdout checkpoint."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from fsd.layout import DEV, SEED_RUNS
from fsd.metrics import EVAL_ROWS, EVAL_S, SAMPLES, STUDENT_PARAMS, TRAIN_S
from fsd.storage import content_key, write_text
from fsd.train import evaluate_on_dev
from fsd.tuning.plan.ranking import METRIC, MODE
from fsd.tuning.plan.rungs import evaluation_interval
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.search import retention
from fsd.tuning.search.services import best_checkpoint, open_tuner, trainable_for
from fsd.tuning.search.stage_progress import StageProgress
from fsd.tuning.tracking import records
from fsd.tuning.tracking.outbox import Outbox


def experiment_name(task: str, method: str, config: dict[str, Any], seeds: list[int]) -> str:
    """The Ray experiment of one method's seed runs: named by what it runs, so a killed comparison resumes
    its own runs while another configuration or seed list gets fresh ones (the old ones stay on disk)."""
    return f"{task}-compare-{method}-{content_key({'config': config, 'seeds': seeds}, 10)}"


@dataclass
class SeedRun:
    """One seed's run of a configuration, as the tables read it."""

    dev: dict[str, float]  # every dev metric (as `eval/<metric>`) at the run's best evaluation
    checkpoint: str | None  # that evaluation's checkpoint
    cost: dict[str, float]  # student params, training seconds and samples, evaluation seconds and rows
    curve: list[dict[str, float]]  # per evaluation: progress/samples and the tracked relations/*
    seed: int


def seed_runs(spec: SearchSpec, folder: str, label: str, config: dict[str, Any], seeds: list[int], outbox: Outbox,
              parent_run: str, exp_id: str, stage: str = "compare") -> list[SeedRun]:
    """Each seed's run of `config` (a Ray experiment under `folder`/ray named by `label`, the config and the
    seeds), evaluated `EVALS_PER_RUN` times with its relations to the teacher tracked (Fig. 6), logged to
    MLflow under `parent_run` (tagged with `stage`). A run ranked on a holdout (`config["holdout_rows"]`) is
    measured on dev at its best holdout checkpoint (kept in `folder`/dev)."""
    base = {k: v for k, v in config.items() if k != "seed"}
    base = {**base, "track_relations": True, "eval_every": base.get("eval_every") or evaluation_interval(base)}
    name = experiment_name(spec.task, label, base, seeds)
    storage = os.path.join(folder, SEED_RUNS)
    tracker = records.TrialTracker(spec.mlflow_uri, exp_id, parent_run, {"stage": stage, "method": label,
                                                                        "task": spec.task}, base, outbox,
                                   records.dataset_records(base))
    tuner = open_tuner(spec, storage, name, trainable_for(spec, base), {"seed": tune.grid_search(seeds)},
                       tune.TuneConfig(metric=METRIC, mode=MODE, max_concurrent_trials=spec.max_concurrent or None),
                       [tracker, StageProgress(f"{stage} {label}", len(seeds), ("seed",), halving=False),
                        # every seed run's checkpoints stay (the analyses read its best), its optimizer state goes
                        retention.KeepWinners(len(seeds), delete=False)])
    runs = []
    for result in tuner.fit():
        df = result.metrics_dataframe
        if result.error or df is None or METRIC not in df:
            continue
        best = best_checkpoint(result)
        if base.get("holdout_rows") is not None:
            if best is None:
                continue
            dev = dev_scores(folder, best.path)
        else:
            top = df.loc[df[METRIC].idxmax()]
            dev = {k: float(v) for k, v in table_metrics(top.to_dict()).items()}
        cost = {}
        if {STUDENT_PARAMS, EVAL_S, EVAL_ROWS, SAMPLES} <= set(df.columns):  # this version
            cost = {"params": float(df[STUDENT_PARAMS].iloc[-1]), "train_s": float(df[TRAIN_S].sum()),
                    "samples": float(df[SAMPLES].max()), "eval_s": float(df[EVAL_S].sum()),
                    "eval_rows": float(df[EVAL_ROWS].sum())}
        tracked = [k for k in df.columns if k.startswith("relations/")]
        curve = df[[SAMPLES, *tracked]].to_dict("records") if tracked else []
        runs.append(SeedRun(dev, best.path if best else None, cost, curve, int(result.config["seed"])))
    return runs


def dev_scores(folder: str, checkpoint: str) -> dict[str, float]:
    """A holdout-ranked run's dev metrics at `checkpoint` (as `eval/<metric>`), measured once: a comparison
    run again (more methods, another table) reads them back from `folder`."""
    path = Path(folder) / DEV / f"{content_key(checkpoint)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    dev = table_metrics({k.replace("dev", "eval", 1): v for k, v in evaluate_on_dev(checkpoint).items()})
    write_text(path, json.dumps(dev))
    return dev


def table_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The GLUE metrics of an evaluation (`eval/<metric>`, `eval_mm/<metric>`), as Table 2/3 shows them: not its
    loss, row count or running best."""
    return {k: v for k, v in metrics.items() if k.startswith(("eval/", "eval_mm/"))
            and k != EVAL_ROWS and not k.startswith("eval/best_") and not k.endswith("/loss")}

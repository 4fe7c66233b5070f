"""Was the search worth it: with --fresh-seeds N, its best student's configuration is re-trained on N seeds no
search used (1001 onwards), beside the untuned start points (methods fsd and fsdil with `python -m fsd.cli`'s
default weights, trained as the search trained its students, no search) and VKD's winner, all on the same seeds
so that they compare paired. The runs are ordinary trials under the search's MLflow run (stage `fresh`), restored
after a kill; their dev scores go to the ledger, and the summary and the report test them
(`fsd.tuning.results.summary.fresh_lines`)."""

from __future__ import annotations

import os
import statistics
from dataclasses import fields
from typing import Any

from fsd.config import DistillConfig
from fsd.layout import FRESH
from fsd.logs import console
from fsd.tuning.plan.ledger import Ledger
from fsd.tuning.plan.ranking import METRIC
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.search.seed_runs import seed_runs
from search_spaces import Schedule

FIRST_SEED = 1001  # far from any search's seeds (--seed 42 onwards, confirmations after them)
WEIGHTS = ("alpha", "temperature", "beta", "gamma_i", "gamma_l", "gamma_g", "lam")
SEARCHED = "the search's best"


def fresh_seed_list(n: int) -> list[int]:
    return [FIRST_SEED + i for i in range(n)]


def searched(schedule: Schedule, key: str) -> tuple:
    """The values a search gave `key` (`--grid` included): those of the first stage that searches it."""
    return next((stage.grid[key] for stage in schedule.stages if key in stage.grid), ())


def untuned(winner: dict[str, Any], method: str, schedule: Schedule) -> dict[str, Any]:
    """A start point: the search's shared values (task, data, teacher, student, budget) with `method`, every loss
    weight at DistillConfig's default, and the training the search's students had where it had one value: its
    epochs (the budget's, else a single searched value, else the default) and learning rate (a single searched
    value, else the default). Not the preset's own grid: `--grid epochs=1` gave the students 1 epoch, and a
    start point trained for the default 3 would have had three times their training."""
    defaults = {f.name: f.default for f in fields(DistillConfig) if f.name in WEIGHTS}
    epochs, lrs = searched(schedule, "epochs"), searched(schedule, "lr")
    return {**winner, **defaults, "method": method,
            "epochs": schedule.budget.epochs or (epochs[0] if len(epochs) == 1 else DistillConfig.epochs),
            "lr": lrs[0] if len(lrs) == 1 else DistillConfig.lr}


def configurations(ledger: Ledger, schedule: Schedule) -> dict[str, dict[str, Any]]:
    """What the fresh seeds re-train: the search's best, VKD's winner (when the search has a VKD stage and it is
    not the best) and the two untuned start points."""
    best = ledger.data["best"]
    out = {SEARCHED: dict(best["winner"])}
    vkd = ledger.records().get("vkd", {})
    if vkd.get("status") == "done" and best.get("stage") != "vkd" and schedule.method == "fsd":
        out["vkd's winner"] = dict(vkd["winner"])
    if schedule.method == "fsd":
        for method in ("fsd", "fsdil"):
            out[f"untuned {method}"] = untuned(best["winner"], method, schedule)
    return out


def run_fresh(spec: SearchSpec, schedule: Schedule, ledger: Ledger, outbox, search_run_id: str,
              exp_id: str) -> None:
    """Re-train the `configurations` on `spec.fresh_seeds` fresh seeds; their dev scores per seed go to the
    ledger's `fresh` record."""
    seeds = fresh_seed_list(spec.fresh_seeds)
    configs = configurations(ledger, schedule)
    console.info(f"fresh seeds: {', '.join(configs)} re-trained on {len(seeds)} seeds no search used "
                 f"({seeds[0]}-{seeds[-1]})")
    folder = os.path.join(spec.folder, FRESH)
    record: dict[str, Any] = {"seeds": seeds, "runs": {}}
    for label, config in configs.items():
        runs = seed_runs(spec, folder, label.replace(" ", "-").replace("'", ""), config, seeds, outbox,
                         search_run_id, exp_id, stage="fresh")
        scores = {str(r.seed): r.dev[METRIC] for r in runs if METRIC in r.dev}
        record["runs"][label] = {"method": config["method"], "scores": scores,
                                 "mean": statistics.fmean(scores.values()) if scores else None}
    ledger.data["fresh"] = record
    ledger.save()

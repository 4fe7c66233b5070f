"""A stage's points as runs per seed, and the confirmation step: the leading points trained on more seeds,
as a second Ray Tune experiment of the stage, before the stage names its winner (`fsd.tuning.plan.evidence`).

The seeds change the student's head initialisation and the order of its batches; the teacher, its output
cache and the ranking split stay the search's. Confirmation trials are ordinary trials: logged under their
stage in MLflow (tagged `confirm`), restored after a kill like the stage's own, counted by --dry-run and paid
for by --budget.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from fsd.logs import console
from fsd.metrics import reached_budget
from fsd.tuning.plan import evidence
from fsd.tuning.plan.ranking import METRIC
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.plan.strategy import confirm_seed_list
from fsd.tuning.search import halving, orphans, retention
from fsd.tuning.search.services import MlflowIds, best_checkpoint, open_tuner, trainable_for
from fsd.tuning.search.stage_progress import StageProgress
from fsd.tuning.tracking import records
from search_spaces import Stage
from search_spaces.joint import JOINT, expand

SUFFIX = "-confirm"  # the confirmation experiment's name: `<task>-<stage>-confirm`, beside the stage's own


@dataclass
class Runs:
    """One point of a stage: its values (the grid's keys expanded), its best score per seed among the trials
    that reached their full budget, and each of those trials' best checkpoint."""

    values: dict[str, Any]
    seeds: dict[int, float] = field(default_factory=dict)
    checkpoints: dict[int, str | None] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return json.dumps(self.values, sort_keys=True, default=str)

    def entry(self) -> evidence.Entry:
        return evidence.Entry(self.values, dict(self.seeds), 0.0)

    def best_checkpoint(self) -> str | None:
        """The checkpoint of its best seed that still exists (a point's other runs may have been pruned)."""
        kept = [(s, c) for s, c in self.checkpoints.items() if c and os.path.isdir(c)]
        return max(kept, key=lambda sc: (self.seeds[sc[0]], -sc[0]))[1] if kept else None


def runs_of(results, seed: int, into: dict[str, Runs] | None = None) -> dict[str, Runs]:
    """The points of a stage's results (a Ray ResultGrid or a list of its results) with their runs per seed,
    added to `into`; a trial that failed or stopped at a rung is not a run. `seed`: the seed of trials whose
    config holds none (a search of one seed)."""
    out = {} if into is None else into
    for r in results:
        df = r.metrics_dataframe
        if r.error or df is None or METRIC not in df or not len(df) or not reached_budget(df.iloc[-1].to_dict()):
            continue
        values = expand({k: v for k, v in r.config.items() if k != "seed"})
        runs = Runs(values)
        runs = out.setdefault(runs.key, runs)
        s = int(r.config.get("seed", seed))
        ckpt = best_checkpoint(r)
        runs.seeds[s] = float(df[METRIC].max())
        runs.checkpoints[s] = ckpt.path if ckpt else None
    return out


def leading(points: dict[str, Runs], top: int, reference: dict[str, Any] | None) -> list[Runs]:
    """The `top` points ranked first by the stage's rule (`evidence.order`)."""
    ranked = sorted(points.values(), key=lambda p: evidence.order(p.entry(), reference))
    return ranked[:top]


def run_confirmation(spec: SearchSpec, stage: Stage, leaders: list[Runs], base: dict[str, Any], folder: str,
                     stage_run_id: str, mlflow_ids: MlflowIds) -> list:
    """Train `leaders` on the confirmation seeds (`confirm_seed_list`) in the experiment `<task>-<stage>-confirm`
    of the stage's folder (restored when a killed driver left it). Returns its results."""
    keys = sorted(leaders[0].values)
    joint = JOINT.join(keys)  # one grid key over every value: the leaders, not their cross product
    seeds = confirm_seed_list(spec)
    space = {joint: tune.grid_search([[p.values[k] for k in keys] for p in leaders]), "seed": tune.grid_search(seeds)}
    name = f"{spec.task}-{stage.name}{SUFFIX}"
    total = len(leaders) * len(seeds)
    console.info(f"stage {stage.name}: confirming its {len(leaders)} leading points on {len(seeds)} more "
                 f"seed{'' if len(seeds) == 1 else 's'} ({', '.join(map(str, seeds))}): {total} trials")
    tracker = records.TrialTracker(spec.mlflow_uri, mlflow_ids.experiment_id, stage_run_id,
                                   {"stage": stage.name, "method": stage.method, "task": spec.task,
                                    "confirm": "true"}, base, mlflow_ids.outbox, records.dataset_records(base))
    shown = StageProgress(f"{stage.name} (confirm)", total, (joint,), halving=False)
    # Every confirmation checkpoint stays until the stage has named its winner (keep_only then prunes them).
    kept = retention.KeepWinners(len(seeds), delete=False)
    tuner = open_tuner(spec, folder, name, trainable_for(spec, base), space,
                       halving.tune_config("grid", folder, name, None, spec.max_concurrent, 0), [tracker, shown, kept])
    if not spec.address:  # as the stage's own trials: the pids a kill during them would leave
        orphans.record(spec.folder)
    return list(tuner.fit())

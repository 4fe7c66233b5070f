"""One stage of a search: its grid resolved, folded and keyed; its trials run as one Ray Tune experiment (or
reused from a search that ran the same stage); its winner chosen among its trials and the winners carried
into it, measured, analysed and registered."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from fsd.analysis import analyse_checkpoint
from fsd.config import DistillConfig
from fsd.logs import console
from fsd.storage import one_builder
from fsd.tasks import get_task
from fsd.train import evaluate_on_dev, export_student, prepare_outputs
from fsd.tuning.plan import budget, folding, shared
from fsd.tuning.plan import stages as plan
from fsd.tuning.plan import winners as winners_mod
from fsd.tuning.plan.ledger import Ledger, StageRecord
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.plan.stages import (
    METRIC,
    Strategy,
    expand,
    seed_list,
    stage_base,
    stage_trials,
    strategy_of,
    trial_budget,
)
from fsd.tuning.search import disk as space
from fsd.tuning.search import halving, orphans, retention
from fsd.tuning.search.services import MlflowIds, best_checkpoint, finished_trials, open_tuner, trainable_for
from fsd.tuning.search.stage_progress import StageProgress, last_line
from fsd.tuning.tracking import records as tracking
from fsd.tuning.tracking.outbox import Outbox
from search_spaces import Schedule, Stage


class StageFailed(RuntimeError):
    """Every trial of a stage failed: the search stops; the message names the first trial's error."""


class BudgetSpent(Exception):
    """--budget cannot pay for one more trial of the next stage: the search ends with what it found."""


def reached_budget(df) -> bool:
    """Whether a trial (its results as a data frame) trained to its full budget (`fsd.metrics.reached_budget`)."""
    return plan.reached_budget(df.iloc[-1].to_dict()) if len(df) else False


def pick_winner(results, grid: dict[str, tuple]) -> tuple[dict[str, Any], float, str | None]:
    """The grid point with the best dev score (best evaluation of each trial), averaged over seeds, among the
    trials that reached their full budget: a trial stopped at a low rung never wins."""
    rows: dict[tuple, list] = {}
    errors = [last_line(str(r.error), type(r.error).__name__, 500) for r in results if r.error]
    # Grid order (trial ids number the grid points), whatever order a restored experiment lists them in:
    # ties then go to the same point in a resumed search as in an uninterrupted one.
    for r in sorted(results, key=lambda r: str((getattr(r, "metrics", None) or {}).get("trial_id", ""))):
        df = r.metrics_dataframe
        if r.error or df is None or METRIC not in df or not reached_budget(df):
            continue
        # The seed is not part of a point: seeds are averaged. A restored config holds lists for tuples.
        point = tuple((k, plan.point_value(k, r.config[k])) for k in grid)
        ckpt = best_checkpoint(r)
        rows.setdefault(point, []).append((float(df[METRIC].max()), ckpt.path if ckpt else None))
    if not rows:
        cause = errors[0] if errors else "no trial reported a dev score at its full budget"
        raise StageFailed(f"all {len(results)} trial(s) of the stage failed; first error: {cause} (full tracebacks "
                          "in the Ray trial folders); fix the cause, then run again with --resume")
    point, runs = max(rows.items(), key=lambda kv: sum(s for s, _ in kv[1]) / len(kv[1]))
    best_run = max(runs, key=lambda r: r[0])
    return dict(point), sum(s for s, _ in runs) / len(runs), best_run[1]


def run_stage(spec: SearchSpec, schedule: Schedule, stage: Stage, teacher: str, ledger: Ledger,
              mlflow_ids: MlflowIds, rows: int) -> None:
    winners = ledger.winners()
    grid = stage.resolve(winners)
    base = stage_base(spec, schedule, stage, teacher, winners, rows)
    record = ledger.stage(stage.name)
    outbox = mlflow_ids.outbox
    tags = {"stage": stage.name, "method": stage.method, "task": spec.task}
    record["run_id"] = outbox.do("open_run", mlflow_ids.experiment_id, record.get("run_id"), stage.name,
                                 mlflow_ids.search_run_id, tags)
    ledger.save()
    first = DistillConfig.from_dict({**base, **expand({k: v[0] for k, v in grid.items() if v})})  # fail before Ray
    records = ledger.records()
    if any(len(v) == 0 for v in grid.values()):  # a refine around 0: nothing to try, the coarse winner stays
        empty = ", ".join(k for k, v in grid.items() if not v)
        keep(stage, record, winners_mod.carried(records, stage, None, base), ledger, outbox,
             f"{', '.join(stage.carry)}'s winner has {empty} = 0, nothing to refine around")
        return
    folded = folding.fold(grid, base, earlier_winners(schedule, stage, records))
    record["grid"] = {"points": folded.size, "runs": folded.runs, "folded": folded.says()}
    carried = winners_mod.carried(records, stage, folded, base)
    if not folded.runs:
        keep(stage, record, carried, ledger, outbox, f"{folded.says()}: nothing new to train")
        return
    if folded.folded:
        console.info(f"stage {stage.name}: {folded.says()}")
    grid = folded.grid
    how = stage_budget(spec, stage, grid, base, rows, ledger)
    key = shared.stage_key(stage.name, base, grid, how, seed_list(spec),
                           [{"winner": c.winner, "score": c.score} for c in carried] or None)
    folder = shared.stage_folder(spec.storage, spec.task, stage.name, key)
    record["shared"] = key
    done = trials_of(spec, stage, grid, how, base, first, folder, key, record, mlflow_ids, rows, teacher)
    hand_on(spec, stage, done, carried, record, records, outbox)
    ledger.save()
    outbox.do("close_run", record["run_id"], "FINISHED")


def trials_of(spec: SearchSpec, stage: Stage, grid: dict[str, tuple], how: Strategy, base: dict[str, Any],
              first: DistillConfig, folder: str, key: str, record: StageRecord, mlflow_ids: MlflowIds, rows: int,
              teacher: str) -> dict[str, Any]:
    """The stage's trials as `shared.save` records them: run now, or reused from the search that ran this same
    stage (a search beside this one may be running it: this one waits)."""
    with one_builder(folder, f"stage {stage.name}"):
        done = shared.finished(folder)
        if done is None:
            space.check_stage(spec, stage.name, stage_trials(spec, grid, how), teacher)
            prepare_outputs(first)  # the teacher cache (and memory), once, before trials run in parallel
            done = run_trials(spec, stage, grid, how, base, folder, rows, record["run_id"], mlflow_ids)
            done.update(run_id=record["run_id"], search=spec.method)
            shared.save(folder, done)
            return done
    console.info(f"stage {stage.name}: reused, its trials were run by the {done['search']} search ({folder})")
    record["reused_from"] = done["run_id"]
    mlflow_ids.outbox.do("log_winner", record["run_id"], "trials", float(done["trials"]),
                         {"reused_from": done["run_id"], "shared_stage": key})
    return done


def hand_on(spec: SearchSpec, stage: Stage, done: dict[str, Any], carried: list[winners_mod.Candidate],
            record: StageRecord, records: dict[str, StageRecord], outbox: Outbox) -> None:
    """The stage's winner, of its own trials and the winners carried into it, in its record: measured on dev
    when trials are ranked on a holdout, analysed and registered."""
    own = winners_mod.Candidate(done["winner"], done["score"], done["checkpoint"])
    chosen = winners_mod.choose(own, carried)
    if chosen is not own and own.checkpoint and spec.log_checkpoints != "all":
        # A carried student won: the stage's own best can never be handed on (a search that reuses this
        # stage carries the same winners, its key says so).
        retention.drop(own.checkpoint)
    record.update(winners_mod.stage_record(chosen, stage.name), trials=done["trials"],
                  stopped=done.get("stopped", 0), samples=done.get("samples"), budget_refused=done.get("refused"))
    if spec.select_on == "holdout" and chosen.checkpoint and "dev" not in record:
        # Ranked on the holdout: dev is measured for the winner alone, so the score reported is not the one
        # the stage maximised. A carried winner was measured in its own stage.
        record["dev"] = evaluate_on_dev(chosen.checkpoint)
        outbox.do("log_analysis", record["run_id"], {f"best/{k}": v for k, v in record["dev"].items()}, [])
    _log_winner(spec, stage, record, records, outbox)


def stage_budget(spec: SearchSpec, stage: Stage, grid: dict[str, tuple], base: dict[str, Any], rows: int,
                 ledger: Ledger) -> Strategy:
    """How the stage searches its grid (`strategy_of`); with --budget, its plan and what it may spend: the
    budget less what the search spent so far and what the later stages are planned to spend.

    Raises:
        BudgetSpent: that does not pay for one whole trial.
    """
    if not ledger.data.get("budget"):
        return strategy_of(spec, grid)
    planned = budget.Plan.from_json(ledger.data["budget"]["plan"])
    cap = planned.cap(stage.name, budget.spent_of(ledger.records()))
    per_trial = trial_budget(base, grid, rows)
    if cap < per_trial:
        raise BudgetSpent(f"the budget left for stage {stage.name} ({max(cap, 0):,.0f} training samples, after what "
                          f"the later stages are planned to spend) does not pay for one trial ({per_trial:,})")
    return strategy_of(spec, grid, planned.stage(stage.name), cap)


def earlier_winners(schedule: Schedule, stage: Stage, records: dict[str, StageRecord]) -> dict[str, dict]:
    """The winners of the trial stages done before `stage`, in schedule order (what its grid folds against)."""
    out = {}
    for s in schedule.stages:
        if s.name == stage.name:
            break
        r = records.get(s.name, {})
        if not s.prepare and r.get("status") == "done" and r.get("score") is not None:
            out[s.name] = r["winner"]
    return out


def keep(stage: Stage, record: StageRecord, carried: list[winners_mod.Candidate], ledger: Ledger, outbox: Outbox,
         why: str) -> None:
    """A stage with nothing to train: the best carried winner stays, with no trials of its own."""
    chosen = winners_mod.choose(None, carried)
    console.info(f"stage {stage.name}: skipped: {why}; {chosen.source}'s winner stays")
    record.update(winners_mod.stage_record(chosen, stage.name), trials=0, skipped=why)
    ledger.save()
    outbox.do("close_run", record["run_id"], "FINISHED")


def run_trials(spec: SearchSpec, stage: Stage, grid: dict[str, tuple], how: Strategy, base: dict[str, Any],
               folder: str, rows: int, stage_run_id: str, mlflow_ids: MlflowIds) -> dict[str, Any]:
    """The stage's Ray Tune experiment in `folder` (restored when a killed driver left it unfinished).

    Returns:
        The best point's values on top of `base` (`winner`), its `score` and `checkpoint`, the number of
        `trials`, how many were `stopped` at a rung, and the training `samples` they processed.
    """
    strategy = how.kind
    name = f"{spec.task}-{stage.name}"
    rungs, per_trial = None, trial_budget(base, grid, rows)
    if strategy != "grid":
        rungs = plan.rungs_for(per_trial, how.first_rung, spec.reduction_factor)
    tracker = tracking.TrialTracker(spec.mlflow_uri, mlflow_ids.experiment_id, stage_run_id,
                                    {"stage": stage.name, "method": stage.method, "task": spec.task}, base,
                                    mlflow_ids.outbox, tracking.dataset_records(base))
    total = stage_trials(spec, grid, how)
    console.info(f"stage {stage.name}: {total} trial{'' if total == 1 else 's'} ({strategy}), up to "
        f"{trial_budget(base, grid, rows):,} training samples each")
    finished = finished_trials(os.path.join(folder, name))
    if finished is not None:
        console.info(f"stage {stage.name}: restoring the interrupted stage, {finished} of its {total} trials had "
                     "finished (they are not run again)")
    shown = StageProgress(stage.name, total, tuple(grid), halving=strategy != "grid")
    kept = retention.KeepWinners(spec.seeds, delete=spec.log_checkpoints != "all")
    tuner = open_tuner(spec, folder, name, trainable_for(spec, base),
                       halving.param_space(strategy, grid, seed_list(spec)),
                       halving.tune_config(strategy, folder, name, rungs, spec.max_concurrent,
                                           how.num_samples or 0,
                                           (how.cap, per_trial) if how.cap is not None else None),
                       [tracker, shown, kept])
    if not spec.address:  # the pids of the cluster as its trials start: what a kill during them leaves
        orphans.record(spec.folder)
    results = tuner.fit()
    if any(space.disk_full(r.error) for r in results if r.error):
        # Not a winner from the trials that happened to fit: the stage stops, and --resume (after space is
        # freed) runs the failed trials again from their last checkpoint.
        raise OSError(errno.ENOSPC, f"a trial of stage {stage.name} could not write its checkpoint")
    try:
        point, score, checkpoint = pick_winner(results, grid)
    except StageFailed as e:
        mlflow_ids.outbox.do("close_run", stage_run_id, "FAILED")
        raise StageFailed(f"stage {stage.name}: {e}") from None
    every = spec.log_checkpoints == "all"
    best = {r.metrics["trial_id"]: ckpt.path for r in results if r.metrics and (ckpt := best_checkpoint(r))}
    mlflow_ids.outbox.do("record_best_checkpoints", mlflow_ids.experiment_id, stage_run_id, best, every,
                         None if every else [checkpoint])
    if not every:  # only the winner's checkpoint stays (retention); --log-checkpoints all keeps each trial's best
        retention.keep_only(os.path.join(folder, name), {checkpoint})
    frames = [r.metrics_dataframe for r in results if r.metrics_dataframe is not None and not r.error]
    stopped = sum(1 for df in frames if len(df) and not reached_budget(df))
    samples = sum(int(df[plan.SAMPLES].max()) for df in frames if plan.SAMPLES in df)
    refused = halving.gate_refused(folder)
    return {"winner": {**base, **expand(point)}, "score": score, "checkpoint": checkpoint, "trials": len(results),
            "stopped": stopped, "samples": samples, "refused": refused}


def _log_winner(spec: SearchSpec, stage: Stage, record: StageRecord, records: dict[str, StageRecord],
                outbox: Outbox) -> None:
    """The stage's winner on its MLflow run, and its student registered under the stage's alias: logged once,
    by the stage that trained it (a carried winner's alias points at the version already registered)."""
    keys = ("alpha", "temperature", "lr", "epochs", "beta", "gamma_i", "gamma_l", "gamma_g", "lam")
    outbox.do("log_winner", record["run_id"], "best/" + METRIC, record["score"],
              {f"winner.{k}": str(record["winner"].get(k)) for k in keys})
    if not record.get("checkpoint"):
        return
    model = f"fsd-{spec.task}-{spec.method}"
    origin = records.get(record.get("trained_in", stage.name), {})
    if origin is not record and origin.get("run_id"):
        outbox.do("alias_model", model, alias_of(stage.name), origin["run_id"])
        return
    student = export_student(record["checkpoint"])
    record["model_version"] = outbox.do("log_stage_model", record["run_id"], student, model, alias_of(stage.name),
                                        list(get_task(spec.task).label_names), spec.max_seq_len)
    metrics, files = analyse_checkpoint(record["checkpoint"], Path(record["checkpoint"]) / "analysis")
    record["analysis"] = metrics
    outbox.do("log_analysis", record["run_id"], metrics, files)


def alias_of(stage: str) -> str:
    """A stage's registry alias: its name (`models:/fsd-sst2-fsd@fsdil-mix`)."""
    return stage


def stage_line(spec: SearchSpec, name: str, record: StageRecord) -> str:
    """What a finished stage prints: its winner's score (on the holdout and on dev when ranked on a holdout)."""
    # A stage the budget cut short says so: its trial count line said what was planned, not what ran.
    cut = f"; the budget left paid for {record['trials']} trial(s)" if record.get("budget_refused") else ""
    if spec.select_on == "holdout":
        dev = record.get("dev", {}).get("dev/score")
        shown = "-" if dev is None else f"{100 * dev:.2f}"
        return f"stage {name}: best holdout score {100 * record['score']:.2f}, its dev score {shown}{cut}"
    return f"stage {name}: best dev score {100 * record['score']:.2f}{cut}"

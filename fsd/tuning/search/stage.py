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
from fsd.metrics import DEV_SCORE, SAMPLES, reached_budget
from fsd.storage import one_builder
from fsd.tasks import get_task
from fsd.train import evaluate_on_dev, export_student, prepare_outputs
from fsd.tuning.plan import budget, evidence, folding, shared, winners
from fsd.tuning.plan.ledger import Ledger, StageRecord
from fsd.tuning.plan.ranking import METRIC
from fsd.tuning.plan.rungs import rungs_for
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.plan.strategy import (
    Strategy,
    confirm_runs,
    confirm_seed_list,
    confirms_at_once,
    grid_size,
    seed_list,
    stage_trials,
    strategy_of,
)
from fsd.tuning.plan.trials import stage_base, trial_budget
from fsd.tuning.search import confirm, disk, halving, orphans, retention
from fsd.tuning.search.services import MlflowIds, best_checkpoint, finished_trials, open_tuner, trainable_for
from fsd.tuning.search.stage_progress import StageProgress, last_line
from fsd.tuning.tracking.outbox import Outbox
from fsd.tuning.tracking.records import TrialTracker, dataset_records
from search_spaces import Schedule, Stage
from search_spaces.joint import JOINT, expand, point_value


class StageFailed(RuntimeError):
    """Every trial of a stage failed: the search stops; the message names the first trial's error."""


class BudgetSpent(Exception):
    """--budget cannot pay for one more trial of the next stage: the search ends with what it found."""


def pick_winner(results, grid: dict[str, tuple], seed: int = 0,
                reference: dict[str, Any] | None = None) -> tuple[dict[str, Any], float, str | None]:
    """The grid point named by the stage's rule (`fsd.tuning.plan.evidence`: the best mean over seeds of each
    trial's best evaluation, ties settled by the point nearest `reference`, then by the values, never by
    trial order) among the trials that reached their full budget: a trial stopped at a low rung never wins.
    Returns its grid values, its mean score and its best run's checkpoint."""
    points = confirm.runs_of(results, seed)
    if not points:
        raise StageFailed(no_winner(results))
    (best,) = confirm.leading(points, 1, reference)
    expanded = best.values
    point = {k: point_value(k, tuple(expanded[n] for n in k.split(JOINT)) if JOINT in k else expanded[k])
             for k in grid}
    # Its best seed's checkpoint, tied seeds by the lowest (as Runs.best_checkpoint): not by the results' order,
    # which a restored experiment changes.
    return point, best.entry().mean, max(best.checkpoints.items(), key=lambda sc: (best.seeds[sc[0]], -sc[0]))[1]


def no_winner(results) -> str:
    """Why a stage has no winner: the first failed trial's error, in one line."""
    errors = [last_line(str(r.error), type(r.error).__name__, 500) for r in results if r.error]
    cause = errors[0] if errors else "no trial reported a dev score at its full budget"
    return (f"all {len(results)} trial(s) of the stage failed; first error: {cause} (full tracebacks in the Ray "
            "trial folders); fix the cause, then run again with --resume")


def run_stage(spec: SearchSpec, schedule: Schedule, stage: Stage, teacher: str, ledger: Ledger,
              mlflow_ids: MlflowIds, rows: int) -> None:
    earlier = ledger.winners()
    grid = stage.resolve(earlier)
    base = stage_base(spec, schedule, stage, teacher, earlier, rows)
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
        keep(stage, record, winners.carried(records, stage, None, base), ledger, outbox,
             f"{', '.join(stage.carry)}'s winner has {empty} = 0, nothing to refine around")
        return
    folded = folding.fold(grid, base, winners.earlier_winners(schedule, stage, records))
    record["grid"] = {"points": folded.size, "runs": folded.runs, "folded": folded.says()}
    carried = winners.carried(records, stage, folded, base)
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
    reference = winners.previous_winner(schedule, stage, records)
    done = trials_of(spec, stage, grid, how, base, first, folder, key, record, mlflow_ids, rows, teacher, reference)
    hand_on(spec, stage, done, carried, record, records, outbox, reference,
            evidence.accuracy_rows(ledger.data.get("ranking")))
    ledger.save()
    outbox.do("close_run", record["run_id"], "FINISHED")


def trials_of(spec: SearchSpec, stage: Stage, grid: dict[str, tuple], how: Strategy, base: dict[str, Any],
              first: DistillConfig, folder: str, key: str, record: StageRecord, mlflow_ids: MlflowIds, rows: int,
              teacher: str, reference: dict[str, Any] | None) -> dict[str, Any]:
    """The stage's trials as `shared.save` records them: run now, or reused from the search that ran this same
    stage (a search beside this one may be running it: this one waits)."""
    with one_builder(folder, f"stage {stage.name}"):
        done = shared.finished(folder)
        if done is None:
            disk.check_stage(spec, stage.name, stage_trials(spec, grid, how) + confirm_runs(spec, grid_size(grid)),
                             teacher)
            prepare_outputs(first)  # the teacher cache (and memory), once, before trials run in parallel
            done = run_trials(spec, stage, grid, how, base, folder, rows, record["run_id"], mlflow_ids, reference)
            done.update(run_id=record["run_id"], search=spec.method)
            shared.save(folder, done)
            return done
    outbox = mlflow_ids.outbox  # ids compared as sent: one side may hold the placeholder of a queued run
    if outbox.resolve(done.get("run_id")) == outbox.resolve(record.get("run_id")):
        return done  # run by this search, stopped after they were saved and before its ledger said so: not reused
    console.info(f"stage {stage.name}: reused, its trials were run by the {done['search']} search ({folder})")
    record["reused_from"] = done["run_id"]
    mlflow_ids.outbox.do("log_winner", record["run_id"], "trials", float(done["trials"]),
                         {"reused_from": done["run_id"], "shared_stage": key})
    return done


def hand_on(spec: SearchSpec, stage: Stage, done: dict[str, Any], carried: list[winners.Candidate],
            record: StageRecord, records: dict[str, StageRecord], outbox: Outbox,
            reference: dict[str, Any] | None = None, accuracy_rows: int | None = None) -> None:
    """The stage's winner, of its own candidates and the winners carried into it, named with its evidence in
    its record (ties within the ranking split's error at `accuracy_rows`): measured on dev when trials are
    ranked on a holdout, analysed and registered."""
    own = own_candidates(done)
    chosen, decision = winners.decide(own, carried, reference, accuracy_rows)
    if chosen.source is not None and done["checkpoint"] and spec.log_checkpoints != "all":
        # A carried student won: the stage's own best can never be handed on (a search that reuses this
        # stage carries the same winners, its key says so).
        retention.drop(done["checkpoint"])
    record.update(winners.stage_record(chosen, stage.name, decision), trials=done["trials"],
                  confirm_trials=done.get("confirm_trials", 0), stopped=done.get("stopped", 0),
                  samples=done.get("samples"), budget_refused=done.get("refused"))
    if spec.select_on == "holdout" and chosen.checkpoint and "dev" not in record:
        # Ranked on the holdout: dev is measured for the winner alone, so the score reported is not the one
        # the stage maximised. A carried winner was measured in its own stage.
        record["dev"] = evaluate_on_dev(chosen.checkpoint)
        outbox.do("log_analysis", record["run_id"], {f"best/{k}": v for k, v in record["dev"].items()}, [])
    _log_winner(spec, stage, record, records, outbox)


def own_candidates(done: dict[str, Any]) -> list[winners.Candidate]:
    """A stage's own candidates as its record keeps them (one, its winner, in a record written before stages
    kept their candidates' seeds)."""
    if "candidates" not in done:
        return [winners.Candidate(done["winner"], done["score"], done["checkpoint"])]
    out = []
    for c in done["candidates"]:
        seeds = winners.seeds_of(c["seeds"])
        checkpoint = done["checkpoint"] if c["winner"] == done["winner"] else c.get("checkpoint")
        out.append(winners.Candidate(c["winner"], sum(seeds.values()) / len(seeds), checkpoint, seeds=seeds))
    return out


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
    per_trial = trial_budget(base, grid, rows)
    # The confirmation trials are paid first: the stage's own trials may spend what is left.
    cap = planned.cap(stage.name, budget.spent_of(ledger.records())) - confirm_runs(spec, grid_size(grid)) * per_trial
    if cap < per_trial:
        raise BudgetSpent(f"the budget left for stage {stage.name} ({max(cap, 0):,.0f} training samples, after what "
                          f"the later stages are planned to spend) does not pay for one trial ({per_trial:,})")
    return strategy_of(spec, grid, planned.stage(stage.name), cap)


def keep(stage: Stage, record: StageRecord, carried: list[winners.Candidate], ledger: Ledger, outbox: Outbox,
         why: str) -> None:
    """A stage with nothing to train: the best carried winner stays, with no trials of its own."""
    chosen, decision = winners.decide([], carried, None, evidence.accuracy_rows(ledger.data.get("ranking")))
    console.info(f"stage {stage.name}: skipped: {why}; {chosen.source}'s winner stays")
    record.update(winners.stage_record(chosen, stage.name, decision), trials=0, skipped=why)
    ledger.save()
    outbox.do("close_run", record["run_id"], "FINISHED")


def run_trials(spec: SearchSpec, stage: Stage, grid: dict[str, tuple], how: Strategy, base: dict[str, Any],
               folder: str, rows: int, stage_run_id: str, mlflow_ids: MlflowIds,
               reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stage's Ray Tune experiment in `folder` (restored when a killed driver left it unfinished), then
    its leading points on more seeds (`how.confirm`), and the winner among them by the stage's rule.

    Returns:
        The winner's values on top of `base` (`winner`), its seed mean (`score`) and `checkpoint`, the
        `candidates` (values and scores per seed), the number of `trials` (`confirm_trials` of them confirming),
        how many were `stopped` at a rung, and the training `samples` they processed.
    """
    strategy = how.kind
    name = f"{spec.task}-{stage.name}"
    rungs, per_trial = None, trial_budget(base, grid, rows)
    if strategy != "grid":
        rungs = rungs_for(per_trial, how.first_rung, spec.reduction_factor)
    tracker = TrialTracker(spec.mlflow_uri, mlflow_ids.experiment_id, stage_run_id,
                           {"stage": stage.name, "method": stage.method, "task": spec.task}, base,
                           mlflow_ids.outbox, dataset_records(base))
    at_once = confirms_at_once(how, grid_size(grid))  # every point a leader: its confirmation seeds run now
    seeds = seed_list(spec) + (confirm_seed_list(spec) if at_once else [])
    total = stage_trials(spec, grid, how) + (confirm_runs(spec, grid_size(grid)) if at_once else 0)
    console.info(f"stage {stage.name}: {total} trial{'' if total == 1 else 's'} ({strategy}), up to "
        f"{trial_budget(base, grid, rows):,} training samples each" + (
        f"; its {grid_size(grid)} points are its leading points, confirmed at once: each on seeds "
        f"{', '.join(map(str, seeds))}" if at_once else ""))
    finished = finished_trials(os.path.join(folder, name))
    if finished is not None:
        console.info(f"stage {stage.name}: restoring the interrupted stage, {finished} of its {total} trials had "
                     "finished (they are not run again)")
    shown = StageProgress(stage.name, total, tuple(grid) + (("seed",) if at_once else ()), halving=strategy != "grid")
    # The leading points' checkpoints stay until the confirmation has named the winner among them (all of them
    # when it runs at once: a point's seeds may tie, and the winner's checkpoint is then its lowest seed's).
    kept = retention.KeepWinners(len(seeds), delete=spec.log_checkpoints != "all" and not at_once,
                                 top=spec.confirm_top if how.confirm else 1)
    tuner = open_tuner(spec, folder, name, trainable_for(spec, base),
                       halving.param_space(strategy, grid, seeds),
                       halving.tune_config(strategy, folder, name, rungs, spec.max_concurrent,
                                           how.num_samples or 0,
                                           (how.cap, per_trial) if how.cap is not None else None),
                       [tracker, shown, kept])
    if not spec.address:  # the pids of the cluster as its trials start: what a kill during them leaves
        orphans.record(spec.folder)
    results = list(tuner.fit())
    _check_disk(stage, results)
    points = confirm.runs_of(results, base["seed"])
    if not points:
        mlflow_ids.outbox.do("close_run", stage_run_id, "FAILED")
        raise StageFailed(f"stage {stage.name}: {no_winner(results)}")
    candidates, more = list(points.values()), []
    if how.confirm and len(points) > 1:
        candidates = confirm.leading(points, spec.confirm_top, reference)
        if not at_once:  # at once, the leaders' runs already hold the confirmation seeds
            more = confirm.run_confirmation(spec, stage, candidates, base, folder, stage_run_id, mlflow_ids)
            _check_disk(stage, more)
            confirm.runs_of(more, base["seed"], into=points)  # the leaders' runs gain the confirmation seeds
    confirming = len(more) + sum(1 for r in results if r.config.get("seed") in confirm_seed_list(spec))
    decision = evidence.decide([c.entry() for c in candidates], reference)
    checkpoint = candidates[decision.winner].best_checkpoint()
    every = spec.log_checkpoints == "all"
    best = {r.metrics["trial_id"]: ckpt.path for r in results + more if r.metrics and (ckpt := best_checkpoint(r))}
    mlflow_ids.outbox.do("record_best_checkpoints", mlflow_ids.experiment_id, stage_run_id, best, every,
                         None if every else [checkpoint])
    if not every:  # only the winner's checkpoint stays (retention); --log-checkpoints all keeps each trial's best
        for experiment in (name, name + confirm.SUFFIX):
            retention.keep_only(os.path.join(folder, experiment), {checkpoint})
    frames = [r.metrics_dataframe for r in results + more if r.metrics_dataframe is not None and not r.error]
    stopped = sum(1 for df in frames if len(df) and not reached_budget(df.iloc[-1].to_dict()))
    samples = sum(int(df[SAMPLES].max()) for df in frames if SAMPLES in df)
    winner = candidates[decision.winner]
    return {"winner": {**base, **winner.values}, "score": winner.entry().mean, "checkpoint": checkpoint,
            "candidates": [{"winner": {**base, **c.values}, "seeds": {str(k): v for k, v in sorted(c.seeds.items())},
                            "checkpoint": None} for c in candidates],
            "trials": len(results) + len(more), "confirm_trials": confirming, "stopped": stopped, "samples": samples,
            "refused": halving.gate_refused(folder)}


def _check_disk(stage: Stage, results: list) -> None:
    if any(disk.disk_full(r.error) for r in results if r.error):
        # Not a winner from the trials that happened to fit: the stage stops, and --resume (after space is
        # freed) runs the failed trials again from their last checkpoint.
        raise OSError(errno.ENOSPC, f"a trial of stage {stage.name} could not write its checkpoint")


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
    split = "holdout" if spec.select_on == "holdout" else "dev"
    line = f"stage {name}: best {split} score {100 * record['score']:.2f}"
    if spec.select_on == "holdout":
        dev = record.get("dev", {}).get(DEV_SCORE)
        line += ", its dev score " + ("-" if dev is None else f"{100 * dev:.2f}")
    line += cut
    if record.get("evidence"):  # the winner's seeds against the runner-up's, and the ties
        line += f"\nstage {name}: {evidence.said(record['evidence'], split)}"
    return line

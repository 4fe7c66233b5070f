"""run_search(): the teacher, then one Ray Tune experiment per stage of the schedule, chained greedily
through the ledger; MLflow records everything; a killed search resumes where it stopped."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any, NamedTuple

import ray
from ray import tune

from fsd import failpoints
from fsd.analysis import analyse_checkpoint
from fsd.config import DistillConfig
from fsd.storage import one_builder
from fsd.tasks import get_task
from fsd.train import evaluate_on_dev, export_student, prepare_outputs
from fsd.tuning import budget, folding, halving, orphans, plan, retention, shared, space, tracking
from fsd.tuning import winners as winners_mod
from fsd.tuning.ledger import Ledger, StageRecord
from fsd.tuning.outbox import Outbox
from fsd.tuning.plan import (
    METRIC,
    MODE,
    expand,
    seed_list,
    stage_base,
    stage_trials,
    strategy_of,
    train_rows,
    trial_budget,
)
from fsd.tuning.progress import StageProgress, quiet_services
from fsd.tuning.spec import SearchSpec, identity
from fsd.tuning.trainable import train_trial
from search_spaces import Schedule, Stage

logger = logging.getLogger("fsd")


class StageFailed(RuntimeError):
    """Every trial of a stage failed: the search stops; the message names the first trial's error."""


class BudgetSpent(Exception):
    """--budget cannot pay for one more trial of the next stage: the search ends with what it found."""


def _last_line(error: BaseException) -> str:
    """The line of a (Ray-wrapped) trial error that says what went wrong."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else type(error).__name__


def best_checkpoint(result):
    """A trial's best checkpoint, or None (a trial that failed before its first epoch has none: Ray raises)."""
    try:
        return result.get_best_checkpoint(METRIC, MODE)
    except RuntimeError:
        return None


def reached_budget(df) -> bool:
    """Whether a trial (its results as a data frame) trained to its full budget: `retention.reached_budget`."""
    return retention.reached_budget(df.iloc[-1].to_dict()) if len(df) else False


def pick_winner(results, grid: dict[str, tuple]) -> tuple[dict[str, Any], float, str | None]:
    """The grid point with the best dev score (best evaluation of each trial), averaged over seeds, among the
    trials that reached their full budget: a trial stopped at a low rung never wins."""
    rows: dict[tuple, list] = {}
    errors = [_last_line(r.error) for r in results if r.error]
    # Grid order (trial ids number the grid points), whatever order a restored experiment lists them in:
    # ties then go to the same point in a resumed search as in an uninterrupted one.
    for r in sorted(results, key=lambda r: str((getattr(r, "metrics", None) or {}).get("trial_id", ""))):
        df = r.metrics_dataframe
        if r.error or df is None or METRIC not in df or not reached_budget(df):
            continue
        # The seed is not part of a point: seeds are averaged. A restored config holds lists for tuples.
        point = tuple((k, plan.point_value(r.config[k])) for k in grid)
        ckpt = best_checkpoint(r)
        rows.setdefault(point, []).append((float(df[METRIC].max()), ckpt.path if ckpt else None))
    if not rows:
        cause = errors[0] if errors else "no trial reported a dev score at its full budget"
        raise StageFailed(f"all {len(results)} trial(s) of the stage failed; first error: {cause} (full tracebacks "
                          "in the Ray trial folders); fix the cause, then run again with --resume")
    point, runs = max(rows.items(), key=lambda kv: sum(s for s, _ in kv[1]) / len(kv[1]))
    best_run = max(runs, key=lambda r: r[0])
    return dict(point), sum(s for s, _ in runs) / len(runs), best_run[1]


def trainable_for(spec: SearchSpec, base: dict[str, Any]):
    """The trial function with the stage's shared values and its resource share (fractions of a GPU pack
    several trials on one device; Ray only counts, the trials share its memory)."""
    return tune.with_resources(tune.with_parameters(train_trial, base=base),
                               {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})


def run_stage(spec: SearchSpec, schedule: Schedule, stage: Stage, teacher: str, ledger: Ledger,
              mlflow_ids: MlflowIds, rows: int, log=print) -> None:
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
             f"{', '.join(stage.carry)}'s winner has {empty} = 0, nothing to refine around", log)
        return
    folded = folding.fold(grid, base, earlier_winners(schedule, stage, records))
    record["grid"] = {"points": folded.size, "runs": folded.runs, "folded": folded.says()}
    carried = winners_mod.carried(records, stage, folded, base)
    if not folded.runs:
        keep(stage, record, carried, ledger, outbox, f"{folded.says()}: nothing new to train", log)
        return
    if folded.folded:
        log(f"stage {stage.name}: {folded.says()}")
    grid = folded.grid
    how = stage_budget(spec, stage, grid, base, rows, ledger)
    key = shared.stage_key(stage.name, base, grid, how, seed_list(spec),
                           [{"winner": c.winner, "score": c.score} for c in carried] or None)
    folder = shared.stage_folder(spec.storage, spec.task, stage.name, key)
    record["shared"] = key
    with one_builder(folder, f"stage {stage.name}", log):  # a search beside this one may be running it: wait
        done = shared.finished(folder)
        if done is None:
            space.check_stage(spec, stage.name, stage_trials(spec, grid, how), teacher)
            prepare_outputs(first, log)  # the teacher cache (and memory), once, before trials run in parallel
            done = run_trials(spec, stage, grid, how, base, folder, rows, record["run_id"], mlflow_ids, log)
            done.update(run_id=record["run_id"], search=spec.method)
            shared.save(folder, done)
        else:
            log(f"stage {stage.name}: reused, its trials were run by the {done['search']} search ({folder})")
            record["reused_from"] = done["run_id"]
            outbox.do("log_winner", record["run_id"], "trials", float(done["trials"]),
                      {"reused_from": done["run_id"], "shared_stage": key})
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
    ledger.save()
    outbox.do("close_run", record["run_id"], "FINISHED")


def stage_budget(spec: SearchSpec, stage: Stage, grid: dict[str, tuple], base: dict[str, Any], rows: int,
                 ledger: Ledger) -> dict[str, Any]:
    """How the stage searches its grid (`strategy_of`); with --budget, its plan and what it may spend: the
    budget less what the search spent so far and what the later stages are planned to spend.

    Raises:
        BudgetSpent: that does not pay for one whole trial.
    """
    if not ledger.data.get("budget"):
        return strategy_of(spec, grid)
    plan = budget.Plan.from_json(ledger.data["budget"]["plan"])
    cap = plan.cap(stage.name, budget.spent_of(ledger.records()))
    per_trial = trial_budget(base, grid, rows)
    if cap < per_trial:
        raise BudgetSpent(f"the budget left for stage {stage.name} ({max(cap, 0):,.0f} training samples, after what "
                          f"the later stages are planned to spend) does not pay for one trial ({per_trial:,})")
    return strategy_of(spec, grid, plan.stage(stage.name), cap)


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
         why: str, log=print) -> None:
    """A stage with nothing to train: the best carried winner stays, with no trials of its own."""
    chosen = winners_mod.choose(None, carried)
    log(f"stage {stage.name}: skipped: {why}; {chosen.source}'s winner stays")
    record.update(winners_mod.stage_record(chosen, stage.name), trials=0, skipped=why)
    ledger.save()
    outbox.do("close_run", record["run_id"], "FINISHED")


def interrupted(ledger: Ledger, ids: MlflowIds) -> None:
    """Ctrl-C: the search's MLflow runs still open (the search, the stage that ran, its running trials) marked
    KILLED, so the UI does not show them running; --resume reopens them. A second Ctrl-C exits at once."""
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    open_stages = [r["run_id"] for r in ledger.records().values() if r.get("run_id") and r.get("status") != "done"]
    try:
        ids.outbox.do("close_open_children", ids.experiment_id, open_stages, "KILLED")
        for run_id in open_stages:
            ids.outbox.do("close_run", run_id, "KILLED")
        ids.outbox.do("close_run", ids.search_run_id, "KILLED")
        ids.outbox.flush()
    except Exception:  # noqa: BLE001 - the interrupted search must still stop; --resume sends what is queued
        pass


def start_search(spec: SearchSpec, schedule: Schedule, ledger: Ledger, log=print) -> tuple[str, MlflowIds]:
    """What the stages need before the first one: the teacher (fine-tuned once), the majority-class floor, the
    MLflow experiment and search run (queued records sent first), and Ray."""
    from fsd.teacher import ensure_teacher

    ledger.data["search"] = identity(spec)
    ledger.save()
    teacher = ensure_teacher(plan.teacher_spec(spec, schedule), spec.storage, log=log)
    ledger.data["teacher"] = teacher
    ledger.data["majority"] = plan.majority_floor(spec, schedule)
    if spec.budget and "budget" not in ledger.data:  # planned once: a resumed search keeps its plan
        from fsd.tuning.cost import budget_plan

        ledger.data["budget"] = {"text": spec.budget, "plan": budget_plan(spec, schedule).to_json()}
        log(budget.format_plan(budget.Plan.from_json(ledger.data["budget"]["plan"]), budget.parse(spec.budget)))
    start_services(spec, spec.folder, log)
    outbox = Outbox(spec.mlflow_uri, os.path.join(spec.folder, "mlflow_outbox.json"), tracking.OPS)
    if outbox.pending:
        log(f"MLflow: sending {outbox.pending} record(s) queued while the server was unreachable")
        outbox.flush()
    exp_id = tracking.experiment_id(spec.mlflow_uri, spec.task)
    search_run = outbox.do("open_run", exp_id, ledger.data.get("search_run_id"), f"{spec.method}-{spec.preset}",
                           None, {"method": spec.method, "task": spec.task, "preset": spec.preset})
    ledger.data.update(search_run_id=search_run, experiment_id=exp_id)
    ledger.save()
    return teacher, MlflowIds(exp_id, search_run, outbox)


def start_services(spec: SearchSpec, folder: str, log=print) -> None:
    """How the driver talks to MLflow and Ray, and Ray started (once per process), for a search or a
    comparison whose records and orphan token live in `folder`."""
    quiet_services(spec.verbose)
    # A lost server must not stall the driver in HTTP retries: what fails waits in the outbox instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    # num_to_keep=1 makes Ray snapshot the experiment before it deletes a trial's older checkpoint, so that a
    # resume never points at a deleted one; its warning that these snapshots come often is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C must reach the driver as KeyboardInterrupt: Ray's own handler ends a stage's fit as if its grid
    # were done, and the stage would be recorded with whichever trials happened to have finished.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if ray.is_initialized():
        return
    if not spec.address:  # this driver's own cluster: what a killed one left is stopped first
        orphans.clean_and_mark(folder, log)
    # A local cluster lives on the loopback address: it needs no route to the outside.
    local = {} if spec.address else {"_node_ip_address": "127.0.0.1"}
    # "local", not None: with None Ray joins the last `ray start` cluster it finds recorded in its temp
    # folder, a dead one too (a kill -9 leaves the record), where the user asked for a cluster of its own.
    ray.init(address=spec.address or "local", include_dashboard=False, log_to_driver=False,
             logging_level=logging.INFO if spec.verbose else logging.ERROR, **local)


class MlflowIds(NamedTuple):
    """Where a search's records go: its MLflow experiment, its parent run, and the outbox that sends them."""

    experiment_id: str
    search_run_id: str
    outbox: Outbox


def open_tuner(spec: SearchSpec, storage: str, name: str, trainable, param_space: dict[str, Any],
               tune_config: tune.TuneConfig, callbacks: list[tune.Callback]) -> tune.Tuner:
    """The Ray experiment `storage/name`: restored when a killed driver left it (its finished trials are not
    run again, errored ones are), else a new one that keeps each trial's best checkpoint by METRIC."""
    exp_dir = os.path.join(storage, name)
    if restorable(exp_dir):
        return tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True)
    keep = tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=callbacks,
                                                verbose=1 if spec.verbose else 0,
                                                checkpoint_config=keep,
                                                failure_config=tune.FailureConfig(max_failures=spec.max_failures)))


def restorable(exp_dir: str) -> bool:
    """Whether a killed driver left a Ray experiment in `exp_dir` to restore.

    Ray writes its experiment state in place (`experiment_state-<session>.json`), so a driver that died or
    met a full disk mid-write can leave one cut short, and Ray restores from the newest. One that does not
    parse is set aside (renamed `.unreadable`): Ray then restores from an older session's state, or, with
    none left, the stage starts afresh, its trials' checkpoints being all that the cut file could name."""
    for state in Path(exp_dir).glob("experiment_state-*.json"):
        try:
            json.loads(state.read_text())
        except (ValueError, UnicodeDecodeError):
            state.rename(state.with_name(state.name + ".unreadable"))
            logger.warning("%s does not parse (cut short by a kill or a full disk): set aside", state)
    return tune.Tuner.can_restore(exp_dir) and any(Path(exp_dir).glob("experiment_state-*.json"))


def finished_trials(exp_dir: str) -> int | None:
    """How many trials of an interrupted Ray experiment had finished, or None when there is none to restore."""
    if not restorable(exp_dir):
        return None
    return sum(1 for t in tune.ExperimentAnalysis(exp_dir).trials if t.status == "TERMINATED")


def run_trials(spec: SearchSpec, stage: Stage, grid: dict[str, tuple], how: dict[str, Any], base: dict[str, Any],
               folder: str, rows: int, stage_run_id: str, mlflow_ids: MlflowIds, log=print) -> dict[str, Any]:
    """The stage's Ray Tune experiment in `folder` (restored when a killed driver left it unfinished).

    Returns:
        The best point's values on top of `base` (`winner`), its `score` and `checkpoint`, the number of
        `trials`, how many were `stopped` at a rung, and the training `samples` they processed.
    """
    strategy = how["strategy"]
    name = f"{spec.task}-{stage.name}"
    rungs, per_trial = None, trial_budget(base, grid, rows)
    if strategy != "grid":
        rungs = plan.rungs_for(per_trial, how["first_rung"], spec.reduction_factor)
    tracker = tracking.TrialTracker(spec.mlflow_uri, mlflow_ids.experiment_id, stage_run_id,
                                    {"stage": stage.name, "method": stage.method, "task": spec.task}, base,
                                    mlflow_ids.outbox, tracking.dataset_records(base))
    total = stage_trials(spec, grid, how)
    log(f"stage {stage.name}: {total} trial{'' if total == 1 else 's'} ({strategy}), up to "
        f"{trial_budget(base, grid, rows):,} training samples each")
    finished = finished_trials(os.path.join(folder, name))
    if finished is not None:
        log(f"stage {stage.name}: restoring the interrupted stage, {finished} of its {total} trials had finished "
            "(they are not run again)")
    shown = StageProgress(stage.name, total, tuple(grid), halving=strategy != "grid", log=log)
    kept = retention.KeepWinners(spec.seeds, delete=spec.log_checkpoints != "all")
    tuner = open_tuner(spec, folder, name, trainable_for(spec, base),
                       halving.param_space(strategy, grid, seed_list(spec)),
                       halving.tune_config(strategy, folder, name, rungs, METRIC, MODE, spec.max_concurrent,
                                           how.get("num_samples", 0),
                                           (how["cap"], per_trial) if "cap" in how else None),
                       [tracker, shown, kept])
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
    samples = sum(int(df["progress/samples"].max()) for df in frames if "progress/samples" in df)
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
                                        list(get_task(spec.task).labels), spec.max_seq_len)
    metrics, files = analyse_checkpoint(record["checkpoint"], Path(record["checkpoint"]) / "analysis")
    record["analysis"] = metrics
    outbox.do("log_analysis", record["run_id"], metrics, files)


def alias_of(stage: str) -> str:
    """A stage's registry alias: its name (`models:/fsd-sst2-fsd@fsdil-mix`)."""
    return stage


def stage_line(spec: SearchSpec, name: str, record: StageRecord) -> str:
    """What a finished stage prints: its winner's score (on the holdout and on dev when ranked on a holdout)."""
    if spec.select_on == "holdout":
        dev = record.get("dev", {}).get("dev/score")
        shown = "-" if dev is None else f"{100 * dev:.2f}"
        return f"stage {name}: best holdout score {100 * record['score']:.2f}, its dev score {shown}"
    return f"stage {name}: best dev score {100 * record['score']:.2f}"


def build_memory(spec: SearchSpec, schedule: Schedule, stage: Stage, teacher: str, ledger: Ledger, log=print) -> None:
    """The teacher memory, once, in the driver: trials that run in parallel must not all fit it."""
    config = DistillConfig.from_dict(stage_base(spec, schedule, stage, teacher, ledger.winners()))
    shape = prepare_outputs(config, log).memory_shape
    record = ledger.stage(stage.name)
    record.update(status="done", winner={}, score=None, memory_shape=list(shape or ()))
    ledger.save()


def run_search(spec: SearchSpec, schedule: Schedule, log=print) -> Ledger:
    """Run (or resume) the whole staged search; returns the ledger with every stage's winner."""
    ledger = Ledger(spec.folder)
    done = [s.name for s in schedule.stages if ledger.done(s.name)]
    if ledger.exists:
        left = [s.name for s in schedule.stages if s.name not in done and (not spec.stages or s.name in spec.stages)]
        log(f"resuming {spec.task} / {spec.method}: {len(done)} stage(s) done ({', '.join(done) or 'none'}); "
            f"next: {', '.join(left) or 'nothing, the search is complete'}")
    new = not ledger.exists
    try:
        teacher, ids = start_search(spec, schedule, ledger, log)
    except BaseException as e:
        # A new search that failed before its first stage (a teacher that cannot be fetched, Ctrl-C, a server
        # that refuses) leaves no ledger: the corrected command then starts afresh instead of being refused.
        if new and ledger.exists:
            ledger.path.unlink()
        if isinstance(e, Exception) and space.disk_full(e):
            raise space.DiskFull(space.full_message(spec, schedule, set(done), None, e)) from None
        raise
    outbox, search_run = ids.outbox, ids.search_run_id
    rows = train_rows(spec, schedule)
    try:
        for stage in schedule.stages:
            if spec.stages and stage.name not in spec.stages:
                continue
            if ledger.done(stage.name):
                log(f"stage {stage.name}: done before, winner kept")
                continue
            if stage.prepare == "memory":
                log(f"stage {stage.name}: building the teacher memory")
                build_memory(spec, schedule, stage, teacher, ledger, log)
            else:
                run_stage(spec, schedule, stage, teacher, ledger, ids, rows, log)
                if ledger.records()[stage.name].get("trials"):  # a skipped stage said whose winner it kept
                    log(stage_line(spec, stage.name, ledger.records()[stage.name]))
            failpoints.reached("between-stages")
    except BudgetSpent as e:
        left = [s.name for s in schedule.stages if not ledger.done(s.name) and not s.prepare]
        for name in left:
            ledger.stage(name).update(status="not run", skipped="the budget is spent")
        ledger.save()
        log(f"budget spent: {e}; not run: {', '.join(left)}")
    except StageFailed:
        outbox.do("close_run", search_run, "FAILED")
        outbox.flush()
        raise
    except KeyboardInterrupt:
        interrupted(ledger, ids)
        raise
    except Exception as e:
        if not space.disk_full(e):
            raise
        finished = {s.name for s in schedule.stages if ledger.done(s.name)}
        raise space.DiskFull(space.full_message(spec, schedule, finished, teacher, e)) from None
    register_best(spec, schedule, ledger, outbox)
    if ledger.data.get("budget"):
        spent = budget.spent_of(ledger.records())
        ledger.data["budget"]["spent"] = spent
        ledger.save()
        log(budget.closing_line(ledger.data["budget"]))
    outbox.do("close_run", search_run, "FINISHED")
    outbox.flush()
    ledger.mlflow_note = outbox.summary()
    return ledger


def register_best(spec: SearchSpec, schedule: Schedule, ledger: Ledger, outbox: Outbox) -> None:
    """The search's best student (of every stage it ran) in the ledger and under the registry alias `best`."""
    found = winners_mod.search_best(ledger.records(), schedule)
    if found is None:
        return
    name, record = found
    origin = record.get("trained_in", name)
    ledger.data["best"] = {"stage": origin, "score": record["score"], "winner": record["winner"],
                           "checkpoint": record.get("checkpoint")}
    ledger.save()
    run_id = ledger.records().get(origin, {}).get("run_id")
    if record.get("checkpoint") and run_id:
        outbox.do("alias_model", f"fsd-{spec.task}-{spec.method}", "best", run_id)

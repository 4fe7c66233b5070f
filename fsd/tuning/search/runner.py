"""run_locked(): run_search under the search folder's lock. run_search(): the teacher, then one Ray Tune
experiment per stage of the schedule (stage.py), chained greedily through the ledger; MLflow records
everything; a killed search resumes where it stopped."""

from __future__ import annotations

import os
from typing import NamedTuple

from fsd import failpoints
from fsd.config import DistillConfig
from fsd.layout import OUTBOX
from fsd.logs import console
from fsd.train import prepare_outputs
from fsd.tuning.plan import budget
from fsd.tuning.plan.ledger import Ledger
from fsd.tuning.plan.ranking import ranking_split
from fsd.tuning.plan.references import majority_floor, teacher_spec
from fsd.tuning.plan.resume import check_resume
from fsd.tuning.plan.spec import SearchSpec, identity
from fsd.tuning.plan.trials import stage_base, train_rows
from fsd.tuning.plan.winners import search_best
from fsd.tuning.search import lock
from fsd.tuning.search.disk import DiskFull, disk_full, full_message
from fsd.tuning.search.fresh import fresh_seed_list, run_fresh
from fsd.tuning.search.services import MlflowIds, interrupted, start_services
from fsd.tuning.search.stage import BudgetSpent, StageFailed, run_stage, stage_line
from fsd.tuning.tracking import records
from fsd.tuning.tracking.outbox import Outbox, reachable
from search_spaces import Schedule, Stage


def start_search(spec: SearchSpec, schedule: Schedule, ledger: Ledger) -> tuple[str, MlflowIds]:
    """What the stages need before the first one: the teacher (fine-tuned once), the majority-class floor, the
    MLflow experiment and search run (queued records sent first), and Ray."""
    from fsd.teacher import ensure_teacher

    ledger.data["search"] = identity(spec)
    ledger.save()
    teacher = ensure_teacher(teacher_spec(spec, schedule), spec.storage)
    ledger.data["teacher"] = teacher
    ledger.data["majority"] = majority_floor(spec, schedule)
    ledger.data["ranking"] = ranking_split(spec, schedule)
    if spec.budget and "budget" not in ledger.data:  # planned once: a resumed search keeps its plan
        from fsd.tuning.cost.count import budget_plan
        from fsd.tuning.cost.estimate import samples_per_hour

        per_hour = samples_per_hour(spec, schedule) if budget.parse(spec.budget).hours is not None else None
        ledger.data["budget"] = {"text": spec.budget, "plan": budget_plan(spec, schedule, per_hour).to_json()}
        planned = budget.Plan.from_json(ledger.data["budget"]["plan"])
        console.info(budget.format_plan(planned, budget.parse(spec.budget)))
    start_services(spec, spec.folder)
    outbox = Outbox(spec.mlflow_uri, os.path.join(spec.folder, OUTBOX), records.OPS)
    if outbox.pending:
        console.info(f"MLflow: sending {outbox.pending} record(s) queued while the server was unreachable")
        outbox.flush()
    exp_id = experiment_of(spec, ledger)
    search_run = outbox.do("open_run", exp_id, ledger.data.get("search_run_id"), f"{spec.method}-{spec.preset}",
                           None, {"method": spec.method, "task": spec.task, "preset": spec.preset})
    ledger.data.update(search_run_id=search_run, experiment_id=exp_id)
    ledger.save()
    return teacher, MlflowIds(exp_id, search_run, outbox)


class ServerAway(RuntimeError):
    """The MLflow server answered the command's checks and stopped answering before a new search began."""


def experiment_of(spec: SearchSpec, ledger: Ledger) -> str:
    """The search's MLflow experiment. The server the checks found may have gone away since (they ran seconds
    before): a resumed search goes on with the experiment its ledger names, and what it logs waits in the
    outbox as during an outage mid-search; a new search has no experiment yet, and stops with one line."""
    from mlflow.exceptions import MlflowException

    try:
        return records.experiment_id(spec.mlflow_uri, spec.task)
    except (MlflowException, OSError) as e:
        known = ledger.data.get("experiment_id")
        if reachable(spec.mlflow_uri):  # the server answers and refused: not an outage
            raise
        if not known:
            raise ServerAway(f"the MLflow server {spec.mlflow_uri} stopped answering before the search began "
                             f"({type(e).__name__}): start it and run the same command again") from None
        return known  # the outbox says, with its first queued record, that the server is away


def build_memory(spec: SearchSpec, schedule: Schedule, stage: Stage, teacher: str, ledger: Ledger) -> None:
    """The teacher memory, once, in the driver: trials that run in parallel must not all fit it."""
    config = DistillConfig.from_dict(stage_base(spec, schedule, stage, teacher, ledger.winners()))
    shape = prepare_outputs(config).memory_shape
    record = ledger.stage(stage.name)
    record.update(status="done", winner={}, score=None, memory_shape=list(shape or ()))
    ledger.save()


class Finished(NamedTuple):
    """A search that ran to its end: its ledger, and what MLflow's outbox has to say (None: all was sent)."""

    ledger: Ledger
    mlflow_note: str | None


def run_locked(spec: SearchSpec, schedule: Schedule, resume: bool) -> Finished:
    """run_search under the lock of the search folder, held until it returns or raises (one search per folder).
    The folder is checked again under it for what the command found there (`resume`: a ledger to resume, or
    none): a search that started since the command's checks is caught here.

    Raises:
        lock.Busy: another process holds the lock.
        Refused: the folder no longer fits the command (fsd/tuning/plan/resume.py).
    """
    with lock.held(spec.folder):
        check_resume(spec, resume)
        return run_search(spec, schedule)


def run_search(spec: SearchSpec, schedule: Schedule) -> Finished:
    """Run (or resume) the whole staged search; returns its ledger with every stage's winner."""
    ledger = Ledger(spec.folder)
    done = [s.name for s in schedule.stages if ledger.done(s.name)]
    if ledger.exists:
        left = [s.name for s in schedule.stages if s.name not in done and (not spec.stages or s.name in spec.stages)]
        console.info(f"resuming {spec.task} / {spec.method}: {len(done)} stage(s) done ({', '.join(done) or 'none'}); "
                     f"next: {', '.join(left) or 'nothing, the search is complete'}")
    new = not ledger.exists
    try:
        teacher, ids = start_search(spec, schedule, ledger)
    except BaseException as e:
        # A new search that failed before its first stage (a teacher that cannot be fetched, Ctrl-C, a server
        # that refuses) leaves no ledger: the corrected command then starts afresh instead of being refused.
        if new and ledger.exists:
            ledger.path.unlink()
        if isinstance(e, Exception) and disk_full(e):
            raise DiskFull(full_message(spec, schedule, set(done), None, e)) from None
        raise
    try:
        run_stages(spec, schedule, teacher, ledger, ids)
    except StageFailed:
        ids.outbox.do("close_run", ids.search_run_id, "FAILED")
        ids.outbox.flush()
        raise
    except KeyboardInterrupt:
        interrupted(ledger, ids)
        raise
    except Exception as e:
        if not disk_full(e):
            raise
        finished = {s.name for s in schedule.stages if ledger.done(s.name)}
        raise DiskFull(full_message(spec, schedule, finished, teacher, e)) from None
    return finish(spec, schedule, ledger, ids)


def run_stages(spec: SearchSpec, schedule: Schedule, teacher: str, ledger: Ledger, ids: MlflowIds) -> None:
    """Each stage of the schedule not done before, in order; a budget that cannot pay for the next stage
    ends the search there."""
    rows = train_rows(spec, schedule)
    try:
        for stage in schedule.stages:
            if spec.stages and stage.name not in spec.stages:
                continue
            if ledger.done(stage.name):
                console.info(f"stage {stage.name}: done before, winner kept")
                continue
            if stage.prepare == "memory":
                console.info(f"stage {stage.name}: building the teacher memory")
                build_memory(spec, schedule, stage, teacher, ledger)
            else:
                run_stage(spec, schedule, stage, teacher, ledger, ids, rows)
                if ledger.records()[stage.name].get("trials"):  # a skipped stage said whose winner it kept
                    console.info(stage_line(spec, stage.name, ledger.records()[stage.name]))
            failpoints.reached("between-stages")
    except BudgetSpent as e:
        left = [s.name for s in schedule.stages if not ledger.done(s.name) and not s.prepare]
        for name in left:
            ledger.stage(name).update(status="not run", skipped="the budget is spent")
        ledger.save()
        console.info(f"budget spent: {e}; not run: {', '.join(left)}")


def finish(spec: SearchSpec, schedule: Schedule, ledger: Ledger, ids: MlflowIds) -> Finished:
    """The search's best student registered, its budget's account, its MLflow run closed."""
    register_best(spec, schedule, ledger, ids.outbox)
    if spec.fresh_seeds and ledger.data.get("best") and \
            (ledger.data.get("fresh") or {}).get("seeds") != fresh_seed_list(spec.fresh_seeds):
        run_fresh(spec, schedule, ledger, ids.outbox, ids.search_run_id, ids.experiment_id)
    if ledger.data.get("budget"):
        ledger.data["budget"]["spent"] = budget.spent_of(ledger.records())
        ledger.save()
        console.info(budget.closing_line(ledger.data["budget"]))
    ids.outbox.do("close_run", ids.search_run_id, "FINISHED")
    ids.outbox.flush()
    return Finished(ledger, ids.outbox.summary())


def register_best(spec: SearchSpec, schedule: Schedule, ledger: Ledger, outbox: Outbox) -> None:
    """The search's best student (of every stage it ran) in the ledger and under the registry alias `best`."""
    found = search_best(ledger.records(), schedule)
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

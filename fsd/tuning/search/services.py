"""What a search and a comparison need of Ray and MLflow before and around their Tune experiments: the
services started quietly (once per process), an experiment opened or restored, and a Ctrl-C that marks the
open runs KILLED. Kept apart from the stage loop (runner.py, stage.py), which `--compare` does not use."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, NamedTuple

import ray
from ray import tune

from fsd.logs import console
from fsd.tuning.plan.ledger import Ledger
from fsd.tuning.plan.ranking import METRIC, MODE
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.search import orphans
from fsd.tuning.search.stage_progress import quiet_services
from fsd.tuning.search.trainable import train_trial
from fsd.tuning.search.unreported import remove_unreported
from fsd.tuning.tracking.outbox import Outbox

logger = logging.getLogger("fsd")


class MlflowIds(NamedTuple):
    """Where a search's records go: its MLflow experiment, its parent run, and the outbox that sends them."""

    experiment_id: str
    search_run_id: str
    outbox: Outbox


def start_services(spec: SearchSpec, folder: str) -> None:
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
    if spec.address:  # a cluster given by --address is not this driver's: nothing of it is stopped or recorded
        if not ray.is_initialized():
            ray.init(address=spec.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.INFO if spec.verbose else logging.ERROR)
        return
    # What a killed driver of this search left is stopped first, also when this process's cluster is up (a
    # comparison runs each method's search on one cluster).
    if ray.is_initialized():
        orphans.clean(folder)
    else:
        orphans.clean_and_mark(folder)  # the token is on disk before ray.init: a kill there still finds them
        # "local", not None: with None Ray joins the last `ray start` cluster it finds recorded in its temp
        # folder, a dead one too (a kill -9 leaves the record), where the user asked for a cluster of its own.
        # It lives on the loopback address: it needs no route to the outside.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
                 logging_level=logging.INFO if spec.verbose else logging.ERROR)
    orphans.record(folder)


def open_tuner(spec: SearchSpec, storage: str, name: str, trainable, param_space: dict[str, Any],
               tune_config: tune.TuneConfig, callbacks: list[tune.Callback]) -> tune.Tuner:
    """The Ray experiment `storage/name`: restored when a killed driver left it (its finished trials are not
    run again, errored ones are), else a new one that keeps each trial's best checkpoint by METRIC."""
    exp_dir = os.path.join(storage, name)
    if restorable(exp_dir):
        try:
            return tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True)
        except (ImportError, AttributeError) as e:
            # Ray pickled the experiment's scheduler and callbacks by module path: a stage interrupted under an
            # earlier fsd-tune whose modules moved cannot be restored. It is set aside and runs afresh.
            aside = f"{exp_dir}.unrestorable-{int(time.time())}"
            os.rename(exp_dir, aside)
            console.info(f"{name}: the interrupted experiment cannot be restored by this version of fsd-tune "
                         f"({type(e).__name__}: {e}); it is kept in {aside} and the stage runs afresh")
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
    none left, the stage starts afresh, its trials' checkpoints being all that the cut file could name. A
    checkpoint folder no result names is removed (`unreported`)."""
    for state in Path(exp_dir).glob("experiment_state-*.json"):
        try:
            json.loads(state.read_text())
        except (ValueError, UnicodeDecodeError):
            state.rename(state.with_name(state.name + ".unreadable"))
            logger.warning("%s does not parse (cut short by a kill or a full disk): set aside", state)
    gone = remove_unreported(Path(exp_dir))
    if gone:
        console.info(f"{Path(exp_dir).name}: removed {len(gone)} checkpoint folder(s) that a full disk or a kill cut "
                     "short before Ray took them; their trials go on from their last whole checkpoint")
    return tune.Tuner.can_restore(exp_dir) and any(Path(exp_dir).glob("experiment_state-*.json"))


def finished_trials(exp_dir: str) -> int | None:
    """How many trials of an interrupted Ray experiment had finished, or None when there is none to restore."""
    if not restorable(exp_dir):
        return None
    return sum(1 for t in tune.ExperimentAnalysis(exp_dir).trials if t.status == "TERMINATED")


def trainable_for(spec: SearchSpec, base: dict[str, Any]):
    """The trial function with the stage's shared values and its resource share (fractions of a GPU pack
    several trials on one device; Ray only counts, the trials share its memory)."""
    return tune.with_resources(tune.with_parameters(train_trial, base=base),
                               {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})


def best_checkpoint(result):
    """A trial's best checkpoint, or None (a trial that failed before its first epoch has none: Ray raises)."""
    try:
        return result.get_best_checkpoint(METRIC, MODE)
    except RuntimeError:
        return None


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

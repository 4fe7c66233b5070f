"""What a search prints while it runs: one line per finished or failed trial and a heartbeat while trials run
(trials done of the stage's, running, stopped early, failed, the best score so far and its point, elapsed
and estimated time left), instead of Ray's and MLflow's own console output, which `--verbose` brings back."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import ray._private.worker
from ray.tune import Callback

from fsd.logs import console
from fsd.metrics import BUDGET, SAMPLES, reached_budget
from fsd.progress import format_duration
from fsd.tuning.plan.ranking import METRIC
from search_spaces.joint import expand

HEARTBEAT_S = 60.0  # a line at least this often while a stage's trials run
# What Ray's error says when a trial's process (its worker, its node) was lost rather than raised: its actor
# errors' messages all begin "The actor ..." (dead, died, unavailable).
WORKER_LOST = ("The actor ", "ActorDiedError", "NodeDiedError", "ActorUnavailableError")
QUIET_LOGGERS = ("ray", "mlflow", "alembic")


def quiet_services(verbose: bool) -> None:
    """Ray's experiment boxes, TensorBoard hints and INFO lines, and MLflow's INFO and warnings, off unless
    `verbose` (what goes wrong reaches the user through this module's lines, the outbox and the errors)."""
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0; the new one boxes
    # A tracking server makes MLflow print two "View run/experiment at" lines for every run it closes.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # A failing trial's traceback is logged by Ray at ERROR; the line below names it and where it is.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    # MLflow's SQL store logs each database error before it raises it; the search's own line says what failed.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # Ray's driver prints the raylet's messages (a worker killed, a node lost) to stdout from a thread of its own
    # whatever log_to_driver says, in a long coloured line; on_trial_recover says the same in one line. Ray's
    # only switch for that printer is this module flag (its debugger sets it the same way).
    ray._private.worker._worker_logs_enabled = False


class StageProgress(Callback):
    """Lines about one stage's trials on the driver's console.

    Everything shown is read from the trials Ray passes in, so a restored stage (whose callbacks Ray
    unpickles) counts the trials that finished before the kill too.
    """

    def __init__(self, stage: str, total: int, params: tuple[str, ...], halving: bool,
                 heartbeat_s: float = HEARTBEAT_S):
        self.stage, self.total, self.params, self.halving = stage, total, params, halving
        self.heartbeat_s = heartbeat_s
        self.start = self.last = time.monotonic()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.start = self.last = time.monotonic()  # a restored stage: time counts from the restore

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        samples, budget = result.get(SAMPLES), result.get(BUDGET)
        how = ""
        if samples is not None and budget and samples < budget:
            how = f", stopped early at {int(samples):,} of {int(budget):,} samples"
        self._say(f"trial {self._point(trial)}: {_score(_best(trial))}{how}", trials, {trial.trial_id: "TERMINATED"})

    def on_trial_error(self, iteration, trials, trial, **info):
        where = trial.error_file or trial.path or "its Ray trial folder"
        self._say(f"trial {self._point(trial)} failed: {_last_line(trial.error_file)} (traceback: {where})", trials,
                  {trial.trial_id: "ERROR"})

    def on_trial_recover(self, iteration, trials, trial, **info):
        # Its worker died (a lost node, a killed process): Ray starts it again from its last checkpoint.
        # Ray retries a trial that raised too (within --max-failures); only a lost process is a lost worker.
        text = _error_text(trial.error_file).split("Failure # ")[-1]  # Ray appends one section per failure
        what = "lost its worker" if any(mark in text for mark in WORKER_LOST) else "failed"
        why = last_line(text, "no error text").split(" Worker exit detail:")[0]  # Ray's guesses at causes follow
        self._say(f"trial {self._point(trial)} {what} ({why}); retried from its last checkpoint", trials)

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last >= self.heartbeat_s and any(t.status == "RUNNING" for t in trials):
            self._say("", trials)

    def status(self, trials: list, ended: dict[str, str] | None = None) -> str:
        """`3/8 done, 2 running, 1 stopped early, 0 failed; best 78.10 (alpha=0.5, ...); 4 min 12 s, ~6 min left`.
        `ended`: trial id -> the status a trial Ray is ending right now will have (Ray sets it after the
        callbacks)."""
        ended = ended or {}
        states = {t.trial_id: ended.get(t.trial_id, t.status) for t in trials}
        finished = [t for t in trials if states[t.trial_id] == "TERMINATED"]
        stopped = sum(1 for t in finished if _stopped_early(t))
        failed = sum(1 for t in trials if states[t.trial_id] == "ERROR")
        running = sum(1 for t in trials if states[t.trial_id] == "RUNNING")
        text = (f"{len(finished) + failed}/{self.total} done, {running} running, {stopped} stopped early, "
                f"{failed} failed")
        scored = [t for t in trials if _best(t) is not None]
        if scored:
            best = max(scored, key=_best)
            text += f"; best {_score(_best(best))} ({self._point(best)})"
        elapsed = time.monotonic() - self.start
        text += f"; {format_duration(elapsed)}"
        left = self._left(trials, states, elapsed)
        if left is not None:
            text += f", {'at most ' if self.halving else '~'}{format_duration(left)} left"
        return text

    def _left(self, trials: list, states: dict[str, str], elapsed: float) -> float | None:
        """Seconds left if every trial not yet ended runs to its budget at the rate seen so far (halving stops
        some early: then an upper bound)."""
        results = [t.last_result or {} for t in trials]
        budget = max((float(r.get(BUDGET, 0.0)) for r in results), default=0.0)
        done = sum(float(r.get(SAMPLES, 0.0)) for r in results)
        if not budget or done <= 0 or elapsed <= 0:
            return None
        open_ = [r for t, r in zip(trials, results, strict=True) if states[t.trial_id] not in ("TERMINATED", "ERROR")]
        remaining = sum(budget - float(r.get(SAMPLES, 0.0)) for r in open_)
        remaining += max(0, self.total - len(trials)) * budget
        return remaining / (done / elapsed)

    def _point(self, trial) -> str:
        values = expand({k: v for k, v in trial.config.items() if k in self.params})
        return ", ".join(f"{k}={_short(v)}" for k, v in values.items()) or trial.trial_id

    def _say(self, event: str, trials: list, ended: dict[str, str] | None = None) -> None:
        self.last = time.monotonic()
        head = f"stage {self.stage}: " + (f"{event} | " if event else "")
        console.info(head + self.status(trials, ended))


def _best(trial) -> float | None:
    best = (trial.metric_analysis or {}).get(METRIC, {}).get("max")
    return None if best is None else float(best)


def _stopped_early(trial) -> bool:
    result = trial.last_result or {}
    return bool(result.get(BUDGET)) and not reached_budget(result)


def _score(value: float | None) -> str:
    return "no score" if value is None else f"{100 * value:.2f}"


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def last_line(text: str, fallback: str, limit: int = 300) -> str:
    """The line of an error's text that says what went wrong (its last), or `fallback`."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else fallback


def _error_text(path: str | None) -> str:
    """A trial's error file, or "" when it has none."""
    try:
        return Path(path).read_text() if path else ""
    except OSError:
        return ""


def _last_line(path: str | None) -> str:
    """The line of a trial's error file that says what went wrong."""
    return last_line(_error_text(path), "no error text")

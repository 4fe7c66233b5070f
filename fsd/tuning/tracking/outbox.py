"""MLflow writes that survive a lost tracking server: what cannot be sent is queued on disk, in order,
and sent when the server answers again (tried at most every `RETRY_S` seconds, at the end of the search,
and on --resume). Trials never wait for the server: the driver only appends to the queue.

Each write is a named operation of `fsd.tuning.tracking.records.OPS` with JSON arguments. An operation that
creates a run while the server is away returns a placeholder id (`queued:<uuid>`) that later operations use;
the real id replaces it when the queue is sent, and the placeholder -> id map stays in the queue file so a
ledger holding a placeholder still finds its run after a restart.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fsd.storage import write_text

log = logging.getLogger("fsd")
PLACEHOLDER = "queued:"
RETRY_S = 30.0
SLICE_S = 3.0  # the most a record written during a search waits for the backlog sent before it


def reachable(uri: str, timeout: float = 3.0) -> bool:
    """A tracking server answers its health check (non-HTTP stores are local: always reachable)."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


class Outbox:
    """`do(op, *args)` runs an MLflow operation now, or queues it when the server is unreachable."""

    def __init__(self, uri: str, path: str | os.PathLike, ops: dict[str, Callable[..., Any]]):
        self.uri, self.path, self.ops = uri, Path(path), ops
        self.next_try = 0.0
        self.sent_late = 0  # operations sent after having been queued (for the summary)
        self.dropped: list[str] = []  # operations the server refused (not an outage): named in the summary

    # ---------------------------------------------------------------------------------------- the queue file
    def _load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"queue": [], "ids": {}}
        return json.loads(self.path.read_text())

    def _save(self, state: dict[str, Any]) -> None:
        if not state["queue"] and not state["ids"]:
            self.path.unlink(missing_ok=True)
            return
        write_text(self.path, json.dumps(state))

    @property
    def pending(self) -> int:
        return len(self._load()["queue"])

    # ---------------------------------------------------------------------------------------- operations
    def _resolve(self, value: Any, ids: dict[str, str]) -> Any:
        if isinstance(value, str) and value.startswith(PLACEHOLDER):
            return ids.get(value, value)
        if isinstance(value, list):
            return [self._resolve(v, ids) for v in value]
        if isinstance(value, dict):
            return {k: self._resolve(v, ids) for k, v in value.items()}
        return value

    def do(self, op: str, *args: Any) -> Any:
        """Run `op` now if nothing is queued before it and the server answers; else queue it. Returns the
        operation's result, or a placeholder id for a queued run creation (None for other queued ones)."""
        if self.pending and time.monotonic() >= self.next_try:
            self.flush(budget_s=SLICE_S)
        state = self._load()
        if not state["queue"]:
            args = tuple(self._resolve(list(args), state["ids"]))
            try:
                return self.ops[op](self.uri, *args)
            except Exception as e:  # noqa: BLE001 - an unreachable server raises many kinds of errors
                if reachable(self.uri):
                    raise
                log.warning("MLflow server %s unreachable (%s): queuing its records in %s", self.uri,
                            type(e).__name__, self.path)
                self.next_try = time.monotonic() + RETRY_S
                state = self._load()
        placeholder = PLACEHOLDER + uuid.uuid4().hex
        state["queue"].append({"op": op, "args": list(args), "placeholder": placeholder})
        self._save(state)
        return placeholder if op in CREATES else None

    def flush(self, budget_s: float | None = None) -> int:
        """Send the queue in order while the server answers; returns how many operations are still queued.

        With `budget_s`, no operation is started after that many seconds: a long queue sent while trials
        run goes out in slices, one per later `do`, so the driver never stops for the whole backlog."""
        state = self._load()
        if not state["queue"]:
            return 0
        if not reachable(self.uri):
            self.next_try = time.monotonic() + RETRY_S
            return len(state["queue"])
        started = time.monotonic()
        while state["queue"]:
            if budget_s is not None and time.monotonic() - started >= budget_s:
                self.next_try = time.monotonic()  # the server answers: the next `do` sends the next slice
                break
            entry = state["queue"][0]
            args = self._resolve(entry["args"], state["ids"])
            try:
                result = self.ops[entry["op"]](self.uri, *args)
            except Exception as e:  # noqa: BLE001
                if not reachable(self.uri):
                    self.next_try = time.monotonic() + RETRY_S
                    break
                self.dropped.append(f"{entry['op']}: {type(e).__name__}: {str(e)[:200]}")
                result = None
            if entry["op"] in CREATES and isinstance(result, str):
                state["ids"][entry["placeholder"]] = result
            state["queue"].pop(0)
            self.sent_late += 1
            self._save(state)
        self._save(state)
        return len(state["queue"])

    def resolve(self, run_id: str | None) -> str | None:
        """The real id of a run created through the queue (or the id itself)."""
        return self._resolve(run_id, self._load()["ids"])

    def summary(self) -> str | None:
        """One line for the end of a search, or None when every record went through at once."""
        left = self.pending
        if left:
            return (f"MLflow: {left} record(s) could not be sent to {self.uri} (server unreachable); they are kept "
                    f"in {self.path} and sent when you run again with --resume")
        parts = []
        if self.sent_late:
            parts.append(f"{self.sent_late} record(s) were queued while {self.uri} was unreachable and sent later")
        if self.dropped:
            parts.append(f"{len(self.dropped)} refused by the server (first: {self.dropped[0]})")
        return "MLflow: " + "; ".join(parts) if parts else None


CREATES = {"open_run", "trial_run"}  # operations whose result is a run id

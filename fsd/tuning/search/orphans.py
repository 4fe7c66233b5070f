"""Ray processes a killed driver left behind, found and stopped by the next start of the same search.

A driver killed with SIGKILL cannot shut down the local cluster its `ray.init` started. Ray's GCS and raylet
follow it, but the processes the raylet started (the dashboard and runtime-env agents, trial workers still
training) live on, holding memory and CPU. Ray keeps no record of their pids on disk that outlives them
reliably (its session folder names log files, not live processes), and looking them up by name would stop
other users' Ray too. So the driver marks its own cluster and records it in the search folder:

- before `ray.init` it puts a fresh token in its environment (`FSD_TUNE_RAY=<token>`), which every process of
  the local cluster inherits, trial workers started later included, and writes it to `ray_token`;
- after `ray.init`, and again before each stage's trials, it writes the pids of the cluster's processes alive
  then, each with its start time, to `ray_pids.json` (a pid with another start time is another process).

The next start of that search (which holds the search's lock, so no live driver owns the record) stops the
recorded processes that are still the same ones and every process whose environment carries the recorded
token: SIGTERM, then SIGKILL for what is left after a few seconds (Ray's agents ignore SIGTERM for longer).

Linux only (`/proc`); elsewhere nothing is found, and docs/faults.md says so.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

from fsd.layout import RAY_PIDS, RAY_TOKEN
from fsd.logs import console
from fsd.storage import write_text

ENV = "FSD_TUNE_RAY"
RECORD = RAY_TOKEN  # in the search folder
PIDS = RAY_PIDS  # in the search folder: {"token": ..., "pids": {pid: start time in clock ticks}}
GRACE_S = 5.0


def marked(token: str) -> list[int]:
    """The pids of live processes (other than this one) whose environment carries `FSD_TUNE_RAY=<token>`."""
    mark = f"{ENV}={token}".encode()
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or another user's
            continue
    return pids


def started(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot, /proc/<pid>/stat's 22nd field), or None if gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def stop(pids: list[int], grace_s: float = GRACE_S) -> None:
    """SIGTERM, then SIGKILL for whatever is still there after `grace_s` seconds."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited; only its parent's wait is missing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def left_running(folder: str | os.PathLike) -> list[int]:
    """The live processes of the cluster recorded in `folder`: its recorded pids that are still the same
    processes, and every process carrying its token. None of this process's own cluster (a comparison runs
    several searches on one cluster)."""
    path = Path(folder) / RECORD
    token = path.read_text().strip() if path.is_file() else ""
    if not token or token == os.environ.get(ENV):
        return []
    found = set(marked(token))
    pids = Path(folder) / PIDS
    if pids.is_file():
        saved = json.loads(pids.read_text())
        if saved.get("token") == token:
            found |= {int(p) for p, start in saved["pids"].items() if start is not None and started(int(p)) == start}
    found.discard(os.getpid())
    return sorted(found)


def clean(folder: str | os.PathLike) -> list[int]:
    """Stop what an earlier, dead driver of the search in `folder` left running, saying so in one line.

    Call it with the search's lock held. Returns the pids stopped."""
    pids = left_running(folder)
    if pids:
        console.info(f"stopping {len(pids)} Ray process(es) that a killed driver of this search left running "
                     f"(pids {', '.join(map(str, pids))})")
        stop(pids)
    return pids


def mark() -> str:
    """A fresh token in this process's environment, for the local cluster `ray.init` starts next to inherit."""
    token = uuid.uuid4().hex
    os.environ[ENV] = token
    return token


def record(folder: str | os.PathLike) -> None:
    """This process's cluster (its token, and the pids that carry it now, with their start times) in `folder`;
    nothing when this process started no marked cluster."""
    token = os.environ.get(ENV)
    if not token:
        return
    pids = {str(pid): started(pid) for pid in sorted(marked(token))}
    write_text(Path(folder) / RECORD, token + "\n")
    write_text(Path(folder) / PIDS, json.dumps({"token": token, "pids": pids}, sort_keys=True))


def clean_and_mark(folder: str | os.PathLike) -> str:
    """Stop what an earlier driver of the search in `folder` left running, then mark this driver's cluster
    (`mark`) and write its token there. Call it with the search's lock held, just before `ray.init`.

    Returns:
        The new token.
    """
    clean(folder)
    token = mark()
    write_text(Path(folder) / RECORD, token + "\n")
    return token

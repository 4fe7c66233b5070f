"""Ray processes a killed driver left behind, found and stopped by the next start of the same search.

A driver killed with SIGKILL cannot shut down the local cluster its `ray.init` started. Ray's GCS and raylet
follow it, but the processes the raylet started (the dashboard and runtime-env agents, trial workers still
training) live on, holding memory and CPU. Ray keeps no record of their pids on disk that outlives them
reliably (its session folder names log files, not live processes), and looking them up by name would stop
other users' Ray too. So the driver marks its own cluster instead: before `ray.init` it puts a fresh token
in its environment (`FSD_TUNE_RAY=<token>`), every process of the local cluster inherits it, and the token
is written into the search folder. The next start of that search (which holds the search's lock, so no
live driver owns the token) stops exactly the processes whose environment carries the recorded token.

Linux only (`/proc/<pid>/environ`); elsewhere nothing is found, and docs/faults.md says so.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from fsd.logs import console
from fsd.storage import write_text

ENV = "FSD_TUNE_RAY"
RECORD = "ray_token"  # in the search folder
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


def clean_and_mark(folder: str | os.PathLike) -> str:
    """Stop what an earlier driver of the search in `folder` left running, then mark this driver's cluster.

    Call it with the search's lock held, just before `ray.init` starts a local cluster.

    Returns:
        The new token, also set in this process's environment for the cluster to inherit.
    """
    record = Path(folder) / RECORD
    if record.is_file():
        old = record.read_text().strip()
        pids = marked(old) if old else []
        if pids:
            console.info(f"stopping {len(pids)} Ray process(es) that a killed driver of this search left running "
                f"(pids {', '.join(map(str, sorted(pids)))})")
            stop(pids)
    token = uuid.uuid4().hex
    os.environ[ENV] = token
    write_text(record, token + "\n")
    return token

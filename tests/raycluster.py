"""The suite's own Ray: every cluster a test starts (`ray.init`, `ray start`, a search's driver) lives under
one temp folder (`RAY_TMPDIR`, set for the whole session in conftest.py), and is stopped by the processes
that carry that folder in their environment, never by `ray stop`, which stops every Ray on the machine:
another suite's, or a long search running beside the tests.

A helper that is not Ray's (an `mlflow server` a test starts) is started with `outside_env()`, so that
stopping the suite's Ray leaves it running."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def outside_env() -> dict[str, str]:
    """This process's environment without the suite's Ray mark: for a server `stop` must not take down."""
    return {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}


def processes(title: bytes, root: str | None = None) -> list[int]:
    """The pids of this session's Ray processes (`RAY_TMPDIR=<root>`) whose command line starts with `title`
    (a Ray worker names itself by its task: `ray::ImplicitFunc.train` is a Tune trial's)."""
    mark = f"RAY_TMPDIR={root or os.environ['RAY_TMPDIR']}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title) \
                    and mark in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def stop(root: str | None = None) -> int:
    """SIGKILL every process started with `RAY_TMPDIR=<root>` (default: this session's); how many there were.

    Also drops Ray's record of the last `ray start` cluster (`ray stop` drops it too): a later `ray.init()`
    without an address would try to join the dead cluster it names."""
    root = root or os.environ["RAY_TMPDIR"]
    mark = f"RAY_TMPDIR={root}".encode()
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
        except (OSError, ProcessLookupError):  # gone meanwhile, or not ours to read
            continue
    Path(root, "ray", "ray_current_cluster").unlink(missing_ok=True)
    return killed

"""One search per folder: the driver holds an advisory lock on `<search folder>/.lock` for its whole life.

`flock` locks belong to the open file, so the kernel drops the lock when the driver dies, however it dies:
a SIGKILLed driver never leaves a stale lock behind. Python opens files non-inheritable, so the Ray
processes the driver starts do not keep the lock alive after it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fsd.layout import LOCK


class Busy(Exception):
    """Another process holds the search folder's lock; the message says which and what to do."""

    def __init__(self, folder: str | os.PathLike, pid: int | None):
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"another fsd-tune search is running in {folder} ({who}): wait for it or use another "
                         "--storage")
        self.pid = pid


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def holder(folder: str | os.PathLike) -> int | None:
    """Whether a live process holds the lock of `folder`, without writing anything.

    Returns:
        None when the folder is free; else the holder's pid (0 when it cannot be read).
    """
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or none we may read): no search ever held it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _pid(path) or 0
    finally:
        os.close(fd)  # also releases the shared lock taken by the probe
    return None


@contextmanager
def held(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of `folder` (created if needed) until the block ends or the process dies.

    Raises:
        Busy: another process holds it.
    """
    path = Path(folder) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(folder, _pid(path)) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()  # a pid left in a free lock would name the wrong process
            fcntl.flock(f, fcntl.LOCK_UN)

"""Named points where the kill harness (tests/test_kill_harness.py) SIGKILLs a search's driver.

`reached(name)` does nothing unless the environment variable FSD_KILL_AT equals `name` (or `name:N`: the
N-th time the point is reached); it is how a test stops a process at an exact moment (mid teacher
fine-tuning, mid cache pass, between stages, after the 10th trial result, ...) rather than after a guessed
delay.
"""

from __future__ import annotations

import os
import signal

ENV = "FSD_KILL_AT"
POINTS = ("teacher-epoch", "cache-pass", "memory-fit", "between-stages", "mid-stage", "log-model")


_counts: dict[str, int] = {}


def reached(name: str) -> None:
    assert name in POINTS, name
    point, _, nth = os.environ.get(ENV, "").partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)

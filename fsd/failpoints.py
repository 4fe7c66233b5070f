"""Named points where the kill harness (tests/test_kill_harness.py) SIGKILLs a search's driver.

`reached(name)` does nothing unless the environment variable FSD_KILL_AT equals `name`; it is how a test
stops a process at an exact moment (mid teacher fine-tuning, mid cache pass, between stages, ...) rather
than after a guessed delay.
"""

from __future__ import annotations

import os
import signal

ENV = "FSD_KILL_AT"
POINTS = ("teacher-epoch", "cache-pass", "memory-fit", "between-stages", "mid-stage", "log-model")


def reached(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)

"""What the command lines print: the console (the narrative a person reads while a search or a run goes on:
progress, stage and teacher lines), kept apart from the results the commands print themselves, and the
libraries' own progress bars and load reports kept out of both."""

from __future__ import annotations

import logging
import os
import sys

# Every narrative line goes through this one logger; `show_console` sends it to stderr, so that stdout holds
# only a command's results (`> results.md` keeps the summary table). A program that uses fsd as a library
# chooses where it goes (or leaves it silent) with logging's own configuration.
console = logging.getLogger("fsd.console")


class _Stderr(logging.Handler):
    """Plain lines on whatever sys.stderr is when a line is written (pytest's capture, a redirect)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def show_console(quiet: bool = False) -> None:
    """The console's lines on stderr as they are written, once per process (the command lines call it);
    `quiet`: its warnings only, and no progress (`narrating`)."""
    if not any(isinstance(h, _Stderr) for h in console.handlers):
        console.addHandler(_Stderr())
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.propagate = False


def narrating() -> bool:
    """Whether progress may be shown: not after a command line's --quiet. A library user who never called
    `show_console` keeps the progress bars `fsd.progress` shows by default."""
    # Only the command lines' own handler says --quiet: another (a test's log capture, a library user's) does not.
    return not any(isinstance(h, _Stderr) for h in console.handlers) or console.isEnabledFor(logging.INFO)


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of `error`'s message (its type's name when it has none), cut to `limit` characters:
    what an `error:` line quotes of an exception, which may carry a traceback or a whole HTTP body."""
    text = str(error).strip()
    return (text.splitlines()[0].strip() if text else type(error).__name__)[:limit]


def quiet_libraries() -> None:
    """Progress bars and load reports of datasets/transformers drown the per-epoch lines of a CLI. A log
    level the user set (TRANSFORMERS_VERBOSITY, HF_HUB_VERBOSITY) is theirs, and stays."""
    import datasets
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    if not os.environ.get("TRANSFORMERS_VERBOSITY"):
        hf_logging.set_verbosity_error()
    if not os.environ.get("HF_HUB_VERBOSITY"):
        hub_logging.set_verbosity_error()  # its download retries ("Trying to resume download...") spoil a line

"""What the command lines print: the console (what a person reads of a search or a run: progress lines, stage
lines, the summary) and the libraries' own progress bars and load reports kept out of it."""

from __future__ import annotations

import logging
import sys

# Every line a person reads goes through this one logger; `show_console` sends it to stdout. A program that
# uses fsd as a library chooses where it goes (or leaves it silent) with logging's own configuration.
console = logging.getLogger("fsd.console")


class _Stdout(logging.Handler):
    """Plain lines on whatever sys.stdout is when a line is written (pytest's capture, a redirect)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout, flush=True)


def show_console() -> None:
    """The console's lines on stdout as they are written, once per process (the command lines call it)."""
    if not any(isinstance(h, _Stdout) for h in console.handlers):
        console.addHandler(_Stdout())
    console.setLevel(logging.INFO)
    console.propagate = False


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of `error`'s message (its type's name when it has none), cut to `limit` characters:
    what an `error:` line quotes of an exception, which may carry a traceback or a whole HTTP body."""
    text = str(error).strip()
    return (text.splitlines()[0].strip() if text else type(error).__name__)[:limit]


def quiet_libraries() -> None:
    """Progress bars and load reports of datasets/transformers drown the per-epoch lines of a CLI."""
    import datasets
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()  # its download retries ("Trying to resume download...") would spoil a line

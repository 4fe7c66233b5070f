"""Progress of long work on the console: a bar on a terminal, plain lines anywhere else (a file, a pipe, a
log), so captured output stays readable and never fills with carriage returns."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from fsd.logs import narrating

PLAIN_EVERY_S = 30.0  # away from a terminal: a line at most this often, and one at the end


class Progress:
    """Progress over `total` units of `unit` (e.g. training samples), with their rate.

    On a terminal it is a tqdm bar; elsewhere a line `<desc>: <done>/<total> <unit>s (<pct>%), <rate>/s,
    <elapsed>` at most every `every_s` seconds and when it closes (unless the last line said the same count).
    Disabled, or after a command line's --quiet (`fsd.logs.narrating`), it prints nothing.
    """

    def __init__(self, total: int, desc: str, unit: str = "sample", stream: TextIO | None = None,
                 every_s: float = PLAIN_EVERY_S, enabled: bool = True):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.enabled = every_s, enabled and narrating()
        self.done, self.start = 0, time.perf_counter()
        self._last_line = self.start
        self._printed = None  # the count the last plain line showed: the closing line is not said twice
        self._closed = False
        self._bar = None
        if self.enabled and _is_terminal(self.stream):
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=self.stream, leave=False,
                             dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self._closed:
            return
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.perf_counter() - self._last_line >= self.every_s:
            self._print_line()

    def close(self) -> None:
        """The final line (or the bar's end); later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._printed != self.done:
            self._print_line()

    def line(self) -> str:
        """The plain line for where the work stands."""
        seconds = time.perf_counter() - self.start
        rate = self.done / seconds if seconds > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return (f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}s{share}, {rate:,.1f} {self.unit}s/s, "
                f"{format_duration(seconds)}")

    def _print_line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last_line, self._printed = time.perf_counter(), self.done

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `2 h 07 min`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())

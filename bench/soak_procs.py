"""The processes bench/soak.py runs and watches: the search's driver with its output timestamped into one log,
the Ray workers that run trials, what is left of the soak's Ray at its end, and a disk filled by another
writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]
import raycluster  # noqa: E402  the test suite's way of finding one Ray's processes: by its RAY_TMPDIR


class Log:
    """Timestamped lines (seconds since the soak started) to the log file; the soak's own also to stdout."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file, self.t0, self.lock = path.open("a", buffering=1), time.monotonic(), threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, who: str, text: str, echo: bool = False) -> None:
        line = f"{self.now():8.1f} {who}| {text}"
        with self.lock:
            self.file.write(line + "\n")
        if echo:
            print(line, flush=True)


class Driver:
    """One run of tune_main.py; its output is read as it comes, timestamped, into the log."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Log, who: str):
        self.log, self.who, self.started, self.lines = log, who, log.now(), []
        self.ended: float | None = None
        log("soak", f"{who}: python tune_main.py {' '.join(argv)}")
        # Ctrl-C's default meaning: a soak started in the background would hand its children SIGINT ignored.
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tune_main.py"), *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((self.log.now(), line.rstrip()))
            self.log(self.who, line.rstrip())

    def wait(self, timeout: float) -> int | None:
        """Its exit code, or None if it is still running after `timeout` seconds."""
        try:
            rc = self.proc.wait(timeout=max(timeout, 0.01))
        except subprocess.TimeoutExpired:
            return None
        self.reader.join(timeout=5)
        self.ended = self.ended or self.log.now()
        return rc

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def last_line(self) -> str:
        return self.lines[-1][1][:200] if self.lines else ""


def carries(pid: int, mark: str) -> bool:
    """Whether process `pid` has `mark` (NAME=value) in its environment."""
    try:
        return mark.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def trial_workers(ray_root: str, token: str) -> list[int]:
    """Ray workers running a trial (`ray::ImplicitFunc...`) in the cluster a driver marked with `token`
    (FSD_TUNE_RAY), so that a worker a killed driver left behind is not taken for one of the live driver's."""
    return [p for p in raycluster.processes(b"ray::ImplicitFunc", ray_root) if carries(p, f"FSD_TUNE_RAY={token}")]


def leftovers(ray_root: str, grace_s: float = 30.0) -> list[str]:
    """Processes of the Ray under `ray_root` still alive `grace_s` seconds after the last driver ended (Ray's
    own shut-down takes a few), each as `pid command`; then stopped, so that the soak leaves none."""
    deadline = time.monotonic() + grace_s
    while (pids := raycluster.processes(b"", ray_root)) and time.monotonic() < deadline:
        time.sleep(1)
    found = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found.append(f"{pid} {command[:120]}")
    raycluster.stop(ray_root)
    return found


def fill(folder: Path, leave: int) -> int:
    """Fill the filesystem of `folder` with one file until `leave` bytes are free (as another writer would);
    the bytes written."""
    stat = os.statvfs(folder)
    size = max(0, stat.f_bavail * stat.f_frsize - leave)
    chunk = 2**24
    written = 0
    try:
        with (folder / "someone-elses-file").open("wb") as f:
            while written < size:
                written += f.write(b"\0" * min(chunk, size - written))
    except OSError:  # the search wrote meanwhile: the disk is as full as it gets
        pass
    return written

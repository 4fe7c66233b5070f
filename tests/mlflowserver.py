"""A real `mlflow server` on 127.0.0.1 for the tests: started (and restarted on the same port and store
after a stop), stopped; outside the suite's Ray mark, so stopping Ray leaves it running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import raycluster

from fsd.tuning.tracking.outbox import reachable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` over `<root>/server.db` and `<root>/artifacts`, on `port` (a free one by default)."""

    def __init__(self, root: str | Path, port: int | None = None):
        self.root, self.port, self.proc = Path(root), port or free_port(), None

    def start(self) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root}/server.db", "--default-artifact-root",
             str(self.root / "artifacts"), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=raycluster.outside_env(), start_new_session=True)  # its own group: its workers stop with it
        for _ in range(240):
            if reachable(self.uri, timeout=1):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start on port {self.port}")

    def stop(self) -> None:
        """SIGTERM to the server and its workers (uvicorn, the job runner), SIGKILL to what is left after 30 s
        (uvicorn's graceful shut-down once outlasted that with a search connected: the chaos soak); returns
        once none is left, so that the port is free for a restart on it."""
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:  # all gone
                break
            if self._gone(30):
                break
        self.proc.wait(30)

    def _gone(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.proc.poll()  # reaps the server itself: a zombie would still count as the group's
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.2)
        return False

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"


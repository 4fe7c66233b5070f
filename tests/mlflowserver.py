"""A real `mlflow server` on 127.0.0.1 for the tests: started (and restarted on the same port and store
after a stop), stopped; outside the suite's Ray mark, so stopping Ray leaves it running; and a gate in front of one
that makes it vanish and come back at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
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



class Gate:
    """A TCP forwarder on its own port to a server's port, that can be shut and opened at once: to a client,
    a shut gate is a server gone (connections refused, open ones reset), while a real `mlflow server` takes
    9-13 s to answer again after a restart on a loaded machine, longer than a smoke search's last stages.

    `shut()` closes the listening socket and every forwarded connection; `open()` listens again on the same
    port."""

    def __init__(self, target_port: int, port: int | None = None):
        self.target, self.port = target_port, port or free_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def open(self) -> Gate:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def shut(self) -> None:
        with self.lock:
            listener, conns, self.listener, self.conns = self.listener, self.conns, None, []
        for s in [listener, *conns]:
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # shut
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.listener is not listener:  # shut meanwhile
                    client.close()
                    server.close()
                    return
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

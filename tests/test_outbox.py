"""A lost tracking server: a real `mlflow server` is stopped while trials report; nothing blocks, the
records wait on disk in order, and they reach the server (one run per trial, FINISHED) once it is back."""

import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import raycluster
from mlflow.tracking import MlflowClient

from fsd.tuning import tracking
from fsd.tuning.outbox import Outbox, reachable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root, port):
        self.root, self.port, self.proc = root, port, None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root}/server.db", "--default-artifact-root",
             str(self.root / "artifacts"), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=raycluster.outside_env())
        for _ in range(120):
            if reachable(self.uri, timeout=1):
                return
            time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)

    @property
    def uri(self):
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    s = Server(tmp_path, _free_port())
    s.start()
    yield s
    if s.proc.poll() is None:
        s.stop()


def test_records_wait_while_the_server_is_away_and_are_sent_in_order(server, tmp_path):
    box = Outbox(server.uri, tmp_path / "search" / "mlflow_outbox.json", tracking.OPS)
    (tmp_path / "search").mkdir()
    exp = tracking.experiment_id(server.uri, "rte")
    stage = box.do("open_run", exp, None, "vkd", None, {"stage": "vkd"})
    cb = tracking.TrialTracker(server.uri, exp, stage, {"stage": "vkd"}, {"task": "rte"}, box)
    first = SimpleNamespace(trial_id="t_00000", config={"alpha": 0.2})
    second = SimpleNamespace(trial_id="t_00001", config={"alpha": 0.7})
    cb.on_trial_start(0, [], first)
    cb.on_trial_result(0, [], first, {"epoch": 1, "eval/score": 0.50, "timestamp": 1})

    server.stop()
    start = time.monotonic()
    cb.on_trial_result(0, [], first, {"epoch": 2, "eval/score": 0.55, "timestamp": 2})
    cb.on_trial_complete(0, [], first)
    cb.on_trial_start(0, [], second)  # a run created while the server is away: a placeholder id
    assert cb.run_for(second).startswith("queued:")
    cb.on_trial_result(0, [], second, {"epoch": 1, "eval/score": 0.60, "timestamp": 3})
    cb.on_trial_complete(0, [], second)
    box.do("close_run", stage, "FINISHED")
    assert time.monotonic() - start < 30  # the driver is not held up by the missing server
    assert box.pending == 6
    assert "could not be sent" in box.summary() and "--resume" in box.summary()

    # A new process (a --resume) finds the queue on disk and sends it once the server is back.
    server.start()
    again = Outbox(server.uri, tmp_path / "search" / "mlflow_outbox.json", tracking.OPS)
    assert again.flush() == 0 and again.pending == 0
    assert "queued while" in again.summary()

    client = MlflowClient(server.uri)
    runs = {r.data.tags["ray_trial_id"]: r for r in client.search_runs([exp]) if "ray_trial_id" in r.data.tags}
    assert sorted(runs) == ["t_00000", "t_00001"]
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert client.get_run(stage).info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(runs["t_00000"].info.run_id, "eval/score")] == [0.50, 0.55]
    assert [m.value for m in client.get_metric_history(runs["t_00001"].info.run_id, "eval/score")] == [0.60]
    assert runs["t_00001"].data.params["alpha"] == "0.7"
    assert runs["t_00001"].data.tags["mlflow.parentRunId"] == stage

    # A record the server refuses while it answers is an error at once, not queued for ever.
    with pytest.raises(Exception, match="(?i)run"):
        again.do("close_run", "no-such-run", "FINISHED")
    assert again.pending == 0

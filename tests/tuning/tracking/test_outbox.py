"""A lost tracking server: a real `mlflow server` is stopped while trials report; nothing blocks, the
records wait on disk in order, and they reach the server (one run per trial, FINISHED) once it is back."""

import time
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from mlflowserver import Server

from fsd.tuning.tracking import records
from fsd.tuning.tracking.outbox import Outbox


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


def test_records_wait_while_the_server_is_away_and_are_sent_in_order(server, tmp_path):
    box = Outbox(server.uri, tmp_path / "search" / "mlflow_outbox.json", records.OPS)
    (tmp_path / "search").mkdir()
    exp = records.experiment_id(server.uri, "rte")
    stage = box.do("open_run", exp, None, "vkd", None, {"stage": "vkd"})
    cb = records.TrialTracker(server.uri, exp, stage, {"stage": "vkd"}, {"task": "rte"}, box)
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
    again = Outbox(server.uri, tmp_path / "search" / "mlflow_outbox.json", records.OPS)
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


def test_a_backlog_is_sent_in_slices_while_the_search_runs_and_whole_at_the_end(tmp_path, monkeypatch):
    """A server back after an outage: each write of the search sends at most SLICE_S seconds of the backlog
    first (the driver is never held up for all of it), keeps the order, and flush() sends the rest."""
    import json

    from fsd.tuning.tracking import outbox

    monkeypatch.setattr(outbox, "SLICE_S", 1.0)
    sent = []
    ops = {"slow": lambda uri, i: (sent.append(i), time.sleep(0.3))[1]}
    path = tmp_path / "mlflow_outbox.json"
    path.write_text(json.dumps({"queue": [{"op": "slow", "args": [i], "placeholder": f"queued:{i}"}
                                          for i in range(10)], "ids": {}}))
    box = Outbox("sqlite:///unused.db", path, ops)  # a local store is always reachable
    started = time.monotonic()
    box.do("slow", 99)
    assert time.monotonic() - started < 2.5 and 2 <= len(sent) <= 5  # one slice, not the whole backlog
    assert box.pending == 10 - len(sent) + 1  # the new write waits behind what is left, in order
    box.do("slow", 100)
    assert box.flush() == 0
    assert sent == [*range(10), 99, 100] and box.sent_late == 12

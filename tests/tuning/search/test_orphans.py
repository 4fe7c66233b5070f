"""What a killed driver left running is stopped by the next start of its search, by the pids and the token the
driver recorded in the search folder, never by name (fsd/tuning/search/orphans.py). Real processes stand in for
Ray's (a Ray agent that ignores SIGTERM among them); the kill harness kills a real driver
(tests/test_kill_harness.py::test_a_driver_killed_at_the_cache_pass_leaves_no_ray_process_once_resumed)."""

import json
import signal
import subprocess
import sys

import pytest
import raycluster

from fsd.tuning.search import orphans

TOKEN, OTHER = "a" * 32, "b" * 32


def _spawn(env: dict[str, str], ignore_term: bool = False) -> subprocess.Popen:
    """A sleeping process with `env` added (and SIGTERM ignored, as Ray's agents did for 8 s)."""
    code = ("import signal, time\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
            + "print('ready', flush=True)\ntime.sleep(600)")
    env = {**{k: v for k, v in raycluster.outside_env().items() if k != orphans.ENV}, **env}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # its handler is set
    return proc


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []

    def spawn(env: dict[str, str], ignore_term: bool = False) -> subprocess.Popen:
        started.append(_spawn(env, ignore_term))
        return started[-1]

    yield spawn
    for proc in started:
        proc.kill()
        proc.wait()


def test_the_recorded_cluster_is_stopped_and_nothing_else(tmp_path, processes, console_lines, monkeypatch):
    monkeypatch.delenv(orphans.ENV, raising=False)
    agent = processes({orphans.ENV: TOKEN}, ignore_term=True)  # found by its token; SIGKILLed after the grace
    recorded = processes({})  # found by its recorded pid and start time
    reused = processes({})  # its pid recorded with another start time: that pid now names another process
    other = processes({orphans.ENV: OTHER})  # another search's cluster
    (tmp_path / orphans.RECORD).write_text(TOKEN + "\n")
    (tmp_path / orphans.PIDS).write_text(json.dumps({"token": TOKEN, "pids": {
        str(recorded.pid): orphans.started(recorded.pid), str(reused.pid): orphans.started(reused.pid) - 1}}))
    assert orphans.clean(tmp_path) == sorted([agent.pid, recorded.pid])
    assert agent.wait(timeout=5) == -signal.SIGKILL and recorded.wait(timeout=5) == -signal.SIGTERM
    assert reused.poll() is None and other.poll() is None
    pids = ", ".join(map(str, sorted([agent.pid, recorded.pid])))
    assert console_lines == [f"stopping 2 Ray process(es) that a killed driver of this search left running "
                             f"(pids {pids})"]
    assert orphans.clean(tmp_path) == [] and len(console_lines) == 1  # nothing left, nothing said


def test_a_driver_records_its_cluster_and_never_stops_its_own(tmp_path, processes, monkeypatch):
    """`record` (after ray.init and before each stage's trials) writes the token and the pids that carry it; the
    same process never stops its own cluster (a comparison runs several searches on one), the next one does."""
    monkeypatch.setenv(orphans.ENV, TOKEN)
    worker = processes({orphans.ENV: TOKEN})  # as the cluster's processes inherit the driver's token
    orphans.record(tmp_path)
    saved = json.loads((tmp_path / orphans.PIDS).read_text())
    assert (tmp_path / orphans.RECORD).read_text() == TOKEN + "\n" and saved["token"] == TOKEN
    assert saved["pids"] == {str(worker.pid): orphans.started(worker.pid)}
    assert orphans.clean(tmp_path) == [] and worker.poll() is None
    monkeypatch.delenv(orphans.ENV)  # the next driver
    assert orphans.clean(tmp_path) == [worker.pid] and worker.wait(timeout=10) == -signal.SIGTERM

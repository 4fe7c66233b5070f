"""One search per folder (fsd/tuning/search/lock.py): a second tune_main.py on a folder in use is refused and
leaves the ledger alone; a killed driver leaves no stale lock."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from fsd.tuning.command.checks import Search
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.search import lock

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _search_folder(tmp_path) -> tuple[Path, Path, bytes]:
    storage = tmp_path / "runs"
    folder = storage / "rte-vkd"
    folder.mkdir(parents=True)
    ledger = b'{"search": {"task": "rte", "method": "vkd"}, "stages": {"vkd": {"status": "running"}}}'
    (folder / "ledger.json").write_bytes(ledger)
    return storage, folder, ledger


@pytest.mark.parametrize("resume", [True, False])
def test_second_search_on_a_folder_in_use_is_refused(tmp_path, resume):
    storage, folder, ledger = _search_folder(tmp_path)
    with lock.held(folder):
        r = subprocess.run([sys.executable, str(ROOT / "tune_main.py"), "--task", "rte", "--method", "vkd",
                            "--preset", "smoke", "--teacher", "packaged-minilm", "--storage", str(storage),
                            *(["--resume"] if resume else [])],
                           capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: another fsd-tune search is running in {folder} (pid {os.getpid()}): "
                                "wait for it or use another --storage")
    assert (folder / "ledger.json").read_bytes() == ledger
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "ledger.json"]


def test_the_lock_is_exclusive_and_released(tmp_path):
    assert lock.holder(tmp_path) is None
    with lock.held(tmp_path):
        assert lock.holder(tmp_path) == os.getpid()
        with pytest.raises(lock.Busy, match=rf"running in {tmp_path} \(pid {os.getpid()}\)"):
            with lock.held(tmp_path):
                pass
    assert lock.holder(tmp_path) is None
    with lock.held(tmp_path):  # free again
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = f"from fsd.tuning.search import lock\nimport time\nwith lock.held({str(tmp_path)!r}):\n    time.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV)
    try:
        deadline = time.time() + 60
        while lock.holder(tmp_path) != proc.pid:
            assert proc.poll() is None and time.time() < deadline, "the holder never took the lock"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock.holder(tmp_path) is None
    with lock.held(tmp_path):
        assert lock.holder(tmp_path) == os.getpid()


def test_run_holds_the_lock_while_the_search_runs(tmp_path, monkeypatch):
    """The command's run takes the lock before run_search and gives it back after (Ray is imported, not
    started)."""
    import fsd.tuning.search.runner as runner
    from fsd.tuning.command.dispatch import run

    spec = SearchSpec(task="rte", method="vkd", storage=str(tmp_path), mlflow_uri="", teacher="t")
    seen = []

    def fake_run_search(spec, schedule):
        seen.append(lock.holder(spec.folder))
        raise RuntimeError("stop here")  # the lock must still be released (Ctrl-C is dispatch.stop's)

    monkeypatch.setattr(runner, "run_search", fake_run_search)
    with pytest.raises(RuntimeError, match="stop here"):
        run(Search(spec, None, resume=False))
    assert seen == [os.getpid()]
    assert lock.holder(spec.folder) is None


def test_compare_holds_a_method_lock_while_it_searches_that_method(tmp_path, monkeypatch):
    """--compare runs a method's missing search under that search's own lock, and refuses a busy one."""
    import fsd.tuning.search.comparison as compare
    from fsd.tuning.plan.ledger import Ledger
    from fsd.tuning.search.runner import Finished

    spec = SearchSpec(task="rte", method="fsd", storage=str(tmp_path), mlflow_uri="", teacher="t", preset="smoke",
                      grids={"lr": (1e-4,)})
    folder = tmp_path / "rte-vkd"
    seen = []

    def fake_run_search(mspec, schedule):
        assert schedule.stage("vkd").grid["lr"] == (1e-4,)  # the comparison's --grid reaches its searches
        seen.append((mspec.folder, mspec.seeds, lock.holder(mspec.folder)))
        ledger = Ledger(mspec.folder)
        ledger.data.update(teacher="t", stages={"vkd": {"status": "done", "winner": {"alpha": 0.7}}})
        return Finished(ledger, None)

    monkeypatch.setattr(compare, "run_search", fake_run_search)
    assert compare.best_config(dataclasses.replace(spec, seeds=5), "vkd") == ({"alpha": 0.7}, "t")
    assert seen == [(str(folder), 1, os.getpid())]
    assert lock.holder(folder) is None
    with lock.held(folder), pytest.raises(lock.Busy, match="another fsd-tune search is running in"):
        compare.best_config(spec, "vkd")
    assert len(seen) == 1


def test_the_search_checks_its_folder_again_under_its_lock(tmp_path, monkeypatch):
    """A search that left a ledger since the command's checks is caught by run_locked under the lock, before
    anything runs, and the lock is given back."""
    import fsd.tuning.search.runner as runner
    from fsd.tuning.plan.resume import Refused

    storage, folder, ledger = _search_folder(tmp_path)
    spec = SearchSpec(task="rte", method="vkd", storage=str(storage), mlflow_uri="", teacher="t")

    def fake_run_search(spec, schedule):
        raise AssertionError("a search ran in a folder that another search had taken")

    monkeypatch.setattr(runner, "run_search", fake_run_search)
    with pytest.raises(Refused, match=f"a search already exists in {folder}: add --resume"):
        runner.run_locked(spec, None, resume=False)
    assert lock.holder(folder) is None
    assert (folder / "ledger.json").read_bytes() == ledger


def test_compare_holds_its_folder_lock_while_it_runs(tmp_path, monkeypatch):
    """--compare takes its own folder's lock (fsd/tuning/search/comparison.py), refuses a busy one, and gives it
    back however it ends."""
    import fsd.tuning.search.comparison as comparison

    spec = SearchSpec(task="rte", method="fsd", storage=str(tmp_path), mlflow_uri="", teacher="t")
    folder = tmp_path / "rte-compare"
    seen = []

    def fake_best_config(spec, method):
        seen.append(lock.holder(folder))
        raise RuntimeError("stop here")

    monkeypatch.setattr(comparison, "best_config", fake_best_config)
    with pytest.raises(RuntimeError, match="stop here"), comparison.run_comparison(spec, ["vkd"], 1):
        pass
    assert seen == [os.getpid()]
    assert lock.holder(folder) is None
    with lock.held(folder), pytest.raises(lock.Busy, match=f"another fsd-tune search is running in {folder}"), \
            comparison.run_comparison(spec, ["vkd"], 1):
        pass
    assert len(seen) == 1

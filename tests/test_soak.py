"""The chaos soak (bench/soak.py) on a tiny search: a VKD and a PKD stage of the smoke preset through a real
`mlflow server` on 127.0.0.1, run quietly, then again with five faults at random times, one of each kind (the
driver SIGKILLed, a trial's Ray worker SIGKILLed, Ctrl-C, the server stopped and restarted, the disk filled
then freed; the last where a tmpfs can be mounted), resumed after each. The soaked search must end with the
quiet one's ledger, trial results and MLflow runs and models, none twice, and leave no Ray process.

    pytest -m soak tests/test_soak.py     # about 8 minutes on 2 cores; not in the default run
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import raycluster

pytestmark = pytest.mark.soak
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
FAULTS = 5


@pytest.fixture(scope="module")
def search(tmp_path_factory, tiny_bert, glue_dir) -> list[str]:
    """The search's arguments: tests/test_search_e2e.py's, a teacher fine-tuned once beforehand, two seeds a
    point (8 trials: the search outlasts five faults and their recoveries)."""
    from fsd.config import DataSpec
    from fsd.teacher import TeacherSpec, ensure_teacher, teacher_data

    data = teacher_data(DataSpec("rte", glue_dir, max_train_samples=64, max_eval_samples=64))
    teacher = ensure_teacher(TeacherSpec(tiny_bert, data, epochs=1), str(tmp_path_factory.mktemp("shared")))
    return ["--task", "rte", "--method", "pkd", "--preset", "smoke", "--data-dir", glue_dir, "--teacher", teacher,
            "--student-init", tiny_bert, "--student-layers", "2", "--max-concurrent", "1", "--seeds", "2"]


def test_a_search_soaked_in_faults_ends_as_its_quiet_run(search, tmp_path):
    log = tmp_path / "soak.log"
    # A 5 s HTTP timeout, as the MLflow outage test has: a call to the stopped server gives up sooner.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--faults", str(FAULTS), "--seed", "3",
                        "--storage", str(tmp_path / "soak"), "--log", str(log), "--min-delay", "3", "--", *search],
                       capture_output=True, text=True, env=env, timeout=1500)
    assert r.stdout.strip(), r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    said = log.read_text()
    assert r.returncode == 0 and summary["ok"], json.dumps(summary, indent=1) + said[-4000:]
    assert summary["injected"] == summary["recovered"] == FAULTS and summary["equal"]
    kinds = {k for k, n in summary["by_kind"].items() if n}
    expected = {"driver-kill", "worker-kill", "ctrl-c", "mlflow-restart"}
    if summary["disk"].startswith("in the random set"):
        expected.add("disk-full")
    else:
        assert summary["disk"].startswith("left out: a tmpfs cannot be mounted here")
    assert kinds == expected, summary["fault_log"]
    assert summary["trials"] == 8 and summary["mlflow_runs"] == 1 + 2 + 8  # search, stages, trials: none twice
    assert summary["duplicates"] == 0 and summary["stray"] == [] and summary["unplanned"] == []
    assert raycluster.processes(b"", summary["ray_root"]) == []  # checked here too, not only by the soak
    for fault in summary["fault_log"]:
        assert f"fault {fault['n']}/{FAULTS}: {fault['kind']}" in said
    assert summary["drivers"] >= 1 + sum(f["kind"] in ("driver-kill", "ctrl-c") for f in summary["fault_log"])

    # The comparison sees a difference where there is one: the quiet run's own state, one score changed.
    import soak_state

    quiet = soak_state.state(tmp_path / "soak" / "quiet", f"sqlite:///{tmp_path / 'soak' / 'quiet-server'}/server.db",
                             "rte", "pkd")
    assert soak_state.differences(quiet, quiet) == []
    changed = json.loads(json.dumps(quiet))
    trial = next(iter(changed["trials"]))
    changed["trials"][trial]["results"][-1]["eval/score"] += 1e-12
    assert [d for d in soak_state.differences(quiet, changed) if "eval/score" in d and trial in d]
    line = next(iter(changed["mlflow"]["runs"]))
    changed["mlflow"]["runs"][line] += 1
    assert any(d.startswith("mlflow run in the soaked store 1 time(s) more") for d in
               soak_state.differences(quiet, changed))

"""The kill harness: a smoke search whose driver is SIGKILLed at each named point (fsd.failpoints), then
resumed. Every time it must finish with the uninterrupted run's winners, re-run no finished trial, read no
half-written file, and leave MLflow with exactly one run per trial and none RUNNING.

    pytest -m harness tests/test_kill_harness.py     # about 15 minutes on 2 cores; not in the default run
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fsd.failpoints import POINTS

pytestmark = pytest.mark.harness
ROOT = Path(__file__).resolve().parents[1]
STAGES = "vkd,fsdi,memory,fsdg-coarse"
TRIALS = 6  # 2 per stage with trials (smoke preset)


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            **extra}


def _cmd(backbone, glue_dir, storage, *extra):
    return [sys.executable, str(ROOT / "tune_main.py"), "--task", "rte", "--method", "fsd", "--preset", "smoke",
            "--stages", STAGES, "--data-dir", glue_dir, "--teacher", backbone, "--teacher-epochs", "2",
            "--student-layers", "2", "--storage", str(storage), "--max-concurrent", "1",
            "--set", "memory_size=4", *extra]


def _ray_stop():
    subprocess.run(["ray", "stop", "--force"], capture_output=True, env=_env())


def _winners(storage):
    ledger = json.loads((Path(storage) / "rte-fsd" / "ledger.json").read_text())
    return {k: ({p: x for p, x in v["winner"].items() if p not in ("storage", "teacher")}, v["score"])
            for k, v in ledger["stages"].items() if v.get("status") == "done"}


def _check_mlflow(storage):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name("rte")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    trials = [r for r in runs if "ray_trial_id" in r.data.tags]
    assert len(trials) == TRIALS and len({r.data.tags["ray_trial_id"] for r in trials}) == TRIALS
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    for r in trials:  # one epoch, logged once: no finished trial ran again
        assert len(client.get_metric_history(r.info.run_id, "eval/score")) == 1
    versions = client.search_model_versions("name='fsd-rte-fsd'")
    assert len(versions) == 3  # one student per stage with trials, none logged twice


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert, glue_dir):
    storage = tmp_path_factory.mktemp("reference")
    _ray_stop()
    r = subprocess.run(_cmd(tiny_bert, glue_dir, storage), capture_output=True, text=True, env=_env())
    _ray_stop()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _check_mlflow(storage)
    return _winners(storage)


@pytest.mark.parametrize("point", POINTS)
def test_killed_at_point_then_resumed(point, reference, tiny_bert, glue_dir, tmp_path):
    storage = tmp_path / "runs"
    killed = subprocess.run(_cmd(tiny_bert, glue_dir, storage), capture_output=True, text=True,
                            env=_env(FSD_KILL_AT=point))
    _ray_stop()
    assert killed.returncode == -signal.SIGKILL, f"{point} was never reached:\n{killed.stdout[-2000:]}"
    assert _winners(storage) != reference  # it really stopped before the end

    resumed = subprocess.run(_cmd(tiny_bert, glue_dir, storage, "--resume"), capture_output=True, text=True,
                             env=_env())
    _ray_stop()
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert _winners(storage) == reference
    _check_mlflow(storage)
    for folder in ("cache", "memory", "teacher"):  # what the resumed run used is whole (a .tmp is never read)
        for f in (storage / folder).rglob("*"):
            if f.suffix == ".npy" and not f.name.startswith("."):
                import numpy as np

                np.load(f, mmap_mode="r")

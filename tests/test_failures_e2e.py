"""Failing trials in a real search (local Ray, sqlite MLflow): one trial's error does not stop the others,
a trial whose worker is killed is retried from its last checkpoint (FailureConfig), and a stage where every
trial fails stops the search with its cause; after the fix, --resume completes it."""

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import raycluster
from mlflow.tracking import MlflowClient

from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.search.runner import run_search
from search_spaces.base import Budget, Schedule, Stage

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _kill_first_trial_worker_after_its_checkpoint(exp_dir: Path, done: threading.Event, killed: list):
    while not done.is_set():
        progress = list(exp_dir.glob("stages/rte-fsdg-*/rte-fsdg/*memory_size=4*/progress.csv"))
        if list(exp_dir.glob("stages/rte-fsdg-*/rte-fsdg/*memory_size=4*/checkpoint_000000")) and progress and \
                len(progress[0].read_text().splitlines()) >= 2:
            # The worker writes the folder as it reports; the driver registers the checkpoint a moment later
            # (progress.csv is its mark). Killed in between, the trial would restart from scratch.
            time.sleep(1.0)
            pids = raycluster.processes(b"ray::ImplicitFunc")  # this suite's trial workers only
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            if pids:
                return
        time.sleep(0.2)


@pytest.mark.long
def test_one_trial_fails_another_is_retried_from_its_checkpoint(tiny_bert, glue_dir, tmp_path, capfd, caplog):
    # memory_size=100000 cannot be fitted on 2000 rows: that trial fails; the other one is killed mid-run.
    stage = Stage("fsdg", "fsdg", {"memory_size": (4, 100000)}, fixed={"epochs": 2, "batch_size": 16})
    # 2000 rows: an epoch takes seconds even on a quiet machine, so the worker dies during epoch 2 (with 400
    # rows a fast epoch 2 could end before the watcher's kill, and the trial had nothing left to resume).
    schedule = Schedule("fsdg", "rte", "smoke", (stage,), Budget(max_train_samples=2000, max_eval_samples=16))
    spec = SearchSpec(task="rte", method="fsdg", storage=str(tmp_path), mlflow_uri=f"sqlite:///{tmp_path}/m.db",
                      teacher=tiny_bert, student_layers=2, data_dir=glue_dir, max_concurrent=1, max_failures=1,
                      extra={"lr": 1e-3})
    exp_dir = tmp_path  # the stage's experiment: <storage>/stages/rte-fsdg-<digest>/rte-fsdg
    caplog.set_level(logging.INFO, logger="fsd.console")
    done, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_first_trial_worker_after_its_checkpoint, args=(exp_dir, done, killed))
    watcher.start()
    try:
        ledger = run_search(spec, schedule).ledger
    finally:
        done.set()
        watcher.join()
        ray.shutdown()
    assert killed, "the trial's worker was never killed"
    # The loss is said in the search's own line; Ray's raylet line (its driver prints it) is not shown.
    assert "lost its worker" in caplog.text
    out = capfd.readouterr()
    assert "(raylet)" not in out.out + out.err
    record = ledger.data["stages"]["fsdg"]
    assert record["status"] == "done" and record["winner"]["memory_size"] == 4 and record["trials"] == 2

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.get_experiment_by_name("rte")
    trials = {r.data.params["memory_size"]: r for r in client.search_runs([exp.experiment_id])
              if "ray_trial_id" in r.data.tags}
    assert trials["4"].info.status == "FINISHED" and trials["100000"].info.status == "FAILED"
    # The killed trial went on from its epoch-1 checkpoint: epoch 2 says so, and no evaluation is logged twice
    # (steps are training samples: 2000 rows an epoch).
    history = client.get_metric_history(trials["4"].info.run_id, "eval/score")
    assert sorted(m.step for m in history) == [2000, 4000]
    assert client.get_run(trials["4"].info.run_id).data.metrics["run/resumed_from"] == 1


def _cmd(backbone, student, glue_dir, storage, *extra):
    return [sys.executable, str(ROOT / "tune_main.py"), "--task", "rte", "--method", "vkd", "--preset", "smoke",
            "--data-dir", glue_dir, "--teacher", backbone, "--teacher-epochs", "1", "--student-init", student,
            "--student-layers", "2", "--storage", str(storage), "--max-concurrent", "1", *extra]


@pytest.mark.long
def test_a_stage_where_every_trial_fails_stops_the_search_and_resumes_after_the_fix(tiny_bert, glue_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    student = tmp_path / "student_backbone"
    shutil.copytree(tiny_bert, student)
    weights = next(student.glob("*.safetensors"))
    weights.rename(tmp_path / "weights.bak")  # the trials (not the driver) load the student's backbone
    storage = tmp_path / "runs"
    try:
        failed = subprocess.run(_cmd(tiny_bert, str(student), glue_dir, storage), capture_output=True, text=True,
                                env=env)
    finally:
        raycluster.stop()
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-3000:]
    # Ray prints each trial's error as it happens; the search ends with one line naming the cause.
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("error: stage vkd: all 2 trial(s) of the stage failed; first error: OSError:"), line
    assert str(student) in line and "--resume" in line

    (tmp_path / "weights.bak").rename(weights)  # the fix
    try:
        resumed = subprocess.run(_cmd(tiny_bert, str(student), glue_dir, storage, "--resume"), capture_output=True,
                                 text=True, env=env)
    finally:
        raycluster.stop()
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "| vkd |" in resumed.stdout
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name("rte")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if "ray_trial_id" in r.data.tags]
    assert len(trials) == 2 and {r.info.status for r in runs} == {"FINISHED"}

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
import time
from pathlib import Path

import pytest
import raycluster
from conftest import stages_that_trained

from fsd.failpoints import POINTS
from fsd.tuning.search import orphans

pytestmark = pytest.mark.harness
ROOT = Path(__file__).resolve().parents[1]
STAGES = "vkd,fsdi,memory,fsdg-coarse"
TRIALS = 5  # 2 per stage with trials (smoke preset), less fsdg-coarse's gamma_g = 0 point: it trains VKD's
# winner again, so it is folded away and that winner carried (fsd.tuning.plan.folding)


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            **extra}


def _cmd(backbone, glue_dir, storage, *extra):
    return [sys.executable, str(ROOT / "tune_main.py"), "--task", "rte", "--method", "fsd", "--preset", "smoke",
            "--stages", STAGES, "--data-dir", glue_dir, "--teacher", backbone, "--teacher-epochs", "2",
            "--student-layers", "2", "--storage", str(storage), "--max-concurrent", "1",
            "--set", "memory_size=4", *extra]


def _ray_stop():
    raycluster.stop()


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
    # One student registered per stage that trained its own winner (fsdg-coarse's can be VKD's, carried), none
    # logged twice.
    trained = stages_that_trained(Path(storage) / "rte-fsd")
    versions = client.search_model_versions("name='fsd-rte-fsd'")
    assert len(versions) == len(trained) >= 2 and len({v.run_id for v in versions}) == len(versions)


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


def test_a_driver_killed_at_the_cache_pass_leaves_no_ray_process_once_resumed(tiny_bert, glue_dir, tmp_path):
    """The killed driver recorded its cluster (token and pids) in the search folder; once the resumed run ends,
    no process of either driver's cluster is alive: what the first left was stopped by the second (or died on
    its own, which varies with timing; tests/tuning/search/test_orphans.py stops planted ones), and the
    second's own ended."""
    storage = tmp_path / "runs"
    cmd = _cmd(tiny_bert, glue_dir, storage, "--stages", "vkd")
    _ray_stop()
    killed = subprocess.run(cmd, capture_output=True, text=True, env=_env(FSD_KILL_AT="cache-pass"))
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    folder = storage / "rte-fsd"
    token = (folder / orphans.RECORD).read_text().strip()
    recorded = json.loads((folder / orphans.PIDS).read_text())
    assert recorded["token"] == token and len(recorded["pids"]) >= 3  # GCS, raylet, agents, idle workers
    try:
        resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=_env())
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        again = (folder / orphans.RECORD).read_text().strip()
        assert again != token
        deadline = time.monotonic() + 15  # the resumed driver's own cluster goes down as it exits
        while time.monotonic() < deadline and orphans.marked(token) + orphans.marked(again):
            time.sleep(0.5)
        assert orphans.marked(token) == [] and orphans.marked(again) == []
        assert not [p for p, start in recorded["pids"].items() if orphans.started(int(p)) == start]
    finally:
        _ray_stop()


# STS-B: a regression's dev correlation has no ties, so the rungs rank the trials (RTE accuracies of tiny
# students all sit at 0.5); 4 evaluations per trial of 64 rows.
HALVING = ["--method", "vkd", "--strategy", "halving", "--grid", "lr=1e-4,1e-3,1e-2,5e-2", "--set", "eval_every=16",
           "--set", "batch_size=16"]


def _halving_cmd(backbone, glue_dir, storage):
    return [sys.executable, str(ROOT / "tune_main.py"), "--task", "stsb", "--preset", "smoke", "--data-dir", glue_dir,
            "--teacher", backbone, "--teacher-epochs", "1", "--student-layers", "2", "--storage", str(storage),
            "--max-concurrent", "1", *HALVING]


def _halving_state(storage):
    """The stage's winner and score, and its rungs and stops by trial number (trial ids differ per run)."""
    ledger = json.loads((Path(storage) / "stsb-vkd" / "ledger.json").read_text())
    record = ledger["stages"]["vkd"]
    (rungs_file,) = Path(storage).glob("stages/stsb-vkd-*/rungs.json")
    rungs = json.loads(rungs_file.read_text())

    def number(trial_id):
        return int(trial_id.rsplit("_", 1)[1])

    return ({k: v for k, v in record["winner"].items() if k not in ("storage", "teacher")}, record["score"],
            {m: {number(t): s for t, s in r.items()} for m, r in rungs["rungs"].items()},
            sorted(number(t) for t in rungs["stopped"]))


def test_halving_killed_mid_stage_then_resumed(tiny_bert_regression, glue_dir, tmp_path):
    """A halving stage SIGKILLed after its 10th trial result and resumed stops the same trials at the same rungs
    and picks the uninterrupted run's winner, with one MLflow run per trial."""
    _ray_stop()
    tiny_bert = tiny_bert_regression
    ref = subprocess.run(_halving_cmd(tiny_bert, glue_dir, tmp_path / "ref"), capture_output=True, text=True,
                         env=_env())
    _ray_stop()
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    reference = _halving_state(tmp_path / "ref")
    assert reference[3], "no trial was stopped at a rung: the test would prove nothing"
    storage = tmp_path / "runs"
    killed = subprocess.run(_halving_cmd(tiny_bert, glue_dir, storage), capture_output=True, text=True,
                            env=_env(FSD_KILL_AT="mid-stage:10"))
    _ray_stop()
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:]
    resumed = subprocess.run([*_halving_cmd(tiny_bert, glue_dir, storage), "--resume"], capture_output=True,
                             text=True, env=_env())
    _ray_stop()
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert _halving_state(storage) == reference
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("stsb").experiment_id], max_results=1000)
    trials = [r for r in runs if "ray_trial_id" in r.data.tags]
    assert len(trials) == 8 and len({r.data.tags["ray_trial_id"] for r in trials}) == 8
    assert {r.info.status for r in runs} == {"FINISHED"}
    stopped = sorted(int(r.data.tags["ray_trial_id"].rsplit("_", 1)[1]) for r in trials
                     if r.data.tags.get("early_stopped") == "true")
    assert stopped == reference[3]
    for r in trials:  # no evaluation logged twice
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "eval/score")]
        assert len(steps) == len(set(steps))

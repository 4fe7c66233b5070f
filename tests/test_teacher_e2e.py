"""End to end with real weights and real rows: fine-tune the packaged MiniLM on RTE, distil a 3-layer
student with VKD, through the library and through the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsd.config import DataSpec, DistillConfig
from fsd.models import TEACHER_META
from fsd.teacher import TeacherSpec, ensure_teacher, teacher_data
from fsd.train import distill

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rte_teacher(glue_dir, minilm_path, tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage")
    spec = TeacherSpec(minilm_path, teacher_data(DataSpec("rte", glue_dir, max_train_samples=160, max_eval_samples=64)),
                       epochs=1)
    return ensure_teacher(spec, str(storage)), spec, str(storage)


def test_teacher_is_fine_tuned_once_and_reused(rte_teacher):
    path, spec, storage = rte_teacher
    meta = json.loads((Path(path) / TEACHER_META).read_text())
    assert meta["task"] == "rte" and meta["lr"] == 2e-5 and len(meta["epochs"]) == 1
    assert 0.0 <= meta["dev"]["eval/score"] <= 1.0
    stamp = os.stat(Path(path) / TEACHER_META).st_mtime_ns
    assert ensure_teacher(spec, storage) == path
    assert os.stat(Path(path) / TEACHER_META).st_mtime_ns == stamp  # not trained again
    assert ensure_teacher(TeacherSpec(path, DataSpec("rte")), storage) == path  # a fine-tuned teacher is used as is
    with pytest.raises(ValueError, match="fine-tuned on rte, not mrpc"):
        ensure_teacher(TeacherSpec(path, DataSpec("mrpc")), storage)
    assert not [p for p in (Path(storage) / "teacher").iterdir() if p.name.startswith(".")]


def test_vkd_student_from_the_pretrained_backbone(rte_teacher, glue_dir, minilm_path):
    path, _, storage = rte_teacher
    config = DistillConfig.from_dict({
        "task": "rte", "teacher": path, "student_layers": 3, "method": "vkd", "alpha": 0.5,
        "temperature": 10.0, "epochs": 1, "max_train_samples": 160, "max_eval_samples": 64,
        "data_dir": glue_dir, "storage": storage})
    (report,) = list(distill(config))
    m = report.metrics
    assert m["epoch"] == 1 and 0.3 <= m["eval/score"] <= 0.8  # two balanced classes: near chance after 5 steps
    assert m["train/kd"] > 0 and m["train/samples_per_s"] > 0


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "fsd.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.mark.parametrize("extra,ranked", [([], "dev"), (["--holdout-rows", "16"], "holdout")])
def test_cli_runs_one_distillation(glue_dir, tmp_path, extra, ranked):
    r = _cli("--task", "wnli", "--data-dir", glue_dir, "--teacher", "packaged-minilm", "--student-layers", "3",
             "--max-train-samples", "64", "--max-eval-samples", "32", "--epochs", "1", "--teacher-epochs", "1",
             "--storage", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "out"), *extra, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "epoch 1:" in r.stdout and "eval/score" in r.stdout and f"best {ranked} score" in r.stdout
    assert (tmp_path / "out" / "student" / "config.json").is_file()
    assert (tmp_path / "out" / "checkpoint.json").is_file()


@pytest.mark.parametrize("args,message", [
    (["--task", "squad"], "unknown task 'squad'"),
    (["--task", "rte", "--alpha", "2"], r"alpha must lie in \[0, 1\]"),
    (["--task", "rte", "--data-dir", "/nonexistent"], "is not a folder"),
    (["--task", "rte", "--method", "fitnets"], "unknown method 'fitnets'"),
    (["--task", "rte", "--no-structure-mask"], r"^error: structure_mask=False .* needs pad_to_max=True"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(args, message, tmp_path):
    r = _cli(*args, "--teacher", "packaged-minilm", "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("error: ") and __import__("re").search(message, lines[0])
    assert not (tmp_path / "runs").exists()


def test_fsd_student_with_the_real_teacher(rte_teacher, glue_dir):
    path, _, storage = rte_teacher
    config = DistillConfig.from_dict({
        "task": "rte", "teacher": path, "student_layers": 3, "method": "fsd", "beta": 1.0, "gamma_g": 1e-4,
        "lam": 0.5, "epochs": 1, "max_train_samples": 160, "max_eval_samples": 64, "data_dir": glue_dir,
        "storage": storage})
    (report,) = list(distill(config))
    m = report.metrics
    for part in ("intra", "local", "global_memory", "global_euclidean", "global_cosine"):
        assert m[f"train/{part}"] > 0, part
    assert 0.3 <= m["eval/score"] <= 0.8
    (memory,) = list((Path(storage) / "memory").iterdir())
    assert memory.name.startswith("rte-k100-")  # the paper's K for RTE

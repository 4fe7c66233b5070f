"""The same configuration and seed give identical numbers on CPU: per-epoch dev metrics, every loss part and
the final student, whether the storage is fresh (teacher memory and caches built by the run) or warm (read
back). Another seed changes them. This is what lets a search compare trials and a resume continue a run."""

import pytest
import torch

from fsd.config import DistillConfig
from fsd.train import distill


def _config(tiny_bert, glue_dir, storage, method, seed=7):
    return DistillConfig.from_dict({
        "task": "rte", "teacher": tiny_bert, "student_layers": 2, "method": method, "epochs": 2, "batch_size": 8,
        "max_train_samples": 32, "max_eval_samples": 16, "max_seq_len": 64, "data_dir": glue_dir,
        "storage": str(storage), "memory_size": 4, "beta": 0.5, "lr": 1e-3, "seed": seed, "device": "cpu"})


def _run(config):
    """Per-epoch numbers (the throughput and timings left out) and the final student's weights."""
    epochs, student = [], None
    for report in distill(config):
        epochs.append({k: v for k, v in report.metrics.items()
                       if not k.startswith("time/") and k != "train/samples_per_s"})
        student = report.state()["student"]
    return epochs, student


@pytest.mark.parametrize("method", ["vkd", "fsd"])
def test_same_seed_same_numbers(method, tiny_bert, glue_dir, tmp_path):
    a, a_student = _run(_config(tiny_bert, glue_dir, tmp_path / "a", method))
    b, b_student = _run(_config(tiny_bert, glue_dir, tmp_path / "b", method))  # its own memory and caches
    warm, warm_student = _run(_config(tiny_bert, glue_dir, tmp_path / "a", method))  # a's, read back
    assert [m["epoch"] for m in a] == [1, 2]
    assert {"eval/score", "train/loss", "train/kd"} <= set(a[0])
    if method == "fsd":
        assert {"train/intra", "train/local", "train/global_memory"} <= set(a[0])
    assert a == b == warm
    for name, value in a_student.items():
        assert torch.equal(value, b_student[name]) and torch.equal(value, warm_student[name]), name


@pytest.mark.parametrize("method", ["vkd", "fsd"])
def test_another_seed_other_numbers(method, tiny_bert, glue_dir, tmp_path):
    a, a_student = _run(_config(tiny_bert, glue_dir, tmp_path, method))
    c, c_student = _run(_config(tiny_bert, glue_dir, tmp_path, method, seed=8))
    assert [m["train/loss"] for m in a] != [m["train/loss"] for m in c]
    assert not torch.equal(a_student["classifier.weight"], c_student["classifier.weight"])

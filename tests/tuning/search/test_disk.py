"""fsd/tuning/search/disk.py: a full disk recognised through the wrappings it reaches the driver in, the size of a
trial's checkpoint measured or bounded, a stage refused before it starts when it cannot fit."""

import errno
import sqlite3

import pytest

from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.search import disk


def test_a_full_disk_is_recognised_however_it_is_wrapped():
    assert disk.disk_full(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as e:
            raise RuntimeError("(sqlalchemy) could not update the run") from e
    except RuntimeError as wrapped:
        assert disk.disk_full(wrapped)  # through __cause__
    # Ray keeps a trial's error as text only
    assert disk.disk_full(RuntimeError("ray::ImplicitFunc.train()\nOSError: [Errno 28] No space left on device"))
    assert not disk.disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk.disk_full(None) and not disk.disk_full(ValueError("no"))


def test_sizes_read_like_df():
    assert [disk.size(n) for n in (512, 2048, 5 * 2**20, 1.5 * 2**30, 3 * 2**40)] == \
        ["512 B", "2.0 KB", "5.0 MB", "1.5 GB", "3.0 TB"]


def test_a_checkpoint_is_measured_once_there_is_one_and_bounded_by_the_teacher_before(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"\0" * 1000)
    (teacher / "config.json").write_text("{}")  # not weights: not counted
    assert disk.per_trial_bytes(str(tmp_path / "storage"), str(teacher)) == (4000, False)
    assert disk.per_trial_bytes(str(tmp_path / "storage"), "bert-base-uncased") is None  # on the hub: unknown
    for trial, n in (("t0", 300), ("t1", 700)):
        ckpt = tmp_path / "storage" / "stages" / "rte-vkd-abc" / "rte-vkd" / trial / "checkpoint_000000"
        (ckpt / "student").mkdir(parents=True)
        (ckpt / "checkpoint.pt").write_bytes(b"\0" * n)
        (ckpt / "student" / "model.safetensors").write_bytes(b"\0" * 100)
    assert disk.per_trial_bytes(str(tmp_path / "storage"), str(teacher)) == (800, True)  # the largest


def test_a_stage_that_cannot_fit_is_refused_with_the_folder_and_the_space(tmp_path, monkeypatch):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"\0" * 2**20)
    spec = SearchSpec(task="rte", method="vkd", storage=str(tmp_path / "s"), mlflow_uri="", teacher=str(teacher))
    monkeypatch.setattr(disk, "free_bytes", lambda storage: 10 * 2**20)
    disk.check_stage(spec, "vkd", 1, str(teacher))  # (1 + 1) x 4 MB fits in 10 MB
    with pytest.raises(disk.DiskFull) as e:
        disk.check_stage(spec, "vkd", 2, str(teacher))  # (2 + 1) x 4 MB does not
    assert str(e.value).startswith(f"not enough space in {tmp_path / 's'}: 10.0 MB free, stage vkd needs about "
                                   "12.0 MB (2 trial(s) x 4.0 MB a checkpoint, at most, from the teacher's weights)")
    assert "then run again with --resume" in str(e.value)


def test_free_space_of_a_storage_folder_not_made_yet_is_its_parents(tmp_path):
    import shutil

    assert disk.free_bytes(str(tmp_path / "not" / "yet")) == pytest.approx(shutil.disk_usage(tmp_path).free,
                                                                             rel=0.01)


def test_the_peak_is_counted_from_the_models_shapes(minilm_path, tmp_path):
    """--dry-run's disk at its peak, by hand: a 3-layer MiniLM student has 17,390,594 parameters (4 bytes each);
    each stage keeps its winner and one MLflow copy, each running trial two resumable checkpoints (weights,
    AdamW's two moments, and for FSDG the student memory, 100 x 128 x 384, with its two moments)."""
    from fsd.tuning.plan.spec import SearchSpec
    from fsd.tuning.search.disk import peak
    from search_spaces import get_schedule

    spec = SearchSpec(task="sst2", method="fsd", storage=str(tmp_path), mlflow_uri="", teacher="packaged-minilm",
                      student_layers=3, max_concurrent=2)
    found = peak(spec, get_schedule("fsd", "sst2", "cpu"), stages=9, rows=1600, cache_bytes=1e6)
    student = 4 * 17_390_594
    memory = 3 * 4 * 100 * 128 * 384
    assert found.student == student and found.resume == 2 * student + memory and found.running == 2
    assert found.total == 2 * 9 * student + 2 * 2 * (student + found.resume) + student + found.teacher + found.cache
    assert found.cache == int(1e6) + 4 * 100 * 128 * 384  # the cache as measured, and the teacher memory
    assert "disk at its peak: about" in found.says() and "9 stage winners" in found.says()
    assert peak(spec, get_schedule("fsd", "sst2", "cpu"), 9, 1600) is not None  # unmeasured: bounded
    hub = SearchSpec(task="sst2", method="fsd", storage=str(tmp_path), mlflow_uri="", teacher="nobody/not-here")
    assert peak(hub, get_schedule("fsd", "sst2", "cpu"), 9, 1600) is None  # a config not on this machine

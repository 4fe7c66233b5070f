"""A damaged file in a storage folder is refused by every command that reads it back (a new search on the same
storage, --resume, --report, --compare) before it writes anything: one `error:` line that names the file and
what to do, exit code 2 (fsd/tuning/command/stored.py). Each kind of damage (cut short, emptied, overwritten with
garbage, of another shape) is planted in a copy of a real search's storage folder: the ledger, the shared
stage's record and Optuna journal, the winner's checkpoint JSON, MLflow's sqlite database and the teacher-output
cache's key."""

import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import raycluster
from conftest import command_refused

from fsd.tuning.command.stored import check_stored

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# Optuna on a 27-point grid (2 samples): the stage keeps an Optuna journal.
OPTUNA = ["--strategy", "optuna", "--grid", "alpha=0.2,0.5,0.7", "--grid", "temperature=5,10,20", "--grid",
          "lr=1e-4,1e-3,1e-2", "--num-samples", "2", "--set", "eval_every=16", "--set", "batch_size=16"]
FILES = {"ledger": "rte-vkd/ledger.json", "stage": "stages/rte-vkd-*/stage.json",
         "checkpoint": "stages/rte-vkd-*/*/*/checkpoint_*/checkpoint.json",
         "journal": "stages/rte-vkd-*/optuna.journal", "mlflow": "mlflow.db", "cache": "cache/rte-*/key.json"}
# What each file's line tells the user to do.
FIXES = {"ledger": "restore it from a backup, or delete", "stage": "; delete the stage folder",
         "checkpoint": "; delete the checkpoint folder", "journal": "; delete the stage folder",
         "mlflow": "restore it from a backup, or move it aside",
         "cache": "the next stage that needs it writes it again"}
# Valid JSON (an sqlite database, for MLflow's) of another shape than fsd-tune writes.
OTHER_SHAPE = {"ledger": '{"search": {"task": "rte"}, "stages": ["vkd"]}',
               "stage": '{"winner": "alpha=0.2", "score": 0.5, "trials": 2, "search": "vkd"}',
               "checkpoint": '{"epoch": "one", "step": 0, "config": {}}', "journal": '{"study": "rte-vkd"}\n',
               "cache": '{"task": "rte", "rows": "all"}'}
SAYS = {"truncated": "cut short", "empty": "it is empty", "garbage": "it is not text (binary garbage)",
        "other shape": "it is not what fsd-tune wrote"}
MLFLOW_SAYS = {"truncated": "it is not a whole sqlite database (database disk image is malformed)",
               "empty": "it is empty (no MLflow tables)",
               "garbage": "it is not a whole sqlite database (file is not a database)",
               "other shape": "it is an sqlite database without MLflow's tables"}


def _args(storage: Path, backbone: str, glue_dir: str, method: str = "vkd") -> list[str]:
    return ["--task", "rte", "--method", method, "--preset", "smoke", "--data-dir", glue_dir, "--teacher", backbone,
            "--teacher-epochs", "1", "--student-layers", "2", "--storage", str(storage), "--max-concurrent", "1",
            *OPTUNA]


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_bert, glue_dir):
    """A finished VKD search (Optuna) on a tiny teacher: every kind of file a storage folder holds."""
    storage = tmp_path_factory.mktemp("damaged") / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    r = subprocess.run([sys.executable, str(ROOT / "tune_main.py"), *_args(storage, tiny_bert, glue_dir)],
                       capture_output=True, text=True, env=env, timeout=900)
    raycluster.stop()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return storage, tiny_bert, glue_dir


def _command(command: str, file: str, storage: Path, backbone: str, glue_dir: str) -> list[str]:
    if command == "report":
        return ["--task", "rte", "--report", "--storage", str(storage)]
    if command == "search":  # a new search: of the same method reads the ledger, of PKD reuses the VKD stage
        return _args(storage, backbone, glue_dir, "vkd" if file == "ledger" else "pkd")
    return [*_args(storage, backbone, glue_dir), "--resume" if command == "resume" else "--compare=vkd"]


def _damage(path: Path, file: str, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        cut = data[:8192] if file == "mlflow" else data[:len(data) // 2]
        path.write_bytes(cut[:-1] if cut.endswith(b"\n") else cut)  # a journal cut between two lines is whole
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif file == "mlflow":
        path.unlink()
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE notes (text TEXT)")
        db.close()
    else:
        path.write_text(OTHER_SHAPE[file])


def test_the_real_files_pass_the_check(searched):
    """What a real search wrote is whole: no false alarm, and every file the damage tests plant exists once."""
    storage = searched[0]
    for pattern in FILES.values():
        assert len(list(storage.glob(pattern))) == 1, pattern
    check_stored(storage, "rte", [storage / "rte-vkd", storage / "rte-compare"], f"sqlite:///{storage}/mlflow.db")


# Every command with every file it reads (--report reads no teacher-output cache: tested apart).
READS = [(command, file) for command in ("search", "resume", "report", "compare") for file in FILES
         if (command, file) != ("report", "cache")]


@pytest.mark.parametrize("kind", list(SAYS))
@pytest.mark.parametrize("command,file", READS)
def test_a_damaged_file_is_one_line_before_anything_is_written(searched, tmp_path, command, file, kind):
    storage, backbone, glue_dir = searched
    copy = tmp_path / "runs"
    shutil.copytree(storage, copy, symlinks=True)
    (path,) = copy.glob(FILES[file])
    _damage(path, file, kind)
    line = command_refused(_command(command, file, copy, backbone, glue_dir), copy)
    assert line.startswith(f"error: {path} cannot be read: "), line
    assert (MLFLOW_SAYS if file == "mlflow" else SAYS)[kind] in line and FIXES[file] in line, line


def test_a_cache_array_cut_short_is_refused(searched, tmp_path):
    """The cache's arrays are read a row range at a time: one cut short is found by its header's shape."""
    storage, backbone, glue_dir = searched
    copy = tmp_path / "runs"
    shutil.copytree(storage, copy, symlinks=True)
    (array,) = copy.glob("cache/rte-*/logits.npy")
    array.write_bytes(array.read_bytes()[:-8])
    line = command_refused([*_args(copy, backbone, glue_dir), "--resume"], copy)
    assert f"{array} cannot be read: it is " in line and "bytes where its header says" in line
    assert f"delete {array.parent}: the next stage that needs it writes it again" in line


def test_a_report_does_not_read_the_teacher_cache(searched, tmp_path):
    """What a command does not read does not stop it: the report is written beside a damaged cache."""
    storage = searched[0]
    copy = tmp_path / "runs"
    shutil.copytree(storage, copy, symlinks=True)
    (key,) = copy.glob(FILES["cache"])
    key.write_text("")
    r = subprocess.run([sys.executable, str(ROOT / "tune_main.py"), "--task", "rte", "--report", "--storage",
                        str(copy)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (copy / "rte-report.html").is_file()


@pytest.mark.parametrize("command", ["resume", "report", "compare"])
def test_a_ledger_of_another_storage_layout_is_refused_by_name(searched, tmp_path, command):
    """A search folder records the layout version that wrote it; a command of another version says so in one
    line instead of misreading the folder. A ledger without the field is of version 1, as before it was kept."""
    import json

    from fsd.layout import SCHEMA

    storage, backbone, glue_dir = searched
    written = json.loads((storage / FILES["ledger"]).read_text())
    assert written["layout"] == SCHEMA
    copy = tmp_path / "runs"
    shutil.copytree(storage, copy, symlinks=True)
    path = copy / FILES["ledger"]
    path.write_text(json.dumps({**written, "layout": SCHEMA + 1}))
    line = command_refused(_command(command, "ledger", copy, backbone, glue_dir), copy)
    assert line == (f"error: {path} was written by storage layout {SCHEMA + 1}, and this fsd-tune reads layout "
                    f"{SCHEMA}: run the fsd-tune that wrote it, or give a new --storage")
    older = {k: v for k, v in written.items() if k != "layout"}
    path.write_text(json.dumps(older))
    check_stored(copy, "rte", [copy / "rte-vkd"], f"sqlite:///{copy}/mlflow.db")  # version 1: read as before

"""The files a command reads back from a storage folder, checked before it writes anything.

What fsd-tune wrote it reads again: a search's ledger, outbox and orphan record; a shared stage's record,
rungs, budget gate and Optuna journal; a checkpoint's JSON and safetensors headers; the teacher-output
cache's key and arrays; the tokenised data's index; a fine-tuned teacher's record; the comparison's files;
MLflow's sqlite database. Any of them can be damaged (cut short by a full disk or a copy, emptied,
overwritten, written by something else), and read later a damaged one ended in a traceback after the
command had already written (a resumed search rewrote its ledger, lock and orphan token first). So every
such file a command will read is checked here first, as data: JSON parsed (never unpickled) and its shape
checked, headers read rather than arrays, the database opened read-only. The first damaged one is a
`UsageError` that names the file, what is wrong with it and what to do.

A folder another process is building right now (its `<folder>.lock` is held) is left to that process.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fsd.layout import DEV, LAYOUT_KEY, LEDGER, OUTBOX, RAY_PIDS, RAY_TOKEN, SCHEMA, STAGE_RECORD, Layout
from fsd.tuning.command.flags import UsageError
from fsd.tuning.search.unreported import CHECKPOINTS, unreported

NUMBER = (int, float)
MAYBE_NUMBER = (int, float, type(None))
MAYBE_STR = (str, type(None))
Schema = Callable[[Any], "str | None"]


def check_stored(storage: Path, task: str, searches: Iterable[Path], mlflow_uri: str, caches: bool = True) -> None:
    """Every file of `task` in `storage` that a command reads back, and MLflow's sqlite file (whether in
    `storage` or not), checked whole; nothing is written.

    Args:
        storage: the storage folder (it may not exist yet).
        task: the GLUE task: its shared stages, teachers and caches are checked.
        searches: the search folders whose ledgers the command reads (a comparison's folder too).
        mlflow_uri: the tracking URI; a `sqlite:///` one is checked.
        caches: also the teacher-output caches and the tokenised data (--report reads neither).

    Raises:
        UsageError: the first damaged file, named with what to do.
    """
    if storage.is_dir():
        layout = Layout(storage)
        for folder in searches:
            if folder.is_dir():
                _search_folder(folder, storage)
        for folder in sorted(layout.stages.glob(f"{task}-*")):
            if folder.is_dir() and not _building(folder):
                _stage_folder(folder)
        for folder in sorted(layout.teachers.glob(f"{task}-*")):
            if (folder / "fsd_teacher.json").is_file() and not _building(folder):
                _json(folder / "fsd_teacher.json", f"delete {folder}: the teacher is fine-tuned again",
                      _fields({"task": str}))
        if caches:
            for folder in sorted(layout.caches.glob(f"{task}-*")):
                if folder.is_dir() and not _building(folder):
                    _cache_folder(folder)
            for folder in sorted(layout.data_cache.glob(f"{task}-*")):
                if folder.is_dir() and not _building(folder):
                    _data_folder(folder)
    if mlflow_uri.startswith("sqlite:///"):
        path = Path(mlflow_uri[len("sqlite:///"):]).expanduser().absolute()
        if path.is_file():
            _mlflow_db(path)


def damaged(path: Path, how: str, fix: str) -> UsageError:
    return UsageError(f"{path} cannot be read: {how}; {fix}")


# ---------------------------------------------------------------------------------------------- folders
def _search_folder(folder: Path, storage: Path) -> None:
    ledger = folder / LEDGER
    if ledger.is_file():
        value = _json(ledger, f"restore it from a backup, or delete {folder} and run that search again without "
                              f"--resume (its finished stages are reused from {Layout(storage).stages})", _ledger)
        version = value.get(LAYOUT_KEY, 1)
        if version != SCHEMA:
            raise UsageError(f"{ledger} was written by storage layout {version}, and this fsd-tune reads layout "
                             f"{SCHEMA}: run the fsd-tune that wrote it, or give a new --storage")
    lose = "and run again (it only names the Ray processes of the search's last driver)"
    if (folder / RAY_TOKEN).is_file():
        _text(folder / RAY_TOKEN, f"delete it {lose}",
              lambda t: None if len(t) == 32 and all(c in "0123456789abcdef" for c in t) else "not a token")
    if (folder / RAY_PIDS).is_file():
        _json(folder / RAY_PIDS, f"delete it {lose}", _fields({"token": str, "pids": dict}))
    if (folder / OUTBOX).is_file():
        _json(folder / OUTBOX, "delete it and run again (the MLflow records still queued in it are "
              "lost; the search's results in the storage folder are not)", _fields({"queue": list, "ids": dict}))
    for path in sorted(folder.glob(f"{DEV}/*.json")):  # a comparison's dev scores of a checkpoint
        _json(path, "delete it: the comparison measures it again", _fields({}))
    if (folder / "compare.json").is_file():
        _json(folder / "compare.json", f"delete it, or run the comparison again into {folder}", _fields({}))


def _stage_folder(folder: Path) -> None:
    fix = f"delete the stage folder {folder} and run again: a search that needs the stage trains it afresh"
    done = folder / STAGE_RECORD
    if done.is_file():
        _json(done, fix, _fields({"winner": dict, "score": NUMBER, "trials": int, "search": str},
                                 {"checkpoint": MAYBE_STR, "run_id": MAYBE_STR, "samples": (int, type(None))}))
    if (folder / "rungs.json").is_file():
        _json(folder / "rungs.json", fix, _fields({"rungs": dict, "stopped": (dict, list)}))
    if (folder / "budget_gate.json").is_file():
        _json(folder / "budget_gate.json", fix, _fields({"spent": dict, "refused": bool, "live": list}))
    if (folder / "optuna.journal").is_file():
        # Optuna creates its journal empty before it logs the study: empty is whole until a trial exists.
        _journal(folder / "optuna.journal", fix, done.is_file() or any(folder.glob("*/*/params.json")))
    cut = set(unreported(folder))  # copies Ray never took: nothing reads them, the stage's restore removes them
    for checkpoint in sorted(folder.glob(f"*/*/{CHECKPOINTS}")):
        if checkpoint.is_dir() and checkpoint not in cut:
            _checkpoint(checkpoint, folder)


def _checkpoint(folder: Path, stage: Path) -> None:
    fix = (f"delete the checkpoint folder {folder} (or the stage folder {stage}) and run again with --resume to "
           "train it afresh")
    if (folder / "checkpoint.json").is_file():
        _json(folder / "checkpoint.json", fix, _fields({"epoch": int, "step": int, "config": dict},
                                                       {"samples": (int, type(None)), "best_score": MAYBE_NUMBER}))
    if (folder / "resume.json").is_file():
        kinds = ("tensor", "dict", "pairs", "tuple", "list", "value")
        _json(folder / "resume.json", fix,
              lambda v: None if isinstance(v, dict) and len(v) == 1 and next(iter(v)) in kinds else "not a state tree")
    if (folder / "student" / "config.json").is_file():
        _json(folder / "student" / "config.json", fix, _fields({"model_type": str}))
    for name in ("student/model.safetensors", "resume.safetensors"):
        if (folder / name).is_file():
            _safetensors(folder / name, fix)
    if (folder / "analysis" / "analysis.json").is_file():
        _json(folder / "analysis" / "analysis.json", fix, _fields({}))


def _cache_folder(folder: Path) -> None:
    fix = f"delete {folder}: the next stage that needs it writes it again"
    if (folder / "key.json").is_file():
        _json(folder / "key.json", fix, _fields({"task": str, "teacher": str, "data": str, "rows": int}))
    for path in sorted(folder.glob("*.npy")):
        _npy(path, fix)


def _data_folder(folder: Path) -> None:
    fix = f"delete {folder}: the data is tokenised again"
    if (folder / "dataset_dict.json").is_file():
        _json(folder / "dataset_dict.json", fix, _fields({"splits": list}))
    for path in sorted(folder.glob("*/state.json")):
        _json(path, fix, _fields({"_data_files": list}))
    for path in sorted(folder.glob("*/dataset_info.json")):
        _json(path, fix, _fields({}))


def _building(folder: Path) -> bool:
    """Whether a live process holds `<folder>.lock` (`fsd.storage.one_builder`): it is writing `folder`."""
    try:
        fd = os.open(f"{folder}.lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's shared lock
    return False


# ---------------------------------------------------------------------------------------------- files
def _read(path: Path, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise damaged(path, e.strerror or str(e), fix) from None


def _text(path: Path, fix: str, schema: Schema) -> str:
    data = _read(path, fix)
    if not data.strip():
        raise damaged(path, "it is empty", fix)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise damaged(path, "it is not text (binary garbage)", fix) from None
    problem = schema(text.strip())
    if problem:
        raise damaged(path, f"it is not what fsd-tune wrote ({problem})", fix)
    return text


def _json(path: Path, fix: str, schema: Schema) -> Any:
    """The JSON document in `path`, checked by `schema` (a problem in words, or None)."""
    text = _text(path, fix, lambda _: None)
    try:
        value = json.loads(text)
    except ValueError as e:
        # Every document fsd-tune writes is an object: one that does not end with "}" was cut short.
        how = "it is cut short" if not text.rstrip().endswith("}") else f"it is not JSON ({e})"
        raise damaged(path, how, fix) from None
    problem = schema(value)
    if problem:
        raise damaged(path, f"it is not what fsd-tune wrote ({problem})", fix)
    return value


def _fields(required: dict[str, type | tuple], optional: dict[str, type | tuple] | None = None) -> Schema:
    """A schema: an object with the `required` keys, and the `optional` ones when present, of these types."""

    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"a JSON {type(value).__name__}, not an object"
        for key in required:
            if key not in value:
                return f"no {key!r}"
        for key, kind in {**required, **(optional or {})}.items():
            if key in value and not isinstance(value[key], kind):
                return f"{key!r} is a {type(value[key]).__name__}"
        return None

    return check


def _ledger(value: Any) -> str | None:
    problem = _fields({}, {"search": dict, "stages": dict, "teacher": str, "best": dict, "budget": dict,
                           LAYOUT_KEY: int, "majority": (dict, type(None)), "search_run_id": MAYBE_STR,
                           "experiment_id": MAYBE_STR, "run_id": MAYBE_STR})(value)
    if problem:
        return problem
    record = _fields({}, {"status": str, "winner": dict, "score": MAYBE_NUMBER, "checkpoint": MAYBE_STR,
                          "shared": str, "run_id": MAYBE_STR, "trials": int})
    for name, stage in value.get("stages", {}).items():
        problem = record(stage)
        if problem:
            return f"stage {name}: {problem}"
    return None


def _journal(path: Path, fix: str, used: bool) -> None:
    """Optuna's journal: whole lines, each a JSON log entry (Optuna stops at a bad line and writes after it)."""
    data = _read(path, fix)
    if not data:
        if used:
            raise damaged(path, "it is empty, but the stage's trials were logged in it", fix)
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise damaged(path, "it is not text (binary garbage)", fix) from None
    if not data.endswith(b"\n"):
        raise damaged(path, "it is cut short (its last line is not whole)", fix)
    for number, line in enumerate(data.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise damaged(path, f"line {number} is not JSON", fix) from None
        if not isinstance(entry, dict) or not isinstance(entry.get("op_code"), int) or "worker_id" not in entry:
            raise damaged(path, f"it is not what fsd-tune wrote (line {number} is not an Optuna log entry)", fix)


def _safetensors(path: Path, fix: str) -> None:
    """A safetensors file's header (8 bytes of length, then JSON) and its length against the header's."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if size == 0:
            raise damaged(path, "it is empty", fix)
        if length < 0 or 8 + length > size:
            raise damaged(path, "it is cut short, or not a safetensors file", fix)
        try:
            header = json.loads(f.read(length))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise damaged(path, "it is not a safetensors file (its header is not one)", fix) from None
    if 8 + length + end != size:
        raise damaged(path, f"it is {size:,} bytes where its header says {8 + length + end:,}", fix)


def _npy(path: Path, fix: str) -> None:
    """A `.npy` array's header, and its length against the header's shape."""
    import numpy as np

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            start = f.tell()
    except (ValueError, OSError, SyntaxError):
        raise damaged(path, "it is empty" if size == 0 else "it is not a .npy array (its header is not one)",
                      fix) from None
    need = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != need:
        raise damaged(path, f"it is {size:,} bytes where its header says {need:,}", fix)


def _mlflow_db(path: Path) -> None:
    """MLflow's sqlite store, read-only: an sqlite file whose pages check, with MLflow's tables."""
    fix = ("restore it from a backup, or move it aside to start an empty MLflow store there (the runs it held "
           "are lost; the searches' results in the storage folder are not)")
    if path.stat().st_size == 0:
        raise damaged(path, "it is empty (no MLflow tables)", fix)
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.OperationalError:  # cannot open it read-only (a folder's permissions): MLflow will say
        return
    try:
        check = con.execute("PRAGMA quick_check").fetchone()
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:
        return  # busy (a search writing it) or a journal to roll back, which needs a writer: not damage
    except sqlite3.DatabaseError as e:
        raise damaged(path, f"it is not a whole sqlite database ({e})", fix) from None
    finally:
        con.close()
    if check != ("ok",):
        raise damaged(path, f"it is not a whole sqlite database ({check[0]})", fix)
    if not {"experiments", "runs", "alembic_version"} <= tables:
        raise damaged(path, "it is an sqlite database without MLflow's tables", fix)

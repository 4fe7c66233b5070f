"""The data folder and the models of a tune_main.py command line, checked before anything is written: the
task's files parse, the holdout and the teacher memory fit the rows, the teacher fits the task, the student
fits its backbone. Each problem is one `UsageError` naming the flag and the fix (the core's own checks where
the core has one: `models.teacher_problem`, `teacher_memory.memory_rows_problem`)."""

from __future__ import annotations

import csv
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fsd.logs import first_line
from fsd.tasks import Task
from fsd.tuning.command.flags import UsageError
from search_spaces import Schedule

HUB_TIMEOUT_S = 5.0  # the hub's API answers in well under a second when it is there


def check_data(task: Task, data_dir: str | None, schedule: Schedule, stages: tuple[str, ...],
               extra: dict[str, Any], holdout_rows: int | None = None, holdout_seed: int = 42,
               hub: bool = True) -> None:
    """Every split the task needs exists and parses (columns, labels, at least one row), a holdout of
    `holdout_rows` can be drawn from it, and it has rows enough for the teacher memory if a stage to run
    (`stages`, empty: all) needs one. Without --data-dir, the hub must be able to serve the data (`hub`: probe
    it, see `hub_problem`); its files are checked when they are read."""
    if data_dir is None:
        if not hub:  # --dry-run counts the hub's rows from the official sizes: it needs no data
            return
        from fsd.data import HUB_DATASET

        problem = hub_problem("dataset", HUB_DATASET)
        if problem is not None:
            raise UsageError(f"no --data-dir, so the GLUE data must come from the Hugging Face hub, but {problem}: "
                             "pass --data-dir with a GLUE download folder (e.g. --data-dir ../shared/glue_data)")
        fetch_data(task)
        return
    from fsd.data import DataError, Holdout, load_raw

    # The run reads the files again and reports skipped lines then: here they would spoil the one error line.
    data_log = logging.getLogger("fsd.data")
    level = data_log.level
    data_log.setLevel(logging.ERROR)
    try:
        raw = load_raw(task, data_dir)
    except DataError as e:
        raise UsageError(f"--data-dir: {e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"--data-dir {data_dir}: a {task.folder} file is no UTF-8 GLUE TSV ({e}); replace it "
                         "with the GLUE download's") from None
    finally:
        data_log.setLevel(level)
    train_rows = len(raw["train"])
    if holdout_rows is not None:
        try:
            train_rows = len(Holdout(holdout_rows, holdout_seed).split(raw["train"]["label"], task.is_regression)[0])
        except DataError as e:
            raise UsageError(f"--holdout-rows {holdout_rows}: {e}; choose another size") from None
    if any(s.method in ("fsdg", "fsd") for s in schedule.stages if not stages or s.name in stages):
        from fsd.objectives.teacher_memory import memory_rows_problem

        budget = schedule.budget
        limit = extra["max_train_samples"] if "max_train_samples" in extra else budget.max_train_samples
        rows = min(train_rows, limit or train_rows)
        problem = memory_rows_problem(task.name, extra.get("memory_size", budget.memory_size), rows)
        if problem is not None:
            raise UsageError(f"--data-dir: {problem} (of {task.folder}/train.tsv): use more rows, or --set "
                             f"memory_size=N with N <= {rows}")


def check_models(task: Task, teacher: str, student_init: str | None, student_layers: int, max_seq_len: int) -> None:
    """The teacher fits the task (its task, its label count); the student is no deeper than the teacher or
    its own backbone; the sequence length fits both. Hub ids not cached here are checked on download."""
    from fsd.models import teacher_meta, teacher_problem

    t_config = _model_config(teacher, "--teacher") or _hub_model(teacher, "--teacher")
    meta = teacher_meta(teacher)
    problem = teacher_problem(teacher, task.name, task.num_labels, t_config)
    if problem is not None:
        raise UsageError(f"--teacher {problem}")
    backbone = student_init or (meta["backbone"] if meta else teacher)
    flag = "--student-init" if student_init else "the backbone of --teacher"
    s_config = t_config if backbone == teacher else _model_config(backbone, flag) or _hub_model(backbone, flag)
    for config, what, fix in ((t_config, f"teacher {teacher}", "a deeper --teacher"),
                              (s_config, f"student backbone {backbone}", "a deeper --student-init")):
        if config is None:
            continue
        depth = config.num_hidden_layers
        if student_layers > depth:
            raise UsageError(f"--student-layers {student_layers} is deeper than the {depth}-layer {what}: choose "
                             f"at most {depth}, or {fix}")
        positions = getattr(config, "max_position_embeddings", None)
        if positions and max_seq_len > positions:
            raise UsageError(f"--max-seq-len {max_seq_len} exceeds the {positions} positions of the {what}: "
                             f"choose at most {positions}")


MODEL_FILES = ["*.json", "*.txt", "*.model", "*.safetensors"]  # config, tokenizer, weights: not other frameworks' files


def _hub_model(name: str, flag: str):
    """A model that is neither a folder nor in the local cache, downloaded now through the Hugging Face client
    (config, tokenizer and weights, into its cache): a model the hub does not have, or a download that breaks
    off, is refused before anything is written. Returns its config."""
    problem = hub_problem("model", name)
    if problem is not None:
        raise UsageError(f"{flag} {name} is not in the local Hugging Face cache and {problem}: pass a local model "
                         "folder, or --teacher packaged-minilm to work offline")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        folder = Path(snapshot_download(name, allow_patterns=MODEL_FILES))
        if not any(folder.glob("*.safetensors")):  # an older repository: PyTorch's own weights
            snapshot_download(name, allow_patterns=["pytorch_model*.bin"])
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise UsageError(f"{flag} {name}: the hub ({endpoint}) has no such model: check the id, or pass a local "
                         "model folder") from None
    except Exception as e:  # noqa: BLE001 - a broken download surfaces as the HTTP stack's errors, of many kinds
        raise UsageError(f"{flag} {name}: its download from {endpoint} failed ({first_line(e)}): check the connection "
                         "and run again (what was downloaded is kept in the Hugging Face cache)") from None
    return _model_config(name, flag)


def fetch_data(task: Task) -> None:
    """The task's GLUE data downloaded now through `datasets` (into its cache, where the run reads it): a
    download that fails is refused before anything is written."""
    from fsd.data import HUB_DATASET, load_raw

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        load_raw(task, None)
    except Exception as e:  # noqa: BLE001 - the hub's and the HTTP stack's errors, of many kinds
        raise UsageError(f"no --data-dir, and {HUB_DATASET} ({task.hub_name}) could not be downloaded from "
                         f"{endpoint} ({first_line(e)}): check the connection and run again, or pass --data-dir with a "
                         "GLUE download folder") from None


def hub_problem(kind: str, repo: str) -> str | None:
    """Why the Hugging Face hub cannot serve `repo` (a "model" or a "dataset") now, or None.

    Offline mode (HF_HUB_OFFLINE, or HF_DATASETS_OFFLINE for a dataset) is honoured: then nothing is asked
    and a dataset must already be in the `datasets` cache. Otherwise one request of at most HUB_TIMEOUT_S to
    the hub's API (`HF_ENDPOINT`, default https://huggingface.co): any answer means the hub is there (whether
    the repo exists is the download's to say); no answer is the problem."""
    offline = _truthy("HF_HUB_OFFLINE") or (kind == "dataset" and _truthy("HF_DATASETS_OFFLINE"))
    if offline:
        if kind == "dataset" and _dataset_cached(repo):
            return None
        return "Hugging Face offline mode is on (HF_HUB_OFFLINE" + (
            " or HF_DATASETS_OFFLINE)" if kind == "dataset" else ")")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(f"{endpoint}/api/{kind}s/{repo}", timeout=HUB_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"the hub ({endpoint}) cannot be reached ({reason})"
    return None


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _dataset_cached(repo: str) -> bool:
    """Whether `datasets` has `repo` in its cache (a folder `<owner>___<name>` there)."""
    home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    cache = Path(os.environ.get("HF_DATASETS_CACHE", str(Path(home) / "datasets")))
    return any(cache.glob(repo.replace("/", "___") + "*"))


def _model_config(name: str, flag: str):
    """The Hugging Face config of a model folder, of `packaged-minilm`, or of a hub id cached here; None for
    a hub id that is not (it cannot be read offline)."""
    from transformers import AutoConfig

    from fsd.models import resolve_model_path

    try:
        path = resolve_model_path(name)
    except ValueError as e:
        raise UsageError(f"{flag} {name}: {e}") from None
    local = Path(path).exists()
    if local and not (Path(path) / "config.json").is_file():
        raise UsageError(f"{flag} {name}: {path} holds no config.json; pass a Hugging Face model folder, a hub id "
                         "or packaged-minilm")
    if not local and name.startswith(("/", ".", "~")):
        raise UsageError(f"{flag} {name}: no such folder; fix the path, or pass a hub id or packaged-minilm")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        if local:
            raise UsageError(f"{flag} {name}: its config.json cannot be read ({first_line(e)}); pass a Hugging Face "
                             "model folder") from None
        return None



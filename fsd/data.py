"""Load a GLUE task (hub or local GLUE folder), tokenise it once with a disk cache, batch it."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from fsd.storage import atomic_folder, content_key, one_builder
from fsd.tasks import Task, get_task

log = logging.getLogger(__name__)
HUB_DATASET = "nyu-mll/glue"
csv.field_size_limit(sys.maxsize)  # a few MNLI parse columns are longer than csv's default limit


class DataError(ValueError):
    """A data folder or file that cannot be read as the task needs; the message says how to fix it."""


# ---------------------------------------------------------------------------------------------- reading
def _local_file(task: Task, data_dir: str, split_file: str) -> Path:
    path = Path(data_dir) / task.folder / f"{split_file}.tsv"
    if not path.is_file():
        raise DataError(
            f"{path} not found: --data-dir must hold {task.folder}/{split_file}.tsv in the GLUE download layout"
        )
    return path


def _convert_label(task: Task, raw: str, where: str) -> float | int:
    if task.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise DataError(f"{where}: label {raw!r} is not a number; fix or remove that row") from None
    if raw not in task.labels:
        raise DataError(f"{where}: label {raw!r} is not one of {list(task.labels)}; fix or remove that row")
    return task.labels.index(raw)


def read_glue_tsv(task: Task, path: Path) -> dict[str, list]:
    """Rows of one GLUE-layout TSV as `{"text_a", "text_b"?, "label"}` columns.

    Quoting is off (quotes are text in GLUE), a leading BOM is dropped, and lines with the wrong number of
    fields (QQP has some) are skipped and counted in the log.
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if task.has_header:
        if not rows:
            raise DataError(f"{path} is empty: it needs a header line and at least one row")
        header, rows = rows[0], rows[1:]
        wanted = [*task.local_columns, task.local_label]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(f"{path} has no column {missing[0]!r} (header: {header}); is it the {task.folder} file?")
        index = [header.index(c) for c in wanted]
        width = len(header)
    else:
        index = [*task.local_columns, task.local_label]
        width = 4
    out: dict[str, list] = {"text_a": [], "text_b": [], "label": []}
    skipped = 0
    for line_no, row in enumerate(rows, start=2 if task.has_header else 1):
        if len(row) != width:
            skipped += 1
            continue
        out["text_a"].append(row[index[0]])
        if len(task.local_columns) == 2:
            out["text_b"].append(row[index[1]])
        out["label"].append(_convert_label(task, row[index[-1]], f"{path}:{line_no}"))
    if skipped:
        log.warning("%s: skipped %d malformed line(s) with a field count other than %d", path, skipped, width)
    if not out["label"]:
        raise DataError(f"{path} has no usable row: check that it is the {task.folder} file")
    if not out["text_b"]:
        del out["text_b"]
    return out


def _split_files(task: Task) -> dict[str, str]:
    return {"train": "train", **dict(zip(task.dev_splits, task.local_dev_files, strict=True))}


def load_raw(task: str | Task, data_dir: str | None = None) -> DatasetDict:
    """The train and dev splits of a task, columns `text_a`, `text_b` (pairs only) and `label`.

    Args:
        task: task name or `Task`.
        data_dir: a folder in the GLUE download layout; None reads `nyu-mll/glue` from the hub.
    """
    spec = get_task(task) if isinstance(task, str) else task
    if data_dir is not None:
        return DatasetDict(
            {split: Dataset.from_dict(read_glue_tsv(spec, _local_file(spec, data_dir, name)))
             for split, name in _split_files(spec).items()}
        )
    hub = load_dataset(HUB_DATASET, spec.hub_name)
    renames = dict(zip(spec.text_columns, ("text_a", "text_b")[:len(spec.text_columns)], strict=True))
    keep = ["train", *spec.dev_splits]
    return DatasetDict(
        {s: hub[s].select_columns([*spec.text_columns, "label"]).rename_columns(renames) for s in keep}
    )


def split_rows(task: str | Task, data_dir: str | None, max_train: int | None = None,
               max_eval: int | None = None, holdout: int = 0) -> tuple[int, int]:
    """(train, main dev) rows a run reads, writing nothing: the local files' counts (after `holdout` rows are
    set aside and the `max_*` limits), or the official sizes for the hub."""
    spec = get_task(task) if isinstance(task, str) else task
    if data_dir is None:
        train, dev = spec.train_rows, spec.dev_rows
    else:
        raw = load_raw(spec, data_dir)
        train, dev = len(raw["train"]), len(raw[spec.main_dev_split])
    train -= holdout
    return min(train, max_train or train), min(dev, max_eval or dev)


@dataclass(frozen=True)
class Holdout:
    """Training rows set aside to rank trials on instead of dev: `rows` of them, drawn with `seed`, stratified
    by label for classification, so the dev score a search reports is not the one it maximised."""

    rows: int
    seed: int

    def split(self, labels: list, regression: bool) -> tuple[list[int], list[int]]:
        """(training rows, holdout rows): indices into `labels`, each list ascending (the file's order).

        Raises:
            DataError: the holdout would leave no training row, or has fewer rows than classes.
        """
        n = len(labels)
        if not 0 < self.rows < n:
            raise DataError(f"a holdout of {self.rows} rows leaves none of the {n} training rows to train on")
        from sklearn.model_selection import train_test_split  # here: every trial's worker imports this module

        try:
            train, held = train_test_split(list(range(n)), test_size=self.rows, random_state=self.seed,
                                           stratify=None if regression else labels)
        except ValueError as e:  # sklearn: fewer holdout rows than classes, or a class of one row
            raise DataError(f"a holdout of {self.rows} rows cannot be stratified by label ({e})") from None
        return sorted(train), sorted(held)

    def tag(self) -> str:
        """What cache keys of the rows it leaves for training add."""
        return f"holdout{self.rows}s{self.seed}"


# ---------------------------------------------------------------------------------------------- tokenising
def source_fingerprint(task: Task, data_dir: str | None) -> str:
    """What the task's rows are, for the keys of everything built from them (tokenised data, the teacher,
    its cache): the local files' contents, so that a copied, moved or re-mounted GLUE folder (new paths
    and times, the same rows) reuses what was built, and an edited file does not."""
    if data_dir is None:
        return f"hub:{HUB_DATASET}/{task.hub_name}"
    parts = []
    for name in _split_files(task).values():
        p = _local_file(task, data_dir, name)
        st = p.stat()
        parts.append(f"{name}:{_file_digest(str(p.resolve()), st.st_size, st.st_mtime_ns)}")
    return "|".join(parts)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, read once per process for a given size and time (trials ask for keys often)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """What makes two tokenisers produce the same ids: class, vocabulary, lower-casing."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    lower = getattr(tokenizer, "do_lower_case", None)
    return content_key(f"{type(tokenizer).__name__}|{lower}|{vocab}")


def cache_key(task: Task, tokenizer, max_seq_len: int, data_dir: str | None) -> str:
    src = source_fingerprint(task, data_dir)
    raw = f"{task.name}|{tokenizer_fingerprint(tokenizer)}|{max_seq_len}|{src}"
    return f"{task.name}-len{max_seq_len}-{content_key(raw, 12)}"


def tokenise(raw: DatasetDict, tokenizer, max_seq_len: int) -> DatasetDict:
    def encode(batch):
        texts = (batch["text_a"], batch["text_b"]) if "text_b" in batch else (batch["text_a"],)
        enc = tokenizer(*texts, truncation=True, max_length=max_seq_len)
        return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}

    cols = raw["train"].column_names
    drop = [c for c in cols if c != "label"]
    return raw.map(encode, batched=True, remove_columns=drop, desc="tokenising")


def load_task_data(
    task: str | Task,
    tokenizer,
    max_seq_len: int = 128,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    holdout: Holdout | None = None,
) -> DatasetDict:
    """Tokenised train and dev splits (`input_ids`, `token_type_ids`, `label`), and with `holdout` a
    `holdout` split of training rows that `train` no longer holds.

    The tokenised data is saved once under `cache_dir/<key>`, key = (task, tokeniser, max_seq_len, data
    source), written to a temporary folder and renamed so a killed run never leaves half a cache.
    `max_*_samples` keep the first N rows of a split (after the cache, so the cache stays whole; for
    training, after the holdout is set aside, so the holdout does not depend on the budget).
    """
    spec = get_task(task) if isinstance(task, str) else task
    data = None
    if cache_dir is not None:
        final = Path(cache_dir) / cache_key(spec, tokenizer, max_seq_len, data_dir)
        if not final.is_dir():
            with one_builder(final, f"tokenised {spec.name}"):  # another process may be at it
                if not final.is_dir():
                    data = tokenise(load_raw(spec, data_dir), tokenizer, max_seq_len)
                    with atomic_folder(final) as tmp:
                        data.save_to_disk(str(tmp))
        data = load_from_disk(str(final))
    else:
        data = tokenise(load_raw(spec, data_dir), tokenizer, max_seq_len)
    out = {s: data[s] for s in ("train", *spec.dev_splits)}
    if holdout is not None:
        train, held = holdout.split(data["train"]["label"], spec.is_regression)
        out["train"], out["holdout"] = data["train"].select(train), data["train"].select(held)
    limits = {"train": max_train_samples, **{s: max_eval_samples for s in spec.dev_splits}}
    return DatasetDict({s: split.select(range(min(limits[s], len(split)))) if limits.get(s) else split
                        for s, split in out.items()})


# ---------------------------------------------------------------------------------------------- batching
def token_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A column of token lists as one flat int32 array and the rows' offsets (row i is
    `values[offsets[i]:offsets[i + 1]]`)."""
    column = table.column(name).combine_chunks()
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int32)  # a copy: writable
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    return values, np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


class Batches:
    """Mini-batches of a tokenised split, padded per batch (or to `pad_to`), reproducible per epoch.

    The order of epoch e depends only on (seed, e), so a run resumed at epoch e sees the same batches as an
    uninterrupted one. With `group_by_length`, each window of `GROUP_WINDOW` batches of the shuffled order
    is sorted by length before it is cut into batches, and the batches are then shuffled: batches hold
    sentences of similar length, so per-batch padding wastes little, while every epoch still mixes the data.
    """

    GROUP_WINDOW = 50  # batches per length-sorted window (as Hugging Face's "megabatches")

    def __init__(self, split: Dataset, batch_size: int, pad_id: int, shuffle: bool = False,
                 seed: int = 0, pad_to: int | None = None, regression: bool = False,
                 group_by_length: bool = False):
        # Read from Arrow once, as arrays: `split["input_ids"][i]` reads row i from Arrow at every index, 320 us
        # a row at QQP's 363,846 rows (73 us at 10,000), 30 ms of every 32-row batch.
        table = split.with_format("arrow")[:]  # the split's rows, a selection applied
        self.ids, self.offsets = token_column(table, "input_ids")
        self.types, _ = token_column(table, "token_type_ids")
        self.lengths = np.diff(self.offsets)  # tokens per row
        self._length = self.lengths.tolist()  # for sort keys: a list reads faster than an array, one at a time
        labels = table.column("label").to_numpy()
        self.labels = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
        self.batch_size, self.pad_id, self.shuffle, self.seed, self.pad_to = (
            batch_size, pad_id, shuffle, seed, pad_to)
        self.group_by_length = group_by_length

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def batch_rows(self, epoch: int = 0) -> list[list[int]]:
        """The row indices of every batch of `epoch`, in order."""
        n, size = len(self.labels), self.batch_size
        if not self.shuffle:
            return [list(range(i, min(i + size, n))) for i in range(0, n, size)]
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        if not self.group_by_length:
            return [order[i:i + size] for i in range(0, n, size)]
        window = size * self.GROUP_WINDOW
        rows: list[list[int]] = []
        for start in range(0, n, window):
            chunk = sorted(order[start:start + window], key=lambda i: -self._length[i])
            rows.extend(chunk[i:i + size] for i in range(0, len(chunk), size))
        return [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]

    def by_length(self) -> Iterator[list[int]]:
        """Every row once, a batch at a time: the stored order cut into windows of `GROUP_WINDOW` batches, each
        sorted by length (a pass over the data that pads little, and writes near where it reads)."""
        n, window = len(self.labels), self.batch_size * self.GROUP_WINDOW
        for start in range(0, n, window):
            chunk = sorted(range(start, min(start + window, n)), key=self._length.__getitem__)
            yield from (chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size))

    def epoch(self, epoch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for rows in self.batch_rows(epoch):
            yield self.collate(rows)

    def collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        width = self.pad_to or max(self._length[i] for i in idx)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            a, b = self.offsets[i], self.offsets[i + 1]
            n = b - a
            ids[row, :n] = torch.from_numpy(self.ids[a:b])
            types[row, :n] = torch.from_numpy(self.types[a:b])
            mask[row, :n] = 1
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
                "labels": self.labels[idx], "index": torch.tensor(idx)}  # index: the rows, for the teacher cache

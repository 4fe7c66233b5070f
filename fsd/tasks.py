"""The nine GLUE tasks: columns, labels, metrics and the paper's per-task constants."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """One GLUE task as this project reads, trains and scores it.

    `text_columns` are the hub (`nyu-mll/glue`) names; `local_columns` the GLUE-download TSV header
    names of the same fields (CoLA has no header: integer positions). `labels` are the GLUE download's label
    values in the hub's label order, so a teacher trained on hub data and one trained on a local folder agree
    on what class 0 means; `label_names` are the hub's names of those classes (what a served student says).
    """

    name: str
    hub_name: str
    folder: str
    text_columns: tuple[str, ...]
    local_columns: tuple[str | int, ...]
    local_label: str | int
    labels: tuple[str, ...]  # () for regression
    label_names: tuple[str, ...]  # the hub's ClassLabel names, in the same order (() for regression)
    metrics: tuple[str, ...]
    score: str  # name of the primary selection metric, computed by fsd.metrics
    teacher_lr: float
    memory_size: int
    dev_splits: tuple[str, ...] = ("validation",)
    local_dev_files: tuple[str, ...] = ("dev",)
    has_header: bool = True

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels)

    @property
    def main_dev_split(self) -> str:
        return self.dev_splits[0]

    @property
    def train_rows(self) -> int:
        """Rows of the official training split (`nyu-mll/glue`), for cost estimates before any data is read."""
        return ROWS[self.name][0]

    @property
    def dev_rows(self) -> int:
        """Rows of the official dev split(s), all of them (MNLI: matched + mismatched)."""
        return ROWS[self.name][1]


# (train, dev) rows of `nyu-mll/glue`; MNLI's dev is matched 9,815 + mismatched 9,832.
ROWS = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500),
        "qqp": (363846, 40430), "mnli": (392702, 19647), "qnli": (104743, 5463), "rte": (2490, 277),
        "wnli": (635, 71)}
_BIN = ("0", "1")
_ENT = ("entailment", "not_entailment")
_MNLI = ("entailment", "neutral", "contradiction")

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("cola", "cola", "CoLA", ("sentence",), (3,), 1, _BIN, ("unacceptable", "acceptable"),
             ("mcc", "accuracy"), "mcc", 2e-5, 100, has_header=False),
        Task("sst2", "sst2", "SST-2", ("sentence",), ("sentence",), "label", _BIN, ("negative", "positive"),
             ("accuracy",), "accuracy", 2e-5, 100),
        Task("mrpc", "mrpc", "MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"),
             "Quality", _BIN, ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1_acc", 2e-5, 100),
        Task("stsb", "stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"),
             "score", (), (), ("pearson", "spearman"), "pearson_spearman", 5e-5, 100),
        Task("qqp", "qqp", "QQP", ("question1", "question2"), ("question1", "question2"),
             "is_duplicate", _BIN, ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1_acc", 2e-5, 300),
        Task("mnli", "mnli", "MNLI", ("premise", "hypothesis"), ("sentence1", "sentence2"),
             "gold_label", _MNLI, _MNLI, ("accuracy",), "accuracy",
             2e-5, 300, dev_splits=("validation_matched", "validation_mismatched"),
             local_dev_files=("dev_matched", "dev_mismatched")),
        Task("qnli", "qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label",
             _ENT, _ENT, ("accuracy",), "accuracy", 2e-5, 100),
        Task("rte", "rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
             _ENT, _ENT, ("accuracy",), "accuracy", 2e-5, 100),
        Task("wnli", "wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"),
             "label", _BIN, ("not_entailment", "entailment"), ("accuracy",), "accuracy", 5e-5, 100),
    )
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}


def get_task(name: str) -> Task:
    """Look a task up by name (case-insensitive; 'SST-2' and 'sst2' both work).

    Raises:
        ValueError: an unknown task, with the valid names.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[key]

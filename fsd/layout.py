"""Where each thing lives in a storage folder (`--storage`): `Layout(root)` names every folder and file of it,
and every module asks it instead of spelling a name. Plain paths: no Ray, no MLflow, nothing written.

```
<root>/teacher/<key>/                  fine-tuned teachers, one per recipe (`fsd.teacher`)
       data_cache/<key>/               tokenised splits (`fsd.data`)
       cache/<task>-<key>/             teacher-output caches (`fsd.teacher_source`)
       memory/<task>-k<k>-<key>.pt     teacher memories (FSDG)
       stages/<task>-<stage>-<key>/    stages keyed by content, shared by every search (stage.json, Ray's trials)
       mlflow.db, mlartifacts/         the default MLflow store
       <task>-<method>/                one search: ledger.json, .lock, the outbox, Ray's token and pids, fresh/
       <task>-compare/                 --compare: compare.md/.csv/.json, dev/, ray/, analysis/
       <task>-report.html              --report's page
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCHEMA = 1  # the version of this layout: a change that older storage folders would not match bumps it
LAYOUT_KEY = "layout"  # the ledger's field that records it (none: written by version 1, before it was kept)

# Shared by every search of the storage folder.
TEACHERS, DATA_CACHE, CACHES, MEMORIES, STAGES = "teacher", "data_cache", "cache", "memory", "stages"
MLFLOW_DB = "mlflow.db"  # the default MLflow store (SQLite), with its -journal and .lock beside it
MLFLOW_ARTIFACTS = "mlartifacts"  # the default store's artifacts, beside its database
SHARED = frozenset({TEACHERS, DATA_CACHE, CACHES, MEMORIES, STAGES, MLFLOW_DB, f"{MLFLOW_DB}-journal",
                    f"{MLFLOW_DB}.lock", MLFLOW_ARTIFACTS})
OLD_FIGURES = "report-figures"  # the figures folder an older --report wrote beside its page
# In a search's folder (`Layout.search`, `Layout.compare`).
LEDGER = "ledger.json"  # the search's identity, its stages' records and winners
LOCK = ".lock"  # held by the one driver running the search (`fsd.tuning.search.lock`)
OUTBOX = "mlflow_outbox.json"  # MLflow writes waiting out an outage
RAY_TOKEN = "ray_token"  # the mark of the Ray processes the driver started
RAY_PIDS = "ray_pids.json"  # those processes
FRESH = "fresh"  # the search's best on fresh seeds
DEV = "dev"  # dev scores of checkpoints ranked on a holdout
SEED_RUNS = "ray"  # the Ray experiments of seed runs
COMPARE = "compare"  # the method name of --compare's folder, and the stem of its files
# In a stage's folder (`Layout.stage`).
STAGE_RECORD = "stage.json"  # a finished stage: its winner, score and checkpoint


def search_name(task: str, method: str) -> str:
    """The name of a search's folder in the storage folder (`compare` for --compare's)."""
    return f"{task}-{method}"


def report_name(task: str) -> str:
    return f"{task}-report.html"


def root_entries(tasks: tuple[str, ...], methods: tuple[str, ...]) -> frozenset[str]:
    """Every name this layout writes in a storage folder for these tasks and methods."""
    return SHARED | {search_name(t, m) for t in tasks for m in (*methods, COMPARE)} | \
        {report_name(t) for t in tasks} | {f"{t}-{OLD_FIGURES}" for t in tasks}


@dataclass(frozen=True)
class Layout:
    """The folders and files of the storage folder `root` (an absolute path)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # Shared by every search of the storage folder.
    @property
    def teachers(self) -> Path:
        return self.root / TEACHERS

    def teacher(self, key: str) -> Path:
        return self.teachers / key

    @property
    def data_cache(self) -> Path:
        return self.root / DATA_CACHE

    @property
    def caches(self) -> Path:
        return self.root / CACHES

    def cache(self, task: str, key: str) -> Path:
        return self.caches / f"{task}-{key}"

    @property
    def memories(self) -> Path:
        return self.root / MEMORIES

    def memory(self, task: str, k: int, key: str) -> Path:
        return self.memories / f"{task}-k{k}-{key}.pt"

    @property
    def stages(self) -> Path:
        return self.root / STAGES

    def stage(self, task: str, name: str, key: str) -> Path:
        return self.stages / f"{task}-{name}-{key}"

    @property
    def mlflow_db(self) -> Path:
        return self.root / MLFLOW_DB

    @property
    def mlflow_uri(self) -> str:
        """The default MLflow store: a SQLite file in the storage folder."""
        return f"sqlite:///{self.mlflow_db}"

    # One folder per search.
    def search(self, task: str, method: str) -> Path:
        return self.root / search_name(task, method)

    def compare(self, task: str) -> Path:
        return self.search(task, COMPARE)

    def report(self, task: str) -> Path:
        return self.root / report_name(task)

    def ledger(self, task: str, method: str) -> Path:
        return self.search(task, method) / LEDGER

    def lock(self, task: str, method: str) -> Path:
        return self.search(task, method) / LOCK

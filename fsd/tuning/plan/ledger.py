"""The search's ledger: which stages are done, their winners and scores, the MLflow run ids.

Written to a temporary file and renamed, so a kill never leaves half a ledger. It names the version of the
storage layout that wrote it (`fsd.layout.SCHEMA`; a ledger without one was written by version 1), so a
command of another version refuses the folder instead of misreading it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypedDict

from fsd.layout import LAYOUT_KEY, LEDGER, SCHEMA
from fsd.storage import write_text


class StageRecord(TypedDict, total=False):
    """What the ledger keeps of a stage (JSON as written; keys appear as the stage gets that far)."""

    status: str  # "done" once its winner is final
    run_id: str | None  # the stage's MLflow run
    shared: str  # the digest of its shared folder, `<storage>/stages/<task>-<stage>-<digest>`
    reused_from: str  # the MLflow run that holds its trials, when another search ran them
    winner: dict[str, Any]  # the winning trial's DistillConfig values ({} for a prepare stage)
    score: float | None  # the winner's score on what trials are ranked on (dev or the holdout)
    checkpoint: str | None  # the winner's best checkpoint folder
    trials: int
    stopped: int  # trials halving stopped at a rung
    samples: int | None  # training samples its trials processed
    dev: dict[str, float]  # the winner's dev metrics, when trials were ranked on a holdout
    model_version: str | None  # the registered student's version
    analysis: dict[str, float]  # restoration rate, CKA diagonal, relation differences (fsd.analysis)
    memory_shape: list[int]  # a memory stage: the teacher memory's [K, D]


class Ledger:
    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LEDGER
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault("stages", {})
        self.data.setdefault(LAYOUT_KEY, SCHEMA)  # kept as read: a folder of another version is refused first

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def save(self) -> None:
        write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True))

    def stage(self, name: str) -> StageRecord:
        return self.data["stages"].setdefault(name, {})

    def done(self, name: str) -> bool:
        return self.data["stages"].get(name, {}).get("status") == "done"

    def records(self) -> dict[str, StageRecord]:
        return self.data["stages"]

    def winners(self) -> dict[str, dict[str, Any]]:
        return {k: v["winner"] for k, v in self.data["stages"].items() if v.get("status") == "done"}

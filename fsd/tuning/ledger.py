"""The search's ledger: which stages are done, their winners and scores, the MLflow run ids.

Written to a temporary file and renamed, so a kill never leaves half a ledger.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fsd.storage import write_text

LEDGER = "ledger.json"


class Ledger:
    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LEDGER
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault("stages", {})
        self.mlflow_note: str | None = None  # what the MLflow outbox has to say at the end (not saved)

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def save(self) -> None:
        write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True))

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].setdefault(name, {})

    def done(self, name: str) -> bool:
        return self.data["stages"].get(name, {}).get("status") == "done"

    def winners(self) -> dict[str, dict[str, Any]]:
        return {k: v["winner"] for k, v in self.data["stages"].items() if v.get("status") == "done"}

"""Stages shared across searches: a stage is named by a digest of everything that decides its trials (its
grid, the values every trial shares: teacher, data, budget, inherited winners; the strategy, the seeds,
and the winner it competes with), so an identical stage of another search in the same storage folder (the
VKD stage that starts every method's schedule, above all) is run once and its result reused.

Each such stage lives in `<storage>/stages/<task>-<stage>-<digest>/`: the Ray experiment, the rungs, the
Optuna journal, a lock, and `stage.json`, written once its trials are done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fsd.layout import STAGE_RECORD, Layout
from fsd.storage import content_key, write_text
from fsd.tuning.plan.spec import SPEED_KEYS
from fsd.tuning.plan.strategy import Strategy

# Values that do not change what the trials compute: a stage run with another of them is the same stage.
NOT_IN_KEY = (*SPEED_KEYS, "storage")


def stage_key(name: str, base: dict[str, Any], grid: dict[str, tuple], strategy: Strategy,
              seeds: list[int], carried: list[dict[str, Any]] | None) -> str:
    """The digest naming a stage's trials.

    Args:
        name: the stage's name in its schedule.
        base: the DistillConfig values all its trials share.
        grid: the resolved grid (parameter -> values).
        strategy: how the grid is searched (`grid`, or halving's rungs, or optuna's samples as well).
        seeds: the seeds each point runs with.
        carried: the earlier winners that compete with the stage's own (`winner`, `score` each), else None.
    """
    content = {"name": name, "base": {k: v for k, v in sorted(base.items()) if k not in NOT_IN_KEY},
               "grid": {k: [list(x) if isinstance(x, tuple) else x for x in v] for k, v in sorted(grid.items())},
               "strategy": strategy.key(), "seeds": seeds,
               "carried": _carried(carried)}
    return content_key(content)


def _carried(carried: list[dict[str, Any]] | None) -> Any:
    """The carried winners as the key holds them: one as a dict (the key of a refine stage before a stage could
    carry more than one), more as a list; of each winner's values, those NOT_IN_KEY left out, as in `base` (a
    folded point's winner is a whole trial's config: with its cache budget in the key, a search run with another
    one re-trained every stage after a fold, 2026-12-06)."""
    if not carried:
        return None
    out = [{"winner": _without_speed(c.get("winner")), "score": c.get("score")} for c in carried]
    return out[0] if len(out) == 1 else out


def _without_speed(winner: Any) -> Any:
    if not isinstance(winner, dict):
        return winner
    return {k: v for k, v in winner.items() if k not in NOT_IN_KEY}


def stage_folder(storage: str, task: str, name: str, key: str) -> str:
    return str(Layout(storage).stage(task, name, key))


def finished(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The record of a stage whose trials are done, or None (never run, or interrupted)."""
    path = Path(folder) / STAGE_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def save(folder: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write the done stage's record under a temporary name, then rename it: never half a record."""
    write_text(Path(folder) / STAGE_RECORD, json.dumps(record, indent=2, sort_keys=True, default=str))

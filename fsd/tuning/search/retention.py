"""What a stage keeps on disk: a search's storage stays bounded by its stages, not its trials.

While a stage runs, a trial that is over (finished or stopped at a rung) loses the state only resuming needs
(optimiser, student memory, RNG: `fsd.checkpoints.drop_resume_state`), and a trial that can no longer win
(stopped at a rung, or a point all of whose seeds finished below the best finished point) loses its
checkpoints. Once the stage is done, only its winner's checkpoint stays (`keep_only`). Resume needs nothing
more: Ray does not run a finished trial again, and a running one keeps its last checkpoint whole.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ray.tune import Callback

from fsd.checkpoints import drop_resume_state
from fsd.metrics import BEST_SCORE, reached_budget
from fsd.tuning.plan.ranking import METRIC
from fsd.tuning.search.unreported import CHECKPOINTS


def point_of(config: dict[str, Any]) -> tuple:
    """A trial's grid point: its config without the seed (seeds of one point are averaged)."""
    return tuple(sorted((k, str(v)) for k, v in config.items() if k != "seed"))


def losers(trials: list[dict[str, Any]], seeds: int, top: int = 1) -> list[str]:
    """The over trials that can no longer be the stage's winner, by id: stopped at a rung, or run to the end at
    a point all of whose `seeds` runs finished with a lower mean than the `top` best such points (ties are
    kept, as the winner rule breaks them later); within a kept point, all but its best run.

    Args:
        trials: `{"id", "config", "result", "over"}` per trial (`result`: its last result).
        seeds: the runs of each point.
        top: the points kept (a stage that confirms its leading points on more seeds keeps them all).
    """
    out, points = [], {}
    for t in trials:
        if not t["over"]:
            continue
        if not reached_budget(t["result"]) or METRIC not in t["result"]:
            out.append(t["id"])
            continue
        points.setdefault(point_of(t["config"]), []).append((float(t["result"].get(BEST_SCORE,
                                                                                       t["result"][METRIC])), t["id"]))
    complete = {p: runs for p, runs in points.items() if len(runs) >= seeds}
    if not complete:
        return out
    mean = {p: sum(s for s, _ in runs) / len(runs) for p, runs in complete.items()}
    best = sorted(mean.values(), reverse=True)[min(top, len(mean)) - 1]
    for p, runs in complete.items():
        if mean[p] < best:
            out.extend(i for _, i in runs)
        else:
            top = max(runs, key=lambda r: r[0])[1]  # the first best, as the winner rule takes it
            out.extend(i for _, i in runs if i != top)
    return out


class KeepWinners(Callback):
    """Prunes a stage's trials as they end (see the module docstring). With `delete` False (every trial's
    checkpoint is uploaded to MLflow after the stage: --log-checkpoints all) only the resume state goes."""

    def __init__(self, seeds: int, delete: bool = True, top: int = 1):
        self.seeds, self.delete, self.top = seeds, delete, top

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"top": 1, **state})  # pickled before it kept more than one point

    def on_trial_complete(self, iteration, trials, trial, **info):
        for folder in _checkpoints(trial.path):
            drop_resume_state(folder)
        if not self.delete:
            return
        over = [{"id": t.trial_id, "config": t.config, "result": t.last_result or {},
                 "over": t.status == "TERMINATED" or t is trial} for t in trials]
        lost = set(losers(over, self.seeds, self.top))
        for t in trials:
            if t.trial_id in lost:
                for folder in _checkpoints(t.path):
                    shutil.rmtree(folder, ignore_errors=True)


def keep_only(experiment: str | Path, keep: set[str]) -> int:
    """Delete every trial checkpoint of a finished stage's Ray experiment but those in `keep` (folders), and
    drop the resume state of those; returns the number of checkpoints deleted."""
    keep = {str(Path(k).resolve()) for k in keep if k}
    deleted = 0
    for folder in Path(experiment).glob(f"*/{CHECKPOINTS}"):
        if str(folder.resolve()) in keep:
            drop_resume_state(folder)
        elif folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            deleted += 1
    return deleted


def drop(checkpoint: str | Path) -> None:
    """Delete one trial checkpoint folder."""
    shutil.rmtree(checkpoint, ignore_errors=True)


def _checkpoints(trial_path: str | None) -> list[Path]:
    return sorted(Path(trial_path).glob(CHECKPOINTS)) if trial_path else []

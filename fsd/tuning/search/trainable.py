"""The function trainable: Tune config -> DistillConfig -> distill() -> tune.report each epoch.

Each trial also leaves `timeline.json` in its folder: when its process started, when the trial began, and
for each report when distill() handed it over, when its checkpoint was written and when Tune let training go
on (bench/overhead.py turns a stage's timelines into where its time went)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from fsd.checkpoints import load_checkpoint
from fsd.config import DistillConfig
from fsd.metrics import reached_budget
from fsd.train import distill
from fsd.tuning.plan.ranking import METRIC
from search_spaces.joint import expand


def train_trial(params: dict[str, Any], base: dict[str, Any]) -> None:
    """One trial. `base` holds what every trial of the stage shares (task, teacher, inherited winners);
    `params` the grid point. Resumes from the trial's last checkpoint after a failure or a restore."""
    timeline = {"pid": os.getpid(), "process_start": process_start(), "start": time.time(), "reports": []}
    config = DistillConfig.from_dict({**base, **expand(params)})
    state = restored_state(tune.get_checkpoint())
    if state is not None and "optimizer" not in state:
        # The trial was over (fsd.tuning.search.retention dropped what resuming needs when it ended): a driver killed
        # before Ray recorded its end brings it back. Its last result is said again; nothing is retrained.
        tune.report(state["metrics"])
        return
    best = state["best_score"] if state is not None else -math.inf
    try:
        for report in distill(config, resume_from=state):
            ready = time.time()
            score, last = report.metrics[METRIC], reached_budget(report.metrics)
            if not last and not can_be_kept(score, best):
                tune.report(report.metrics)
                timeline["reports"].append({"ready": ready, "saved": None, "reported": time.time()})
                continue
            best = best if math.isnan(score) or score < best else score
            with tempfile.TemporaryDirectory() as folder:
                # The run's last checkpoint needs nothing to resume from (retention would drop it as the trial ends):
                # the student alone, a quarter of the bytes. It is written even below the best, as the latest, so
                # that a restore that brings the trial back finds it over (`restored_state`) and says its last result.
                report.save(folder, resume=not last)
                saved = time.time()
                tune.report(report.metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            timeline["reports"].append({"ready": ready, "saved": saved, "reported": time.time()})
    except torch.OutOfMemoryError as e:
        raise TrialOutOfMemory(out_of_memory_message(_gpu_share(), config.batch_size)) from e
    timeline["end"] = time.time()
    write_timeline(timeline)


def can_be_kept(score: float, best: float) -> bool:
    """Whether the checkpoint of a report before the run's last is worth writing, after the best score so far
    (-inf: none yet). Tune keeps a trial's best checkpoint by METRIC (of equal scores, the later: see
    services.open_tuner) and its latest, for a resume. One below the best so far can never be the trial's best,
    and as a point to resume from the best so far serves as well (a resumed run trains on to the same numbers).
    A score that is not a number ranks below every number, as Tune ranks it (of several, the later)."""
    if math.isnan(score):
        return best == -math.inf
    return score >= best


def process_start() -> float | None:
    """When this process started (seconds since the epoch; None off Linux): a trial in a fresh worker waited
    from then for Ray, the imports and the trial's set-up."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        booted = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                      if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return booted + ticks / os.sysconf("SC_CLK_TCK")


def write_timeline(timeline: dict[str, Any]) -> None:
    """`timeline.json` in the trial's folder of the experiment's storage (written once, when the trial ends).
    Not through `get_trial_dir()`: in a reused worker that names its working folder, which Tune does not copy."""
    try:
        storage = tune.get_context().get_storage()
        path = f"{storage.trial_fs_path}/timeline.json"
    except Exception:  # noqa: BLE001 - outside a Tune session (a test calling the function): nowhere to write
        return
    with storage.storage_filesystem.open_output_stream(path) as f:
        f.write(json.dumps(timeline).encode())


def restored_state(checkpoint: tune.Checkpoint | None) -> dict | None:
    """The state to resume from, or None: no checkpoint, or one deleted because its trial could no longer
    win (a killed driver restarts such a trial; it trains afresh, to the same result)."""
    if checkpoint is None or not Path(checkpoint.path).is_dir():
        return None
    return load_checkpoint(checkpoint.path)


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of GPU memory; the message says how to pack fewer trials per GPU."""


def out_of_memory_message(share: float, batch_size: int) -> str:
    if share and share < 1:
        fewer = min(1.0, share * 2)
        return (f"out of GPU memory: this trial had {share:g} of a GPU ({round(1 / share)} trials per GPU); pack "
                f"fewer with --gpus-per-trial {fewer:g}, or lower batch_size ({batch_size})")
    return f"out of GPU memory with a whole GPU per trial: lower batch_size ({batch_size}) or use a larger GPU"


def _gpu_share() -> float:
    import ray

    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))

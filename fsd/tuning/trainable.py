"""The function trainable: Tune config -> DistillConfig -> distill() -> tune.report each epoch."""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from ray import tune

from fsd.config import DistillConfig
from fsd.train import distill, load_checkpoint

METRIC = "eval/score"
MODE = "max"


def expand(params: dict[str, Any]) -> dict[str, Any]:
    """Split joint grid keys: `{"gamma_i+gamma_l": (a, b)}` -> `{"gamma_i": a, "gamma_l": b}`."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if "+" in key:
            parts = [float(x) for x in value.split("|")] if isinstance(value, str) else value  # Optuna: "a|b"
            out.update(zip(key.split("+"), parts, strict=True))
        else:
            out[key] = value
    return out


def train_trial(params: dict[str, Any], base: dict[str, Any]) -> None:
    """One trial. `base` holds what every trial of the stage shares (task, teacher, inherited winners);
    `params` the grid point. Resumes from the trial's last checkpoint after a failure or a restore."""
    config = DistillConfig.from_dict({**base, **expand(params)})
    checkpoint = tune.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(folder)
    try:
        for report in distill(config, resume_from=state):
            with tempfile.TemporaryDirectory() as folder:
                report.save(folder)
                tune.report(report.metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    except torch.OutOfMemoryError as e:
        raise TrialOutOfMemory(out_of_memory_message(_gpu_share(), config.batch_size)) from e


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

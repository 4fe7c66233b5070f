"""The function trainable: Tune config -> DistillConfig -> distill() -> tune.report each epoch."""

from __future__ import annotations

import tempfile
from typing import Any

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
    for report in distill(config, resume_from=state):
        with tempfile.TemporaryDirectory() as folder:
            report.save(folder)
            tune.report(report.metrics, checkpoint=tune.Checkpoint.from_directory(folder))

"""One registry of distillation objectives; the training loop calls `build_objective(config)` and never
branches on the method."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fsd.objectives.methods import OBJECTIVES, Objective, Setup

if TYPE_CHECKING:
    from fsd.config import DistillConfig

__all__ = ["OBJECTIVES", "Objective", "Setup", "build_objective"]


def build_objective(config: DistillConfig, regression: bool = False) -> Objective:
    """The objective module for `config.method` (nokd, vkd, pkd, rkd, minilm, fsdi, fsdl, fsdg, fsdil, fsd).

    Raises:
        ValueError: an unknown method, with the valid names.
    """
    if config.method not in OBJECTIVES:
        raise ValueError(f"unknown method {config.method!r}: choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[config.method](config, regression)

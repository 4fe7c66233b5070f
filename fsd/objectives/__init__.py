"""One registry of distillation objectives; the training loop calls `build_objective(config)` and never
branches on the method."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from fsd.models import ModelOutputs
from fsd.objectives.kd import kd_loss, label_loss

if TYPE_CHECKING:
    from fsd.config import DistillConfig

Parts = dict[str, torch.Tensor]


class Objective(nn.Module):
    """A training loss: `forward(student_out, teacher_out, batch) -> (total, parts)`.

    Class attributes say what the loop must compute: teacher outputs at all, hidden states, attentions.
    Trainable state of the objective (e.g. the student memory) lives in the module and is optimised with
    the student; it is never part of the exported student.
    """

    needs_teacher = True
    needs_hidden = False
    needs_attentions = False

    def __init__(self, config: DistillConfig, regression: bool):
        super().__init__()
        self.config = config
        self.regression = regression

    def vkd_parts(self, s: ModelOutputs, t: ModelOutputs, labels: torch.Tensor) -> Parts:
        c = self.config
        return {"ce": c.alpha * label_loss(s.logits, labels, self.regression),
                "kd": (1 - c.alpha) * kd_loss(s.logits, t.logits.detach(), c.temperature, self.regression)}


class NoKD(Objective):
    """The student alone: cross-entropy (or MSE) to the labels."""

    needs_teacher = False

    def forward(self, s: ModelOutputs, t: ModelOutputs | None, batch: dict) -> tuple[torch.Tensor, Parts]:
        parts = {"ce": label_loss(s.logits, batch["labels"], self.regression)}
        return parts["ce"], parts


class VKD(Objective):
    """Hinton KD (Eq. 2); parts are the weighted terms, so they sum to the total."""

    def forward(self, s: ModelOutputs, t: ModelOutputs, batch: dict) -> tuple[torch.Tensor, Parts]:
        parts = self.vkd_parts(s, t, batch["labels"])
        return sum(parts.values()), parts


OBJECTIVES: dict[str, type[Objective]] = {"nokd": NoKD, "vkd": VKD}


def register(name: str) -> Callable[[type[Objective]], type[Objective]]:
    def add(cls: type[Objective]) -> type[Objective]:
        OBJECTIVES[name] = cls
        return cls

    return add


def build_objective(config: DistillConfig, regression: bool = False) -> Objective:
    """The objective module for `config.method`.

    Raises:
        ValueError: an unknown method, with the valid names.
    """
    if config.method not in OBJECTIVES:
        raise ValueError(f"unknown method {config.method!r}: choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[config.method](config, regression)

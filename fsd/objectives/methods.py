"""The distillation methods as `Objective` modules: each combines the pure losses of one family.

Every method is `L = L_VKD + beta * L_method` (docs/method.md §2, Eq. 3); the FSD family's `L_method` is
`gamma_i*L_I + gamma_l*L_L + gamma_g*L_G` over the structures the method uses (Eq. 11). Parts are the
weighted terms, so they sum to the total and each can be logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fsd.models import ModelOutputs
from fsd.objectives.baselines import attention_kl_loss, pkd_loss, rkd_angle_loss, rkd_distance_loss, value_relation_loss
from fsd.objectives.kd import kd_loss, label_loss
from fsd.objectives.memory import FixedMemory, StudentMemory, global_structure_parts
from fsd.objectives.structure import (
    flatten_features,
    intra_feature_loss,
    local_inter_feature_loss,
)

if TYPE_CHECKING:
    from fsd.config import DistillConfig

Parts = dict[str, torch.Tensor]


@dataclass
class Setup:
    """What an objective may need before training."""

    student: nn.Module
    max_seq_len: int
    teacher_memory: torch.Tensor | None = None  # the teacher's centroids, for an objective that `needs_memory`


class Objective(nn.Module):
    """A training loss: `forward(student_out, teacher_out, batch) -> (total, parts)`.

    Class attributes tell the loop what to compute: teacher outputs at all, hidden states, attentions,
    the last layer's value vectors. Trainable state (the student memory) lives in the module and is
    optimised with the student; it is never part of the exported student.
    """

    needs_teacher = True
    needs_hidden = False
    needs_attentions = False
    needs_values = False
    # What of the teacher's outputs the cache must hold for this objective; None: not cacheable (run live).
    teacher_fields: tuple[str, ...] | None = ("logits",)
    # The DistillConfig values its loss reads (fsd.objectives.equivalence: other weights cannot matter).
    reads: tuple[str, ...] = ("alpha", "temperature")

    def __init__(self, config: DistillConfig, regression: bool):
        super().__init__()
        self.config = config
        self.regression = regression

    def setup(self, ctx: Setup) -> None:
        """Called once after the models are built and before the optimiser (so new parameters train)."""

    @property
    def needs_memory(self) -> bool:
        """Whether `setup` asks for the teacher memory (FSDG)."""
        return "g" in getattr(self, "structures", "")

    def cache_fields(self) -> tuple[str, ...] | None:
        """The cached teacher outputs this run can use instead of the live teacher, or None. Features are
        cached for real tokens only, so unmasked structures (the reference behaviour) need the live teacher."""
        if self.teacher_fields is None or ("penultimate" in self.teacher_fields and not self.config.structure_mask):
            return None
        return self.teacher_fields

    def mask(self, batch: dict) -> torch.Tensor | None:
        """Structures over real tokens only (default), or over every position as the reference code."""
        return batch["attention_mask"] if self.config.structure_mask else None

    def vkd_parts(self, s: ModelOutputs, t: ModelOutputs, labels: torch.Tensor) -> Parts:
        c = self.config
        return {"ce": c.alpha * label_loss(s.logits, labels, self.regression),
                "kd": (1 - c.alpha) * kd_loss(s.logits, t.logits.detach(), c.temperature, self.regression)}

    def extra_parts(self, s: ModelOutputs, t: ModelOutputs, batch: dict) -> Parts:
        return {}

    def forward(self, s: ModelOutputs, t: ModelOutputs | None, batch: dict) -> tuple[torch.Tensor, Parts]:
        parts = {**self.vkd_parts(s, t, batch["labels"]), **self.extra_parts(s, t, batch)}
        return sum(parts.values()), parts


class NoKD(Objective):
    """The student alone: cross-entropy (or MSE) to the labels."""

    needs_teacher = False
    teacher_fields = ()
    reads = ()

    def forward(self, s: ModelOutputs, t: ModelOutputs | None, batch: dict) -> tuple[torch.Tensor, Parts]:
        parts = {"ce": label_loss(s.logits, batch["labels"], self.regression)}
        return parts["ce"], parts


class VKD(Objective):
    """Hinton KD (Eq. 2)."""


class PKD(Objective):
    """PKD-skip: [CLS] of student layers 1..k-1 against teacher layers s, 2s, ... with s = L_T // k."""

    needs_hidden = True
    teacher_fields = ("logits", "cls")
    reads = ("alpha", "temperature", "beta")

    def extra_parts(self, s: ModelOutputs, t: ModelOutputs, batch: dict) -> Parts:
        k = len(s.cls) - 1
        step = (len(t.cls) - 1) // k
        s_cls = [s.cls[j] for j in range(1, k)]
        t_cls = [t.cls[j * step].detach() for j in range(1, k)]
        return {"pkd": self.config.beta * pkd_loss(t_cls, s_cls)}


class RKD(Objective):
    """RKD distance + angle on the flattened penultimate features."""

    needs_hidden = True
    teacher_fields = ("logits", "penultimate")
    reads = ("alpha", "temperature", "beta", "rkd_distance", "rkd_angle", "structure_mask")

    def extra_parts(self, s: ModelOutputs, t: ModelOutputs, batch: dict) -> Parts:
        c, mask = self.config, self.mask(batch)
        ft = flatten_features(t.penultimate.detach(), mask)
        fs = flatten_features(s.penultimate, mask)
        return {"rkd_distance": c.beta * c.rkd_distance * rkd_distance_loss(ft, fs),
                "rkd_angle": c.beta * c.rkd_angle * rkd_angle_loss(ft, fs)}


class MiniLM(Objective):
    """Last-layer self-attention distributions and value relations (KL), at fine-tuning."""

    needs_attentions = True
    needs_values = True
    # Attention maps are [h, l, l] per sample, too big to cache: the teacher's last self-attention runs live
    # on the cached penultimate features, its input (fsd/teacher_source.py).
    teacher_fields = ("logits", "penultimate")
    reads = ("alpha", "temperature", "beta")

    def cache_fields(self) -> tuple[str, ...] | None:
        """Cacheable whatever `structure_mask` says: the attention losses always mask PAD queries and keys."""
        return self.teacher_fields

    def extra_parts(self, s: ModelOutputs, t: ModelOutputs, batch: dict) -> Parts:
        mask = batch["attention_mask"]  # PAD keys have no attention in either model: always masked
        return {"attention": self.config.beta * attention_kl_loss(t.attentions[-1].detach(), s.attentions[-1], mask),
                "value": self.config.beta * value_relation_loss(t.values.detach(), s.values, mask)}


class FSD(Objective):
    """The FSD family; `structures` says which of intra (I), local (L) and global (G) it uses."""

    needs_hidden = True
    teacher_fields = ("logits", "penultimate")
    structures = "ilg"
    # Each structure's weight, and what else shapes its term (L_G's mix and memory).
    STRUCTURE_READS = {"i": ("gamma_i",), "l": ("gamma_l",),
                       "g": ("gamma_g", "lam", "memory_size", "memory_iters", "memory_init")}

    @classmethod
    def reads_of(cls, structures: str) -> tuple[str, ...]:
        return ("alpha", "temperature", "beta", "structure_mask",
                *(k for s in structures for k in cls.STRUCTURE_READS[s]))

    def setup(self, ctx: Setup) -> None:
        if "g" not in self.structures:
            return
        self.max_seq_len = ctx.max_seq_len
        self.register_buffer("teacher_memory", ctx.teacher_memory.float(), persistent=False)
        # The teacher memory never changes: its Gram and its side of the distances and cosines, once.
        self.fixed = FixedMemory(self.teacher_memory, self.teacher_memory.shape[1] // ctx.max_seq_len)
        k = self.teacher_memory.shape[0]
        self.student_memory = StudentMemory(k, ctx.max_seq_len * ctx.student.config.hidden_size)
        self.to(self.teacher_memory.device)

    def extra_parts(self, s: ModelOutputs, t: ModelOutputs, batch: dict) -> Parts:
        c, mask = self.config, self.mask(batch)
        h_t, h_s = t.penultimate.detach(), s.penultimate
        parts: Parts = {}
        if "i" in self.structures:
            parts["intra"] = c.beta * c.gamma_i * intra_feature_loss(h_t, h_s, mask)
        if "l" in self.structures:
            parts["local"] = c.beta * c.gamma_l * local_inter_feature_loss(h_t, h_s, mask)
        if "g" in self.structures:
            # Flattened to the batch's own length: the first l tokens of the memory's padded-to-max layout.
            g = global_structure_parts(flatten_features(h_t, mask), flatten_features(h_s, mask),
                                       self.teacher_memory, self.student_memory(), c.lam, fixed=self.fixed)
            parts.update({f"global_{k}": c.beta * c.gamma_g * v for k, v in g.items()})
        return parts


def _fsd(structures: str, doc: str) -> type[FSD]:
    return type(f"FSD_{structures.upper()}", (FSD,), {"structures": structures, "__doc__": doc,
                                                      "reads": FSD.reads_of(structures)})


OBJECTIVES: dict[str, type[Objective]] = {
    "nokd": NoKD,
    "vkd": VKD,
    "pkd": PKD,
    "rkd": RKD,
    "minilm": MiniLM,
    "fsdi": _fsd("i", "FSDI: intra-feature structure (Eq. 6) with VKD."),
    "fsdl": _fsd("l", "FSDL: local inter-feature structure (Eq. 7) with VKD."),
    "fsdg": _fsd("g", "FSDG: global inter-feature structure via the memory (Eq. 8-10) with VKD."),
    "fsdil": _fsd("il", "FSD w/o G: intra + local."),
    "fsd": _fsd("ilg", "FSD: intra + local + global (Eq. 11)."),
}

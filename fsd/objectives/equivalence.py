"""When two configurations train the same student.

A weight of 0 switches its term off (`L = L_VKD + beta * L_method`, docs/method.md §2), and a value only
that term reads then has no effect: FSDG with gamma_g = 0 trains the VKD student of the same alpha, T, lr
and epochs, whatever lam is; FSD with gamma_g = 0 trains FSD w/o G. The training loop re-seeds after the
objective's setup, so such runs are equal to the digit, not merely alike (tests/test_train.py checks it).
`effective(values)` maps a configuration to the simplest method that computes the same
loss and keeps only what that method reads, so a search runs each distinct student once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from fsd.config import PLACEMENT_FIELDS, SPEED_FIELDS, DistillConfig
from fsd.objectives.methods import FSD, OBJECTIVES

# Every value some objective's loss reads: outside its method's `reads`, each has no effect.
LOSS_FIELDS = tuple(dict.fromkeys(k for cls in OBJECTIVES.values() for k in cls.reads))
# The FSD family by the structures it uses ("" is VKD: no structure term left).
BY_STRUCTURES = {"": "vkd", **{cls.structures: name for name, cls in OBJECTIVES.items() if issubclass(cls, FSD)}}
WEIGHT = {"i": "gamma_i", "l": "gamma_l", "g": "gamma_g"}


class Effective(NamedTuple):
    """What decides a run's student: `config` (the values that matter, the method reduced) and `off`, the
    zero weights that switched a term off (for saying why two grid points are one)."""

    config: dict[str, Any]
    off: tuple[str, ...]


def effective(values: dict[str, Any]) -> Effective:
    """The values of a DistillConfig (`values`, defaults filled in) that decide the student it trains: its
    method reduced to the simplest one with the same loss (a zero weight drops its term), the values that
    method does not read left out, and speed and placement settings left out.

    Raises:
        fsd.config.ConfigError: values that are not a valid DistillConfig.
    """
    config = DistillConfig.from_dict(values).to_dict()
    method, off = _reduced(config)
    reads = set(OBJECTIVES[method].reads)
    if config["alpha"] == 1:  # the KD term's weight is 1 - alpha: the temperature shapes nothing
        reads.discard("temperature")
        if method == "vkd":
            method, reads = "nokd", set()
            off += ("alpha = 1",)
    kept = {k: v for k, v in config.items()
            if k not in (*SPEED_FIELDS, *PLACEMENT_FIELDS) and (k not in LOSS_FIELDS or k in reads)}
    kept["method"] = method
    return Effective(kept, off)


def _reduced(config: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    method = config["method"]
    cls = OBJECTIVES[method]
    if issubclass(cls, FSD):
        if config["beta"] == 0:
            return "vkd", ("beta = 0",)
        zero = tuple(s for s in cls.structures if config[WEIGHT[s]] == 0)
        active = "".join(s for s in cls.structures if s not in zero)
        reduced = BY_STRUCTURES.get(active, method)  # FSD with only I and G has no method of its own
        if reduced == method:
            return method, ()
        return reduced, tuple(f"{WEIGHT[s]} = 0" for s in zero)
    if method in ("pkd", "minilm", "rkd") and config["beta"] == 0:
        return "vkd", ("beta = 0",)
    if method == "rkd" and config["rkd_distance"] == 0 and config["rkd_angle"] == 0:
        return "vkd", ("rkd_distance = rkd_angle = 0",)
    return method, ()

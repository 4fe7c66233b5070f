"""A joint grid key, as the schedules write it (`search_spaces.base`: `gamma_i+gamma_l` takes tuples, one value per
name), decoded into a trial's values; and a joint value as Optuna's categoricals hold it ("a|b")."""

from __future__ import annotations

import typing
from typing import Any

from fsd.config import DistillConfig

JOINT = "+"  # a joint grid key: "gamma_i+gamma_l" takes one value per name
OPTUNA_SEP = "|"  # Optuna's categoricals hold plain values: a joint value travels as "a|b"


def expand(params: dict[str, Any]) -> dict[str, Any]:
    """Split joint grid keys: `{"gamma_i+gamma_l": (a, b)}` (or Optuna's `"a|b"`) -> `{"gamma_i": a, "gamma_l": b}`,
    each value of its DistillConfig field's type."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        value = point_value(key, value)
        if JOINT in key:
            out.update(zip(key.split(JOINT), value, strict=True))
        else:
            out[key] = value
    return out


def joint_value(value: Any) -> Any:
    """A grid value as Optuna's categorical holds it (a joint value as "a|b")."""
    return OPTUNA_SEP.join(map(str, value)) if isinstance(value, (tuple, list)) else value


def point_value(key: str, value: Any) -> Any:
    """The value of grid key `key` as the grid wrote it, from a trial's config: a restored config holds lists
    for tuples, an Optuna sample "a|b" for a joint value (each part of its field's type)."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, str) and JOINT in key:
        return tuple(_typed(n, x) for n, x in zip(key.split(JOINT), value.split(OPTUNA_SEP), strict=True))
    return value


def _typed(name: str, text: str) -> Any:
    hint = typing.get_type_hints(DistillConfig).get(name)
    kinds = typing.get_args(hint) or (hint,)
    if int in kinds and float not in kinds:
        return int(float(text))
    return float(text)

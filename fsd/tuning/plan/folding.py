"""A stage's grid folded before it runs: each distinct student is trained once.

Two grid points that train the same student (`fsd.objectives.equivalence`: lam when gamma_g = 0, any value
the method does not read) are one trial; a point that trains the student an earlier stage already chose
(gamma_g = 0 in FSDG's coarse grid is the VKD winner) is not trained again: that winner is carried into
the stage and competes with its trials. A stage left with nothing new is skipped by the runner.
"""

from __future__ import annotations

import itertools
import typing
from dataclasses import dataclass
from typing import Any

from fsd.config import DistillConfig
from fsd.objectives.equivalence import effective
from fsd.storage import content_key
from fsd.tuning.plan.trials import stage_base
from search_spaces.joint import JOINT, expand


@dataclass(frozen=True)
class Carried:
    """An earlier stage's winner that a point of this stage equals."""

    stage: str  # the earlier stage
    point: dict[str, Any]  # this stage's first point that trains it (its grid values)


@dataclass(frozen=True)
class Folded:
    grid: dict[str, tuple]  # what runs: the new points as a grid (a joint key when they are no cross product)
    runs: int  # points in `grid`
    size: int  # points before folding
    duplicates: int  # points that train the student another point of this grid trains
    carried: tuple[Carried, ...]  # earlier winners equal to points of this grid
    settled: int  # points that train one of those winners
    why: tuple[str, ...]  # the zero weights that made points one ("gamma_g = 0", ...)

    @property
    def folded(self) -> bool:
        return self.runs != self.size

    def says(self) -> str:
        """One line on what folding did (empty when it did nothing)."""
        if not self.folded:
            return ""
        parts = []
        if self.duplicates:
            parts.append(f"{self.duplicates} train the same student as another point")
        if self.settled:
            names = ", ".join(dict.fromkeys(c.stage for c in self.carried))
            parts.append(f"{self.settled} train the {names} winner{'s' if len(self.carried) > 1 else ''}, carried "
                         "instead of re-run")
        why = f" ({', '.join(self.why)}: its term is off, and what only that term reads has no effect)" \
            if self.why else ""
        return f"{self.size} points folded to {self.runs}: {'; '.join(parts)}{why}"


def points(grid: dict[str, tuple]) -> list[dict[str, Any]]:
    """The grid's points in grid order (the first parameter varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def student_key(config: dict[str, Any]) -> str:
    """What names the student a configuration trains (`effective`'s values)."""
    return content_key(effective(config).config)


def fold(grid: dict[str, tuple], base: dict[str, Any], earlier: dict[str, dict[str, Any]]) -> Folded:
    """Fold `grid` (over `base`, the values every trial shares) against itself and `earlier` (stage -> the
    winner configuration of each stage done before, in schedule order)."""
    known = {}
    for stage, winner in earlier.items():
        known.setdefault(student_key(winner), stage)
    seen, new, carried, why = set(), [], {}, []
    duplicates = settled = 0
    all_points = points(grid)
    for point in all_points:
        config = {**base, **expand(point)}
        eff = effective(config)
        key = content_key(eff.config)
        if key in known:
            settled += 1
            carried.setdefault(known[key], Carried(known[key], point))
            why.extend(eff.off)
        elif key in seen:
            duplicates += 1
            why.extend(eff.off)
        else:
            seen.add(key)
            new.append(point)
    return Folded(as_grid(new, grid), len(new), len(all_points), duplicates, tuple(carried.values()), settled,
                  tuple(dict.fromkeys(why)))


def as_grid(chosen: list[dict[str, Any]], grid: dict[str, tuple]) -> dict[str, tuple]:
    """`chosen` points of `grid` as a grid: per parameter when they are the cross product of their values
    (halving and TPE then see each parameter), else one joint key over all of them."""
    if not chosen:
        return {k: () for k in grid}
    values = {k: tuple(dict.fromkeys(p[k] for p in chosen)) for k in grid}
    count = 1
    for v in values.values():
        count *= len(v)
    if count == len(chosen):
        return values
    names = [n for k in grid for n in k.split(JOINT)]
    flat = [tuple(expand(p)[n] for n in names) for p in chosen]
    return {JOINT.join(names): tuple(flat)}


# ---------------------------------------------------------------------------------------------- before a search
def expected(spec, schedule, stage, teacher: str) -> Folded | None:
    """How `stage`'s grid folds whatever the earlier stages choose (for --dry-run, before they ran): each
    earlier winner is a stand-in with a distinct value for every parameter it searched, so only the folds
    that hold for every winner count. None for a grid that depends on a winner's value (a refine stage)."""
    if stage.prepare or any(d.kind == "refine" for d in stage.derived):
        return None
    stand_ins = stand_in_winners(spec, schedule, stage, teacher)
    if stand_ins is None:
        return None
    grid = stage.resolve(stand_ins)
    return fold(grid, stage_base(spec, schedule, stage, teacher, stand_ins), stand_ins)


def stand_in_winners(spec, schedule, upto, teacher: str) -> dict[str, dict[str, Any]] | None:
    """A winner per trial stage before `upto`, each searched value a distinct number no grid holds."""
    winners: dict[str, dict[str, Any]] = {}
    for i, stage in enumerate(schedule.stages):
        if stage.name == upto.name:
            return winners
        if stage.prepare:
            continue
        point = {}
        for j, key in enumerate([*stage.grid, *(d.param for d in stage.derived)]):
            names = key.split(JOINT)
            values = tuple(_stand_in(n, 100 * i + 10 * j + m) for m, n in enumerate(names))
            point[key] = values if len(names) > 1 else values[0]
        winners[stage.name] = {**stage_base(spec, schedule, stage, teacher, winners), **expand(point)}
    return None


def _stand_in(name: str, i: int) -> Any:
    """A value of DistillConfig's field `name` that no grid holds: non-zero, and in [0, 1] for a float."""
    if typing.get_type_hints(DistillConfig).get(name) is int:
        return 7919 + i
    return 0.0123457 + 1e-5 * i

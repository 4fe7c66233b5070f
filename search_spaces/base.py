"""Search schedules as inert data: stages, their grids, what they take from earlier stages' winners.

A stage's trials all run one method. Its grid maps a parameter name to candidate values; a joint name
such as `gamma_i+gamma_l` takes tuples, one value per parameter (`search_spaces.joint` decodes them). Grids
that depend on an earlier stage's measured winner (the paper's refine stages) are `Derived` rules, resolved
when that winner is known.
`get_schedule(method, task, preset)` returns frozen data; nothing here imports Ray.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any

REFINE_FACTORS = (0.6, 0.7, 0.8, 0.9, 2, 3, 4, 5)  # [paper] x the best coarse value
REFINE_UNIT = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # [paper] when the best is 0.1 or 1
METHODS = ("vkd", "pkd", "rkd", "minilm", "fsd")
PRESETS = ("paper", "quick", "cpu", "smoke")


@dataclass(frozen=True)
class Derived:
    """A grid computed from an earlier stage's winner.

    kind:
      - "refine": `param` over {0.6,...,5} x the winner's value, or {0.1..0.9} when that value is 0.1 or 1
        [paper]; values outside `bounds` are dropped; a winner of 0 has nothing to refine (stage skipped).
      - "mix": `gamma_i+gamma_l` = (b*m, b*(1-m)) for m in `factors`, b = the winner's `beta`.
      - "scale": `gamma_i+gamma_l` = (s*g_i, s*g_l) for s in `factors`, from the winner's pair.
    """

    kind: str
    param: str
    source: str
    factors: tuple[float, ...] = ()
    bounds: tuple[float, float] = (0.0, float("inf"))
    limit: int | None = None  # presets keep at most this many values

    def values(self, winner: dict[str, Any]) -> tuple:
        values = self._values(winner)
        if not self.limit:
            return values
        if self.kind == "scale" and 1.0 in self.factors:
            # x1 is the winner's own pair, the point the grid scales around: a thinned grid keeps it.
            own = values[self.factors.index(1.0)]
            others = tuple(v for v in values if v != own)
            return tuple(sorted((own, *thin(others, self.limit - 1)), key=values.index)) if self.limit > 1 else (own,)
        return thin(values, self.limit)

    def _values(self, winner: dict[str, Any]) -> tuple:
        if self.kind == "refine":
            best = winner[self.param]
            if best == 0:
                return ()
            cands = REFINE_UNIT if best in (0.1, 1.0) else tuple(round(f * best, 12) for f in REFINE_FACTORS)
            return tuple(v for v in cands if self.bounds[0] <= v <= self.bounds[1])
        if self.kind == "mix":
            b = winner["beta"]
            return tuple((round(b * m, 12), round(b * (1 - m), 12)) for m in self.factors)
        if self.kind == "scale":
            gi, gl = winner["gamma_i"], winner["gamma_l"]
            return tuple((round(s * gi, 12), round(s * gl, 12)) for s in self.factors)
        raise ValueError(f"unknown derived grid kind {self.kind!r}")

    def describe(self) -> str:
        if self.kind == "refine":
            return f"refine {self.param} around the best of {self.source} (x{{0.6..0.9,2..5}} or {{0.1..0.9}})"
        if self.kind == "mix":
            return f"(beta*m, beta*(1-m)) for m in {list(self.factors)}, beta from {self.source}"
        return f"{list(self.factors)} x the best (gamma_i, gamma_l) of {self.source}"


@dataclass(frozen=True)
class Stage:
    """One Ray Tune experiment of the staged search.

    Attributes:
        name: unique within the schedule (the Tuner is named `<task>-<method>-<name>`).
        method: the objective its trials train (`fsd.objectives`).
        grid: searched parameters -> candidate values (resolved for the task).
        derived: grids computed from earlier winners.
        inherit: parameter -> stage whose winner supplies it.
        fixed: constant parameters of every trial.
        carry: stages whose winners compete with this stage's trials, the best of them carried as a candidate
            (refine stages: the coarse winner; FSD's last stage: every FSD-family stage before it, [ours]).
        ours: parameters whose grid is this project's choice (the paper's values were lost); "carry" when
            the carried competitors are.
        prepare: a driver-side step instead of trials (e.g. "memory": build the teacher memory).
    """

    name: str
    method: str
    grid: dict[str, tuple] = field(default_factory=dict)
    derived: tuple[Derived, ...] = ()
    inherit: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    carry: tuple[str, ...] = ()
    ours: tuple[str, ...] = ()
    prepare: str | None = None

    def resolve(self, winners: dict[str, dict[str, Any]]) -> dict[str, tuple]:
        """The full grid once the winners of earlier stages are known."""
        grid = dict(self.grid)
        for d in self.derived:
            grid[d.param] = d.values(winners[d.source])
        return grid

    def trial_count(self, winners: dict[str, dict[str, Any]] | None = None) -> int | None:
        """Trials of the grid; None while a derived grid's size depends on an unknown winner."""
        n = 1
        for values in self.grid.values():
            n *= len(values)
        for d in self.derived:
            if winners is not None and d.source in winners:
                n *= len(d.values(winners[d.source]))
            elif d.kind == "refine":
                return None
            else:
                n *= min(len(d.factors), d.limit or len(d.factors))
        return 0 if self.prepare else n


@dataclass(frozen=True)
class Budget:
    """Per-preset training budget applied to every trial."""

    epochs: int | None = None  # None: the searched/inherited epochs
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    memory_size: int | None = None  # None: the task's K (the smoke budget has fewer rows than K)
    evals_per_epoch: int = 4  # rungs per epoch under halving/optuna (the grid evaluates once per epoch)
    batch_size: int | None = None  # None: DistillConfig's (32, the paper's)
    teacher_epochs: int = 3  # [paper] unless --teacher-epochs says otherwise
    teacher_lr: float | None = None  # None: the task's paper value, unless --teacher-lr says otherwise
    # [ours] Before a stage names its winner, its `confirm_top` leading points are trained on `confirm_seeds`
    # more seeds (the paper trains each point once; docs/search.md, "Seeds and ties"). 0: no confirmation.
    confirm_top: int = 3
    confirm_seeds: int = 2


@dataclass(frozen=True)
class Schedule:
    method: str
    task: str
    preset: str
    stages: tuple[Stage, ...]
    budget: Budget

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


def thin(values: tuple, n: int) -> tuple:
    """n values spread over a grid (its ends included), for the quick and smoke presets."""
    if len(values) <= n:
        return values
    if n == 1:
        return (values[len(values) // 2],)
    step = (len(values) - 1) / (n - 1)
    return tuple(values[round(i * step)] for i in range(n))


def apply_preset(stages: tuple[Stage, ...], preset: str) -> tuple[Stage, ...]:
    """paper: as is. quick: at most 2 values per parameter. cpu and smoke: 2 values of the first parameter, 1
    of the others, derived grids cut to 2. All leave epochs to the preset's budget."""
    if preset == "paper":
        return stages
    out = []
    for s in stages:
        searched = {k: v for k, v in s.grid.items() if k != "epochs"}  # the preset's budget fixes epochs
        if preset == "quick":
            grid = {k: thin(v, 2) for k, v in searched.items()}
        else:
            grid = {k: thin(v, 2 if i == 0 else 1) for i, (k, v) in enumerate(searched.items())}
        derived = tuple(Derived(d.kind, d.param, d.source, d.factors, d.bounds, limit=2) for d in s.derived)
        out.append(Stage(s.name, s.method, grid, derived, s.inherit, s.fixed, s.carry, s.ours, s.prepare))
    return tuple(out)


BUDGETS = {"paper": Budget(), "quick": Budget(epochs=2, max_train_samples=2000, max_eval_samples=1000),
           # [ours] A complete search that learns on a 2-core CPU in about 8 minutes with its confirmation
           # (README, "The first command"): 1,600 training rows, one epoch in batches of 16, the whole dev split; the
           # teacher fine-tuned on the same rows for one epoch at 1e-4 (packaged MiniLM on 2,000 SST-2 rows:
           # 78.6 dev accuracy after one epoch at 1e-4, 78.2 at 5e-5). In batches of 32 (63 steps of 2,000
           # rows) a VKD student stayed at the majority class at lr 2e-4; in batches of 16 it reached 79.9.
           "cpu": Budget(epochs=1, max_train_samples=1600, evals_per_epoch=2, batch_size=16, teacher_epochs=1,
                         teacher_lr=1e-4, confirm_top=2, confirm_seeds=1),
           # Nothing learns on 64 rows: confirming its ties would only cost the tests time (their own flags turn
           # it on where they test it).
           "smoke": Budget(epochs=1, max_train_samples=64, max_eval_samples=64, memory_size=8,
                          evals_per_epoch=2, confirm_top=0, confirm_seeds=0)}
# [ours] Learning rates a preset searches instead of the paper's, which suit BERT-base: a 3-layer student of the
# packaged MiniLM learns fastest at 2e-4 of {5e-5, 1e-4, 2e-4} on SST-2 (bench/results/sst2-vkd-curves.json:
# 74.9-76.9 dev accuracy after 2,264 samples at 2e-4, 50.9-68.9 at 1e-4, the majority class at 5e-5; one
# epoch of 2,000 rows in batches of 16: 79.9 at 2e-4, and 77.3 at 5e-4 in batches of 32).
PRESET_GRIDS = {"cpu": {"lr": (2e-4,)}}


def override_grids(stages: tuple[Stage, ...], grids: dict[str, tuple]) -> tuple[Stage, ...]:
    """`--grid`: the user's values of a parameter in every stage that searches it (e.g. a learning rate
    range for a backbone other than BERT-base); derived grids keep their rule."""
    return tuple(replace(s, grid={k: tuple(grids.get(k, v)) for k, v in s.grid.items()},
                         ours=tuple(p for p in s.ours if p not in grids)) for s in stages)


def get_schedule(method: str, task: str, preset: str = "paper", grids: dict[str, tuple] | None = None) -> Schedule:
    """The staged schedule of `method` for `task` under a preset, with `grids` replacing searched values.

    Raises:
        ValueError: an unknown method or preset.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    module = importlib.import_module(f"search_spaces.{method}")
    stages = apply_preset(module.stages(task), preset)
    ours = PRESET_GRIDS.get(preset, {})
    stages = tuple(replace(s, ours=(*s.ours, *(k for k in ours if k in s.grid))) for s in override_grids(stages, ours))
    stages = override_grids(stages, grids or {})
    names = [s.name for s in stages]
    assert len(set(names)) == len(names), names
    return Schedule(method, task, preset, stages, BUDGETS[preset])


def format_schedule(schedule: Schedule) -> str:
    """The schedule as text: every stage, its grid, trial count and trial-epochs (for --dry-run)."""
    lines = [f"{schedule.task} / {schedule.method} / preset {schedule.preset}"]
    total, total_epochs, unknown = 0, 0, False
    for i, s in enumerate(schedule.stages, 1):
        n = s.trial_count()
        if s.prepare:
            lines.append(f"  {i}. {s.name}: {s.prepare} (built once in the driver, no trials) {s.fixed}")
            continue
        epochs = schedule.budget.epochs or _epochs(s)
        head = f"  {i}. {s.name} [{s.method}]: " + (f"{n} trials" if n is not None else "trials after the winner")
        if n is not None and epochs is not None:
            head += f", {n * epochs} trial-epochs"
            total_epochs += n * epochs
        lines.append(head)
        for k, v in s.grid.items():
            tag = "  [ours: the paper's values were lost]" if k in s.ours else ""
            if k in PRESET_GRIDS.get(schedule.preset, {}):
                tag = f"  [ours: the {schedule.preset} preset's, measured for a small student]"
            lines.append(f"       {k}: {list(v)}{tag}")
        for d in s.derived:
            lines.append(f"       {d.param}: {d.describe()}")
        if s.inherit:
            lines.append("       from earlier winners: " + ", ".join(f"{k}<-{v}" for k, v in s.inherit.items()))
        if s.fixed:
            lines.append(f"       fixed: {s.fixed}")
        if s.carry:
            tag = "  [ours]" if "carry" in s.ours else ""
            lines.append(f"       competes with: the best winner of {', '.join(s.carry)} (carried, not re-trained)"
                         + tag)
        total += n or 0
        unknown |= n is None
    more = " + refine stages (8 or 9 trials each, known once their coarse winner is)" if unknown else ""
    lines.append(f"total: {total} trials{more}, {total_epochs} trial-epochs counted")
    return "\n".join(lines)


def _epochs(stage: Stage) -> int | None:
    if "epochs" in stage.grid:
        return max(stage.grid["epochs"])
    return stage.fixed.get("epochs", 3 if "epochs" in stage.inherit else None)

"""What a stage will spend before it runs: its strategy, rungs and training samples (no Ray; it reads the
data files only to count rows and labels, and writes nothing).

It also resolves what every trial of a stage shares (`stage_base`), shared by the runner and --dry-run.

A trial's budget is `rows x epochs` training samples. Under `halving` (and `optuna`, which samples fewer
points and halves them the same way) a stage's trials are evaluated at rungs `first x rf^k` samples, the
first rung being `first_rung` of the largest budget; roughly 1/rf of the trials that reach a rung go on to
the next (ASHA), so the expected samples are counted as synchronous successive halving would spend them.
ASHA's asynchronous promotions let a few more trials through early on; bench/search_cost.py measures it.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
from typing import Any

from fsd.config import DataSpec, DistillConfig, check_partial
from fsd.data import split_rows
from fsd.metrics import BEST_SCORE, BUDGET, SAMPLES, SCORE, reached_budget  # noqa: F401 - the search's names for them
from fsd.tuning.plan.spec import SearchSpec
from search_spaces import Schedule, Stage

METRIC = SCORE  # what a stage's winner maximises (on dev, or on the holdout)
MODE = "max"
# What halving and TPE rank trials by at a rung: the ranking split's score, what the winner is picked by. The
# loss, which does not tie where early scores do, ranked the stage winners of the recorded SST-2 schedule far
# down where the score could not rank yet, so rungs ranked by it cut them; where every score ties, a rung keeps
# every trial instead (bench/rung_rules.py, its ranks in bench/results/sst2-rungs/rules.md; docs/results.md,
# "Rungs that keep the winner").
RUNG_METRIC, RUNG_MODE = SCORE, "max"
RUNG_BEST = BEST_SCORE  # what TPE learns from: a trial's best score (a stopped trial's, at its rung)
# Scores this close to a rung's cutoff are tied with it, and go on: half a point, well inside a holdout's
# sampling error, and the smallest tolerance tried that kept every stage winner of the recorded schedule
# (docs/results.md, "Rungs that keep the winner").
RUNG_TIE = 0.005
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


# Defaults measured by bench/search_cost.py on a recorded SST-2 grid (docs/results.md, "What halving saves on one
# stage"); the reduction factor and first rung are SearchSpec's defaults.
SAMPLE_SHARE = 1 / 3  # --strategy optuna: trials per stage as a share of its grid
OPTUNA_MIN_GRID = 20  # smaller grids run whole (under halving) even with --strategy optuna
EVALS_PER_RUN = 4  # evaluations of a --compare seed run: the points of Fig. 6


@dataclass(frozen=True)
class Rungs:
    """ASHA's rung schedule in training samples, as Ray's `ASHAScheduler` builds it."""

    budget: int  # max_t: the largest trial budget of the stage
    first: int  # grace_period
    reduction_factor: float

    @property
    def milestones(self) -> tuple[int, ...]:
        """The samples at which trials are compared (ascending); the budget itself ends every trial."""
        count = int(math.log(self.budget / self.first) / math.log(self.reduction_factor) + 1e-9 + 1)
        return tuple(int(self.first * self.reduction_factor ** k) for k in range(count))


def rungs_for(budget: int, first_rung: float, reduction_factor: float) -> Rungs:
    return Rungs(budget, max(1, round(budget * first_rung)), reduction_factor)


def stage_strategy(strategy: str, grid_size: int) -> str:
    """The strategy a stage of `grid_size` points runs: optuna only pays off on large grids."""
    if strategy == "optuna" and grid_size < OPTUNA_MIN_GRID:
        return "halving"
    return strategy


def optuna_samples(grid_size: int, num_samples: int | None) -> int:
    """Trials of an optuna stage: `--num-samples`, else SAMPLE_SHARE of the grid (never more than the grid)."""
    n = num_samples if num_samples is not None else math.ceil(SAMPLE_SHARE * grid_size)
    return max(1, min(n, grid_size))


def eval_every(rows: int, evals_per_epoch: int) -> int:
    """Training samples between evaluations for `evals_per_epoch` rungs per epoch of `rows` rows."""
    return max(1, math.ceil(rows / evals_per_epoch))


def stop_point(milestone: int, every: int, budget: int) -> int:
    """Where a trial stopped at `milestone` has trained to: the first evaluation at or past it."""
    return min(budget, math.ceil(milestone / every) * every)


def expected_samples(trials: float, budget: int, rungs: Rungs | None, every: int) -> float:
    """Training samples of `trials` trials of `budget` samples each; with `rungs`, a 1/rf share of those
    reaching a rung goes on (at least one trial reaches the end)."""
    if rungs is None:
        return trials * budget
    total, alive, done = 0.0, float(trials), 0
    for milestone in rungs.milestones:
        point = stop_point(milestone, every, budget)
        if point >= budget:
            break
        total += alive * (point - done)
        alive, done = max(1.0, alive / rungs.reduction_factor), point
    return total + alive * (budget - done)


def expected_evaluations(trials: float, budget: int, rungs: Rungs | None, every: int) -> float:
    """Dev evaluations of those trials: one every `every` samples and one at the end of each."""
    if rungs is None:
        return trials * math.ceil(budget / every)
    return expected_samples(trials, budget, rungs, every) / every


def evaluation_interval(config: dict[str, Any]) -> int:
    """Training samples between the EVALS_PER_RUN evaluations of a --compare seed run of `config`."""
    c = DistillConfig.from_dict(config)
    rows = split_rows(c.task, c.data_dir, c.max_train_samples, holdout=c.holdout_rows or 0)[0]
    return max(1, math.ceil(rows * c.epochs / EVALS_PER_RUN))


# ---------------------------------------------------------------------------------------------- a stage's trials
DATA_FIELDS = tuple(f.name for f in fields(DataSpec))


def data_values(spec: SearchSpec, schedule: Schedule) -> dict[str, Any]:
    """The `DataSpec` values of the search, the one source of its trials' (`stage_base`) and its teacher's
    (`teacher_spec`) data settings: the task, folder, length, seed and holdout of the command line, the
    preset's row limits and batch size, and --set's data values over those (a value the user set beats the
    preset's budget; the grid still beats both). Unset values are left out (DataSpec's defaults apply)."""
    values: dict[str, Any] = {"task": spec.task, "data_dir": spec.data_dir, "max_seq_len": spec.max_seq_len,
                              "seed": spec.seed, **spec.holdout}
    budget = schedule.budget
    for key in ("max_train_samples", "max_eval_samples", "batch_size"):
        if getattr(budget, key) is not None:
            values[key] = getattr(budget, key)
    values.update({k: v for k, v in spec.extra.items() if k in DATA_FIELDS})
    return values


def stage_base(spec: SearchSpec, schedule: Schedule, stage: Stage, teacher: str,
               winners: dict[str, dict[str, Any]], rows: int | None = None) -> dict[str, Any]:
    """The DistillConfig values every trial of `stage` shares, each checked against DistillConfig's field
    types (`fsd.config.check_partial`). With `rows` (training rows per epoch) and a strategy that halves, the
    trials evaluate `evals_per_epoch` times per epoch, unless --set says otherwise."""
    base: dict[str, Any] = {
        **data_values(spec, schedule),
        # No --student-init: the student starts from the backbone the teacher was fine-tuned from (its
        # fsd_teacher.json says which), never from the fine-tuned teacher itself (docs/method.md §1).
        "teacher": teacher, "student_init": spec.student_init, "student_layers": spec.student_layers,
        "method": stage.method, "storage": spec.storage, **spec.extra}
    for param, source in stage.inherit.items():
        base[param] = winners[source][param]
    base.update(stage.fixed)
    budget = schedule.budget
    for key in ("epochs", "memory_size"):
        if getattr(budget, key) is not None and key not in spec.extra:
            base[key] = getattr(budget, key)
    if rows is not None and spec.strategy != "grid" and "eval_every" not in spec.extra:
        base["eval_every"] = eval_every(rows, budget.evals_per_epoch)
    return check_partial(base)


def train_rows(spec: SearchSpec, schedule: Schedule) -> int:
    """Training rows per epoch of the search's trials (the --set or preset limit applied)."""
    limit = data_values(spec, schedule).get("max_train_samples")
    return split_rows(spec.task, spec.data_dir, limit, holdout=spec.holdout.get("holdout_rows", 0))[0]


def grid_size(grid: dict[str, tuple]) -> int:
    n = 1
    for values in grid.values():
        n *= len(values)
    return n


@dataclass(frozen=True)
class Strategy:
    """How a stage's grid is searched: `kind` grid, halving or optuna; halving's rungs; Optuna's samples; with
    --budget, what the stage may spend (`cap`, training samples)."""

    kind: str
    reduction_factor: float | None = None
    first_rung: float | None = None
    num_samples: int | None = None
    cap: int | None = None
    confirm: tuple[int, int] | None = None  # (leading points, more seeds each) confirmed before a winner is named

    def key(self) -> dict[str, Any]:
        """As a stage's key records it (the values that are set)."""
        out: dict[str, Any] = {"strategy": self.kind}
        for name in ("reduction_factor", "first_rung", "num_samples", "cap", "confirm"):
            if getattr(self, name) is not None:
                out[name] = list(self.confirm) if name == "confirm" else getattr(self, name)
        return out


def strategy_of(spec: SearchSpec, grid: dict[str, tuple], planned=None, cap: float | None = None) -> Strategy:
    """How this stage's grid is searched: the grid, or halving's rungs (and optuna's number of samples); with
    --budget, the stage's plan (`fsd.tuning.plan.budget.StagePlan`) and what it may spend (`cap`)."""
    kind = stage_strategy(spec.strategy, grid_size(grid))
    if planned is not None:  # the budget's plan samples a grid of any size, or none
        kind = "optuna" if planned.trials // spec.seeds < grid_size(grid) else "halving"
    confirm = (spec.confirm_top, spec.confirm_seeds) if confirms(spec) else None
    if kind == "grid":
        return Strategy("grid", confirm=confirm)
    samples = None
    if kind == "optuna":
        samples = optuna_samples(grid_size(grid), spec.num_samples) if planned is None else \
            max(1, planned.trials // spec.seeds)
    return Strategy(kind, spec.reduction_factor, spec.first_rung if planned is None else planned.first_rung,
                    samples, None if cap is None else int(cap), confirm)


def confirms(spec: SearchSpec) -> bool:
    """Whether a stage trains its leading points on more seeds before it names a winner."""
    return spec.confirm_top > 0 and spec.confirm_seeds > 0


def confirm_runs(spec: SearchSpec, points: int) -> int:
    """The confirmation trials of a stage whose grid has `points` points that can reach the end (a stage
    with a single point has nothing to confirm it against)."""
    return min(spec.confirm_top, points) * spec.confirm_seeds if confirms(spec) and points > 1 else 0


def confirm_seed_list(spec: SearchSpec) -> list[int]:
    """The seeds of the confirmation trials: the next ones after the `seeds` every point runs."""
    return [spec.seed + spec.seeds + i for i in range(spec.confirm_seeds)]


def stage_trials(spec: SearchSpec, grid: dict[str, tuple], how: Strategy) -> int:
    """How many Ray trials a stage over `grid` searched as `how` runs at most: its points (or Optuna's
    samples) times the seeds."""
    return (how.num_samples or grid_size(grid)) * spec.seeds


def trial_budget(base: dict[str, Any], grid: dict[str, tuple], rows: int) -> int:
    """The training samples of the stage's longest trial."""
    epochs = max(grid["epochs"]) if "epochs" in grid else base.get("epochs", DistillConfig.epochs)
    return rows * epochs


def majority_floor(spec: SearchSpec, schedule: Schedule) -> dict[str, float] | None:
    """The dev metrics of answering the search's most frequent training label (None for a regression)."""
    from fsd.data import Holdout
    from fsd.metrics import majority

    data = DataSpec(**data_values(spec, schedule))
    holdout = Holdout(spec.holdout_rows, spec.seed) if spec.select_on == "holdout" else None
    return majority(spec.task, spec.data_dir, data.max_train_samples, data.max_eval_samples, holdout)


def ranking_split(spec: SearchSpec, schedule: Schedule) -> dict[str, Any]:
    """What the search's trials are ranked on: the split, its rows and the kind of score (accuracy, mcc, f1_acc,
    pearson_spearman): the size that bounds how finely one trial's score can rank."""
    data = DataSpec(**data_values(spec, schedule))
    held = spec.holdout.get("holdout_rows", 0)
    dev = split_rows(spec.task, spec.data_dir, data.max_train_samples, data.max_eval_samples, held)[1]
    return {"split": "holdout" if held else "dev", "rows": held or dev, "score": score_kind(spec.task)}


def score_kind(task: str) -> str:
    """The kind of a task's selection score: accuracy, mcc, f1_acc, or pearson_spearman (STS-B)."""
    from fsd.tasks import get_task

    found = get_task(task)
    return "pearson_spearman" if found.is_regression else found.score


def seed_list(spec: SearchSpec) -> list[int]:
    return [spec.seed + i for i in range(spec.seeds)]


def teacher_spec(spec: SearchSpec, schedule: Schedule):
    """The recipe of the search's teacher (fine-tuned once per recipe, or `spec.teacher` if already one): the
    rows the trials train on (`data_values`, --set's row limits included), in the paper's teacher batches."""
    from fsd.teacher import TeacherSpec, teacher_data

    data = DataSpec(**data_values(spec, schedule))
    return TeacherSpec(spec.teacher, teacher_data(data), epochs=spec.teacher_epochs, lr=spec.teacher_lr)

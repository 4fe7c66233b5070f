"""What a search will cost before it runs, per stage and in total, in training samples (one row through one
training step), beside the teacher's fine-tuning and the teacher-cache pass; and --budget's plan over it.
Nothing is written: the data files are read to count rows, earlier stages' records to know what is reused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fsd.config import DataSpec
from fsd.data import split_rows
from fsd.layout import Layout
from fsd.models import TEACHER_META, teacher_meta
from fsd.tuning.plan import budget, folding, shared, winners
from fsd.tuning.plan.folding import Folded
from fsd.tuning.plan.references import teacher_spec
from fsd.tuning.plan.rungs import eval_every, expected_evaluations, expected_samples, rungs_for
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.plan.strategy import confirm_runs, optuna_samples, seed_list, stage_strategy, strategy_of
from fsd.tuning.plan.trials import data_values, stage_base
from search_spaces import Schedule, Stage


@dataclass
class StageCost:
    name: str
    trials: int | None  # None: a refine stage whose grid needs its coarse winner (counted as its largest)
    strategy: str
    samples_per_trial: tuple[int, ...]  # the budgets of its trials (one per epochs value)
    samples: float  # expected training samples
    grid_samples: float  # what the grid strategy would process
    evaluations: float  # expected dev rows evaluated
    reused: str | None = None  # the search that ran it (its record), or "this comparison" (a stage met before)
    runs: int = 0  # Ray trials it runs (points x seeds, or Optuna's samples x seeds; a refine at its largest)
    folded: Folded | None = None  # how its grid folds (None: a refine grid, known once its winner is)
    every: int = 0  # training samples between its trials' evaluations
    confirm: int = 0  # of `runs`, the trials that train its leading points on more seeds (their samples counted)


@dataclass
class SearchCost:
    method: str
    stages: list[StageCost]
    rows: int
    dev_rows: int
    teacher_samples: int  # 0: the teacher exists (given, or fine-tuned before in the storage folder)
    teacher_evaluations: int
    cache_rows: int  # rows of the teacher-cache pass (0: no method of the schedule reads a teacher cache)

    @property
    def samples(self) -> float:
        return sum(s.samples for s in self.stages if not s.reused)


def search_cost(spec: SearchSpec, schedule: Schedule, seen: set[str] | None = None,
                budget_plan: budget.Plan | None = None) -> SearchCost:
    """The cost of `schedule` under `spec` (with --budget, as `budget_plan` plans it). `seen` collects the keys of
    stages already counted (another method of the same --compare): those are reused, not run again."""
    seen = set() if seen is None else seen
    held = spec.holdout.get("holdout_rows", 0)
    data = DataSpec(**data_values(spec, schedule))  # the teacher's rows are the trials'
    rows, t_dev = split_rows(spec.task, spec.data_dir, data.max_train_samples, data.max_eval_samples, held)
    teacher, fine_tune = teacher_folder(spec, schedule)
    dev = held or t_dev  # trials ranked on the holdout evaluate it, not dev
    done: dict[str, dict] = {}
    costs = []
    for stage in schedule.stages:
        if stage.prepare or (spec.stages and stage.name not in spec.stages):
            continue
        planned = budget_plan.stage(stage.name) if budget_plan else None
        costs.append(stage_cost(spec, schedule, stage, teacher, done, rows, dev, seen, planned))
    cached = spec.extra.get("teacher_cache", True) and any(s.method != "nokd" for s in schedule.stages)
    return SearchCost(spec.method, costs, rows, dev, spec.teacher_epochs * rows if fine_tune else 0,
                      spec.teacher_epochs * t_dev if fine_tune else 0, rows if cached else 0)


def teacher_folder(spec: SearchSpec, schedule: Schedule) -> tuple[str, bool]:
    """The teacher the trials will use, and whether it must be fine-tuned first."""
    if teacher_meta(spec.teacher) is not None:
        return spec.teacher, False
    folder = Layout(spec.storage).teacher(teacher_spec(spec, schedule).key())
    return str(folder), not (folder / TEACHER_META).is_file()


def stage_cost(spec: SearchSpec, schedule: Schedule, stage: Stage, teacher: str, done: dict[str, dict],
               rows: int, dev: int, seen: set[str], planned: budget.StagePlan | None = None) -> StageCost:
    """One stage's cost. When the winners it builds on are known (`done`: stage -> record, found in the
    storage folder), its grid is exact and folded as the runner folds it, and a finished identical stage is
    reused; its record then joins `done`. Else its grid is folded against stand-in winners (what folds
    whatever they are)."""
    sources = {*stage.inherit.values(), *(d.source for d in stage.derived), *stage.carry}
    known = sources <= set(done)
    earlier = {k: v["winner"] for k, v in done.items()}
    base, folded = None, None
    if known:
        grid = stage.resolve(earlier)
        base = stage_base(spec, schedule, stage, teacher, earlier, rows)
        if all(grid.values()):
            folded = folding.fold(grid, base, earlier)
        points = folded.runs if folded is not None else 0
    else:
        folded = folding.expected(spec, schedule, stage, teacher)
        points = folded.runs if folded is not None else stage.trial_count()
    reused = None
    if known:
        carried = winners.carried(done, stage, folded, base)
        reused = _reuse(spec, stage, base, folded, carried, done, seen, planned) if points else None
        if not points and carried:
            done[stage.name] = winners.stage_record(winners.choose(None, carried), stage.name)
    epochs = _epochs(spec, schedule, stage, base)
    budgets = tuple(rows * e for e in epochs)
    n = points if points is not None else min(d.limit or 9 for d in stage.derived)  # a refine: at most 9 points
    strategy = stage_strategy(spec.strategy, n)
    trials = (optuna_samples(n, spec.num_samples) if strategy == "optuna" and n else n) * spec.seeds
    first_rung = spec.first_rung
    if planned is not None and n:
        trials, first_rung = min(planned.trials, n * spec.seeds), planned.first_rung
        strategy = "optuna" if trials < n * spec.seeds else "halving"
    every = (base or {}).get("eval_every") or spec.extra.get("eval_every")
    if every is None:
        every = rows if strategy == "grid" else eval_every(rows, schedule.budget.evals_per_epoch)
    rungs = rungs_for(max(budgets), first_rung, spec.reduction_factor) if strategy != "grid" else None
    share = trials / len(budgets)
    samples = sum(expected_samples(share, b, rungs, every) for b in budgets)
    evals = sum(expected_evaluations(share, b, rungs, every) for b in budgets) * dev
    confirm = confirm_runs(spec, n)  # on the longest budget: a leader may be any point
    samples += confirm * max(budgets)
    evals += confirm * math.ceil(max(budgets) / every) * dev
    grid_samples = (folded.size if folded is not None else n) * spec.seeds * sum(budgets) / len(budgets)
    return StageCost(stage.name, points, strategy, budgets, 0.0 if reused else samples, grid_samples,
                     0.0 if reused else evals, reused, trials + confirm, folded, every, confirm)


def _reuse(spec: SearchSpec, stage: Stage, base: dict, folded, carried: list, done: dict[str, dict],
           seen: set[str], planned: budget.StagePlan | None) -> str | None:
    """Who ran this exact stage before (a search in the storage folder, or this comparison), recording its
    winner in `done` as the runner would; None when nobody did (with --budget, a stage's key holds what it may
    spend, known only while the search runs: such a stage is counted as run)."""
    if planned is not None:
        return None
    key = shared.stage_key(stage.name, base, folded.grid, strategy_of(spec, folded.grid), seed_list(spec),
                           [{"winner": c.winner, "score": c.score} for c in carried] or None)
    record = shared.finished(shared.stage_folder(spec.storage, spec.task, stage.name, key))
    reused = None
    if record is not None:
        own = winners.Candidate(record["winner"], record["score"], record.get("checkpoint"))
        done[stage.name] = winners.stage_record(winners.choose(own, carried), stage.name)
        reused = f"{record['search']} search"
    elif key in seen:
        reused = "this comparison"
    seen.add(key)
    return reused


def _epochs(spec: SearchSpec, schedule: Schedule, stage: Stage, base: dict | None) -> tuple[int, ...]:
    """The epochs its trials run: the grid's values, else --set's, else the budget's, else the stage's own
    value; an epochs value inherited from a winner not yet known counts as the largest of the source stage's
    grid."""
    if "epochs" in stage.grid:
        return tuple(stage.grid["epochs"])
    if base is not None:
        return (base["epochs"],)
    if "epochs" in spec.extra:
        return (spec.extra["epochs"],)
    if schedule.budget.epochs is not None:
        return (schedule.budget.epochs,)
    if "epochs" in stage.fixed:
        return (stage.fixed["epochs"],)
    source = stage.inherit.get("epochs")
    grid = schedule.stage(source).grid if source else {}
    return (max(grid.get("epochs", (3,))),)


def budget_plan(spec: SearchSpec, schedule: Schedule, samples_per_hour: float | None = None) -> budget.Plan:
    """--budget planned over the stages the search will run (reused ones cost nothing; a refine stage counts at
    its largest grid); a budget in hours is converted at `samples_per_hour` (`fsd.tuning.cost.estimate`'s
    steps timed here)."""
    wanted = budget.parse(spec.budget)
    cost = search_cost(spec, schedule)
    stages = [{"name": s.name, "points": s.trials if s.trials is not None else round(s.grid_samples / max(
               s.samples_per_trial) / spec.seeds), "per_trial": max(s.samples_per_trial), "every": s.every,
               "grid": s.grid_samples, "confirm": s.confirm * max(s.samples_per_trial)}
              for s in cost.stages if not s.reused and s.trials != 0]
    total = budget.in_samples(wanted, sum(s.grid_samples for s in cost.stages), samples_per_hour)
    return budget.make_plan(total, stages, spec.strategy, spec.reduction_factor, spec.first_rung, spec.seeds)

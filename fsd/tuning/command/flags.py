"""A tune_main.py command line's values parsed and resolved: the task, method and stages into a schedule,
--set and --grid into typed DistillConfig values, --compare and --batch-sizes into lists, and all of it
into a SearchSpec. A value that cannot be parsed is a `UsageError` naming the flag and the fix; the checks
of paths and services are in checks.py, of data and models in inputs.py."""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from fsd.config import DistillConfig
from fsd.layout import Layout
from fsd.storage import absolute
from fsd.tasks import TASKS, get_task
from fsd.tuning.command.options import DECLARED, Options, given
from fsd.tuning.plan.spec import FIRST_RUNG, HOLDOUT_ROWS, HOLDOUT_SHARE, REDUCTION_FACTOR, SearchSpec
from search_spaces import Schedule, get_schedule
from search_spaces.base import METHODS

SPEC_FIELDS = {f.name for f in fields(SearchSpec)}  # a flag of one of these names goes into the spec
# DistillConfig values that tune_main.py flags own: --set may not change them behind the flag's back.
OWNED = {"task": "--task", "method": "--method", "teacher": "--teacher", "student_init": "--student-init",
         "student_layers": "--student-layers", "data_dir": "--data-dir", "storage": "--storage",
         "max_seq_len": "--max-seq-len", "seed": "--seed", "holdout_rows": "--select-on holdout --holdout-rows",
         "holdout_seed": "--select-on holdout --seed"}


class UsageError(Exception):
    """A command line that cannot run; the message (one line) names the problem and the fix."""


def build_spec(args: Options, schedule: Schedule, stages: tuple[str, ...], extra: dict[str, Any], storage: Path,
               gpus_per_trial: float = 0.0) -> SearchSpec:
    """The SearchSpec of checked flags: those resolved here (paths made absolute, the preset's defaults filled in,
    the GPU share as `check_gpus` resolved it), and every other flag named as a SearchSpec field, as given."""
    resolved = dict(
        task=schedule.task, storage=str(storage), mlflow_uri=args.mlflow_uri or Layout(storage).mlflow_uri,
        teacher=absolute(args.teacher), student_init=absolute(args.student_init),
        data_dir=str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None, stages=stages,
        confirm_top=schedule.budget.confirm_top if args.confirm_top is None else args.confirm_top,
        confirm_seeds=schedule.budget.confirm_seeds if args.confirm_seeds is None else args.confirm_seeds,
        gpus_per_trial=gpus_per_trial,
        reduction_factor=REDUCTION_FACTOR if args.reduction_factor is None else args.reduction_factor,
        first_rung=FIRST_RUNG if args.first_rung is None else args.first_rung, holdout_rows=_holdout_rows(args),
        teacher_epochs=args.teacher_epochs or schedule.budget.teacher_epochs,
        teacher_lr=schedule.budget.teacher_lr if args.teacher_lr is None else args.teacher_lr,
        extra=extra, grids=parse_grids(args))
    as_given = {f.name: getattr(args, f.name) for f in DECLARED if f.name in SPEC_FIELDS and f.name not in resolved}
    return SearchSpec(**as_given, **resolved)


def _holdout_rows(args: Options) -> int | None:
    """--holdout-rows, or HOLDOUT_SHARE of the task's training rows (at most HOLDOUT_ROWS) with --select-on
    holdout; None without (trials are ranked on dev)."""
    if args.select_on != "holdout":
        return None
    if args.holdout_rows is not None:
        return args.holdout_rows
    from fsd.data import split_rows

    return min(HOLDOUT_ROWS, int(HOLDOUT_SHARE * split_rows(args.task, args.data_dir)[0]))


def check_names(args: Options) -> tuple[Schedule, tuple[str, ...]]:
    """Task, method and --stages.

    Returns:
        The schedule and the stages to run (empty: all).
    """
    try:
        task = get_task(args.task).name
    except ValueError:
        raise UsageError(f"--task {args.task!r} is not a GLUE task: choose one of {', '.join(TASKS)}") from None
    if args.method not in METHODS:
        raise UsageError(f"--method {args.method!r} has no search schedule: choose one of {', '.join(METHODS)}")
    grids = parse_grids(args)
    schedule = get_schedule(args.method, task, args.preset, grids)
    searched = {k for s in schedule.stages for k in s.grid}
    for key in grids:
        if key not in searched:
            raise UsageError(f"--grid {key}: no stage of the {args.method} schedule (preset {args.preset}) searches "
                             f"it; it searches {', '.join(sorted(searched))} (--set gives a fixed value)")
    names = [s.name for s in schedule.stages]
    stages = tuple(args.stages.split(",")) if args.stages else ()
    for name in stages:
        if name not in names:
            raise UsageError(f"--stages names {name!r}, which the {args.method} schedule lacks: choose from "
                             f"{', '.join(names)}")
    return schedule, stages


def check_batch_sizes(args: Options) -> tuple[int, ...]:
    """--batch-sizes as positive whole numbers (empty without the flag)."""
    if not args.batch_sizes:
        return ()
    try:
        sizes = tuple(int(v) for v in args.batch_sizes.split(",") if v.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise UsageError(f"--batch-sizes {args.batch_sizes!r}: give distinct whole numbers, e.g. --batch-sizes "
                         "8,16,32,64")
    return sizes


def check_compare(args: Options) -> list[str]:
    """The methods of --compare: known schedules, no repeats; --ablation and --batch-sizes need fsd among them."""
    studies = [f for f, on in (("--ablation", args.ablation), ("--batch-sizes", args.batch_sizes)) if on]
    if studies and "fsd" not in (args.compare or "").split(","):
        raise UsageError(f"{studies[0]} re-runs FSD's winner: it needs --compare with fsd, e.g. --compare vkd,fsd")
    if args.compare is None:
        return []
    methods = [m for m in args.compare.split(",") if m]
    for method in methods:
        if method not in METHODS:
            raise UsageError(f"--compare names {method!r}, which has no search schedule: choose from "
                             f"{', '.join(METHODS)}")
    if len(set(methods)) != len(methods) or not methods:
        raise UsageError(f"--compare {args.compare!r}: name each method once, e.g. --compare vkd,pkd,rkd,fsd")
    return methods


def parse_extra(args: Options) -> dict[str, Any]:
    """The DistillConfig values every trial gets (`SearchSpec.extra`): --cache-budget-gb, --compile, --set."""
    extra: dict[str, Any] = {"cache_budget_gb": args.cache_budget_gb, "compile": args.compile}
    extra.update(parse_set(pair) for pair in args.sets or [])
    return extra


def parse_set(pair: str, flag: str = "--set") -> tuple[str, Any]:
    """`KEY=VALUE` of --set -> (the DistillConfig field, VALUE as the field's type)."""
    key, sep, raw = pair.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise UsageError(f"{flag} {pair!r} is not KEY=VALUE: write e.g. {flag} lr=3e-5")
    if key in OWNED:
        raise UsageError(f"{flag} {key}: use {OWNED[key]} instead")
    hints = typing.get_type_hints(DistillConfig)
    if key not in hints:
        near = difflib.get_close_matches(key, [f.name for f in fields(DistillConfig)], n=1)
        hint = f"did you mean {near[0]!r}?" if near else "see python -m fsd.cli --help for the settings"
        raise UsageError(f"{flag} {key}: no such setting; {hint}")
    hint = hints[key]
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    text = raw.strip()
    if type(None) in kinds and text.lower() in ("none", "null"):
        return key, None
    for kind in kinds:
        if kind is bool and text.lower() in ("true", "yes", "on", "1"):
            return key, True
        if kind is bool and text.lower() in ("false", "no", "off", "0"):
            return key, False
        if kind is str:
            return key, text
        try:
            value = kind(text) if kind in (int, float) else None
        except ValueError:
            continue
        if value is not None and math.isfinite(value):
            return key, value
    names = " or ".join("none" if k is type(None) else k.__name__ for k in kinds)
    raise UsageError(f"{flag} {pair}: {key} takes {names}, not {raw!r}")


def parse_grids(args: Options) -> dict[str, tuple]:
    """`--grid KEY=V1,V2,...` (repeatable) -> {the DistillConfig field: its values, typed}."""
    grids: dict[str, tuple] = {}
    for text in args.grids or []:
        key, _, raw = text.partition("=")
        parsed = [parse_set(f"{key}={v}", "--grid") for v in raw.split(",") if v.strip()]
        values = tuple(v for _, v in parsed)
        if not values or len(set(values)) != len(values):
            raise UsageError(f"--grid {text!r}: give distinct values after '=', e.g. --grid lr=1e-4,2e-4")
        grids[parsed[0][0]] = values
    return grids


# Flags that ask for two things at once, refused with why (docs/faults.md, "A bad command", has the table).
# Not here: --estimate with --dry-run (it is --dry-run plus timed steps) and --dry-run with --compare (the cost
# of each method's search); the search flags with --resume are checked against the stored search instead.
CONFLICTS = (
    (("--dry-run", "--estimate"), "--resume", "a dry run prices a new search from its flags and reads no stored "
                                              "search; drop --resume to see the cost, or the dry run to continue"),
    (("--dry-run", "--estimate"), "--report", "a dry run prices a search, --report rebuilds the page of those "
                                              "stored; run one, then the other"),
    (("--report",), "--resume", "--report trains nothing; run --resume first, then --report"),
    (("--report",), "--compare", "--report rebuilds the page of what is stored; run --compare first, then --report"),
    (("--compare",), "--resume", "--compare continues each method's stored search by itself; drop --resume"),
)
# What --report reads: the task's searches in a storage folder and their MLflow store.
REPORT_FLAGS = ("--task", "--storage", "--mlflow-uri", "--verbose", "--report")


def check_modes(args: Options) -> None:
    """No two flags that contradict each other (`CONFLICTS`), and --report with none that shapes a search."""
    flags = given(args)
    for firsts, second, why in CONFLICTS:
        first = next((f for f in firsts if f in flags), None)
        if first and second in flags:
            raise UsageError(f"{first} with {second}: {why}")
    ignored = [f for f in flags if f not in REPORT_FLAGS]
    if "--report" in flags and ignored:
        raise UsageError(f"--report with {ignored[0]}: the report covers every search of the task in --storage and "
                         f"trains nothing, so {ignored[0]} changes nothing there; drop it")

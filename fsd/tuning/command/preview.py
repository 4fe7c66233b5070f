"""What --dry-run and --estimate print of a command line: every stage and its grid, --budget's plan, the cost
table (of every method's search with --compare, shared stages counted once), how finely the ranking split
ranks, the fresh-seed runs, the teacher-output cache, the disk at its peak, the comparison's seed runs and,
with --estimate, the hours from steps timed here. Nothing is written and no service is contacted; the tables
are the cost room's (fsd/tuning/cost/dryrun.py)."""

from __future__ import annotations

from collections.abc import Iterator

from fsd.logs import first_line, quiet_libraries
from fsd.tuning.command.checks import dry_spec
from fsd.tuning.command.flags import UsageError, check_batch_sizes, check_compare
from fsd.tuning.command.options import Options
from fsd.tuning.cost.count import SearchCost, budget_plan, search_cost
from fsd.tuning.cost.dryrun import (
    cache_line,
    compare_cost,
    format_compare_cost,
    format_cost,
    fresh_line,
    ranking_line,
)
from fsd.tuning.cost.estimate import format_estimate, measure, samples_per_hour
from fsd.tuning.plan.budget import format_plan
from fsd.tuning.plan.budget import parse as parse_budget
from fsd.tuning.plan.spec import SearchSpec, method_spec
from fsd.tuning.search.disk import peak
from search_spaces import Schedule, format_schedule, get_schedule


def dry_run(args: Options) -> Iterator[str]:
    """The text of --dry-run (and --estimate) for `args`, a block at a time: the schedule comes at once, the
    hours after the timed steps.

    Raises:
        UsageError: a flag the dry run cannot price, or --estimate without models it can load.
    """
    spec, schedule = dry_spec(args)
    yield format_schedule(schedule)
    pairs = [(spec, schedule)]
    if args.compare:
        methods = check_compare(args)
        pairs = [(method_spec(spec, m), get_schedule(m, spec.task, spec.preset, spec.grids)) for m in methods]
    seen: set[str] = set()
    plans = [budget_plan(s, sch, samples_per_hour(s, sch) if parse_budget(s.budget).hours else None)
             if s.budget else None for s, sch in pairs]
    for (s, _), planned in zip(pairs, plans, strict=True):
        if planned is not None:
            yield format_plan(planned, parse_budget(s.budget))
    costs = [search_cost(s, sch, seen, planned) for (s, sch), planned in zip(pairs, plans, strict=True)]
    yield format_cost(costs)
    yield ranking_line(spec, costs[0].dev_rows)
    if spec.fresh_seeds:
        yield fresh_line(spec, costs[0])
    line, cache_bytes = cache_line(spec, schedule, costs[0].rows)
    yield line
    yield disk_peak(spec, schedule, costs, cache_bytes)
    if args.compare:
        yield format_compare_cost(compare_cost(costs, [sch for _, sch in pairs], args.seeds, args.ablation,
                                               check_batch_sizes(args)))
    if args.estimate:
        quiet_libraries()
        schedules = [sch for _, sch in pairs]
        try:
            rates = measure(spec, schedules)
        except OSError as e:  # a hub model that is not here (offline), a folder without weights
            raise UsageError(f"--estimate: the models cannot be loaded to time them ({first_line(e, 300)}): pass a "
                             "local --teacher folder or packaged-minilm") from None
        yield format_estimate(costs, schedules, rates)


def disk_peak(spec: SearchSpec, schedule: Schedule, costs: list[SearchCost], cache_bytes: float | None) -> str:
    """The line of --dry-run that says how much disk the search will hold at its fullest."""
    stages = sum(1 for c in costs for s in c.stages if not s.reused and s.trials != 0)
    found = peak(spec, schedule, stages, costs[0].rows, cache_bytes)
    return found.says() if found else "disk at its peak: not known before the backbone's configuration is downloaded"

"""fsd-tune: the paper's staged hyper-parameter search for Feature Structure Distillation of BERT on GLUE.

    python tune_main.py --task qqp                        # the paper's schedule for FSD on QQP
    python tune_main.py --task rte --preset smoke --data-dir ../shared/glue_data --teacher packaged-minilm
    python tune_main.py --task qqp --dry-run --preset paper  # print every stage and grid, run nothing

It fine-tunes (or reuses) the teacher, then runs each stage of the schedule as a Ray Tune experiment whose
trials are distillation runs; the best configuration of a stage fixes its parameters for the next. Every
trial is logged to MLflow. A killed search continues with the same command and --resume.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

from fsd.tuning.command.options import Parser, fail

SCRIPT = "fsd-tune"  # the command an install makes ([project.scripts] in pyproject.toml)


def command() -> str:
    """How this command was called, for the lines that tell the user what to type."""
    return SCRIPT if Path(sys.argv[0]).name == SCRIPT else "python tune_main.py"


def build_parser() -> Parser:
    """The command's parser, of the flags fsd/tuning/command/options.py declares; it parses into `Options`."""
    return Parser(command(), __doc__)


# What Ctrl-C did when the command started, put back once the search's own handling takes over (run()).
_SIGINT_BEFORE = None


def _interrupted_during_checks(signum, frame) -> NoReturn:
    """Ctrl-C while the command checks its input and imports what the checks need (seconds): nothing has been
    written, so it ends at once, with one line and 130 as a Ctrl-C mid-search. Not as a KeyboardInterrupt:
    raised inside an import, that leaves the module half made (numpy then failed with a RecursionError)."""
    import os

    print("interrupted during the checks, before the search began: nothing was written; run the same command "
          "again", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)


def main(argv: list[str] | None = None) -> None:
    import signal

    global _SIGINT_BEFORE
    parser = build_parser()
    args = parser.parse_args(argv)
    _SIGINT_BEFORE = signal.signal(signal.SIGINT, _interrupted_during_checks)
    try:
        from fsd.logs import show_console

        # The narrative (progress, stage lines) goes to stderr, line by line; what this function prints, the
        # results (the summary table, the pointers, --dry-run's tables), to stdout: `> results.md` keeps them.
        show_console(quiet=args.quiet)
        from fsd.tuning.command.checks import UsageError, validate
        from fsd.tuning.command.flags import check_modes

        try:
            check_modes(args)  # flags that contradict each other, before any mode runs
            if args.dry_run or args.estimate:
                dry_run(args)
                return
            search = validate(args)  # every check, before anything is written
        except UsageError as e:
            fail(str(e))
        run(search)
    finally:  # for a caller that goes on (a test calling main())
        signal.signal(signal.SIGINT, _SIGINT_BEFORE)


def dry_run(args) -> None:
    """Every stage, its grid and what it will cost (with --estimate, in hours, from steps timed here); nothing
    is written. With --compare, the cost of every method's search, shared stages counted once."""
    from fsd.logs import first_line, quiet_libraries
    from fsd.tuning.command.checks import check_batch_sizes, check_compare, dry_spec
    from fsd.tuning.cost.count import budget_plan, search_cost
    from fsd.tuning.cost.dryrun import cache_line, compare_cost, format_compare_cost, format_cost
    from fsd.tuning.cost.estimate import samples_per_hour
    from fsd.tuning.plan.budget import format_plan
    from fsd.tuning.plan.budget import parse as parse_budget
    from fsd.tuning.plan.spec import method_spec
    from search_spaces import format_schedule, get_schedule

    spec, schedule = dry_spec(args)
    print(format_schedule(schedule))
    pairs = [(spec, schedule)]
    if args.compare:
        methods = check_compare(args)
        pairs = [(method_spec(spec, m), get_schedule(m, spec.task, spec.preset, spec.grids)) for m in methods]
    seen: set[str] = set()
    plans = [budget_plan(s, sch, samples_per_hour(s, sch) if parse_budget(s.budget).hours else None)
             if s.budget else None for s, sch in pairs]
    for (s, _), planned in zip(pairs, plans, strict=True):
        if planned is not None:
            print(format_plan(planned, parse_budget(s.budget)))
    costs = [search_cost(s, sch, seen, planned) for (s, sch), planned in zip(pairs, plans, strict=True)]
    print(format_cost(costs))
    print(ranking_line(spec, costs[0].dev_rows))
    if spec.fresh_seeds:
        per_run = max(max(st.samples_per_trial) for st in costs[0].stages) if costs[0].stages else 0
        runs = 4 if spec.method == "fsd" else 1  # the search's best, VKD's winner, the two untuned start points
        print(f"fresh seeds: at most {runs} configuration(s) x {spec.fresh_seeds} seeds = {runs * spec.fresh_seeds} "
              f"runs after the search, {runs * spec.fresh_seeds * per_run:,} training samples")
    line, cache_bytes = cache_line(spec, schedule, costs[0].rows)
    print(line)
    print(disk_peak(spec, schedule, costs, cache_bytes))
    if args.compare:
        batch_sizes = check_batch_sizes(args)
        print(format_compare_cost(compare_cost(costs, [sch for _, sch in pairs], args.seeds, args.ablation,
                                               batch_sizes)))
    if args.estimate:
        from fsd.tuning.cost.estimate import format_estimate, measure

        quiet_libraries()
        schedules = [sch for _, sch in pairs]
        try:
            rates = measure(spec, schedules)
        except OSError as e:  # a hub model that is not here (offline), a folder without weights
            fail(f"--estimate: the models cannot be loaded to time them ({first_line(e, 300)}): pass a local --teacher "
                 "folder or packaged-minilm")
        print(format_estimate(costs, schedules, rates))


def ranking_line(spec, rows: int) -> str:
    """The line of --dry-run that says how finely one trial's score on the ranking split can rank."""
    from fsd.tuning.plan.evidence import binomial_error, split_error_line
    from fsd.tuning.plan.ranking import score_kind

    kind = score_kind(spec.task)
    line = split_error_line(kind, "holdout" if spec.select_on == "holdout" else "dev", rows, None)
    if kind == "accuracy":
        line += (f": two single runs closer than about {200 * binomial_error(0.5, rows):.1f} points cannot be told "
                 "apart by this split alone (more rows: --holdout-rows; more seeds: --confirm-top/--confirm-seeds)")
    return line


def disk_peak(spec, schedule, costs, cache_bytes: float | None) -> str:
    """The line of --dry-run that says how much disk the search will hold at its fullest."""
    from fsd.tuning.search.disk import peak

    stages = sum(1 for c in costs for s in c.stages if not s.reused and s.trials != 0)
    found = peak(spec, schedule, stages, costs[0].rows, cache_bytes)
    return found.says() if found else "disk at its peak: not known before the backbone's configuration is downloaded"


def run(search) -> None:
    import signal
    import time

    from fsd.logs import quiet_libraries
    from fsd.tuning.command.checks import UsageError, check_search_folder
    from fsd.tuning.results.summary import fresh_lines, noise_lines, pointers, summary_table
    from fsd.tuning.search import lock
    from fsd.tuning.search.disk import DiskFull
    from fsd.tuning.search.runner import ServerAway, StageFailed, run_search

    if _SIGINT_BEFORE is not None:  # main() set its checks' handler: from here Ctrl-C is the search's (stop())
        signal.signal(signal.SIGINT, _SIGINT_BEFORE)
    spec = search.spec
    started = time.monotonic()
    if search.report:
        from fsd.tuning.results.report import build_report

        try:
            print(build_report(spec.storage, spec.task, spec.mlflow_uri))
        except FileNotFoundError as e:
            fail(str(e))
        return
    try:
        if search.compare:
            from fsd.tuning.results.compare import compare_folder, run_compare

            quiet_libraries()
            with lock.held(compare_folder(spec)):
                print(run_compare(spec, search.compare, spec.seeds, ablation=search.ablation,
                                  batch_sizes=search.batch_sizes))
            return
        with lock.held(spec.folder):
            # Again under the lock: a search that started since the checks would be caught here.
            check_search_folder(spec, search.resume, locked=True)
            quiet_libraries()
            ledger, mlflow_note = run_search(spec, search.schedule)
    except (lock.Busy, UsageError) as e:
        fail(str(e))
    except (StageFailed, DiskFull, ServerAway) as e:  # not bad input: the search stops; finished stages stay done
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        stop(search)
    print(summary_table(ledger, search.schedule))
    for line in noise_lines(ledger) + fresh_lines(ledger):
        print(line)
    print(pointers(ledger, search.schedule, spec.storage, spec.mlflow_uri, time.monotonic() - started))
    if mlflow_note:
        print(mlflow_note)


def stop(search) -> NoReturn:
    """Ctrl-C: Ray's processes stopped, and the command that continues where the search stopped."""
    import os
    import shlex
    import signal

    signal.signal(signal.SIGINT, lambda *_: os._exit(130))  # a second Ctrl-C: at once
    import ray

    if ray.is_initialized():
        ray.shutdown()  # the local cluster ray.init started goes with it; a cluster given by --address stays
    again = [sys.executable, *sys.argv]
    if not search.compare and "--resume" not in again:
        again.append("--resume")  # a comparison re-run reuses what finished
    print(f"interrupted: finished trials and stages are kept; continue with: {shlex.join(again)}", file=sys.stderr)
    raise SystemExit(130)


if __name__ == "__main__":
    main()

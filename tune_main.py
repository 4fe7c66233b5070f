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
                from fsd.tuning.command.preview import dry_run

                for text in dry_run(args):  # the schedule at once, --estimate's hours after its timed steps
                    print(text)
                return
            search = validate(args)  # every check, before anything is written
        except UsageError as e:
            fail(str(e))
        run(search)
    finally:  # for a caller that goes on (a test calling main())
        signal.signal(signal.SIGINT, _SIGINT_BEFORE)


def run(search) -> None:
    import signal
    import time

    from fsd.logs import quiet_libraries
    from fsd.tuning.plan.resume import Refused
    from fsd.tuning.results.summary import fresh_lines, noise_lines, pointers, summary_table
    from fsd.tuning.search import lock
    from fsd.tuning.search.disk import DiskFull
    from fsd.tuning.search.runner import ServerAway, StageFailed, run_locked

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
            from fsd.tuning.results.compare import write_tables
            from fsd.tuning.search.comparison import run_comparison

            quiet_libraries()
            with run_comparison(spec, search.compare, spec.seeds, ablation=search.ablation,
                                batch_sizes=search.batch_sizes) as ran:
                tables = write_tables(spec, ran)
            print(tables)
            return
        quiet_libraries()
        ledger, mlflow_note = run_locked(spec, search.schedule, search.resume)
    except (lock.Busy, Refused) as e:
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

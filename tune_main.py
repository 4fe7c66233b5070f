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
    """Parse, check, and dispatch: --dry-run and --estimate print the plan; every other command runs
    (`fsd.tuning.command.dispatch.run`)."""
    import signal

    args = build_parser().parse_args(argv)
    before = signal.signal(signal.SIGINT, _interrupted_during_checks)
    try:
        from fsd.logs import show_console

        # The narrative (progress, stage lines) goes to stderr, line by line; the results to stdout.
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
        from fsd.tuning.command.dispatch import run

        signal.signal(signal.SIGINT, before)  # from here Ctrl-C is the search's (dispatch.stop)
        run(search)
    finally:  # for a caller that goes on (a test calling main())
        signal.signal(signal.SIGINT, before)


if __name__ == "__main__":
    main()

"""What a checked command does: --report writes the page, --compare runs and tables the comparison, anything
else runs the search and prints its summary; Ctrl-C stops Ray's processes and says how to continue.

The narrative (progress, stage lines) goes to stderr; the results (the summary table, the pointers, the
report's path, the comparison's tables) to stdout, so `> results.md` keeps them.
"""

from __future__ import annotations

import sys
import time
from typing import NoReturn

from fsd.tuning.command.checks import Search
from fsd.tuning.command.options import fail


def run(search: Search) -> None:
    """Run a command that passed every check (`fsd.tuning.command.checks.validate`).

    Exits 2 on input found bad once it runs (a busy or changed search folder, a missing report), 1 on a search
    that stopped (a stage that failed, a full disk, an MLflow server gone before the search began), 130 on
    Ctrl-C (`stop`).
    """
    from fsd.logs import quiet_libraries
    from fsd.tuning.plan.resume import Refused
    from fsd.tuning.results.summary import fresh_lines, noise_lines, pointers, summary_table
    from fsd.tuning.search import lock
    from fsd.tuning.search.disk import DiskFull
    from fsd.tuning.search.runner import ServerAway, StageFailed, run_locked

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


def stop(search: Search) -> NoReturn:
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

"""fsd-tune: the paper's staged hyper-parameter search for Feature Structure Distillation of BERT on GLUE.

    python tune_main.py --task qqp                        # the paper's schedule for FSD on QQP
    python tune_main.py --task rte --preset smoke --data-dir ../shared/glue_data --teacher packaged-minilm
    python tune_main.py --task qqp --dry-run --preset paper  # print every stage and grid, run nothing

It fine-tunes (or reuses) the teacher, then runs each stage of the schedule as a Ray Tune experiment whose
trials are distillation runs; the best configuration of a stage fixes its parameters for the next. Every
trial is logged to MLflow. A killed search continues with the same command and --resume.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

SCRIPT = "fsd-tune"  # the command an install makes ([project.scripts] in pyproject.toml)


def command() -> str:
    """How this command was called, for the lines that tell the user what to type."""
    return SCRIPT if Path(sys.argv[0]).name == SCRIPT else "python tune_main.py"


class Parser(argparse.ArgumentParser):
    """argparse's own errors as every other error of this command: one `error:` line, exit code 2 (not the
    usage block, which buried the line under twenty more)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} ({command()} --help lists the flags)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=command().removeprefix("python "), description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--task", required=True, help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli")
    a("--method", default="fsd",
      help="what to search: fsd (the paper's 6 steps, 10 stages in --dry-run), vkd, pkd, rkd or minilm")
    a("--data-dir", default=None, help="local GLUE folder (GLUE download layout); default: nyu-mll/glue from the hub")
    a("--teacher", default="bert-base-uncased",
      help="pre-trained backbone to fine-tune as teacher (hub id, folder, or 'packaged-minilm' offline), or a "
           "teacher already fine-tuned on the task")
    a("--student-init", default=None, help="pre-trained backbone of the student (default: the teacher's backbone)")
    a("--student-layers", type=int, default=6, help="layers of the student: the first k of the backbone (paper: 6)")
    a("--storage", default="./fsd_runs",
      help="folder for teachers, caches and searches (one sub-folder per task and method)")
    a("--mlflow-uri", default=None, help="MLflow tracking URI (default: sqlite:///<storage>/mlflow.db)")
    a("--gpus-per-trial", type=float, default=None,
      help="GPU share of one trial; 0.25 packs four trials per GPU (default: 0.25 with CUDA, else 0)")
    a("--cpus-per-trial", type=float, default=1.0, help="CPU cores reserved per trial")
    a("--max-concurrent", type=int, default=0, help="at most this many trials at once (0: as resources allow)")
    a("--seeds", type=int, default=1, help="run every grid point with this many seeds and rank by their mean")
    a("--seed", type=int, default=42, help="first seed")
    a("--confirm-top", type=int, default=None, metavar="K",
      help="before a stage names its winner, train its K leading points on --confirm-seeds more seeds and compare "
           "them paired by seed (0: name the best single run, as the paper; default: the preset's, 3 for paper, "
           "2 for cpu, 0 for smoke)")
    a("--fresh-seeds", type=int, default=0, metavar="N",
      help="after the search, re-train its best student's configuration, VKD's winner and the untuned start points "
           "(fsd and fsdil with default weights) on N seeds no search used, and test the search's best against "
           "them (0: not done)")
    a("--confirm-seeds", type=int, default=None, metavar="R",
      help="seeds each of a stage's --confirm-top leading points is trained on more (default: the preset's, 2 "
           "for paper, 1 for cpu, 0 for smoke)")
    a("--strategy", choices=["grid", "halving", "optuna"], default="grid",
      help="grid: every grid point to the full budget (the paper); halving: every point, each stopped at a rung "
           "(ASHA on training samples) when below the best third there; optuna: TPE samples of the large grids, "
           "halved the same way")
    a("--reduction-factor", type=float, default=None,
      help="halving/optuna: about 1 in this many trials goes on at each rung (default 3, measured)")
    a("--first-rung", type=float, default=None,
      help="halving/optuna: the first rung as a share of a trial's budget (default 3/4, where the score ranks)")
    a("--num-samples", type=int, default=None,
      help="optuna: trials per stage with a large grid (default: a third of the grid, measured)")
    a("--budget", default=None, metavar="AMOUNT",
      help="halving/optuna: what the search may spend, as training samples (2e6), a share of the grid's samples "
           "(20%%) or hours on this machine (8h); each stage's trials are planned to fit, and no "
           "trial starts that the budget left cannot pay for"),
    a("--preset", choices=["paper", "quick", "cpu", "smoke"], default="paper",
      help="paper: the full schedule; quick: 2 values per parameter, 2 epochs, 2000 rows; cpu: a search that learns "
           "on a 2-core CPU (SST-2, 3-layer MiniLM student: 1 epoch of 1600 rows, lr 2e-4; see the README); "
           "smoke: a complete search in minutes that learns nothing (1 epoch, 64 rows; for tests)")
    a("--stages", default=None, help="comma-separated stage names to run (see --dry-run); default all")
    a("--max-seq-len", type=int, default=128, help="tokens per sequence (paper: 128)")
    a("--teacher-epochs", type=int, default=None, help="teacher fine-tuning epochs (default: the paper's 3; 1 for the "
                                                       "cpu preset)")
    a("--teacher-lr", type=float, default=None,
      help="teacher fine-tuning learning rate (default: the paper's, 2e-5; 5e-5 for STS-B and WNLI; 1e-4 for the "
           "cpu preset)")
    a("--select-on", choices=["dev", "holdout"], default="dev",
      help="what trials are ranked on: dev (the paper's protocol, comparable with its tables) or a fixed, "
           "stratified holdout of training rows, never trained on, so the dev score reported for the winners is "
           "not the one the search maximised")
    a("--holdout-rows", type=int, default=None,
      help="--select-on holdout: its size (default: 10%% of the training rows, at most 1000)")
    a("--max-failures", type=int, default=1, help="retries of a crashed trial from its last checkpoint")
    a("--log-checkpoints", choices=["best", "all"], default="best",
      help="best: each stage's best student is logged as an MLflow model; all: also every trial's best checkpoint")
    a("--resume", action="store_true", help="continue the search stored in the storage folder")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("--verbose", action="store_true",
                      help="also show Ray's and MLflow's own console output (experiment tables, INFO lines, trial "
                           "tracebacks)")
    talk.add_argument("--quiet", action="store_true",
                      help="no progress, stage or teacher lines on stderr: only the results on stdout and errors")
    a("--address", default=None, help="address of an existing Ray cluster (default: start one locally)")
    a("--set", dest="sets", action="append", metavar="KEY=VALUE",
      help="a DistillConfig value for every trial, repeatable (e.g. --set lr=3e-5 --set batch_size=16); a stage's "
           "grid and earlier stages' winners override it for the parameters they set")
    a("--grid", dest="grids", action="append", metavar="KEY=V1,V2,...",
      help="replace the values of a searched parameter in every stage that searches it, repeatable (e.g. --grid "
           "lr=1e-4,2e-4 for a small backbone); refine and mix rules stay")
    a("--cache-budget-gb", type=float, default=None,
      help="disk allowed for the cached teacher features (default: at most half the storage folder's free disk); "
           "0: no feature cache, the teacher runs live")
    a("--compile", action="store_true", help="torch.compile the students (CUDA; pays off on long runs)")
    a("--compare", default=None, metavar="METHODS",
      help="e.g. vkd,pkd,rkd,minilm,fsd: each method's best configuration (searched first if needed) re-run "
           "with --seeds seeds; prints the paper's Table 2/3 for this task with the p-value of FSD")
    a("--ablation", action="store_true",
      help="--compare with fsd: also the paper's Table 4, FSD's winner re-run without LG, IG, IL and G (4 x --seeds "
           "runs)")
    a("--batch-sizes", default=None, metavar="SIZES",
      help="--compare with fsd: also the paper's Table 5, FSD w/o G and FSD w/o IL re-run at these mini-batch "
           "sizes, e.g. 8,16,32,64 (2 x sizes x --seeds runs)")
    a("--report", action="store_true",
      help="rebuild the HTML report of this task's searches from the storage folder and MLflow; trains nothing")
    a("--dry-run", action="store_true",
      help="print every stage, its grid, trials and the training samples it will process; run nothing")
    a("--estimate", action="store_true",
      help="--dry-run, plus a few timed steps of the student and the teacher here, and the hours it would take")
    return p


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


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
            check_modes(args, parser)  # flags that contradict each other, before any mode runs
            if args.dry_run or args.estimate:
                dry_run(args)
                return
            search = validate(args)  # every check, before anything is written
        except UsageError as e:
            fail(str(e))
        run(search)
    finally:  # for a caller that goes on (a test calling main())
        signal.signal(signal.SIGINT, _SIGINT_BEFORE)


def dry_run(args: argparse.Namespace) -> None:
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

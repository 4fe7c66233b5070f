"""Every flag of tune_main.py, declared once: a typed field of `Options` whose metadata holds its help, its
choices, its least value and its row of docs/search.md's table. argparse's parser, the parsed record the checks
read, the bounds they hold numbers to, the flags given on a command line and the page's table are derived from
these fields (tests/tuning/command/test_options.py holds the page and SearchSpec's defaults to them).

Imports nothing heavy: `--help` and argparse's refusals answer at once, before torch, Ray or MLflow load.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, NoReturn

from fsd.tasks import TASKS
from fsd.tuning.plan.spec import LOG_CHECKPOINTS, SELECT_ON, STRATEGIES
from search_spaces.base import PRESETS


def flag(default: Any = MISSING, *, help: str, doc: str, shown: str | None = None, choices: tuple | None = None,
         least: int | None = None, metavar: str | None = None, name: str | None = None,
         exclusive: str | None = None) -> Any:
    """One flag: `Options`'s field of that name (`--` and the name with dashes, or `name`).

    Args:
        default: its value when not given; none: the flag is required.
        help: what `--help` says of it (argparse's %-formatting: a literal % is %%).
        doc: what its row of docs/search.md's table says of it.
        shown: the default as that row says it (without it: the default itself; off for a switch).
        choices: the only values it takes.
        least: the smallest number it takes (checks.check_search_numbers refuses less).
        metavar: the name of its value in `--help` and in the table (a field typed tuple is a repeatable flag).
        name: the flag where it is not the field's name with dashes (`--set` gives `sets`).
        exclusive: flags of the same key are not given together.
    """
    return field(default=default, metadata={"help": help, "doc": doc, "shown": shown, "choices": choices,
                                            "least": least, "metavar": metavar, "name": name,
                                            "exclusive": exclusive})


@dataclass(frozen=True)
class Options:
    """A command line of tune_main.py as parsed: one value per flag, not yet checked (checks.py checks them)."""

    task: str = flag(help=f"GLUE task: {', '.join(list(TASKS)[:-1])} or {list(TASKS)[-1]}",
                     doc=f"GLUE task: {', '.join(TASKS)}")
    method: str = flag("fsd", help="what to search: fsd (the paper's 6 steps, 10 stages in --dry-run), vkd, pkd, rkd "
                                   "or minilm", doc="the schedule: fsd, vkd, pkd, rkd, minilm")
    data_dir: str | None = flag(None, help="local GLUE folder (GLUE download layout); default: nyu-mll/glue from the "
                                           "hub", shown="the hub's `nyu-mll/glue`", doc="a local GLUE download")
    teacher: str = flag("bert-base-uncased",
                        help="pre-trained backbone to fine-tune as teacher (hub id, folder, or 'packaged-minilm' "
                             "offline), or a teacher already fine-tuned on the task",
                        doc="a backbone to fine-tune (hub id, folder, `packaged-minilm`), or a teacher fine-tuned on "
                            "the task")
    student_init: str | None = flag(None, help="pre-trained backbone of the student (default: the teacher's backbone)",
                                    shown="the teacher's backbone", doc="the student's pre-trained backbone")
    student_layers: int = flag(6, help="layers of the student: the first k of the backbone (paper: 6)",
                               doc="the student: the first k layers of its backbone")
    storage: str = flag("./fsd_runs",
                        help="folder for teachers, caches and searches (one sub-folder per task and method)",
                        doc="the storage folder ([What a search keeps](#what-a-search-keeps))")
    mlflow_uri: str | None = flag(None, help="MLflow tracking URI (default: sqlite:///<storage>/mlflow.db)",
                                  shown="sqlite:///<storage>/mlflow.db", doc="an MLflow store or server")
    gpus_per_trial: float | None = flag(None, help="GPU share of one trial; 0.25 packs four trials per GPU (default: "
                                                   "0.25 with CUDA, else 0)", shown="0.25 with CUDA, else 0",
                                        doc="a trial's GPU share: 1/n packs n trials on a GPU")
    cpus_per_trial: float = flag(1.0, help="CPU cores reserved per trial", doc="cores reserved per trial")
    max_concurrent: int = flag(0, least=0, help="at most this many trials at once (0: as resources allow)",
                               shown="as resources allow", doc="trials at once")
    seeds: int = flag(1, least=1, help="run every grid point with this many seeds and rank by their mean",
                      doc="seeds per grid point (their mean ranks it)")
    seed: int = flag(42, help="first seed", doc="the first seed")
    confirm_top: int | None = flag(
        None, least=0, metavar="K",
        help="before a stage names its winner, train its K leading points on --confirm-seeds more seeds and compare "
             "them paired by seed (0: name the best single run, as the paper; default: the preset's, 3 for paper, 2 "
             "for cpu, 0 for smoke)",
        shown="the preset's (paper 3, cpu 2, smoke 0)",
        doc="a stage's K leading points trained on `--confirm-seeds` more seeds before it names its winner "
            "([Seeds and ties](#seeds-and-ties))")
    fresh_seeds: int = flag(
        0, least=0, metavar="N",
        help="after the search, re-train its best student's configuration, VKD's winner and the untuned start points "
             "(fsd and fsdil with default weights) on N seeds no search used, and test the search's best against "
             "them (0: not done)",
        doc="after the search: its best, VKD's winner and the untuned start points on N fresh seeds, tested "
            "([Seeds and ties](#seeds-and-ties))")
    confirm_seeds: int | None = flag(
        None, least=0, metavar="R",
        help="seeds each of a stage's --confirm-top leading points is trained on more (default: the preset's, 2 for "
             "paper, 1 for cpu, 0 for smoke)",
        shown="the preset's (paper 2, cpu 1, smoke 0)", doc="the more seeds each of `--confirm-top`'s points gets")
    strategy: str = flag(
        "grid", choices=STRATEGIES, doc="grid, halving, optuna ([Strategies](#strategies-grid-halving-optuna))",
        help="grid: every grid point to the full budget (the paper); halving: every point, each stopped at a rung "
             "(ASHA on training samples) when below the best third there; optuna: TPE samples of the large grids, "
             "halved the same way")
    reduction_factor: float | None = flag(
        None, help="halving/optuna: about 1 in this many trials goes on at each rung (default 3, measured)",
        shown="3", doc="halving's rungs: about 1 in this many trials goes on at each")
    first_rung: float | None = flag(
        None, help="halving/optuna: the first rung as a share of a trial's budget (default 3/4, where the score ranks)",
        shown="3/4", doc="halving's first rung, as a share of a trial's budget")
    num_samples: int | None = flag(
        None, least=1, help="optuna: trials per stage with a large grid (default: a third of the grid, measured)",
        shown="a third of the grid", doc="optuna: TPE samples of a large stage")
    budget: str | None = flag(
        None, metavar="AMOUNT",
        help="halving/optuna: what the search may spend, as training samples (2e6), a share of the grid's samples "
             "(20%%) or hours on this machine (8h); each stage's trials are planned to fit, and no trial starts that "
             "the budget left cannot pay for",
        shown="none", doc="what the search may spend ([--budget](#--budget-what-you-can-spend))")
    preset: str = flag(
        "paper", choices=PRESETS,
        help="paper: the full schedule; quick: 2 values per parameter, 2 epochs, 2000 rows; cpu: a search that learns "
             "on a 2-core CPU (SST-2, 3-layer MiniLM student: 1 epoch of 1600 rows, lr 2e-4; see the README); "
             "smoke: a complete search in minutes that learns nothing (1 epoch, 64 rows; for tests)",
        doc="paper, quick, cpu, smoke ([Presets](#presets))")
    stages: str | None = flag(None, help="comma-separated stage names to run (see --dry-run); default all",
                              shown="all", doc="a comma-separated subset of the schedule's stages")
    max_seq_len: int = flag(128, help="tokens per sequence (paper: 128)", doc="tokens per sequence")
    teacher_epochs: int | None = flag(
        None, least=1, help="teacher fine-tuning epochs (default: the paper's 3; 1 for the cpu preset)",
        shown="the paper's 3, the preset's", doc="the teacher's fine-tuning epochs")
    teacher_lr: float | None = flag(
        None, help="teacher fine-tuning learning rate (default: the paper's, 2e-5; 5e-5 for STS-B and WNLI; 1e-4 for "
                   "the cpu preset)",
        shown="the paper's (2e-5, 5e-5 for STS-B and WNLI), the preset's",
        doc="the teacher's fine-tuning learning rate")
    select_on: str = flag("dev", choices=SELECT_ON, help="what trials are ranked on: dev (the paper's protocol, "
                          "comparable with its tables) or a fixed, stratified holdout of training rows, never trained "
                          "on, so the dev score reported for the winners is not the one the search maximised",
                          doc="what trials are ranked on: dev, or a holdout of training rows ([Held-out "
                              "selection](#held-out-selection))")
    holdout_rows: int | None = flag(
        None, help="--select-on holdout: its size (default: 10%% of the training rows, at most 1000)",
        shown="10% of the training rows, at most 1,000", doc="`--select-on holdout`: its size")
    max_failures: int = flag(1, least=0, help="retries of a crashed trial from its last checkpoint",
                             doc="retries of a crashed trial from its last checkpoint")
    log_checkpoints: str = flag(
        "best", choices=LOG_CHECKPOINTS,
        help="best: each stage's best student is logged as an MLflow model; all: also every trial's best checkpoint",
        doc="best: each stage's student registered; all: also every trial's best checkpoint kept and uploaded")
    resume: bool = flag(False, help="continue the search stored in the storage folder",
                        doc="continue the search in the storage folder ([Resume](#resume))")
    verbose: bool = flag(False, exclusive="talk",
                         help="also show Ray's and MLflow's own console output (experiment tables, INFO lines, trial "
                              "tracebacks)", doc="Ray's and MLflow's own console output")
    quiet: bool = flag(False, exclusive="talk",
                       help="no progress, stage or teacher lines on stderr: only the results on stdout and errors",
                       doc="no narrative on stderr (progress, stage and teacher lines): the results on stdout and "
                           "errors only; not with `--verbose`")
    address: str | None = flag(
        None, help="address of an existing Ray cluster (default: start one locally)", shown="a local Ray",
        doc="an existing Ray cluster (the storage folder must reach every node; `RAY_AUTH_MODE=token` for a "
            "token-authenticated `ray start` cluster)")
    sets: tuple[str, ...] = flag(
        (), name="--set", metavar="KEY=VALUE",
        help="a DistillConfig value for every trial, repeatable (e.g. --set lr=3e-5 --set batch_size=16); a stage's "
             "grid and earlier stages' winners override it for the parameters they set",
        doc="a `DistillConfig` value for every trial (repeatable)")
    grids: tuple[str, ...] = flag(
        (), name="--grid", metavar="KEY=V1,V2,...",
        help="replace the values of a searched parameter in every stage that searches it, repeatable (e.g. --grid "
             "lr=1e-4,2e-4 for a small backbone); refine and mix rules stay",
        doc="a searched parameter's values in every stage that searches it (repeatable)")
    cache_budget_gb: float | None = flag(
        None, help="disk allowed for the cached teacher features (default: at most half the storage folder's free "
                   "disk); 0: no feature cache, the teacher runs live",
        shown="half the free disk",
        doc="disk for cached teacher features (the run says their size and the decision); 0: the teacher runs live")
    compile: bool = flag(False, help="torch.compile the students (CUDA; pays off on long runs)",
                         doc="`torch.compile` the students (CUDA)")
    compare: str | None = flag(
        None, metavar="METHODS",
        help="e.g. vkd,pkd,rkd,minilm,fsd: each method's best configuration (searched first if needed) re-run with "
             "--seeds seeds; prints the paper's Table 2/3 for this task with the p-value of FSD",
        shown="none", doc="each method's best configuration re-run with `--seeds` seeds, Tables 2/3, 6-8")
    ablation: bool = flag(
        False, help="--compare with fsd: also the paper's Table 4, FSD's winner re-run without LG, IG, IL and G (4 x "
                    "--seeds runs)", doc="with `--compare ...,fsd`: Table 4")
    batch_sizes: str | None = flag(
        None, metavar="SIZES",
        help="--compare with fsd: also the paper's Table 5, FSD w/o G and FSD w/o IL re-run at these mini-batch "
             "sizes, e.g. 8,16,32,64 (2 x sizes x --seeds runs)", shown="none", doc="with `--compare ...,fsd`: Table 5")
    report: bool = flag(False, help="rebuild the HTML report of this task's searches from the storage folder and "
                                    "MLflow; trains nothing",
                        doc="rebuild `<storage>/<task>-report.html`; trains nothing")
    dry_run: bool = flag(False, help="print every stage, its grid, trials and the training samples it will process; "
                                     "run nothing", doc="every stage, its grid, cost, budget plan and disk peak; runs "
                                                        "nothing")
    estimate: bool = flag(False, help="--dry-run, plus a few timed steps of the student and the teacher here, and the "
                                      "hours it would take", doc="`--dry-run` plus steps timed here, in hours")


DECLARED: tuple[Field, ...] = fields(Options)


def flag_name(f: Field) -> str:
    """The flag a field of `Options` is given by: `--max-concurrent` for max_concurrent."""
    return f.metadata["name"] or "--" + f.name.replace("_", "-")


FLAGS: dict[str, Field] = {flag_name(f): f for f in DECLARED}  # --max-concurrent -> its field


def given(options: Options) -> list[str]:
    """The flags of `options` whose value is not their default, in the order of `--help`."""
    return [flag_name(f) for f in DECLARED if f.default is MISSING or getattr(options, f.name) != f.default]


def fail(message: str) -> NoReturn:
    """The command's refusal: one `error:` line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    """`Options`' parser. argparse's own errors as every other error of the command: one `error:` line, exit code
    2 (not the usage block, which buried the line under twenty more)."""

    def __init__(self, command: str, description: str | None = None):
        super().__init__(prog=command.removeprefix("python "), description=description,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.command = command
        hints = typing.get_type_hints(Options)
        groups: dict[str, Any] = {}
        for f in DECLARED:
            exclusive = f.metadata["exclusive"]
            if exclusive and exclusive not in groups:
                groups[exclusive] = self.add_mutually_exclusive_group()
            (groups[exclusive] if exclusive else self).add_argument(flag_name(f), **_argument(f, hints[f.name]))

    def error(self, message: str) -> NoReturn:
        fail(f"{message} ({self.command} --help lists the flags)")

    def parse_args(self, args=None, namespace=None) -> Options:  # type: ignore[override]
        """The command line `args` (default: sys.argv's) as `Options`; a flag argparse refuses exits (`error`)."""
        values = vars(super().parse_args(args, namespace))
        return Options(**{f.name: tuple(values[f.name] or ()) if isinstance(f.default, tuple) else values[f.name]
                          for f in DECLARED})


def _argument(f: Field, hint: Any) -> dict[str, Any]:
    """add_argument's keywords for the field `f` of type `hint`."""
    meta = f.metadata
    out: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
    if hint is bool:
        return {**out, "action": "store_true"}
    if meta["metavar"]:
        out["metavar"] = meta["metavar"]
    if typing.get_origin(hint) is tuple:  # repeatable: each value given, in order
        return {**out, "action": "append"}
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    if kinds[0] is not str:
        out["type"] = kinds[0]
    if meta["choices"]:
        out["choices"] = list(meta["choices"])
    if f.default is MISSING:
        return {**out, "required": True}
    return {**out, "default": f.default}


def table() -> str:
    """docs/search.md's table of every flag: the flag (with its value's name), its default, what it does."""
    rows = ["| flag | default | what |", "|---|---|---|"]
    for f in DECLARED:
        meta = f.metadata
        name = flag_name(f) + (f" {meta['metavar']}" if meta["metavar"] else "")
        rows.append(f"| `{name}` | {shown(f)} | {meta['doc']} |")
    return "\n".join(rows)


def shown(f: Field) -> str:
    """The default of the flag `f` as the table says it."""
    if f.metadata["shown"] is not None:
        return f.metadata["shown"]
    if f.default is MISSING:
        return "(required)"
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if f.default in (None, ()):
        return "none"
    return f"{f.default:g}" if isinstance(f.default, float) else str(f.default)

"""Every check of a tune_main.py command line, run before anything is written: a bad value, path,
resource or unreachable service is one `UsageError` whose message names the flag, the problem and the fix.

Nothing here writes, and Ray is not imported: a bad command fails in seconds and leaves no trace.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsd.config import PAIRED, ConfigError, DistillConfig
from fsd.layout import LEDGER, Layout, root_entries
from fsd.tasks import TASKS, get_task
from fsd.tuning.command.flags import (
    UsageError,
    build_spec,
    check_batch_sizes,
    check_compare,
    check_names,
    parse_extra,
    parse_grids,
    parse_set,
)
from fsd.tuning.command.inputs import check_data, check_models
from fsd.tuning.command.options import DECLARED, Options, flag_name
from fsd.tuning.command.stored import check_stored
from fsd.tuning.command.writable import cannot_create, cannot_write, too_long
from fsd.tuning.plan.resume import Refused, check_resume
from fsd.tuning.plan.spec import (
    SearchSpec,
    method_spec,
)
from fsd.tuning.search import lock
from search_spaces import Schedule
from search_spaces.base import METHODS

TIMEOUT_S = 3.0  # for the MLflow server and the Ray cluster: a service slower than this to answer is down
# What fsd-tune writes at the top of a storage folder, besides one `<task>-<method>/` folder per search.
# What the layout writes: the shared folders and the MLflow store; per task, a search folder per method, the
# --compare folder, the --report page (and the figures folder an older report wrote beside it).
KNOWN_ENTRIES = root_entries(TASKS, METHODS) | {".DS_Store"}


@dataclass
class Search:
    """A checked command line: what to run."""

    spec: SearchSpec
    schedule: Schedule
    resume: bool
    compare: list[str] = field(default_factory=list)  # --compare: the methods
    ablation: bool = False  # --ablation: Table 4
    batch_sizes: tuple[int, ...] = ()  # --batch-sizes: Table 5
    report: bool = False


def validate(args: Options) -> Search:
    """Check every flag of `args` (tune_main.py's parser) and resolve them into a `Search`.

    The checks that need no heavy import come first (names, paths, the ledger, services), so most mistakes
    fail in a second; then the values, which load torch and transformers, and the data and models.

    Raises:
        UsageError: the first problem found.
    """
    schedule, stages = check_names(args)
    extra = parse_extra(args)
    check_search_numbers(args)
    methods, batch_sizes = check_compare(args), check_batch_sizes(args)
    storage = Path(args.storage).expanduser().resolve()
    check_storage(storage)
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder: point it at a GLUE download")
    if args.report:  # reads the storage folder and MLflow: no data, models or search folder needed
        spec = SearchSpec(task=schedule.task, method=args.method, storage=str(storage),
                          mlflow_uri=args.mlflow_uri or Layout(storage).mlflow_uri, teacher=args.teacher)
        if not storage.is_dir():
            raise UsageError(f"--report: {storage} does not exist: pass the --storage of your searches")
        check_mlflow(spec.mlflow_uri)
        check_stored(storage, spec.task, sorted(p for p in storage.glob(f"{spec.task}-*") if p.is_dir()),
                     spec.mlflow_uri, caches=False)
        return Search(spec, schedule, args.resume, report=True)
    spec = build_spec(args, schedule, stages, extra, storage)
    # What the command will read back, whole, before the first check that may start writing.
    searches = [Path(method_spec(spec, m).folder) for m in methods] + [Layout(storage).compare(spec.task)] \
        if methods else [Path(spec.folder)]
    check_stored(storage, spec.task, searches, spec.mlflow_uri)
    if methods:  # each method's search is reused (or run first): free, and made with these settings
        for method in methods:
            mspec = method_spec(spec, method)
            # Its seed count only ranked its grid points: any is fine for a winner to re-run with new seeds.
            check_search_folder(mspec, (Path(mspec.folder) / LEDGER).is_file(), flag="--compare", ignore=("seeds",))
    else:
        check_search_folder(spec, args.resume)
    check_mlflow(spec.mlflow_uri)
    check_address(spec.address)
    # The GPU share last of the quick checks: it imports torch to count the GPUs.
    spec = dataclasses.replace(spec, gpus_per_trial=check_gpus(args.gpus_per_trial, args.address))
    check_values(args, schedule, extra)
    from fsd.logs import quiet_libraries

    quiet_libraries()  # the load reports of datasets and transformers would spoil the one error line
    task = get_task(spec.task)
    check_data(task, spec.data_dir, schedule, stages, extra, spec.holdout_rows, spec.seed)
    check_models(task, spec.teacher, spec.student_init, spec.student_layers, spec.max_seq_len)
    return Search(spec, schedule, args.resume, compare=methods, ablation=args.ablation, batch_sizes=batch_sizes)


def dry_spec(args: Options) -> tuple[SearchSpec, Schedule]:
    """What --dry-run and --estimate need: names, values and paths checked, nothing written or contacted."""
    schedule = check_schedule(args)
    storage = Path(args.storage).expanduser().resolve()
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder: point it at a GLUE download")
    _, stages = check_names(args)
    extra = parse_extra(args)
    spec = build_spec(args, schedule, stages, extra, storage, check_gpus(args.gpus_per_trial, args.address))
    if args.compare:
        check_compare(args)
    from fsd.logs import quiet_libraries

    quiet_libraries()
    check_data(get_task(spec.task), spec.data_dir, schedule, stages, extra, spec.holdout_rows, spec.seed, hub=False)
    return spec, schedule


def check_schedule(args: Options) -> Schedule:
    """What --dry-run needs: the names and the values, no paths or services."""
    schedule, _ = check_names(args)
    check_search_numbers(args)
    check_values(args, schedule, parse_extra(args))
    return schedule


# ---------------------------------------------------------------------------------------------- values


def check_values(args: Options, schedule: Schedule, extra: dict[str, Any]) -> None:
    """Each DistillConfig value alone (so the error names its flag; a value valid only beside another, as
    `fsd.config.PAIRED` says, beside it), then all together, then each --grid value on top. A stage's grid and
    earlier winners come on top of these at run time; the schedule's own values are tested elsewhere."""
    base = {"task": schedule.task, "teacher": args.teacher, "method": schedule.stages[0].method}
    _check_config(base, {"student_layers": args.student_layers}, "--student-layers")
    _check_config(base, {"max_seq_len": args.max_seq_len}, "--max-seq-len")
    _check_config(base, {"cache_budget_gb": args.cache_budget_gb}, "--cache-budget-gb")
    for pair in args.sets or []:
        key, value = parse_set(pair)
        _check_config({**base, **PAIRED.get(key, {})}, {key: value}, f"--set {pair}")
    together = {"student_layers": args.student_layers, "max_seq_len": args.max_seq_len, **extra}
    _check_config(base, together, "--set")
    for key, values in parse_grids(args).items():
        for value in values:  # a grid point runs on top of every other value
            _check_config({**base, **together}, {key: value}, f"--grid {key}={value}")


def _check_config(base: dict[str, Any], values: dict[str, Any], flag: str) -> None:
    try:
        DistillConfig.from_dict({**base, **values})
    except ConfigError as e:
        raise UsageError(f"{flag}: {e}") from None


def check_search_numbers(args: Options) -> None:
    """The search's own numbers: seeds, samples, concurrency, retries, teacher epochs and lr, CPU share."""
    for f in DECLARED:  # the least value each flag declares
        value, least = getattr(args, f.name), f.metadata["least"]
        if least is not None and value is not None and value < least:
            raise UsageError(f"{flag_name(f)} {value}: use {least} or more")
    if args.reduction_factor is not None and not args.reduction_factor > 1:
        raise UsageError(f"--reduction-factor {args.reduction_factor:g}: use a factor above 1 (e.g. 3: a third of "
                         "the trials go on at each rung)")
    if args.first_rung is not None and not 0 < args.first_rung <= 1:
        raise UsageError(f"--first-rung {args.first_rung:g}: use a share of a trial's budget in (0, 1], e.g. 0.11")
    halving_flags = [f for f, v in (("--reduction-factor", args.reduction_factor), ("--first-rung", args.first_rung),
                                    ("--num-samples", args.num_samples)) if v is not None]
    if args.strategy == "grid" and halving_flags:
        raise UsageError(f"{halving_flags[0]} needs --strategy halving or optuna (the grid runs every trial whole)")
    if args.budget is not None:
        from fsd.tuning.plan.budget import parse

        try:
            parse(args.budget)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if args.strategy == "grid":
            raise UsageError("--budget plans halving's rungs and Optuna's samples: add --strategy optuna (or halving); "
                             "the grid runs every trial whole")
    if args.strategy == "halving" and args.num_samples is not None:
        raise UsageError("--num-samples needs --strategy optuna (halving starts every grid point)")
    if args.holdout_rows is not None and args.select_on != "holdout":
        raise UsageError("--holdout-rows needs --select-on holdout (trials are ranked on dev otherwise)")
    if args.holdout_rows is not None and args.holdout_rows < 1:
        raise UsageError(f"--holdout-rows {args.holdout_rows}: use 1 or more rows (e.g. 1000)")
    if args.teacher_lr is not None and not 0 < args.teacher_lr < 1:
        raise UsageError(f"--teacher-lr {args.teacher_lr:g}: use a learning rate between 0 and 1 (e.g. 5e-5)")
    if not args.cpus_per_trial > 0:
        raise UsageError(f"--cpus-per-trial {args.cpus_per_trial:g}: a trial needs a share of a core > 0 "
                         "(e.g. 0.5 or 1)")
    cores = os.cpu_count() or 1
    if args.address is None and args.cpus_per_trial > cores:
        # A local cluster never has more: such a trial would wait forever.
        raise UsageError(f"--cpus-per-trial {args.cpus_per_trial:g} but this machine has {cores} core(s): "
                         f"use at most {cores}")


def check_gpus(gpus: float | None, address: str | None) -> float:
    """The GPU share of a trial: 1/n of a GPU (n trials packed on one) or whole GPUs, no more than there
    are. On a cluster (--address) the GPUs are not visible here: only the shape of the share is checked.

    Returns:
        The share; the default is 0.25 with a GPU, else 0.
    """
    import torch

    visible = torch.cuda.device_count()
    if gpus is None:
        return 0.25 if visible else 0.0
    if not gpus >= 0:
        raise UsageError(f"--gpus-per-trial {gpus:g}: use 0 (CPU trials), 1/n of a GPU or whole GPUs")
    if gpus == 0:
        return 0.0
    if gpus < 1:
        if abs(round(1 / gpus) * gpus - 1) > 0.02:  # 0.33 packs three as 1/3 does; 0.3 idles a tenth of a GPU
            fit = int(1 / gpus)
            raise UsageError(f"--gpus-per-trial {gpus:g} does not divide a GPU ({fit} trial(s) per GPU leave "
                             f"{1 - fit * gpus:.2g} of it idle): use 1/n of a GPU (0.5, 0.25, 0.2, ...) or whole GPUs")
    elif gpus != int(gpus):
        raise UsageError(f"--gpus-per-trial {gpus:g}: above 1, a trial takes whole GPUs; use {int(gpus)} or "
                         f"{int(gpus) + 1}")
    if address is None and gpus > visible:
        have = f"only {visible} GPU(s) are visible" if visible else "no GPU is visible"
        raise UsageError(f"--gpus-per-trial {gpus:g} but {have}: use at most {visible} "
                         "(0 runs the trials on CPU)")
    return float(gpus)


# ---------------------------------------------------------------------------------------------- storage
def check_storage(storage: Path) -> None:
    """A folder that can be created or written, and that holds nothing but an earlier search's files:
    a mistyped --storage (the home folder, a project) is refused rather than filled with caches, and a path
    the system refuses (`/proc`, `/sys`, a read-only mount, no permission, a name too long) before any write."""
    reason = too_long(storage)
    try:
        exists = reason is None and storage.exists()
    except OSError as e:  # not searchable, a loop of links
        reason = f"{e.strerror or e}"
    if reason:
        raise UsageError(f"--storage {storage} cannot be used: {reason}; choose another path")
    if exists:
        if not storage.is_dir():
            raise UsageError(f"--storage {storage} is a file: choose a folder")
        blocker = cannot_write(storage)
        if blocker:
            raise UsageError(f"--storage {storage} cannot be written: {blocker}; choose a folder you may write "
                             "to, or fix its permissions")
        try:
            entries = sorted(os.listdir(storage))
        except OSError as e:
            raise UsageError(f"--storage {storage} cannot be listed ({e.strerror or e}): choose another "
                             "folder") from None
        if LEDGER in entries:
            raise UsageError(f"--storage {storage} is one search's folder, not a storage folder: pass its "
                             f"parent, {storage.parent}")
        foreign = [e for e in entries if e not in KNOWN_ENTRIES]
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise UsageError(f"--storage {storage} holds files fsd-tune did not write ({shown}): choose a new or "
                             "empty folder, or the storage folder of an earlier search")
        return
    blocker = cannot_create(storage)
    if blocker:
        raise UsageError(f"--storage {storage} cannot be created: {blocker}; choose another path")


def check_search_folder(spec: SearchSpec, resume: bool, flag: str = "--resume", ignore: tuple[str, ...] = ()) -> None:
    """No other search running there; a ledger to resume with --resume, none without, and a resumed search that
    agrees with the stored one (but for `ignore`). `flag` is what the errors blame: --resume, or --compare for a
    search it reuses. The search checks the ledger again under its lock (fsd/tuning/search/runner.run_locked)."""
    pid = lock.holder(spec.folder)
    if pid is not None:
        raise UsageError(str(lock.Busy(spec.folder, pid)))
    try:
        check_resume(spec, resume, flag, ignore)
    except Refused as e:
        raise UsageError(str(e)) from None


# ---------------------------------------------------------------------------------------------- services
def check_mlflow(uri: str) -> None:
    """An http(s) tracking server must answer; a sqlite file must be creatable. Other stores are MLflow's."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_S).close()
        except urllib.error.HTTPError:
            return  # a server answered, even if not with 200
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)  # URLError wraps the socket's error
            reason = getattr(reason, "strerror", None) or reason
            raise UsageError(f"--mlflow-uri {uri} is unreachable ({reason}): start the server, fix the URI, or "
                             "leave --mlflow-uri out to log to <storage>/mlflow.db") from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):]).expanduser().absolute()
        if too_long(path) is None and path.exists():
            if not path.is_file() or not os.access(path, os.W_OK):
                raise UsageError(f"--mlflow-uri {uri}: {path} is not a writable file; choose another path")
            return
        blocker = cannot_create(path)
        if blocker:
            raise UsageError(f"--mlflow-uri {uri}: {path} cannot be created ({blocker}); choose another path")


def check_address(address: str | None) -> None:
    """An existing Ray cluster (`host:port` or `ray://host:port`) must accept a connection."""
    if address is None or address in ("auto", "local"):  # Ray's own keywords: it finds or starts one
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--address {address} is not host:port: write e.g. --address 10.0.0.5:6379 or "
                         "ray://10.0.0.5:10001")
    try:
        socket.create_connection((host, int(port)), timeout=TIMEOUT_S).close()
    except OSError as e:
        raise UsageError(f"--address {address} is unreachable ({e.strerror or e}): start the cluster "
                         f"(ray start --head --port {port} on {host}) or leave --address out to start a local one"
                         ) from None

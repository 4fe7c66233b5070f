"""`--compare`'s runs: each method's best configuration (its search run first, under that search's own lock,
when it has not finished) re-run on the comparison's seeds, and on request FSD's winner re-run without some of
its structures (Table 4) and at other mini-batch sizes (Table 5); all under the comparison folder's lock, in
the comparison's MLflow run. What they measured is read by fsd/tuning/results/compare.py, which runs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsd.layout import OUTBOX, Layout
from fsd.logs import console
from fsd.tuning.plan.ledger import Ledger
from fsd.tuning.plan.spec import SearchSpec, method_spec
from fsd.tuning.search import lock
from fsd.tuning.search.runner import run_search
from fsd.tuning.search.seed_runs import SeedRun, seed_runs
from fsd.tuning.search.services import start_services
from fsd.tuning.tracking import records
from fsd.tuning.tracking.outbox import Outbox
from search_spaces import get_schedule

# [paper] Table 4's rows: FSD without the named structures, and the method that is (I: intra-feature,
# L: local inter-feature, G: global inter-feature).
ABLATIONS = {"fsd w/o LG": "fsdi", "fsd w/o IG": "fsdl", "fsd w/o IL": "fsdg", "fsd w/o G": "fsdil"}
# [paper, labels inferred from its text] Table 5: the memory alone against the structures without it.
STABILITY = {"fsd w/o G (fsdil, no memory)": "fsdil", "fsd w/o IL (fsdg, the memory alone)": "fsdg"}


@dataclass
class Comparison:
    """What a comparison ran, as its tables read it, and the MLflow run they are logged in."""

    folder: Path  # `<storage>/<task>-compare`: its Ray experiments, tables and ledger
    methods: list[str]
    configs: dict[str, tuple[dict[str, Any], str]]  # method -> its winner's config and the teacher it used
    runs: dict[str, list[SeedRun]]  # method -> its winner's run on each seed
    ablations: dict[str, list[SeedRun]]  # Table 4: ABLATIONS label -> FSD's variant on each seed (none: not asked)
    by_size: dict[str, dict[int, list[SeedRun]]]  # Table 5: STABILITY label -> batch size -> runs (none: not asked)
    run_id: str  # the comparison's MLflow run
    outbox: Outbox  # what sends its records


def best_config(spec: SearchSpec, method: str) -> tuple[dict[str, Any], str]:
    """The winner of `method`'s last stage (searching first when needed) and the teacher it used.

    Raises:
        lock.Busy: another process runs that search.
    """
    mspec = method_spec(spec, method)
    schedule = get_schedule(method, spec.task, spec.preset, spec.grids)
    last = [s for s in schedule.stages if not s.prepare][-1].name
    with lock.held(mspec.folder):  # the same lock a plain search of that method takes
        ledger = Ledger(mspec.folder)
        if not ledger.done(last):
            console.info(f"compare: searching {method} first ({mspec.folder})")
            ledger = run_search(mspec, schedule).ledger
    return dict(ledger.records()[last]["winner"]), ledger.data["teacher"]


@contextmanager
def run_comparison(spec: SearchSpec, methods: list[str], seeds: int, ablation: bool = False,
                   batch_sizes: tuple[int, ...] = ()) -> Iterator[Comparison]:
    """Search (when needed) and re-run each method with `seeds` seeds (with `ablation`, FSD's winner without
    each part; with `batch_sizes`, two of its variants at each size: both only when FSD is compared), and give
    what ran to the block. The comparison folder's lock is held until the block ends; then the comparison's
    MLflow run is closed (the block logs its tables there first). A block that raises leaves the run open, as
    a comparison interrupted before its tables.

    Raises:
        lock.Busy: another process runs this comparison, or one of the searches it reuses.
    """
    folder = Layout(spec.storage).compare(spec.task)
    with lock.held(folder):
        configs = {m: best_config(spec, m) for m in methods}
        # Searches already done start nothing: the seed runs need Ray, as quiet as a search's, all the same.
        start_services(spec, str(folder))
        outbox = Outbox(spec.mlflow_uri, folder / OUTBOX, records.OPS)
        outbox.flush()
        exp_id = records.experiment_id(spec.mlflow_uri, spec.task)
        ledger = Ledger(folder)
        run_id = outbox.do("open_run", exp_id, ledger.data.get("run_id"), "compare", None,
                           {"task": spec.task, "methods": ",".join(methods), "seeds": str(seeds)})
        ledger.data["run_id"] = run_id
        ledger.save()
        seed_list = [spec.seed + i for i in range(seeds)]

        def runs_of(label: str, config: dict[str, Any]) -> list[SeedRun]:
            return seed_runs(spec, str(folder), label, config, seed_list, outbox, run_id, exp_id)

        runs = {m: runs_of(m, cfg) for m, (cfg, _) in configs.items()}
        ablations: dict[str, list[SeedRun]] = {}
        by_size: dict[str, dict[int, list[SeedRun]]] = {}
        fsd = configs["fsd"][0] if "fsd" in configs else None
        if fsd and ablation:  # Table 4: FSD's winner without each part, on the same seeds
            ablations = {label: runs_of(f"ablation-{method}", {**fsd, "method": method})
                         for label, method in ABLATIONS.items()}
        if fsd and batch_sizes:  # Table 5: two of its variants over batch sizes
            by_size = {label: {b: runs_of(f"batch{b}-{method}", {**fsd, "method": method, "batch_size": b})
                               for b in batch_sizes} for label, method in STABILITY.items()}
        yield Comparison(folder, methods, configs, runs, ablations, by_size, run_id, outbox)
        outbox.do("close_run", run_id, "FINISHED")
        outbox.flush()

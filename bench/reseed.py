"""One configuration re-trained on the fresh seeds of a finished search: a student another search handed back
(the recorded single-seed grid's final, say), to set beside that search's `--fresh-seeds` finals on the same
seeds, teacher, data and budget (issue 34, item 8). The configuration is the search's untuned start point of
`--as` (its shared values: task, data, teacher, student, budget; every loss weight at its default; the
search's epochs and learning rate where it had one value, `fsd.tuning.search.fresh.untuned`) with the `--set`
values laid over it.

    python bench/reseed.py <storage> --task sst2 --as fsdil --label grid-final --seeds 5 \\
        --set alpha=0.7 --set temperature=10 --set lr=2e-4 --set beta=0.1 --out <folder>/grid-final.json

Logged to the storage's MLflow store (stage `reseed`); run it from a clone at a fixed commit, in the background.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from hold_rate import open_search  # noqa: E402

from fsd.tuning.plan.ranking import METRIC  # noqa: E402
from fsd.tuning.search.fresh import fresh_seed_list, untuned  # noqa: E402
from search_spaces import get_schedule  # noqa: E402


def value(text: str):
    """A --set value as the grids write them: a number where it reads as one."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("storage")
    a.add_argument("--task", required=True)
    a.add_argument("--method", default="fsd", help="the search's method (its folder)")
    a.add_argument("--as", dest="start", required=True, help="the untuned start point to begin from (its method)")
    a.add_argument("--label", required=True)
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument("--seeds", type=int, default=5)
    a.add_argument("--out", required=True)
    args = a.parse_args(argv)
    from fsd.tuning.search.seed_runs import seed_runs

    spec, ledger, folder, outbox, run_id, exp_id = open_search(args.storage, args.task, args.method, "reseed")
    best = (ledger.data.get("best") or {}).get("winner")
    if best is None:
        sys.exit("error: the search has no best student yet to take its shared values from; finish it first")
    search = ledger.data["search"]  # the schedule as the search built it: its preset and --grid values
    schedule = get_schedule(args.method, args.task, search["preset"],
                            {k: tuple(v) for k, v in (search.get("grids") or {}).items()})
    start = untuned(best, args.start, schedule)
    config = {**start, **{k: value(v) for k, v in (s.split("=", 1) for s in args.set)}}
    seeds = fresh_seed_list(args.seeds)
    done = seed_runs(spec, folder, args.label, config, seeds, outbox, run_id, exp_id, "reseed")
    outbox.do("close_run", run_id, "FINISHED")
    outbox.flush()
    scores = {str(r.seed): r.dev[METRIC] for r in done if METRIC in r.dev}
    said = {"label": args.label, "config": config, "seeds": seeds, "scores": scores,
            "mean": statistics.fmean(scores.values()), "sd": statistics.stdev(scores.values())}
    Path(args.out).write_text(json.dumps(said, indent=2, default=str))
    print(json.dumps({k: said[k] for k in ("label", "mean", "sd")}))


if __name__ == "__main__":
    main()

"""Do a search's stage winners hold on fresh seeds? Each stage that trained its own winner and named a
runner-up (a search run with --confirm-top/--confirm-seeds, or any search of this version: the ledger keeps
both in the stage's `evidence`) has both re-trained on seeds no search used; a stage's winner *holds* when
its fresh-seed mean beats the runner-up's. The hold rate is over the stages the search declared a winner
(not tied); the tied ones are listed too (issue 34, item 8).

    python bench/hold_rate.py <storage> --task sst2 --method fsd --seeds 5 --out <folder>/hold.json [--stages fsdl]

It starts a local Ray and logs the runs to the storage's MLflow store (stage `hold-rate`); run it from a clone
at a fixed commit, in the background, one CPU-heavy job at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsd.tuning.plan.evidence import paired  # noqa: E402
from fsd.tuning.plan.ledger import Ledger  # noqa: E402
from fsd.tuning.plan.ranking import METRIC  # noqa: E402
from fsd.tuning.plan.spec import SearchSpec  # noqa: E402
from fsd.tuning.search.fresh import fresh_seed_list  # noqa: E402


def said_tied(evidence: dict) -> bool:
    """Whether a stage's evidence says tied: a candidate tied with the winner, or none it could test."""
    return bool(evidence.get("tied")) or evidence.get("untested") == evidence.get("candidates", 0) - 1


def contests(ledger: Ledger) -> dict[str, dict]:
    """stage -> its winner's and runner-up's configurations and whether the search declared it tied, for the
    stages that trained their own winner and had a runner-up. The evidence keeps a runner-up's values in the
    stage's terms (its grid's keys, or a carried student's whole configuration): laid over the winner's
    configuration, they give the runner-up's own (the stage's other values are the winner's)."""
    out = {}
    for name, record in ledger.records().items():
        found = record.get("evidence") or {}
        if record.get("status") != "done" or record.get("carried_from") or "runner_up" not in found:
            continue
        out[name] = {"winner": record["winner"], "runner_up": {**record["winner"], **found["runner_up"]["values"]},
                     "tied": said_tied(found)}
    return out


def hold_rate(results: dict[str, dict]) -> dict:
    """The table's rows and the rate: of the declared (not tied) stages, those whose winner's fresh mean is
    higher than its runner-up's."""
    rows, declared, held = [], 0, 0
    for stage, r in results.items():
        w, u = r["winner_scores"], r["runner_up_scores"]
        p = paired({int(k): v for k, v in w.items()}, {int(k): v for k, v in u.items()})
        holds = statistics.fmean(w.values()) > statistics.fmean(u.values())
        declared += not r["tied"]
        held += holds and not r["tied"]
        rows.append({"stage": stage, "declared": "tied" if r["tied"] else "winner", "holds": holds,
                     "winner": statistics.fmean(w.values()), "runner_up": statistics.fmean(u.values()),
                     "diff": None if p is None else p.diff, "lo": None if p is None else p.lo,
                     "hi": None if p is None else p.hi})
    return {"rows": rows, "declared": declared, "held": held, "rate": held / declared if declared else None}


def open_search(storage: str, task: str, method: str, label: str):
    """A finished search's spec (its teacher from the ledger, two trials at a time), its ledger, and the services
    and MLflow run that runs under it log to (stage `label`, nested under the search's run, in `<search>/label`):
    (spec, ledger, folder, outbox, run id, experiment id)."""
    from fsd.tuning.search.services import start_services
    from fsd.tuning.tracking import records
    from fsd.tuning.tracking.outbox import Outbox

    storage = str(Path(storage).resolve())
    spec = SearchSpec(task=task, method=method, storage=storage, mlflow_uri=f"sqlite:///{storage}/mlflow.db",
                      teacher="")
    ledger = Ledger(spec.folder)
    spec = replace(spec, teacher=ledger.data["teacher"], max_concurrent=2)
    folder = os.path.join(spec.folder, label)
    start_services(spec, folder)
    outbox = Outbox(spec.mlflow_uri, os.path.join(folder, "mlflow_outbox.json"), records.OPS)
    exp_id = records.experiment_id(spec.mlflow_uri, spec.task)
    run_id = outbox.do("open_run", exp_id, None, label, ledger.data.get("search_run_id"), {"task": task})
    return spec, ledger, folder, outbox, run_id, exp_id


def main(argv: list[str] | None = None) -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("storage")
    a.add_argument("--task", required=True)
    a.add_argument("--method", default="fsd")
    a.add_argument("--seeds", type=int, default=5)
    a.add_argument("--out", required=True)
    a.add_argument("--stages", type=lambda v: v.split(","), default=None,
                   help="only these stages (comma-separated), e.g. the declared ones when time is short")
    args = a.parse_args(argv)
    from fsd.tuning.search.seed_runs import seed_runs

    spec, ledger, folder, outbox, run_id, exp_id = open_search(args.storage, args.task, args.method, "hold-rate")
    seeds = fresh_seed_list(args.seeds)
    results = {}
    for stage, c in contests(ledger).items():
        if args.stages is not None and stage not in args.stages:
            continue
        scores = {}
        for role in ("winner", "runner_up"):
            runs = seed_runs(spec, folder, f"{stage}-{role}", c[role], seeds, outbox, run_id, exp_id, "hold-rate")
            scores[role] = {str(r.seed): r.dev[METRIC] for r in runs if METRIC in r.dev}
        results[stage] = {"tied": c["tied"], "winner_scores": scores["winner"], "runner_up_scores": scores["runner_up"]}
    outbox.do("close_run", run_id, "FINISHED")
    outbox.flush()
    summary = {"seeds": seeds, "stages": results, **hold_rate(results)}
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("declared", "held", "rate")}))


if __name__ == "__main__":
    main()

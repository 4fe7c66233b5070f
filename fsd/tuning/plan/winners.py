"""Which student a stage hands on, and which the search hands back: never less than was found.

A stage's winner is the best, on the ranking split, of its own trials and of the earlier winners carried
into it: those its grid would have trained again (`fsd.tuning.plan.folding`) and those its schedule names as
competitors (`Stage.carry`: a refine stage's coarse winner, the best FSD-family student before FSD's last
stage). The search's best student is the best of every stage it ran, named with the stage that trained it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fsd.tuning.plan import evidence
from fsd.tuning.plan.folding import Folded
from fsd.tuning.plan.ledger import StageRecord
from search_spaces import Schedule, Stage
from search_spaces.joint import expand


@dataclass(frozen=True)
class Candidate:
    """A student competing for a stage: its configuration (in this stage's terms), score and checkpoint, and
    the stage that trained it (None: this stage's own trials)."""

    winner: dict[str, Any]
    score: float
    checkpoint: str | None
    source: str | None = None
    record: StageRecord | None = None  # the earlier stage's record (its dev score, model, analysis)
    seeds: dict[int, float] = field(default_factory=dict)  # its score per seed (empty: not recorded)

    def entry(self) -> evidence.Entry:
        return evidence.Entry(self.winner, self.seeds, self.score)


def seeds_of(recorded: dict | None) -> dict[int, float]:
    """Scores per seed as a record holds them (JSON: the seeds as text)."""
    return {int(k): float(v) for k, v in (recorded or {}).items()}


def carried(records: dict[str, StageRecord], stage: Stage, folded: Folded | None,
            base: dict[str, Any]) -> list[Candidate]:
    """The earlier winners that compete in `stage`: those its folded grid equals (each as the stage's own
    point, so later stages read this stage's values from it: gamma_g = 0, not the VKD winner's defaults),
    then the stages it names in `carry` that are done."""
    out = []
    for c in folded.carried if folded is not None else ():
        source = records[c.stage]
        out.append(Candidate({**base, **expand(c.point)}, source["score"], source.get("checkpoint"), c.stage, source,
                             seeds_of(source.get("seed_scores"))))
    for name in stage.carry:
        source = records.get(name, {})
        if source.get("status") == "done" and source.get("score") is not None:
            out.append(Candidate(dict(source["winner"]), source["score"], source.get("checkpoint"), name, source,
                                 seeds_of(source.get("seed_scores"))))
    return out


def decide(own: list[Candidate], others: list[Candidate],
           reference: dict[str, Any] | None = None, accuracy_rows: int | None = None
           ) -> tuple[Candidate, evidence.Decision]:
    """The stage's winner among its own candidates and the carried ones, by the rule of
    `fsd.tuning.plan.evidence` (the best seed mean, then the nearest to `reference`, the previous stage's
    winner, then the values' order), with the evidence against the others (`accuracy_rows`: see there)."""
    pool = list(own) + list(others)
    decision = evidence.decide([c.entry() for c in pool], reference, accuracy_rows)
    return pool[decision.winner], decision


def choose(own: Candidate | None, others: list[Candidate], reference: dict[str, Any] | None = None) -> Candidate:
    """The winner of `decide` among `own` (None: the stage trained nothing) and `others`."""
    return decide([own] if own is not None else [], others, reference)[0]


def earlier_winners(schedule: Schedule, stage: Stage, records: dict[str, StageRecord]) -> dict[str, dict]:
    """The winners of the trial stages done before `stage`, in schedule order (what its grid folds against)."""
    out = {}
    for s in schedule.stages:
        if s.name == stage.name:
            break
        r = records.get(s.name, {})
        if not s.prepare and r.get("status") == "done" and r.get("score") is not None:
            out[s.name] = r["winner"]
    return out


def previous_winner(schedule: Schedule, stage: Stage, records: dict[str, StageRecord]) -> dict[str, Any] | None:
    """The winner of the last trial stage done before `stage` (a tie's first tie-break looks for the point
    nearest it), or None."""
    found = earlier_winners(schedule, stage, records)
    return list(found.values())[-1] if found else None


def trained_in(candidate: Candidate, stage: str) -> str:
    """The stage whose trial trained `candidate` (following carried records back to their origin)."""
    if candidate.source is None:
        return stage
    return (candidate.record or {}).get("trained_in", candidate.source)


def stage_record(candidate: Candidate, stage: str, decision: evidence.Decision | None = None) -> dict[str, Any]:
    """The ledger fields a stage's chosen candidate sets: its seed mean and scores per seed, the evidence it was
    chosen on, and its dev score too, when one was measured."""
    out: dict[str, Any] = {"status": "done", "winner": candidate.winner, "score": candidate.entry().mean,
                           "checkpoint": candidate.checkpoint, "trained_in": trained_in(candidate, stage)}
    if candidate.seeds:
        out["seed_scores"] = {str(k): v for k, v in sorted(candidate.seeds.items())}
    if decision is not None:
        out["evidence"] = decision.to_json()
    if candidate.source is not None:
        out["carried_from"] = candidate.source
        for key in ("dev", "analysis", "model_version"):
            if key in (candidate.record or {}):
                out[key] = candidate.record[key]
    return out


def search_best(records: dict[str, StageRecord], schedule: Schedule) -> tuple[str, StageRecord] | None:
    """The best stage winner of the search, or None; on a tie the later stage's (what the paper's schedule
    hands back, when nothing earlier was better)."""
    best = None
    for stage in schedule.stages:
        r = records.get(stage.name, {})
        if stage.prepare or r.get("status") != "done" or r.get("score") is None:
            continue
        if best is None or r["score"] >= best[1]["score"]:
            best = (stage.name, r)
    return best


def not_last_line(records: dict[str, StageRecord], schedule: Schedule, holdout: bool) -> str | None:
    """One plain line when the best student is not the last stage's winner, else None."""
    found = search_best(records, schedule)
    last = [s for s in schedule.stages if not s.prepare and records.get(s.name, {}).get("status") == "done"]
    if found is None or not last:
        return None
    name, best = found
    end = records[last[-1].name]
    if end["score"] >= best["score"]:
        return None
    origin = best.get("trained_in", name)
    split = "holdout" if holdout else "dev"
    method = best["winner"].get("method", "")
    return (f"the best student is {origin}'s ({method}, {split} {100 * best['score']:.2f}), not the last stage's "
            f"({last[-1].name}, {100 * end['score']:.2f}): the terms the later stages add did not help here")

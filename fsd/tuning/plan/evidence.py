"""Which candidate a stage names, and with what evidence (no Ray, no MLflow).

A stage's candidates are points trained on the same seeds (its own points, confirmed on more seeds, and the
winners carried into it). The winner is the candidate with the highest mean over its seeds; against each
other candidate the per-seed differences over the seeds both ran (paired: two points trained with one seed
share its head initialisation and data order) give a t interval. A candidate whose interval holds 0 is
statistically tied with the winner, and so is one whose mean trails the winner's by less than the ranking
split's sampling error (`margin`): every candidate is scored on the same rows, so a lead that small may be a
property of those rows, which no number of seeds averages away. Exact ties of the mean (copies: a point and
another that trains the same student) go to the point nearest the previous stage's winner, then to the point
whose values sort first: never to the order the trials happened to run in (docs/search.md, "Seeds and ties").
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from scipy import stats

CONFIDENCE = 0.95  # of the paired intervals; a candidate whose interval holds 0 is tied with the winner


@dataclass(frozen=True)
class Entry:
    """A candidate as the rule sees it: its values, its score per seed, and its score where no seed is known
    (a winner recorded before stages kept their seeds)."""

    values: dict[str, Any]
    seeds: dict[int, float]
    score: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.seeds.values()) if self.seeds else self.score

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.seeds.values()) if len(self.seeds) > 1 else None

    @property
    def n(self) -> int:
        return len(self.seeds) or 1


@dataclass(frozen=True)
class Paired:
    """The winner less another candidate over the seeds both ran: mean difference, its interval, p (two-sided)."""

    n: int
    diff: float
    lo: float | None  # None: no interval (see `tied`)
    hi: float | None
    p: float | None

    @property
    def tied(self) -> bool | None:
        """Whether the interval holds 0; None where there is no interval (one shared seed, or two with the same
        gap) and no exact equality: nothing to tell by."""
        if self.lo is None:
            return True if self.diff == 0 else None
        return self.lo <= 0 <= self.hi

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "diff": self.diff, "lo": self.lo, "hi": self.hi, "p": self.p}


def paired(a: dict[int, float], b: dict[int, float]) -> Paired | None:
    """`a` less `b` over their shared seeds (None: no seed in common): the paired t interval at CONFIDENCE."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    d = [a[s] - b[s] for s in shared]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return Paired(1, mean, None, None, None)
    sd = statistics.stdev(d)
    if sd <= 1e-12:  # identical differences on every seed (to float rounding)
        if mean == 0:  # copies: the same score on every seed, a tie whatever the count
            return Paired(len(d), 0.0, 0.0, 0.0, 1.0)
        if len(d) < 3:  # two equal gaps are a coincidence as likely as a rule: no spread to judge by
            return Paired(len(d), mean, None, None, None)
        return Paired(len(d), mean, mean, mean, 0.0)
    se = sd / math.sqrt(len(d))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(d) - 1) * se
    p = 2 * stats.t.sf(abs(mean) / se, len(d) - 1)
    return Paired(len(d), mean, float(mean - half), float(mean + half), float(p))


def distance(values: dict[str, Any], reference: dict[str, Any] | None) -> float:
    """How far a candidate's values lie from the previous stage's winner: decades apart for positive numbers,
    plain differences for the others, summed over the numeric values both have (0 without a reference)."""
    if not reference:
        return 0.0
    total = 0.0
    for key, v in values.items():
        r = reference.get(key)
        if isinstance(v, bool) or isinstance(r, bool) or not isinstance(v, (int, float)) \
                or not isinstance(r, (int, float)):
            continue
        total += abs(math.log10(v) - math.log10(r)) if v > 0 and r > 0 else abs(v - r)
    return total


def order(entry: Entry, reference: dict[str, Any] | None) -> tuple:
    """The rule as a sort key: the higher seed mean, then the nearer the previous winner, then the values."""
    return -entry.mean, distance(entry.values, reference), json.dumps(entry.values, sort_keys=True, default=str)


def tied_within(p: Paired | None, margin: float) -> bool | None:
    """Whether a candidate is tied with the winner: its paired interval holds 0, or the winner leads it by less
    than `margin`; None where neither can tell (no shared seed, or too few to give an interval)."""
    if p is None:
        return None
    if abs(p.diff) < margin:
        return True
    return p.tied


@dataclass(frozen=True)
class Decision:
    """A stage's named winner (an index into the candidates) and its evidence."""

    winner: int
    ranked: tuple[int, ...]  # every candidate, best first
    entries: tuple[Entry, ...]
    against: tuple[Paired | None, ...]  # the winner against each of ranked[1:]
    margin: float  # leads smaller than this are ties (the ranking split's sampling error; 0: none known)
    rule: str  # "alone", "clear", or how a tie was settled

    @property
    def ties(self) -> tuple[bool | None, ...]:
        """`tied_within` for each of ranked[1:]."""
        return tuple(tied_within(p, self.margin) for p in self.against)

    @property
    def tied(self) -> int:
        """Candidates tied with the winner (their interval holds 0, or the lead over them is under `margin`)."""
        return sum(1 for t in self.ties if t)

    @property
    def untested(self) -> int:
        """Candidates too close to tell by seeds (fewer than two shared, not an exact tie) and not within the
        margin: nothing to test."""
        return sum(1 for t in self.ties if t is None)

    def to_json(self) -> dict[str, Any]:
        w = self.entries[self.winner]
        out: dict[str, Any] = {"mean": w.mean, "sd": w.sd, "n": w.n, "candidates": len(self.entries),
                               "tied": self.tied, "untested": self.untested, "margin": self.margin, "rule": self.rule}
        if len(self.ranked) > 1:
            r = self.entries[self.ranked[1]]
            out["runner_up"] = {"values": r.values, "mean": r.mean, "sd": r.sd, "n": r.n}
            out["diff"] = self.against[0].to_json() if self.against[0] is not None else None
        return out


def decide(entries: list[Entry], reference: dict[str, Any] | None = None, accuracy_rows: int | None = None
           ) -> Decision:
    """Name the winner of `entries` (at least one) by the rule, with the paired evidence against the others.

    Args:
        entries: the candidates.
        reference: the previous stage's winner's values (the tie-break after the mean), or None.
        accuracy_rows: the ranking split's rows when its score is an accuracy: a lead under its binomial error
            at the winner's mean is a tie (None: no margin, as for F1, MCC and correlations, whose error needs
            the predictions).
    """
    if not entries:
        raise ValueError("no candidate")
    ranked = sorted(range(len(entries)), key=lambda i: order(entries[i], reference))
    best = entries[ranked[0]]
    margin = binomial_error(best.mean, accuracy_rows) if accuracy_rows else 0.0
    against = tuple(paired(best.seeds, entries[i].seeds) for i in ranked[1:])
    ties = tuple(tied_within(p, margin) for p in against)
    return Decision(ranked[0], tuple(ranked), tuple(entries), against, margin, _rule(entries, ranked, ties, reference))


def accuracy_rows(ranking: dict[str, Any] | None) -> int | None:
    """The ranking split's rows (the ledger's "ranking" record) where its score is an accuracy, else None."""
    return ranking["rows"] if ranking and ranking.get("score") == "accuracy" else None


def _rule(entries: list[Entry], ranked: list[int], ties: tuple, reference: dict[str, Any] | None) -> str:
    if len(ranked) == 1:
        return "alone"
    best, second = entries[ranked[0]], entries[ranked[1]]
    if not any(ties):
        return "clear"
    if best.mean != second.mean:
        return "tie settled by the higher seed mean"
    if distance(best.values, reference) != distance(second.values, reference):
        return "tie settled by the point nearest the previous stage's winner"
    return "tie settled by the values' sort order"


def said(evidence: dict[str, Any], split: str) -> str:
    """A stage's evidence in one clause: the winner's mean (sd) over its seeds, the runner-up's, their paired
    difference with its interval, and the candidates tied with it."""
    def score(e: dict[str, Any]) -> str:
        sd = "" if e.get("sd") is None else f" ({100 * e['sd']:.2f})"
        return f"{100 * e['mean']:.2f}{sd} on {e['n']} seed{'' if e['n'] == 1 else 's'}"

    text = f"{split} {score(evidence)}"
    if "runner_up" not in evidence:
        return text + ", no other candidate"
    text += f"; runner-up {score(evidence['runner_up'])}"
    d = evidence.get("diff")
    if d and d.get("lo") is not None:
        text += f", paired difference {100 * d['diff']:+.2f} [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]"
    elif d:
        text += f", difference {100 * d['diff']:+.2f} (no interval: {d['n']} shared seed{'' if d['n'] == 1 else 's'})"
    others = evidence["candidates"] - 1
    untested = evidence.get("untested", 0)
    if evidence.get("tied"):
        margin = evidence.get("margin") or 0.0
        within = f"interval holds 0, or lead under {100 * margin:.2f}: the split's sampling error; " if margin else ""
        text += f"; tied with {evidence['tied']} of {others} ({within}{evidence['rule']})"
    elif untested == others:
        text += "; too few seeds to tell its candidates apart"
    elif untested:
        text += f"; ahead of {others - untested} of {others}, {untested} untested (too few shared seeds)"
    else:
        text += "; ahead of every other candidate"
    return text


def binomial_error(p: float, rows: int) -> float:
    """The sampling error (one standard error) of an accuracy `p` measured on `rows` rows."""
    return math.sqrt(max(p * (1 - p), 0.0) / rows)


def split_error_line(score_kind: str, split: str, rows: int, score: float | None) -> str:
    """What the ranking split's size alone makes uncertain in one trial's score: for an accuracy, the binomial
    error at `score` (or at 0.5, its largest); other scores (F1, MCC, correlations) need the predictions to
    bootstrap, which a search does not keep."""
    if score_kind != "accuracy":
        return (f"ranking split: {split}, {rows:,} rows; its {score_kind} score's sampling error needs a bootstrap "
                "of the predictions, not measured here")
    at = 0.5 if score is None else score
    return (f"ranking split: {split}, {rows:,} rows; one accuracy's sampling error on it is "
            f"{100 * binomial_error(at, rows):.2f} points (binomial, at {100 * at:.1f})")


def expected_best(scores: list[float], n: int) -> float:
    """Expected validation performance (Dodge et al. 2019, "Show Your Work"): the expected best of `n` trials
    drawn with replacement from the recorded `scores`, sum over i of v(i) ((i/N)^n - ((i-1)/N)^n) with v sorted
    ascending."""
    v = sorted(scores)
    big = len(v)
    return sum(x * ((i / big) ** n - ((i - 1) / big) ** n) for i, x in enumerate(v, 1))

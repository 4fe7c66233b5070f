"""The tests behind `--compare`'s p-values (Tables 2/3 and 4): pure arithmetic on seed scores (numpy, scipy).

FSD is tested against every other method, never against one picked after the fact for its mean:
  - each comparison is a one-sided t-test that FSD's mean is higher, paired by seed when both methods ran
    the same seeds (a seed fixes the head's initialisation, data order and dropout of both runs, so its luck
    cancels in the difference), else Welch's unequal-variance test;
  - the p-values of one table are Holm-corrected together (a family: Table 2/3's baselines, or Table 4's
    ablations), so a small p among several is not luck of the number of tries;
  - "FSD beats every baseline" is answered by the largest corrected p: every hypothesis must be rejected.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

PAIRED = "paired t"
WELCH = "Welch t"
# What a table says of its p-values.
METHOD_NOTE = ("one-sided t-tests that fsd has the higher mean, paired by seed where both ran the same seeds "
               "(else Welch), Holm-corrected over the comparisons of this table")


@dataclass(frozen=True)
class Comparison:
    """FSD against one other method."""

    versus: str
    test: str  # PAIRED or WELCH; "" when a side has fewer than 2 scores (no test)
    n: int  # pairs (paired) or the smaller side's scores (Welch)
    p: float  # one-sided, uncorrected; NaN without a test
    p_holm: float  # Holm-corrected within its family; NaN without a test


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order. NaN entries are not tests: they stay NaN and
    do not count in the family's size.

    Sorted ascending, the i-th (from 1) of m is multiplied by m - i + 1, capped at 1, and made non-decreasing
    along the order (an adjusted p is never below one of a smaller raw p)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def shared_seeds(seeds_a: Sequence[int] | None, seeds_b: Sequence[int] | None) -> bool:
    """Whether two methods ran the same seeds, each once: only then are their scores paired by seed."""
    if seeds_a is None or seeds_b is None:
        return False
    return len(set(seeds_a)) == len(seeds_a) and sorted(seeds_a) == sorted(seeds_b)


def greater(a: Sequence[float], b: Sequence[float], seeds_a: Sequence[int] | None = None,
            seeds_b: Sequence[int] | None = None) -> tuple[float, str, int]:
    """One-sided p-value that mean(a) > mean(b), the test used and its n: paired t over the seeds when
    `seeds_a` and `seeds_b` are the same seeds, else Welch. (NaN, "", n) with fewer than 2 scores a side.

    When the differences (paired) or both samples (Welch) have no spread, t is 0/0 or +-inf: p is taken as
    its limit, 0.5 for no difference, 0 or 1 for a constant one (scipy gives NaN or a precision warning)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    for seeds, values in ((seeds_a, x), (seeds_b, y)):
        if seeds is not None and len(seeds) != len(values):
            raise ValueError(f"{len(seeds)} seeds for {len(values)} scores")
    if len(x) < 2 or len(y) < 2:
        return math.nan, "", min(len(x), len(y))
    with warnings.catch_warnings():
        # A side with no spread (every seed at the majority class) is data, not an error: scipy's result is
        # right and its precision warning noise.
        warnings.simplefilter("ignore", RuntimeWarning)
        if shared_seeds(seeds_a, seeds_b):
            by_seed = dict(zip(seeds_b, y, strict=True))
            paired = np.array([by_seed[s] for s in seeds_a])
            d = x - paired
            if np.all(d == d[0]):
                return _limit(float(d[0])), PAIRED, len(d)
            return float(stats.ttest_rel(x, paired, alternative="greater").pvalue), PAIRED, len(d)
        n = min(len(x), len(y))
        if np.all(x == x[0]) and np.all(y == y[0]):
            return _limit(float(x[0] - y[0])), WELCH, n
        return float(stats.ttest_ind(x, y, equal_var=False, alternative="greater").pvalue), WELCH, n


def _limit(difference: float) -> float:
    return 0.5 if difference == 0 else (0.0 if difference > 0 else 1.0)


def versus_each(scores: dict[str, Sequence[float]], seeds: dict[str, Sequence[int]] | None = None,
                full: str = "fsd") -> list[Comparison]:
    """`full` against every other entry of `scores` (method -> its seed scores; `seeds`: method -> the seed of
    each score, in the same order, when known), Holm-corrected together, in the order of `scores`."""
    seeds = seeds or {}
    raw = {m: greater(scores[full], s, seeds.get(full), seeds.get(m)) for m, s in scores.items() if m != full}
    adjusted = holm([p for p, _, _ in raw.values()])
    return [Comparison(m, test, n, p, q) for (m, (p, test, n)), q in zip(raw.items(), adjusted, strict=True)]


def beats_every(comparisons: Sequence[Comparison]) -> float | None:
    """The p-value of "better than every one": the largest Holm-corrected p (each must be rejected). None
    when some comparison could not be tested (or there is none): that claim cannot be made."""
    if not comparisons or any(math.isnan(c.p_holm) for c in comparisons):
        return None
    return max(c.p_holm for c in comparisons)

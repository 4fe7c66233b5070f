"""The replay simulator of bench/search_cost.py: ASHA's rule against Ray's own, and a hand-made table whose
answers are worked out by hand."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from replay import Asha, Curve, rung_rank_correlation, shuffled, simulate, summarise  # noqa: E402

# Three trials of 4 samples, evaluated at 1, 2 and 4 samples; B is the best, C the worst.
A = Curve({"x": "a"}, (1, 2, 4), (0.5, 0.6, 0.7))
B = Curve({"x": "b"}, (1, 2, 4), (0.6, 0.7, 0.9))
C = Curve({"x": "c"}, (1, 2, 4), (0.1, 0.2, 0.3))
TABLE = [A, B, C]


def _halving():
    return Asha((1,), max_t=4, reduction_factor=2)


@pytest.mark.parametrize(("order", "samples", "started"), [
    # A runs whole (an empty rung stops nobody); B beats the median of {A}; C is below the median of {A, B}.
    ((0, 1, 2), 4 + 4 + 1, 3),
    # C first runs whole; A beats {C}; B beats the median of {C, A} = 0.3: nothing is stopped.
    ((2, 0, 1), 12, 3),
    # B whole; C below {B}: stopped at 1; A = 0.5 beats the median of {B, C} = 0.35.
    ((1, 2, 0), 4 + 1 + 4, 3),
])
def test_halving_on_a_hand_table_one_worker(order, samples, started):
    out = simulate(TABLE, iter(order), _halving(), workers=1)
    assert (out.chosen, out.samples, out.started) == (1, samples, started)


def test_two_workers_report_in_time_order():
    """A and B start together and report at the same times; C starts when A ends (sample 4), reaches the rung
    at sample 5 and is stopped there below the median of {A, B}."""
    out = simulate(TABLE, iter((0, 1, 2)), _halving(), workers=2)
    assert (out.chosen, out.samples) == (1, 9)


def test_a_stopped_trial_never_wins_and_regret_counts_from_the_grid_best():
    """B stopped at its first rung (below A's 0.55... recorded first) cannot be chosen even though its final
    score is the best: the winner comes from trials that reached the budget."""
    late = Curve({"x": "d"}, (1, 2, 4), (0.2, 0.3, 0.95))  # a slow starter with the best final score
    table = [A, late]
    out = simulate(table, iter((0, 1)), _halving(), workers=1)
    assert out.chosen == 0 and out.samples == 5
    s = summarise("halving", table, [out])
    assert s.regret[0] == pytest.approx(100 * (0.95 - 0.7))
    assert s.share[0] == pytest.approx(5 / 8) and s.within == 0.0
    grid = summarise("grid", table, [simulate(table, iter((0, 1)), None, workers=1)])
    assert grid.share == (1.0, 0.0) and grid.regret == (0.0, 0.0) and grid.within == 1.0


def test_random_search_runs_the_first_k_of_a_shuffle():
    rng = np.random.default_rng(0)
    order = list(shuffled(3, np.random.default_rng(0), k=2))
    out = simulate(TABLE, shuffled(3, rng, k=2), None, workers=2)
    assert out.started == 2 and out.samples == 8 and out.chosen == max(order, key=lambda i: TABLE[i].final)


def test_rung_rank_correlation():
    rho = dict(rung_rank_correlation(TABLE))
    assert rho[1] == pytest.approx(1.0) and rho[4] == pytest.approx(1.0)  # same order at every point
    # C leads at the first evaluation and ends second (its best, 0.8, was that first one): rho = 1 - 6*2/24
    flipped = [A, B, Curve({"x": "c"}, (1, 2, 4), (0.8, 0.2, 0.3))]
    assert dict(rung_rank_correlation(flipped))[1] == pytest.approx(0.5)


def test_asha_decides_as_rays_bracket():
    """Random result streams: our rule and Ray's `_Bracket` (+ the max_t stop) agree on every result."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    rng = np.random.default_rng(3)
    for _ in range(20):
        rf = float(rng.choice([2, 3, 4]))
        theirs = _Bracket(2, 54, rf, 0)
        ours = Asha(tuple(m for m, _ in theirs._rungs), max_t=54, reduction_factor=rf)
        assert min(m for m, _ in theirs._rungs) == 2
        for _ in range(60):
            trial, t, score = int(rng.integers(8)), int(rng.integers(1, 54)), float(rng.random())

            class T:
                trial_id = trial

            assert ours.on_result(trial, t, score) == (theirs.on_result(T, t, score) == "CONTINUE")

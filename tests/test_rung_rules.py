"""The rung rules (fsd/tuning/search/halving.py: ties kept, the score ranks) on hand-made rungs."""

import itertools
from types import SimpleNamespace

import pytest

from fsd.metrics import BUDGET, SAMPLES, SCORE
from fsd.tuning.plan.stages import RUNG_METRIC, RUNG_MODE, RUNG_TIE, rungs_for
from fsd.tuning.search.halving import DurableASHA, rung_cutoff

_FILES = itertools.count()  # a scheduler reads back the rungs its file holds: each gets its own


# ---------------------------------------------------------------------------------------------- the rules
def test_the_cutoff_is_a_recorded_trials_value_less_the_tie():
    # [0.558, 0.558, 0.559], rf 3: the 2/3 quantile's rank is 1.33; Ray interpolates 0.55833 between the
    # second and third values, the rule takes the second's own value
    assert rung_cutoff([0.558, 0.559, 0.558], 3.0, tie=0.0) == 0.558
    assert rung_cutoff([0.558, 0.559, 0.558], 3.0, tie=0.005) == pytest.approx(0.553)
    # rf 2 over four values: rank 1.5 -> the second lowest
    assert rung_cutoff([0.4, 0.1, 0.3, 0.2], 2.0, tie=0.0) == 0.2


def _stream(scheduler, results, samples=300):
    """Each (score, loss) as the first result of a new trial at `samples` of 400; the scheduler's answers."""
    out = []
    for i, (score, loss) in enumerate(results):
        trial = SimpleNamespace(trial_id=f"t{i}")
        scheduler.on_trial_add(None, trial)
        out.append(scheduler.on_trial_result(None, trial, {SAMPLES: samples, BUDGET: 400, SCORE: score,
                                                           "eval/loss": loss}))
    return out


def _tool(tmp_path, tie=RUNG_TIE, metric=RUNG_METRIC, mode=RUNG_MODE):
    """A fresh DurableASHA (its own rungs file) with one rung at 300 of 400 samples."""
    return DurableASHA(str(tmp_path / f"rungs-{next(_FILES)}.json"), rungs_for(400, 3 / 4, 3.0), metric, mode, tie)


def test_a_trial_tied_with_the_cutoff_goes_on_where_rays_asha_stops_it(tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    scores = [(0.55, 0.6), (0.55, 0.6), (0.56, 0.6), (0.55, 0.6)]
    ray = ASHAScheduler(time_attr=SAMPLES, metric=SCORE, mode="max", max_t=400, grace_period=300, reduction_factor=3)
    # Ray's cutoff for the fourth is 0.5533, between the 0.55s and the 0.56: the fourth 0.55 is stopped
    assert _stream(ray, scores) == ["CONTINUE"] * 3 + ["STOP"]
    assert _stream(_tool(tmp_path, tie=0.0), scores) == ["CONTINUE"] * 4  # tied with the second: it goes on


def test_a_score_within_the_tie_of_the_cutoff_is_tied_with_it(tmp_path):
    """Half a point (RUNG_TIE) below the cutoff's trial goes on; more than that is stopped."""
    assert RUNG_TIE == pytest.approx(0.005)
    # the fourth: cutoff 0.791 (the second of [0.790, 0.791, 0.800]) - 0.005 = 0.786; the fifth: 0.791 of
    # [0.787, 0.790, 0.791, 0.800] (rank 2) - 0.005
    answers = _stream(_tool(tmp_path), [(0.790, 0.5), (0.791, 0.5), (0.800, 0.5), (0.787, 0.5), (0.785, 0.5)])
    assert answers == ["CONTINUE"] * 4 + ["STOP"]
    assert _stream(_tool(tmp_path, tie=0.0), [(0.790, 0.5), (0.791, 0.5), (0.800, 0.5), (0.787, 0.5)])[-1] == "STOP"


def test_the_rungs_rank_by_the_score_and_a_loss_never_breaks_a_tie(tmp_path):
    # every student at the majority class: the scores tie and nobody goes, whatever the loss says
    tied = [(0.5092, 0.60), (0.5092, 0.50), (0.5092, 0.70)]
    assert _stream(_tool(tmp_path), tied) == ["CONTINUE"] * 3
    # the best loss with the worst score is stopped; the worse loss with the better score goes on
    ranked = [(0.80, 0.50), (0.81, 0.60), (0.70, 0.30)]
    assert _stream(_tool(tmp_path), ranked) == ["CONTINUE", "CONTINUE", "STOP"]
    # what the rungs ranked by before: the loss, which stops the tied majority-class trial with the worst loss
    assert _stream(_tool(tmp_path, tie=0.0, metric="eval/loss", mode="min"), tied)[-1] == "STOP"


def test_the_tie_keeping_rule_survives_a_restore(tmp_path):
    import pickle

    live = _tool(tmp_path)
    at_start = pickle.dumps(live)
    assert _stream(live, [(0.55, 0.6), (0.55, 0.6), (0.56, 0.6)]) == ["CONTINUE"] * 3
    restored = pickle.loads(at_start)  # what Tuner.restore unpickles: the rungs come back from the file
    assert restored._brackets[0].tie == RUNG_TIE
    trial = SimpleNamespace(trial_id="t9")
    restored.on_trial_add(None, trial)
    result = {SAMPLES: 300, BUDGET: 400, SCORE: 0.54, "eval/loss": 0.6}
    assert restored.on_trial_result(None, trial, result) == "STOP"  # 0.54 < 0.55 - 0.005, against the saved rung

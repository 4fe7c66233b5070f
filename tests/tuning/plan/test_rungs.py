"""The arithmetic of halving (fsd/tuning/plan/rungs.py): rungs as Ray builds them, the expected samples under
halving by hand."""

import pytest

from fsd.tuning.plan.rungs import expected_evaluations, expected_samples, rungs_for


@pytest.mark.parametrize(("budget", "first", "rf"), [(4000, 1 / 9, 3.0), (6000, 1 / 16, 4.0), (64, 1 / 9, 3.0),
                                                     (1_455_384, 1 / 9, 3.0), (6000, 1 / 4, 2.0)])
def test_rungs_are_the_milestones_rays_asha_builds(budget, first, rf):
    from ray.tune.schedulers.async_hyperband import _Bracket

    rungs = rungs_for(budget, first, rf)
    theirs = sorted(m for m, _ in _Bracket(rungs.first, budget, rf, 0)._rungs)
    assert list(rungs.milestones) == [int(m) for m in theirs]


def test_expected_samples_by_hand():
    # 9 trials of 900 samples, evaluated every 100; rungs at 100, 300 (rf 3, first 1/9): 9 x 100, then 3 more to
    # 300, then 1 to the end.
    rungs = rungs_for(900, 1 / 9, 3.0)
    assert rungs.milestones == (100, 300, 900)
    assert expected_samples(9, 900, rungs, 100) == 9 * 100 + 3 * 200 + 1 * 600
    assert expected_samples(9, 900, None, 100) == 8100
    # evaluations every 250: the rungs fall at the first evaluation past them (250, 500)
    assert expected_samples(9, 900, rungs, 250) == 9 * 250 + 3 * 250 + 1 * 400
    assert expected_evaluations(9, 900, None, 250) == 9 * 4  # 250, 500, 750 and the end

"""How a stage's grid is searched: when its confirmation seeds run beside its own seed, in one experiment."""

from fsd.tuning.plan.strategy import Strategy, confirms_at_once


def test_the_confirmation_runs_at_once_only_when_every_point_of_an_uncapped_grid_leads():
    grid = Strategy("grid", confirm=(2, 1))
    assert confirms_at_once(grid, 2)  # the cpu preset's stages: both points are leaders
    assert not confirms_at_once(grid, 3)  # a leader is known only once the stage has ranked its points
    assert not confirms_at_once(grid, 1)  # a single point has nothing to confirm it against
    assert confirms_at_once(Strategy("grid", confirm=(3, 2)), 3)
    assert not confirms_at_once(Strategy("grid"), 2)  # no confirmation asked
    assert not confirms_at_once(Strategy("grid", cap=1000, confirm=(2, 1)), 2)  # --budget gates the trials
    for kind in ("halving", "optuna"):  # a rung or a sampler decides which points run to the end
        assert not confirms_at_once(Strategy(kind, confirm=(2, 1)), 2)

"""--budget: its forms, the plan's arithmetic against a hand count, and the gate that starts no trial the
budget left cannot pay for (fsd/tuning/plan/budget.py, fsd/tuning/search/halving.py)."""

from types import SimpleNamespace

import pytest

from fsd.tuning.plan.budget import Plan, StagePlan, in_samples, make_plan, parse
from fsd.tuning.search.halving import GATE, BudgetGate, gate_refused


@pytest.mark.parametrize("text,field,value", [("2e6", "samples", 2e6), ("20%", "share", 0.2), ("8h", "hours", 8.0),
                                              ("1500", "samples", 1500.0), ("0.5H", "hours", 0.5)])
def test_a_budget_is_samples_a_share_or_hours(text, field, value):
    assert getattr(parse(text), field) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-5", "0", "150%", "2 GB", "8 hours", "lots"])
def test_a_budget_that_is_none_of_them_says_what_to_write(text):
    with pytest.raises(ValueError, match="--budget"):
        parse(text)


def test_a_share_is_of_the_grid_and_hours_need_a_rate():
    assert in_samples(parse("20%"), 1000.0, None) == pytest.approx(200.0)
    assert in_samples(parse("2h"), 1000.0, 3600.0) == 7200.0
    with pytest.raises(ValueError, match="hours"):
        in_samples(parse("2h"), 1000.0, None)


def _hand_cost(n):
    """n trials of 1,600 samples evaluated every 400, halving rf 3, first rung 1/9: the first rung (178
    samples) is met at the first evaluation (400), the second (533) at 800; a third of those go on each time."""
    alive1 = max(1, n / 3)
    alive2 = max(1, alive1 / 3)
    return n * 400 + alive1 * 400 + alive2 * 800


def test_the_plan_fits_each_stage_by_hand_count():
    stages = [{"name": "a", "points": 27, "per_trial": 1600, "every": 400, "grid": 27 * 1600},
              {"name": "b", "points": 9, "per_trial": 1600, "every": 400, "grid": 9 * 1600}]
    grid = 36 * 1600
    plan = make_plan(0.2 * grid, stages, "optuna", 3.0, 1 / 9, seeds=1)
    a, b = plan.stages
    # a's share is 20% of 27 x 1,600 = 8,640: the most trials whose expected cost fits.
    assert _hand_cost(a.trials) <= 8640 < _hand_cost(a.trials + 1)
    assert a.expected == pytest.approx(_hand_cost(a.trials))
    assert _hand_cost(b.trials) <= 0.2 * 9 * 1600 < _hand_cost(b.trials + 1) or b.trials == 3
    assert plan.expected <= plan.samples
    # halving may not sample: every point starts, whatever the budget
    halving = make_plan(0.2 * grid, stages, "halving", 3.0, 1 / 9, seeds=1)
    assert [s.trials for s in halving.stages] == [27, 9]
    assert halving.stages[0].expected == pytest.approx(_hand_cost(27))  # 16,800 > its share: said in the plan


def test_a_stage_that_cannot_go_below_its_share_leaves_the_rest_to_the_others():
    stages = [{"name": "small", "points": 3, "per_trial": 1600, "every": 400, "grid": 3 * 1600},
              {"name": "large", "points": 81, "per_trial": 1600, "every": 400, "grid": 81 * 1600}]
    plan = make_plan(20_000, stages, "optuna", 3.0, 1 / 9, seeds=1)
    small, large = plan.stages
    assert small.trials == 3 and small.expected == pytest.approx(_hand_cost(3))  # its cheapest: 2,400
    assert _hand_cost(large.trials) <= 20_000 - 2400 < _hand_cost(large.trials + 1)


def test_confirmation_trials_are_paid_first_and_the_rest_is_shared_as_before():
    """A stage's confirmation (its leaders on more seeds) is set aside from the budget before the stages'
    shares are made, and counted in its expected spend, so the later stages' caps leave room for it."""
    plain = [{"name": "a", "points": 27, "per_trial": 1600, "every": 400, "grid": 27 * 1600},
             {"name": "b", "points": 9, "per_trial": 1600, "every": 400, "grid": 9 * 1600}]
    confirming = [{**s, "confirm": 4 * 1600} for s in plain]
    total = 0.2 * 36 * 1600 + 8 * 1600
    with_confirm = make_plan(total, confirming, "optuna", 3.0, 1 / 9, seeds=1)
    without = make_plan(total - 8 * 1600, plain, "optuna", 3.0, 1 / 9, seeds=1)
    for c, p in zip(with_confirm.stages, without.stages, strict=True):
        assert c.trials == p.trials and c.first_rung == p.first_rung  # the same plan of its own trials
        assert c.confirm == 4 * 1600 and c.expected == pytest.approx(p.expected + 4 * 1600)
    assert with_confirm.cap("a", 0) == pytest.approx(total - with_confirm.stages[1].expected)
    assert Plan.from_json(with_confirm.to_json()) == with_confirm
    assert Plan.from_json({"samples": 1, "stages": [{k: v for k, v in with_confirm.to_json()["stages"][0].items()
                                                     if k != "confirm"}]}).stages[0].confirm == 0  # an old plan


def test_the_plan_fits_a_budget_by_sampling_and_never_moves_the_first_rung_earlier():
    """A first rung of 3/4 (1,200 of 1,600 samples): a third of the trials go on to 1,600. A fifth of a 27-point
    grid (8,640 samples) pays for 6 TPE samples (6 x 1,200 + 2 x 400 = 8,000; 7 cost 9,333), not for an
    earlier rung, where the score does not rank yet; halving, which cannot sample, keeps its rung and is over."""
    stage = {"name": "vkd", "points": 27, "per_trial": 1600, "every": 400, "grid": 27 * 1600}
    (optuna,) = make_plan(0.2 * 27 * 1600, [stage], "optuna", 3.0, 3 / 4, seeds=1).stages
    assert (optuna.trials, optuna.first_rung, optuna.expected) == (6, 3 / 4, pytest.approx(8000))
    (halving,) = make_plan(0.2 * 27 * 1600, [stage], "halving", 3.0, 3 / 4, seeds=1).stages
    assert (halving.trials, halving.first_rung, halving.expected) == (27, 3 / 4, pytest.approx(27 * 1200 + 9 * 400))


def test_what_a_stage_may_spend_leaves_the_later_stages_their_plan():
    plan = Plan(10_000, (StagePlan("a", 9, 9, 1 / 9, 1600, 3000, 0), StagePlan("b", 9, 9, 1 / 9, 1600, 4000, 0)))
    assert plan.cap("a", 0) == 6000
    assert plan.cap("b", 2500) == 7500  # what a left unspent goes to b
    assert Plan.from_json(plan.to_json()) == plan


class _Inner:
    def __init__(self, n):
        self.n, self.made = n, 0

    def next_trial(self):
        if self.made == self.n:
            return None
        self.made += 1
        return SimpleNamespace(trial_id=f"t{self.made}")

    def is_finished(self):
        return self.made == self.n

    def on_trial_result(self, *a, **k):
        pass

    def on_trial_complete(self, *a, **k):
        pass


def test_the_gate_starts_no_trial_the_budget_left_cannot_pay_for(tmp_path):
    gate = BudgetGate(_Inner(10), cap=350, per_trial=100, path=str(tmp_path / GATE))
    a, b, c = gate.next_trial(), gate.next_trial(), gate.next_trial()
    assert [t.trial_id for t in (a, b, c)] == ["t1", "t2", "t3"]
    assert gate.next_trial() is None and not gate.is_finished()  # 3 running may still spend 300 of 350
    gate.on_trial_complete("t1", {"progress/samples": 30})  # stopped at a rung: 70 come back
    d = gate.next_trial()
    assert d.trial_id == "t4"  # 30 spent + 200 reserved + 100 <= 350
    for t in ("t2", "t3", "t4"):
        gate.on_trial_complete(t, {"progress/samples": 100})
    assert gate.next_trial() is None and gate.is_finished()  # 330 spent: another 100 would overrun
    assert gate_refused(str(tmp_path))  # what the runner reads once the stage is over
    restored = BudgetGate(_Inner(10), cap=350, per_trial=100, path=str(tmp_path / GATE))
    assert sum(restored.spent.values()) == 330 and restored.refused  # a restored stage goes on counting


def test_a_stage_whose_points_all_ran_is_not_cut_by_the_budget(tmp_path):
    """Two points, 128 of a 136 cap spent: no third trial fits, but there is none to start either."""
    gate = BudgetGate(_Inner(2), cap=136, per_trial=64, path=str(tmp_path / GATE))
    assert [gate.next_trial().trial_id for _ in range(2)] == ["t1", "t2"]
    for t in ("t1", "t2"):
        gate.on_trial_complete(t, {"progress/samples": 64})
    assert gate.next_trial() is None and not gate_refused(str(tmp_path))

"""The rule a stage names its winner by, and the evidence it gives: paired intervals checked against scipy's
paired t-test and a hand formula, ties of copies settled by the rule and never by order."""

import itertools
import math

import pytest
from scipy import stats

from fsd.tuning.plan.evidence import Entry, binomial_error, decide, distance, paired, said, split_error_line


def test_the_paired_interval_is_the_t_interval_of_the_per_seed_differences():
    a = {1: 0.80, 2: 0.78, 3: 0.83, 4: 0.79}
    b = {1: 0.77, 2: 0.76, 3: 0.80, 4: 0.775, 9: 0.99}  # seed 9 is not shared: left out
    p = paired(a, b)
    d = [a[s] - b[s] for s in (1, 2, 3, 4)]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    half = 3.182446305284263 * sd / 2  # t(0.975, df 3) from a table, se = sd / sqrt(4)
    assert p.n == 4 and p.diff == pytest.approx(mean)
    assert (p.lo, p.hi) == pytest.approx((mean - half, mean + half))
    assert p.p == pytest.approx(stats.ttest_rel([a[s] for s in (1, 2, 3, 4)], [b[s] for s in (1, 2, 3, 4)]).pvalue)
    assert p.tied is False and p.p < 0.05  # the interval clears 0
    close = paired(a, {1: 0.77, 2: 0.76, 3: 0.80, 4: 0.79})
    assert close.tied is True and close.p == pytest.approx(0.0663, abs=1e-3)  # the same leader, one seed closer


def test_an_interval_that_holds_zero_is_a_tie_and_one_shared_seed_cannot_tell():
    assert paired({1: 0.8, 2: 0.7}, {1: 0.7, 2: 0.8}).tied is True
    one = paired({1: 0.8}, {1: 0.7})
    assert one.n == 1 and one.lo is None and one.tied is None
    assert paired({1: 0.8}, {1: 0.8}).tied is True  # an exact equality is a tie even on one seed
    assert paired({1: 0.8}, {2: 0.8}) is None
    # The same gap on every seed: no spread. On three seeds it decides; on two it is as likely a coincidence.
    same_lead = paired({1: 0.75, 2: 0.875, 3: 0.5}, {1: 0.5, 2: 0.625, 3: 0.25})
    assert same_lead.tied is False and same_lead.lo == pytest.approx(0.25) and same_lead.p == 0.0
    two = paired({1: 0.75, 2: 0.875}, {1: 0.5, 2: 0.625})
    assert two.tied is None and two.lo is None and two.diff == pytest.approx(0.25)
    assert paired({1: 0.75, 2: 0.875}, {1: 0.75, 2: 0.875}).tied is True  # copies tie on any count


def test_copies_tie_and_the_tie_goes_to_the_point_nearest_the_previous_winner_in_any_order():
    """Two points that train the same student (deterministic: the same scores on every seed) are a tie, said
    as one, and settled by the documented rule: the order the candidates come in has no say."""
    scores = {42: 0.768, 43: 0.752, 44: 0.771}
    t10 = Entry({"alpha": 0.2, "temperature": 10.0}, dict(scores), 0.0)
    t20 = Entry({"alpha": 0.2, "temperature": 20.0}, dict(scores), 0.0)
    worse = Entry({"alpha": 0.7, "temperature": 10.0}, {42: 0.70, 43: 0.69, 44: 0.71}, 0.0)
    for reference, expected in (({"temperature": 20.0}, t20), ({"temperature": 10.0}, t10), (None, t10)):
        for pool in itertools.permutations([t10, t20, worse]):
            d = decide(list(pool), reference)
            assert d.entries[d.winner] is expected
            assert d.tied == 1 and d.against[0].diff == 0
    d = decide([t20, t10, worse], {"temperature": 20.0})
    assert d.rule == "tie settled by the point nearest the previous stage's winner"
    assert decide([t20, t10], None).rule == "tie settled by the values' sort order"


def test_a_clear_winner_is_named_with_its_interval_and_a_close_one_as_a_tie():
    best = Entry({"beta": 10.0}, {42: 0.80, 43: 0.81, 44: 0.82}, 0.0)
    far = Entry({"beta": 1.0}, {42: 0.70, 43: 0.70, 44: 0.71}, 0.0)
    near = Entry({"beta": 100.0}, {42: 0.81, 43: 0.79, 44: 0.815}, 0.0)
    d = decide([far, best], None)
    assert d.entries[d.winner] is best and d.rule == "clear" and d.tied == 0
    evidence = d.to_json()
    assert evidence["n"] == 3 and evidence["mean"] == pytest.approx(0.81)
    assert evidence["runner_up"]["values"] == {"beta": 1.0}
    assert evidence["diff"]["lo"] > 0
    assert "ahead of every other candidate" in said(evidence, "dev")
    d = decide([near, far, best], None)
    assert d.entries[d.winner] is best and d.tied == 1 and d.rule == "tie settled by the higher seed mean"
    text = said(d.to_json(), "dev")
    assert text.startswith("dev 81.00 (1.00) on 3 seeds; runner-up 80.50") and "tied with 1 of 2" in text


def test_single_runs_say_that_the_search_cannot_tell():
    d = decide([Entry({"a": 1}, {42: 0.7}, 0.0), Entry({"a": 2}, {42: 0.69}, 0.0)], None)
    assert d.untested == 1 and d.tied == 0
    assert "too few seeds to tell its candidates apart" in said(d.to_json(), "dev")
    alone = decide([Entry({"a": 1}, {}, 0.75)], None)  # a record without seeds: its score
    assert alone.rule == "alone" and alone.to_json()["mean"] == 0.75 and "no other candidate" in said(
        alone.to_json(), "dev")


def test_distance_counts_decades_for_positive_values_and_plain_gaps_otherwise():
    assert distance({"lr": 2e-4, "gamma_g": 0.0, "method": "fsd"}, {"lr": 2e-5, "gamma_g": 0.5, "method": "vkd"}) \
        == pytest.approx(1.5)
    assert distance({"lr": 2e-4}, None) == 0.0


def test_the_ranking_split_error_is_the_binomial_one_for_accuracy():
    assert binomial_error(0.8, 1000) == pytest.approx(0.012649, rel=1e-4)  # SEARCH_NOISE.md: 1.26 points
    assert "1.26 points (binomial, at 80.0)" in split_error_line("accuracy", "holdout", 1000, 0.8)
    assert "bootstrap" in split_error_line("mcc", "dev", 1043, None)


def test_the_summary_and_the_report_show_a_stage_named_with_its_evidence(tmp_path):
    from fsd.tuning.plan.ledger import Ledger
    from fsd.tuning.results.report import stage_rows
    from fsd.tuning.results.summary import noise_lines, summary_table
    from search_spaces import get_schedule

    best = Entry({"alpha": 0.2, "temperature": 10.0, "lr": 2e-4}, {42: 0.78, 43: 0.76, 44: 0.77}, 0.0)
    other = Entry({"alpha": 0.7, "temperature": 10.0, "lr": 2e-4}, {42: 0.77, 43: 0.755, 44: 0.765}, 0.0)
    d = decide([other, best], None)
    ledger = Ledger(tmp_path / "sst2-vkd")
    ledger.data.update(search={"select_on": "dev"}, majority={"eval/score": 0.5092},
                       ranking={"split": "dev", "rows": 872, "score": "accuracy"}, best={"score": 0.77})
    ledger.data["stages"]["vkd"] = {"status": "done", "score": 0.77, "winner": best.values, "trials": 6,
                                    "evidence": d.to_json()}
    lines = summary_table(ledger, get_schedule("vkd", "sst2", "cpu")).splitlines()
    assert lines[1] == "| stage | winner | dev score | seeds | sd | vs runner-up [95%] | tied | paper |"
    assert lines[3] == "| majority class | the most frequent training label | 50.92 | | | | | - |"
    p = paired(best.seeds, other.seeds)
    assert lines[4] == (f"| vkd | alpha=0.2, temperature=10.0, lr=0.0002 | 77.00 | 3 | 1.00 | "
                        f"{100 * p.diff:+.2f} [{100 * p.lo:+.2f}, {100 * p.hi:+.2f}] | 1 of 1 | 90.92 |")  # a tie
    (line,) = noise_lines(ledger)
    assert "dev, 872 rows" in line and "1.43 points" in line  # sqrt(0.77 x 0.23 / 872)
    assert line.endswith("1 of the 1 stage winners that trained their own lead their runner-up by less than that "
                         "(said tied)")
    (row,) = [r for r in stage_rows("vkd", "sst2", ledger) if r["stage"] == "vkd"]
    assert row["seeds"] == "3" and row["tied"] == "1 of 1" and row["vs runner-up [95%]"].startswith("+0.67 [")


def test_expected_best_of_n_trials_is_dodges_formula_and_its_limits():
    import random

    from fsd.tuning.plan.evidence import expected_best

    scores = [0.5, 0.7, 0.72, 0.76, 0.8]
    assert expected_best(scores, 1) == pytest.approx(sum(scores) / 5)  # one draw: the mean
    assert expected_best(scores, 200) == pytest.approx(0.8, abs=1e-6)  # many draws: the best
    curve = [expected_best(scores, n) for n in range(1, 10)]
    assert curve == sorted(curve)  # never worse with more trials
    rng = random.Random(0)  # against simulation: the best of 3 draws with replacement
    simulated = sum(max(rng.choice(scores) for _ in range(3)) for _ in range(200_000)) / 200_000
    assert expected_best(scores, 3) == pytest.approx(simulated, abs=2e-3)


def test_the_fresh_seed_table_tests_the_searchs_best_against_each_start_point(tmp_path):
    from fsd.tuning.plan.ledger import Ledger
    from fsd.tuning.results.significance import greater, holm
    from fsd.tuning.results.summary import fresh_lines
    from fsd.tuning.search.fresh import configurations, untuned
    from search_spaces import get_schedule

    ledger = Ledger(tmp_path / "sst2-fsd")
    best = {"method": "fsdil", "alpha": 0.2, "lr": 2e-4, "beta": 10.0, "epochs": 1, "task": "sst2"}
    ledger.data.update(best={"stage": "fsdil", "winner": best}, majority={"eval/score": 0.5092})
    ledger.data["stages"]["vkd"] = {"status": "done", "winner": {"method": "vkd", "alpha": 0.2}, "score": 0.7}
    schedule = get_schedule("fsd", "sst2", "cpu")
    configs = configurations(ledger, schedule)
    assert list(configs) == ["the search's best", "vkd's winner", "untuned fsd", "untuned fsdil"]
    start = untuned(best, "fsd", schedule)
    assert start["method"] == "fsd" and start["alpha"] == 0.5 and start["beta"] == 1.0 and start["lam"] == 0.5
    assert start["lr"] == 2e-4 and start["epochs"] == 1 and start["task"] == "sst2"  # the cpu budget's
    # The paper preset searches epochs 3, 4 and three learning rates: the defaults. `--grid` that leaves one value
    # of each (the recorded SST-2 schedule: epochs=1, and one lr) is the students' training: the start point's.
    paper = get_schedule("fsd", "sst2", "paper")
    assert (untuned(best, "fsd", paper)["epochs"], untuned(best, "fsd", paper)["lr"]) == (3, 5e-5)
    one = get_schedule("fsd", "sst2", "paper", {"epochs": (1,), "lr": (1e-4,)})
    assert (untuned(best, "fsdil", one)["epochs"], untuned(best, "fsdil", one)["lr"]) == (1, 1e-4)
    several = get_schedule("fsd", "sst2", "paper", {"epochs": (1,), "lr": (1e-4, 2e-4, 3e-4)})
    assert (untuned(best, "fsdil", several)["epochs"], untuned(best, "fsdil", several)["lr"]) == (1, 5e-5)
    s = {"1001": 0.76, "1002": 0.75, "1003": 0.77}
    u = {"1001": 0.5092, "1002": 0.74, "1003": 0.75}
    v = {"1001": 0.70, "1002": 0.72, "1003": 0.69}
    ledger.data["fresh"] = {"seeds": [1001, 1002, 1003], "runs": {
        "the search's best": {"method": "fsdil", "scores": s}, "vkd's winner": {"method": "vkd", "scores": v},
        "untuned fsd": {"method": "fsd", "scores": u}}}
    lines = fresh_lines(ledger)
    assert lines[0] == "was the search worth it: dev x 100 on 3 seeds no search used (1001-1003)"
    p = holm([greater(list(s.values()), list(x.values()), [1, 2, 3], [1, 2, 3])[0] for x in (v, u)])
    assert lines[4].startswith("| vkd's winner (vkd) | 70.33 (1.53) | +5.67 | " + f"{p[0]:.3f} (paired t)")
    assert lines[5].endswith(f"| {p[1]:.3f} (paired t) | 1 of 3 |")  # one seed collapsed to the majority class


def test_a_lead_under_the_ranking_splits_error_is_a_tie_even_with_an_interval_clear_of_zero():
    """fsdl on the noise-aware grid: +0.27 on 3 seeds with an interval clear of 0, on 1,000 holdout rows whose
    binomial error is about 1.3 points; it trailed on fresh seeds. The margin makes such a lead a tie."""
    lead = Entry({"beta": 10.0}, {42: 0.770, 43: 0.771, 44: 0.773}, 0.0)
    runner = Entry({"beta": 1.0}, {42: 0.767, 43: 0.769, 44: 0.770}, 0.0)
    plain = decide([runner, lead], None)
    assert plain.against[0].lo > 0 and plain.tied == 0 and plain.rule == "clear" and plain.margin == 0.0
    d = decide([runner, lead], None, accuracy_rows=1000)
    assert d.entries[d.winner] is lead  # the margin changes what is said, never who wins
    assert d.margin == pytest.approx(math.sqrt(0.7713333 * (1 - 0.7713333) / 1000), rel=1e-5)
    assert d.tied == 1 and d.rule == "tie settled by the higher seed mean"
    text = said(d.to_json(), "holdout")
    assert "tied with 1 of 1 (interval holds 0, or lead under 1.33: the split's sampling error; tie settled" in text
    # A lead beyond the margin is still judged by its interval; one under it ties even on a single seed.
    far = Entry({"beta": 0.1}, {42: 0.70, 43: 0.71, 44: 0.705}, 0.0)
    assert decide([far, lead], None, accuracy_rows=1000).rule == "clear"
    one = decide([Entry({"a": 1}, {42: 0.770}, 0.0), Entry({"a": 2}, {42: 0.765}, 0.0)], None, accuracy_rows=1000)
    assert one.tied == 1 and one.untested == 0
    # With more rows the error shrinks below the lead: on 100,000 rows +0.27 is told apart again.
    assert decide([runner, lead], None, accuracy_rows=100_000).tied == 0


def test_accuracy_rows_come_from_an_accuracy_ranking_split_only():
    from fsd.tuning.plan.evidence import accuracy_rows

    assert accuracy_rows({"split": "holdout", "rows": 1000, "score": "accuracy"}) == 1000
    assert accuracy_rows({"split": "dev", "rows": 1043, "score": "mcc"}) is None
    assert accuracy_rows(None) is None

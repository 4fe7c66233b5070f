"""The comparison tests (fsd/tuning/results/significance.py): Holm against a hand-computed example and its
known bounds (Benjamini-Hochberg below, Bonferroni above, the family-wise error rate kept on simulated
nulls); the one-sided tests against scipy and the t formula by hand, paired exactly when the seeds match."""

import math

import numpy as np
import pytest
from scipy import stats

from fsd.tuning.results.significance import PAIRED, WELCH, beats_every, greater, holm, shared_seeds, versus_each


def test_holm_by_hand():
    # Sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04, raised to 0.06: an
    # adjusted p never falls below that of a smaller raw p).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 0.5 x 2 caps at 1, and 0.6 may not fall below it
    assert holm([0.2]) == [0.2]  # a family of one is not corrected
    assert holm([]) == []


def test_holm_leaves_untested_entries_out_of_the_family():
    out = holm([0.01, math.nan, 0.04])
    assert math.isnan(out[1])
    assert [out[0], out[2]] == pytest.approx([0.02, 0.04])  # m = 2, not 3


def test_holm_lies_between_benjamini_hochberg_and_bonferroni():
    rng = np.random.default_rng(0)
    for m in (2, 3, 5, 12):
        for _ in range(50):
            p = rng.uniform(0, 0.2, m) ** 2
            adjusted = np.array(holm(p))
            assert np.all(adjusted >= p)
            assert np.all(adjusted <= np.minimum(1, m * p) + 1e-15)
            assert np.all(adjusted >= stats.false_discovery_control(p, method="bh") - 1e-15)
            order = np.argsort(p)
            assert np.all(np.diff(adjusted[order]) >= 0)


def test_holm_keeps_the_family_wise_error_rate_on_true_nulls():
    """Four true null hypotheses, 4,000 families: Holm at 0.05 rejects any in at most about 5% of them
    (exactly 1 - 0.9875^4 = 4.91% for independent uniform p-values); uncorrected, about 18.5%."""
    rng = np.random.default_rng(1)
    p = rng.uniform(size=(4000, 4))
    any_holm = np.mean([min(holm(row)) <= 0.05 for row in p])
    any_raw = np.mean((p <= 0.05).any(axis=1))
    assert abs(any_holm - (1 - 0.9875 ** 4)) < 0.01
    assert abs(any_raw - (1 - 0.95 ** 4)) < 0.02


def test_paired_when_the_seeds_match_in_any_order():
    a = [0.80, 0.74, 0.79, 0.77]  # seeds 42-45
    b_by_seed = {42: 0.78, 43: 0.73, 44: 0.76, 45: 0.76}
    seeds_b = [45, 42, 44, 43]  # another order: a restored Tuner lists its runs in its own
    b = [b_by_seed[s] for s in seeds_b]
    p, test, n = greater(a, b, [42, 43, 44, 45], seeds_b)
    d = np.array(a) - np.array([b_by_seed[s] for s in (42, 43, 44, 45)])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(4))
    assert (test, n) == (PAIRED, 4)
    assert p == pytest.approx(stats.t.sf(t, 3), rel=1e-9)
    assert p == pytest.approx(stats.ttest_rel(a, [b_by_seed[s] for s in (42, 43, 44, 45)],
                                              alternative="greater").pvalue)


def test_pairing_removes_the_luck_both_methods_share():
    """Seed 43 is bad for both: unpaired, its spread hides a steady lead; paired, the lead is clear."""
    a, b = [0.80, 0.60, 0.81, 0.79], [0.79, 0.59, 0.80, 0.78]
    seeds = [42, 43, 44, 45]
    paired, _, _ = greater(a, b, seeds, seeds)
    welch, test, _ = greater(a, b)
    assert test == WELCH and welch > 0.4
    assert paired < 1e-3


def test_welch_when_the_seeds_differ_or_are_unknown():
    a, b = [0.64, 0.66, 0.65], [0.60, 0.62, 0.615, 0.61]
    expected = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
    for seeds_b in (None, [42, 43, 44, 46]):  # one seed not in common: no pairing at all
        p, test, n = greater(a, b, [42, 43, 44], seeds_b)
        assert (test, n) == (WELCH, 3) and p == pytest.approx(expected)
    # Welch by hand: t = (0.65 - 0.61125) / sqrt(s_a^2/3 + s_b^2/4), Welch-Satterthwaite df
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    assert expected == pytest.approx(stats.t.sf(t, df), rel=1e-9)
    assert not shared_seeds([42, 42, 43], [42, 43, 43])  # a seed twice is not a pairing
    with pytest.raises(ValueError):
        greater(a, b, [42, 43], None)


def test_no_spread_takes_the_limit_of_t():
    seeds = [1, 2, 3]
    assert greater([0.7, 0.8, 0.9], [0.7, 0.8, 0.9], seeds, seeds)[0] == 0.5  # identical on every seed
    assert greater([0.75, 0.5, 1.0], [0.5, 0.25, 0.75], seeds, seeds)[0] == 0.0  # ahead by the same on each
    assert greater([0.5, 0.5], [0.6, 0.6])[0] == 1.0
    p, test, _ = greater([0.7, 0.75, 0.8], [0.5092] * 3)  # a baseline at the majority class on every seed
    assert test == WELCH and p == pytest.approx(stats.ttest_1samp([0.7, 0.75, 0.8], 0.5092,
                                                                   alternative="greater").pvalue)
    assert math.isnan(greater([0.7], [0.6, 0.5])[0])


def test_versus_each_corrects_over_every_baseline_and_beats_every_is_the_largest():
    seeds = {m: [42, 43, 44, 45, 46] for m in ("vkd", "rkd", "fsd")}
    scores = {"vkd": [0.70, 0.52, 0.71, 0.69, 0.70], "fsd": [0.75, 0.74, 0.76, 0.73, 0.75],
              "rkd": [0.74, 0.73, 0.76, 0.72, 0.745], "pkd": [0.51, 0.51, 0.52]}
    out = versus_each(scores, {**seeds, "pkd": [42, 43, 44]})
    assert [c.versus for c in out] == ["vkd", "rkd", "pkd"]
    raw = [stats.ttest_rel(scores["fsd"], scores["vkd"], alternative="greater").pvalue,
           stats.ttest_rel(scores["fsd"], scores["rkd"], alternative="greater").pvalue,
           stats.ttest_ind(scores["fsd"], scores["pkd"], equal_var=False, alternative="greater").pvalue]
    assert [c.test for c in out] == [PAIRED, PAIRED, WELCH]
    assert [c.p for c in out] == pytest.approx(raw)
    ranked = sorted(range(3), key=lambda i: raw[i])
    by_hand, running = [0.0] * 3, 0.0
    for k, i in enumerate(ranked):
        running = max(running, min(1.0, (3 - k) * raw[i]))
        by_hand[i] = running
    assert [c.p_holm for c in out] == pytest.approx(by_hand)
    assert beats_every(out) == pytest.approx(max(by_hand))
    assert beats_every(out) >= max(raw)  # never more confident than the weakest comparison


def test_no_claim_over_every_baseline_when_one_cannot_be_tested():
    out = versus_each({"fsd": [0.7, 0.8], "vkd": [0.6, 0.5], "pkd": [0.5]})
    assert out[1].test == "" and math.isnan(out[1].p_holm)
    assert out[0].p_holm == pytest.approx(out[0].p)  # the untested one is not in the family
    assert beats_every(out) is None and beats_every([]) is None

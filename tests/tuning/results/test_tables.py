"""The paper's Tables 4-8 (fsd/tuning/results/tables.py) against hand computations."""

import math

import pytest

from fsd.tuning.results import tables


def test_ablation_differences_and_p_values_by_hand():
    rows = tables.ablation({"fsd": [0.80, 0.82, 0.84], "fsd w/o G": [0.78, 0.79, 0.80], "fsd w/o LG": [0.83]})
    full, no_g, no_lg = rows
    assert full["dev score mean"] == pytest.approx(82.0) and full["dev score std"] == pytest.approx(2.0)
    assert "difference from fsd" not in full
    assert no_g["dev score mean"] == pytest.approx(79.0) and no_g["difference from fsd"] == pytest.approx(-3.0)
    # Welch by hand: t = (82 - 79) / sqrt(4/3 + 1/3) = 2.3238, df = (5/3)^2 / ((4/3)^2/2 + (1/3)^2/2) = 2.9412
    from scipy import stats

    t, df = 3 / math.sqrt(5 / 3), (5 / 3) ** 2 / ((4 / 3) ** 2 / 2 + (1 / 3) ** 2 / 2)
    assert no_g["p (fsd better)"] == pytest.approx(stats.t.sf(t, df), rel=1e-9)
    assert no_lg["difference from fsd"] == pytest.approx(1.0) and math.isnan(no_lg["p (fsd better)"])
    assert math.isnan(no_lg["dev score std"])


def test_ablation_pairs_the_shared_seeds_and_corrects_over_the_rows():
    seeds = [42, 43, 44]
    scores = {"fsd": [0.80, 0.70, 0.84], "fsd w/o G": [0.80, 0.70, 0.84], "fsd w/o LG": [0.78, 0.69, 0.80],
              "fsd w/o IL": [0.60, 0.62, 0.58]}
    rows = {r["method"]: r for r in tables.ablation(scores, seeds={m: seeds for m in scores})}
    from scipy import stats

    raw_lg = stats.ttest_rel(scores["fsd"], scores["fsd w/o LG"], alternative="greater").pvalue
    raw_il = stats.ttest_rel(scores["fsd"], scores["fsd w/o IL"], alternative="greater").pvalue
    assert rows["fsd w/o LG"]["test"] == "paired t" and rows["fsd w/o LG"]["p uncorrected"] == pytest.approx(raw_lg)
    assert rows["fsd w/o G"]["p uncorrected"] == 0.5  # the same score on every seed: t = 0
    # Holm over the three rows by hand: sorted raw p, times 3, 2, 1, never decreasing
    ordered = sorted([("fsd w/o G", 0.5), ("fsd w/o LG", raw_lg), ("fsd w/o IL", raw_il)], key=lambda x: x[1])
    running = 0.0
    for k, (label, raw) in enumerate(ordered):
        running = max(running, min(1.0, (3 - k) * raw))
        assert rows[label]["p (fsd better)"] == pytest.approx(running), label
    assert "Holm-corrected" in tables.TABLES["table4-ablation"] and "paired by seed" in tables.TABLES["table4-ablation"]


def test_batch_stability_is_the_std_of_the_means_across_sizes():
    rows = tables.batch_stability({"memory": {8: [0.80, 0.82], 16: [0.81], 32: [0.81], 64: [0.83]},
                                   "no memory": {64: [0.70], 8: [0.90], 16: [0.80], 32: [0.80]}})
    memory, plain = rows
    assert [memory[f"batch {b}"] for b in (8, 16, 32, 64)] == pytest.approx([81.0, 81.0, 81.0, 83.0])
    assert memory["std across batch sizes"] == pytest.approx(1.0)  # sqrt(((-0.5)^2 * 3 + 1.5^2) / 3)
    assert list(plain)[1:5] == ["batch 8", "batch 16", "batch 32", "batch 64"]  # sorted by size
    assert plain["std across batch sizes"] == pytest.approx(math.sqrt(200 / 3))


def test_structure_ranks_each_relation_and_averages_them():
    analyses = {"vkd": {"analysis/cka_diagonal_mean": 0.5, "analysis/reldiff_intra": 3.0,
                        "analysis/reldiff_local": 2.0},
                "fsd": {"analysis/cka_diagonal_mean": 0.7, "analysis/reldiff_intra": 1.0,
                        "analysis/reldiff_local": 2.0},
                "pkd": {"analysis/cka_diagonal_mean": 0.6, "analysis/reldiff_intra": 2.0,
                        "analysis/reldiff_local": 1.0}}
    rows = {r["method"]: r for r in tables.structure(analyses, {"vkd": 0.8, "fsd": 0.81, "pkd": 0.79})}
    assert rows["fsd"]["rank intra"] == 1 and rows["pkd"]["rank intra"] == 2 and rows["vkd"]["rank intra"] == 3
    assert rows["vkd"]["rank local"] == 2.5 and rows["fsd"]["rank local"] == 2.5  # a tie shares its mean rank
    assert rows["fsd"]["average rank"] == pytest.approx(1.75) and rows["pkd"]["average rank"] == pytest.approx(1.5)
    assert rows["vkd"]["average rank"] == pytest.approx(2.75)
    assert rows["fsd"]["dev score"] == pytest.approx(81.0) and rows["fsd"]["CKA diagonal"] == 0.7
    assert tables.ranks({"a": math.nan, "b": 1.0}) == {"a": 2.0, "b": 1.0}


def test_cost_is_per_sample_and_relative_to_vkd():
    rows = tables.cost({"vkd": {"params": 2e6, "train_s": 10.0, "samples": 1000, "eval_s": 2.0, "eval_rows": 500},
                        "fsd": {"params": 2.2e6, "train_s": 30.0, "samples": 2000, "eval_s": 2.0, "eval_rows": 500}})
    vkd, fsd = rows
    assert vkd["training time vs vkd"] == 1 and vkd["parameters (M)"] == 2.0
    assert fsd["training s per 1k samples"] == 15.0 and fsd["training time vs vkd"] == 1.5
    assert fsd["inference s per 1k rows"] == 4.0 and fsd["inference time vs vkd"] == 1.0
    assert fsd["parameters vs vkd"] == pytest.approx(1.1)
    assert "training time vs vkd" not in tables.cost({"fsd": rows and {"params": 1, "train_s": 1, "samples": 1,
                                                                       "eval_s": 1, "eval_rows": 1}})[0]


def test_markdown_and_csv_keep_every_column():
    rows = [{"method": "fsd", "x": 1.234, "y": math.nan}, {"method": "vkd", "z": 2}]
    text = tables.markdown(rows)
    assert text.splitlines()[0] == "| method | x | y | z |"
    assert "| fsd | 1.23 | - | - |" in text and "| vkd | - | - | 2 |" in text
    assert tables.to_csv(rows).splitlines()[0] == "method,x,y,z"

"""The comparison table: mean (std) x 100 per metric and method, the teacher row, the paper's figure,
and the one-sided Welch p-value of FSD over the best baseline, checked against direct numpy/scipy."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fsd.tuning.results.compare import experiment_name, majority, table


def _runs(scores):
    return [{"eval/score": s, "eval/accuracy": s} for s in scores]


def test_table_means_stds_teacher_and_p_value():
    runs = {"vkd": _runs([0.60, 0.62, 0.61]), "pkd": _runs([0.55, 0.56, 0.57]), "fsd": _runs([0.64, 0.66, 0.65])}
    markdown, rows, p = table("rte", runs, {"eval/score": 0.7, "eval/accuracy": 0.7})
    by = {r["method"]: r for r in rows}
    assert by["fsd"]["eval/score mean"] == pytest.approx(65.0)
    assert by["fsd"]["eval/score std"] == pytest.approx(np.std([64, 66, 65], ddof=1))
    assert by["teacher"]["eval/score mean"] == pytest.approx(70.0) and by["teacher"]["paper"] == 66.79
    assert by["vkd"]["paper"] == 65.40
    expected = stats.ttest_ind([0.64, 0.66, 0.65], [0.60, 0.62, 0.61], equal_var=False, alternative="greater")
    assert p == pytest.approx(expected.pvalue)  # against vkd, the best baseline, not pkd
    assert "| fsd | 3 | 65.00 (1.00) | 65.00 (1.00) | 66.61 |" in markdown
    assert "fsd > vkd" in markdown and f"p = {expected.pvalue:.4f}" in markdown


def test_no_p_value_without_fsd_or_with_one_seed():
    assert table("rte", {"vkd": _runs([0.6, 0.7]), "pkd": _runs([0.5, 0.6])}, None)[2] is None
    assert table("rte", {"vkd": _runs([0.6]), "fsd": _runs([0.7])}, None)[2] is None


def test_seed_runs_are_named_by_what_they_run():
    """A killed comparison finds its own Ray experiment again; other seeds or another winner get a new one."""
    config = {"alpha": 0.7, "temperature": 5.0, "lr": 5e-5}
    name = experiment_name("rte", "vkd", config, [42, 43, 44])
    assert name.startswith("rte-compare-vkd-")
    assert experiment_name("rte", "vkd", dict(reversed(config.items())), [42, 43, 44]) == name
    assert experiment_name("rte", "vkd", config, [42, 43, 44, 45]) != name
    assert experiment_name("rte", "vkd", {**config, "alpha": 0.2}, [42, 43, 44]) != name
    assert experiment_name("rte", "fsd", config, [42, 43, 44]) != name


def test_majority_row_is_the_most_frequent_training_label(glue_dir):
    """The floor row against a plain count of the TSV files' label column (RTE), on the rows the runs saw."""
    def labels(split):
        lines = (Path(glue_dir) / "RTE" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
        return [line.split("\t")[-1] for line in lines if line]

    train, dev = labels("train"), labels("dev")
    for rows in (None, 7):
        top = Counter(train[:rows]).most_common(1)[0][0]
        expected = sum(label == top for label in dev[:100]) / 100
        got = majority("rte", glue_dir, rows, 100)
        assert got == {"eval/accuracy": pytest.approx(expected), "eval/score": pytest.approx(expected)}
    assert majority("stsb", glue_dir, None, None) is None


def test_table_shows_the_majority_floor_without_testing_it():
    runs = {"vkd": _runs([0.60, 0.62]), "fsd": _runs([0.64, 0.66])}
    markdown, rows, p = table("rte", runs, None, {"eval/score": 0.5, "eval/accuracy": 0.5})
    assert "| majority class | 0 | 50.00 | 50.00 | - |" in markdown
    assert [r["method"] for r in rows] == ["majority class", "vkd", "fsd"]
    assert p == pytest.approx(stats.ttest_ind([0.64, 0.66], [0.60, 0.62], equal_var=False,
                                              alternative="greater").pvalue)


def test_the_tables_show_glue_metrics_not_losses_or_running_bests():
    from fsd.tuning.results.compare import table_metrics

    row = {"eval/score": 0.8, "eval/acc": 0.8, "eval/loss": 0.4, "eval/best_loss": 0.3, "eval/best_score": 0.9,
           "eval/rows": 872.0, "eval_mm/acc": 0.7, "eval_mm/loss": 0.5, "train/loss": 0.2}
    assert table_metrics(row) == {"eval/score": 0.8, "eval/acc": 0.8, "eval_mm/acc": 0.7}

"""The comparison table: mean (std) x 100 per metric and method, the teacher row, the paper's figure, and
FSD's one-sided tests against every baseline (paired by seed when the seeds match, Holm-corrected), checked
against direct numpy/scipy."""

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
    # Both baselines tested; pkd's p (far smaller, doubled by Holm) stays below vkd's, the largest
    assert p == pytest.approx(expected.pvalue)
    assert "| fsd | 3 | 65.00 (1.00) | 65.00 (1.00) | 66.61 |" in markdown
    assert "fsd > vkd" in markdown and f"p = {expected.pvalue:.4f}" in markdown


def test_fsd_is_tested_against_every_baseline_paired_by_seed_and_corrected():
    """Not only against the baseline with the best mean: pkd's mean is lower than vkd's, but its seeds vary
    with fsd's less, so its corrected p is the largest and answers "fsd beats every baseline"."""
    seeds = [42, 43, 44, 45]
    fsd, vkd, pkd = [0.70, 0.76, 0.72, 0.78], [0.62, 0.74, 0.66, 0.76], [0.69, 0.71, 0.71, 0.70]
    runs = {"vkd": _runs(vkd), "pkd": _runs(pkd), "fsd": _runs(fsd)}
    markdown, _, p = table("rte", runs, None, None, {m: seeds for m in runs})
    p_vkd = stats.ttest_rel(fsd, vkd, alternative="greater").pvalue
    p_pkd = stats.ttest_rel(fsd, pkd, alternative="greater").pvalue
    assert p_vkd < p_pkd  # so the largest corrected p is pkd's: max(2 * p_vkd, p_pkd)
    holm_vkd, holm_pkd = min(1, 2 * p_vkd), max(min(1, 2 * p_vkd), p_pkd)
    assert p == pytest.approx(holm_pkd)
    assert "paired by seed where both ran the same seeds (else Welch), Holm-corrected" in markdown
    assert f"- fsd > vkd: paired t over 4 seeds, p = {holm_vkd:.4f} (uncorrected {p_vkd:.4f})" in markdown
    assert f"- fsd > pkd: paired t over 4 seeds, p = {holm_pkd:.4f} (uncorrected {p_pkd:.4f})" in markdown
    assert f"fsd better than every baseline: p = {holm_pkd:.4f} (the largest corrected p)" in markdown
    # A seed of pkd's lost (its run failed): pkd's scores are no longer paired, vkd's still are.
    lost = table("rte", {**runs, "pkd": _runs(pkd[:3])}, None, None, {**{m: seeds for m in runs}, "pkd": seeds[:3]})
    assert "- fsd > pkd: Welch t, p = " in lost[0] and "- fsd > vkd: paired t over 4 seeds" in lost[0]


def test_no_p_value_without_fsd_or_with_one_seed():
    assert table("rte", {"vkd": _runs([0.6, 0.7]), "pkd": _runs([0.5, 0.6])}, None)[2] is None
    assert table("rte", {"vkd": _runs([0.6]), "fsd": _runs([0.7])}, None)[2] is None
    one_baseline_short = table("rte", {"vkd": _runs([0.6]), "rkd": _runs([0.5, 0.6]), "fsd": _runs([0.7, 0.8])}, None)
    assert one_baseline_short[2] is None  # "beats every baseline" cannot be said of one never tested
    assert "- fsd > vkd: not tested (fewer than 2 seeds)" in one_baseline_short[0]
    assert "fsd better than every baseline: not tested" in one_baseline_short[0]


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


def test_the_tables_are_read_from_what_the_comparison_ran(tmp_path, glue_dir):
    """results/compare.py runs nothing: given the runs of a comparison, it writes its table files and logs them
    in the comparison's MLflow run (here a stand-in outbox that keeps what it is asked)."""
    import json

    from fsd.tuning.plan.spec import SearchSpec
    from fsd.tuning.results.compare import write_tables
    from fsd.tuning.search.comparison import Comparison
    from fsd.tuning.search.seed_runs import SeedRun

    class Outbox:
        def __init__(self):
            self.calls = []

        def do(self, op, *args):
            self.calls.append((op, *args))

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "fsd_teacher.json").write_text(json.dumps({"task": "rte", "dev": {"eval/score": 0.7}}))
    config = {"task": "rte", "teacher": str(teacher), "method": "vkd", "data_dir": glue_dir, "max_eval_samples": 100}
    scores = {"vkd": (0.60, 0.62), "fsd": (0.64, 0.67)}
    runs = {m: [SeedRun({"eval/score": s, "eval/accuracy": s}, None, {}, [], 42 + i) for i, s in enumerate(values)]
            for m, values in scores.items()}
    outbox = Outbox()
    ran = Comparison(tmp_path, ["vkd", "fsd"], {m: ({**config, "method": m}, str(teacher)) for m in runs}, runs, {}, {},
                     "run-1", outbox)
    spec = SearchSpec(task="rte", method="fsd", storage=str(tmp_path), mlflow_uri="", teacher=str(teacher),
                      data_dir=glue_dir)
    text = write_tables(spec, ran)
    markdown, _, p = table("rte", {m: [r.dev for r in rs] for m, rs in runs.items()}, {"eval/score": 0.7},
                           majority("rte", glue_dir, None, 100), {m: [42, 43] for m in runs})
    assert text.startswith(markdown) and (tmp_path / "compare.md").read_text() == markdown + "\n"
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["methods"] == ["vkd", "fsd"] and saved["seeds"] == {"vkd": [42, 43], "fsd": [42, 43]}
    assert saved["p_value"] == pytest.approx(p)
    ((op, run_id, metrics, files),) = outbox.calls
    assert (op, run_id) == ("log_analysis", "run-1") and metrics["compare/p_value"] == pytest.approx(p)
    assert str(tmp_path / "compare.md") in files

"""glue_metrics against formulas written out here (not scikit-learn's code path); the metric names spelled only
in fsd/metrics.py."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from fsd.metrics import glue_metrics


def _counts(p, y):
    tp = np.sum((p == 1) & (y == 1))
    fp = np.sum((p == 1) & (y == 0))
    fn = np.sum((p == 0) & (y == 1))
    tn = np.sum((p == 0) & (y == 0))
    return tp, fp, fn, tn


def _ranks(x):
    order = np.argsort(x)
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    return r


rng = np.random.default_rng(0)
P = rng.integers(0, 2, 200)
Y = np.where(rng.random(200) < 0.7, P, 1 - P)


def test_mrpc_f1_accuracy_mean():
    tp, fp, fn, tn = _counts(P, Y)
    acc = (tp + tn) / len(Y)
    f1 = 2 * tp / (2 * tp + fp + fn)
    m = glue_metrics("mrpc", P, Y)
    assert m["accuracy"] == pytest.approx(acc)
    assert m["f1"] == pytest.approx(f1)
    assert m["score"] == pytest.approx((acc + f1) / 2)


def test_cola_matthews():
    tp, fp, fn, tn = _counts(P, Y)
    mcc = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert glue_metrics("cola", P, Y)["score"] == pytest.approx(mcc)


def test_logits_are_argmaxed():
    logits = rng.normal(size=(50, 3))
    gold = rng.integers(0, 3, 50)
    assert glue_metrics("mnli", logits, gold)["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == gold))


def test_stsb_mean_of_pearson_and_spearman():
    y = rng.random(100) * 5
    p = y + rng.normal(size=100)  # continuous: no ties
    pearson = np.corrcoef(p, y)[0, 1]
    spearman = np.corrcoef(_ranks(p), _ranks(y))[0, 1]
    m = glue_metrics("stsb", p[:, None], y)
    assert m["pearson"] == pytest.approx(pearson)
    assert m["spearman"] == pytest.approx(spearman)
    assert m["score"] == pytest.approx((pearson + spearman) / 2)


def test_constant_regression_output_scores_zero_not_nan():
    m = glue_metrics("stsb", np.ones(10), np.arange(10.0))
    assert m["score"] == 0.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="predictions"):
        glue_metrics("rte", P[:10], Y)


# ------------------------------------------------------------------------------------ the metric names' one home
ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "fsd" / "metrics.py"


def metric_names(source: str) -> dict[str, str]:
    """The module-level names of `source` bound to a metric name (a string such as "eval/score") -> that string."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) \
                and re.fullmatch(r"[a-z_]+/[a-z_]+", node.value.value):
            out.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return out


def spelled_out(source: str, literals: set[str]) -> list[tuple[int, str]]:
    """(line, literal) for each string of `source` (f-strings' parts included) that is one of `literals`."""
    return sorted((node.lineno, node.value) for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Constant) and node.value in literals)


def test_metric_names_are_spelled_only_in_fsd_metrics():
    names = metric_names(HOME.read_text())
    assert {"SCORE", "BEST_SCORE", "DEV_SCORE", "SAMPLES", "BUDGET"} <= set(names)
    assert len(set(names.values())) == len(names), "two constants for one metric name"
    found = {}
    for path in [*(ROOT / "fsd").rglob("*.py"), ROOT / "tune_main.py"]:
        if path != HOME and (hits := spelled_out(path.read_text(), set(names.values()))):
            found[path.relative_to(ROOT).as_posix()] = hits
    assert found == {}, f"metric names spelled out instead of read from fsd/metrics.py: {found}"


def test_a_metric_name_spelled_out_is_found():
    source = ('from fsd.metrics import SCORE\n'
              'best = result["eval/best_score"]\n'
              'line = f"{metrics[\'eval/score\']:.2f} at {SCORE}"\n'
              '"""A docstring naming eval/score in passing is prose."""\n')
    literals = set(metric_names(HOME.read_text()).values())
    assert spelled_out(source, literals) == [(2, "eval/best_score"), (3, "eval/score")]


def test_accuracy_is_scikit_learns_to_the_bit():
    """Accuracy is counted here (scikit-learn is not imported for it); on every size and class count it is the
    float scikit-learn's accuracy_score gives, so no recorded score moves."""
    from sklearn.metrics import accuracy_score

    for n in (1, 7, 64, 872, 1000, 9815):
        for classes in (2, 3):
            y, p = rng.integers(0, classes, n), rng.integers(0, classes, n)
            task = {2: "sst2", 3: "mnli"}[classes]
            assert glue_metrics(task, p, y)["accuracy"] == float(accuracy_score(y, p))


def test_a_trial_worker_imports_neither_scikit_learn_nor_scipy_stats():
    """A trial's worker imports the trainable's module tree at every start; scikit-learn and scipy.stats (about a
    second of it on 2 cores) come in only where a task's metric or a holdout split needs them."""
    import subprocess
    import sys

    code = ("import sys, fsd.tuning.search.trainable; "
            "print(sorted(n for n in ('sklearn', 'scipy.stats') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

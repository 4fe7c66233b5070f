"""The analyses against independent computations on small inputs: scikit-learn / scipy for the restoration
rate, direct linear_cka calls and a float64 numpy HSIC for the heat map, a numpy double loop for relation
difference; then analyse_pair end to end on a tiny BERT and real RTE dev rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from fsd.analysis import (
    analyse_pair,
    cka_heatmap,
    diagonal_mean,
    relation_difference,
    restoration_rate,
    save_analysis,
)
from fsd.cka import linear_cka


# ------------------------------------------------------------------------------------------ restoration rate
def _argmax(logits: np.ndarray) -> np.ndarray:
    """Class ids by a Python loop: the first index of each row's maximum."""
    return np.array([max(range(len(row)), key=lambda k: (row[k], -k)) for row in logits])


@pytest.mark.parametrize("classes,average", [(2, "binary"), (3, "macro")])
def test_restoration_rate_matches_sklearn(classes, average):
    rng = np.random.default_rng(classes)
    teacher = rng.normal(size=(40, classes))
    student = teacher + rng.normal(scale=0.8, size=teacher.shape)
    ref, pred = _argmax(teacher), _argmax(student)
    assert 0 < (ref != pred).sum() < 20 and len(set(ref)) == classes  # some, but not all, disagree
    p, r, f, _ = precision_recall_fscore_support(ref, pred, average=average)
    got = restoration_rate(student, teacher)
    assert got == pytest.approx({"precision": p, "recall": r, "f1": f, "agreement": accuracy_score(ref, pred)})


def test_restoration_rate_hand_made_binary():
    # teacher: 1 1 1 0 0; student: 1 0 1 1 0 -> tp 2, fp 1, fn 1: precision 2/3, recall 2/3, agreement 3/5
    teacher = [[0, 1], [0, 2], [-1, 1], [3, 0], [1, 0]]
    student = [[0, 5], [2, 1], [0, 1], [0, 1], [2, -2]]
    got = restoration_rate(student, teacher)
    assert got == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "agreement": 0.6})


def test_restoration_is_perfect_for_the_teacher_itself_even_without_positives():
    logits = np.array([[2.0, 1.0], [1.0, 0.0], [3.0, -1.0]])  # never class 1
    assert restoration_rate(logits, logits) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "agreement": 1.0}
    # A student collapsed to class 0 restores none of the teacher's positives: 0, not a vacuous 1.
    teacher = np.array([[0.0, 1.0], [1.0, 0.0], [3.0, -1.0]])
    assert restoration_rate(logits, teacher) == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "agreement": 2 / 3})


def test_restoration_rate_regression_matches_scipy():
    rng = np.random.default_rng(7)
    teacher = rng.normal(size=30)
    student = teacher + rng.normal(scale=0.5, size=30)
    got = restoration_rate(student[:, None], teacher[:, None], regression=True)
    assert got == pytest.approx({"pearson": pearsonr(student, teacher)[0],
                                 "spearman": spearmanr(student, teacher)[0]})
    assert restoration_rate(np.ones(5), teacher[:5], regression=True) == {"pearson": 0.0, "spearman": 0.0}


def test_restoration_rate_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        restoration_rate(np.zeros((4, 2)), np.zeros((5, 2)))


# ------------------------------------------------------------------------------------------ CKA heat map
def _hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Eq. 4-5 in float64 numpy: K = XX^T, L = YY^T, H = I - 11^T/m, HSIC = sum (HKH) * (HLH)."""
    m = x.shape[0]
    h = np.eye(m) - np.ones((m, m)) / m
    kc, lc = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(kc * lc) / np.sqrt(np.sum(kc * kc) * np.sum(lc * lc)))


def _batches(seed: int = 0, n: int = 4, lengths=(5, 3, 6), d_t: int = 6, d_s: int = 4):
    """Teacher / student batches of different padded lengths, random real lengths (>= 2), garbage in PAD rows."""
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(d_t, d_s))
    teacher, student, masks = [], [], []
    for l in lengths:
        t = rng.normal(size=(n, l, d_t))
        s = t @ proj + rng.normal(scale=1.0, size=(n, l, d_s))
        mask = np.zeros((n, l), dtype=np.int64)
        for i in range(n):
            mask[i, : rng.integers(2, l + 1)] = 1
        teacher.append(torch.tensor(t, dtype=torch.float32))
        student.append(torch.tensor(s, dtype=torch.float32))
        masks.append(torch.tensor(mask))
    return teacher, student, masks


def _flat_padded(h: torch.Tensor, mask: torch.Tensor, length: int) -> torch.Tensor:
    """Each sample's real tokens in a zero `[length, d]` block, flattened: `[n, length * d]`."""
    n, l, d = h.shape
    out = torch.zeros(n, length, d, dtype=h.dtype)
    out[:, :l] = h * mask[..., None].to(h.dtype)
    return out.reshape(n, -1)


def test_heatmap_entries_match_linear_cka_and_numpy_hsic():
    teacher, student, masks = _batches()
    length = max(t.shape[1] for t in teacher)
    got = cka_heatmap(teacher, student, masks)
    assert got.shape == (3, 3)
    want = np.array([[linear_cka(_flat_padded(teacher[i], masks[i], length),
                                 _flat_padded(student[j], masks[j], length)).item() for j in range(3)]
                     for i in range(3)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert diagonal_mean(got) == pytest.approx(np.mean([want[i, i] for i in range(3)]), abs=1e-5)
    assert 0.2 < diagonal_mean(got) < 0.99  # related but not identical features: a meaningful check
    x = _flat_padded(teacher[0], masks[0], length).double().numpy()
    y = _flat_padded(student[1], masks[1], length).double().numpy()
    assert got[0, 1] == pytest.approx(_hsic_cka(x, y), abs=1e-6)


def test_heatmap_of_identical_features_has_a_unit_diagonal():
    teacher, _, masks = _batches(seed=1)
    got = cka_heatmap(teacher, teacher, masks)
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, got.T, atol=1e-6)
    assert diagonal_mean(got) == pytest.approx(1.0, abs=1e-6)


def test_heatmap_drops_batches_of_another_size_and_ignores_padding():
    teacher, student, masks = _batches(seed=2)
    short_t, short_s, short_m = _batches(seed=3, n=3, lengths=(4,))
    base = cka_heatmap(teacher, student, masks)
    assert cka_heatmap(teacher + short_t, student + short_s, masks + short_m).shape == (3, 3)
    # Padding batch 0 by 3 more PAD positions (with garbage in them) changes nothing.
    pad_t = torch.cat([teacher[0], torch.randn(4, 3, 6)], dim=1)
    pad_s = torch.cat([student[0], torch.randn(4, 3, 4)], dim=1)
    pad_m = torch.cat([masks[0], torch.zeros(4, 3, dtype=torch.long)], dim=1)
    padded = cka_heatmap([pad_t, *teacher[1:]], [pad_s, *student[1:]], [pad_m, *masks[1:]])
    np.testing.assert_allclose(padded, base, atol=1e-6)


# ------------------------------------------------------------------------------------------ relation difference
def _relation_np(t: np.ndarray, s: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Eq. 12-13 by double loops: mean over pairs i < j of |d(S_i, S_j) - d(T_i, T_j)|."""
    def euclidean(a, b):
        return float(np.sqrt(np.sum((a - b) ** 2)))

    def cosine(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    out = {}
    for name, d in (("euclidean", euclidean), ("cosine", cosine)):
        vt = [(t[i] * mask[i][:, None]).ravel() for i in range(len(t))]
        vs = [(s[i] * mask[i][:, None]).ravel() for i in range(len(s))]
        inter = [abs(d(vs[i], vs[j]) - d(vt[i], vt[j])) for i in range(len(t)) for j in range(i + 1, len(t))]
        out[f"inter_{name}"] = float(np.mean(inter))
        per_sample = []
        for i in range(len(t)):
            real = [k for k in range(t.shape[1]) if mask[i, k]]
            pairs = [abs(d(s[i, a], s[i, b]) - d(t[i, a], t[i, b])) for x, a in enumerate(real) for b in real[x + 1:]]
            if pairs:
                per_sample.append(np.mean(pairs))
        out[f"intra_{name}"] = float(np.mean(per_sample))
    return out


def _tiny(seed: int, n: int = 4, l: int = 5, d: int = 3):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, l, d))
    s = t + rng.normal(scale=0.7, size=(n, l, d))
    mask = np.zeros((n, l), dtype=np.int64)
    for i, real in enumerate(rng.integers(1, l + 1, size=n)):
        mask[i, :real] = 1
    mask[0, :2] = 1  # at least one sample with a token pair
    return t, s, mask


def test_relation_difference_matches_numpy_double_loop():
    t, s, mask = _tiny(0)
    got = relation_difference(torch.tensor(t), torch.tensor(s), torch.tensor(mask))
    assert got == pytest.approx(_relation_np(t, s, mask), rel=1e-9, abs=1e-12)
    assert all(v > 0 for v in got.values())


def test_relation_difference_averages_batches():
    batches = [_tiny(1), _tiny(2, n=3, l=4)]
    got = relation_difference([torch.tensor(b[0]) for b in batches], [torch.tensor(b[1]) for b in batches],
                              [torch.tensor(b[2]) for b in batches])
    each = [_relation_np(*b) for b in batches]
    assert got == pytest.approx({k: (each[0][k] + each[1][k]) / 2 for k in each[0]}, rel=1e-9)


def test_relation_difference_of_identical_features_is_zero():
    t, _, mask = _tiny(3)
    got = relation_difference(torch.tensor(t), torch.tensor(t), torch.tensor(mask))
    assert got == {"inter_euclidean": 0.0, "inter_cosine": 0.0, "intra_euclidean": 0.0, "intra_cosine": 0.0}


# ------------------------------------------------------------------------------------------ one student
@pytest.fixture(scope="module")
def rte_dev(tiny_bert, glue_dir):
    from fsd.data import Batches, load_task_data
    from fsd.models import load_tokenizer

    tok = load_tokenizer(tiny_bert)
    data = load_task_data("rte", tok, 64, glue_dir, None, 4, 12)
    return Batches(data["validation"], 4, tok.pad_token_id)  # three batches of four


def test_analyse_pair_of_the_teacher_with_itself(tiny_bert, rte_dev):
    from fsd.models import load_teacher

    teacher = load_teacher(tiny_bert, 2).train()
    result = analyse_pair(teacher, teacher, rte_dev, "rte", "cpu")
    m = result.metrics
    assert result.heatmap.shape == (3, 3)
    assert m["analysis/restoration_f1"] == 1.0 and m["analysis/restoration_agreement"] == 1.0
    assert m["analysis/cka_diagonal_mean"] == pytest.approx(1.0, abs=1e-5)
    assert all(abs(m[f"analysis/reldiff_{k}"]) < 1e-6 for k in
               ("inter_euclidean", "inter_cosine", "intra_euclidean", "intra_cosine"))
    assert teacher.training  # mode restored


def test_analyse_pair_of_a_student_and_save(tiny_bert, rte_dev, tmp_path):
    from matplotlib.image import imread

    from fsd.models import build_student, load_teacher

    teacher, student = load_teacher(tiny_bert, 2), build_student(tiny_bert, 2, 2)
    result = analyse_pair(student, teacher, rte_dev, "rte", "cpu", max_batches=2)
    keys = {"restoration_precision", "restoration_recall", "restoration_f1", "restoration_agreement",
            "cka_diagonal_mean", "reldiff_inter_euclidean", "reldiff_inter_cosine", "reldiff_intra_euclidean",
            "reldiff_intra_cosine"}
    assert set(result.metrics) == {f"analysis/{k}" for k in keys}
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.heatmap.shape == (2, 2) and 0 <= result.metrics["analysis/cka_diagonal_mean"] <= 1
    assert result.metrics["analysis/reldiff_inter_euclidean"] > 0

    png, metrics = save_analysis(result, tmp_path / "analysis")
    assert imread(png).shape == (500, 600, 4)  # FIGSIZE 6 x 5 inches at 100 dpi, RGBA
    assert json.loads(open(metrics).read()) == {"task": "rte", "metrics": result.metrics, "heatmap_shape": [2, 2]}


def test_analyse_checkpoint_of_a_run_once(tiny_bert, glue_dir, tmp_path):
    """A search's stage winner: the checkpoint's student against its teacher on the run's dev rows, saved
    beside it; a second call (a resumed search) reads the saved result instead of analysing again."""
    from fsd.analysis import METRICS_FILE, analyse_checkpoint
    from fsd.config import DistillConfig
    from fsd.models import build_student, load_teacher
    from fsd.train import distill, load_checkpoint, load_inputs

    config = DistillConfig.from_dict({"task": "rte", "method": "vkd", "teacher": tiny_bert, "student_layers": 2,
                                      "epochs": 1, "batch_size": 8, "max_train_samples": 16,
                                      "max_eval_samples": 12, "data_dir": glue_dir, "storage": str(tmp_path)})
    checkpoint = next(iter(distill(config))).save(tmp_path / "ckpt")
    metrics, files = analyse_checkpoint(tmp_path / "ckpt", tmp_path / "analysis")

    student = build_student(tiny_bert, 2, 2)
    student.load_state_dict(load_checkpoint(checkpoint)["student"])
    dev = next(iter(load_inputs(config).dev.values()))
    expected = analyse_pair(student, load_teacher(tiny_bert, 2), dev, "rte", "cpu").metrics
    assert metrics == pytest.approx(expected, abs=1e-6)
    assert sorted(p.rsplit("/", 1)[-1] for p in files) == ["analysis.json", "cka_heatmap.png"]

    saved = tmp_path / "analysis" / METRICS_FILE
    stamp = saved.stat().st_mtime_ns
    again, _ = analyse_checkpoint(tmp_path / "ckpt", tmp_path / "analysis")
    assert again == pytest.approx(metrics) and saved.stat().st_mtime_ns == stamp


def test_a_teacher_side_kept_from_one_analysis_gives_the_next_the_same_numbers(tiny_bert, rte_dev):
    """A search analyses each stage's winner against one teacher: the teacher's outputs of the first analysis
    serve the next ones (no teacher run), to the last bit; one over its byte limit is not kept."""
    from fsd.analysis import TeacherSide
    from fsd.models import build_student, load_teacher

    teacher = load_teacher(tiny_bert, 2)
    first, second = build_student(tiny_bert, 2, 2), build_student(tiny_bert, 3, 2)
    side = TeacherSide(1 << 30)
    filled = analyse_pair(first, teacher, rte_dev, "rte", "cpu", side=side)
    assert side.complete and len(side.states) == 3
    for student, before in ((first, filled), (second, analyse_pair(second, teacher, rte_dev, "rte", "cpu"))):
        again = analyse_pair(student, None, rte_dev, "rte", "cpu", side=side)  # no teacher: it would fail
        assert again.metrics == before.metrics
        assert np.array_equal(again.heatmap, before.heatmap)
    small = TeacherSide(1000)
    analyse_pair(first, teacher, rte_dev, "rte", "cpu", side=small)
    assert small.over and not small.complete and not small.states

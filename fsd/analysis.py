"""The paper's analyses of a distilled student (docs/method.md §8): restoration rate, CKA heat maps between teacher and
student penultimate features over dev mini-batches, and relation difference (Eq. 12-13)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from fsd.cka import linear_cka
from fsd.data import Batches
from fsd.models import load_teacher, run_model
from fsd.objectives.structure import flatten_features
from fsd.relations import mean_over_batches, relation_batch, relation_difference  # noqa: F401 (re-exported)
from fsd.tasks import Task, get_task
from fsd.teacher_source import model_fingerprint
from fsd.train import load_inputs, load_student

HEATMAP_FILE = "cka_heatmap.png"
METRICS_FILE = "analysis.json"
FIGSIZE = (6.0, 5.0)  # inches; at DPI 100 the PNG is 600 x 500 pixels
DPI = 100


# ------------------------------------------------------------------------------------------ restoration rate
def restoration_rate(student_logits, teacher_logits, regression: bool = False) -> dict[str, float]:
    """How well the student restores the teacher's predictions: the teacher's predictions are the reference.

    Args:
        student_logits, teacher_logits: `[N, C]` logits (array-like); for regression `[N]` or `[N, 1]` outputs.
        regression: score outputs by correlation instead of classes (STS-B).

    Returns:
        Classification: `precision`, `recall`, `f1` of the student's argmax against the teacher's argmax
        (two classes: positive class 1; more: the macro average over the classes either model predicts) and
        `agreement` (accuracy). A ratio with a zero denominator counts as 0.0 (scikit-learn's convention: a
        student that never predicts a class the teacher predicts has precision 0 there), except when neither
        model predicts class 1 of a binary task: nothing to restore and nothing wrongly restored, so 1.0.
        Regression: `pearson` and `spearman` correlation with the teacher's outputs (0.0 when either is
        constant, where the correlation is undefined).

    Raises:
        ValueError: the two inputs have different shapes, or classification logits are not `[N, C]`.
    """
    s = np.asarray(student_logits, dtype=np.float64)
    t = np.asarray(teacher_logits, dtype=np.float64)
    if regression:
        s, t = s.reshape(-1), t.reshape(-1)
        if s.shape != t.shape:
            raise ValueError(f"{len(s)} student outputs for {len(t)} teacher outputs")
        if len(s) < 2 or np.ptp(s) == 0 or np.ptp(t) == 0:
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": float(pearsonr(s, t)[0]), "spearman": float(spearmanr(s, t)[0])}
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"restoration_rate needs [N, C] logits of equal shape; got {s.shape} and {t.shape}")
    pred, ref = s.argmax(axis=1), t.argmax(axis=1)
    average = "binary" if s.shape[1] == 2 else "macro"
    if average == "binary" and not (ref == 1).any() and not (pred == 1).any():
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "agreement": 1.0}
    precision, recall, f1, _ = precision_recall_fscore_support(ref, pred, average=average, zero_division=0.0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "agreement": float(accuracy_score(ref, pred))}


# ------------------------------------------------------------------------------------------ CKA heat map
def _gram_factor(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`[n, n]` float64 `Z` with `Z Z^T = X X^T` for `X = flatten_features(h, mask)` (from `X^T = QR`, `Z = R^T`).

    Linear CKA depends on `X` only through its Gram matrix `X X^T`, so `linear_cka(Z_t, Z_s)` equals
    `linear_cka(X_t, X_s)` while each batch shrinks from `[n, l*d]` to `[n, n]`. Zero coordinates (PAD
    positions, or padding a batch to a longer length) add nothing to `X X^T`, so the value does not depend on
    the length a batch is padded to, and batches of different lengths can be paired.
    """
    x = flatten_features(h.double(), mask)
    z = torch.linalg.qr(x.T, mode="r")[1].T  # [n, min(n, l*d)]
    return F.pad(z, (0, x.shape[0] - z.shape[1]))


def _heatmap_from_factors(t_factors: Sequence[torch.Tensor], s_factors: Sequence[torch.Tensor]) -> np.ndarray:
    """CKA of every (teacher batch i, student batch j) pair from Gram factors; batches whose `n` differs from
    the first batch's are dropped."""
    keep = [i for i, z in enumerate(t_factors) if z.shape[0] == t_factors[0].shape[0]]
    if not keep:
        return np.zeros((0, 0))
    zt = torch.stack([t_factors[i].cpu() for i in keep])
    zs = torch.stack([s_factors[i].cpu() for i in keep])
    rows = [linear_cka(zt[i].expand_as(zs), zs) for i in range(len(keep))]
    return torch.stack(rows).numpy()


def cka_heatmap(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor],
                masks: Sequence[torch.Tensor | None] | None = None) -> np.ndarray:
    """The CKA heat map of the paper's Fig. 4 / Table 6 between teacher and student over dev mini-batches.

    Entry `(i, j) = linear_cka(flatten_features(T_i, mask_i), flatten_features(S_j, mask_j))`: the batch-level
    (local inter-feature, Eq. 7) CKA between teacher mini-batch i and student mini-batch j, PAD rows zeroed.
    The diagonal pairs the same samples. Rows i and columns j need the same samples count only, not the same
    length (CKA compares `[n, p]` with `[n, q]`), and zero-padding both to a common length gives the same
    value, so each batch keeps its own padded length. Computed in float64 from `[n, n]` Gram factors.

    Args:
        teacher_feats: per batch `[n, l, d_t]` penultimate hidden states.
        student_feats: per batch `[n, l, d_s]`, the same samples in the same order.
        masks: per batch `[n, l]` attention masks (nonzero for real tokens), or None for all tokens.

    Returns:
        `[B, B]` float64 matrix in [0, 1] (rows: teacher batches, columns: student batches), where B counts
        the batches with the first batch's `n` (a smaller last batch is dropped: CKA needs the same rows).

    Raises:
        ValueError: the lists differ in length, or a teacher and student batch differ in `[n, l]`.
    """
    masks = [None] * len(teacher_feats) if masks is None else list(masks)
    if not len(teacher_feats) == len(student_feats) == len(masks):
        raise ValueError(f"{len(teacher_feats)} teacher, {len(student_feats)} student batches and "
                         f"{len(masks)} masks")
    for t, s in zip(teacher_feats, student_feats, strict=True):
        if t.dim() != 3 or s.dim() != 3 or t.shape[:2] != s.shape[:2]:
            raise ValueError(f"teacher and student batches must be [n, l, d] with equal n, l; got "
                             f"{tuple(t.shape)} and {tuple(s.shape)}")
    zt = [_gram_factor(t, m) for t, m in zip(teacher_feats, masks, strict=True)]
    zs = [_gram_factor(s, m) for s, m in zip(student_feats, masks, strict=True)]
    return _heatmap_from_factors(zt, zs)


def diagonal_mean(matrix: np.ndarray) -> float:
    """Mean of the diagonal of a heat map (the paper's Table 6 figure); NaN for an empty matrix."""
    diag = np.diag(np.asarray(matrix, dtype=np.float64))
    return float(diag.mean()) if diag.size else math.nan


def plot_heatmap(matrix: np.ndarray, path: str | os.PathLike, title: str) -> str:
    """Write the heat map as a PNG (`FIGSIZE` at `DPI`): colour bar fixed to [0, 1], labelled axes, and the
    diagonal mean in the title. Uses the Agg canvas directly, so no global pyplot state is touched.

    Returns:
        the path written, as a string.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    m = np.asarray(matrix, dtype=np.float64)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(m if m.size else np.zeros((1, 1)), vmin=0.0, vmax=1.0, cmap="viridis",
                      interpolation="nearest", aspect="auto")
    fig.colorbar(image, ax=ax, label="linear CKA")
    ax.set_xlabel("student mini-batch")
    ax.set_ylabel("teacher mini-batch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{title}\ndiagonal mean {diagonal_mean(m):.3f}")
    fig.savefig(path, format="png")
    return str(path)


# ------------------------------------------------------------------------------------------ one student
@dataclass
class Analysis:
    """The analyses of one student against its teacher on the dev set.

    `metrics` is flat and MLflow-ready: `analysis/restoration_<precision|recall|f1|agreement>` (or
    `_pearson`, `_spearman` for regression), `analysis/cka_diagonal_mean`, `analysis/reldiff_<inter|intra>_
    <euclidean|cosine>`; `heatmap` the `[B, B]` CKA matrix (rows: teacher batches).
    """

    task: str
    metrics: dict[str, float]
    heatmap: np.ndarray


@dataclass
class TeacherSide:
    """What `analyse_pair` reads of the teacher, per dev batch: its logits, the Gram factor of its penultimate
    features and those features (for the relations). Filled by a first analysis while it stays within
    `limit` bytes (`complete` once every batch is in; `over` when it did not fit, and is not kept)."""

    limit: int
    logits: list[torch.Tensor] = field(default_factory=list)
    factors: list[torch.Tensor] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    size: int = 0
    complete: bool = False
    over: bool = False

    def add(self, logits: torch.Tensor, factor: torch.Tensor, states: torch.Tensor) -> None:
        if self.over or self.complete:
            return
        self.size += sum(t.numel() * t.element_size() for t in (logits, factor, states))
        if self.size > self.limit:
            self.logits, self.factors, self.states, self.over = [], [], [], True
            return
        self.logits.append(logits)
        self.factors.append(factor)
        self.states.append(states)


def analyse_pair(student: torch.nn.Module, teacher: torch.nn.Module | None, dev_batches: Batches, task: str | Task,
                 device: str | torch.device, max_batches: int | None = None,
                 side: TeacherSide | None = None) -> Analysis:
    """Run both models over the dev mini-batches (`dev_batches.epoch(0)`, no grad, eval mode, fp32) and compute
    restoration rate, the CKA heat map of the penultimate features, and relation difference.

    Only the logits and a `[n, n]` Gram factor per batch are kept, so memory does not grow with `l * d`.

    Args:
        student, teacher: sequence classifiers already on `device`; their train/eval mode is restored after.
        dev_batches: the dev split's batches (unshuffled: the same batches for both models).
        task: the task (regression decides how restoration is scored).
        device: where the batches go.
        max_batches: analyse only the first this many batches (None: all).
        side: the teacher's outputs on these batches: read when `complete` (`teacher` may then be None), else
            filled as the teacher runs, for the next analysis against the same teacher.

    Returns:
        an `Analysis`.
    """
    spec = get_task(task) if isinstance(task, str) else task
    device = torch.device(device)
    kept = side is not None and side.complete
    modes = (student.training, None if teacher is None else teacher.training)
    student.eval()
    if teacher is not None:
        teacher.eval()
    s_logits, t_logits, zt, zs, relations = [], [], [], [], []
    try:
        with torch.no_grad():
            for k, batch in enumerate(dev_batches.epoch(0)):
                if max_batches is not None and k >= max_batches:
                    break
                batch = {key: v.to(device) for key, v in batch.items()}
                mask = batch["attention_mask"]
                s_out = run_model(student, batch, hidden=True)
                if kept:
                    t_logit, t_factor, t_states = side.logits[k], side.factors[k], side.states[k].to(device)
                else:
                    t_out = run_model(teacher, batch, hidden=True)
                    t_logit, t_states = t_out.logits.float().cpu(), t_out.penultimate
                    t_factor = _gram_factor(t_states, mask).cpu()
                    if side is not None:  # kept in host memory: a GPU's is the trials'
                        side.add(t_logit, t_factor, t_states.cpu())
                s_logits.append(s_out.logits.float().cpu())
                t_logits.append(t_logit)
                zt.append(t_factor)
                zs.append(_gram_factor(s_out.penultimate, mask).cpu())
                relations.append(relation_batch(t_states, s_out.penultimate, mask))
    finally:
        student.train(modes[0])
        if teacher is not None:
            teacher.train(modes[1])
    if side is not None and not side.over and max_batches is None:
        side.complete = True
    if not s_logits:
        raise ValueError("analyse_pair got no dev batches")
    restoration = restoration_rate(torch.cat(s_logits).numpy(), torch.cat(t_logits).numpy(), spec.is_regression)
    heatmap = _heatmap_from_factors(zt, zs)
    metrics = {f"analysis/restoration_{k}": v for k, v in restoration.items()}
    metrics["analysis/cka_diagonal_mean"] = diagonal_mean(heatmap)
    metrics.update({f"analysis/reldiff_{k}": v for k, v in mean_over_batches(relations).items()})
    return Analysis(spec.name, metrics, heatmap)


def save_analysis(analysis: Analysis, folder: str | os.PathLike) -> list[str]:
    """Write the heat map (`cka_heatmap.png`) and `analysis.json` (`{"task": .., "metrics": {..}}`, NaN as
    null) into `folder`.

    Returns:
        the paths written (for MLflow artifacts).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png = plot_heatmap(analysis.heatmap, folder / HEATMAP_FILE,
                       f"{analysis.task.upper()}: teacher vs student penultimate CKA")
    metrics = {k: (None if math.isnan(v) else v) for k, v in analysis.metrics.items()}
    path = folder / METRICS_FILE
    shape = list(np.asarray(analysis.heatmap).shape)  # the report leaves out a one-cell heat map
    path.write_text(json.dumps({"task": analysis.task, "metrics": metrics, "heatmap_shape": shape}, indent=1) + "\n")
    return [png, str(path)]


def analyse_checkpoint(checkpoint: str | os.PathLike, folder: str | os.PathLike) -> tuple[dict[str, float], list[str]]:
    """Analyse a distillation checkpoint's student against its teacher on the dev set and save the result in
    `folder`; a folder that already holds one is read back instead (a resumed search analyses once).

    Returns:
        the metrics (NaN where undefined) and the paths of the files in `folder`.
    """
    folder = Path(folder)
    saved = folder / METRICS_FILE
    if saved.is_file():
        metrics = json.loads(saved.read_text())["metrics"]
        return {k: float("nan") if v is None else v for k, v in metrics.items()}, sorted(map(str, folder.iterdir()))
    student, config = load_student(checkpoint)
    inputs = load_inputs(config)
    task, device, dev = inputs.task, inputs.device, next(iter(inputs.dev.values()))
    # Every stage of a search analyses its winner against the same teacher on the same dev batches: the
    # teacher's side (6 of the 9 layers a 3-layer student's analysis runs) is computed once and kept, while small.
    key = (model_fingerprint(config.teacher), config.task, config.data_dir, config.max_seq_len,
           config.eval_batch_size, config.max_eval_samples, config.pad_to_max, str(device))
    if key not in _TEACHER_SIDE or not (_TEACHER_SIDE[key].complete or _TEACHER_SIDE[key].over):
        _TEACHER_SIDE.clear()  # another teacher's, or one an interrupted analysis left half filled
        _TEACHER_SIDE[key] = TeacherSide(TEACHER_SIDE_BYTES)
    side = _TEACHER_SIDE[key]
    teacher = None if side.complete else load_teacher(config.teacher, task.num_labels).to(device)
    analysis = analyse_pair(student.to(device), teacher, dev, task, device, side=side)
    return analysis.metrics, save_analysis(analysis, folder)


TEACHER_SIDE_BYTES = 512 << 20  # the teacher's side kept between analyses up to this (SST-2's dev: about 70 MB)
_TEACHER_SIDE: dict[tuple, TeacherSide] = {}  # one: the last teacher's, in the driver of a search

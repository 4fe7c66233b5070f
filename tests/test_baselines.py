"""PKD, RKD and MiniLM losses against float64 numpy loops written from the papers' formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsd.objectives.baselines import (
    attention_kl_loss,
    pkd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    value_relation_loss,
)


def _smooth_l1(z):
    z = abs(z)
    return 0.5 * z * z if z < 1 else z - 0.5


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


# ---------------------------------------------------------------- PKD


def _pkd_np(ts, ss):
    total = 0.0
    for t, s in zip(ts, ss, strict=True):
        per = [np.sum((s[i] / np.linalg.norm(s[i]) - t[i] / np.linalg.norm(t[i])) ** 2) for i in range(len(t))]
        total += np.mean(per)
    return total


def test_pkd_matches_numpy():
    rng = np.random.default_rng(0)
    ts = [rng.normal(size=(6, 10)) for _ in range(3)]
    ss = [t + rng.normal(size=t.shape) * 0.8 for t in ts]
    got = pkd_loss([torch.tensor(t) for t in ts], [torch.tensor(s) for s in ss])
    assert got.item() == pytest.approx(_pkd_np(ts, ss), rel=1e-5)
    got32 = pkd_loss([torch.tensor(t, dtype=torch.float32) for t in ts], [torch.tensor(s, dtype=torch.float32)
                                                                          for s in ss])
    assert got32.item() == pytest.approx(_pkd_np(ts, ss), rel=1e-5)


def test_pkd_errors_are_clear():
    with pytest.raises(ValueError, match="same width"):
        pkd_loss([torch.randn(4, 8)], [torch.randn(4, 6)])
    with pytest.raises(ValueError, match="equally many"):
        pkd_loss([torch.randn(4, 8)] * 2, [torch.randn(4, 8)])
    with pytest.raises(ValueError):
        pkd_loss([], [])


# ---------------------------------------------------------------- RKD


def _rkd_dist_np(t, s):
    def psi(x):
        n = len(x)
        d = np.array([[np.linalg.norm(x[i] - x[j]) if i != j else 0.0 for j in range(n)] for i in range(n)])
        return d / d[d > 0].mean()

    a, b = psi(s), psi(t)
    return np.mean([_smooth_l1(z) for z in (a - b).ravel()])


def _rkd_angle_np(t, s):
    def angles(x):
        n = len(x)
        out = np.zeros((n, n, n))
        for a in range(n):
            for b in range(n):
                for c in range(n):
                    if b != a and c != a:
                        u, v = x[b] - x[a], x[c] - x[a]
                        out[a, b, c] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
        return out

    return np.mean([_smooth_l1(z) for z in (angles(s) - angles(t)).ravel()])


def _rkd_data(seed, n=7):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, 12)) + 3.0
    s = np.concatenate([t[:, :5], t[:, 5:] ** 2], axis=1)[:, :9] * 0.5 + rng.normal(size=(n, 9))
    s[0] *= 4  # a far point: some distance differences exceed 1, exercising both smooth-L1 branches
    return t, s


@pytest.mark.parametrize("seed", [0, 1])
def test_rkd_matches_numpy(seed):
    t, s = _rkd_data(seed)
    tt, st = torch.tensor(t), torch.tensor(s)
    dist, angle = _rkd_dist_np(t, s), _rkd_angle_np(t, s)
    assert rkd_distance_loss(tt, st).item() == pytest.approx(dist, rel=1e-5)
    assert rkd_angle_loss(tt, st).item() == pytest.approx(angle, rel=1e-5)
    assert rkd_loss(tt, st).item() == pytest.approx(dist + 2 * angle, rel=1e-5)
    assert rkd_loss(tt, st, 0.5, 3.0).item() == pytest.approx(0.5 * dist + 3 * angle, rel=1e-5)
    f32 = rkd_loss(tt.float(), st.float())
    assert f32.dtype == torch.float32 and f32.item() == pytest.approx(dist + 2 * angle, rel=1e-4)


def test_rkd_flattens_and_handles_tiny_and_duplicate_batches():
    torch.manual_seed(0)
    t = torch.randn(5, 3, 4)
    s = torch.randn(5, 6, requires_grad=True)
    assert rkd_loss(t, s).item() == pytest.approx(rkd_loss(t.reshape(5, 12), s).item(), rel=1e-6)
    one = torch.randn(1, 6, requires_grad=True)
    loss = rkd_loss(torch.randn(1, 8), one)
    loss.backward()
    assert loss.item() == 0.0 and bool((one.grad == 0).all())
    # Duplicate rows: zero distances off the diagonal must not produce NaN values or gradients.
    dup = torch.cat([s.detach()[:3], s.detach()[:1]]).requires_grad_(True)
    loss = rkd_loss(torch.cat([t[:3], t[:1]]), dup)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(dup.grad).all())


def test_rkd_gradients_reach_student_only():
    t = torch.randn(6, 10, requires_grad=True)
    s = torch.randn(6, 7, requires_grad=True)
    rkd_loss(t.detach(), s).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    with torch.no_grad():
        t_ng = torch.randn(6, 10)
    rkd_loss(t_ng, s).backward()


# ---------------------------------------------------------------- MiniLM


def _probs(rng, n, h, l, mask, sharp=1.0):
    logits = rng.normal(size=(n, h, l, l)) * sharp
    out = np.zeros_like(logits)
    for i in range(n):
        keys = mask[i].astype(bool)
        for a in range(h):
            for q in range(l):
                out[i, a, q, keys] = _softmax(logits[i, a, q, keys])  # PAD keys get exactly 0, as in BERT
    return out


def _attn_kl_np(t, s, mask):
    vals = []
    n, h, l, _ = t.shape
    for i in range(n):
        for a in range(h):
            for q in range(l):
                if mask[i, q]:
                    vals.append(sum(t[i, a, q, k] * (np.log(t[i, a, q, k]) - np.log(s[i, a, q, k]))
                                    for k in range(l) if t[i, a, q, k] > 0))
    return np.mean(vals)


def _value_rel_np(vt, vs, mask):
    vals = []
    n, h, l, _ = vt.shape
    for i in range(n):
        keys = mask[i].astype(bool)
        for a in range(h):
            rt = [_softmax(vt[i, a, q] @ vt[i, a][keys].T / np.sqrt(vt.shape[-1])) for q in range(l)]
            rs = [_softmax(vs[i, a, q] @ vs[i, a][keys].T / np.sqrt(vs.shape[-1])) for q in range(l)]
            for q in range(l):
                if mask[i, q]:
                    vals.append(np.sum(rt[q] * (np.log(rt[q]) - np.log(rs[q]))))
    return np.mean(vals)


def _mask(rng, n, l):
    mask = np.zeros((n, l), dtype=np.int64)
    for i in range(n):
        mask[i, : rng.integers(2, l + 1)] = 1
    return mask


@pytest.mark.parametrize("masked", [False, True])
def test_attention_kl_matches_numpy(masked):
    rng = np.random.default_rng(2)
    n, h, l = 3, 2, 6
    mask = _mask(rng, n, l) if masked else np.ones((n, l), dtype=np.int64)
    t, s = _probs(rng, n, h, l, mask, 2.0), _probs(rng, n, h, l, mask)
    got = attention_kl_loss(torch.tensor(t), torch.tensor(s), torch.tensor(mask) if masked else None)
    assert got.item() == pytest.approx(_attn_kl_np(t, s, mask), rel=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_value_relation_matches_numpy(masked):
    rng = np.random.default_rng(3)
    n, h, l = 3, 2, 6
    mask = _mask(rng, n, l) if masked else np.ones((n, l), dtype=np.int64)
    vt, vs = rng.normal(size=(n, h, l, 8)) * 2, rng.normal(size=(n, h, l, 4))
    got = value_relation_loss(torch.tensor(vt), torch.tensor(vs), torch.tensor(mask) if masked else None)
    assert got.item() == pytest.approx(_value_rel_np(vt, vs, mask), rel=1e-5)
    got32 = value_relation_loss(torch.tensor(vt, dtype=torch.float32), torch.tensor(vs, dtype=torch.float32),
                                torch.tensor(mask) if masked else None)
    assert got32.item() == pytest.approx(_value_rel_np(vt, vs, mask), rel=1e-4)


def test_minilm_pad_content_is_ignored_and_zero_probabilities_are_finite():
    rng = np.random.default_rng(4)
    n, h, l = 2, 2, 5
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    vt, vs = rng.normal(size=(n, h, l, 4)), rng.normal(size=(n, h, l, 3))
    vt2, vs2 = vt.copy(), vs.copy()
    pad = np.broadcast_to((mask == 0)[:, None, :], (n, h, l))
    vt2[pad] = 100.0
    vs2[pad] = -7.0
    am = torch.tensor(mask)
    a = value_relation_loss(torch.tensor(vt), torch.tensor(vs), am).item()
    assert a == pytest.approx(value_relation_loss(torch.tensor(vt2), torch.tensor(vs2), am).item(), rel=1e-10)
    # Student gives probability 0 where the teacher does not: large but finite, gradients finite.
    t = torch.tensor(_probs(rng, n, h, l, np.ones((n, l))))
    s = torch.zeros(n, h, l, l)
    s[..., 0] = 1.0
    s.requires_grad_(True)
    loss = attention_kl_loss(t, s, am)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(s.grad).all())


def test_minilm_gradients_reach_student_only():
    torch.manual_seed(5)
    vt = torch.randn(2, 2, 5, 6, requires_grad=True)
    vs = torch.randn(2, 2, 5, 3, requires_grad=True)
    am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    value_relation_loss(vt.detach(), vs, am).backward()
    assert vt.grad is None and vs.grad.abs().sum() > 0 and bool(torch.isfinite(vs.grad).all())
    assert bool((vs.grad[0, :, 3:] == 0).all())  # PAD rows neither query nor key
    logits = torch.randn(2, 2, 5, 5, requires_grad=True)
    with torch.no_grad():
        t = torch.randn(2, 2, 5, 5).softmax(-1)
    attention_kl_loss(t, logits.softmax(-1), am).backward()
    assert logits.grad.abs().sum() > 0


def test_minilm_shape_errors():
    with pytest.raises(ValueError):
        attention_kl_loss(torch.rand(2, 2, 4, 4), torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError):
        value_relation_loss(torch.rand(2, 2, 4, 8), torch.rand(2, 3, 4, 8))
    with pytest.raises(ValueError):
        value_relation_loss(torch.rand(2, 2, 4, 8), torch.rand(2, 2, 4, 8), torch.ones(2, 5))

"""FSDI (Eq. 6) and FSDL (Eq. 7) against float64 numpy loops written from docs/method.md §3-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsd.objectives.structure import flatten_features, intra_feature_loss, local_inter_feature_loss


def _cka_np(x, y):
    m = x.shape[0]
    h = np.eye(m) - np.ones((m, m)) / m
    kc, lc = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.sum(kc * lc) / np.sqrt(np.sum(kc * kc) * np.sum(lc * lc))


def _intra_np(ht, hs, mask=None):
    ckas = []
    for i in range(ht.shape[0]):
        rows = slice(None) if mask is None else mask[i].astype(bool)
        ckas.append(_cka_np(ht[i][rows], hs[i][rows]))
    return -np.log(np.mean(ckas) + 1e-8)


def _local_np(ht, hs, mask=None):
    n = ht.shape[0]
    vt, vs = np.zeros((n, ht[0].size)), np.zeros((n, hs[0].size))
    for i in range(n):
        a, b = ht[i].copy(), hs[i].copy()
        if mask is not None:
            for j in range(ht.shape[1]):
                if not mask[i, j]:
                    a[j], b[j] = 0.0, 0.0
        vt[i], vs[i] = a.reshape(-1), b.reshape(-1)
    return -np.log(_cka_np(vt, vs) + 1e-8)


def _data(seed, n=5, l=9, dt=8, ds=6):
    rng = np.random.default_rng(seed)
    ht = rng.normal(size=(n, l, dt))
    hs = 0.7 * ht[..., :ds] + rng.normal(size=(n, l, ds))
    mask = np.zeros((n, l), dtype=np.int64)
    for i in range(n):
        mask[i, : rng.integers(2, l + 1)] = 1  # right padding, as BERT batches are
    return ht, hs, mask


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_intra_matches_numpy(masked, seed):
    ht, hs, mask = _data(seed)
    am = torch.tensor(mask) if masked else None
    got = intra_feature_loss(torch.tensor(ht), torch.tensor(hs), am)
    assert got.dim() == 0
    assert got.item() == pytest.approx(_intra_np(ht, hs, mask if masked else None), rel=1e-5)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("n", [2, 5, 33])
def test_local_matches_numpy_with_real_batch_size(masked, n):
    ht, hs, mask = _data(n, n=n, l=6, dt=5, ds=4)
    am = torch.tensor(mask) if masked else None
    got = local_inter_feature_loss(torch.tensor(ht), torch.tensor(hs), am)
    assert got.item() == pytest.approx(_local_np(ht, hs, mask if masked else None), rel=1e-5)


def test_float32_inputs_close_to_float64():
    ht, hs, mask = _data(7)
    for fn in (intra_feature_loss, local_inter_feature_loss):
        want = fn(torch.tensor(ht), torch.tensor(hs), torch.tensor(mask)).item()
        got = fn(torch.tensor(ht, dtype=torch.float32), torch.tensor(hs, dtype=torch.float32), torch.tensor(mask))
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(want, rel=1e-4)


def test_mask_ignores_pad_content():
    ht, hs, mask = _data(8)
    ht2, hs2 = ht.copy(), hs.copy()
    ht2[mask == 0] = 50.0
    hs2[mask == 0] = -3.0
    am = torch.tensor(mask)
    for fn in (intra_feature_loss, local_inter_feature_loss):
        a = fn(torch.tensor(ht), torch.tensor(hs), am).item()
        b = fn(torch.tensor(ht2), torch.tensor(hs2), am).item()
        assert a == pytest.approx(b, rel=1e-10)


def test_flatten_features_zeroes_pad_rows_and_keeps_layout():
    h = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2) + 1
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    flat = flatten_features(h, mask)
    assert flat.shape == (2, 6)
    assert flat.tolist() == [[1, 2, 3, 4, 0, 0], [7, 8, 0, 0, 0, 0]]
    assert torch.equal(flatten_features(h), h.reshape(2, 6))
    with pytest.raises(ValueError):
        flatten_features(h.reshape(2, 6))


def test_identical_structures_give_near_zero_loss():
    torch.manual_seed(0)
    h = torch.randn(4, 10, 8)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    assert intra_feature_loss(h, 2 * h @ q).item() == pytest.approx(0.0, abs=1e-5)
    assert local_inter_feature_loss(h, h).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("fn", [intra_feature_loss, local_inter_feature_loss])
def test_gradient_reaches_student_not_detached_teacher(fn):
    torch.manual_seed(1)
    ht = torch.randn(4, 7, 6, requires_grad=True)
    hs = torch.randn(4, 7, 5, requires_grad=True)
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[0, 4:] = 0
    loss = fn(ht.detach(), hs, mask)
    loss.backward()
    assert ht.grad is None
    assert hs.grad is not None and bool(torch.isfinite(hs.grad).all()) and hs.grad.abs().sum() > 0
    assert bool((hs.grad[0, 4:] == 0).all())  # PAD positions get no gradient under the mask
    with torch.no_grad():
        ht_nograd = torch.randn(4, 7, 6)
    hs.grad = None
    fn(ht_nograd, hs, mask).backward()
    assert hs.grad.abs().sum() > 0


def test_local_single_sample_is_zero_and_connected():
    ht = torch.randn(1, 5, 4)
    hs = torch.randn(1, 5, 3, requires_grad=True)
    loss = local_inter_feature_loss(ht, hs)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert hs.grad is not None and bool((hs.grad == 0).all())
    half = local_inter_feature_loss(ht.half(), (hs.detach() * 1e4).half())
    assert half.item() == 0.0


def test_intra_degenerate_sample_counts_as_zero_without_nan():
    torch.manual_seed(2)
    ht = torch.randn(3, 6, 4)
    hs = torch.randn(3, 6, 5, requires_grad=True)
    mask = torch.ones(3, 6)
    mask[2, 1:] = 0  # one real token: CKA undefined, defined as 0
    loss = intra_feature_loss(ht, hs, mask)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(hs.grad).all())
    assert bool((hs.grad[2] == 0).all())
    a, b = ht.double().numpy(), hs.detach().double().numpy()
    want = -np.log(np.mean([_cka_np(a[0], b[0]), _cka_np(a[1], b[1]), 0.0]) + 1e-8)
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_shape_errors():
    with pytest.raises(ValueError):
        intra_feature_loss(torch.randn(2, 5, 3), torch.randn(2, 4, 3))
    with pytest.raises(ValueError):
        local_inter_feature_loss(torch.randn(2, 5, 3), torch.randn(3, 5, 3))


def test_flatten_padded_matches_a_batch_padded_to_length():
    from fsd.objectives.structure import flatten_padded

    torch.manual_seed(0)
    h, mask = torch.randn(3, 5, 4), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    longer = torch.cat([h, torch.randn(3, 3, 4)], dim=1)  # the same rows padded to 8 with PAD content
    long_mask = torch.cat([mask, torch.zeros(3, 3, dtype=mask.dtype)], dim=1)
    assert flatten_padded(h, mask, 8).shape == (3, 32)
    assert torch.equal(flatten_padded(h, mask, 8), flatten_features(longer, long_mask))

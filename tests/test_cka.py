"""Linear CKA against a float64 numpy implementation with an explicit centring matrix (docs/method.md §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsd.cka import linear_cka


def _cka_np(x: np.ndarray, y: np.ndarray) -> float:
    """Eq. 4-5 literally: K = XX^T, L = YY^T, H = I - 11^T/m, HSIC = sum (HKH) * (HLH)."""
    m = x.shape[0]
    h = np.eye(m) - np.ones((m, m)) / m
    kc, lc = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(kc * lc) / np.sqrt(np.sum(kc * kc) * np.sum(lc * lc)))


def _t(a: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(a, dtype=dtype)


def _random_mask(rng, n, m, low=2):
    mask = np.zeros((n, m), dtype=bool)
    for i in range(n):
        mask[i, : rng.integers(low, m + 1)] = True
        rng.shuffle(mask[i])
    return mask


@pytest.mark.parametrize("path", ["gram", "feature", "auto"])
@pytest.mark.parametrize("m,p,q", [(12, 5, 9), (40, 6, 3), (7, 30, 20)])
def test_matches_numpy(path, m, p, q):
    rng = np.random.default_rng(m + p + q)
    x, y = rng.normal(size=(m, p)), rng.normal(size=(m, q))
    y[:, :2] += x[:, :2]  # some shared structure so the value is not near 0
    got = linear_cka(_t(x), _t(y), path=path)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_cka_np(x, y), rel=1e-5)
    got32 = linear_cka(_t(x, torch.float32), _t(y, torch.float32), path=path)
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(_cka_np(x, y), rel=1e-4)


@pytest.mark.parametrize("path", ["gram", "feature"])
def test_masked_equals_cka_of_valid_rows(path):
    rng = np.random.default_rng(3)
    n, m = 6, 15
    x, y = rng.normal(size=(n, m, 4)), rng.normal(size=(n, m, 8))
    y[..., :4] += 0.5 * x
    mask = _random_mask(rng, n, m)
    got = linear_cka(_t(x), _t(y), mask=torch.tensor(mask), path=path)
    want = [_cka_np(x[i][mask[i]], y[i][mask[i]]) for i in range(n)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    # A 0/1 integer mask is the same mask; rows outside it do not matter at all.
    x2 = x.copy()
    x2[~mask] = 1e3
    got_int = linear_cka(_t(x2), _t(y), mask=torch.tensor(mask.astype(np.int64)), path=path)
    np.testing.assert_allclose(got_int.numpy(), want, rtol=1e-5)


def test_auto_path_choice_and_paths_agree():
    torch.manual_seed(0)
    for m, p, q in [(128, 16, 24), (8, 300, 200), (50, 25, 25)]:
        x, y = torch.randn(3, m, p, dtype=torch.float64), torch.randn(3, m, q, dtype=torch.float64)
        gram = linear_cka(x, y, path="gram")
        feat = linear_cka(x, y, path="feature")
        torch.testing.assert_close(gram, feat, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(linear_cka(x, y), gram, rtol=1e-10, atol=1e-12)


def test_batched_equals_looped():
    torch.manual_seed(1)
    x, y = torch.randn(2, 3, 10, 4), torch.randn(2, 3, 10, 6)
    got = linear_cka(x, y)
    assert got.shape == (2, 3)
    for a in range(2):
        for b in range(3):
            assert got[a, b].item() == pytest.approx(linear_cka(x[a, b], y[a, b]).item(), rel=1e-6)


def test_properties():
    torch.manual_seed(2)
    x = torch.randn(20, 8, dtype=torch.float64)
    y = x @ torch.randn(8, 5, dtype=torch.float64) + 0.3 * torch.randn(20, 5, dtype=torch.float64)
    base = linear_cka(x, y)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(y, x).item() == pytest.approx(base.item(), rel=1e-12)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    assert linear_cka(x @ q, y).item() == pytest.approx(base.item(), rel=1e-10)
    assert linear_cka(3.7 * x, 0.01 * y).item() == pytest.approx(base.item(), rel=1e-10)
    assert linear_cka(x + 5.0, y - 2.0).item() == pytest.approx(base.item(), rel=1e-10)
    vals = linear_cka(torch.randn(50, 12, 3), torch.randn(50, 12, 7))
    assert bool(((vals >= 0) & (vals <= 1)).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    torch.manual_seed(3)
    x = torch.randn(4, 128, 96) * 40  # Gram entries ~1e5 would overflow fp16 (max 65504)
    y = x[..., :48] + 20 * torch.randn(4, 128, 48)
    mask = torch.ones(4, 128, dtype=torch.bool)
    mask[:, 100:] = False
    ref = linear_cka(x, y, mask=mask)
    got = linear_cka(x.to(dtype), y.to(dtype), mask=mask)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, ref, atol=2e-2, rtol=0)


def _grad_of(fn, *inputs):
    inputs = [t.clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out.sum().backward()
    return out, [t.grad for t in inputs]


@pytest.mark.parametrize("path", ["gram", "feature"])
def test_degenerate_cases_are_zero_with_finite_gradients(path):
    x, y = torch.randn(5, 4), torch.randn(5, 3)
    cases = {
        "one valid row": (x, y, torch.tensor([0, 0, 1, 0, 0])),
        "no valid row": (x, y, torch.zeros(5, dtype=torch.bool)),
        "constant x": (torch.full((5, 4), 0.1), y, None),
        "constant x on valid rows": (torch.cat([torch.full((3, 4), 0.3), torch.randn(2, 4)]), y,
                                     torch.tensor([1, 1, 1, 0, 0])),
        "zero y": (x, torch.zeros(5, 3), None),
        "single row": (x[:1], y[:1], None),
    }
    for name, (a, b, mask) in cases.items():
        out, grads = _grad_of(lambda a, b, mask=mask: linear_cka(a, b, mask=mask, path=path), a, b)
        assert out.item() == 0.0, name
        for g in grads:
            assert bool(torch.isfinite(g).all()) and bool((g == 0).all()), name


def test_degenerate_rows_in_a_batch_do_not_poison_the_others():
    torch.manual_seed(4)
    x = torch.randn(3, 6, 4, requires_grad=True)
    y = torch.randn(3, 6, 5)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 1:] = False
    out = linear_cka(x, y, mask=mask)
    out.sum().backward()
    assert out[1].item() == 0.0 and out[0].item() > 0 and out[2].item() > 0
    assert bool(torch.isfinite(x.grad).all())
    assert bool((x.grad[1] == 0).all()) and x.grad[0].abs().sum() > 0


@pytest.mark.parametrize("path", ["gram", "feature"])
def test_gradcheck(path):
    torch.manual_seed(5)
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1, 1]])
    assert torch.autograd.gradcheck(lambda a, b: linear_cka(a, b, mask=mask, path=path), (x, y))


def test_gradients_reach_student_only_and_work_with_no_grad_teacher():
    torch.manual_seed(6)
    t = torch.randn(10, 6, requires_grad=True)
    s = torch.randn(10, 4, requires_grad=True)
    linear_cka(t.detach(), s).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    with torch.no_grad():
        t_nograd = torch.randn(10, 6) * 2
    s.grad = None
    linear_cka(t_nograd, s).backward()
    assert s.grad.abs().sum() > 0


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError):
        linear_cka(torch.randn(5, 3), torch.randn(5, 3), mask=torch.ones(4))
    with pytest.raises(ValueError):
        linear_cka(torch.randn(5, 3), torch.randn(5, 3), path="kernel")


def test_cka_against_a_fixed_side_equals_linear_cka():
    from fsd.cka import centred_gram, linear_cka_fixed

    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 40, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(12, 70, generator=g, dtype=torch.float64) * 3 + 1
    fixed = linear_cka_fixed(x, centred_gram(y))
    torch.testing.assert_close(fixed, linear_cka(x, y), rtol=1e-12, atol=1e-12)
    (gx,) = torch.autograd.grad(fixed, x)
    (gx_ref,) = torch.autograd.grad(linear_cka(x, y), x)
    torch.testing.assert_close(gx, gx_ref)
    assert linear_cka_fixed(x, centred_gram(torch.ones(12, 70, dtype=torch.float64))) == 0  # degenerate side


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e4])
def test_cka_against_a_fixed_side_keeps_a_large_common_offset_in_float32(offset):
    """float32 rows far from the origin: the Gram path's CKA is float64's to 1e-6 (its Gram formed after a
    shift; a raw Gram's centred part drowns in the offset's rounding), and all-equal rows are degenerate."""
    from fsd.cka import centred_gram, linear_cka_fixed

    rng = np.random.default_rng(7)
    y = rng.normal(size=(30, 400))
    x = (0.5 * y + 0.1 * rng.normal(size=(30, 400)) + offset).astype(np.float32)
    got = linear_cka_fixed(_t(x, torch.float32), centred_gram(_t(y, torch.float32)))
    assert got.item() == pytest.approx(_cka_np(x.astype(np.float64), y), abs=1e-6)
    same = _t(np.repeat(x[:1], 30, axis=0), torch.float32).requires_grad_(True)
    value = linear_cka_fixed(same, centred_gram(_t(y, torch.float32)))
    (grad,) = torch.autograd.grad(value, same)
    assert value.item() == 0 and torch.isfinite(grad).all()

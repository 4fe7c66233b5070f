"""VKD against a float64 numpy implementation written from docs/method.md Eq. 1-2."""

import numpy as np
import pytest
import torch

from fsd.objectives.kd import vkd_loss


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference(s, t, y, alpha, T):
    p = _softmax(s)
    ce = -np.mean(np.log(p[np.arange(len(y)), y]))
    pt, ps = _softmax(t / T), _softmax(s / T)
    kl = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    return alpha * ce + (1 - alpha) * T**2 * kl


@pytest.mark.parametrize("alpha,T", [(0.5, 10.0), (0.2, 5.0), (1.0, 20.0), (0.0, 1.0)])
def test_vkd_matches_formula(alpha, T):
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(16, 3)) * 3, rng.normal(size=(16, 3)) * 3
    y = rng.integers(0, 3, 16)
    got = vkd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                   torch.tensor(y), alpha, T)
    assert got.item() == pytest.approx(_reference(s, t, y, alpha, T), rel=1e-5)


def test_regression_uses_mse_to_label_and_to_teacher():
    rng = np.random.default_rng(2)
    s, t, y = rng.normal(size=(8, 1)), rng.normal(size=(8, 1)), rng.random(8) * 5
    got = vkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 0.3, 10.0, regression=True)
    want = 0.3 * np.mean((s[:, 0] - y) ** 2) + 0.7 * np.mean((s[:, 0] - t[:, 0]) ** 2)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # The reference code's softmax over one logit would make this term 0; ours must not be.
    assert vkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 0.0, 10.0, True).item() > 0


def test_gradient_reaches_student_only():
    s = torch.randn(4, 2, requires_grad=True)
    t = torch.randn(4, 2, requires_grad=True)
    vkd_loss(s, t, torch.tensor([0, 1, 1, 0]), 0.5, 10.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None

"""Linear centred kernel alignment (CKA, docs/method.md §3, paper Eq. 4-5), batched, maskable and NaN-free."""

from __future__ import annotations

from typing import Literal

import torch

CkaPath = Literal["auto", "gram", "feature"]


def linear_cka(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
               path: CkaPath = "auto") -> torch.Tensor:
    """Linear CKA with the biased HSIC estimator, batched over leading dimensions (Eq. 4-5).

    ```
    K = Xc Xc^T,  L = Yc Yc^T          (Xc, Yc: rows centred over the valid rows)
    HSIC(K, L) = sum_ab K_ab L_ab       (= tr(HKH HLH); the 1/(m-1)^2 factor cancels)
    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))
        = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)
    ```

    Two paths compute the same value: ``"gram"`` forms the `[m, m]` Gram matrices, ``"feature"`` the
    `[p, q]`, `[p, p]` and `[q, q]` cross-covariances. ``"auto"`` takes the feature path when
    `m > p + q` (its cost is `m (p + q)^2` against `m^2 (p + q)` for the Gram path), otherwise the Gram path.

    Args:
        x: `[..., m, p]`; y: `[..., m, q]` (`p != q` allowed), same leading dimensions and `m`.
        mask: optional `[..., m]` (bool or 0/1): the valid rows. Centring uses the mean over valid rows
            and invalid rows contribute nothing, i.e. the value is the CKA of the valid rows alone.
        path: ``"auto"``, ``"gram"`` or ``"feature"``.

    Returns:
        `[...]` CKA values in [0, 1], in float32 (float64 when an input is float64), whatever the input
        dtype (fp16 / bf16 inputs are upcast before any product).

    Degenerate cases: with fewer than two valid rows, or when X or Y is constant over the valid rows
    (up to rounding: centred energy below `(m * eps)^2` of the raw energy), HSIC(K, K) or HSIC(L, L) is 0
    and CKA is undefined; it is defined as 0.0 here, with zero (finite) gradients. The result is clamped
    to [0, 1] only to remove rounding (Cauchy-Schwarz bounds the exact value).

    Raises:
        ValueError: mismatched shapes or an unknown path.
    """
    if x.dim() < 2 or x.shape[:-1] != y.shape[:-1]:
        raise ValueError(f"linear_cka needs x [..., m, p] and y [..., m, q]; got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if mask is not None and mask.shape != x.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(x.shape[:-1])}, got {tuple(mask.shape)}")
    if path not in ("auto", "gram", "feature"):
        raise ValueError(f"unknown path {path!r}: choose 'auto', 'gram' or 'feature'")
    acc = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    m, p, q = x.shape[-2], x.shape[-1], y.shape[-1]
    if path == "auto":
        path = "feature" if m > p + q else "gram"

    w = None if mask is None else (mask != 0).to(acc).unsqueeze(-1)
    xn, x_ok = _centre_and_normalise(x.to(acc), w)
    yn, y_ok = _centre_and_normalise(y.to(acc), w)
    if path == "gram":
        hxy, hxx, hyy = _hsic_gram(xn, yn)
    else:
        hxy, hxx, hyy = _hsic_feature(xn, yn)
    return _ratio(hxy, hxx, hyy, x_ok & y_ok)


def centred_gram(y: torch.Tensor) -> torch.Tensor:
    """The `[m, m]` Gram of `y [m, q]` centred and scaled as `linear_cka` does (float32 or float64), or
    all zeros when `y` is degenerate: what `linear_cka_fixed` needs of a side that never changes."""
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    yn, ok = _centre_and_normalise(y.to(acc), None)
    return (yn @ yn.T) * ok.to(acc)


def linear_cka_fixed(x: torch.Tensor, gram_y: torch.Tensor) -> torch.Tensor:
    """`linear_cka(x, y)` for a `y` that never changes (the teacher memory), from `centred_gram(y)`: the
    `[m, m]` Gram of `y` is not recomputed at every step, and `x`'s Gram is centred as an `[m, m]` matrix
    (`H K H`) rather than `x` itself, so the only passes over the wide `x` are its shift and the matmul.
    Returns float64 (see `linear_cka_of_gram`)."""
    xa = x.to(gram_y.dtype)
    xa = xa - xa.detach().mean(dim=0)  # see linear_cka_of_gram: a shift leaves the value and gradient as they are
    return linear_cka_of_gram(xa @ xa.T, gram_y)


def linear_cka_of_gram(k: torch.Tensor, gram_y: torch.Tensor) -> torch.Tensor:
    """`linear_cka_fixed` from `x`'s Gram `k = x x^T [m, m]` (for a caller that needs that Gram for more
    than the CKA, e.g. the row norms on its diagonal).

    `x` should be shifted by a common row near its mean first (a detached mean will do): the centring here
    removes any common shift, so the value does not change, but a float32 Gram of rows that share a large
    offset keeps the offset's digits and rounds away the centred part, which the guard below would then
    call degenerate (a student memory 1000 units from the origin gave L_M = -log 1e-8 with zero gradient).

    The `[m, m]` side is computed in float64 and the result is float64: it costs nothing next to the Gram's
    product, and a CKA near 1 holds `1 - CKA` (the loss `-log CKA`, ~1e-3 for close memories) in float32
    only to a few percent.
    """
    # The rounding `k` carries is that of the dtype it was computed in, not float64's.
    eps = torch.finfo(k.dtype).eps
    k, gram_y = k.to(torch.float64), gram_y.to(torch.float64)
    kc = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
    hxx = kc.pow(2).sum()
    with torch.no_grad():  # a constant x centres to rounding noise, not to a signal (see _centre_and_normalise)
        ok = hxx > (eps * k.shape[0]) ** 2 * k.pow(2).sum()
    return _ratio((kc * gram_y).sum(), hxx, gram_y.pow(2).sum(), ok)


def _ratio(hxy: torch.Tensor, hxx: torch.Tensor, hyy: torch.Tensor, inputs_ok: torch.Tensor) -> torch.Tensor:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) in [0, 1], defined as 0 for degenerate inputs."""
    ok = inputs_ok & (hxx > 0) & (hyy > 0)
    one = torch.ones_like(hxx)
    # torch.where alone does not stop NaN gradients: the unused branch must be finite too, hence the
    # guarded sqrt arguments.
    denom = torch.sqrt(torch.where(ok, hxx, one)) * torch.sqrt(torch.where(ok, hyy, one))
    cka = torch.where(ok, hxy / denom, torch.zeros_like(hxy))
    return cka.clamp(0.0, 1.0)


def _centre_and_normalise(x: torch.Tensor, w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre the valid rows of `x [..., m, p]`, zero the others, and scale to unit Frobenius norm.

    CKA is scale invariant, so the unit norm changes nothing but keeps every HSIC in [0, 1]: the
    fourth powers of raw BERT activations over 98,304 features would otherwise overflow float32.
    Returns the scaled tensor and a `[...]` bool saying whether the centred matrix is non-degenerate.
    """
    if w is None:
        count = torch.full(x.shape[:-2], x.shape[-2], dtype=x.dtype, device=x.device)
        xc = x - x.mean(dim=-2, keepdim=True)
        raw = x
    else:
        count = w.sum(dim=(-2, -1))
        raw = x * w
        mean = raw.sum(dim=-2, keepdim=True) / count.clamp(min=1.0)[..., None, None]
        xc = (x - mean) * w
    energy = xc.pow(2).sum(dim=(-2, -1))
    with torch.no_grad():
        # A constant matrix does not centre to exact zeros in floating point; the leftover is rounding
        # noise of relative size ~ m * eps, which the unit-norm scaling would blow up into a fake signal.
        tol = (torch.finfo(x.dtype).eps * count.clamp(min=1.0)) ** 2
        ok = (count >= 2) & (energy > tol * raw.pow(2).sum(dim=(-2, -1)))
    scale = torch.sqrt(torch.where(ok, energy, torch.ones_like(energy)))
    return xc / scale[..., None, None], ok


def _hsic_gram(xn: torch.Tensor, yn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSIC(K, L), HSIC(K, K), HSIC(L, L) from the `[m, m]` Gram matrices of centred inputs."""
    k = xn @ xn.transpose(-1, -2)
    lg = yn @ yn.transpose(-1, -2)
    return (k * lg).sum(dim=(-2, -1)), k.pow(2).sum(dim=(-2, -1)), lg.pow(2).sum(dim=(-2, -1))


def _hsic_feature(xn: torch.Tensor, yn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same three HSICs from feature cross-covariances: tr(Kc Lc) = ||Yc^T Xc||_F^2."""
    xt = xn.transpose(-1, -2)
    yt = yn.transpose(-1, -2)
    return ((yt @ xn).pow(2).sum(dim=(-2, -1)), (xt @ xn).pow(2).sum(dim=(-2, -1)),
            (yt @ yn).pow(2).sum(dim=(-2, -1)))

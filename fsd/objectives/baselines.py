"""Losses of the baselines the paper compares against (docs/method.md §6): PKD, RKD and MiniLM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_FLOOR = 1e-12  # probabilities are floored here before log: log(0) would give inf * 0 = NaN


def _acc(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def pkd_loss(t_cls: list[torch.Tensor], s_cls: list[torch.Tensor]) -> torch.Tensor:
    """PKD normalised hidden-state loss (Sun et al. 2019, Eq. 4 of PKD):

    ```
    L_PKD = sum_j mean_i || s_ij / ||s_ij||_2 - t_ij / ||t_ij||_2 ||_2^2
    ```

    Args:
        t_cls: teacher [CLS] vectors, one `[n, d]` per matched layer (e.g. layers 2, 4, ... for PKD-skip).
        s_cls: student [CLS] vectors, one `[n, d]` per layer, same order and width.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).

    Raises:
        ValueError: empty or different-length lists, or a pair with different shapes.
    """
    if len(t_cls) != len(s_cls) or not t_cls:
        raise ValueError(f"pkd_loss needs equally many teacher and student layers (at least one); got "
                         f"{len(t_cls)} teacher and {len(s_cls)} student")
    total = None
    for j, (t, s) in enumerate(zip(t_cls, s_cls, strict=True)):
        if t.dim() != 2 or t.shape != s.shape:
            raise ValueError(f"pkd_loss pair {j}: teacher {tuple(t.shape)} vs student {tuple(s.shape)}; PKD "
                             f"needs [n, d] vectors of the same width (teacher and student hidden sizes differ?)")
        acc = _acc(t, s)
        diff = F.normalize(s.to(acc), dim=-1) - F.normalize(t.to(acc), dim=-1)
        term = diff.pow(2).sum(dim=-1).mean()
        total = term if total is None else total + term
    return total


def _rkd_pdist(e: torch.Tensor) -> torch.Tensor:
    """`[n, n]` Euclidean distances as in Park et al.'s code: squared distances floored at 1e-12 before
    the sqrt (finite gradient for coincident rows), diagonal exactly 0."""
    e = e - e.detach().mean(dim=0)  # translation invariant; limits cancellation in |a|^2 + |b|^2 - 2ab
    sq = e.pow(2).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.T).clamp(min=1e-12).sqrt()
    return d * (1 - torch.eye(e.shape[0], dtype=d.dtype, device=d.device))


def _flat(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).to(acc)


def rkd_distance_loss(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """RKD distance loss (Park et al. 2019, Eq. 5-6):

    ```
    psi(x)_ij = ||x_i - x_j||_2 / mu,   mu = mean of the non-zero (off-diagonal) distances
    L_dist = mean_{i,j} smooth_l1(psi(s)_ij - psi(t)_ij)         (over all n^2 entries, beta = 1)
    ```

    Args:
        t: teacher features `[n, D_t]` (extra dims are flattened); s: student features `[n, D_s]`.

    Returns:
        Scalar loss; an exact 0 connected to `s`'s graph when `n < 2` (no pair to compare).
    """
    acc = _acc(t, s)
    if s.shape[0] < 2:
        return (_flat(s, acc) * 0).sum()
    dt, ds = _rkd_pdist(_flat(t, acc)), _rkd_pdist(_flat(s, acc))
    off = ~torch.eye(dt.shape[0], dtype=torch.bool, device=dt.device)
    return F.smooth_l1_loss(ds / ds[off].mean(), dt / dt[off].mean())


def _rkd_angles(e: torch.Tensor) -> torch.Tensor:
    """`[n, n, n]` cosines `A[a, b, c] = <u_ab, u_ac>`, `u_ab = (e_b - e_a) / ||e_b - e_a||`, 0 where a
    vertex coincides with an end point (Park et al. normalise a zero vector to zero).

    Built from the Gram matrix, `(e_b - e_a).(e_c - e_a) = G_bc - G_ab - G_ac + G_aa`, so memory is
    O(n^3 + nD) instead of the O(n^2 D) of explicit difference vectors (D = 98,304 for flat features).
    """
    e = e - e.detach().mean(dim=0)
    g = e @ e.T
    diag = g.diagonal()
    sq = (diag[:, None] + diag[None, :] - 2 * g).clamp(min=0)
    # Below this the squared distance is rounding noise of the Gram entries: treat the points as equal.
    tiny = 64 * torch.finfo(e.dtype).eps * (diag[:, None] + diag[None, :])
    far = sq > tiny
    inv = torch.where(far, torch.rsqrt(torch.where(far, sq, torch.ones_like(sq))), torch.zeros_like(sq))
    dots = g[None, :, :] - g[:, :, None] - g[:, None, :] + diag[:, None, None]
    return (dots * inv[:, :, None] * inv[:, None, :]).clamp(-1.0, 1.0)


def rkd_angle_loss(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """RKD angle loss (Park et al. 2019, Eq. 7-8): `mean_{a,b,c} smooth_l1(A_s[a,b,c] - A_t[a,b,c])`
    over all `n^3` triplets, with `A[a, b, c]` the cosine of the angle at `x_a` between `x_b` and `x_c`.

    Args:
        t: `[n, D_t]`; s: `[n, D_s]` (extra dims flattened).

    Returns:
        Scalar loss (all angles are 0 for `n = 1`, so the loss is 0 there).
    """
    acc = _acc(t, s)
    return F.smooth_l1_loss(_rkd_angles(_flat(s, acc)), _rkd_angles(_flat(t, acc)))


def rkd_loss(t: torch.Tensor, s: torch.Tensor, w_dist: float = 1.0, w_angle: float = 2.0) -> torch.Tensor:
    """`w_dist * L_dist + w_angle * L_angle` (RKD-DA, defaults 1 and 2 as in Park et al.)."""
    return w_dist * rkd_distance_loss(t, s) + w_angle * rkd_angle_loss(t, s)


def _query_mask(attention_mask: torch.Tensor | None, n: int, h: int, l: int, acc: torch.dtype,
                device: torch.device) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(n, 1, l, dtype=acc, device=device).expand(n, h, l)
    if attention_mask.shape != (n, l):
        raise ValueError(f"attention_mask must be [{n}, {l}], got {tuple(attention_mask.shape)}")
    return (attention_mask != 0).to(acc)[:, None, :].expand(n, h, l)


def _mean_rows(kl: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean of the per-row KL `[n, h, l]` over valid (sample, head, query) triples."""
    return (kl * rows).sum() / rows.sum().clamp(min=1)


def attention_kl_loss(t_probs: torch.Tensor, s_probs: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM self-attention transfer (Wang et al. 2020, Eq. 5):

    ```
    L_AT = mean_{i, a, q valid} sum_k A^T_{aqk} (log A^T_{aqk} - log A^S_{aqk})
    ```
    i.e. KL(teacher || student) per query row, averaged over heads and valid query rows of the batch;
    probabilities are floored at 1e-12 inside the logs (0 * log 0 counts as 0).

    Args:
        t_probs, s_probs: attention probabilities `[n, h, l, l]` (same number of heads).
        attention_mask: optional `[n, l]`; PAD query rows are excluded from the mean.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).
    """
    if t_probs.dim() != 4 or t_probs.shape != s_probs.shape:
        raise ValueError(f"attention_kl_loss needs equal [n, h, l, l] shapes, got {tuple(t_probs.shape)} and "
                         f"{tuple(s_probs.shape)}")
    acc = _acc(t_probs, s_probs)
    pt, ps = t_probs.to(acc), s_probs.to(acc)
    kl = (pt * (pt.clamp(min=LOG_FLOOR).log() - ps.clamp(min=LOG_FLOOR).log())).sum(dim=-1)
    n, h, l, _ = pt.shape
    return _mean_rows(kl, _query_mask(attention_mask, n, h, l, acc, pt.device))


def value_relation_loss(t_values: torch.Tensor, s_values: torch.Tensor,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM value-relation transfer (Wang et al. 2020, Eq. 6-8):

    ```
    VR = softmax(V V^T / sqrt(d_head))      per head, over keys (PAD keys excluded)
    L_VR = mean_{i, a, q valid} KL(VR^T_{aq.} || VR^S_{aq.})
    ```
    Each side uses its own head width; relations are `[l, l]`, so teacher and student widths may differ.

    Args:
        t_values: `[n, h, l, dt_head]`; s_values: `[n, h, l, ds_head]` (same n, h, l).
        attention_mask: optional `[n, l]`: PAD keys get no probability and PAD query rows are excluded.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).
    """
    if t_values.dim() != 4 or s_values.dim() != 4 or t_values.shape[:3] != s_values.shape[:3]:
        raise ValueError(f"value_relation_loss needs [n, h, l, d_head] with equal n, h, l; got "
                         f"{tuple(t_values.shape)} and {tuple(s_values.shape)}")
    acc = _acc(t_values, s_values)
    n, h, l, _ = t_values.shape
    rows = _query_mask(attention_mask, n, h, l, acc, t_values.device)
    keys = rows[..., None, :] > 0  # [n, h, 1, l]

    def log_relation(v: torch.Tensor) -> torch.Tensor:
        v = v.to(acc)
        scores = v @ v.transpose(-1, -2) / math.sqrt(v.shape[-1])
        # A finite fill (not -inf) keeps log-softmax finite, so p * (log p - log q) is 0 at PAD keys.
        return scores.masked_fill(~keys, torch.finfo(acc).min).log_softmax(dim=-1)

    lt, ls = log_relation(t_values), log_relation(s_values)
    terms = torch.where(keys, lt.exp() * (lt - ls), torch.zeros_like(lt))
    return _mean_rows(terms.sum(dim=-1), rows)

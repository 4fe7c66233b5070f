"""Global inter-feature structure (FSDG, docs/method.md §4, Eq. 8-10): the trainable student memory, what the
loss needs of the frozen teacher memory (fitted by `fsd.objectives.teacher_memory`), and the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fsd.cka import centred_gram, linear_cka_of_gram

LOG_EPS = 1e-8  # the reference code's -log(CKA + 1e-8)


class StudentMemory(nn.Module):
    """The trainable student memory `M_S [K, D_s]` (docs/method.md §4); a training device only, never exported.

    Initialised `N(0, std^2)` from the global torch RNG. The default `std = 1` matches the per-coordinate
    scale of the LayerNorm outputs it is compared with (unit variance per hidden state; the reference's
    `nn.Embedding` default is the same), so `||h_s - m_s||` starts at the order of `||h_t - m_t||`
    instead of being dominated by the memory's own norm or vanishing.
    """

    def __init__(self, k: int, dim: int, std: float = 1.0):
        super().__init__()
        self.centroids = nn.Parameter(torch.randn(k, dim) * std)

    def forward(self) -> torch.Tensor:
        return self.centroids


class FixedMemory:
    """What the loss needs of a memory that never changes (the teacher's), computed once instead of at
    every step: its centred Gram (L_M), its shifted rows and their norms (distances), its unit rows
    (cosines), and per feature length the parts of those that lie beyond it. A batch flattened to its own
    length `l` is `l * block` wide; other widths are served from the rows directly."""

    def __init__(self, m: torch.Tensor, block: int):
        self.m, self.block = m, block
        self.gram = centred_gram(m)
        self.shift = m.mean(dim=0)
        self.b = m - self.shift
        self.b_sq = self.b.pow(2).sum(dim=1)
        self.unit = F.normalize(m, dim=1)
        if m.shape[1] % block:
            self.tail_sq = self.tail_dot = None
            return
        blocks = self.shift.view(-1, block)
        sq = blocks.pow(2).sum(dim=1)  # [L]: per position, ||shift||^2 of its block
        dot = (self.b.view(m.shape[0], -1, block) * blocks).sum(dim=2)  # [K, L]: b . shift per position
        self.tail_sq = torch.cat([sq.flip(0).cumsum(0).flip(0), sq.new_zeros(1)])  # [L+1]: from position j on
        self.tail_dot = torch.cat([dot.flip(1).cumsum(1).flip(1), dot.new_zeros(len(dot), 1)], dim=1)

    def distances(self, h: torch.Tensor) -> torch.Tensor:
        """`_pair_dist(h, m)` from the stored parts."""
        w = h.shape[1]
        if self.tail_sq is None or w % self.block:
            return _pair_dist(h, self.m)
        j = w // self.block
        a = h - self.shift[:w]
        sq_a = a.pow(2).sum(dim=1, keepdim=True) + self.tail_sq[j]
        return _root((sq_a - 2 * (a @ self.b[:, :w].T - self.tail_dot[:, j]) + self.b_sq).clamp(min=0))

    def cosines(self, h: torch.Tensor) -> torch.Tensor:
        """`_cosines(h, m)` from the stored unit rows."""
        return F.normalize(h, dim=1) @ self.unit[:, :h.shape[1]].T


def global_structure_parts(h_t_flat: torch.Tensor, h_s_flat: torch.Tensor, m_t: torch.Tensor,
                           m_s: torch.Tensor, lam: float, gram_t: torch.Tensor | None = None,
                           fixed: FixedMemory | None = None) -> dict[str, torch.Tensor]:
    """The three weighted terms of `L_G` (Eq. 8-10); they sum to `global_structure_loss`.

    ```
    memory    = L_M = -log(CKA(M_S, M_T) + 1e-8)                       (Eq. 8, [K, K] Grams)
    euclidean = lam     * mean_{i,k} (||h_s_i - m_s_k|| - ||h_t_i - m_t_k||)^2          (Eq. 9)
    cosine    = (1-lam) * mean_{i,k} (cos(h_s_i, m_s_k) - cos(h_t_i, m_t_k))^2          (Eq. 9)
    ```

    A feature row may be shorter than the memory's (`[n, w]`, w <= D): the missing coordinates are zeros.
    That is how a batch padded to its own length `l` enters (flattened `[n, l*d]`, the first `l` tokens of
    the padded-to-max layout), so the PAD columns cost no arithmetic.

    Args:
        h_t_flat: `[n, w_t]` flattened teacher features; h_s_flat: `[n, w_s]` student features.
        m_t: `[K, D_t]` teacher memory; m_s: `[K, D_s]` student memory.
        lam: Euclidean vs cosine mix in [0, 1].
        gram_t: optional `fsd.cka.centred_gram(m_t)`: the teacher memory never changes, so its Gram can be
            computed once.
        fixed: optional `FixedMemory(m_t, d_t)`: its Gram and its side of the distances and cosines,
            computed once (what a training run passes).

    Returns:
        `{"memory", "euclidean", "cosine"}` scalars (float32, or float64 for float64 inputs). The
        Euclidean term over 98,304-d vectors is O(1e3-1e5) (docs/method.md §4).
    """
    n, k = h_t_flat.shape[0], m_t.shape[0]
    if (h_t_flat.dim() != 2 or h_s_flat.dim() != 2 or m_t.dim() != 2 or m_s.dim() != 2
            or h_s_flat.shape[0] != n or m_s.shape[0] != k
            or h_t_flat.shape[1] > m_t.shape[1] or h_s_flat.shape[1] > m_s.shape[1]):
        raise ValueError(f"need h_t [n, <=D_t], h_s [n, <=D_s], m_t [K, D_t], m_s [K, D_s]; got "
                         f"{tuple(h_t_flat.shape)}, {tuple(h_s_flat.shape)}, {tuple(m_t.shape)}, {tuple(m_s.shape)}")
    acc = torch.float64 if torch.float64 in (h_t_flat.dtype, h_s_flat.dtype, m_t.dtype, m_s.dtype) else torch.float32
    h_t, h_s, m_t, m_s = (t.to(acc) for t in (h_t_flat, h_s_flat, m_t, m_s))
    if fixed is not None and fixed.m.dtype == acc:
        gram_t, d_t, c_t = fixed.gram, fixed.distances(h_t), fixed.cosines(h_t)
    else:
        gram_t = centred_gram(m_t) if gram_t is None else gram_t.to(acc)
        d_t, c_t = _pair_dist(h_t, m_t), _cosines(h_t, m_t)
    gram_s, d_s, c_s = _student_side(h_s, m_s)
    # In float64 (a [K, K] computation): L_M of close memories is ~1e-3, which float32's log near 1 holds
    # only to a few percent.
    memory = (-torch.log(linear_cka_of_gram(gram_s, gram_t) + LOG_EPS)).to(acc)
    euclidean = F.mse_loss(d_s, d_t)
    cosine = F.mse_loss(c_s, c_t)
    return {"memory": memory, "euclidean": lam * euclidean, "cosine": (1 - lam) * cosine}


def global_structure_loss(h_t_flat: torch.Tensor, h_s_flat: torch.Tensor, m_t: torch.Tensor,
                          m_s: torch.Tensor, lam: float) -> torch.Tensor:
    """`L_G = L_M + lam * L_C^euc + (1 - lam) * L_C^cos` (Eq. 10); see `global_structure_parts`."""
    parts = global_structure_parts(h_t_flat, h_s_flat, m_t, m_s, lam)
    return parts["memory"] + parts["euclidean"] + parts["cosine"]


def _student_side(h: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The student memory's Gram for L_M, `b b^T [K, K]` of its rows shifted by their (detached) mean
    `b = m - s`, and the `[n, K]` distances and cosines of `h [n, w]` (zeros beyond w) to its rows, all
    from two products (`_GramAndProducts`): the rows' squared norms come from the Gram's diagonal,
    `|m_k|^2 = |b_k|^2 + 2 b_k.s + |s|^2`, and `h m^T` serves both the distances and the cosines. The
    memory changes at every step, so nothing of it can be kept; this way the passes over the wide `m` are
    its mean and shift and one product forward, the shift and one product backward.

    The shift is for L_M: CKA ignores a common shift, and a Gram of the unshifted rows would lose their
    centred part to float32 rounding when they share a large offset (`linear_cka_of_gram`). The distances
    take no shift of `h`: in float32 their relative error is about `eps * (|h|^2 + |m|^2) / d^2`, 1e-5 for
    features 20 units from the origin (tested), far below what the loss can resolve."""
    shift = m.detach().mean(dim=0)
    gram, prod, along = _GramAndProducts.apply(h, m, shift)
    m_sq = gram.diagonal() + 2 * along + shift.pow(2).sum()
    h_sq = h.pow(2).sum(dim=1, keepdim=True)
    distances = _root((h_sq - 2 * prod + m_sq).clamp(min=0))
    # sqrt(max(x, 1e-24)) = max(sqrt(x), 1e-12): F.normalize's floor, with no infinite gradient at 0.
    cosines = prod / (h_sq.clamp(min=1e-24).sqrt() * m_sq.clamp(min=1e-24).sqrt())
    return gram, distances, cosines


class _GramAndProducts(torch.autograd.Function):
    """`(b b^T, h m[:, :w]^T, b s)` for `h [n, w]`, `m [K, D]` (w <= D) and a constant row `s [D]`, with
    `b = m - s`. The Gram and `b s` are one product of `[b; s]` with `b^T`, and the memory's gradient is one
    `[K, K+1] x [K+1, D]` product, `[G + G^T, g_bs] [b; s]`, plus `P^T h` added in place to its first w
    columns (autograd would take separate products and a zero-filled copy for the slice). `s` is treated
    as a constant: the caller's values do not depend on it (a shift of the Gram's rows, undone above)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, m: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(h, m, shift)
        # In the inputs' precision even under autocast: a bf16 Gram would hand the backward bf16 gradients
        # to multiply with the float32 memory (autocast does not reach a custom backward), and the Gram
        # feeds a CKA whose centring needs more digits than bf16 has.
        with torch.autocast(h.device.type, enabled=False):
            rows = _shifted_rows(m, shift)
            products = rows @ rows[:-1].T
            return products[:-1], h @ m[:, :h.shape[1]].T, products[-1]

    @staticmethod
    def backward(ctx, grad_gram: torch.Tensor, grad_prod: torch.Tensor,
                 grad_along: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, m, shift = ctx.saved_tensors
        w = h.shape[1]
        grad_h = grad_prod @ m[:, :w] if ctx.needs_input_grad[0] else None
        grad_m = None
        if ctx.needs_input_grad[1]:
            grad_m = torch.cat([grad_gram + grad_gram.T, grad_along[:, None]], dim=1) @ _shifted_rows(m, shift)
            grad_m[:, :w].addmm_(grad_prod.T, h)
        return grad_h, grad_m, None


def _shifted_rows(m: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`[m - s; s]`, `[K+1, D]`, written in one pass."""
    rows = m.new_empty(m.shape[0] + 1, m.shape[1])
    torch.sub(m, shift, out=rows[:-1])
    rows[-1] = shift
    return rows


def _cosines(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """`[n, K]` cosines between rows of `h [n, w]` (zeros beyond w) and `m [K, D]`. The products are divided
    by the rows' norms, not the rows themselves: one pass over the wide `m` fewer."""
    norms = m.norm(dim=1).clamp(min=1e-12)  # F.normalize's floor
    return (F.normalize(h, dim=1) @ m[:, :h.shape[1]].T) / norms


def _pair_dist(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """`[n, K]` Euclidean distances between rows of `h [n, w]` (zeros beyond w) and `m [K, D]`, without
    materialising `[n, K, D]` differences (the teacher's side, when no FixedMemory is given)."""
    # A shift leaves distances unchanged and limits cancellation (teacher features share a large mean).
    shift = m.detach().mean(dim=0)
    w = h.shape[1]
    a, b = h - shift[:w], m - shift
    tail = shift[w:]  # h is zero there, so h - shift is -tail
    sq_a = a.pow(2).sum(dim=1, keepdim=True) + tail.pow(2).sum()
    dot = a @ b[:, :w].T - b[:, w:] @ tail
    return _root((sq_a - 2 * dot + b.pow(2).sum(dim=1)).clamp(min=0))


def _root(sq: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero gradient at 0 (its derivative is infinite there): coincident pairs get distance 0."""
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))

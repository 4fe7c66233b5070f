"""Intra-feature (FSDI, Eq. 6) and local inter-feature (FSDL, Eq. 7) structure losses via linear CKA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fsd.cka import linear_cka

LOG_EPS = 1e-8  # the reference code's -log(CKA + 1e-8) (docs/method.md §3)


def flatten_features(h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`vec(H[i])` for every sample: `[n, l, d] -> [n, l*d]`, PAD rows zeroed when a mask is given.

    The padded-to-max layout is kept (token j of every sample stays at the same offset), so vectors of
    different samples and the memory centroids stay comparable coordinate by coordinate (docs/method.md §5.1).

    Args:
        h: hidden states `[n, l, d]`.
        attention_mask: optional `[n, l]`, nonzero / True for real tokens.

    Returns:
        `[n, l*d]` in the dtype of `h`.
    """
    if h.dim() != 3:
        raise ValueError(f"flatten_features needs [n, l, d] hidden states, got {tuple(h.shape)}")
    if attention_mask is not None:
        if attention_mask.shape != h.shape[:2]:
            raise ValueError(f"attention_mask must be {tuple(h.shape[:2])}, got {tuple(attention_mask.shape)}")
        h = h * (attention_mask != 0).to(h.dtype).unsqueeze(-1)
    return h.reshape(h.shape[0], -1)


def flatten_padded(h: torch.Tensor, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor:
    """`flatten_features` in the padded-to-`length` layout: `[n, l, d] -> [n, length*d]`, so batches padded
    to their own length line up with memory centroids built over `length * d` coordinates (FSDG)."""
    pad = length - h.shape[1]
    mask = None if attention_mask is None else F.pad(attention_mask, (0, pad))
    return flatten_features(F.pad(h, (0, 0, 0, pad)), mask)


def intra_feature_loss(h_t: torch.Tensor, h_s: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """FSDI (Eq. 6): `L_I = -log(mean_i CKA(H_T[i], H_S[i]) + 1e-8)` over the token rows of each sample.

    Args:
        h_t: teacher hidden states `[n, l, d_t]` (detached by the caller).
        h_s: student hidden states `[n, l, d_s]`.
        attention_mask: optional `[n, l]`; with it each sample's CKA uses its real tokens only
            (masked centring, docs/method.md §5.1); without it all `l` positions count, as in the reference code.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs). A sample with fewer than two real tokens
        has CKA 0 (see `linear_cka`) and still counts in the mean.
    """
    if h_t.dim() != 3 or h_s.dim() != 3 or h_t.shape[:2] != h_s.shape[:2]:
        raise ValueError(f"intra_feature_loss needs [n, l, d] inputs with equal n, l; got {tuple(h_t.shape)} "
                         f"and {tuple(h_s.shape)}")
    cka = linear_cka(h_t, h_s, mask=attention_mask)
    return -torch.log(cka.mean() + LOG_EPS)


def local_inter_feature_loss(h_t: torch.Tensor, h_s: torch.Tensor,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """FSDL (Eq. 7): `L_L = -log(CKA(vec H_T, vec H_S) + 1e-8)` over the `[n, n]` batch Grams.

    Each sample is flattened with `flatten_features` (PAD rows zeroed under a mask). The real batch size
    is used, unlike the reference code's fixed 32 (docs/method.md §5.2).

    Args:
        h_t: `[n, l, d_t]`; h_s: `[n, l, d_s]`; attention_mask: optional `[n, l]`.

    Returns:
        Scalar loss. For `n < 2` the batch CKA is undefined; the loss is then an exact 0 that is still
        connected to `h_s`'s graph (so `backward()` and DDP see the same graph on every step).
    """
    if h_t.dim() != 3 or h_s.dim() != 3 or h_t.shape[:2] != h_s.shape[:2]:
        raise ValueError(f"local_inter_feature_loss needs [n, l, d] inputs with equal n, l; got "
                         f"{tuple(h_t.shape)} and {tuple(h_s.shape)}")
    if h_s.shape[0] < 2:
        # Multiply before summing: a half-precision sum could overflow to inf, and inf * 0 is NaN.
        return ((h_s if h_s.dtype == torch.float64 else h_s.float()) * 0).sum()
    cka = linear_cka(flatten_features(h_t, attention_mask), flatten_features(h_s, attention_mask))
    return -torch.log(cka + LOG_EPS)

"""Relation difference (paper Eq. 12-13): how far a student's pairwise relations between samples, and between
the tokens of a sample, are from its teacher's. Pure tensor functions, shared by the analysis of a finished
student (fsd/analysis.py) and the relations tracked while a student trains (fsd/train.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from fsd.objectives.structure import flatten_features

DISTANCES = ("euclidean", "cosine")


def pairwise(x: torch.Tensor, kind: str) -> torch.Tensor:
    """`[..., m, p] -> [..., m, m]` Euclidean distances or cosine similarities between the rows."""
    if kind == "euclidean":
        return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    unit = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return unit @ unit.transpose(-1, -2)


def relation_batch(h_t: torch.Tensor, h_s: torch.Tensor, mask: torch.Tensor | None) -> dict[str, float]:
    """Relation difference of one batch; a key is missing when the batch has no pair for it."""
    if h_t.dim() != 3 or h_s.dim() != 3 or h_t.shape[:2] != h_s.shape[:2]:
        raise ValueError(f"relation_difference needs [n, l, d] batches with equal n, l; got {tuple(h_t.shape)} "
                         f"and {tuple(h_s.shape)}")
    t, s = h_t.double(), h_s.double()
    n, l = t.shape[:2]
    real = torch.ones(n, l, dtype=torch.bool, device=t.device) if mask is None else mask.to(t.device) != 0
    out: dict[str, float] = {}
    if n >= 2:
        upper = torch.ones(n, n, dtype=torch.bool, device=t.device).triu(1)
        ft, fs = flatten_features(t, real), flatten_features(s, real)
        for kind in DISTANCES:
            out[f"inter_{kind}"] = (pairwise(fs, kind) - pairwise(ft, kind)).abs()[upper].mean().item()
    pairs = real[:, :, None] & real[:, None, :] & torch.ones(l, l, dtype=torch.bool, device=t.device).triu(1)
    count = pairs.sum(dim=(1, 2))
    ok = count > 0
    if ok.any():
        for kind in DISTANCES:
            diff = (pairwise(s, kind) - pairwise(t, kind)).abs() * pairs
            out[f"intra_{kind}"] = (diff.sum(dim=(1, 2))[ok] / count[ok]).mean().item()
    return out


def mean_over_batches(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = [f"{scope}_{kind}" for scope in ("inter", "intra") for kind in DISTANCES]
    out = {}
    for key in keys:
        values = [p[key] for p in parts if key in p]
        out[key] = float(np.mean(values)) if values else math.nan
    return out


def relation_difference(t_feats: torch.Tensor | Sequence[torch.Tensor], s_feats: torch.Tensor | Sequence[torch.Tensor],
                        mask: torch.Tensor | Sequence[torch.Tensor | None] | None = None) -> dict[str, float]:
    """Relation difference (paper Eq. 12-13): how far the student's pairwise relations are from the teacher's.

    ```
    RD_d = mean over pairs i < j of |d(S_i, S_j) - d(T_i, T_j)|,   d = Euclidean distance or cosine similarity
    ```
    Pairs are unordered (i < j): both distances are symmetric and d(x, x) is the same for teacher and student,
    so the mean over all ordered pairs i != j is the same number, and self-pairs, which would only dilute it
    by a factor depending on n, are left out. |cos_S - cos_T| equals |(1 - cos_S) - (1 - cos_T)|, so cosine
    similarity and cosine distance give the same value. Distances are raw (not normalised), so compare
    students with the same hidden size.

    - inter-feature: the samples of a batch, each its flattened penultimate features over real tokens
      (`flatten_features`: padded layout, PAD rows zeroed, as FSDL);
    - intra-feature: the real token vectors within each sample, averaged over the samples with at least two
      real tokens.
    Each value is computed per batch and averaged over the batches that have a pair for it (batches of one
    sample have no inter-feature pair).

    Args:
        t_feats: teacher `[n, l, d_t]`, or a list of such batches.
        s_feats: student `[n, l, d_s]` (or a list), the same samples.
        mask: `[n, l]` attention mask (or a list, or None: every token is real).

    Returns:
        `inter_euclidean`, `inter_cosine`, `intra_euclidean`, `intra_cosine` (NaN when no batch has a pair).
    """
    if isinstance(t_feats, torch.Tensor):
        t_feats, s_feats, mask = [t_feats], [s_feats], [mask]
    masks = [None] * len(t_feats) if mask is None else list(mask)
    if not len(t_feats) == len(s_feats) == len(masks):
        raise ValueError(f"{len(t_feats)} teacher, {len(s_feats)} student batches and {len(masks)} masks")
    return mean_over_batches([relation_batch(t, s, m) for t, s, m in zip(t_feats, s_feats, masks, strict=True)])

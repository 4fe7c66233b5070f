"""The teacher memory of FSDG (docs/method.md §4): k-means centroids of the teacher's flattened features, fitted
by streaming over them (k-means++ on a reservoir sample, Lloyd passes) or by the reference code's procedure;
saved and loaded whole."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from fsd.storage import atomic_file
from fsd.tasks import get_task

INITS = ("kmeans++", "reference")


def memory_k(task: str, memory_size: int | None) -> int:
    """The memory's number of centroids: `memory_size`, else the task's (300 QQP/MNLI, else 100)."""
    return memory_size or get_task(task).memory_size


def memory_rows_problem(task: str, memory_size: int | None, rows: int) -> str | None:
    """Why a teacher memory cannot be fitted on `rows` training rows, or None (the run's and the preflight's
    one check)."""
    k = memory_k(task, memory_size)
    return None if k <= rows else f"the teacher memory of {k} centroids needs {k} training rows, got {rows}"


class TeacherMemory:
    """Builds, saves and loads the teacher memory `M_T [K, D]` (D = l * d_T).

    `fit` streams over a re-iterable of `[b, D]` batches several times and never holds more than
    `O((sample_size + 2k + b) * D)` floats, so it works for D = 98,304 and hundreds of thousands of rows.
    """

    @staticmethod
    @torch.no_grad()
    def fit(features: Iterable[torch.Tensor], k: int, iters: int = 3, seed: int = 0,
            init: str | torch.Tensor = "kmeans++", device: torch.device | str | None = None,
            sample_size: int | None = None) -> torch.Tensor:
        """K-means centroids of all rows yielded by `features`.

        ``init="kmeans++"`` (default, docs/method.md §5.3 [ours]): one streaming pass draws a seeded uniform
        reservoir sample of `sample_size` rows (default `max(8k, 256)`); greedy k-means++ (2 + ln k
        candidates per step) picks the initial centroids from it; then `iters` Lloyd passes stream over
        all batches (float32 per-cluster sums and counts). A cluster that ends a pass empty is re-seeded
        with one of the rows farthest from their centroid in that pass (a buffer of the k farthest rows
        is kept), which is removed from its old cluster as long as that keeps at least one row.
        A `[k, D]` tensor as `init` starts Lloyd from those centroids instead (no sampling pass).

        ``init="reference"`` reproduces the reference code's procedure (docs/method.md §5.3), which is not a
        k-means; `iters` counts its epochs (the paper's "3 epochs", at least 3):
          - epoch 0 resets its running statistics at every step, so with batch size 1 the centroids
            come out as `N(mean(x_N) / N, var(x_N) / N)` elementwise, from the *last* row `x_N` alone
            (unbiased variance over its D features): near zero. Drawn here once from a CPU
            `torch.Generator` seeded with `seed` (the reference redraws at every step from the global RNG;
            only the last draw survives, so the distribution is the same, the numbers are not);
          - odd epochs assign every row to its nearest centroid (Euclidean);
          - even epochs start the memory at zeros (first time only), then row by row (batch size 1)
            update the row's cluster `c <- (c + x) / 2`. Clusters that got no row stay exact zero vectors.
            Later assign epochs use the updated memory, as the reference's do.

        Args:
            features: re-iterable (list, DataLoader, ...) yielding `[b, D]` (or `[b, l, d]`, flattened)
                float tensors, in the same order on every iteration.
            k: number of centroids. iters: Lloyd passes (reference mode: epochs). seed: all randomness.
            init: ``"kmeans++"``, ``"reference"`` or a `[k, D]` tensor.
            device: where the arithmetic runs (default: the first batch's device).
            sample_size: reservoir rows for k-means++ (at least k).

        Returns:
            `[k, D]` float32 centroids on `device`.

        Raises:
            ValueError: fewer rows than k, a bad init name or shape. TypeError: a one-shot iterator.
        """
        if iter(features) is features:
            raise TypeError("TeacherMemory.fit needs a re-iterable (a list, a DataLoader), not an iterator")
        if isinstance(init, str) and init not in INITS:
            raise ValueError(f"unknown init {init!r}: choose one of {', '.join(INITS)} or pass a [k, D] tensor")
        if k < 1 or iters < 0:
            raise ValueError(f"need k >= 1 and iters >= 0, got k={k}, iters={iters}")
        if device is None:
            device = _first(features).device
        device = torch.device(device)
        gen = torch.Generator().manual_seed(seed)
        if isinstance(init, str) and init == "reference":
            return _reference_fit(features, k, iters, gen, device)
        if isinstance(init, torch.Tensor):
            if init.dim() != 2 or init.shape[0] != k:
                raise ValueError(f"init tensor must be [k={k}, D], got {tuple(init.shape)}")
            # The first batch's mean, not the centroids': a far-off starting centroid would move the
            # origin away from the data and cost float32 precision in every row.
            shift = _rows(_first(features), device).mean(dim=0)
            centroids = init.detach().to(device=device, dtype=torch.float32) - shift
        else:
            sample, _ = _reservoir(features, max(sample_size or 8 * k, 256, k), gen, device)
            if sample.shape[0] < k:
                raise ValueError(f"k-means with k={k} needs at least k rows, got {sample.shape[0]}")
            # Distances are translation invariant; moving the origin near the data mean keeps
            # |x|^2 + |c|^2 - 2 x.c from cancelling catastrophically (BERT features share a large mean).
            shift = sample.mean(dim=0)
            sample -= shift
            centroids = _kmeanspp(sample, k, gen)
            del sample
        for _ in range(iters):
            centroids = _lloyd_pass(features, centroids, shift, device)
        return centroids + shift

    @staticmethod
    @torch.no_grad()
    def inertia(features: Iterable[torch.Tensor], centroids: torch.Tensor,
                device: torch.device | str | None = None) -> torch.Tensor:
        """Sum over all rows of the squared Euclidean distance to the nearest centroid (float64 scalar)."""
        device = torch.device(device) if device is not None else centroids.device
        shift = centroids.to(device, torch.float32).mean(dim=0)
        c = centroids.to(device, torch.float32) - shift
        total = torch.zeros((), dtype=torch.float64, device=device)
        for batch in features:
            total += _sq_dist(_rows(batch, device) - shift, c).min(dim=1).values.double().sum()
        return total

    @staticmethod
    def save(path: str | os.PathLike, centroids: torch.Tensor, meta: dict[str, Any]) -> None:
        """Write `{"centroids", "meta"}` to `path`, never half-written (`fsd.storage.atomic_file`). `meta`
        must hold plain values (str, numbers, lists, dicts)."""
        with atomic_file(path) as tmp:
            torch.save({"centroids": centroids.detach().cpu(), "meta": dict(meta)}, tmp)

    @staticmethod
    def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[torch.Tensor, dict]:
        """`(centroids [K, D], meta)` as written by `save` (loaded with `weights_only=True`)."""
        obj = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
        return obj["centroids"], obj["meta"]

def _sq_dist(x: torch.Tensor, c: torch.Tensor, x_sq: torch.Tensor | None = None,
             c_sq: torch.Tensor | None = None) -> torch.Tensor:
    """`[b, k]` squared Euclidean distances between rows of `x [b, D]` and `c [k, D]`, clamped at 0. `x_sq`
    `[b]` and `c_sq` `[k]`, the rows' squared norms, when the caller has them: at D = 49,152 recomputing the
    norms of a fixed set at every call costs as much as the distances themselves."""
    x_sq = x.pow(2).sum(dim=1) if x_sq is None else x_sq
    c_sq = c.pow(2).sum(dim=1) if c_sq is None else c_sq
    return torch.addmm(c_sq, x, c.T, alpha=-2).add_(x_sq[:, None]).clamp_(min=0)


def _rows(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    if not isinstance(batch, torch.Tensor) or batch.dim() < 2:
        raise TypeError(f"features must yield [b, D] tensors, got {type(batch).__name__} "
                        f"{tuple(getattr(batch, 'shape', ()))}")
    return batch.reshape(batch.shape[0], -1).to(device=device, dtype=torch.float32)


def _first(features: Iterable[torch.Tensor]) -> torch.Tensor:
    for batch in features:
        return batch
    raise ValueError("features yielded no batch")


def _reservoir(features: Iterable[torch.Tensor], size: int, gen: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, int]:
    """A uniform sample of at most `size` rows in one pass (algorithm R, vectorised per batch)."""
    store: torch.Tensor | None = None
    seen = 0
    for batch in features:
        x = _rows(batch, device)
        b = x.shape[0]
        if store is None:
            store = x.new_empty(size, x.shape[1])
        fill = min(max(size - seen, 0), b)
        store[seen:seen + fill] = x[:fill]
        if fill < b:
            index = torch.arange(seen + fill, seen + b, dtype=torch.float64)
            slot = (torch.rand(b - fill, generator=gen, dtype=torch.float64) * (index + 1)).floor().long()
            taken = (slot < size).nonzero().flatten()
            if taken.numel():
                # Sequential algorithm R lets a later row overwrite an earlier one in the same slot.
                last = torch.full((size,), -1, dtype=torch.long)
                last.scatter_reduce_(0, slot[taken], taken, reduce="amax")
                slots = (last >= 0).nonzero().flatten()
                store[slots.to(device)] = x[(fill + last[slots]).to(device)]
        seen += b
    if store is None:
        raise ValueError("features yielded no batch")
    return store[:min(seen, size)], seen


def _kmeanspp(sample: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007): `2 + ln k` D^2-weighted candidates per step, keep
    the one that lowers the potential most. Sampling runs on the CPU generator, so results do not depend
    on the device's RNG."""
    r = sample.shape[0]
    trials = 2 + int(math.log(k))
    chosen = [int(torch.randint(r, (1,), generator=gen))]
    norms = sample.pow(2).sum(dim=1)
    closest = _sq_dist(sample, sample[chosen], norms, norms[chosen]).squeeze(1)
    for _ in range(1, k):
        weights = closest.double().cpu()
        if weights.sum() > 0:
            cand = torch.multinomial(weights, trials, replacement=True, generator=gen)
        else:  # every sampled row sits on a centre already: duplicates; Lloyd re-seeds them if it can
            cand = torch.randint(r, (trials,), generator=gen)
        cand = cand.to(sample.device)
        pot = torch.minimum(closest[:, None], _sq_dist(sample, sample[cand], norms, norms[cand]))
        best = int(pot.sum(dim=0).argmin())
        chosen.append(int(cand[best]))
        closest = pot[:, best]
    return sample[chosen].clone()


def _lloyd_pass(features: Iterable[torch.Tensor], centroids: torch.Tensor, shift: torch.Tensor,
                device: torch.device) -> torch.Tensor:
    """One assign + mean-update pass over all batches (coordinates shifted by `shift`), with empty
    clusters re-seeded from the farthest rows seen in the pass."""
    k, dim = centroids.shape
    sums = torch.zeros(k, dim, dtype=torch.float32, device=device)
    counts = torch.zeros(k, dtype=torch.long, device=device)
    far_d = torch.empty(0, device=device)
    far_x = torch.empty(0, dim, device=device)
    far_label = torch.empty(0, dtype=torch.long, device=device)
    c_sq = centroids.pow(2).sum(dim=1)
    for batch in features:
        x = _rows(batch, device) - shift
        dist, label = _sq_dist(x, centroids, c_sq=c_sq).min(dim=1)
        # A one-hot matmul instead of index_add_: CUDA's index_add_ uses float atomics, whose order (and
        # so the rounding) changes from run to run, and k-means must be reproducible for a seed.
        sums.addmm_(F.one_hot(label, k).to(x.dtype).T, x)
        counts += torch.bincount(label, minlength=k)
        # Keep the k farthest rows: only this batch's own top-k can enter the buffer.
        top = dist.topk(min(k, dist.shape[0])).indices
        if far_d.numel() < k or bool((dist[top] > far_d.min()).any()):
            cat_d = torch.cat([far_d, dist[top]])
            keep = cat_d.topk(min(k, cat_d.shape[0])).indices
            far_d = cat_d[keep]
            far_x = torch.cat([far_x, x[top]])[keep]
            far_label = torch.cat([far_label, label[top]])[keep]
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        order = far_d.argsort(descending=True).tolist()
        for j in order:
            if not empty or float(far_d[j]) <= 0:
                break
            old = int(far_label[j])
            if int(counts[old]) < 2:  # moving it would empty its own cluster
                continue
            sums[old] -= far_x[j]
            counts[old] -= 1
            e = empty.pop(0)
            sums[e] = far_x[j]
            counts[e] = 1
    filled = counts > 0
    means = sums / counts.clamp(min=1).to(sums.dtype)[:, None]
    return torch.where(filled[:, None], means, centroids)


def _reference_fit(features: Iterable[torch.Tensor], k: int, iters: int, gen: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """The reference code's teacher memory (see `TeacherMemory.fit`, ``init="reference"``)."""
    if iters < 3:
        raise ValueError(f"init='reference' needs at least 3 epochs (stats, assign, update), got iters={iters}")
    rows, last = 0, None
    for batch in features:
        x = _rows(batch, device)
        rows += x.shape[0]
        last = x[-1]
    if last is None:
        raise ValueError("features yielded no batch")
    last64 = last.double()
    mean = float(last64.mean()) / rows
    std = math.sqrt(float(last64.var()) / rows)
    assign = torch.normal(mean, std, size=(k, last.shape[0]), generator=gen).to(device)
    memory = torch.zeros(k, last.shape[0], dtype=torch.float32, device=device)
    for _ in range((iters - 1) // 2):
        for batch in features:
            x = _rows(batch, device)
            label = _sq_dist(x, assign).argmin(dim=1)
            onehot = F.one_hot(label, k)
            # c <- (c + x) / 2 applied row after row equals: the old c halved once per row of the batch
            # in that cluster, plus each row weighted by 2^-(1 + number of later rows in that cluster).
            later = (onehot.flip(0).cumsum(0).flip(0) - onehot).gather(1, label[:, None]).squeeze(1)
            memory *= torch.pow(0.5, onehot.sum(dim=0).double()).to(memory.dtype)[:, None]
            weight = torch.pow(0.5, later.double() + 1).to(x.dtype)
            memory.addmm_((onehot.to(x.dtype) * weight[:, None]).T, x)  # deterministic, unlike index_add_
        assign = memory.clone()
    return memory

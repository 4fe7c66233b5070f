"""Teacher memory (streamed k-means, reference mode, save/load), student memory and FSDG (Eq. 8-10)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from fsd.objectives.memory import StudentMemory, global_structure_loss, global_structure_parts
from fsd.objectives.teacher_memory import TeacherMemory


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Hundreds of tiny ops per k-means pass: with 2 OpenMP threads on a busy 2-core machine each op can
    # wait milliseconds for a spinning thread. One thread is faster here; the previous value is restored.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cka_np(x, y):
    m = x.shape[0]
    h = np.eye(m) - np.ones((m, m)) / m
    kc, lc = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.sum(kc * lc) / np.sqrt(np.sum(kc * kc) * np.sum(lc * lc))


def _global_np(ht, hs, mt, ms, lam):
    n, k = ht.shape[0], mt.shape[0]
    memory = -np.log(_cka_np(ms, mt) + 1e-8)
    euc = cos = 0.0
    for i in range(n):
        for j in range(k):
            euc += (np.linalg.norm(hs[i] - ms[j]) - np.linalg.norm(ht[i] - mt[j])) ** 2
            cs = hs[i] @ ms[j] / (np.linalg.norm(hs[i]) * np.linalg.norm(ms[j]))
            ct = ht[i] @ mt[j] / (np.linalg.norm(ht[i]) * np.linalg.norm(mt[j]))
            cos += (cs - ct) ** 2
    return {"memory": memory, "euclidean": lam * euc / (n * k), "cosine": (1 - lam) * cos / (n * k)}


def _global_data(seed, n=6, k=4, dt=12, ds=9):
    rng = np.random.default_rng(seed)
    ht, mt = rng.normal(size=(n, dt)) + 1.0, rng.normal(size=(k, dt))
    hs, ms = rng.normal(size=(n, ds)) * 2, rng.normal(size=(k, ds))
    return ht, hs, mt, ms


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_global_structure_matches_numpy(lam):
    ht, hs, mt, ms = _global_data(int(lam * 10))
    args = [torch.tensor(a) for a in (ht, hs, mt, ms)]
    parts = global_structure_parts(*args, lam)
    want = _global_np(ht, hs, mt, ms, lam)
    assert set(parts) == {"memory", "euclidean", "cosine"}
    for key in want:
        assert parts[key].item() == pytest.approx(want[key], rel=1e-5, abs=1e-12), key
    total = global_structure_loss(*args, lam)
    assert total.item() == pytest.approx(sum(want.values()), rel=1e-5)


def test_global_structure_float32_large_offset_features():
    # Flattened BERT features share a large mean; distances must survive float32 without cancelling.
    ht, hs, mt, ms = _global_data(5, dt=200, ds=150)
    ht, mt, hs, ms = ht + 30, mt + 30, hs - 20, ms - 20
    want = _global_np(ht, hs, mt, ms, 0.5)
    got = global_structure_parts(*[torch.tensor(a, dtype=torch.float32) for a in (ht, hs, mt, ms)], 0.5)
    for key in want:
        assert got[key].item() == pytest.approx(want[key], rel=2e-3, abs=1e-6), key


def _memory_term_f64(m_s: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
    """L_M (Eq. 8) in float64 with the explicit centring matrix, for autograd's gradient."""
    k = m_s.shape[0]
    h = torch.eye(k, dtype=torch.float64) - 1.0 / k
    kc, lc = h @ m_s @ m_s.T @ h, h @ m_t @ m_t.T @ h
    return -torch.log((kc * lc).sum() / torch.sqrt((kc * kc).sum() * (lc * lc).sum()) + 1e-8)


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_memory_term_of_a_far_off_float32_student_memory_is_the_float64_value(offset):
    """A float32 student memory whose rows share a large common offset (trained towards features that share
    one) gives float64's L_M within 1e-4 relative and its gradient; the offset once made the float32 Gram
    lose the centred part, so L_M read -log 1e-8 with a zero gradient where the value is ~1e-3."""
    g = torch.Generator().manual_seed(3)
    k, d = 40, 3000
    m_t = torch.randn(k, d, generator=g) + 2
    m_s = (0.5 * m_t + 0.15 * torch.randn(k, d, generator=g) + offset).requires_grad_(True)
    h = torch.randn(4, d, generator=g)
    got = global_structure_parts(h, h, m_t, m_s, 0.5)["memory"]
    (grad,) = torch.autograd.grad(got, m_s)
    ms64 = m_s.detach().double().requires_grad_(True)
    want = _memory_term_f64(ms64, m_t.double())
    (grad64,) = torch.autograd.grad(want, ms64)
    assert got.dtype == torch.float32
    assert 5e-4 < want.item() < 5e-3  # close memories: the regime where float32's log near 1 fails
    assert want.item() == pytest.approx(-np.log(_cka_np(ms64.detach().numpy(), m_t.double().numpy()) + 1e-8),
                                        rel=1e-10)  # the autograd reference is Eq. 8
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    torch.testing.assert_close(grad.double(), grad64, rtol=0, atol=1e-4 * grad64.abs().max().item())


def test_memory_term_of_a_degenerate_student_memory_is_finite():
    """Rows all equal (far from the origin, so their centring leaves rounding noise) or a single row: CKA is
    undefined, defined as 0, so L_M = -log 1e-8, with finite, zero gradients to the memory's Gram."""
    g = torch.Generator().manual_seed(4)
    m_t = torch.randn(6, 50, generator=g)
    h = torch.randn(3, 50, generator=g)
    for m_s in (torch.randn(1, 50, generator=g).repeat(6, 1) + 1000, torch.randn(1, 50, generator=g)):
        m_s.requires_grad_(True)
        memory = global_structure_parts(h, h, m_t[: len(m_s)], m_s, 0.5)["memory"]
        (grad,) = torch.autograd.grad(memory, m_s)
        assert memory.item() == pytest.approx(-np.log(1e-8), rel=1e-6)
        assert torch.isfinite(grad).all() and grad.abs().max() == 0


def test_gradients_reach_student_memory_and_features_only():
    torch.manual_seed(0)
    memory = StudentMemory(5, 9)
    ht = torch.randn(4, 12, requires_grad=True)
    mt = torch.randn(5, 12, requires_grad=True)
    hs = torch.randn(4, 9, requires_grad=True)
    loss = global_structure_loss(ht.detach(), hs, mt.detach(), memory(), 0.4)
    loss.backward()
    assert ht.grad is None and mt.grad is None
    for g in (hs.grad, memory.centroids.grad):
        assert g is not None and bool(torch.isfinite(g).all()) and g.abs().sum() > 0
    with torch.no_grad():
        ht_ng, mt_ng = torch.randn(4, 12), torch.randn(5, 12)
    global_structure_loss(ht_ng, hs, mt_ng, memory(), 0.4).backward()


def test_coincident_feature_and_centroid_give_finite_gradients():
    torch.manual_seed(1)
    ms = torch.randn(3, 6, requires_grad=True)
    hs = ms.detach()[:2].clone().requires_grad_(True)  # distance exactly 0 to a centroid
    loss = global_structure_loss(torch.randn(2, 8), hs, torch.randn(3, 8), ms, 0.5)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(hs.grad).all()) and bool(torch.isfinite(ms.grad).all())


def test_student_memory_is_seeded_parameter():
    torch.manual_seed(3)
    a = StudentMemory(100, 64)
    torch.manual_seed(3)
    b = StudentMemory(100, 64)
    assert isinstance(a.centroids, torch.nn.Parameter) and a.centroids.shape == (100, 64)
    assert torch.equal(a.centroids, b.centroids)
    assert a.centroids.std().item() == pytest.approx(1.0, rel=0.05)
    assert StudentMemory(10, 8, std=0.1).centroids.std().item() < 0.3
    assert [n for n, _ in a.named_parameters()] == ["centroids"]


def _blobs(seed, n_per=75, centers=8, dim=64):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(centers, dim)) * 4
    x = np.concatenate([m + rng.normal(size=(n_per, dim)) * rng.uniform(0.5, 2.0) for m in mu])
    return x[rng.permutation(len(x))]


def _batches(x, b=64, dtype=torch.float32):
    return [torch.tensor(x[i:i + b], dtype=dtype) for i in range(0, len(x), b)]


@pytest.mark.parametrize("k,seed", [(8, 0), (8, 1), (12, 2)])
def test_kmeans_inertia_close_to_sklearn(k, seed):
    x = _blobs(seed)
    feats = _batches(x)
    centroids = TeacherMemory.fit(feats, k, iters=20, seed=seed)
    assert centroids.shape == (k, 64) and centroids.dtype == torch.float32
    ours = TeacherMemory.inertia(feats, centroids).item()
    theirs = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x).inertia_
    assert ours <= 1.02 * theirs
    # inertia() against a direct numpy computation
    c = centroids.double().numpy()
    want = sum(min(np.sum((row - cc) ** 2) for cc in c) for row in x)
    assert ours == pytest.approx(want, rel=1e-4)


def test_kmeans_is_deterministic_and_accepts_half_and_3d_batches():
    x = _blobs(4, n_per=40)
    feats = _batches(x, b=50)
    a = TeacherMemory.fit(feats, 6, iters=3, seed=7)
    b = TeacherMemory.fit(feats, 6, iters=3, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, TeacherMemory.fit(feats, 6, iters=3, seed=8))
    half = [f.half().reshape(f.shape[0], 8, 8) for f in feats]
    c = TeacherMemory.fit(half, 6, iters=3, seed=7, sample_size=6)
    assert c.shape == (6, 64) and c.dtype == torch.float32 and bool(torch.isfinite(c).all())


def _duplicated_points(distinct=6, copies=10, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(distinct, dim)) * 5
    return points, np.repeat(points, copies, axis=0)[rng.permutation(distinct * copies)]


def test_empty_clusters_are_reseeded():
    points, x = _duplicated_points()
    feats = _batches(x, b=16)
    # Two starting centroids so far away that no row ever picks them: both clusters start empty.
    init = torch.tensor(np.concatenate([points[:4], np.full((2, 16), 1e4)]), dtype=torch.float32)
    # k equal to the number of distinct points, and more centroids than distinct points: no NaN, and
    # every distinct point ends up (up to float32 rounding) as a centroid.
    for k, c in [(6, TeacherMemory.fit(feats, 6, iters=5, init=init)),
                 (6, TeacherMemory.fit(feats, 6, iters=5, seed=1)),
                 (8, TeacherMemory.fit(feats, 8, iters=5, seed=1))]:
        c = c.double().numpy()
        assert c.shape == (k, 16) and np.isfinite(c).all()
        gap = np.linalg.norm(points[:, None] - c[None], axis=2).min(axis=1)
        assert gap.max() < 1e-4


def _reference_np(x_rows, k, iters, seed):
    """The reference procedure written out row by row: centroids N(mean(x_N)/N, var(x_N)/N) from the last
    row (drawn from a CPU generator with `seed`, as documented), then per update epoch: assign every row
    to its nearest centroid, and update c <- (c + x) / 2 row by row from a zero memory."""
    n, dim = x_rows.shape
    last = x_rows[-1].astype(np.float64)
    gen = torch.Generator().manual_seed(seed)
    assign = torch.normal(float(last.mean()) / n, float(np.sqrt(last.var(ddof=1) / n)), size=(k, dim),
                          generator=gen).double().numpy()
    memory = np.zeros((k, dim))
    for _ in range((iters - 1) // 2):
        labels = [int(np.argmin([np.sum((row - c) ** 2) for c in assign])) for row in x_rows]
        for row, lab in zip(x_rows, labels, strict=True):
            memory[lab] = (memory[lab] + row) / 2
        assign = memory.copy()
    return memory


@pytest.mark.parametrize("iters", [3, 5])
def test_reference_mode_reproduces_reference_procedure(iters):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 10)).astype(np.float32) + 0.5
    feats = _batches(x, b=7)
    got = TeacherMemory.fit(feats, 40, iters=iters, seed=3, init="reference")
    want = _reference_np(x.astype(np.float64), 40, iters, seed=3)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-6)
    empty = ~want.any(axis=1)
    assert empty.sum() >= 40 - 30
    assert bool((got[torch.tensor(empty)] == 0).all())  # clusters without a row stay zero vectors
    with pytest.raises(ValueError):
        TeacherMemory.fit(feats, 4, iters=2, init="reference")


def test_save_load_round_trip(tmp_path):
    centroids = torch.randn(5, 12)
    meta = {"task": "RTE", "k": 5, "iters": 3, "init": "kmeans++", "layers": [11]}
    path = tmp_path / "memory" / "teacher_memory.pt"
    TeacherMemory.save(path, centroids, meta)
    TeacherMemory.save(path, centroids * 2, meta)  # overwrite in place
    loaded, loaded_meta = TeacherMemory.load(path)
    assert torch.equal(loaded, centroids * 2) and loaded_meta == meta
    assert os.listdir(path.parent) == ["teacher_memory.pt"]  # no temporary file left behind


def test_fit_input_errors():
    feats = _batches(_blobs(0, n_per=2, centers=2, dim=4))
    with pytest.raises(TypeError):
        TeacherMemory.fit(iter(feats), 2)
    with pytest.raises(ValueError):
        TeacherMemory.fit(feats, 10)
    with pytest.raises(ValueError):
        TeacherMemory.fit(feats, 2, init="random")


def test_short_feature_rows_equal_zero_padded_rows():
    """A batch flattened to its own length l gives the loss and gradients of the padded-to-max rows."""
    from fsd.cka import centred_gram

    g = torch.Generator().manual_seed(11)
    n, k, d_t, d_s, length, l = 5, 4, 6, 3, 10, 7
    h_t = torch.randn(n, l * d_t, generator=g, dtype=torch.float64)
    h_s = torch.randn(n, l * d_s, generator=g, dtype=torch.float64, requires_grad=True)
    m_t = torch.randn(k, length * d_t, generator=g, dtype=torch.float64)
    m_s = torch.randn(k, length * d_s, generator=g, dtype=torch.float64, requires_grad=True)
    pad = torch.nn.functional.pad
    full = global_structure_parts(pad(h_t, (0, (length - l) * d_t)), pad(h_s, (0, (length - l) * d_s)), m_t, m_s, 0.3)
    short = global_structure_parts(h_t, h_s, m_t, m_s, 0.3, centred_gram(m_t))
    for key in full:
        torch.testing.assert_close(short[key], full[key], rtol=1e-10, atol=1e-10)
    grads_full = torch.autograd.grad(sum(full.values()), (h_s, m_s))
    grads_short = torch.autograd.grad(sum(short.values()), (h_s, m_s))
    for a, b in zip(grads_short, grads_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_teacher_side_computed_once_gives_the_same_loss_and_gradients(dtype):
    """FixedMemory (what a run computes once of the teacher memory) against the per-step computation, for
    rows flattened to every length and for a width that is no whole number of positions."""
    from fsd.objectives.memory import FixedMemory, _cosines, _pair_dist

    g = torch.Generator().manual_seed(5)
    n, k, d_t, d_s, length = 6, 5, 4, 3, 9
    m_t = (torch.randn(k, length * d_t, generator=g, dtype=torch.float64) + 2.0).to(dtype)
    m_s = torch.randn(k, length * d_s, generator=g, dtype=dtype, requires_grad=True)
    fixed = FixedMemory(m_t, d_t)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for width in (*(l * d_t for l in range(1, length + 1)), 7):
        h_t = torch.randn(n, width, generator=g, dtype=torch.float64).to(dtype) + 1.0
        torch.testing.assert_close(fixed.distances(h_t), _pair_dist(h_t, m_t), **tol)
        torch.testing.assert_close(fixed.cosines(h_t), _cosines(h_t, m_t), **tol)
        l = max(1, width // d_t)
        h_s = torch.randn(n, l * d_s, generator=g, dtype=dtype, requires_grad=True)
        plain = global_structure_parts(h_t, h_s, m_t, m_s, 0.3)
        once = global_structure_parts(h_t, h_s, m_t, m_s, 0.3, fixed=fixed)
        for key in plain:
            torch.testing.assert_close(once[key], plain[key], **tol)
        grads = [torch.autograd.grad(sum(p.values()), (h_s, m_s)) for p in (plain, once)]
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(b, a, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)


def test_cosines_equal_the_normalised_rows_products():
    from fsd.objectives.memory import _cosines

    g = torch.Generator().manual_seed(2)
    h, m = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(3, 10, generator=g, dtype=torch.float64)
    m[1] = 0.0  # a zero row: cosine 0, as F.normalize's floor gives
    expected = torch.nn.functional.normalize(h, dim=1) @ torch.nn.functional.normalize(m, dim=1)[:, :6].T
    torch.testing.assert_close(_cosines(h, m), expected, rtol=1e-12, atol=1e-12)
    assert torch.all(_cosines(h, m)[:, 1] == 0)


def test_the_student_sides_fused_products_have_autograds_gradients():
    """`_GramAndProducts` (the shifted memory's Gram and the batch's products, one backward product) against
    the numerical gradient, for rows narrower than the memory and as wide."""
    from fsd.objectives.memory import _GramAndProducts

    g = torch.Generator().manual_seed(9)
    for w in (6, 10):
        h = torch.randn(3, w, generator=g, dtype=torch.float64, requires_grad=True)
        m = torch.randn(4, 10, generator=g, dtype=torch.float64, requires_grad=True)
        s = torch.randn(10, generator=g, dtype=torch.float64) + 3  # the shift: a constant, no gradient
        assert torch.autograd.gradcheck(_GramAndProducts.apply, (h, m, s))
        gram, prod, along = _GramAndProducts.apply(h, m, s)
        torch.testing.assert_close(gram, (m - s) @ (m - s).T)
        torch.testing.assert_close(prod, h @ m[:, :w].T)
        torch.testing.assert_close(along, (m - s) @ s)


def test_the_student_side_equals_the_shifted_computation_in_float64_and_float32():
    """Distances and cosines to the student memory from its Gram's diagonal equal the shifted, per-row
    computation (float64 to 1e-10; float32 with features 20 units from the origin to 1e-4)."""
    from fsd.objectives.memory import _cosines, _pair_dist, _student_side

    g = torch.Generator().manual_seed(4)
    h = torch.randn(5, 24, generator=g, dtype=torch.float64) - 20
    m = torch.randn(7, 40, generator=g, dtype=torch.float64) - 20
    gram, dist, cos = _student_side(h, m)
    torch.testing.assert_close(dist, _pair_dist(h, m), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cos, _cosines(h, m), rtol=1e-10, atol=1e-10)
    centred = m - m.mean(dim=0)
    torch.testing.assert_close(gram, centred @ centred.T)
    _, dist32, cos32 = _student_side(h.float(), m.float())
    torch.testing.assert_close(dist32.double(), dist, rtol=1e-4, atol=0)
    torch.testing.assert_close(cos32.double(), cos, rtol=1e-4, atol=0)


def test_the_global_structure_trains_under_autocast():
    """Under bf16 autocast (CUDA's in a run; CPU's here) the loss and its gradients are those of float32 within
    bf16's precision: the memory's Gram and products stay in float32, so the backward multiplies like types."""
    g = torch.Generator().manual_seed(8)
    h_t, m_t = torch.randn(4, 12, generator=g), torch.randn(5, 24, generator=g)
    h_s = torch.randn(4, 9, generator=g, requires_grad=True)
    memory = StudentMemory(5, 18)
    plain = global_structure_loss(h_t, h_s, m_t, memory(), 0.4)
    want = torch.autograd.grad(plain, (h_s, memory.centroids))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = global_structure_loss(h_t, h_s, m_t, memory(), 0.4)
    got = torch.autograd.grad(loss, (h_s, memory.centroids))
    assert loss.dtype == torch.float32 and abs(loss.item() - plain.item()) <= 1e-2 * abs(plain.item())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)

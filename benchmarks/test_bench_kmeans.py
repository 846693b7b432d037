"""k-means over users' category affinity: bta's numba kernels against SciPy's ``kmeans2``.

Data: ``1,000,000 * BTA_BENCH_SCALE`` users (default scale 0.01: 10,000 users, the smoke run CI
does) over 200 categories, k = 50. Each user has about 12 page views drawn from one of 50
planted tastes (80% on the taste's 5 favourite categories, 20% uniform), weighted by a decay
of its age, so rows are sparse (~7 non-zeros) as real affinity rows are; rows are
L2-normalized.

Every benchmark first checks its result, then times it:

- bta spherical k-means: the inertia equals a NumPy evaluation of the returned assignment,
  and the labels equal the NumPy nearest-centroid assignment;
- bta Euclidean k-means: same initial centers and iterations as
  ``scipy.cluster.vq.kmeans2(minit="matrix")``. Each step is checked: the labels are SciPy's
  nearest-center assignment (``vq``) of bta's centers up to rounding ties, and a step moves
  every center to the mean of its rows (a one-hot product over the dense matrix). The whole
  run then equals ``kmeans2``'s (centers to 1e-9) at smoke size; at full size a few near-ties
  flip on the way, so the objective (1e-4) and labels (99%) must agree instead;
- SciPy ``kmeans2`` on the dense matrix (it takes no sparse input) is timed in the same run.

Run: ``python -m pytest benchmarks/test_bench_kmeans.py --benchmark-enable``; full size with
``BTA_BENCH_SCALE=1.0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sp

from bta.segment.clusters import kmeans, kmeans_plusplus
from _data import bench_scale

N_USERS_FULL = 1_000_000
N_CATEGORIES = 200
K = 50
N_ITER = 10  # Lloyd iterations for every implementation (tol=0: no early stop unless converged)



@dataclass(frozen=True)
class Data:
    X: sp.csr_matrix          # (n_users, 200), unit rows
    init: np.ndarray          # (K, 200): k-means++ rows, shared by every implementation

    @property
    def n_users(self) -> int:
        return self.X.shape[0]


def make_affinity(n_users: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    favourites = np.argsort(rng.random((K, N_CATEGORIES)), axis=1)[:, :5]
    taste = rng.integers(0, K, n_users)
    views = 1 + rng.poisson(11, n_users)
    user = np.repeat(np.arange(n_users), views)
    fav_pick = favourites[taste[user], rng.integers(0, 5, user.size)]
    cat = np.where(rng.random(user.size) < 0.8, fav_pick, rng.integers(0, N_CATEGORIES, user.size))
    # decayed counts, as the features give: 0.5 ** (age / 7 days) for an age uniform over 30
    # days. Continuous weights also keep rows off exact distance ties, which the two distance
    # formulas (bta: |x|^2 + |c|^2 - 2 x.c, SciPy: sum (x - c)^2) could break differently.
    weight = 0.5 ** (rng.random(user.size) * 30 / 7)
    X = sp.csr_matrix((weight, (user, cat)), shape=(n_users, N_CATEGORIES))
    X.sum_duplicates()
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X.data /= np.repeat(norms, np.diff(X.indptr))
    return X


@pytest.fixture(scope="module")
def data() -> Data:
    n = max(K * 4, int(round(N_USERS_FULL * bench_scale())))
    X = make_affinity(n)
    rows = kmeans_plusplus(X, K, random_state=0)
    return Data(X=X, init=X[rows].toarray())


@pytest.fixture(scope="module")
def dense(data: Data) -> np.ndarray:
    return data.X.toarray()


def _info(benchmark, data: Data, **extra) -> None:
    import numba

    benchmark.extra_info.update(n_users=data.n_users, n_categories=N_CATEGORIES, k=K,
                                iterations=N_ITER, nnz=int(data.X.nnz),
                                numba_threads=numba.get_num_threads(), **extra)


def _rounds(data: Data) -> dict:
    # a full-size SciPy round takes minutes: one round there, a few at smoke size
    return {"rounds": 1 if data.n_users > 200_000 else 3, "iterations": 1, "warmup_rounds": 0}


def test_spherical_kmeans_checked_then_timed(benchmark, data):
    res = kmeans(data.X, data.init, metric="cosine", max_iter=N_ITER, tol=0.0)
    # reference: NumPy evaluation of the objective and of the assignment to res.centers
    dots = np.asarray(data.X @ res.centers.T)
    np.testing.assert_array_equal(res.labels, np.argmax(dots, axis=1))
    objective = float((1.0 - dots[np.arange(data.n_users), res.labels]).sum())
    assert res.inertia == pytest.approx(objective, rel=1e-9)
    assert np.allclose(np.linalg.norm(res.centers, axis=1), 1.0)

    out = benchmark.pedantic(
        lambda: kmeans(data.X, data.init, metric="cosine", max_iter=N_ITER, tol=0.0),
        **_rounds(data))
    _info(benchmark, data, n_iter=out.n_iter, inertia=out.inertia)


@pytest.fixture(scope="module")
def scipy_reference(data, dense):
    from scipy.cluster.vq import kmeans2, vq

    centers, _ = kmeans2(dense, data.init.copy(), iter=N_ITER, minit="matrix")
    return centers, vq(dense, centers)[0]


def test_euclidean_kmeans_matches_scipy_then_timed(benchmark, data, dense, scipy_reference):
    from scipy.cluster.vq import vq

    res = kmeans(data.X, data.init, metric="euclidean", max_iter=N_ITER, tol=0.0)
    centers, labels = scipy_reference
    # 1. bta's labels are the nearest centers of its own centers, computed SciPy's way
    #    (sum (x - c)^2); a disagreement may only be a tie up to rounding of the two formulas.
    ref_labels, _ = vq(dense, res.centers)
    diff = np.flatnonzero(res.labels != ref_labels)
    d_bta = ((dense[diff] - res.centers[res.labels[diff]]) ** 2).sum(axis=1)
    d_ref = ((dense[diff] - res.centers[ref_labels[diff]]) ** 2).sum(axis=1)
    np.testing.assert_allclose(d_bta, d_ref, rtol=1e-9, atol=1e-12)
    # 2. a further step moves each center to the mean of its rows (bta's own labels,
    #    so no tie is involved: exact to rounding).
    step = kmeans(data.X, res.centers, metric="euclidean", max_iter=1, tol=0.0)
    onehot = sp.csr_matrix((np.ones(data.n_users), (res.labels, np.arange(data.n_users))),
                           shape=(K, data.n_users))
    means = (onehot @ dense) / np.bincount(res.labels, minlength=K)[:, None]
    np.testing.assert_allclose(step.centers, means, rtol=1e-9, atol=1e-12)
    # 3. the same trajectory as kmeans2: identical while no row flips at a near-tie (the smoke
    #    size); over a million rows a few near-ties flip on the way and move centers by ~1e-5,
    #    so there the objective and the labels must agree closely instead.
    inertia_ref = float(((dense - centers[labels]) ** 2).sum())
    assert res.inertia == pytest.approx(inertia_ref, rel=1e-4)
    assert (res.labels != labels).mean() < 1e-2
    if data.n_users <= 100_000:
        np.testing.assert_allclose(res.centers, centers, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(res.labels, labels)

    out = benchmark.pedantic(
        lambda: kmeans(data.X, data.init, metric="euclidean", max_iter=N_ITER, tol=0.0),
        **_rounds(data))
    _info(benchmark, data, n_iter=out.n_iter, n_near_ties=int(diff.size),
          label_mismatch_vs_scipy=float((res.labels != labels).mean()),
          inertia_rel_diff_vs_scipy=float(abs(res.inertia / inertia_ref - 1)),
          max_center_diff_vs_scipy=float(np.abs(res.centers - centers).max()))


def test_scipy_kmeans2_dense(benchmark, data, dense, scipy_reference):
    from scipy.cluster.vq import kmeans2

    centers, _ = benchmark.pedantic(
        lambda: kmeans2(dense, data.init.copy(), iter=N_ITER, minit="matrix"), **_rounds(data))
    np.testing.assert_array_equal(centers, scipy_reference[0])
    _info(benchmark, data)


def test_kmeans_plusplus_init(benchmark, data):
    rows = benchmark.pedantic(lambda: kmeans_plusplus(data.X, K, random_state=0),
                              **_rounds(data))
    np.testing.assert_array_equal(data.X[rows].toarray(), data.init)
    _info(benchmark, data)

"""Numba kernels of the interest clusters and lookalikes.

Every kernel takes a CSR matrix as its three arrays (``indptr``, ``indices``, ``data``) plus
contiguous NumPy arrays and returns NumPy arrays; the public wrappers in
:mod:`bta.segment.clusters` and :mod:`bta.segment.lookalike` validate and convert first.
Rows of the matrix are users, columns categories; a user's row holds a few non-zeros, so work
is proportional to ``nnz * k``, not ``n_users * n_categories * k``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from bta._jit import batch_jit

__all__ = ["assign_nearest", "cluster_sums", "knn_scores", "warmup"]

# Rows per parallel task: large enough that the per-task scratch allocation is amortized,
# small enough that two to a few dozen threads get balanced work on a million users.
_CHUNK = 2048


@batch_jit(parallel=True, fastmath=True)
def assign_nearest(indptr, indices, data, row_sqnorm, centers_t, center_sqnorm):  # pragma: no cover
    """Nearest center of every row by squared Euclidean distance.

    ``centers_t`` is the (n_features, k) transpose of the centers, so that the inner loop over
    centers reads contiguous memory. Distance ``|x|^2 + |c|^2 - 2 x.c``, clipped at 0 (the
    expansion can round slightly below). Ties go to the lowest center index. For unit rows and
    unit centers this is ``2 (1 - cos)``, so the same kernel serves the spherical k-means.

    Returns ``labels`` (int64, n_rows) and ``dist`` (float64, n_rows).
    """
    n = indptr.shape[0] - 1
    k = centers_t.shape[1]
    labels = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float64)
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    for ch in prange(n_chunks):
        dots = np.empty(k, dtype=np.float64)
        lo = ch * _CHUNK
        hi = min(n, lo + _CHUNK)
        for i in range(lo, hi):
            for c in range(k):
                dots[c] = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                v = data[p]
                for c in range(k):
                    dots[c] += v * centers_t[j, c]
            best = 0
            best_d = center_sqnorm[0] - 2.0 * dots[0]
            for c in range(1, k):
                d = center_sqnorm[c] - 2.0 * dots[c]
                if d < best_d:
                    best_d = d
                    best = c
            labels[i] = best
            dist[i] = max(0.0, row_sqnorm[i] + best_d)
    return labels, dist


@batch_jit()
def cluster_sums(indptr, indices, data, labels, k, n_features):  # pragma: no cover
    """Sum of the rows and number of rows of each cluster; rows labelled -1 are skipped.

    Sequential: one pass over the non-zeros is memory-bound and cheaper than merging
    per-thread (k, n_features) buffers.
    """
    n = indptr.shape[0] - 1
    sums = np.zeros((k, n_features), dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    for i in range(n):
        c = labels[i]
        if c < 0:
            continue
        counts[c] += 1
        for p in range(indptr[i], indptr[i + 1]):
            sums[c, indices[p]] += data[p]
    return sums, counts


@batch_jit(parallel=True, fastmath=True)
def knn_scores(indptr, indices, data, seeds_t, self_col, k):  # pragma: no cover
    """Mean of the ``k`` largest dot products of every row with the seed rows.

    ``seeds_t`` is the (n_features, n_seeds) transpose of the seed rows; ``self_col[i]`` is the
    seed column of row ``i`` when row ``i`` is itself a seed (its own similarity is left out),
    else -1. A row with fewer than ``k`` other seeds averages over those it has.
    """
    n = indptr.shape[0] - 1
    m = seeds_t.shape[1]
    out = np.empty(n, dtype=np.float64)
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    for ch in prange(n_chunks):
        sims = np.empty(m, dtype=np.float64)
        top = np.empty(k, dtype=np.float64)  # descending
        lo = ch * _CHUNK
        hi = min(n, lo + _CHUNK)
        for i in range(lo, hi):
            for s in range(m):
                sims[s] = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                v = data[p]
                for s in range(m):
                    sims[s] += v * seeds_t[j, s]
            filled = 0
            for s in range(m):
                if s == self_col[i]:
                    continue
                x = sims[s]
                if filled < k:
                    pos = filled
                    filled += 1
                elif x > top[k - 1]:
                    pos = k - 1
                else:
                    continue
                # insertion into the descending buffer
                while pos > 0 and top[pos - 1] < x:
                    top[pos] = top[pos - 1]
                    pos -= 1
                top[pos] = x
            total = 0.0
            for t in range(filled):
                total += top[t]
            out[i] = total / filled if filled > 0 else 0.0
    return out


def warmup() -> None:
    """Compile the three kernels for the argument types the wrappers pass (int64 indices,
    float64 values), so that no fit or request waits for a compile."""
    indptr = np.array([0, 1, 2], dtype=np.int64)
    indices = np.array([0, 1], dtype=np.int64)
    data = np.ones(2)
    centers_t = np.eye(2)
    assign_nearest(indptr, indices, data, np.ones(2), centers_t, np.ones(2))
    cluster_sums(indptr, indices, data, np.array([0, 1], dtype=np.int64), np.int64(2),
                 np.int64(2))
    knn_scores(indptr, indices, data, centers_t, np.array([0, -1], dtype=np.int64), np.int64(1))

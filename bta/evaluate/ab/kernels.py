"""Numba kernels of the A/B evaluator: Poisson bootstrap sums, and per-day summaries.

Bootstrap:

The weight of unit ``u`` in resample ``b`` is Poisson(1), drawn by inverting the CDF at a
uniform number derived from ``(seeds[b], keys[u])`` by the splitmix64 finalizer, where
``keys[u]`` is a stable 64-bit hash of the unit (its user and arm; the unit's position when no
keys are given). The draw is a pure function of the seed and the unit, so the result does not
depend on the number of threads, on the order of the rows, or on how the users are split among
partitions (:func:`bta.dask.ab_report` draws the same weights).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from bta._jit import batch_jit, serial_copy

__all__ = ["poisson_bootstrap_sums", "poisson_weights", "daily_moments", "hash_ints",
           "hash_strings", "warmup"]

#: ``daily_moments`` column kinds: a base sum, a 0/1 indicator of a base sum, a covariate.
BASE, INDICATOR, COVARIATE = 0, 1, 2

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53: 53 random bits -> a double in [0, 1)
# CDF of Poisson(1) at 0..40; beyond 40 the tail (about 1e-49) is far below the 2**-53
# resolution of the uniform draw.
_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(41)])
# Units per cache block: a block of x (BLOCK * K doubles) stays in cache while every
# resample of the chunk passes over it.
_BLOCK = 2048


@batch_jit()
def _uniform(seed: np.uint64, u: np.uint64) -> float:
    z = seed + (u + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    z = z ^ (z >> _S31)
    return float(z >> _S11) * _TWO_M53


@batch_jit()
def _mix64(z: np.uint64) -> np.uint64:
    # the splitmix64 finalizer: every input bit moves every output bit
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@batch_jit()
def hash_ints(values: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each int64 value (the bootstrap's unit keys)."""
    out = np.empty(values.shape[0], dtype=np.uint64)
    for i in range(values.shape[0]):
        out[i] = _mix64(np.uint64(values[i]) + _GOLDEN)
    return out


@batch_jit()
def hash_strings(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each string of an Arrow string array's buffers (UTF-8 bytes
    ``data[offsets[i]:offsets[i + 1]]``): FNV-1a, then the splitmix64 finalizer."""
    n = offsets.shape[0] - 1
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
        out[i] = _mix64(h ^ np.uint64(offsets[i + 1] - offsets[i]))
    return out


@batch_jit()
def _poisson1(v: float, cdf: np.ndarray) -> int:
    # Inverse CDF, branch-free over the first six steps (P(k >= 6) = 6e-4): a data-dependent
    # loop exit mispredicts about twice per draw, which cost 3x the whole draw.
    k = (int(v >= cdf[0]) + int(v >= cdf[1]) + int(v >= cdf[2]) + int(v >= cdf[3])
         + int(v >= cdf[4]) + int(v >= cdf[5]))
    if k == 6:
        while k < 40 and v >= cdf[k]:
            k += 1
    return k


@batch_jit()
def _weights(seeds: np.ndarray, keys: np.ndarray, cdf: np.ndarray) -> np.ndarray:
    out = np.empty((seeds.shape[0], keys.shape[0]), dtype=np.int64)
    for b in range(seeds.shape[0]):
        for u in range(keys.shape[0]):
            out[b, u] = _poisson1(_uniform(seeds[b], keys[u]), cdf)
    return out


@batch_jit(parallel=True)
def _bootstrap_sums(x: np.ndarray, keys: np.ndarray, group: np.ndarray, n_groups: int,
                    seeds: np.ndarray, cdf: np.ndarray, n_chunks: int) -> np.ndarray:
    n_res = seeds.shape[0]
    n_units, k = x.shape
    out = np.zeros((n_res, n_groups, k))
    for c in numba.prange(n_chunks):
        b0 = c * n_res // n_chunks
        b1 = (c + 1) * n_res // n_chunks
        for u0 in range(0, n_units, _BLOCK):
            u1 = min(n_units, u0 + _BLOCK)
            for b in range(b0, b1):
                seed = seeds[b]
                for u in range(u0, u1):
                    # no branch on w == 0 (37% of draws): adding 0 is cheaper than a mispredict
                    w = float(_poisson1(_uniform(seed, keys[u]), cdf))
                    g = group[u]
                    for j in range(k):
                        out[b, g, j] += w * x[u, j]
    return out


#: The same kernel without threads, for callers that are threads of a pool already (a Dask
#: worker's partition task).
_bootstrap_sums_serial = serial_copy(_bootstrap_sums, "_bootstrap_sums_serial")


def _keys(units: int | np.ndarray) -> np.ndarray:
    if isinstance(units, (int, np.integer)):
        return np.arange(int(units), dtype=np.uint64)  # the unit's position
    return np.ascontiguousarray(units, dtype=np.uint64)


def poisson_weights(seeds: np.ndarray, units: int | np.ndarray) -> np.ndarray:
    """Bootstrap weights of shape (n_resamples, n_units), int64 (for tests and small data);
    ``units`` is the units' keys, or their number (keys 0 .. n_units - 1)."""
    return _weights(np.ascontiguousarray(seeds, dtype=np.uint64), _keys(units), _CDF)


def poisson_bootstrap_sums(x: np.ndarray, group: np.ndarray, n_groups: int,
                           seeds: np.ndarray, keys: np.ndarray | None = None,
                           threads: bool = True) -> np.ndarray:
    """Per resample and group, the Poisson-weighted sums of the rows of ``x``.

    Parameters
    ----------
    x : ndarray of float64, shape (n_units, K), C-contiguous
    group : ndarray of int64, shape (n_units,)
        Group (arm) of each unit, in ``0 .. n_groups - 1``.
    n_groups : int
    seeds : ndarray of uint64, shape (n_resamples,)
    keys : ndarray of uint64, shape (n_units,), optional
        Stable key of each unit (default: its position), which with the seed draws its weight.
    threads : bool, default True
        False: the serial kernel (a caller that is itself a thread of a pool). The results
        are identical.

    Returns
    -------
    ndarray of float64, shape (n_resamples, n_groups, K)
        ``out[b, g] = sum over units u of group g of w[b, u] * x[u]``.
    """
    seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
    n_chunks = max(1, min(seeds.shape[0], 4 * numba.get_num_threads()))
    x = np.ascontiguousarray(x, dtype=np.float64)
    kernel = _bootstrap_sums if threads else _bootstrap_sums_serial
    return kernel(x, _keys(x.shape[0] if keys is None else keys),
                           np.ascontiguousarray(group, dtype=np.int64), int(n_groups), seeds,
                           _CDF, n_chunks)


@batch_jit()
def daily_moments(vals: np.ndarray, unit: np.ndarray, group: np.ndarray, kind: np.ndarray,
                  src: np.ndarray, cov: np.ndarray, n_groups: int) -> tuple:
    """Per group, the summary of each row's own values and the increments of running totals.

    Parameters
    ----------
    vals : ndarray of float64, shape (n_base, n_rows)
        Base sums of each (unit, day) row; rows sorted by unit, then day.
    unit : ndarray of int64, shape (n_rows,)
    group : ndarray of int64, shape (n_rows,)
        Group (arm * n_days + day) of each row, in ``0 .. n_groups - 1``.
    kind, src : ndarray of int64, shape (K,)
        Output column k is ``vals[src[k]]`` (kind BASE), ``vals[src[k]] > 0`` (INDICATOR)
        or ``cov[unit, src[k]]`` (COVARIATE), for the row's day or the unit's running total.
    cov : ndarray of float64, shape (n_units, n_cov)
    n_groups : int

    Returns
    -------
    (n_day, s_day, q_day, n_inc, s_inc, q_inc)
        Shapes (G,), (G, K), (G, K, K), twice. ``*_day``: unit count, sums and cross products
        of the rows' own (one day's) values. ``*_inc``: the change, on that row's day, of the
        summary of running totals (a unit enters once; its old outer product is replaced by
        the new one), so that cumulative sums over days give the summary up to each day.
    """
    n_base, n_rows = vals.shape
    k = kind.shape[0]
    n_day = np.zeros(n_groups)
    s_day = np.zeros((n_groups, k))
    q_day = np.zeros((n_groups, k, k))
    n_inc = np.zeros(n_groups)
    s_inc = np.zeros((n_groups, k))
    q_inc = np.zeros((n_groups, k, k))
    run = np.zeros(n_base)
    x = np.empty(k)
    p = np.empty(k)
    c = np.empty(k)
    last = -1
    for r in range(n_rows):
        u = unit[r]
        g = group[r]
        first = u != last
        if first:
            run[:] = 0.0
            last = u
        for j in range(k):
            s = src[j]
            if kind[j] == BASE:
                x[j] = vals[s, r]
                p[j] = run[s]
                c[j] = run[s] + vals[s, r]
            elif kind[j] == INDICATOR:
                x[j] = 1.0 if vals[s, r] > 0 else 0.0
                p[j] = 1.0 if run[s] > 0 else 0.0
                c[j] = 1.0 if run[s] + vals[s, r] > 0 else 0.0
            else:
                x[j] = cov[u, s]
                p[j] = 0.0 if first else cov[u, s]
                c[j] = cov[u, s]
        for s in range(n_base):
            run[s] += vals[s, r]
        n_day[g] += 1.0
        if first:
            n_inc[g] += 1.0
        for i in range(k):
            s_day[g, i] += x[i]
            s_inc[g, i] += c[i] - p[i]
            for j in range(k):
                q_day[g, i, j] += x[i] * x[j]
                q_inc[g, i, j] += c[i] * c[j] - p[i] * p[j]
    return n_day, s_day, q_day, n_inc, s_inc, q_inc


def warmup() -> None:
    """Compile the kernels (a few seconds once; cached on disk afterwards)."""
    seeds = np.array([1, 2], dtype=np.uint64)
    poisson_bootstrap_sums(np.ones((3, 2)), np.zeros(3, dtype=np.int64), 1, seeds)
    poisson_weights(seeds, 3)
    hash_ints(np.zeros(1, dtype=np.int64))
    hash_strings(np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.uint8))
    one = np.zeros(1, dtype=np.int64)
    daily_moments(np.ones((1, 1)), one, one, one, one, np.zeros((1, 1)), 1)

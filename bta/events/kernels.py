"""Numba kernels for :mod:`bta.events`.

They take and return contiguous NumPy arrays. ``is_new_session`` is shared with the
feature kernels (batch and online), so that sessions mean the same thing everywhere.

The wrappers in :mod:`bta.events` validate and convert; each kernel here does one pass
(or two) over the rows and nothing else. Integer inputs are int32 or int64 only (the
wrappers widen smaller types) so that each kernel compiles for few signatures.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from bta._jit import batch_jit, exact_jit

__all__ = [
    "is_new_session",
    "dense_codes",
    "small_factorize",
    "sort_by_user_time",
    "find_duplicates",
    "repeated_codes",
    "gather_columns",
    "user_activity",
    "session_codes",
]

# Segments (one user's events) and tie runs (equal user and time) up to this length are
# sorted / compared by insertion; longer ones (bots, replayed batches) switch to an
# O(k log k) method so that an adversarial user cannot make ingestion quadratic.
_SMALL = 32


@exact_jit()
def is_new_session(t: np.int64, start: np.int64, last: np.int64, gap_ms: np.int64,
                   max_ms: np.int64) -> bool:
    """True when an event at ``t`` opens a new session.

    A session ends after ``gap_ms`` of inactivity (``t - last > gap_ms``) or, when
    ``max_ms > 0``, once it would last longer than ``max_ms`` (``t - start > max_ms``).
    ``start``/``last`` are the current session's first and last event times; pass
    ``last < 0`` style sentinels from the caller for "no session yet" and check that there.
    """
    if t - last > gap_ms:
        return True
    if max_ms > 0 and t - start > max_ms:
        return True
    return False


@batch_jit()
def dense_codes(values, valid, max_span):
    """Dense sorted codes of the integers ``values[valid]`` by direct addressing.

    Parameters
    ----------
    values : ndarray of shape (n,), int32 or int64
    valid : ndarray of shape (n,) or (0,), bool
        Rows to encode; the others get code -1 and do not enter the vocabulary. An
        empty mask means every row is valid (saves a pass over an all-True array).
    max_span : int
        Give up (``ok`` False) when ``max - min + 1`` of the valid values exceeds this,
        because the lookup table would cost more memory than a hash factorization.

    Returns
    -------
    ok : bool
    codes : ndarray of shape (n,), int32
        Code of each row in ``uniques`` order, -1 for invalid rows.
    uniques : ndarray of shape (k,), int64
        The distinct valid values, ascending (``np.unique`` order).
    """
    n = values.shape[0]
    all_valid = valid.shape[0] == 0
    lo = np.int64(0)
    hi = np.int64(-1)
    seen = False
    for i in range(n):
        if all_valid or valid[i]:
            v = np.int64(values[i])
            if not seen:
                lo = v
                hi = v
                seen = True
            elif v < lo:
                lo = v
            elif v > hi:
                hi = v
    if not seen:
        return True, np.full(n, -1, np.int32), np.empty(0, np.int64)
    # hi - lo can overflow int64 (ids at both ends of the range); the uint64 difference
    # is exact since 0 <= hi - lo < 2**64.
    if np.uint64(hi) - np.uint64(lo) >= np.uint64(max_span):
        return False, np.empty(0, np.int32), np.empty(0, np.int64)
    span = hi - lo + 1
    table = np.zeros(span, np.int32)
    for i in range(n):
        if all_valid or valid[i]:
            table[np.int64(values[i]) - lo] = 1
    k = 0
    for j in range(span):
        if table[j]:
            table[j] = k
            k += 1
        else:
            table[j] = -1
    uniques = np.empty(k, np.int64)
    for j in range(span):
        if table[j] >= 0:
            uniques[table[j]] = lo + j
    codes = np.empty(n, np.int32)
    for i in range(n):
        codes[i] = table[np.int64(values[i]) - lo] if all_valid or valid[i] else -1
    return True, codes, uniques


@batch_jit()
def small_factorize(keys, max_distinct):
    """Factorize int64 ``keys`` that take few distinct values, in first-seen order.

    Returns ``(ok, codes, first)``: ``codes`` (int32) index into the distinct keys and
    ``first`` holds the row where each distinct key first occurs. ``ok`` is False (and
    the other outputs meaningless) once more than ``max_distinct`` keys are seen; the
    linear search below is only fast for a handful of keys.
    """
    n = keys.shape[0]
    codes = np.empty(n, np.int32)
    distinct = np.empty(max_distinct, np.int64)
    first = np.empty(max_distinct, np.int64)
    k = 0
    last_key = np.int64(0)
    last_code = -1
    for i in range(n):
        key = keys[i]
        if last_code >= 0 and key == last_key:
            codes[i] = last_code
            continue
        c = -1
        for j in range(k):
            if distinct[j] == key:
                c = j
                break
        if c < 0:
            if k == max_distinct:
                return False, codes, first[:0]
            distinct[k] = key
            first[k] = i
            c = k
            k += 1
        codes[i] = c
        last_key = key
        last_code = c
    return True, codes, first[:k].copy()


@batch_jit()
def _sort_keys(keys, a, b):
    """Sort the distinct int64 ``keys[a:b]`` in place (insertion or quicksort)."""
    for j in range(a + 1, b):
        if keys[j] < keys[j - 1]:
            break
    else:
        return
    if b - a <= _SMALL:
        for j in range(a + 1, b):
            k = keys[j]
            q = j - 1
            while q >= a and keys[q] > k:
                keys[q + 1] = keys[q]
                q -= 1
            keys[q + 1] = k
    else:
        keys[a:b] = np.sort(keys[a:b])


@batch_jit(parallel=True)
def sort_by_user_time(codes, ts, n_users, n_chunks):
    """Stable sort of the rows with ``codes >= 0`` by (code, ts).

    A counting sort on the user code, then each user's segment is sorted on time:
    nothing to do when already sorted, insertion sort for short segments, an
    O(k log k) sort for long ones. The rows are cut into ``n_chunks`` contiguous chunks
    counted and placed in parallel; chunk ``k`` writes each user's rows after those of
    chunks ``< k``, so the result is the same stable order for any ``n_chunks``.

    Each row travels as one key ``(ts - t_min) << bits | row``, ``bits`` being enough
    for any row number: the random-access placement, which dominates the cost, writes
    one array instead of two, and ties on time are ordered by row, i.e. stably, for free.
    This needs the time span to fit in the remaining bits (17 years of milliseconds for
    20M rows); when it does not, ``ok`` is False and the caller passes time ranks.

    Parameters
    ----------
    codes : ndarray of shape (n,), int32
        User code per input row, -1 for rows to leave out.
    ts : ndarray of shape (n,), int64
    n_users : int
    n_chunks : int
        Parallel chunks (>= 1); each costs an (n_users,) counter array.

    Returns
    -------
    ok : bool
    offsets : ndarray of shape (n_users + 1,), int64
    ts_sorted : ndarray of shape (m,), int64
    rows : ndarray of shape (m,), int64
        Input row of each sorted position.
    """
    n = codes.shape[0]
    step = (n + n_chunks - 1) // n_chunks
    cursor = np.zeros((n_chunks, n_users), np.int64)
    t_lo = np.full(n_chunks, np.iinfo(np.int64).max, np.int64)
    t_hi = np.full(n_chunks, np.iinfo(np.int64).min, np.int64)
    for k in prange(n_chunks):
        lo = np.iinfo(np.int64).max
        hi = np.iinfo(np.int64).min
        for i in range(k * step, min(n, (k + 1) * step)):
            c = codes[i]
            if c >= 0:
                cursor[k, c] += 1
                t = ts[i]
                lo = min(lo, t)
                hi = max(hi, t)
        t_lo[k] = lo
        t_hi[k] = hi
    offsets = np.empty(n_users + 1, np.int64)
    total = np.int64(0)
    for u in range(n_users):
        offsets[u] = total
        for k in range(n_chunks):
            count = cursor[k, u]
            cursor[k, u] = total
            total += count
    offsets[n_users] = total
    t_min = t_lo.min()
    bits = 0
    while (np.int64(1) << bits) < n:
        bits += 1
    # uint64 difference: exact even when t_max - t_min overflows int64
    # uint64 difference: exact even when t_max - t_min overflows int64
    if total > 0 and (bits >= 63 or np.uint64(t_hi.max()) - np.uint64(t_min)
                      >= (np.uint64(1) << np.uint64(63 - bits))):
        return False, offsets, np.empty(0, np.int64), np.empty(0, np.int64)
    keys = np.empty(total, np.int64)
    for k in prange(n_chunks):
        for i in range(k * step, min(n, (k + 1) * step)):
            c = codes[i]
            if c >= 0:
                p = cursor[k, c]
                keys[p] = ((ts[i] - t_min) << bits) | i
                cursor[k, c] = p + 1
    for u in prange(n_users):
        _sort_keys(keys, offsets[u], offsets[u + 1])
    ts_sorted = np.empty(total, np.int64)
    mask = (np.int64(1) << bits) - 1
    for j in prange(total):
        key = keys[j]
        ts_sorted[j] = (key >> bits) + t_min
        keys[j] = key & mask  # the key array becomes the row array
    return True, offsets, ts_sorted, keys


@batch_jit()
def _same_row(r1, r2, event, category, value, keys):
    if event[r1] != event[r2]:
        return False
    if category.shape[0] > 0 and category[r1] != category[r2]:
        return False
    if value.shape[0] > 0:
        v1 = value[r1]
        v2 = value[r2]
        # a missing value (NaN) equals another missing value, nothing else
        if v1 != v2 and not (np.isnan(v1) and np.isnan(v2)):
            return False
    for k in range(keys.shape[1]):
        if keys[r1, k] != keys[r2, k]:
            return False
    return True


@batch_jit()
def _mix(h, x):
    # multiply-xorshift mixing: equal inputs give equal keys, and keys of different rows
    # rarely collide (a collision only costs an exact comparison, never a wrong answer)
    h = (h ^ x) * np.int64(-7046029254386353131)
    return h ^ (h >> np.int64(29))


@batch_jit()
def _row_key(r, event, category, value_bits, keys):
    h = _mix(np.int64(0), np.int64(event[r]))
    if category.shape[0] > 0:
        h = _mix(h, np.int64(category[r]))
    if value_bits.shape[0] > 0:
        b = value_bits[r]
        # -0.0 == +0.0 and NaN (any payload) matches NaN, so each needs one key
        if b == np.int64(-9223372036854775808):
            b = np.int64(0)
        elif (b & np.int64(0x7FF0000000000000)) == np.int64(0x7FF0000000000000):
            b = np.int64(0x7FF8000000000000)
        h = _mix(h, b)
    for k in range(keys.shape[1]):
        h = _mix(h, keys[r, k])
    return h


@batch_jit()
def find_duplicates(offsets, ts_sorted, rows, event, category, value, keys):
    """Mark sorted positions that repeat an earlier row exactly.

    Exact duplicates share user and time, so after the sort they sit in the same tie
    run; within a run (input order) a row is a duplicate when an earlier, non-duplicate
    row of the run equals it on event, category, value (NaN equals NaN) and every key.

    Parameters
    ----------
    offsets, ts_sorted, rows : outputs of :func:`sort_by_user_time`
    event : ndarray of shape (n,), int16
        Per input row. ``category`` (int32) and ``value`` (float64) likewise, or empty
        arrays when the column was not provided.
    keys : ndarray of shape (n, k), int64
        Codes of the other columns a duplicate must share (items, sessions, event ids);
        ``k`` may be 0.

    Returns
    -------
    dup : ndarray of shape (m,), bool
    """
    m = ts_sorted.shape[0]
    dup = np.zeros(m, np.bool_)
    value_bits = value.view(np.int64)
    n_users = offsets.shape[0] - 1
    for u in range(n_users):
        a = offsets[u]
        b = offsets[u + 1]
        s = a
        while s < b:
            e = s + 1
            while e < b and ts_sorted[e] == ts_sorted[s]:
                e += 1
            if e - s > 1:
                if e - s <= _SMALL:
                    for j in range(s + 1, e):
                        for i in range(s, j):
                            if not dup[i] and _same_row(rows[i], rows[j], event, category,
                                                        value, keys):
                                dup[j] = True
                                break
                else:
                    hashes = np.empty(e - s, np.int64)
                    for j in range(e - s):
                        hashes[j] = _row_key(rows[s + j], event, category, value_bits, keys)
                    # stable: equal hashes stay in input order, so the first is kept
                    idx = np.argsort(hashes, kind="mergesort")
                    g = 0
                    while g < e - s:
                        h = g + 1
                        while h < e - s and hashes[idx[h]] == hashes[idx[g]]:
                            h += 1
                        for jj in range(g + 1, h):
                            j = s + idx[jj]
                            for ii in range(g, jj):
                                i = s + idx[ii]
                                if not dup[i] and _same_row(rows[i], rows[j], event,
                                                            category, value, keys):
                                    dup[j] = True
                                    break
                        g = h
            s = e
    return dup


@batch_jit()
def repeated_codes(codes, valid, n_codes):
    """True at each row whose code already occurred at an earlier valid row.

    Parameters
    ----------
    codes : ndarray of shape (n,), int64
        Codes in ``[0, n_codes)``; -1 (no code) never repeats.
    valid : ndarray of shape (n,) or (0,), bool
        Rows that take part; empty means all. Rows not valid are never marked and do not
        count as occurrences.

    Returns
    -------
    repeat : ndarray of shape (n,), bool
    """
    n = codes.shape[0]
    all_valid = valid.shape[0] == 0
    seen = np.zeros(n_codes, np.bool_)
    repeat = np.zeros(n, np.bool_)
    for i in range(n):
        c = codes[i]
        if c >= 0 and (all_valid or valid[i]):
            if seen[c]:
                repeat[i] = True
            else:
                seen[c] = True
    return repeat


@batch_jit(parallel=True)
def gather_columns(rows, offsets, event, category, value, user_out):
    """Columns in sorted order: ``event[rows]``, ``category[rows]``, ``value[rows]``;
    user codes from ``offsets`` are written into ``user_out[:m]``.

    ``user_out`` is a dead int32 buffer of at least ``m`` rows (the caller reuses the
    per-input-row user codes, saving one large allocation). ``category`` may be empty
    (output all -1) and so may ``value`` (output empty: the caller uses zeros). Missing
    values (NaN) become 0.0.
    """
    m = rows.shape[0]
    for u in prange(offsets.shape[0] - 1):
        for j in range(offsets[u], offsets[u + 1]):
            user_out[j] = u
    ev = np.empty(m, np.int16)
    cat = np.empty(m, np.int32)
    has_cat = category.shape[0] > 0
    for j in prange(m):
        r = rows[j]
        ev[j] = event[r]
        cat[j] = category[r] if has_cat else -1
    val = np.empty(m if value.shape[0] > 0 else 0, np.float64)
    for j in prange(val.shape[0]):
        v = value[rows[j]]
        val[j] = 0.0 if np.isnan(v) else v
    return ev, cat, val


@batch_jit(parallel=True)
def user_activity(offsets, ts, event, click, impression):
    """Per user: distinct UTC clock hours with events, clicks and impressions.

    Rows are sorted by (user, ts), so distinct hours are counted as changes of
    ``ts // 3_600_000`` (floor division, also right for times before 1970).

    Returns
    -------
    hours, clicks, impressions : ndarray of shape (n_users,), int64
    """
    n_users = offsets.shape[0] - 1
    hours = np.zeros(n_users, np.int64)
    clicks = np.zeros(n_users, np.int64)
    imps = np.zeros(n_users, np.int64)
    for u in prange(n_users):
        h = np.int64(0)
        c = np.int64(0)
        k = np.int64(0)
        last = np.int64(0)
        for j in range(offsets[u], offsets[u + 1]):
            hour = ts[j] // np.int64(3_600_000)
            if h == 0 or hour != last:
                h += 1
                last = hour
            e = event[j]
            if e == click:
                c += 1
            elif e == impression:
                k += 1
        hours[u] = h
        clicks[u] = c
        imps[u] = k
    return hours, clicks, imps


@batch_jit()
def session_codes(ts, offsets, gap_ms, max_ms):
    """Global session code of each sorted event (0, 1, ... in sorted order).

    A session opens at each user's first event and wherever :func:`is_new_session` says.
    """
    m = ts.shape[0]
    out = np.empty(m, np.int64)
    code = np.int64(-1)
    for u in range(offsets.shape[0] - 1):
        a = offsets[u]
        b = offsets[u + 1]
        start = np.int64(0)
        last = np.int64(0)
        for j in range(a, b):
            t = ts[j]
            if j == a or is_new_session(t, start, last, gap_ms, max_ms):
                code += 1
                start = t
            last = t
            out[j] = code
    return out

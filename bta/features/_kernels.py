"""Numba kernels shared by the batch feature builder and the online profiles.

One definition, two paths: the per-event updates (:func:`user_step`, :func:`cell_step`), the
window test (:func:`in_window`) and the row emitter (:func:`emit_row`) are called by both the
batch passes :func:`size_csr` and :func:`fill_csr` (over an :class:`~bta.events.EventLog`
sorted by user and time) and the online kernels in :mod:`bta.features._online_kernels`. They are compiled with ``exact_jit`` (no
fastmath), so the same events in the same order give bit-identical features on both paths.

State layout
------------
User state: ``uI`` (int64, ``N_UI``) and ``uF`` (float64, ``N_UF``), indices below.
Cell state (one cell = one (event type, category) pair of a user): ``cI`` (int64, ``N_CI``) and
``cF`` (float64, ``N_CF``). Decay is kept as a value ``D`` at a reference time ``tref``
(``D(t) = D * 2 ** (-(t - tref) / half_life)``), so adding an event costs one ``exp2``.
"""

from __future__ import annotations

import numpy as np
from numba import prange as numba_prange

from bta.events.kernels import is_new_session
from bta._jit import batch_jit, exact_jit, serial_copy

# Standard event codes (bta.events.STANDARD_EVENTS order is fixed).
EV_IMPRESSION = 2
EV_CLICK = 3
EV_CONVERSION = 4

# Sentinel for "no time yet": no epoch-ms time of a log is this small.
NO_TIME = np.iinfo(np.int64).min

# user int state
U_N_EVENTS = 0
U_LAST_TS = 1
U_N_CONV = 2
U_LAST_CONV = 3
U_N_IMPR = 4
U_N_CLICK = 5
U_SESS_CLOSED = 6      # sessions closed so far
U_SESS_EV_CLOSED = 7   # events in closed sessions
U_SESS_DUR_CLOSED = 8  # summed duration (ms) of closed sessions
U_SESS_START = 9
U_SESS_LAST = 10
U_SESS_EVENTS = 11     # events in the open session
N_UI = 12
# user float state
U_MONETARY = 0
N_UF = 1
# cell int state
C_TREF = 0
C_LAST = 1
C_N = 2
N_CI = 3
# cell float state: one slot, the decayed count
N_CF = 1

#: user-level outputs, in column order (after the per-category block)
USER_FEATURES = (
    "rfm:recency_days",
    "rfm:frequency",
    "rfm:monetary",
    "sessions:count",
    "sessions:mean_events",
    "sessions:mean_duration_s",
    "diversity:entropy",
    "ctr:smoothed",
)
DAY_MS = 86_400_000.0


@exact_jit()
def user_init(uI, uF):
    uI[:] = 0
    uI[U_LAST_TS] = NO_TIME
    uI[U_LAST_CONV] = NO_TIME
    uF[:] = 0.0


@exact_jit()
def user_step(uI, uF, t, ev, value, gap_ms, max_ms):
    """Apply one event (time ``t``, standard event code ``ev``) to a user's state."""
    if uI[U_N_EVENTS] == 0:
        uI[U_SESS_START] = t
        uI[U_SESS_LAST] = t
        uI[U_SESS_EVENTS] = 1
    elif is_new_session(t, uI[U_SESS_START], uI[U_SESS_LAST], gap_ms, max_ms):
        uI[U_SESS_CLOSED] += 1
        uI[U_SESS_EV_CLOSED] += uI[U_SESS_EVENTS]
        uI[U_SESS_DUR_CLOSED] += uI[U_SESS_LAST] - uI[U_SESS_START]
        uI[U_SESS_START] = t
        uI[U_SESS_LAST] = t
        uI[U_SESS_EVENTS] = 1
    else:
        # a late event (t < last) joins the open session without moving its end back
        if t > uI[U_SESS_LAST]:
            uI[U_SESS_LAST] = t
        uI[U_SESS_EVENTS] += 1
    uI[U_N_EVENTS] += 1
    if t > uI[U_LAST_TS]:
        uI[U_LAST_TS] = t
    if ev == EV_CONVERSION:
        uI[U_N_CONV] += 1
        uF[U_MONETARY] += value
        if t > uI[U_LAST_CONV]:
            uI[U_LAST_CONV] = t
    elif ev == EV_IMPRESSION:
        uI[U_N_IMPR] += 1
    elif ev == EV_CLICK:
        uI[U_N_CLICK] += 1


@exact_jit()
def cell_step(D, tref, last, n, t, weight, half_life_ms):
    """One event at ``t`` with decay weight ``weight`` applied to a cell's state.

    Pure function of scalars (callers keep the state in their own layout); returns the new
    ``(D, tref, last, n)``.
    """
    if n == 0:
        return weight, t, t, 1
    if t >= tref:
        return D * np.exp2(-float(t - tref) / half_life_ms) + weight, t, max(last, t), n + 1
    # late event: decay it to the reference time instead
    return D + weight * np.exp2(-float(tref - t) / half_life_ms), tref, last, n + 1


@exact_jit()
def in_window(t, as_of, window_ms, bucket_ms):
    """True when an event at ``t`` (<= as_of) falls in the window ending at ``as_of``.

    Exact mode (``bucket_ms == 0``): ``as_of - window < t``. Bucketed mode: times are floored to
    buckets, ``bucket(as_of) - bucket(t) < window / bucket``.
    """
    if bucket_ms > 0:
        return (as_of // bucket_ms) - (t // bucket_ms) < window_ms // bucket_ms
    return as_of - t < window_ms


@exact_jit()
def row_nnz(k, cells, last, windows_ms, bucket_ms, as_of, has_conv, pv_slot, n_cat, with_user):
    """Number of entries :func:`emit_row` writes for a row (same logic, no values)."""
    n_win = windows_ms.shape[0]
    nnz = 0
    has_pv = False
    for j in range(k):
        nnz += 2  # decay and recency are always stored for a touched cell
        for w in range(n_win):
            if in_window(last[j], as_of, windows_ms[w], bucket_ms):
                nnz += 1
        if pv_slot >= 0 and cells[j] // n_cat == pv_slot:
            has_pv = True
    if with_user:
        nnz += 4  # sessions:count, sessions:mean_events, sessions:mean_duration_s, ctr:smoothed
        if has_conv:
            nnz += 3
        if has_pv:
            nnz += 1
    return nnz


@exact_jit()
def emit_row(k, cells, decay, tref, last, ntot, wcount, windows_ms, bucket_ms, as_of,
             half_life_ms, uI, uF, pv_slot, n_cat, user_col0, ctr_a, ctr_b, with_user,
             out_idx, out_val, pos):
    """Write one user's sparse row; ``cells[:k]`` must be sorted ascending.

    Column of statistic ``s`` of cell ``c`` is ``c * n_stat + s`` with statistics
    ``[count:w for w in windows] + [decay, recency]``; user-level features start at ``user_col0``.
    ``wcount`` is ``(k, n_win)``. Returns the new write position.
    """
    n_win = windows_ms.shape[0]
    n_stat = n_win + 2
    pv_total = 0.0
    for j in range(k):
        base = cells[j] * n_stat
        for w in range(n_win):
            if wcount[j, w] > 0:
                out_idx[pos] = base + w
                out_val[pos] = wcount[j, w]
                pos += 1
        out_idx[pos] = base + n_win
        out_val[pos] = decay[j] * np.exp2(-float(as_of - tref[j]) / half_life_ms)
        pos += 1
        out_idx[pos] = base + n_win + 1
        out_val[pos] = float(as_of - last[j]) / DAY_MS
        pos += 1
        if pv_slot >= 0 and cells[j] // n_cat == pv_slot:
            pv_total += ntot[j]
    if not with_user:
        return pos
    # user-level block, in USER_FEATURES order
    if uI[U_N_CONV] > 0:
        out_idx[pos] = user_col0 + 0
        out_val[pos] = float(as_of - uI[U_LAST_CONV]) / DAY_MS
        out_idx[pos + 1] = user_col0 + 1
        out_val[pos + 1] = uI[U_N_CONV]
        out_idx[pos + 2] = user_col0 + 2
        out_val[pos + 2] = uF[U_MONETARY]
        pos += 3
    n_sess = uI[U_SESS_CLOSED] + 1
    n_ev = uI[U_SESS_EV_CLOSED] + uI[U_SESS_EVENTS]
    dur = uI[U_SESS_DUR_CLOSED] + (uI[U_SESS_LAST] - uI[U_SESS_START])
    out_idx[pos] = user_col0 + 3
    out_val[pos] = n_sess
    out_idx[pos + 1] = user_col0 + 4
    out_val[pos + 1] = n_ev / n_sess
    out_idx[pos + 2] = user_col0 + 5
    out_val[pos + 2] = dur / 1000.0 / n_sess
    pos += 3
    if pv_total > 0:
        h = 0.0
        for j in range(k):
            if cells[j] // n_cat == pv_slot and ntot[j] > 0:
                p = ntot[j] / pv_total
                h -= p * np.log(p)
        out_idx[pos] = user_col0 + 6
        out_val[pos] = h
        pos += 1
    out_idx[pos] = user_col0 + 7
    out_val[pos] = (uI[U_N_CLICK] + ctr_a) / (uI[U_N_IMPR] + ctr_a + ctr_b)
    pos += 1
    return pos


@exact_jit()
def _sort_small(a, k):
    """In-place insertion sort of ``a[:k]`` (rows touch few cells)."""
    for i in range(1, k):
        x = a[i]
        j = i - 1
        while j >= 0 and a[j] > x:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = x


@exact_jit()
def _size_user(lo, hi, ts, event, category, ev_slot, cat_slot, n_cat, as_of, windows_ms,
               bucket_ms, pv_slot, with_user, sN, sL, touched):
    """Pass 1 for one user: row size and number of counted events (no values computed)."""
    k = 0
    counted = 0
    has_conv = False
    has_pv = False
    for i in range(lo, hi):
        t = ts[i]
        if t > as_of:
            break  # sorted by time within the user: nothing later counts
        c = category[i]
        cs = -1
        if c >= 0:
            cs = cat_slot[c]
            if cs == -2:
                continue  # category excluded from every feature
        counted += 1
        ev = event[i]
        if ev == EV_CONVERSION:
            has_conv = True
        es = ev_slot[ev]
        if es < 0 or cs < 0:
            continue
        if es == pv_slot:
            has_pv = True
        cell = es * n_cat + cs
        if sN[cell] == 0:
            touched[k] = cell
            k += 1
        sN[cell] += 1
        sL[cell] = t
    for j in range(k):
        sN[touched[j]] = 0
    if counted == 0:
        return 0, 0
    for j in range(k):
        touched[j] = sL[touched[j]]  # row_nnz only needs the last times
    # row_nnz reads cells only for the page-view check, done above: pass the times twice
    size = row_nnz(k, touched, touched, windows_ms, bucket_ms, as_of, has_conv, -1, n_cat, False)
    return size + _user_block_size(has_conv, has_pv, with_user), counted


@exact_jit()
def _user_block_size(has_conv, has_pv, with_user):
    if not with_user:
        return 0
    return 4 + (3 if has_conv else 0) + (1 if has_pv else 0)


@exact_jit()
def _fold_user(lo, hi, ts, event, category, value, ev_slot, ev_weight, cat_slot, n_cat, as_of,
               windows_ms, bucket_ms, half_life_ms, gap_ms, max_ms, with_user, uI, uF,
               sD, sT, sL, sN, sW, touched):
    """Pass 2 for one user: fold the sorted events ``lo:hi`` (up to ``as_of``) into dense
    per-cell scratch (``sD`` decay, ``sT`` reference time, ``sL`` last time, ``sN`` count,
    ``sW`` window counts, flat ``cell * n_win + w``). Returns the number of touched cells, left
    sorted in ``touched[:k]``.
    """
    n_win = windows_ms.shape[0]
    user_init(uI, uF)
    k = 0
    for i in range(lo, hi):
        t = ts[i]
        if t > as_of:
            break
        c = category[i]
        cs = -1
        if c >= 0:
            cs = cat_slot[c]
            if cs == -2:
                continue
        ev = event[i]
        if with_user:
            user_step(uI, uF, t, ev, value[i], gap_ms, max_ms)
        es = ev_slot[ev]
        if es < 0 or cs < 0:
            continue
        cell = es * n_cat + cs
        n = sN[cell]
        if n == 0:
            touched[k] = cell
            k += 1
            for w in range(n_win):
                sW[cell * n_win + w] = 0
        sD[cell], sT[cell], sL[cell], sN[cell] = cell_step(sD[cell], sT[cell], sL[cell], n, t,
                                                           ev_weight[es], half_life_ms)
        for w in range(n_win):
            if in_window(t, as_of, windows_ms[w], bucket_ms):
                sW[cell * n_win + w] += 1
    _sort_small(touched, k)
    return k


@batch_jit(parallel=True)
def size_csr(user_offsets, ts, event, category, ev_slot, ev_weight, cat_slot, n_cat, pv_slot,
             as_of, windows_ms, bucket_ms, with_user, n_chunks):
    """Pass 1 of the batch build: the exact length of every user's row, and the number of
    events each user has at or before ``as_of`` (0: the user gets no row)."""
    n_users = user_offsets.shape[0] - 1
    n_cells = ev_weight.shape[0] * n_cat
    row_len = np.zeros(n_users, dtype=np.int64)
    counted_per_user = np.zeros(n_users, dtype=np.int64)
    step = (n_users + n_chunks - 1) // n_chunks
    for ch in numba_prange(n_chunks):
        sN = np.zeros(n_cells, dtype=np.int64)
        sL = np.empty(n_cells, dtype=np.int64)
        touched = np.empty(n_cells, dtype=np.int64)
        for u in range(ch * step, min(n_users, (ch + 1) * step)):
            row_len[u], counted_per_user[u] = _size_user(
                user_offsets[u], user_offsets[u + 1], ts, event, category, ev_slot, cat_slot,
                n_cat, as_of, windows_ms, bucket_ms, pv_slot, with_user, sN, sL, touched)
    return row_len, counted_per_user


@batch_jit(parallel=True)
def fill_csr(user_offsets, ts, event, category, value, ev_slot, ev_weight, cat_slot, n_cat,
             pv_slot, as_of, windows_ms, bucket_ms, half_life_ms, gap_ms, max_ms, ctr_a, ctr_b,
             with_user, n_chunks, counted_per_user, row_start, indices, data):
    """Pass 2 of the batch build: write every user's row at ``row_start[u]`` into the
    caller's ``indices``/``data`` (allocated by NumPy, which asks the kernel for huge pages:
    first-touch page faults on the output were a third of the build's time)."""
    n_users = user_offsets.shape[0] - 1
    n_win = windows_ms.shape[0]
    n_stat = n_win + 2
    n_cells = ev_weight.shape[0] * n_cat
    user_col0 = n_cells * n_stat
    step = (n_users + n_chunks - 1) // n_chunks
    for ch in numba_prange(n_chunks):
        uI = np.empty(N_UI, dtype=np.int64)
        uF = np.empty(N_UF, dtype=np.float64)
        sD = np.empty(n_cells, dtype=np.float64)
        sT = np.empty(n_cells, dtype=np.int64)
        sL = np.empty(n_cells, dtype=np.int64)
        sN = np.zeros(n_cells, dtype=np.int64)
        sW = np.empty(n_cells * n_win, dtype=np.int64)
        touched = np.empty(n_cells, dtype=np.int64)
        cd = np.empty(n_cells, dtype=np.float64)
        ct = np.empty(n_cells, dtype=np.int64)
        cl = np.empty(n_cells, dtype=np.int64)
        cn = np.empty(n_cells, dtype=np.float64)
        cw = np.empty((n_cells, n_win), dtype=np.int64)
        for u in range(ch * step, min(n_users, (ch + 1) * step)):
            if counted_per_user[u] == 0:
                continue
            k = _fold_user(user_offsets[u], user_offsets[u + 1], ts, event, category, value,
                           ev_slot, ev_weight, cat_slot, n_cat, as_of, windows_ms, bucket_ms,
                           half_life_ms, gap_ms, max_ms, with_user, uI, uF, sD, sT, sL, sN, sW,
                           touched)
            for j in range(k):
                cell = touched[j]
                cd[j] = sD[cell]
                ct[j] = sT[cell]
                cl[j] = sL[cell]
                cn[j] = sN[cell]
                for w in range(n_win):
                    cw[j, w] = sW[cell * n_win + w]
                sN[cell] = 0
            emit_row(k, touched, cd, ct, cl, cn, cw, windows_ms, bucket_ms, as_of, half_life_ms,
                     uI, uF, pv_slot, n_cat, user_col0, ctr_a, ctr_b, with_user, indices, data,
                     row_start[u])


#: The same kernels compiled without threads, for small logs: waking a thread pool costs more
#: than the work below a few hundred thousand events (and stalls on oversubscribed machines).
size_csr_serial = serial_copy(size_csr, "size_csr_serial")
fill_csr_serial = serial_copy(fill_csr, "fill_csr_serial")

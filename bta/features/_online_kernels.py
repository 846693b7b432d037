"""Numba kernels of :class:`bta.features.OnlineProfiles`.

They keep the state of the feature families (:mod:`bta.features.families`) per user in
growable tables and call the same ``user_step`` / ``cells.cell_step`` / ``cells.in_window`` /
``row_nnz`` / ``emit_row`` kernels as the batch builder. The tables travel as one
:class:`ProfileTables` named tuple, the spec as ``StepParams`` / ``RowParams``.

Tables (owned by the Python class, grown there):

- users: ``U (cap_u, N_H)`` int64, one row per user slot: the ``N_INT`` user-state columns of
  :mod:`bta.features.families`, then the user's window-buffer run (start; length | capacity << 32)
  and cell run (start; length | capacity << 32). One row is 128 bytes, two cache lines when the
  table is 64-byte aligned, so an event reads and writes its user's bookkeeping in two lines.
  ``UF (cap_u, N_FLOAT)`` float64 holds the float user state (read on conversions only).
- cells: each user's (event type, category) cells lie contiguous in one run of the cell pool, as
  the window buffer does: ``CK`` (cell key ``event_slot << 32 | category``) and ``CS (cap_c, 4)``
  int64 = ``tref, last, n`` and the decayed count (float64 bits, read through a float view). A
  user's run is relocated to the end of the pool with doubled capacity when it is full; the
  Python class compacts the pool when it runs out. Finding a cell scans the run's keys (one or
  two cache lines), and its state is one 32-byte row. (The layout before, rows of five arrays
  chained by a per-user linked list, made every event walk scattered rows: about half the
  speed once the state outgrew the CPU cache.) When a pool is full it is compacted in place
  (runs slide down in start order) and doubled only if it stays more than half full: growing
  into fresh memory costs page faults that the compaction does not.
- window buffer pool: ``P (cap_p, 2)`` int64 = event time (floored to the bucket in bucketed
  mode) and ``local_cell << 32 | n`` (the cell's position within its user's run, events merged
  into the entry). Positions within a run survive relocation, so no pointer is ever remapped.

Space a relocation leaves behind is zeroed, so erased data leaves no copy in the pools.

User ids: integer ids map to slots through an open-addressing table of two int64 arrays
(:func:`lookup_ids`); slots of erased users are reused. The update loop prefetches the rows
that the events a few positions ahead will touch (:func:`bta._jit.prefetch`, a hint only): events of
different users are independent, so their memory latencies overlap instead of adding up.
"""

from __future__ import annotations

import numpy as np

from collections import namedtuple

from bta._jit import exact_jit, prefetch
from bta.features.families import (
    N_INT, U_LAST_TS, U_N_EVENTS, Cells, RowOut, UserState, cells, emit_row, row_nnz, user_init,
    user_step,
)
from bta.features.families.cells import C_LAST, C_N, C_TREF, cell_step, in_window

__all__ = ["ProfileTables", "OK", "NEED_POOL", "NEED_CELLS", "N_H", "H_BSTART", "H_BLC", "H_CSTART", "H_CLC",
           "C_DECAY_BITS", "N_CS", "lookup_ids", "rehash", "hash_delete", "update",
           "compact_pool", "compact_cells", "emit", "emit_one", "emit_rows", "erase_users",
           "expired_slots"]

OK = 0
NEED_POOL = 1
NEED_CELLS = 2

#: The state tables (IN/OUT of the kernels): ``U``, ``UF``, ``CK``, ``CS``, ``P`` as above.
ProfileTables = namedtuple("ProfileTables", ["U", "UF", "CK", "CS", "P"])

# user-row columns after the N_INT state columns (12 of them today: a row is 16 int64, 128
# bytes; a family that adds state makes the row longer, which costs a cache line per event)
H_BSTART = N_INT
H_BLC = N_INT + 1
H_CSTART = N_INT + 2
H_CLC = N_INT + 3
N_H = N_INT + 4
# cell-row columns: the int state of families.cells (C_TREF, C_LAST, C_N), then its float
# state (the decayed count) as float64 bits
C_DECAY_BITS = len(cells.CELL_INTS)
N_CS = len(cells.CELL_INTS) + len(cells.CELL_FLOATS)
_LO = 0xFFFFFFFF  # run lengths, local cell positions and merge counts are far below 2 ** 32
# Prefetch distances (events ahead) of the update loop: user rows are requested _AHEAD_USER
# events ahead, and _AHEAD_RUNS events ahead the runs those rows point to. Events of different
# users are independent, so ~8 events of work hide one memory latency (~100 ns) on current CPUs.
_AHEAD_USER = 16
_AHEAD_RUNS = 8


@exact_jit()
def _home(key, mask):
    """Home position of an integer key in a hash table of ``mask + 1`` (a power of two)
    entries: Fibonacci hashing, the product's high bits (consecutive ids spread evenly)."""
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    return np.int64(h >> np.uint64(32)) & mask


@exact_jit()
def lookup_ids(ids, hkeys, hvals, next_slot, free, n_free):
    """Slot of each distinct integer id, in the open-addressing table ``hkeys``/``hvals``
    (linear probing, ``hvals == -1``: empty; the caller keeps it at most half full). Unknown
    ids are inserted and take freed slots (``free[:n_free]``, last first), then new ones from
    ``next_slot`` on. Returns ``(slots, is_new, n_free)``.

    A NumPy table rather than a numba typed dict: a probe is one or two cache lines and the
    next ids' lines are prefetched, ~3x faster per id at a million users."""
    mask = hkeys.shape[0] - 1
    n = ids.shape[0]
    out = np.empty(n, dtype=np.int64)
    is_new = np.zeros(n, dtype=np.bool_)
    n_fresh = 0
    for i in range(n):
        if i + _AHEAD_RUNS < n:
            h = _home(ids[i + _AHEAD_RUNS], mask)
            prefetch(hkeys, h)
            prefetch(hvals, h)
        k = ids[i]
        j = _home(k, mask)
        while hvals[j] != -1 and hkeys[j] != k:
            j = (j + 1) & mask
        if hvals[j] != -1:
            out[i] = hvals[j]
            continue
        if n_free > 0:
            n_free -= 1
            slot = free[n_free]
        else:
            slot = next_slot + n_fresh
            n_fresh += 1
        hkeys[j] = k
        hvals[j] = slot
        out[i] = slot
        is_new[i] = True
    return out, is_new, n_free


@exact_jit()
def rehash(hkeys, hvals, new_keys, new_vals):
    """Insert every entry of one table into another (empty, ``new_vals`` all -1)."""
    mask = new_keys.shape[0] - 1
    for i in range(hkeys.shape[0]):
        if hvals[i] != -1:
            j = _home(hkeys[i], mask)
            while new_vals[j] != -1:
                j = (j + 1) & mask
            new_keys[j] = hkeys[i]
            new_vals[j] = hvals[i]


@exact_jit()
def hash_delete(keys, hkeys, hvals):
    """Remove ``keys`` from the table (backward-shift deletion: no tombstones, so lookups
    stay as short as if the keys had never been inserted); returns how many were present."""
    mask = hkeys.shape[0] - 1
    n_found = 0
    for q in range(keys.shape[0]):
        k = keys[q]
        i = _home(k, mask)
        while hvals[i] != -1 and hkeys[i] != k:
            i = (i + 1) & mask
        if hvals[i] == -1:
            continue
        n_found += 1
        j = i
        while True:
            j = (j + 1) & mask
            if hvals[j] == -1:
                break
            home = _home(hkeys[j], mask)
            # entry j may fill the hole at i unless its home lies cyclically in (i, j]
            if i <= j:
                stays = i < home <= j
            else:
                stays = home > i or home <= j
            if not stays:
                hkeys[i] = hkeys[j]
                hvals[i] = hvals[j]
                i = j
        hkeys[i] = 0
        hvals[i] = -1
    return n_found


@exact_jit()
def _prune(s, U, P, max_window_ms, bucket_ms):
    """Drop buffer entries no window can see again (as_of >= the user's latest event);
    returns the new length."""
    start = U[s, H_BSTART]
    lc = U[s, H_BLC]
    n = lc & _LO
    newest = U[s, U_LAST_TS]
    w = 0
    for r in range(n):
        j = start + r
        if in_window(P[j, 0], newest, max_window_ms, bucket_ms):
            P[start + w, 0] = P[j, 0]
            P[start + w, 1] = P[j, 1]
            w += 1
    for r in range(w, n):
        P[start + r, 0] = 0
        P[start + r, 1] = 0
    U[s, H_BLC] = w | ((lc >> 32) << 32)
    return w


@exact_jit()
def update(slots, ts, event, category, value, i0, ev_slot, ev_weight, cat_flag, step,
           max_window_ms, tables, c_used, p_used):
    """Apply events ``i0:`` (sorted by user, then time) to the tables; events in denied
    categories (``cat_flag == -2``) are counted, not applied, and may have slot -1.

    IN: the events (``slots`` int64 user slots, ``ts``, ``event``, ``category``, ``value``),
    ``ev_slot`` / ``ev_weight`` / ``cat_flag`` (event slot and weight, category flag), ``step``
    (``StepParams``), ``max_window_ms``. IN/OUT: ``tables`` (:class:`ProfileTables`), and the
    pools' used lengths ``c_used`` / ``p_used`` (returned).

    Returns ``(status, next_i, c_used, p_used, n_applied, n_excluded)``. ``status`` is
    ``NEED_POOL`` / ``NEED_CELLS`` when the window-buffer / cell pool is full; the caller grows it
    and calls again from ``next_i`` (nothing of event ``next_i`` has been applied yet).
    """
    U, UF, CK, CS, P = tables
    half_life_ms, bucket_ms = step.half_life_ms, step.bucket_ms
    CF = CS.view(np.float64)
    n = slots.shape[0]
    p_size = P.shape[0]
    c_size = CK.shape[0]
    n_applied = 0
    n_excluded = 0
    for i in range(i0, n):
        # the tables outgrow the CPU cache: request what later events will touch now
        if i + _AHEAD_USER < n and slots[i + _AHEAD_USER] >= 0:  # -1: a denied event
            sa = slots[i + _AHEAD_USER]
            prefetch(U, sa)
            prefetch(U[sa], 8)  # a user row is two cache lines
        if i + _AHEAD_RUNS < n and slots[i + _AHEAD_RUNS] >= 0:
            sa = slots[i + _AHEAD_RUNS]
            prefetch(CK, min(U[sa, H_CSTART], c_size - 1))
            prefetch(CS, min(U[sa, H_CSTART], c_size - 1))
            prefetch(P, min(U[sa, H_BSTART] + (U[sa, H_BLC] & _LO), p_size - 1))
        s = slots[i]
        t = ts[i]
        c = category[i]
        flag = -1
        if c >= 0:
            flag = cat_flag[c]
            if flag == -2:
                n_excluded += 1
                continue
        ev = event[i]
        es = ev_slot[ev]
        cell = -1
        if es >= 0 and flag >= 0:
            tb = t
            if bucket_ms > 0:
                tb = (t // bucket_ms) * bucket_ms
            cstart = U[s, H_CSTART]
            clc = U[s, H_CLC]
            clen = clc & _LO
            key = (es << 32) | c
            local = -1
            for k in range(clen):
                if CK[cstart + k] == key:
                    local = k
                    break
            bstart = U[s, H_BSTART]
            blc = U[s, H_BLC]
            blen = blc & _LO
            bcap = blc >> 32
            merged = False
            if local >= 0 and bucket_ms > 0:
                # bucketed mode: fold into the entry of the same bucket and cell, if any
                r = blen - 1
                while r >= 0 and P[bstart + r, 0] == tb:
                    if (P[bstart + r, 1] >> 32) == local:
                        P[bstart + r, 1] += 1
                        merged = True
                        break
                    r -= 1
            if not merged and blen == bcap:
                blen = _prune(s, U, P, max_window_ms, bucket_ms)
                if blen == bcap:
                    new_cap = max(4, 2 * bcap)
                    if p_used + new_cap > p_size:
                        return NEED_POOL, i, c_used, p_used, n_applied, n_excluded
                    for r in range(blen):
                        P[p_used + r, 0] = P[bstart + r, 0]
                        P[p_used + r, 1] = P[bstart + r, 1]
                        P[bstart + r, 0] = 0
                        P[bstart + r, 1] = 0
                    bstart = p_used
                    bcap = new_cap
                    p_used += new_cap
                    U[s, H_BSTART] = bstart
                    U[s, H_BLC] = blen | (bcap << 32)
            if local < 0:
                ccap = clc >> 32
                if clen == ccap:
                    new_cap = max(4, 2 * ccap)
                    if c_used + new_cap > c_size:
                        return NEED_CELLS, i, c_used, p_used, n_applied, n_excluded
                    for k in range(clen):
                        CK[c_used + k] = CK[cstart + k]
                        CK[cstart + k] = 0
                        for q in range(N_CS):
                            CS[c_used + k, q] = CS[cstart + k, q]
                            CS[cstart + k, q] = 0
                    cstart = c_used
                    ccap = new_cap
                    c_used += new_cap
                    U[s, H_CSTART] = cstart
                local = clen
                CK[cstart + local] = key
                for q in range(N_CS):
                    CS[cstart + local, q] = 0
                U[s, H_CLC] = (clen + 1) | (ccap << 32)
            cell = cstart + local
            if not merged:
                j = bstart + blen
                P[j, 0] = tb
                P[j, 1] = (local << 32) | 1
                U[s, H_BLC] = (blen + 1) | (bcap << 32)
        user_step(UserState(U[s, :N_INT], UF[s]), t, ev, value[i], step)
        if cell >= 0:
            CF[cell, C_DECAY_BITS], CS[cell, C_TREF], CS[cell, C_LAST], CS[cell, C_N] = cell_step(
                CF[cell, C_DECAY_BITS], CS[cell, C_TREF], CS[cell, C_LAST], CS[cell, C_N], t,
                ev_weight[es], half_life_ms)
        n_applied += 1
    return OK, n, c_used, p_used, n_applied, n_excluded


@exact_jit()
def compact_pool(order, U, P, slack):
    """Slide every user's window-buffer run down to the start of the pool, in place; ``order``
    lists the slots with a run by ascending run start, so no run overwrites one not yet moved.
    Each run keeps up to ``slack`` free entries (never more than it had: a run then never
    moves up, past one not yet moved); the space freed at the end is zeroed. Returns the space
    used."""
    used = 0
    end = 0
    for q in range(order.shape[0]):
        s = order[q]
        lc = U[s, H_BLC]
        n = lc & _LO
        old = U[s, H_BSTART]
        end = max(end, old + (lc >> 32))
        cap = min(n + slack, lc >> 32) if n > 0 else 0
        for r in range(n):
            P[used + r, 0] = P[old + r, 0]
            P[used + r, 1] = P[old + r, 1]
        # the run's free tail may hold what it (overlapping its old place) or others left
        P[used + n:used + cap] = 0
        U[s, H_BSTART] = used
        U[s, H_BLC] = n | (cap << 32)
        used += cap
    P[used:max(end, used)] = 0
    return used


@exact_jit()
def compact_cells(order, U, CK, CS, slack):
    """:func:`compact_pool` for the cell pool."""
    used = 0
    end = 0
    for q in range(order.shape[0]):
        s = order[q]
        lc = U[s, H_CLC]
        n = lc & _LO
        old = U[s, H_CSTART]
        end = max(end, old + (lc >> 32))
        cap = min(n + slack, lc >> 32) if n > 0 else 0
        for k in range(n):
            CK[used + k] = CK[old + k]
            for c in range(N_CS):
                CS[used + k, c] = CS[old + k, c]
        CK[used + n:used + cap] = 0
        CS[used + n:used + cap] = 0
        U[s, H_CSTART] = used
        U[s, H_CLC] = n | (cap << 32)
        used += cap
    CK[used:max(end, used)] = 0
    CS[used:max(end, used)] = 0
    return used


@exact_jit()
def _gather(s, as_of, cat_slot, params, tables, pos, got):
    """Collect user ``s``'s cells (column order) and window counts into ``got`` (OUT, a
    ``Cells``); returns the number of cells. IN: ``cat_slot`` (column slot per category code),
    ``params`` (``RowParams``), ``tables`` (:class:`ProfileTables`).

    ``pos`` (at least the user's run length) is scratch: run position -> gathered position."""
    U, CK, CS, P = tables.U, tables.CK, tables.CS, tables.P
    cells_, cd, ct, cl, cn, cw = got
    CF = CS.view(np.float64)
    n_cat = params.n_cat
    windows_ms = params.windows_ms
    n_win = windows_ms.shape[0]
    cstart = U[s, H_CSTART]
    clen = U[s, H_CLC] & _LO
    k = 0
    for q in range(clen):
        cell = cstart + q
        pos[q] = -1
        if CS[cell, C_N] > 0:
            cs = cat_slot[CK[cell] & _LO]
            if cs >= 0:
                cells_[k] = (CK[cell] >> 32) * n_cat + cs
                pos[q] = k
                cd[k] = CF[cell, C_DECAY_BITS]
                ct[k] = CS[cell, C_TREF]
                cl[k] = CS[cell, C_LAST]
                cn[k] = CS[cell, C_N]
                for w in range(n_win):
                    cw[k, w] = 0
                k += 1
    bstart = U[s, H_BSTART]
    for r in range(U[s, H_BLC] & _LO):
        j = pos[P[bstart + r, 1] >> 32]
        if j < 0:
            continue
        for w in range(n_win):
            if in_window(P[bstart + r, 0], as_of, windows_ms[w], params.bucket_ms):
                cw[j, w] += P[bstart + r, 1] & _LO
    # sort the k cells by column (rows touch few cells: insertion sort on all arrays)
    for a in range(1, k):
        x = cells_[a]
        xd, xt, xl, xn = cd[a], ct[a], cl[a], cn[a]
        xw = cw[a].copy()
        b = a - 1
        while b >= 0 and cells_[b] > x:
            cells_[b + 1] = cells_[b]
            cd[b + 1], ct[b + 1], cl[b + 1], cn[b + 1] = cd[b], ct[b], cl[b], cn[b]
            cw[b + 1] = cw[b]
            b -= 1
        cells_[b + 1] = x
        cd[b + 1], ct[b + 1], cl[b + 1], cn[b + 1] = xd, xt, xl, xn
        cw[b + 1] = xw
    return k


@exact_jit()
def _row_cells(m, n_win):
    """Empty ``Cells`` for rows of up to ``m`` cells."""
    return Cells(np.empty(m, dtype=np.int64), np.empty(m, dtype=np.float64),
                 np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64),
                 np.empty(m, dtype=np.float64), np.empty((m, n_win), dtype=np.int64))


@exact_jit()
def emit(slots, as_of, cat_slot, params, tables):
    """CSR rows ``(indptr, indices, data)`` for ``slots`` at ``as_of`` (users without events
    give empty rows). IN: ``cat_slot``, ``params`` (``RowParams``), ``tables``."""
    U, UF = tables.U, tables.UF
    n_req = slots.shape[0]
    m = 1
    for r in range(n_req):
        if slots[r] >= 0:
            m = max(m, U[slots[r], H_CLC] & _LO)
    pos = np.empty(m, dtype=np.int64)
    got = _row_cells(m, params.windows_ms.shape[0])
    indptr = np.zeros(n_req + 1, dtype=np.int64)
    for r in range(n_req):
        s = slots[r]
        size = 0
        if s >= 0 and U[s, U_N_EVENTS] > 0:
            k = _gather(s, as_of, cat_slot, params, tables, pos, got)
            size = row_nnz(k, got.cell, got.last, UserState(U[s, :N_INT], UF[s]), as_of,
                           params)
        indptr[r + 1] = indptr[r] + size
    out = RowOut(np.empty(indptr[n_req], dtype=np.int32),
                 np.empty(indptr[n_req], dtype=np.float64))
    for r in range(n_req):
        s = slots[r]
        if s >= 0 and U[s, U_N_EVENTS] > 0:
            k = _gather(s, as_of, cat_slot, params, tables, pos, got)
            emit_row(k, got, UserState(U[s, :N_INT], UF[s]), as_of, params, out, indptr[r])
    return indptr, out.indices, out.data


@exact_jit()
def emit_one(s, as_of, cat_slot, params, tables):
    """One user's sparse row (indices, values) at ``as_of``, for serving: allocates only
    arrays of the user's own size. IN: ``cat_slot``, ``params`` (``RowParams``), ``tables``."""
    U, UF = tables.U, tables.UF
    m = max(U[s, H_CLC] & _LO, 1)
    pos = np.empty(m, dtype=np.int64)
    got = _row_cells(m, params.windows_ms.shape[0])
    k = _gather(s, as_of, cat_slot, params, tables, pos, got)
    user = UserState(U[s, :N_INT], UF[s])
    size = row_nnz(k, got.cell, got.last, user, as_of, params)
    out = RowOut(np.empty(size, dtype=np.int32), np.empty(size, dtype=np.float64))
    emit_row(k, got, user, as_of, params, out, 0)
    return out.indices, out.data


@exact_jit()
def erase_users(slots, U, UF, CK, CS, P):
    """Forget everything about the user ``slots``: their state rows return to the initial
    state, their cell and buffer runs are zeroed and released (reclaimed at the next
    compaction)."""
    for i in range(slots.shape[0]):
        s = slots[i]
        cstart = U[s, H_CSTART]
        for k in range(U[s, H_CLC] >> 32):
            CK[cstart + k] = 0
            for q in range(N_CS):
                CS[cstart + k, q] = 0
        bstart = U[s, H_BSTART]
        for r in range(U[s, H_BLC] >> 32):
            P[bstart + r, 0] = 0
            P[bstart + r, 1] = 0
        U[s, :] = 0
        user_init(UserState(U[s, :N_INT], UF[s]))


@exact_jit()
def expired_slots(n_slots, U, cutoff):
    """Slots of users with events whose latest event is before ``cutoff``, and the earliest
    latest-event time among the users that stay (``cutoff`` when none stays)."""
    out = np.empty(n_slots, dtype=np.int64)
    k = 0
    oldest = np.iinfo(np.int64).max
    for s in range(n_slots):
        if U[s, U_N_EVENTS] > 0:
            last = U[s, U_LAST_TS]
            if last < cutoff:
                out[k] = s
                k += 1
            elif last < oldest:
                oldest = last
    return out[:k], oldest


@exact_jit()
def emit_rows(slots, as_of, cat_slot, params, tables):
    """CSR rows for ``slots`` (-1: an empty row), each at its own ``as_of``: one
    :func:`emit_one` call per row, so each row is exactly what
    :meth:`OnlineProfiles.vector` returns (``emit`` takes one time for all rows)."""
    n = slots.shape[0]
    indptr = np.zeros(n + 1, dtype=np.int64)
    cap = max(16, 8 * n)
    indices = np.empty(cap, dtype=np.int32)
    data = np.empty(cap, dtype=np.float64)
    k = 0
    for r in range(n):
        if slots[r] >= 0:
            ind, val = emit_one(slots[r], as_of[r], cat_slot, params, tables)
            m = ind.shape[0]
            if k + m > cap:  # grow geometrically: copies stay amortized O(nnz)
                cap = max(2 * cap, k + m)
                grown_i = np.empty(cap, dtype=np.int32)
                grown_d = np.empty(cap, dtype=np.float64)
                grown_i[:k] = indices[:k]
                grown_d[:k] = data[:k]
                indices, data = grown_i, grown_d
            indices[k:k + m] = ind
            data[k:k + m] = val
            k += m
        indptr[r + 1] = k
    return indptr, indices[:k].copy(), data[:k].copy()

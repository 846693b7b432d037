"""Numba kernels of :class:`bta.features.OnlineProfiles`.

They keep the state of :mod:`bta.features._kernels` per user in growable tables and call the same
``user_step`` / ``cell_step`` / ``in_window`` / ``emit_row`` functions as the batch builder.

Tables (owned by the Python class, grown there):

- users: ``UI (cap_u, N_UI)``, ``UF (cap_u, N_UF)``, ``first_cell (cap_u,)`` (head of the user's
  cell list, -1 for none), ``UB (cap_u, 3)`` = window buffer start, length, capacity in the pool.
- cells: ``CI (cap_c, N_CI)``, ``CF (cap_c, N_CF)``, ``cell_ev`` (event slot), ``cell_cat``
  (category code), ``cell_next`` (next cell of the same user). A user's cells are found by
  walking that short list (users touch few cells); a global hash table of all cells cost about
  100 bytes a cell and a cache miss per event at millions of users.
- window buffer pool: ``P_t`` (event time, floored to the bucket in bucketed mode), ``P_cell``
  (global cell index), ``P_n`` (events merged into the entry). Each user owns a contiguous run.
"""

from __future__ import annotations

import numpy as np

from bta._jit import exact_jit
from bta.features._kernels import (
    C_DECAY, C_LAST, C_N, C_TREF, N_CI, U_LAST_TS, U_N_CONV, U_N_EVENTS, cell_step, emit_row, in_window,
    row_nnz, user_init, user_step,
)

OK = 0
NEED_POOL = 1
B_START = 0
B_LEN = 1
B_CAP = 2


@exact_jit()
def lookup_ids(ids, table, next_slot):
    """Slot of each (distinct) integer id; unknown ids get new slots from ``next_slot`` on."""
    out = np.empty(ids.shape[0], dtype=np.int64)
    n_new = 0
    for i in range(ids.shape[0]):
        k = ids[i]
        if k in table:
            out[i] = table[k]
        else:
            out[i] = next_slot + n_new
            table[k] = next_slot + n_new
            n_new += 1
    return out, n_new


@exact_jit()
def _find_cell(head, cell_next, cell_ev, cell_cat, es, c):
    """The user's cell for (event slot, category), or -1."""
    cell = head
    while cell >= 0:
        if cell_cat[cell] == c and cell_ev[cell] == es:
            return cell
        cell = cell_next[cell]
    return -1


@exact_jit()
def _prune(s, UB, UI, P_t, P_cell, P_n, max_window_ms, bucket_ms):
    """Drop buffer entries no window can see again (as_of >= the user's latest event)."""
    start = UB[s, B_START]
    n = UB[s, B_LEN]
    newest = UI[s, U_LAST_TS]
    w = 0
    for r in range(n):
        j = start + r
        if in_window(P_t[j], newest, max_window_ms, bucket_ms):
            P_t[start + w] = P_t[j]
            P_cell[start + w] = P_cell[j]
            P_n[start + w] = P_n[j]
            w += 1
    UB[s, B_LEN] = w


@exact_jit()
def update(slots, ts, event, category, value, i0, ev_slot, ev_weight, cat_flag, n_ev_slots,
           half_life_ms, gap_ms, max_ms, max_window_ms, bucket_ms,
           UI, UF, first_cell, UB, CI, CF, cell_ev, cell_cat, cell_next, n_cells,
           P_t, P_cell, P_n, pool_used):
    """Apply events ``i0:`` (sorted by slot, then time) to the tables.

    Returns ``(status, next_i, n_cells, pool_used, n_applied, n_excluded)``. ``status`` is
    ``NEED_POOL`` when the window-buffer pool is full; the caller grows it and calls again from
    ``next_i`` (nothing of event ``next_i`` has been applied yet).
    """
    n = slots.shape[0]
    pool_size = P_t.shape[0]
    n_applied = 0
    n_excluded = 0
    for i in range(i0, n):
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
        tb = t
        if es >= 0 and flag >= 0:
            if bucket_ms > 0:
                tb = (t // bucket_ms) * bucket_ms
            cell = _find_cell(first_cell[s], cell_next, cell_ev, cell_cat, es, c)
            merged = False
            if cell >= 0 and bucket_ms > 0:
                # bucketed mode: fold into the entry of the same bucket and cell, if any
                start = UB[s, B_START]
                r = UB[s, B_LEN] - 1
                while r >= 0 and P_t[start + r] == tb:
                    if P_cell[start + r] == cell:
                        P_n[start + r] += 1
                        merged = True
                        break
                    r -= 1
            if not merged:
                if UB[s, B_LEN] == UB[s, B_CAP]:
                    _prune(s, UB, UI, P_t, P_cell, P_n, max_window_ms, bucket_ms)
                if UB[s, B_LEN] == UB[s, B_CAP]:
                    new_cap = max(4, 2 * UB[s, B_CAP])
                    if pool_used + new_cap > pool_size:
                        return NEED_POOL, i, n_cells, pool_used, n_applied, n_excluded
                    old = UB[s, B_START]
                    for r in range(UB[s, B_LEN]):
                        P_t[pool_used + r] = P_t[old + r]
                        P_cell[pool_used + r] = P_cell[old + r]
                        P_n[pool_used + r] = P_n[old + r]
                    UB[s, B_START] = pool_used
                    UB[s, B_CAP] = new_cap
                    pool_used += new_cap
            if cell < 0:
                cell = n_cells
                n_cells += 1
                CI[cell, :] = 0
                CF[cell, :] = 0.0
                cell_ev[cell] = es
                cell_cat[cell] = c
                cell_next[cell] = first_cell[s]
                first_cell[s] = cell
            if not merged:
                j = UB[s, B_START] + UB[s, B_LEN]
                P_t[j] = tb
                P_cell[j] = cell
                P_n[j] = 1
                UB[s, B_LEN] += 1
        user_step(UI[s], UF[s], t, ev, value[i], gap_ms, max_ms)
        if cell >= 0:
            CF[cell, C_DECAY], CI[cell, C_TREF], CI[cell, C_LAST], CI[cell, C_N] = cell_step(
                CF[cell, C_DECAY], CI[cell, C_TREF], CI[cell, C_LAST], CI[cell, C_N], t,
                ev_weight[es], half_life_ms)
        n_applied += 1
    return OK, n, n_cells, pool_used, n_applied, n_excluded


@exact_jit()
def compact_pool(n_users, UB, P_t, P_cell, P_n, new_t, new_cell, new_n, slack):
    """Copy every user's live buffer run into new pool arrays; returns the space used."""
    used = 0
    for s in range(n_users):
        n = UB[s, B_LEN]
        cap = n + slack if n > 0 else 0
        old = UB[s, B_START]
        for r in range(n):
            new_t[used + r] = P_t[old + r]
            new_cell[used + r] = P_cell[old + r]
            new_n[used + r] = P_n[old + r]
        UB[s, B_START] = used
        UB[s, B_CAP] = cap
        used += cap
    return used


@exact_jit()
def _local_position(target, head, cell_next, CI, cat_slot, cell_cat):
    """Position of cell ``target`` among the user's gathered cells (same walk as _gather)."""
    k = 0
    cell = head
    while cell >= 0:
        if CI[cell, C_N] > 0 and cat_slot[cell_cat[cell]] >= 0:
            if cell == target:
                return k
            k += 1
        elif cell == target:
            return -1
        cell = cell_next[cell]
    return -1


@exact_jit()
def _gather(s, as_of, cat_slot, n_cat, windows_ms, bucket_ms, first_cell, UB, CI, CF, cell_ev,
            cell_cat, cell_next, P_t, P_cell, P_n, pos_of_cell, cells, cd, ct, cl, cn, cw):
    """Collect a user's cells (column order) and window counts; returns the number of cells."""
    n_win = windows_ms.shape[0]
    k = 0
    cell = first_cell[s]
    while cell >= 0:
        if CI[cell, C_N] > 0:
            cs = cat_slot[cell_cat[cell]]
            if cs >= 0:
                cells[k] = cell_ev[cell] * n_cat + cs
                if pos_of_cell.shape[0] > 0:
                    pos_of_cell[cell] = k
                cd[k] = CF[cell, C_DECAY]
                ct[k] = CI[cell, C_TREF]
                cl[k] = CI[cell, C_LAST]
                cn[k] = CI[cell, C_N]
                for w in range(n_win):
                    cw[k, w] = 0
                k += 1
            elif pos_of_cell.shape[0] > 0:
                pos_of_cell[cell] = -1
        elif pos_of_cell.shape[0] > 0:
            pos_of_cell[cell] = -1
        cell = cell_next[cell]
    start = UB[s, B_START]
    for r in range(UB[s, B_LEN]):
        if pos_of_cell.shape[0] > 0:
            j = pos_of_cell[P_cell[start + r]]
        else:  # single-user reads: no table over all cells, walk the user's short list
            j = _local_position(P_cell[start + r], first_cell[s], cell_next, CI, cat_slot,
                                cell_cat)
        if j < 0:
            continue
        for w in range(n_win):
            if in_window(P_t[start + r], as_of, windows_ms[w], bucket_ms):
                cw[j, w] += P_n[start + r]
    # sort the k cells by column (rows touch few cells: insertion sort on all arrays)
    for a in range(1, k):
        x = cells[a]
        xd, xt, xl, xn = cd[a], ct[a], cl[a], cn[a]
        xw = cw[a].copy()
        b = a - 1
        while b >= 0 and cells[b] > x:
            cells[b + 1] = cells[b]
            cd[b + 1], ct[b + 1], cl[b + 1], cn[b + 1] = cd[b], ct[b], cl[b], cn[b]
            cw[b + 1] = cw[b]
            b -= 1
        cells[b + 1] = x
        cd[b + 1], ct[b + 1], cl[b + 1], cn[b + 1] = xd, xt, xl, xn
        cw[b + 1] = xw
    return k


@exact_jit()
def emit(slots, as_of, cat_slot, n_cat, pv_slot, windows_ms, bucket_ms, half_life_ms, ctr_a,
         ctr_b, with_user, n_ev_slots, UI, UF, first_cell, UB, CI, CF, cell_ev, cell_cat, cell_next, P_t,
         P_cell, P_n, n_cells, max_cells_per_user):
    """CSR rows for ``slots`` at ``as_of`` (users without events give empty rows)."""
    n_win = windows_ms.shape[0]
    n_stat = n_win + 2
    user_col0 = n_ev_slots * n_cat * n_stat
    m = max(max_cells_per_user, 1)
    pos_of_cell = np.empty(max(n_cells, 1), dtype=np.int64)
    cells = np.empty(m, dtype=np.int64)
    cd = np.empty(m, dtype=np.float64)
    ct = np.empty(m, dtype=np.int64)
    cl = np.empty(m, dtype=np.int64)
    cn = np.empty(m, dtype=np.float64)
    cw = np.empty((m, n_win), dtype=np.int64)
    n_req = slots.shape[0]
    indptr = np.zeros(n_req + 1, dtype=np.int64)
    for r in range(n_req):
        s = slots[r]
        size = 0
        if s >= 0 and UI[s, U_N_EVENTS] > 0:
            k = _gather(s, as_of, cat_slot, n_cat, windows_ms, bucket_ms, first_cell, UB, CI, CF,
                        cell_ev, cell_cat, cell_next, P_t, P_cell, P_n, pos_of_cell, cells, cd,
                        ct, cl, cn, cw)
            size = row_nnz(k, cells, cl, windows_ms, bucket_ms, as_of, UI[s, U_N_CONV] > 0,
                           pv_slot, n_cat, with_user)
        indptr[r + 1] = indptr[r] + size
    indices = np.empty(indptr[n_req], dtype=np.int32)
    data = np.empty(indptr[n_req], dtype=np.float64)
    for r in range(n_req):
        s = slots[r]
        if s >= 0 and UI[s, U_N_EVENTS] > 0:
            k = _gather(s, as_of, cat_slot, n_cat, windows_ms, bucket_ms, first_cell, UB, CI, CF,
                        cell_ev, cell_cat, cell_next, P_t, P_cell, P_n, pos_of_cell, cells, cd,
                        ct, cl, cn, cw)
            emit_row(k, cells, cd, ct, cl, cn, cw, windows_ms, bucket_ms, as_of, half_life_ms,
                     UI[s], UF[s], pv_slot, n_cat, user_col0, ctr_a, ctr_b, with_user, indices,
                     data, indptr[r])
    return indptr, indices, data


@exact_jit()
def emit_one(s, as_of, cat_slot, n_cat, pv_slot, windows_ms, bucket_ms, half_life_ms, ctr_a,
             ctr_b, with_user, n_ev_slots, UI, UF, first_cell, UB, CI, CF, cell_ev, cell_cat,
             cell_next, P_t, P_cell, P_n):
    """One user's sparse row (indices, values) at ``as_of``, for serving: allocates only
    arrays of the user's own size."""
    n_win = windows_ms.shape[0]
    user_col0 = n_ev_slots * n_cat * (n_win + 2)
    m = 0
    cell = first_cell[s]
    while cell >= 0:
        m += 1
        cell = cell_next[cell]
    m = max(m, 1)
    no_table = np.empty(0, dtype=np.int64)
    cells = np.empty(m, dtype=np.int64)
    cd = np.empty(m, dtype=np.float64)
    ct = np.empty(m, dtype=np.int64)
    cl = np.empty(m, dtype=np.int64)
    cn = np.empty(m, dtype=np.float64)
    cw = np.empty((m, n_win), dtype=np.int64)
    k = _gather(s, as_of, cat_slot, n_cat, windows_ms, bucket_ms, first_cell, UB, CI, CF,
                cell_ev, cell_cat, cell_next, P_t, P_cell, P_n, no_table, cells, cd, ct, cl, cn,
                cw)
    size = row_nnz(k, cells, cl, windows_ms, bucket_ms, as_of, UI[s, U_N_CONV] > 0, pv_slot,
                   n_cat, with_user)
    indices = np.empty(size, dtype=np.int32)
    data = np.empty(size, dtype=np.float64)
    emit_row(k, cells, cd, ct, cl, cn, cw, windows_ms, bucket_ms, as_of, half_life_ms, UI[s],
             UF[s], pv_slot, n_cat, user_col0, ctr_a, ctr_b, with_user, indices, data, 0)
    return indices, data


@exact_jit()
def cells_per_user(n_users, first_cell, cell_next):
    """Largest number of cells any user holds (sizes the emit scratch)."""
    best = 0
    for s in range(n_users):
        k = 0
        cell = first_cell[s]
        while cell >= 0:
            k += 1
            cell = cell_next[cell]
        if k > best:
            best = k
    return best


@exact_jit()
def erase_user(s, UI, UF, first_cell, UB, CI, CF, cell_ev, cell_cat, cell_next):
    """Forget everything about user slot ``s`` (its cells stay allocated but empty)."""
    cell = first_cell[s]
    while cell >= 0:
        CI[cell, :] = 0
        CF[cell, :] = 0.0
        nxt = cell_next[cell]
        cell_next[cell] = -1
        cell = nxt
    first_cell[s] = -1
    user_init(UI[s], UF[s])
    UB[s, B_LEN] = 0


__all__ = ["update", "emit", "emit_one", "compact_pool", "cells_per_user", "erase_user", "OK", "NEED_POOL",
           "N_CI", "C_LAST"]

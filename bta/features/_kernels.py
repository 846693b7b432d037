"""Batch kernels of :func:`bta.features.build_features`: two passes over an
:class:`~bta.events.EventLog` sorted by user and time, :func:`size_csr` (the exact length of
every row) and :func:`fill_csr` (the rows).

The per-event steps and the row emitter are the feature families' (:mod:`bta.features.families`),
the same kernels :mod:`bta.features._online_kernels` calls; all are compiled with ``exact_jit``
(no fastmath), so the same events in the same order give bit-identical features on both paths.

Arguments travel in named tuples: :class:`EventArrays` and :class:`EventSlots` (IN),
``RowParams`` / ``StepParams`` of :mod:`bta.features.families` (IN), :class:`CellScratch`
(scratch), ``UserState`` (scratch), ``RowOut`` (OUT).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import prange as numba_prange

from bta._jit import batch_jit, exact_jit, serial_copy
from bta.features.families import (
    N_FLOAT, N_INT, Cells, RowOut, UserState, cells, emit_row, row_nnz, user_init, user_step,
)

__all__ = ["EventArrays", "EventSlots", "CellScratch", "size_csr", "fill_csr",
           "size_csr_serial", "fill_csr_serial"]

#: The log's columns (IN): ``user_offsets`` int64 (n_users + 1,), rows ``lo:hi`` of a user
#: sorted by time; ``ts`` int64 epoch ms, ``event`` int16 codes, ``category`` int codes (-1:
#: none), ``value`` float64.
EventArrays = namedtuple("EventArrays", ["user_offsets", "ts", "event", "category", "value"])
#: What events and categories map to (IN): ``ev_slot`` int64 per event code (spec event slot,
#: -1 no per-category features), ``ev_weight`` float64 per event slot (decay weight),
#: ``cat_slot`` int64 per category code (column slot, -1 no column, -2 excluded).
EventSlots = namedtuple("EventSlots", ["ev_slot", "ev_weight", "cat_slot"])
#: Dense per-cell scratch of one thread (scratch, length n_cells): decay at ``tref``,
#: reference and latest times, counts, window counts (flat ``cell * n_win + w``), and the
#: touched cells. ``n`` is zero between users.
CellScratch = namedtuple("CellScratch", ["decay", "tref", "last", "n", "wcount", "touched"])


@exact_jit()
def _cell_scratch(n_cells, n_win):
    return CellScratch(np.empty(n_cells, dtype=np.float64), np.empty(n_cells, dtype=np.int64),
                       np.empty(n_cells, dtype=np.int64), np.zeros(n_cells, dtype=np.int64),
                       np.empty(n_cells * n_win, dtype=np.int64),
                       np.empty(n_cells, dtype=np.int64))


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
def _counted_cell(i, events, slots, n_cat):
    """Where event ``i`` goes: ``(counted, cell)``; not counted when its category is excluded
    from every feature, cell -1 when it has no per-category column."""
    c = events.category[i]
    cs = -1
    if c >= 0:
        cs = slots.cat_slot[c]
        if cs == -2:
            return False, -1
    es = slots.ev_slot[events.event[i]]
    if es < 0 or cs < 0:
        return True, -1
    return True, es * n_cat + cs


@exact_jit()
def _size_user(lo, hi, events, slots, as_of, row, step, user, scratch, last):
    """Pass 1 for one user: row size and number of counted events (no feature values: the
    user state only, for the user families' entry counts). IN: ``events``, ``slots``, ``row``
    (``RowParams``), ``step`` (``StepParams``); scratch: ``user``, ``scratch``, ``last``."""
    sN = scratch.n
    sL = scratch.last
    touched = scratch.touched
    if row.with_user:
        user_init(user)
    k = 0
    counted = 0
    for i in range(lo, hi):
        t = events.ts[i]
        if t > as_of:
            break  # sorted by time within the user: nothing later counts
        ok, cell = _counted_cell(i, events, slots, row.n_cat)
        if not ok:
            continue
        counted += 1
        if row.with_user:
            user_step(user, t, events.event[i], events.value[i], step)
        if cell < 0:
            continue
        if sN[cell] == 0:
            touched[k] = cell
            k += 1
        sN[cell] += 1
        sL[cell] = t
    for j in range(k):
        sN[touched[j]] = 0
        last[j] = sL[touched[j]]
    if counted == 0:
        return 0, 0
    return row_nnz(k, touched, last, user, as_of, row), counted


@exact_jit()
def _fold_user(lo, hi, events, slots, as_of, row, step, user, scratch):
    """Pass 2 for one user: fold the sorted events ``lo:hi`` (up to ``as_of``) into ``user``
    (OUT, a ``UserState``) and the dense per-cell ``scratch`` (OUT, a ``CellScratch``). IN:
    ``events``, ``slots``, ``row`` (``RowParams``), ``step`` (``StepParams``). Returns the
    number of touched cells, left sorted in ``scratch.touched[:k]``.
    """
    n_win = row.windows_ms.shape[0]
    sD, sT, sL, sN, sW = scratch.decay, scratch.tref, scratch.last, scratch.n, scratch.wcount
    touched = scratch.touched
    user_init(user)
    k = 0
    for i in range(lo, hi):
        t = events.ts[i]
        if t > as_of:
            break
        ok, cell = _counted_cell(i, events, slots, row.n_cat)
        if not ok:
            continue
        if row.with_user:
            user_step(user, t, events.event[i], events.value[i], step)
        if cell < 0:
            continue
        n = sN[cell]
        if n == 0:
            touched[k] = cell
            k += 1
            for w in range(n_win):
                sW[cell * n_win + w] = 0
        weight = slots.ev_weight[slots.ev_slot[events.event[i]]]
        sD[cell], sT[cell], sL[cell], sN[cell] = cells.cell_step(sD[cell], sT[cell], sL[cell], n,
                                                                 t, weight, step.half_life_ms)
        for w in range(n_win):
            if cells.in_window(t, as_of, row.windows_ms[w], row.bucket_ms):
                sW[cell * n_win + w] += 1
    _sort_small(touched, k)
    return k


@exact_jit()
def _size_chunk(u_lo, u_hi, events, slots, as_of, row, step, row_len, counted_per_user):
    """:func:`size_csr` for users ``u_lo:u_hi``, with its own scratch (allocated here, not in
    the ``prange`` body: numba may hoist an allocation out of a parallel loop when the arrays
    are written only through a named tuple, and the threads would then share them)."""
    n_cells = slots.ev_weight.shape[0] * row.n_cat
    user = UserState(np.empty(N_INT, dtype=np.int64), np.empty(N_FLOAT, dtype=np.float64))
    scratch = _cell_scratch(n_cells, 0)
    last = np.empty(n_cells, dtype=np.int64)
    for u in range(u_lo, u_hi):
        row_len[u], counted_per_user[u] = _size_user(
            events.user_offsets[u], events.user_offsets[u + 1], events, slots, as_of, row,
            step, user, scratch, last)


@exact_jit()
def _fill_chunk(u_lo, u_hi, events, slots, as_of, row, step, counted_per_user, row_start, out):
    """:func:`fill_csr` for users ``u_lo:u_hi``, with its own scratch (see
    :func:`_size_chunk`)."""
    n_win = row.windows_ms.shape[0]
    n_cells = slots.ev_weight.shape[0] * row.n_cat
    user = UserState(np.empty(N_INT, dtype=np.int64), np.empty(N_FLOAT, dtype=np.float64))
    scratch = _cell_scratch(n_cells, n_win)
    got = Cells(np.empty(n_cells, dtype=np.int64), np.empty(n_cells, dtype=np.float64),
                np.empty(n_cells, dtype=np.int64), np.empty(n_cells, dtype=np.int64),
                np.empty(n_cells, dtype=np.float64), np.empty((n_cells, n_win), dtype=np.int64))
    for u in range(u_lo, u_hi):
        if counted_per_user[u] == 0:
            continue
        k = _fold_user(events.user_offsets[u], events.user_offsets[u + 1], events, slots,
                       as_of, row, step, user, scratch)
        for j in range(k):
            cell = scratch.touched[j]
            got.cell[j] = cell
            got.decay[j] = scratch.decay[cell]
            got.tref[j] = scratch.tref[cell]
            got.last[j] = scratch.last[cell]
            got.n[j] = scratch.n[cell]
            for w in range(n_win):
                got.wcount[j, w] = scratch.wcount[cell * n_win + w]
            scratch.n[cell] = 0
        emit_row(k, got, user, as_of, row, out, row_start[u])


@batch_jit(parallel=True)
def size_csr(events, slots, as_of, row, step, n_chunks):
    """Pass 1 of the batch build: the exact length of every user's row, and the number of
    events each user has at or before ``as_of`` (0: the user gets no row).

    IN: ``events`` (:class:`EventArrays`), ``slots`` (:class:`EventSlots`), ``row``
    (``RowParams``), ``step`` (``StepParams``), ``n_chunks`` (users are cut in this many
    chunks, one thread's scratch each). Returns ``(row_len, counted_per_user)``.
    """
    n_users = events.user_offsets.shape[0] - 1
    row_len = np.zeros(n_users, dtype=np.int64)
    counted_per_user = np.zeros(n_users, dtype=np.int64)
    chunk = (n_users + n_chunks - 1) // n_chunks
    for ch in numba_prange(n_chunks):
        _size_chunk(ch * chunk, min(n_users, (ch + 1) * chunk), events, slots, as_of, row,
                    step, row_len, counted_per_user)
    return row_len, counted_per_user


@batch_jit(parallel=True)
def fill_csr(events, slots, as_of, row, step, n_chunks, counted_per_user, row_start, out):
    """Pass 2 of the batch build: write every user's row at ``row_start[u]`` into ``out``.

    IN: ``events`` (:class:`EventArrays`), ``slots`` (:class:`EventSlots`), ``row``
    (``RowParams``), ``step`` (``StepParams``), ``n_chunks``, and pass 1's
    ``counted_per_user`` and ``row_start`` (int64, per user). OUT: ``out`` (a ``RowOut``),
    allocated by NumPy, which asks the kernel for huge pages: first-touch page faults on the
    output were a third of the build's time.
    """
    n_users = events.user_offsets.shape[0] - 1
    chunk = (n_users + n_chunks - 1) // n_chunks
    for ch in numba_prange(n_chunks):
        _fill_chunk(ch * chunk, min(n_users, (ch + 1) * chunk), events, slots, as_of, row,
                    step, counted_per_user, row_start, out)


#: The same kernels compiled without threads, for small logs: waking a thread pool costs more
#: than the work below a few hundred thousand events (and stalls on oversubscribed machines).
size_csr_serial = serial_copy(size_csr, "size_csr_serial")
fill_csr_serial = serial_copy(fill_csr, "fill_csr_serial")

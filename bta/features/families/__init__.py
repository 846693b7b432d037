"""Feature families: each one a module that declares its state, its per-event step, its
emitted columns and their names, and points to its naive reference.

- :mod:`~bta.features.families.cells`: the per-category block (``count:``, ``decay:``,
  ``recency:`` of each (event type, category) cell);
- the user-level families, in column order (:data:`USER_FAMILIES`):
  :mod:`~bta.features.families.rfm`, :mod:`~bta.features.families.sessions`,
  :mod:`~bta.features.families.diversity`, :mod:`~bta.features.families.ctr`.

This module lays them out from their declarations, once: each user family's slice of the
per-user state (after the bookkeeping fields :data:`CORE_INTS`) and its run of columns after the
per-category block (:data:`BASES`), the names (:data:`USER_FEATURES`) and NaN-when-absent
columns (:data:`USER_NAN_ABSENT`) that :func:`bta.features.matrix.layout_for` reads. Its kernels
run the families one after another: :func:`user_step` (every event), :func:`row_nnz` and
:func:`emit_row` (one row). The batch builder (:mod:`bta.features._kernels`) and the online
profiles (:mod:`bta.features._online_kernels`) call these same kernels, so the two paths
cannot disagree. The family kernels are inlined (``exact_jit(inline=True)``): the composite
kernels compile as one function each, as many specializations as before the split.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np

from bta._jit import exact_jit
from bta.features.families import cells, ctr, diversity, rfm, sessions
from bta.features.families._base import (
    NO_TIME, Cells, RowOut, RowParams, StepParams, UserFamily, UserState, positions,
)

__all__ = ["USER_FAMILIES", "CORE_INTS", "U_N_EVENTS", "U_LAST_TS", "N_INT", "N_FLOAT",
           "INITIAL_INTS", "BASES", "USER_FEATURES", "USER_NAN_ABSENT", "UserFamily",
           "UserState", "Cells", "RowParams", "StepParams", "RowOut", "NO_TIME", "user_init",
           "user_step", "row_nnz", "emit_row", "row_params", "step_params", "cells"]

#: user-level families, in column order (after the per-category block)
USER_FAMILIES: tuple[UserFamily, ...] = (rfm.FAMILY, sessions.FAMILY, diversity.FAMILY,
                                         ctr.FAMILY)

#: bookkeeping state of every user, before the families' slices: events counted, latest time
CORE_INTS = ("n_events", "last_ts")
U_N_EVENTS, U_LAST_TS = positions(CORE_INTS)

#: where a family's state and columns start: int and float state offsets, first column
#: relative to the first user-level column
Base = namedtuple("Base", ["i0", "f0", "col"])


def _lay_out(families: tuple[UserFamily, ...]) -> tuple[dict[str, Base], int, int, np.ndarray]:
    bases = {}
    i0, f0, col = len(CORE_INTS), 0, 0
    initial = [0, NO_TIME]  # n_events, last_ts
    for fam in families:
        bases[fam.name] = Base(i0, f0, col)
        start = dict(fam.initial)
        initial.extend(start.get(f, 0) for f in fam.ints)
        i0 += len(fam.ints)
        f0 += len(fam.floats)
        col += len(fam.columns)
    return bases, i0, f0, np.array(initial, dtype=np.int64)


BASES, N_INT, N_FLOAT, INITIAL_INTS = _lay_out(USER_FAMILIES)
INITIAL_INTS.setflags(write=False)
#: user-level feature names, in column order
USER_FEATURES: tuple[str, ...] = tuple(c for fam in USER_FAMILIES for c in fam.columns)
#: user-level features that are NaN (not 0) when absent
USER_NAN_ABSENT: frozenset[str] = frozenset(c for fam in USER_FAMILIES for c in fam.nan_absent)

# the bases as module constants, which numba freezes into the kernels
_RFM = BASES["rfm"]
_SESSIONS = BASES["sessions"]
_DIVERSITY = BASES["diversity"]
_CTR = BASES["ctr"]


def row_params(spec: Any, layout: Any) -> RowParams:
    """The :class:`RowParams` of ``spec`` over ``layout`` (a :class:`~bta.features.matrix.Layout`),
    typed once here so every caller compiles the same specialization."""
    n_stat = len(spec.windows_ms) + len(cells.TAIL_STATS)
    return RowParams(
        windows_ms=spec.windows_ms, bucket_ms=np.int64(spec.bucket_ms),
        half_life_ms=float(spec.half_life_ms), pv_slot=np.int64(layout.pv_slot),
        n_cat=np.int64(layout.n_cat),
        user_col0=np.int64(len(spec.events) * layout.n_cat * n_stat),
        ctr_a=float(spec.ctr_prior[0]), ctr_b=float(spec.ctr_prior[1]),
        with_user=bool(spec.user_features))


def step_params(spec: Any) -> StepParams:
    """The :class:`StepParams` of ``spec``."""
    return StepParams(half_life_ms=float(spec.half_life_ms),
                      gap_ms=np.int64(spec.session_gap_ms), max_ms=np.int64(spec.max_session_ms),
                      bucket_ms=np.int64(spec.bucket_ms))


@exact_jit()
def user_init(user):
    """Reset ``user`` (OUT, a ``UserState``) to the initial state."""
    user.ints[:] = INITIAL_INTS
    user.floats[:] = 0.0


@exact_jit()
def user_step(user, t, ev, value, params):
    """Apply one event (time ``t``, standard event code ``ev``, ``value``) to every user
    family's state (``user`` a ``UserState``, IN/OUT; ``params`` a ``StepParams``)."""
    user.ints[U_N_EVENTS] += 1
    if t > user.ints[U_LAST_TS]:
        user.ints[U_LAST_TS] = t
    rfm.step(user, _RFM.i0, _RFM.f0, t, ev, value, params)
    sessions.step(user, _SESSIONS.i0, _SESSIONS.f0, t, ev, value, params)
    ctr.step(user, _CTR.i0, _CTR.f0, t, ev, value, params)


@exact_jit()
def row_nnz(k, cell, last, user, as_of, params):
    """Number of entries :func:`emit_row` writes for a row: ``k`` cells ``cell[:k]`` with
    latest times ``last[:k]`` (IN, any order) and the user state ``user`` (IN)."""
    nnz = cells.cell_entries(k, last, as_of, params)
    if params.with_user:
        nnz += rfm.n_entries(user, _RFM.i0)
        nnz += sessions.n_entries(user, _SESSIONS.i0)
        nnz += diversity.n_entries(k, cell, params)
        nnz += ctr.n_entries(user, _CTR.i0)
    return nnz


@exact_jit()
def emit_row(k, row_cells, user, as_of, params, out, pos):
    """Write one user's sparse row at ``as_of`` into ``out`` (OUT, a ``RowOut``) from ``pos``.

    IN: ``row_cells`` (a ``Cells``, the first ``k`` sorted ascending by cell), ``user`` (a
    ``UserState``), ``params`` (a ``RowParams``). The per-category block comes first, then the
    user-level families in column order from ``params.user_col0``. Returns the new write
    position.
    """
    pos = cells.emit_cells(k, row_cells, as_of, params, out, pos)
    if not params.with_user:
        return pos
    col0 = params.user_col0
    pos = rfm.emit(user, _RFM.i0, _RFM.f0, as_of, params, col0 + _RFM.col, out, pos)
    pos = sessions.emit(user, _SESSIONS.i0, _SESSIONS.f0, as_of, params, col0 + _SESSIONS.col,
                        out, pos)
    pos = diversity.emit(k, row_cells, params, col0 + _DIVERSITY.col, out, pos)
    pos = ctr.emit(user, _CTR.i0, _CTR.f0, as_of, params, col0 + _CTR.col, out, pos)
    return pos

"""The per-category family: one *cell* per (event type, category) pair of a user, with a count
per window, a decayed count and a recency.

Declaration
-----------
- state: ``CELL_INTS`` (int64) and ``CELL_FLOATS`` (float64) per cell. Decay is kept as a value
  ``D`` at a reference time ``tref`` (``D(t) = D * 2 ** (-(t - tref) / half_life)``), so
  adding an event costs one ``exp2``; window counts are not state (the batch builder counts
  them in its fold, the online profiles from their window buffer).
- columns: cell ``c`` holds columns ``c * n_stat + s`` for the statistics of :func:`stats`:
  ``count:{w}`` for each window, then ``TAIL_STATS`` (``decay``, ``recency``) at
  ``n_win + DECAY`` and ``n_win + RECENCY``.
- names: :func:`feature_name`; ``recency`` is NaN when absent.
- step: :func:`cell_step` (and :func:`in_window`); emit: :func:`emit_cells`, whose entry count
  is :func:`cell_entries`.
- naive reference: ``tests/naive.py::naive_features``, the ``count:`` / ``decay:`` /
  ``recency:`` entries.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bta._jit import exact_jit
from bta.features.families._base import DAY_MS, positions

__all__ = ["CELL_INTS", "CELL_FLOATS", "C_TREF", "C_LAST", "C_N", "TAIL_STATS", "DECAY",
           "RECENCY", "NAN_ABSENT_STATS", "stats", "feature_name", "cell_step", "in_window",
           "cell_entries", "emit_cells", "NAIVE"]

#: int64 state of a cell: reference time of the decay, latest event time, event count
CELL_INTS = ("tref", "last", "n")
#: float64 state of a cell: the decayed count at ``tref``
CELL_FLOATS = ("decay",)
C_TREF, C_LAST, C_N = positions(CELL_INTS)

#: statistics after the window counts, in column order
TAIL_STATS = ("decay", "recency")
DECAY, RECENCY = positions(TAIL_STATS)
#: statistics whose absence means "never happened" (NaN in dense views)
NAN_ABSENT_STATS = ("recency",)
NAIVE = "tests/naive.py::naive_features (count:, decay:, recency: entries)"


def stats(windows: tuple[str, ...]) -> tuple[str, ...]:
    """Per-cell statistics in column order: one count per window, then ``TAIL_STATS``."""
    return tuple(f"count:{w}" for w in windows) + TAIL_STATS


def feature_name(event: str, category: Any, stat: str) -> str:
    """Name of a per-category feature, e.g. ``count:page_view:autos:7d``."""
    if stat.startswith("count:"):
        return f"count:{event}:{category}:{stat[6:]}"
    return f"{stat}:{event}:{category}"


@exact_jit()
def cell_step(D, tref, last, n, t, weight, half_life_ms):
    """One event at ``t`` with decay weight ``weight`` applied to a cell's state.

    Pure function of scalars (IN: the state ``D, tref, last, n`` and the event; callers keep
    the state in their own layout); returns the new ``(D, tref, last, n)``.
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
def cell_entries(k, last, as_of, params):
    """Number of entries :func:`emit_cells` writes for ``k`` cells with latest event times
    ``last[:k]`` (IN; ``params`` a ``RowParams``). A window count is stored when > 0, which
    for events at or before ``as_of`` is when the latest one is in the window."""
    windows_ms = params.windows_ms
    nnz = 0
    for j in range(k):
        nnz += len(TAIL_STATS)  # decay and recency are always stored for a touched cell
        for w in range(windows_ms.shape[0]):
            if in_window(last[j], as_of, windows_ms[w], params.bucket_ms):
                nnz += 1
    return nnz


@exact_jit()
def emit_cells(k, cells, as_of, params, out, pos):
    """Write the per-category entries of ``k`` cells (IN ``cells``, a ``Cells`` sorted by
    column; ``params`` a ``RowParams``) into ``out`` (OUT, a ``RowOut``) from ``pos`` on;
    returns the new write position."""
    n_win = params.windows_ms.shape[0]
    n_stat = n_win + len(TAIL_STATS)
    for j in range(k):
        base = cells.cell[j] * n_stat
        for w in range(n_win):
            if cells.wcount[j, w] > 0:
                out.indices[pos] = base + w
                out.data[pos] = cells.wcount[j, w]
                pos += 1
        out.indices[pos] = base + n_win + DECAY
        out.data[pos] = cells.decay[j] * np.exp2(-float(as_of - cells.tref[j])
                                                 / params.half_life_ms)
        pos += 1
        out.indices[pos] = base + n_win + RECENCY
        out.data[pos] = float(as_of - cells.last[j]) / DAY_MS
        pos += 1
    return pos

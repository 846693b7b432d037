"""Smoothed click-through rate: ``ctr:smoothed = (clicks + a) / (impressions + a + b)`` with
``(a, b) = spec.ctr_prior`` (a Beta prior). Always stored."""

from __future__ import annotations

from bta._jit import exact_jit
from bta.features.families._base import EV_CLICK, EV_IMPRESSION, UserFamily, positions

__all__ = ["FAMILY"]

FAMILY = UserFamily(
    name="ctr",
    columns=("ctr:smoothed",),
    ints=("n_impr", "n_click"),
    naive="tests/naive.py::naive_features (ctr:smoothed)",
)
N_IMPR, N_CLICK = positions(FAMILY.ints)
(SMOOTHED,) = positions(FAMILY.columns)
N_COLUMNS = len(FAMILY.columns)


@exact_jit(inline=True)
def step(user, i0, f0, t, ev, value, params):
    """Count impressions and clicks (``user`` a ``UserState``, IN/OUT)."""
    if ev == EV_IMPRESSION:
        user.ints[i0 + N_IMPR] += 1
    elif ev == EV_CLICK:
        user.ints[i0 + N_CLICK] += 1


@exact_jit(inline=True)
def n_entries(user, i0):
    """Entries :func:`emit` writes: one, always."""
    return N_COLUMNS


@exact_jit(inline=True)
def emit(user, i0, f0, as_of, params, col0, out, pos):
    """Write ``ctr:smoothed`` at ``col0 + SMOOTHED`` into ``out`` (OUT); ``params`` a
    ``RowParams`` (``ctr_a``, ``ctr_b``). Returns the new position."""
    out.indices[pos] = col0 + SMOOTHED
    out.data[pos] = ((user.ints[i0 + N_CLICK] + params.ctr_a)
                     / (user.ints[i0 + N_IMPR] + params.ctr_a + params.ctr_b))
    return pos + 1

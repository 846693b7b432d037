"""Recency, frequency and monetary value of a user's conversions.

- ``rfm:recency_days``: days since the latest conversion (NaN when none);
- ``rfm:frequency``: number of conversions; ``rfm:monetary``: sum of their values.

All three are stored only when the user has a conversion.
"""

from __future__ import annotations

from bta._jit import exact_jit
from bta.features.families._base import DAY_MS, EV_CONVERSION, NO_TIME, UserFamily, positions

__all__ = ["FAMILY"]

FAMILY = UserFamily(
    name="rfm",
    columns=("rfm:recency_days", "rfm:frequency", "rfm:monetary"),
    nan_absent=("rfm:recency_days",),
    ints=("n_conv", "last_conv"),
    floats=("monetary",),
    initial=(("last_conv", NO_TIME),),
    naive="tests/naive.py::naive_features (rfm: entries)",
)
N_CONV, LAST_CONV = positions(FAMILY.ints)
(MONETARY_SUM,) = positions(FAMILY.floats)
RECENCY_DAYS, FREQUENCY, MONETARY = positions(FAMILY.columns)
N_COLUMNS = len(FAMILY.columns)


@exact_jit(inline=True)
def step(user, i0, f0, t, ev, value, params):
    """Fold one event into the family's state (``user`` a ``UserState``, IN/OUT)."""
    if ev == EV_CONVERSION:
        user.ints[i0 + N_CONV] += 1
        user.floats[f0 + MONETARY_SUM] += value
        if t > user.ints[i0 + LAST_CONV]:
            user.ints[i0 + LAST_CONV] = t


@exact_jit(inline=True)
def n_entries(user, i0):
    """Entries :func:`emit` writes for this state."""
    return N_COLUMNS if user.ints[i0 + N_CONV] > 0 else 0


@exact_jit(inline=True)
def emit(user, i0, f0, as_of, params, col0, out, pos):
    """Write the family's entries at columns ``col0 + ...`` into ``out`` (OUT, a ``RowOut``)
    from ``pos``; returns the new position."""
    if user.ints[i0 + N_CONV] == 0:
        return pos
    out.indices[pos] = col0 + RECENCY_DAYS
    out.data[pos] = float(as_of - user.ints[i0 + LAST_CONV]) / DAY_MS
    out.indices[pos + 1] = col0 + FREQUENCY
    out.data[pos + 1] = user.ints[i0 + N_CONV]
    out.indices[pos + 2] = col0 + MONETARY
    out.data[pos + 2] = user.floats[f0 + MONETARY_SUM]
    return pos + 3

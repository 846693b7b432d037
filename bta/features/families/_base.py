"""What every feature family shares: the declaration type, the kernel-side named tuples and
the constants of the event stream.

A *user family* (rfm, sessions, diversity, ctr) owns a slice of the per-user state and a run of
columns after the per-category block. It declares both by name (:class:`UserFamily`); the
registry (:mod:`bta.features.families`) lays the slices and runs out one after another, so a
family's kernels index its state as ``ints[i0 + FIELD]`` and its columns as ``col0 + COLUMN``
with ``FIELD`` / ``COLUMN`` positions computed from the declared names, never typed by hand.

Kernel arguments are grouped into named tuples (numba types them field by field):

- :class:`UserState` ``(ints, floats)``: one user's state, int64 and float64 (IN/OUT of the
  steps, IN of the emitters);
- :class:`Cells` ``(cell, decay, tref, last, n, wcount)``: a row's touched cells, sorted by
  column (IN of the emitters);
- :class:`RowParams`: the spec and layout values an emitter needs (IN);
- :class:`StepParams`: the spec values a per-event step needs (IN);
- :class:`RowOut` ``(indices, data)``: the CSR arrays rows are written into (OUT).
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import numpy as np

__all__ = ["UserFamily", "UserState", "Cells", "RowParams", "StepParams", "RowOut", "NO_TIME",
           "EV_IMPRESSION", "EV_CLICK", "EV_CONVERSION", "DAY_MS", "positions"]

# Standard event codes (bta.events.STANDARD_EVENTS order is fixed).
EV_IMPRESSION = 2
EV_CLICK = 3
EV_CONVERSION = 4

#: Sentinel for "no time yet": no epoch-ms time of a log is this small.
NO_TIME = np.iinfo(np.int64).min
DAY_MS = 86_400_000.0


@dataclass(frozen=True)
class UserFamily:
    """Declaration of a user-level feature family (everything but its kernels).

    Attributes
    ----------
    name : str
        Short name, the prefix of its columns.
    columns : tuple of str
        Its feature names, in column order.
    nan_absent : tuple of str
        The columns whose absence means "undefined" (NaN in dense views), not 0.
    ints, floats : tuple of str
        Names of its int64 and float64 per-user state fields.
    initial : tuple of (str, int)
        Int fields whose initial value is not 0 (float fields start at 0.0).
    naive : str
        Where its naive reference lives (checked by ``tests/test_features.py``).
    """

    name: str
    columns: tuple[str, ...]
    nan_absent: tuple[str, ...] = ()
    ints: tuple[str, ...] = ()
    floats: tuple[str, ...] = ()
    initial: tuple[tuple[str, int], ...] = ()
    naive: str = ""

    def __post_init__(self) -> None:
        if not set(self.nan_absent) <= set(self.columns):
            raise ValueError(f"family {self.name}: nan_absent {self.nan_absent} must be columns "
                             f"of {self.columns}")
        if not {f for f, _ in self.initial} <= set(self.ints):
            raise ValueError(f"family {self.name}: initial values must name int fields")
        for c in self.columns:
            if not c.startswith(self.name + ":"):
                raise ValueError(f"family {self.name}: column {c!r} must start with "
                                 f"{self.name + ':'!r}")


def positions(names: tuple[str, ...]) -> tuple[int, ...]:
    """``0 .. len(names) - 1``: unpack into one named constant per declared name."""
    return tuple(range(len(names)))


#: One user's state: ``ints`` int64 of shape (N_INT,), ``floats`` float64 of shape (N_FLOAT,).
UserState = namedtuple("UserState", ["ints", "floats"])

#: The touched cells of one row, sorted by column; arrays of length >= k (k passed apart):
#: ``cell`` int64 (event slot * n_cat + category slot), ``decay`` float64 (at ``tref``),
#: ``tref``/``last`` int64 times, ``n`` float64 count, ``wcount`` int64 of shape (k, n_win).
Cells = namedtuple("Cells", ["cell", "decay", "tref", "last", "n", "wcount"])

#: Spec and layout values of an emitter: ``windows_ms`` int64 array, ``bucket_ms`` int64,
#: ``half_life_ms`` float64, ``pv_slot`` int64 (event slot of page_view, -1 none), ``n_cat``
#: int64, ``user_col0`` int64 (first user-level column), ``ctr_a``/``ctr_b`` float64,
#: ``with_user`` bool.
RowParams = namedtuple("RowParams", ["windows_ms", "bucket_ms", "half_life_ms", "pv_slot",
                                     "n_cat", "user_col0", "ctr_a", "ctr_b", "with_user"])

#: Spec values of a per-event step: ``half_life_ms`` float64, ``gap_ms`` and ``max_ms`` int64
#: (session gap, maximum session; 0: none), ``bucket_ms`` int64.
StepParams = namedtuple("StepParams", ["half_life_ms", "gap_ms", "max_ms", "bucket_ms"])

#: Where rows are written: ``indices`` int32 and ``data`` float64, of the total row length.
RowOut = namedtuple("RowOut", ["indices", "data"])

"""Diversity of a user's interests: ``diversity:entropy = -sum p_c ln p_c`` over the share
``p_c`` of the user's page views in each category with columns. Stored (and defined) only when
the user has such a page view, and only when "page_view" is in ``spec.events``.

No state of its own: it reads the row's page-view cells (``Cells.n``).
"""

from __future__ import annotations

import numpy as np

from bta._jit import exact_jit
from bta.features.families._base import UserFamily, positions

__all__ = ["FAMILY"]

FAMILY = UserFamily(
    name="diversity",
    columns=("diversity:entropy",),
    nan_absent=("diversity:entropy",),
    naive="tests/naive.py::naive_features (diversity:entropy)",
)
(ENTROPY,) = positions(FAMILY.columns)


@exact_jit(inline=True)
def n_entries(k, cell, params):
    """Entries :func:`emit` writes for the ``k`` cells ``cell[:k]`` (IN): one when one of them
    is a page-view cell (a touched cell has a count > 0)."""
    if params.pv_slot < 0:
        return 0
    for j in range(k):
        if cell[j] // params.n_cat == params.pv_slot:
            return 1
    return 0


@exact_jit(inline=True)
def emit(k, cells, params, col0, out, pos):
    """Write ``diversity:entropy`` at ``col0 + ENTROPY`` into ``out`` (OUT) from the ``k``
    cells ``cells`` (IN, a ``Cells``); returns the new position."""
    if params.pv_slot < 0:
        return pos
    pv_total = 0.0
    for j in range(k):
        if cells.cell[j] // params.n_cat == params.pv_slot:
            pv_total += cells.n[j]
    if not pv_total > 0:
        return pos
    h = 0.0
    for j in range(k):
        if cells.cell[j] // params.n_cat == params.pv_slot and cells.n[j] > 0:
            p = cells.n[j] / pv_total
            h -= p * np.log(p)
    out.indices[pos] = col0 + ENTROPY
    out.data[pos] = h
    return pos + 1

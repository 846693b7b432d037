"""User ids in one canonical form, shared by every place that compares them.

Real ids arrive as integers from one system and as text from another: a CRM export writes
``923``, a CSV reader or an exchange's JSON gives ``"923"``, a NumPy column holds
``np.int64(923)``. bta compares ids by their **canonical form**, a ``str``:

- text is kept exactly as it is (``"001"`` and ``"1"`` are two users; no trimming, no case
  folding: ids are opaque);
- an integer (Python ``int``, any NumPy integer) is its decimal text: ``923`` -> ``"923"``;
- a float that holds a whole number is that integer (``923.0`` -> ``"923"``: integer columns
  with nulls often arrive as floats); any other float is not an id;
- ``bytes`` are UTF-8 text; a ``uuid.UUID`` is its standard text;
- a missing value (None, NaN, NaT, NA), the empty string, a bool, and anything else is
  **no id** (``None``): it names nobody and matches nothing.

So ``923``, ``np.int32(923)``, ``923.0`` and ``"923"`` are one user everywhere: in the privacy
registries (opt-outs, minors, sensitive opt-ins), in :meth:`bta.EventLog.user_code` and
``erase``, in :class:`bta.features.FeatureMatrix`, the profile stores, the Engine's frequency
caps and :func:`bta.privacy.erase`; ``"0923"`` is another user. Logs keep the ids as their
source gave them (an integer column stays integer); only comparisons go through this form.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

__all__ = ["canonical_id", "canonical_ids", "int_key", "id_keys", "IdIndex", "MAX_ID_CHARS"]

#: Longest canonical id bta compares (characters). Longer text is not an id: ids are keys,
#: not payloads, and a bound keeps hostile input from costing time or memory.
MAX_ID_CHARS = 1024

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def canonical_id(x: Any) -> str | None:
    """The canonical form of one user id (see the module docs), or None when ``x`` is no id.

    Never raises.

    Examples
    --------
    >>> canonical_id(923), canonical_id("923"), canonical_id(923.0), canonical_id("0923")
    ('923', '923', '923', '0923')
    >>> canonical_id(True) is None and canonical_id("") is None and canonical_id(1.5) is None
    True
    """
    t = type(x)
    if t is str:
        return x if 0 < len(x) <= MAX_ID_CHARS else None
    if t is int:
        return str(x)
    if x is None or isinstance(x, (bool, np.bool_)):
        return None
    if isinstance(x, str):  # str subclasses (e.g. numpy.str_)
        s = str(x)
        return s if 0 < len(s) <= MAX_ID_CHARS else None
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        f = float(x)
        if f != f or f in (float("inf"), float("-inf")) or not f.is_integer():
            return None
        return str(int(f))
    if isinstance(x, (bytes, bytearray, memoryview)):
        if len(x) > 4 * MAX_ID_CHARS:
            return None
        try:
            return canonical_id(bytes(x).decode("utf-8"))
        except UnicodeDecodeError:
            return None
    if isinstance(x, uuid.UUID):
        return str(x)
    return None


def canonical_ids(values: Any) -> np.ndarray:
    """:func:`canonical_id` of each value, as an object array (None where no id).

    Integer arrays convert in bulk; other arrays per distinct value.
    """
    arr = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if arr.ndim == 0:
        arr = arr.reshape(1)
    arr = arr.ravel()
    if arr.dtype.kind in "iu":
        return arr.astype(str).astype(object)
    if arr.dtype.kind == "U":
        out = arr.astype(object)
        out[(np.char.str_len(arr) == 0) | (np.char.str_len(arr) > MAX_ID_CHARS)] = None
        return out
    obj = arr.astype(object, copy=False)
    import pandas as pd  # a core dependency; imported here to keep import light

    if pd.api.types.infer_dtype(obj, skipna=False) == "string":  # text is its own form
        lens = pd.Series(obj, copy=False).str.len().to_numpy()
        bad = (lens == 0) | (lens > MAX_ID_CHARS)
        if not bad.any():
            return obj
        out = obj.copy()
        out[bad] = None
        return out
    try:
        codes, uniques = pd.factorize(obj, use_na_sentinel=True)
    except TypeError:  # unhashable values: one by one
        return np.array([canonical_id(v) for v in obj.tolist()] + [None], dtype=object)[:-1]
    table = np.array([canonical_id(u) for u in uniques] + [None], dtype=object)
    return table[codes]


def int_key(canonical: str | None) -> int | None:
    """The int64 an integer-id column would hold for a canonical id, or None.

    ``"923"`` -> 923 and ``"-4"`` -> -4; ``"0923"``, ``"+1"``, ``"1e3"`` and text beyond the
    int64 range are None: no integer id has that canonical form.
    """
    if canonical is None or not canonical:
        return None
    body = canonical[1:] if canonical[0] == "-" else canonical
    if not body or not body.isascii() or not body.isdigit() or (len(body) > 1 and body[0] == "0"):
        return None
    if canonical == "-0":
        return None
    v = int(canonical)
    return v if _INT64_MIN <= v <= _INT64_MAX else None


def id_keys(values: Any, integer: bool) -> np.ndarray:
    """Ids as keys into a vocabulary of integer (``integer=True``) or text ids.

    For an integer vocabulary: int64 keys with a flag array of which ids have one; returned as
    ``(keys, ok)``. For a text vocabulary: the canonical forms (object, None where no id).
    """
    canon = canonical_ids(values)
    if not integer:
        return canon
    keys = np.zeros(len(canon), dtype=np.int64)
    ok = np.zeros(len(canon), dtype=bool)
    for i, c in enumerate(canon.tolist()):
        k = int_key(c)
        if k is not None:
            keys[i] = k
            ok[i] = True
    return keys, ok


class IdIndex:
    """Positions of ids in a vocabulary (an array of distinct ids), found by canonical form.

    An integer vocabulary is searched by integer keys (a query ``"923"`` finds ``923``;
    ``"0923"`` finds nothing); any other vocabulary by canonical text (a query ``923`` finds
    ``"923"``).

    Examples
    --------
    >>> IdIndex(np.array([5, 923])).get_indexer(["923", 923.0, "0923", None]).tolist()
    [1, 1, -1, -1]
    """

    def __init__(self, values: Any):
        import pandas as pd

        arr = np.asarray(values) if not isinstance(values, np.ndarray) else values
        self.integer = arr.dtype.kind in "iu"
        if self.integer:
            self._index = pd.Index(arr.astype(np.int64, copy=False))
        else:
            self._index = pd.Index(canonical_ids(arr), dtype=object)

    def __len__(self) -> int:
        return len(self._index)

    def get_indexer(self, ids: Any) -> np.ndarray:
        """Position of each id (int64; -1 where unknown or no id)."""
        import pandas as pd

        arr = np.asarray(ids, dtype=object) if not isinstance(ids, np.ndarray) else ids
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if len(arr) == 0:
            return np.zeros(0, dtype=np.int64)
        if self.integer:
            if arr.dtype.kind in "iu":
                keys, ok = arr.astype(np.int64), np.ones(len(arr), dtype=bool)
                if arr.dtype.kind == "u":
                    ok = arr <= np.uint64(_INT64_MAX)
            else:
                keys, ok = id_keys(arr, integer=True)
            pos = self._index.get_indexer(keys).astype(np.int64)
            pos[~ok] = -1
            return pos
        canon = canonical_ids(arr)
        pos = self._index.get_indexer(pd.Index(canon, dtype=object)).astype(np.int64)
        pos[pd.isna(canon)] = -1
        return pos

    def get(self, user_id: Any) -> int | None:
        """Position of one id, or None."""
        p = int(self.get_indexer(np.array([user_id], dtype=object))[0])
        return None if p < 0 else p

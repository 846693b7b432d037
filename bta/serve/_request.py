"""Ad requests as the Engine reads them: the :class:`Request` record, the parsing of a request
(a ``Request`` or a mapping) into checked values, the request's context as a hashable key, and
a profile carried by the request.

Parsing raises on malformed request data; :meth:`bta.serve.engine.Engine.decide` turns that into
the ``fallback:bad_request`` (or ``fallback:bad_profile``) decision, and the replay
(:mod:`bta.serve._replay`) applies the same rules to whole columns.

Bounds
------
Every field is bounded *before* it is parsed, so that no request, whatever its content, costs
more than a normal one: a field over its bound is ``fallback:bad_request`` at once (a carried
profile: ``fallback:bad_profile``), checked in O(1) where the size is known (``len``) and over
at most the bounded number of items otherwise. The bounds, in one place:

=======================  =====================  ==============================================
field                    bound                  constant
=======================  =====================  ==============================================
``user_id`` (text)       1 to 256 characters    :data:`MAX_USER_ID_CHARS`
``user_id`` (integer)    within 64 bits         :data:`INT_ID_MIN`, :data:`INT_ID_MAX`
                         (signed or unsigned)
``request_id``           1 to 256 characters    :data:`MAX_REQUEST_ID_CHARS`
``ts`` (text)            64 characters          :data:`MAX_TS_CHARS`
``ts`` (other)           an int, a NumPy        (any other type is refused unread)
                         integer, a datetime,
                         date, Timestamp or
                         datetime64
``context``              a mapping of at most   :data:`MAX_CONTEXT_KEYS`
                         64 keys
a context value          text of at most 256    :data:`MAX_CONTEXT_CHARS`,
                         characters, an integer :data:`MAX_CONTEXT_VALUES`
                         within 64 bits, or a
                         list of at most 64 of
                         them (no nesting)
``consent``              a mapping of at most   :data:`MAX_CONSENT_KEYS`
                         32 keys
a consent text value     4,096 characters       :data:`MAX_CONSENT_CHARS`
                         (a TCF or GPP string)
a consent number         within 64 bits         :data:`INT_ID_MIN`, :data:`INT_ID_MAX`
a consent collection     4,096 items, each a    :data:`MAX_CONSENT_ITEMS`,
                         scalar or text of at   :data:`MAX_CONSENT_ITEM_CHARS`
                         most 64 characters
                         (no nesting)
``profile`` (mapping)    the store's features   (the store's layout)
                         + 1 entries; integer
                         values within 64 bits
``profile["segments"]``  4,096 names            :data:`MAX_PROFILE_SEGMENTS`
``profile`` (Profile)    as many entries as     (the store's layout),
                         the store has          :data:`MAX_PROFILE_SEGMENTS`
                         features; 4,096
                         segments
=======================  =====================  ==============================================

A context value of another scalar type (a float, None inside a list, a bool) reads as absent,
as before; consent values of other types (numbers, flags, decoded signals) are left to the
privacy gate, which fails closed on what it cannot read. Extra keys of a mapping request are
never read, so they cost nothing. These bounds also bound what a request can make the Engine
keep: a context key (the context cache) holds at most 7 fields x 64 values x 256 characters.
"""

from __future__ import annotations

import datetime as _dt
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bta.privacy.gate import MAX_CONSENT_CHARS as _GATE_MAX_CONSENT_CHARS
from bta.events import to_epoch_ms
from bta.ids import canonical_id
from bta.serve.campaigns import CONTEXT_FIELDS
from bta.serve.store import Profile

__all__ = ["Request", "NO_CONTEXT", "context_mask", "request_profile", "MAX_USER_ID_CHARS",
           "INT_ID_MIN", "INT_ID_MAX", "MAX_REQUEST_ID_CHARS", "MAX_TS_CHARS",
           "MAX_CONTEXT_KEYS", "MAX_CONTEXT_CHARS", "MAX_CONTEXT_VALUES", "MAX_CONSENT_KEYS",
           "MAX_CONSENT_CHARS", "MAX_CONSENT_ITEMS", "MAX_CONSENT_ITEM_CHARS",
           "MAX_PROFILE_SEGMENTS"]

# ---- the bounds (see the table in the module docstring) -----------------------------------------
#: Longest text user id: ids are keys, not payloads (the user id as today; a long id would be
#: hashed for the arm and looked up in the store in full).
MAX_USER_ID_CHARS = 256
#: Integer user ids: what an int64 or uint64 id column holds (and a cheap ``str``).
INT_ID_MIN, INT_ID_MAX = -(2**63), 2**64 - 1
#: Longest request id: it is a log key and hashed for the choice.
MAX_REQUEST_ID_CHARS = 256
#: Longest time given as text: an ISO 8601 time with nanoseconds and a zone is 35 characters;
#: the time parser's cost grows with the text (a 5 MB padded date took 25 s).
MAX_TS_CHARS = 64
#: Keys of the ``context`` mapping (it has seven fields; more keys are junk, read or not).
MAX_CONTEXT_KEYS = 64
#: Longest text of a context value (a domain, an app bundle, a category, a slot id).
MAX_CONTEXT_CHARS = 256
#: Values in one context field's list: a request lists a few categories; more is junk.
MAX_CONTEXT_VALUES = 64
#: Keys of the ``consent`` mapping (the gate reads about a dozen).
MAX_CONSENT_KEYS = 32
#: Longest consent text (a TCF TC string or a GPP string): the privacy gate's own bound
#: (:data:`bta.privacy.gate.MAX_CONSENT_CHARS`), checked here before anything is parsed.
MAX_CONSENT_CHARS = _GATE_MAX_CONSENT_CHARS
#: Items of a consent collection (purposes, vendors, GPP section ids; the TCF vendor list has
#: about 1,000 vendors).
MAX_CONSENT_ITEMS = 4_096
#: Longest text item of a consent collection (a purpose or vendor id given as text).
MAX_CONSENT_ITEM_CHARS = 64
#: Segment names a carried profile may list.
MAX_PROFILE_SEGMENTS = 4_096

_PLAIN = frozenset({int, float, bool, type(None)})  # scalars that cost nothing to read
_TS_TYPES = (_dt.date, np.datetime64)  # what the time parser reads besides text and integers


@dataclass(frozen=True)
class Request:
    """An ad request. Mappings with the same keys are accepted by :meth:`Engine.decide`.

    Every field is bounded before it is read (see "Bounds" in :mod:`bta.serve._request`):
    a field over its bound makes the decision ``fallback:bad_request``.

    Parameters
    ----------
    user_id : str or int
        Text of 1 to 256 characters, or an integer within 64 bits. Compared (frequency caps,
        erasure) in canonical form (:func:`bta.ids.canonical_id`): ``923`` and ``"923"`` are
        one user.
    ts : time, optional
        Epoch milliseconds or anything :func:`bta.events.to_epoch_ms` reads (text of at most
        64 characters); default now.
    request_id : str, optional
        Default: a random id.
    context : mapping, optional
        Fields of :data:`~bta.serve.campaigns.CONTEXT_FIELDS` -> a string or a list of strings
        (e.g. ``{"page_category": ["IAB2", "IAB2-3"], "slot": "top"}``). A mapping request may
        also give these fields as top-level keys (they win over ``context``). Values that are
        neither strings, integers nor lists of them are ignored (the field reads as absent);
        values over the bounds (a string over 256 characters, a list over 64 values, a
        nested list, a mapping) are a bad request.
    consent : mapping, optional
        See :meth:`bta.privacy.PrivacyPolicy.serving_gate`.
    profile : Profile or mapping, optional
        The user's profile, used instead of a store lookup: a :class:`~bta.serve.store.Profile`
        over the store's feature layout, or ``{feature name: number, ..., "segments":
        [segment names]}``. Unknown names, non-finite values or more entries than the store
        has features: ``fallback:bad_profile``.

    Notes
    -----
    In mappings and DataFrame rows a missing value (None or NaN) of ``request_id``,
    ``context``, ``consent``, ``profile`` or a context field means "not given".
    """

    user_id: Any
    ts: Any = None
    request_id: str | None = None
    context: Mapping[str, Any] | None = None
    consent: Mapping[str, Any] | None = None
    profile: Any = None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _request_id_ok(rid: Any) -> bool:
    return isinstance(rid, str) and 0 < len(rid) <= MAX_REQUEST_ID_CHARS


def _safe_request_id(request: Any) -> str:
    try:
        rid = request.get("request_id") if isinstance(request, Mapping) else \
            getattr(request, "request_id", None)
        if _request_id_ok(rid):
            return rid
    except Exception:  # noqa: BLE001
        pass
    return uuid.uuid4().hex


def _absent(x: Any) -> bool:
    """None, or the missing values pandas puts in rows (NaN, NaT, NA)."""
    if x is None:
        return True
    if isinstance(x, float):
        return x != x
    return x is pd.NaT or x is pd.NA


def _user_key(u: Any) -> str | None:
    """The canonical form of an acceptable user id (see the bounds), else None."""
    t = type(u)
    if t is int:  # the common cases first: no more checks
        return str(u) if _int_ok(u) else None
    if t is str:
        return u if 0 < len(u) <= MAX_USER_ID_CHARS else None
    if u is None or isinstance(u, (bool, np.bool_, float)):
        return None
    if isinstance(u, str):
        return canonical_id(u) if 0 < len(u) <= MAX_USER_ID_CHARS else None
    if isinstance(u, (int, np.integer)):
        return canonical_id(u) if _int_ok(int(u)) else None
    return None


def _is_collection(x: Any) -> bool:
    """Whether ``x`` holds other values (anything iterable but text)."""
    return hasattr(type(x), "__iter__") and not isinstance(x, (str, bytes, bytearray))


def _flat_ok(items: Any, max_items: int, max_chars: int) -> bool:
    """Whether a collection has a size of at most ``max_items``, and holds only scalars and
    text of at most ``max_chars`` (a mapping: in its keys and values). Iterators and
    generators have no size: they are refused unread."""
    try:
        n = len(items)
    except TypeError:
        return False
    if n > max_items:
        return False
    if isinstance(items, np.ndarray):
        if items.ndim != 1:
            return False
        if items.dtype.kind in "US":  # fixed-width text: the width bounds every item
            return items.dtype.itemsize // (4 if items.dtype.kind == "U" else 1) <= max_chars
        if items.dtype.kind != "O":
            return True  # numbers and flags
        items = items.tolist()
    if isinstance(items, Mapping):
        return all(_scalar_ok(k, max_chars) and _scalar_ok(v, max_chars)
                   for k, v in items.items())
    return all(_scalar_ok(x, max_chars) for x in items)


def _int_ok(x: int) -> bool:
    """An int within 64 bits: a larger one costs linear time to convert (``float()`` of an
    8 MB integer takes a millisecond), and no signal or feature needs it."""
    return INT_ID_MIN <= x <= INT_ID_MAX


def _scalar_ok(x: Any, max_chars: int) -> bool:
    if type(x) is int:
        return _int_ok(x)
    if type(x) in _PLAIN:
        return True
    if isinstance(x, (str, bytes, bytearray)):
        return len(x) <= max_chars
    return not _is_collection(x)


def _check_consent(consent: Any) -> Mapping | None:
    """The request's consent mapping (None: not given); raises when malformed or over the
    bounds."""
    if _absent(consent):
        return None
    if not isinstance(consent, Mapping):
        raise ValueError("consent must be a mapping")
    if len(consent) > MAX_CONSENT_KEYS:
        raise ValueError("consent has too many keys")
    for v in consent.values():
        if type(v) is int:
            if not _int_ok(v):
                raise ValueError("a consent number is too large")
            continue
        if type(v) in _PLAIN:
            continue
        if isinstance(v, (str, bytes, bytearray)):
            if len(v) > MAX_CONSENT_CHARS:
                raise ValueError("a consent value is too long")
        elif _is_collection(v) and not _flat_ok(v, MAX_CONSENT_ITEMS, MAX_CONSENT_ITEM_CHARS):
            raise ValueError("a consent value is too large or nested")
    return consent


#: the context of a request that gives none
NO_CONTEXT: tuple = (None,) * len(CONTEXT_FIELDS)
_CTX_FIELD_INDEX = {f: i for i, f in enumerate(CONTEXT_FIELDS)}


def _ctx_text(x: Any) -> str | None:
    """One context value as text; None when unusable; raises when over the bounds."""
    if isinstance(x, str):
        if len(x) > MAX_CONTEXT_CHARS:
            raise ValueError("a context value is too long")
        return str(x) if x else None
    if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
        x = int(x)
        if not _int_ok(x):
            raise ValueError("a context value is too long")
        return str(x)
    if _is_collection(x):
        raise ValueError("a context value is nested")
    return None


def _ctx_values(v: Any) -> frozenset | None:
    """A request's value for one context field as a set of strings; None when unusable;
    raises when over the bounds (too long, too many values, nested)."""
    if isinstance(v, (list, tuple, set, frozenset, np.ndarray)):
        if isinstance(v, np.ndarray) and (v.ndim != 1 or (
                v.dtype.kind == "U" and v.dtype.itemsize // 4 > MAX_CONTEXT_CHARS)):
            raise ValueError("a context value is nested or too long")
        if len(v) > MAX_CONTEXT_VALUES:
            raise ValueError("a context field has too many values")
        out = [_ctx_text(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
        return frozenset(out) if out and None not in out else None
    x = _ctx_text(v)
    return None if x is None else frozenset((x,))


def _context_key(context: Any, top: Mapping[str, Any] | None) -> tuple:
    """The request's context as a tuple over CONTEXT_FIELDS (hashable: a cache and batch key)."""
    if _absent(context):
        context = None
    elif not isinstance(context, Mapping):
        raise ValueError("context must be a mapping")
    elif len(context) > MAX_CONTEXT_KEYS:
        raise ValueError("context has too many keys")
    if context is None and top is None:
        return NO_CONTEXT
    key = list(NO_CONTEXT)
    for src in (context, top):
        if not src:
            continue
        # the fields are looked up, the mapping's keys never read: a key of any size or type
        # costs nothing
        for i, name in enumerate(CONTEXT_FIELDS):
            v = src.get(name)
            if v is not None and not _absent(v):
                key[i] = _ctx_values(v)
    return tuple(key)


def context_mask(contexts: tuple, key: tuple) -> np.ndarray:
    """Per campaign: whether the request context ``key`` meets its context targeting."""
    out = np.ones(len(contexts), dtype=bool)
    for c, ctx in enumerate(contexts):
        if ctx is None:
            continue
        for name, allowed in ctx:
            got = key[_CTX_FIELD_INDEX[name]]
            if got is None or got.isdisjoint(allowed):
                out[c] = False
                break
    return out


def context_key_chars(key: tuple) -> int:
    """Characters of text a context key holds (what it costs a cache to keep it)."""
    return sum(len(x) for v in key if v is not None for x in v)


def _layout(store: Any) -> tuple:
    """(feature names, name -> column, longest name), cached on the store: the layout is fixed
    per store."""
    col = getattr(store, "_bta_column_of", None)
    if col is None or col[0] is not store.feature_names:
        names = store.feature_names
        col = (names, {n: j for j, n in enumerate(names)}, max(map(len, names), default=0))
        try:
            store._bta_column_of = col
        except AttributeError:
            pass
    return col


_segment_index: tuple = ((), {}, 0)  # the last segment layout seen (one reference: atomic)


def _segments(segment_names: tuple[str, ...]) -> tuple:
    """(segment names, name -> position, longest name) of a snapshot's segment layout."""
    global _segment_index
    got = _segment_index
    if got[0] is not segment_names:
        got = _segment_index = (segment_names, {n: j for j, n in enumerate(segment_names)},
                                max(map(len, segment_names), default=0))
    return got


def request_profile(raw: Any, store: Any, segment_names: tuple[str, ...]) -> Profile:
    """A request's own profile as a :class:`Profile` over the store's layout.

    Sizes are checked before anything is read: at most as many entries as the store has
    features (plus ``"segments"``), at most :data:`MAX_PROFILE_SEGMENTS` segments. Whether
    the values are finite is checked where every profile, carried or stored, enters the
    decision (:func:`bta.serve._kernels.all_finite`).

    Raises
    ------
    ValueError
        Unknown feature or segment names, values that are not numbers, indices out of the
        layout, arrays of the wrong shape or over the bounds (the Engine answers
        ``fallback:bad_profile``).
    """
    n_feat = len(store.feature_names)
    if isinstance(raw, Profile):
        names = raw.segment_names
        if names is None:
            names = segment_names
        # sizes first: a huge array or list is refused before it is converted
        if len(raw.indices) > n_feat or len(raw.values) != len(raw.indices) \
                or len(names) > MAX_PROFILE_SEGMENTS or len(raw.segments) != len(names):
            raise ValueError("profile arrays over the store's layout or of different lengths")
        idx = np.asarray(raw.indices)
        val = np.asarray(raw.values, dtype=np.float64)
        seg = np.asarray(raw.segments)
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or val.shape != idx.shape:
            raise ValueError("profile indices and values must be 1-d, integer and float, alike")
        if idx.size and (idx.min() < 0 or idx.max() >= n_feat):
            raise ValueError("profile indices out of the store's feature layout")
        if seg.ndim != 1 or seg.dtype != np.bool_:
            raise ValueError("profile segments must be a 1-d bool array")
        if names is not segment_names:
            names = tuple(names)
            # foreign names are matched by name (hashed): text no longer than a known name
            longest = _segments(segment_names)[2]
            if names != segment_names and not all(
                    isinstance(n, str) and len(n) <= longest for n in names):
                raise ValueError("profile segment names must be text of known lengths")
        return Profile(idx.astype(np.int32), val, seg, names)
    if not isinstance(raw, Mapping):
        raise ValueError("profile must be a Profile or a mapping")
    if len(raw) > n_feat + 1:
        raise ValueError("profile has more entries than the store has features")
    _names, col_of, longest = _layout(store)
    idx, val = [], []
    flags = np.zeros(len(segment_names), dtype=bool)
    for name, v in raw.items():
        if name == "segments":
            if isinstance(v, str) or not _is_collection(v) or isinstance(v, Mapping):
                raise ValueError("profile segments must be a list of segment names")
            if len(v) > MAX_PROFILE_SEGMENTS:
                raise ValueError("profile lists too many segments")
            _seg, pos, longest = _segments(segment_names)
            for sname in v:
                # text only, and no longer than a name can be: never hash a huge value
                j = pos.get(sname) if type(sname) is str and len(sname) <= longest else None
                if j is None:
                    raise ValueError("unknown segment")
                flags[j] = True
            continue
        j = col_of.get(name) if type(name) is str and len(name) <= longest else None
        if j is None:
            raise ValueError("unknown feature")
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                                 np.floating)):
            raise ValueError("a profile feature must be a number")
        if isinstance(v, int) and not _int_ok(v):
            raise ValueError("a profile feature is too large")
        idx.append(j)
        val.append(float(v))
    return Profile(np.array(idx, dtype=np.int32), np.array(val, dtype=np.float64), flags,
                   segment_names)


_REQUEST_KEYS = ("user_id", "ts", "request_id", "consent", "context", "profile")
_REQUEST_KEY_SET = frozenset(_REQUEST_KEYS)
# the decision log keeps times as pandas/Arrow timestamps: a request time must be one
_TS_MIN_MS = -(-pd.Timestamp.min.value // 1_000_000)
_TS_MAX_MS = pd.Timestamp.max.value // 1_000_000


def _ts_ms(ts: Any) -> int:
    """A request time as epoch ms (now when absent); raises when malformed or over the
    bounds."""
    if ts is None:
        return _now_ms()
    if type(ts) is not int:  # epoch ms as an int needs no conversion
        if isinstance(ts, str):
            if len(ts) > MAX_TS_CHARS:
                raise ValueError("ts text is too long")
        elif isinstance(ts, bool) or not isinstance(ts, (int, np.integer, *_TS_TYPES)):
            raise ValueError("ts must be a time")  # refused unread, whatever its size
        ts = to_epoch_ms(ts, "ts")
    if not _TS_MIN_MS <= ts <= _TS_MAX_MS:
        raise ValueError("ts outside the times a decision log can hold")
    return int(ts)


def _parse(request: Any) -> tuple[Any, str, int, str, Mapping | None, tuple, Any]:
    """(user id, its canonical key, ts ms, request id, consent, context key, raw profile);
    raises when malformed or over the bounds (see the module docstring)."""
    if isinstance(request, Request):
        user_id, ts, rid, consent, context, profile = (
            request.user_id, request.ts, request.request_id, request.consent, request.context,
            request.profile)
        top = None
    elif isinstance(request, Mapping):
        get = request.get
        user_id, ts, rid, consent, context, profile = (
            get("user_id"), get("ts"), get("request_id"), get("consent"), get("context"),
            get("profile"))
        # context fields given as top-level keys (only looked for when other keys are there;
        # looked up, never found by reading the request's keys: their number costs nothing)
        top = None if len(request) <= len(_REQUEST_KEYS) and request.keys() <= _REQUEST_KEY_SET \
            else ({f: request[f] for f in CONTEXT_FIELDS if f in request} or None)
    else:
        raise TypeError("request must be a Request or a mapping")
    ukey = _user_key(user_id)  # the length is checked before anything reads the id
    if ukey is None:
        raise ValueError("user_id must be a str of 1-256 characters or a 64-bit int")
    ts = _ts_ms(ts)
    if _absent(rid):
        rid = uuid.uuid4().hex
    elif not _request_id_ok(rid):
        raise ValueError("request_id must be a non-empty str of at most 256 characters")
    consent = _check_consent(consent)
    ctx = _context_key(context, top)
    return user_id, ukey, ts, rid, consent, ctx, None if _absent(profile) else profile

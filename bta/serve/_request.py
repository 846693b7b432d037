"""Ad requests as the Engine reads them: the :class:`Request` record, the parsing of a request
(a ``Request`` or a mapping) into checked values, the request's context as a hashable key, and
a profile carried by the request.

Parsing raises on malformed request data; :meth:`bta.serve.engine.Engine.decide` turns that into
the ``fallback:bad_request`` (or ``fallback:bad_profile``) decision, and the replay
(:mod:`bta.serve._replay`) applies the same rules to whole columns.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bta.events import to_epoch_ms
from bta.serve.campaigns import CONTEXT_FIELDS
from bta.serve.store import Profile

__all__ = ["Request", "NO_CONTEXT", "context_mask", "request_profile"]


@dataclass(frozen=True)
class Request:
    """An ad request. Mappings with the same keys are accepted by :meth:`Engine.decide`.

    Parameters
    ----------
    user_id : str or int
    ts : time, optional
        Epoch milliseconds or anything :func:`bta.events.to_epoch_ms` reads; default now.
    request_id : str, optional
        Default: a random id.
    context : mapping, optional
        Fields of :data:`~bta.serve.campaigns.CONTEXT_FIELDS` -> a string or a list of strings
        (e.g. ``{"page_category": ["IAB2", "IAB2-3"], "slot": "top"}``). A mapping request may
        also give these fields as top-level keys (they win over ``context``). Values that are
        neither strings, integers nor lists of them are ignored (the field reads as absent).
    consent : mapping, optional
        See :meth:`bta.privacy.PrivacyPolicy.serving_gate`.
    profile : Profile or mapping, optional
        The user's profile, used instead of a store lookup: a :class:`~bta.serve.store.Profile`
        over the store's feature layout, or ``{feature name: number, ..., "segments":
        [segment names]}``. Unknown names or non-finite values: ``fallback:bad_profile``.

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


def _safe_request_id(request: Any) -> str:
    try:
        rid = request.get("request_id") if isinstance(request, Mapping) else \
            getattr(request, "request_id", None)
        if isinstance(rid, str) and 0 < len(rid) <= 256:
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


#: the context of a request that gives none
NO_CONTEXT: tuple = (None,) * len(CONTEXT_FIELDS)
_CTX_FIELD_INDEX = {f: i for i, f in enumerate(CONTEXT_FIELDS)}
_MAX_CTX_VALUES = 64  # a request lists a few categories; more is junk, not context


def _ctx_values(v: Any) -> frozenset | None:
    """A request's value for one context field as a set of strings; None when unusable."""
    if isinstance(v, str):
        return frozenset((v,)) if v else None
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return frozenset((str(int(v)),))
    if isinstance(v, (list, tuple, set, frozenset, np.ndarray)) and 0 < len(v) <= _MAX_CTX_VALUES:
        out = []
        for x in (v.tolist() if isinstance(v, np.ndarray) else v):
            if isinstance(x, str) and x:
                out.append(x)
            elif isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
                out.append(str(int(x)))
            else:
                return None
        return frozenset(out)
    return None


def _context_key(context: Any, top: Mapping[str, Any] | None) -> tuple:
    """The request's context as a tuple over CONTEXT_FIELDS (hashable: a cache and batch key)."""
    if _absent(context):
        context = None
    elif not isinstance(context, Mapping):
        raise ValueError("context must be a mapping")
    if context is None and top is None:
        return NO_CONTEXT
    key = list(NO_CONTEXT)
    for src in (context, top):
        if not src:
            continue
        for name, v in src.items():
            i = _CTX_FIELD_INDEX.get(name)
            if i is not None and not _absent(v):
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


def request_profile(raw: Any, store: Any, segment_names: tuple[str, ...]) -> Profile:
    """A request's own profile as a :class:`Profile` over the store's layout.

    Raises
    ------
    ValueError
        Unknown feature or segment names, values that are not finite numbers, indices out of
        the layout, or arrays of the wrong shape (the Engine answers ``fallback:bad_profile``).
    """
    n_feat = len(store.feature_names)
    if isinstance(raw, Profile):
        idx = np.asarray(raw.indices)
        val = np.asarray(raw.values, dtype=np.float64)
        seg = np.asarray(raw.segments)
        names = raw.segment_names
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or val.shape != idx.shape:
            raise ValueError("profile indices and values must be 1-d, integer and float, alike")
        if idx.size and (idx.min() < 0 or idx.max() >= n_feat):
            raise ValueError("profile indices out of the store's feature layout")
        if not np.isfinite(val).all():
            raise ValueError("profile values must be finite")
        if seg.ndim != 1 or seg.dtype != np.bool_:
            raise ValueError("profile segments must be a 1-d bool array")
        if names is None:
            names = segment_names
        if len(names) != seg.shape[0]:
            raise ValueError("profile segments and segment_names differ in length")
        return Profile(idx.astype(np.int32), val, seg, tuple(names))
    if not isinstance(raw, Mapping):
        raise ValueError("profile must be a Profile or a mapping")
    col = getattr(store, "_bta_column_of", None)
    if col is None or col[0] is not store.feature_names:
        col = (store.feature_names, {n: j for j, n in enumerate(store.feature_names)})
        try:
            store._bta_column_of = col  # cached on the store: the layout is fixed per store
        except AttributeError:
            pass
    col_of = col[1]
    idx, val = [], []
    flags = np.zeros(len(segment_names), dtype=bool)
    for name, v in raw.items():
        if name == "segments":
            if isinstance(v, str) or not isinstance(v, Iterable):
                raise ValueError("profile segments must be a list of segment names")
            pos = {n: j for j, n in enumerate(segment_names)}
            for sname in v:
                j = pos.get(sname)
                if j is None:
                    raise ValueError(f"unknown segment {sname!r}")
                flags[j] = True
            continue
        j = col_of.get(name)
        if j is None:
            raise ValueError(f"unknown feature {name!r}")
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                                 np.floating)):
            raise ValueError(f"feature {name!r} must be a number")
        if not math.isfinite(float(v)):
            raise ValueError(f"feature {name!r} must be finite")
        idx.append(j)
        val.append(float(v))
    return Profile(np.array(idx, dtype=np.int32), np.array(val, dtype=np.float64), flags,
                   segment_names)


_REQUEST_KEYS = ("user_id", "ts", "request_id", "consent", "context", "profile")
_REQUEST_KEY_SET = frozenset(_REQUEST_KEYS)
# the decision log keeps times as pandas/Arrow timestamps: a request time must be one
_TS_MIN_MS = -(-pd.Timestamp.min.value // 1_000_000)
_TS_MAX_MS = pd.Timestamp.max.value // 1_000_000


def _parse(request: Any) -> tuple[Any, int, str, Mapping | None, tuple, Any]:
    """(user id, ts ms, request id, consent, context key, raw profile); raises when malformed."""
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
        # context fields given as top-level keys (only looked for when other keys are there)
        top = None if request.keys() <= _REQUEST_KEY_SET else (
            {f: request[f] for f in CONTEXT_FIELDS if f in request} or None)
    else:
        raise TypeError("request must be a Request or a mapping")
    if type(user_id) is not int:  # the common case needs no more checks
        if user_id is None or isinstance(user_id, (bool, float)) \
                or not isinstance(user_id, (str, int, np.integer)):
            raise ValueError("user_id must be a str or int")
        if isinstance(user_id, str) and not (0 < len(user_id) <= 256):
            raise ValueError("user_id length")
    if ts is None:
        ts = _now_ms()
    else:
        if type(ts) is not int:  # epoch ms as an int needs no conversion
            ts = to_epoch_ms(ts, "ts")
        if not _TS_MIN_MS <= ts <= _TS_MAX_MS:
            raise ValueError("ts outside the times a decision log can hold")
    if _absent(rid):
        rid = uuid.uuid4().hex
    elif not isinstance(rid, str) or not (0 < len(rid) <= 256):
        raise ValueError("request_id must be a non-empty str")
    if _absent(consent):
        consent = None
    elif not isinstance(consent, Mapping):
        raise ValueError("consent must be a mapping")
    ctx = _context_key(context, top)
    return user_id, int(ts), rid, consent, ctx, None if _absent(profile) else profile

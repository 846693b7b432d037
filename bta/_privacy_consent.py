"""Consent inputs of :mod:`bta.privacy`: TCF purposes, pseudonyms and user registries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from bta.errors import ConfigError, SchemaError

__all__ = [
    "DEFAULT_SENSITIVE_CATEGORIES",
    "GATE_OK",
    "SCREEN_OK",
    "SCREEN_OPT_OUT",
    "SCREEN_REASONS",
    "SCREEN_SENSITIVE",
    "SCREEN_UNDER_AGE",
    "MinorRegistry",
    "OptOutRegistry",
    "SensitiveOptIns",
    "UserRegistry",
    "_as_1d",
    "pseudonymize",
    "tcf_purposes",
]


#: Categories whose events never enter profiles unless explicitly allowed with opt-in consent.
#: Names follow common content taxonomies (IAB Content Taxonomy flags health, sexuality,
#: religion, politics, and sensitive financial topics); match is case-insensitive.
DEFAULT_SENSITIVE_CATEGORIES = frozenset({
    "health", "medical", "medical_conditions", "mental_health", "pharmaceuticals",
    "sexual_orientation", "sexuality", "religion", "spirituality", "politics",
    "political_affiliation", "precise_location", "financial_hardship", "debt", "bankruptcy",
    "ethnicity", "trade_union", "genetics", "biometrics", "criminal_record",
})

GATE_OK = "ok"

#: Codes returned by :meth:`PrivacyPolicy.screen_events`; ``SCREEN_REASONS[code]`` names them.
SCREEN_OK = 0
SCREEN_OPT_OUT = 1
SCREEN_UNDER_AGE = 2
SCREEN_SENSITIVE = 3
SCREEN_REASONS = ("ok", "opt_out", "under_age", "sensitive")

# TCF v2 core string layout: purposes consent bits start after these fields (bit widths):
# Version 6, Created 36, LastUpdated 36, CmpId 12, CmpVersion 12, ConsentScreen 6,
# ConsentLanguage 12, VendorListVersion 12, TcfPolicyVersion 6, IsServiceSpecific 1,
# UseNonStandardTexts 1, SpecialFeatureOptIns 12, then PurposesConsent 24.
_TCF_PURPOSES_OFFSET = 6 + 36 + 36 + 12 + 12 + 6 + 12 + 12 + 6 + 1 + 1 + 12
_TCF_N_PURPOSES = 24


def tcf_purposes(consent: str) -> frozenset[int] | None:
    """Purposes (1-24) with consent in a TCF v2 consent string's core segment.

    Returns ``None`` when the string cannot be decoded (callers treat that as no consent).
    Never raises.
    """
    try:
        core = consent.split(".")[0]
        raw = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
    except (AttributeError, ValueError, binascii.Error, TypeError):
        return None
    n_bits = len(raw) * 8
    if n_bits < _TCF_PURPOSES_OFFSET + _TCF_N_PURPOSES:
        return None
    bits = int.from_bytes(raw, "big")
    version = bits >> (n_bits - 6)
    if version != 2:
        return None
    out = set()
    for p in range(_TCF_N_PURPOSES):
        pos = _TCF_PURPOSES_OFFSET + p  # bit index from the most significant bit
        if (bits >> (n_bits - 1 - pos)) & 1:
            out.add(p + 1)
    return frozenset(out)


def pseudonymize(user_ids: Any, key: bytes) -> Any:
    """Keyed hash (HMAC-SHA256, hex, first 32 characters) of user ids.

    The same id and key always give the same pseudonym; without the key the mapping cannot be
    rebuilt. Apply it at ingestion (``EventLog.from_*(..., pseudonymize_key=key)``) and to the
    ids of requests, opt-outs and erasure requests with the same key, so raw ids never enter
    logs, profiles or stores.

    Parameters
    ----------
    user_ids : scalar or array-like of shape (n,)
        Ids are hashed by their text (``str(id)``, UTF-8; an integral float as the integer),
        so ``7``, ``7.0`` and ``"7"`` share a pseudonym. A missing id (None, NaN, the empty
        string) stays None: it names nobody.
    key : bytes of length >= 16
        The caller's secret.

    Returns
    -------
    str or None for a scalar; ndarray of object of shape (n,) otherwise.

    Raises
    ------
    ConfigError
        When ``key`` is not bytes of at least 16.

    Examples
    --------
    >>> key = b"0123456789abcdef"
    >>> pseudonymize("alice", key) == pseudonymize(["alice"], key)[0]
    True
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise ConfigError("key must be bytes of length >= 16 (a secret supplied by the caller)")
    key = bytes(key)

    def one(u: Any) -> str | None:
        if u is None or (isinstance(u, float) and u != u) or (isinstance(u, str) and not u):
            return None
        if isinstance(u, (float, np.floating)) and float(u).is_integer():
            u = int(u)  # 7.0 == 7: equal ids share a pseudonym (EventLog reads 7.0 as 7)
        return hmac.new(key, str(u).encode(), hashlib.sha256).hexdigest()[:32]

    if np.ndim(user_ids) == 0 and not isinstance(user_ids, (list, tuple)):
        return one(user_ids.item() if isinstance(user_ids, np.generic) else user_ids)
    import pandas as pd

    ids = np.asarray(user_ids, dtype=object).ravel()
    codes, uniques = pd.factorize(ids, use_na_sentinel=True)  # hash each distinct id once
    table = np.array([one(u) for u in uniques] + [None], dtype=object)
    return table[codes]


def _as_1d(values: Any, name: str) -> np.ndarray:
    """``values`` as a one-dimensional array (no copy when it already is one)."""
    if isinstance(values, np.ndarray):
        arr = values
    else:
        try:  # pandas Series/Index, Arrow arrays and lists all convert through NumPy
            arr = np.asarray(values, dtype=object if isinstance(values, (list, tuple)) else None)
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"{name} must be array-like, got {type(values).__name__}") from exc
    if arr.ndim != 1:
        raise SchemaError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


class UserRegistry:
    """A thread-safe set of user ids.

    Membership tests are plain set lookups (atomic under the GIL), so the serving path reads
    without taking the lock; writers take it.
    """

    def __init__(self, users: Iterable[Any] = ()):
        self._users = set(users)
        self._lock = threading.Lock()
        self._version = 0  # counts changes: invalidates the cached index
        self._index_cache: tuple | None = None

    def add(self, user_id: Any) -> None:
        with self._lock:
            self._users.add(user_id)
            self._version += 1

    def remove(self, user_id: Any) -> None:
        with self._lock:
            self._users.discard(user_id)
            self._version += 1

    @property
    def version(self) -> int:
        """A number that changes whenever a user is added or removed."""
        return self._version

    def snapshot(self) -> frozenset:
        """The users registered now, as an immutable set."""
        with self._lock:
            return frozenset(self._users)

    def snapshot_index(self) -> Any:
        """The users registered now as a pandas ``Index`` of objects, for vectorized
        membership tests of many ids (``index.get_indexer(ids) >= 0``); built once per
        change of the registry, not per call."""
        cache = self._index_cache
        if cache is not None and cache[0] == self._version:
            return cache[1]
        import pandas as pd  # a core dependency; imported here to keep import light

        with self._lock:
            version, users = self._version, list(self._users)
        index = pd.Index(users, dtype=object)
        self._index_cache = (version, index)  # one reference assignment: readers see a pair
        return index

    def __contains__(self, user_id: Any) -> bool:
        try:
            return user_id in self._users  # set lookup is atomic under the GIL
        except TypeError:  # an unhashable id cannot have been registered
            return False

    def __len__(self) -> int:
        return len(self._users)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self)} users>)"

    # the lock and the cached index are not state: a pickled copy (sent to a worker process)
    # gets a fresh lock and builds its index when it needs one
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_index_cache")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._version = state.get("_version", 0)
        self._index_cache = None


class OptOutRegistry(UserRegistry):
    """Users who objected to profiling: never profiled, never targeted.

    Erasing a user's data does not remove the opt-out: the objection must outlive the data,
    or a re-ingested event would profile the user again.
    """


class MinorRegistry(UserRegistry):
    """Users known to be younger than the policy's ``min_age``: never profiled, never targeted.

    The caller registers a user when it learns the age (a declared age, a COPPA flag; see
    :meth:`PrivacyPolicy.note_age`) and removes the user when the age is reached.
    """


class SensitiveOptIns:
    """Opt-in consent of users to being profiled on single sensitive categories.

    Only categories the policy lists in ``allowed_sensitive`` can take effect; an opt-in to any
    other sensitive category is recorded but grants nothing. Category names are lower-cased.
    """

    def __init__(self, pairs: Iterable[tuple[Any, str]] | Mapping[Any, Iterable[str]] = ()):
        self._cats: dict[Any, frozenset] = {}
        self._lock = threading.Lock()
        items = pairs.items() if isinstance(pairs, Mapping) else None
        if items is not None:
            for user, cats in items:
                for c in ([cats] if isinstance(cats, str) else cats):
                    self.add(user, c)
        else:
            for user, c in pairs:
                self.add(user, c)

    def add(self, user_id: Any, category: str) -> None:
        """Record that ``user_id`` opted in to profiling on ``category``."""
        c = str(category).lower()
        with self._lock:
            self._cats[user_id] = self._cats.get(user_id, frozenset()) | {c}

    def remove(self, user_id: Any, category: str | None = None) -> None:
        """Withdraw one opt-in, or all of the user's when ``category`` is None."""
        with self._lock:
            if category is None:
                self._cats.pop(user_id, None)
                return
            left = self._cats.get(user_id, frozenset()) - {str(category).lower()}
            if left:
                self._cats[user_id] = left
            else:
                self._cats.pop(user_id, None)

    def categories(self, user_id: Any) -> frozenset:
        """Sensitive categories ``user_id`` opted in to (empty when none)."""
        try:
            return self._cats.get(user_id, frozenset())  # dict read is atomic under the GIL
        except TypeError:
            return frozenset()

    def __contains__(self, user_id: Any) -> bool:
        return bool(self.categories(user_id))

    def __len__(self) -> int:
        return len(self._cats)

    def __repr__(self) -> str:
        return f"SensitiveOptIns(<{len(self)} users>)"

    # the lock is not state: a pickled copy (sent to a worker process) gets a fresh one
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

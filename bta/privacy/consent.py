"""Consent inputs of :mod:`bta.privacy`: TCF purposes, pseudonyms and user registries.
"""

from __future__ import annotations

import hashlib
import hmac
import functools
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from bta.errors import ConfigError, SchemaError
from bta.ids import canonical_id, canonical_ids, int_key

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
    "category_key",
    "pseudonymize",
    "tcf_purposes",
]


#: Categories whose events never enter profiles unless explicitly allowed with opt-in consent.
#: Names follow common content taxonomies (IAB Content Taxonomy flags health, sexuality,
#: religion, politics, and sensitive financial topics); they match on :func:`category_key`,
#: so ``"Mental-Health "`` is ``mental_health``.
DEFAULT_SENSITIVE_CATEGORIES = frozenset({
    "health", "medical", "medical_conditions", "mental_health", "pharmaceuticals",
    "sexual_orientation", "sexuality", "religion", "spirituality", "politics",
    "political_affiliation", "precise_location", "financial_hardship", "debt", "bankruptcy",
    "ethnicity", "trade_union", "genetics", "biometrics", "criminal_record",
})

GATE_OK = "ok"

# separators: whitespace, control characters, ASCII and Unicode hyphens and dashes, the minus
# sign, underscores and slashes (after NFKC, which maps fullwidth forms to ASCII)
_SEPARATORS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\-_/\\\u2010-\u2015\u2212\u2043\ufe58\ufe63]+")
_MAX_CATEGORY_CHARS = 4096


@functools.lru_cache(maxsize=65_536)
def _category_key_str(text: str) -> str:
    s = unicodedata.normalize("NFKC", text).casefold()
    if not s.isascii() or not s.isprintable():
        # format characters (zero-width space/joiners, soft hyphen, BOM, bidi marks) vanish:
        # they are invisible, so "health\u200b" reads as "health" to a person
        s = "".join(ch for ch in s if unicodedata.category(ch) != "Cf")
        s = unicodedata.normalize("NFKC", s)
    return _SEPARATORS.sub("_", s).strip("_")


def category_key(category: Any) -> str | None:
    """The normalized key under which a category is screened (None for a missing one).

    Unicode NFKC, case folded (``casefold``), invisible format characters (zero-width
    space, joiners, soft hyphen, byte-order mark) removed, and every run of whitespace,
    control characters, hyphens and dashes, underscores and slashes read as one separator
    ``_``, with none at the ends. So ``"Health "``, ``" health"``, ``"health\t"``,
    ``"health\u200b"`` and ``"HEALTH"`` are all ``health``, and ``"Mental-Health"``,
    ``"mental health"``, ``"Mental/Health"`` are ``mental_health``.

    Every place that screens a category uses this key: ingestion and online profiles
    (:meth:`PrivacyPolicy.screen_events`), feature layouts (:meth:`PrivacyPolicy.feature_spec`),
    rules and ``total()`` patterns, segment definitions, campaign targeting and segment export
    (:meth:`PrivacyPolicy.blocked_category_in`). Never raises.

    Examples
    --------
    >>> category_key(" Mental-Health\u200b"), category_key("Religion "), category_key(None)
    ('mental_health', 'religion', None)
    """
    if category is None or (isinstance(category, float) and category != category):
        return None
    try:
        text = category if type(category) is str else str(category)
    except Exception:  # noqa: BLE001 - an object whose str() fails names no category
        return None
    if len(text) > _MAX_CATEGORY_CHARS:
        text = text[:_MAX_CATEGORY_CHARS]
    return _category_key_str(text)

#: Codes returned by :meth:`PrivacyPolicy.screen_events`; ``SCREEN_REASONS[code]`` names them.
SCREEN_OK = 0
SCREEN_OPT_OUT = 1
SCREEN_UNDER_AGE = 2
SCREEN_SENSITIVE = 3
SCREEN_REASONS = ("ok", "opt_out", "under_age", "sensitive")

def tcf_purposes(consent: str) -> frozenset[int] | None:
    """Purposes (1-24) with consent in a TCF v2 TC string.

    The string is decoded strictly by :func:`bta.privacy.signals.decode_tcf` (the one TCF
    decoder); returns ``None`` when it is malformed (callers treat that as no consent).
    Never raises.
    """
    from bta.privacy.signals import decode_tcf  # lazy: the decoder is needed at serving only

    try:
        return frozenset(decode_tcf(consent).purposes_consent)
    except Exception:  # noqa: BLE001 - a malformed string is no consent, never an error
        return None


def pseudonymize(user_ids: Any, key: bytes) -> Any:
    """Keyed hash (HMAC-SHA256, hex, first 32 characters) of user ids.

    The same id and key always give the same pseudonym; without the key the mapping cannot be
    rebuilt. Apply it at ingestion (``EventLog.from_*(..., pseudonymize_key=key)``) and to the
    ids of requests, opt-outs and erasure requests with the same key, so raw ids never enter
    logs, profiles or stores.

    Parameters
    ----------
    user_ids : scalar or array-like of shape (n,)
        Ids are hashed by their canonical form (:func:`bta.ids.canonical_id`, UTF-8), so
        ``7``, ``7.0`` and ``"7"`` share a pseudonym and ``"07"`` has another. What is no id
        (None, NaN, the empty string, a bool) stays None: it names nobody.
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

    def one(canon: str | None) -> str | None:
        if canon is None:
            return None
        return hmac.new(key, canon.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()[:32]

    if np.ndim(user_ids) == 0 and not isinstance(user_ids, (list, tuple)):
        return one(canonical_id(user_ids))
    import pandas as pd

    canon = canonical_ids(np.asarray(user_ids, dtype=object).ravel())
    codes, uniques = pd.factorize(canon, use_na_sentinel=True)  # hash each distinct id once
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


def _registry_key(user_id: Any, where: str) -> str:
    """The canonical form of an id being registered; a ConfigError when it is no id."""
    k = canonical_id(user_id)
    if k is None:
        raise ConfigError(f"{where}: {user_id!r} ({type(user_id).__name__}) is not a user id: "
                          f"ids are text or integers (see bta.ids)")
    return k


class UserRegistry:
    """A thread-safe set of user ids, compared in canonical form (:mod:`bta.ids`).

    ``923``, ``np.int64(923)``, ``923.0`` and ``"923"`` are one user here, as everywhere in
    bta; ``"0923"`` is another. Registering a value that is no id (None, a bool, an empty
    string, a list) raises :class:`~bta.errors.ConfigError`: a registry that silently kept an
    id nothing can match would fail open.

    Membership tests are plain set lookups (atomic under the GIL), so the serving path reads
    without taking the lock; writers take it.
    """

    def __init__(self, users: Iterable[Any] = ()):
        if isinstance(users, (str, bytes)) or not isinstance(users, Iterable):
            raise ConfigError(f"{type(self).__name__} takes an iterable of user ids, got "
                              f"{type(users).__name__}")
        where = type(self).__name__
        self._users = {_registry_key(u, where) for u in users}
        self._lock = threading.Lock()
        self._version = 0  # counts changes: invalidates the cached index
        self._index_cache: tuple | None = None

    def add(self, user_id: Any) -> None:
        k = _registry_key(user_id, f"{type(self).__name__}.add")
        with self._lock:
            self._users.add(k)
            self._version += 1

    def remove(self, user_id: Any) -> None:
        k = canonical_id(user_id)
        with self._lock:
            self._users.discard(k)
            self._version += 1

    @property
    def version(self) -> int:
        """A number that changes whenever a user is added or removed."""
        return self._version

    def snapshot(self) -> frozenset:
        """The canonical ids registered now, as an immutable set of str."""
        with self._lock:
            return frozenset(self._users)

    def _snapshot(self) -> tuple:
        """(pandas Index of the canonical ids, sorted int64 array of those that are integer
        ids' forms), built once per change of the registry."""
        cache = self._index_cache
        if cache is not None and cache[0] == self._version:
            return cache[1]
        import pandas as pd  # a core dependency; imported here to keep import light

        with self._lock:
            version, users = self._version, list(self._users)
        ints = sorted({k for k in map(int_key, users) if k is not None})
        snap = (pd.Index(users, dtype=object), np.array(ints, dtype=np.int64))
        self._index_cache = (version, snap)  # one reference assignment: readers see a pair
        return snap

    def snapshot_index(self) -> Any:
        """The canonical ids registered now as a pandas ``Index`` of str (cached per
        change of the registry, not rebuilt per call)."""
        return self._snapshot()[0]

    def members(self, ids: Any) -> np.ndarray:
        """Which of ``ids`` are registered, as a bool array (vectorized; for many ids).

        ``ids`` is an array of integer ids (compared with the registry's integer forms, no
        text made per id), of str (compared as they are), or of objects (each put in
        canonical form).
        """
        arr = np.asarray(ids) if not isinstance(ids, np.ndarray) else ids
        if len(self._users) == 0 or arr.shape[0] == 0:
            return np.zeros(arr.shape[0], dtype=bool)
        index, ints = self._snapshot()
        if arr.dtype.kind in "iu":
            if arr.dtype.kind == "u":
                arr = arr.astype(np.uint64)
                ok = arr <= np.uint64(2**63 - 1)
                return ok & np.isin(arr.astype(np.int64), ints)
            return np.isin(arr.astype(np.int64, copy=False), ints)
        import pandas as pd

        obj = arr.astype(object, copy=False)
        if pd.api.types.infer_dtype(obj, skipna=False) != "string":
            obj = canonical_ids(obj)
        return np.asarray(index.get_indexer(pd.Index(obj, dtype=object)) >= 0)

    def __contains__(self, user_id: Any) -> bool:
        k = user_id if type(user_id) is str else canonical_id(user_id)
        return k in self._users  # set lookup is atomic under the GIL

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
    other sensitive category is recorded but grants nothing. Users are compared in canonical
    form (:mod:`bta.ids`), categories by :func:`category_key`.
    """

    def __init__(self, pairs: Iterable[tuple[Any, str]] | Mapping[Any, Iterable[str]] = ()):
        self._cats: dict[str, frozenset] = {}
        self._lock = threading.Lock()
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, (Iterable, Mapping)):
            raise ConfigError(f"SensitiveOptIns takes (user, category) pairs or a mapping, got "
                              f"{type(pairs).__name__}")
        items = pairs.items() if isinstance(pairs, Mapping) else None
        if items is not None:
            for user, cats in items:
                for c in ([cats] if isinstance(cats, str) else cats):
                    self.add(user, c)
        else:
            for pair in pairs:
                if isinstance(pair, (str, bytes)) or not isinstance(pair, (tuple, list)) \
                        or len(pair) != 2:
                    raise ConfigError(f"SensitiveOptIns: {pair!r} is not a (user, category) "
                                      f"pair")
                self.add(pair[0], pair[1])

    def add(self, user_id: Any, category: str) -> None:
        """Record that ``user_id`` opted in to profiling on ``category``."""
        u = _registry_key(user_id, "SensitiveOptIns.add")
        c = category_key(category)
        if not c:
            raise ConfigError(f"SensitiveOptIns.add: {category!r} is not a category")
        with self._lock:
            self._cats[u] = self._cats.get(u, frozenset()) | {c}

    def remove(self, user_id: Any, category: str | None = None) -> None:
        """Withdraw one opt-in, or all of the user's when ``category`` is None."""
        u = canonical_id(user_id)
        with self._lock:
            if category is None:
                self._cats.pop(u, None)
                return
            left = self._cats.get(u, frozenset()) - {category_key(category)}
            if left:
                self._cats[u] = left
            else:
                self._cats.pop(u, None)

    def categories(self, user_id: Any) -> frozenset:
        """Category keys (:func:`category_key`) ``user_id`` opted in to (empty when none)."""
        u = user_id if type(user_id) is str else canonical_id(user_id)
        return self._cats.get(u, frozenset())  # dict read is atomic under the GIL

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

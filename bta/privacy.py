"""PrivacyPolicy: one object consulted at ingestion, feature building and serving.

Behavioral targeting runs on personal data. The industry codes this policy follows:

- NAI Code of Conduct: sensitive data (health, sexual orientation, ...) only with opt-in
  consent; no tailored ads to children (bta's default minimum age is 16); opt-outs honored.
- IAB TCF v2.2: personalised ads need consent for purposes 3 ("create a personalised ads
  profile") and 4 ("use a personalised ads profile"); limited-data, untargeted ads run under
  purpose 2 ("basic ads").
- GDPR: objection to profiling is absolute (an opt-out); erasure on request.

Where the policy is consulted:

- ingestion: ``EventLog.from_*(..., privacy=policy)`` removes (and counts) the rows
  :meth:`PrivacyPolicy.screen_events` screens; the default policy's deny list applies when none
  is given. ``pseudonymize_key=`` replaces user ids by :func:`pseudonymize` first.
- profiles: ``OnlineProfiles(..., privacy=policy)`` screens each batch the same way;
  :meth:`PrivacyPolicy.feature_spec` keeps blocked categories out of a feature layout.
- segments: ``RuleSegment`` and ``SegmentBook`` refuse definitions naming a blocked category.
- serving: :meth:`PrivacyPolicy.serving_gate` says why a request must get an untargeted ad.
- erasure: :func:`erase` removes a user from every place given and returns a receipt.

Decisions the policy makes are pure functions of its configuration, its registries and the
request, so the serving path can call :meth:`PrivacyPolicy.serving_gate` without locks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from bta.errors import ConfigError, SchemaError, check_param

__all__ = [
    "PrivacyPolicy", "UserRegistry", "OptOutRegistry", "MinorRegistry", "SensitiveOptIns",
    "DEFAULT_SENSITIVE_CATEGORIES", "tcf_purposes", "pseudonymize", "GATE_OK",
    "SCREEN_OK", "SCREEN_OPT_OUT", "SCREEN_UNDER_AGE", "SCREEN_SENSITIVE", "SCREEN_REASONS",
    "ErasureReceipt", "erase",
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

# Characters that cannot be part of a bare feature name in rule text or a name pattern.
_NAME_SPLIT = re.compile(r"[\s`\"'()\[\]{},;<>=!+/*?]+")

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

    def add(self, user_id: Any) -> None:
        with self._lock:
            self._users.add(user_id)

    def remove(self, user_id: Any) -> None:
        with self._lock:
            self._users.discard(user_id)

    def snapshot(self) -> frozenset:
        """The users registered now, as an immutable set."""
        with self._lock:
            return frozenset(self._users)

    def __contains__(self, user_id: Any) -> bool:
        try:
            return user_id in self._users  # set lookup is atomic under the GIL
        except TypeError:  # an unhashable id cannot have been registered
            return False

    def __len__(self) -> int:
        return len(self._users)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self)} users>)"


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


@dataclass(frozen=True)
class PrivacyPolicy:
    """What may be profiled and who may be targeted.

    Parameters
    ----------
    sensitive_categories : iterable of str
        Categories kept out of profiles and segment definitions (case-insensitive).
    allowed_sensitive : iterable of str
        Sensitive categories explicitly allowed, for users with opt-in consent only.
    min_age : int, default 16
        Users younger than this (when the request states an age) get untargeted ads.
    required_purposes : iterable of int, default (3, 4)
        TCF purposes a personalised ad needs.
    require_consent_signal : bool, default False
        When True, a request with no consent signal at all is treated as no consent (strict
        GDPR-region setting); when False, absent signals mean the regulation does not apply.
    opt_outs : OptOutRegistry or iterable
        Users who objected to profiling.
    minors : MinorRegistry or iterable
        Users known to be younger than ``min_age`` (neither profiled nor targeted).
    sensitive_opt_ins : SensitiveOptIns, mapping or iterable of (user, category)
        Users' opt-in consent to single sensitive categories; effective only for categories in
        ``allowed_sensitive``.

    Notes
    -----
    The registries are shared, mutable objects (a change takes effect at once everywhere the
    policy is used); the rest of the policy is frozen. Two policies compare equal when their
    rules are equal, whatever their registries hold.
    """

    sensitive_categories: frozenset = DEFAULT_SENSITIVE_CATEGORIES
    allowed_sensitive: frozenset = frozenset()
    min_age: int = 16
    required_purposes: frozenset = frozenset({3, 4})
    require_consent_signal: bool = False
    opt_outs: OptOutRegistry = field(default_factory=OptOutRegistry, compare=False)
    minors: MinorRegistry = field(default_factory=MinorRegistry, compare=False)
    sensitive_opt_ins: SensitiveOptIns = field(default_factory=SensitiveOptIns, compare=False)

    def __post_init__(self) -> None:
        sens = frozenset(str(c).lower() for c in self.sensitive_categories)
        allowed = frozenset(str(c).lower() for c in self.allowed_sensitive)
        unknown = sorted(allowed - sens)
        if unknown:
            raise ConfigError(f"allowed_sensitive names categories that are not sensitive: "
                              f"{unknown}")
        object.__setattr__(self, "sensitive_categories", sens)
        object.__setattr__(self, "allowed_sensitive", allowed)
        check_param("min_age", self.min_age,
                    isinstance(self.min_age, (int, np.integer)) and 0 <= self.min_age <= 120,
                    "an integer age between 0 and 120")
        purposes = frozenset(int(p) for p in self.required_purposes)
        check_param("required_purposes", self.required_purposes,
                    all(1 <= p <= 24 for p in purposes), "TCF purpose numbers between 1 and 24")
        object.__setattr__(self, "required_purposes", purposes)
        for name, cls in (("opt_outs", OptOutRegistry), ("minors", MinorRegistry),
                          ("sensitive_opt_ins", SensitiveOptIns)):
            value = getattr(self, name)
            if isinstance(value, cls):
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, (Iterable, Mapping)):
                raise ConfigError(f"{name} must be a {cls.__name__} or an iterable of user "
                                  f"ids, got {type(value).__name__}")
            object.__setattr__(self, name, cls(value))

    # ---- profiling ------------------------------------------------------------------------------
    def is_blocked_category(self, category: Any) -> bool:
        """True when events in ``category`` must not enter profiles (no opt-in exemption)."""
        c = str(category).lower()
        return c in self.sensitive_categories and c not in self.allowed_sensitive

    def blocked_categories(self, categories: Iterable[Any]) -> tuple:
        """The categories of a vocabulary that must stay out of profiles."""
        return tuple(c for c in categories if self.is_blocked_category(c))

    def blocked_category_in(self, name: Any) -> str | None:
        """The blocked category a feature name (or name pattern) carries, or None.

        Feature names are ``:``-separated (``count:page_view:health:7d``,
        ``recency:ad_click:health``; see :meth:`FeatureSpec.cell_feature_name`); a name carries
        category ``c`` when ``c`` is one of its ``:``-separated runs, compared case-insensitively.
        A bare category name carries itself. Wildcards never match a category here: they are
        resolved against a feature layout, which :meth:`feature_spec` keeps free of blocked
        categories.
        """
        text = ":" + str(name).lower() + ":"
        for c in sorted(self.sensitive_categories - self.allowed_sensitive):
            if ":" + c + ":" in text:
                return c
        return None

    def blocked_in_definition(self, definition: Any) -> list[tuple[str, str]]:
        """Where a segment definition references a blocked category.

        Every string of ``definition`` (a JSON-like value: keys and values, nested lists and
        mappings) is read as a whole and split into name-like tokens (at whitespace, quotes,
        backticks, brackets, commas, comparison and arithmetic signs, and the wildcards ``*``
        and ``?``); each is checked with :meth:`blocked_category_in`.

        Returns
        -------
        list of (path, category)
            ``path`` is where the string sits, e.g. ``"expr"`` or ``"top_categories[0]"``;
            empty when the definition is clean.
        """
        found: list[tuple[str, str]] = []
        stack: list[tuple[str, Any]] = [("", definition)]
        while stack:
            path, v = stack.pop()
            if isinstance(v, Mapping):
                for k, x in v.items():
                    sub = f"{path}.{k}" if path else str(k)
                    stack.append((sub, x))
                    stack.append((sub + "(key)", str(k)))
            elif isinstance(v, (list, tuple, set, frozenset)):
                stack.extend((f"{path}[{i}]", x) for i, x in enumerate(v))
            elif isinstance(v, str):
                for token in [v, *_NAME_SPLIT.split(v)]:
                    c = self.blocked_category_in(token) if token else None
                    if c is not None:
                        found.append((path or "definition", c))
        return sorted(set(found))

    def note_age(self, user_id: Any, age: float) -> bool:
        """Register ``user_id`` as a minor when ``age`` is below ``min_age``; True if so.

        An age that is not a finite number counts as under age (fail closed).
        """
        try:
            minor = isinstance(age, bool) or not float(age) >= self.min_age
        except (TypeError, ValueError):
            minor = True
        if minor:
            self.minors.add(user_id)
        return minor

    def screen_events(self, user_ids: Any, categories: Any) -> np.ndarray:
        """Whether each event may enter a profile, as a screening code per row.

        Parameters
        ----------
        user_ids : array-like of shape (n_events,)
            User id of each event (the ids the registries hold).
        categories : array-like of shape (n_events,)
            Content category of each event (case-insensitive). A missing category (None/NaN)
            is not sensitive.

        Returns
        -------
        ndarray of int8, shape (n_events,)
            ``SCREEN_OK`` (0) when the event may be profiled, else the first reason that applies,
            in this order: ``SCREEN_OPT_OUT`` (1) the user opted out, ``SCREEN_UNDER_AGE`` (2) the
            user is a known minor, ``SCREEN_SENSITIVE`` (3) the category is sensitive and not
            both allowed by the policy and opted in to by the user. ``SCREEN_REASONS[code]``
            names the code.

        Raises
        ------
        SchemaError
            When the two arrays are not one-dimensional with the same length.

        Notes
        -----
        Categories are few and repeat, so sensitivity is decided once per distinct category;
        registries are consulted once per distinct user, and only when they are not empty.

        Examples
        --------
        >>> policy = PrivacyPolicy(opt_outs={"u2"})
        >>> policy.screen_events(["u1", "u1", "u2"], ["sports", "health", "sports"]).tolist()
        [0, 3, 1]
        """
        import pandas as pd  # pandas is a core dependency; imported here to keep import light

        users = _as_1d(user_ids, "user_ids")
        cats = _as_1d(categories, "categories")
        if users.shape[0] != cats.shape[0]:
            raise SchemaError(f"user_ids and categories must have the same length, got "
                              f"{users.shape[0]} and {cats.shape[0]}")
        if users.shape[0] == 0:
            return np.zeros(0, dtype=np.int8)
        ccodes, cuniq = pd.factorize(cats, use_na_sentinel=True)
        return self._screen_codes(ccodes, cuniq,
                                  lambda: pd.factorize(users, use_na_sentinel=True))

    def _screen_codes(self, cat_codes: np.ndarray, cat_uniques: Any,
                      factorize_users: Callable[[], tuple[np.ndarray, Any]]) -> np.ndarray:
        """:meth:`screen_events` on factorized columns (codes, -1 = missing, and uniques).

        ``factorize_users`` is called only when a registry or an opt-in needs the users, so
        ingestion with empty registries never touches the user column.
        """
        n = len(cat_codes)
        out = np.zeros(n, dtype=np.int8)
        # per distinct category: 0 not sensitive, 1 blocked, 2 allowed with the user's opt-in
        n_cat = len(cat_uniques)
        cstat = np.zeros(n_cat + 1, dtype=np.int8)  # last slot: missing category (code -1)
        cnames = [str(c).lower() for c in cat_uniques]
        for j, c in enumerate(cnames):
            if c in self.sensitive_categories:
                cstat[j] = 2 if c in self.allowed_sensitive else 1
        opt_outs, minors = self.opt_outs.snapshot(), self.minors.snapshot()
        if not (cstat.any() or opt_outs or minors):
            return out
        row_cstat = cstat[cat_codes]  # code -1 indexes the trailing 0 slot
        out[row_cstat == 1] = SCREEN_SENSITIVE
        need_opt_in = row_cstat == 2
        if not (opt_outs or minors or need_opt_in.any()):
            return out
        ucodes, uuniq = factorize_users()
        ucodes = np.asarray(ucodes)
        if need_opt_in.any():
            # an allowed sensitive category needs this user's opt-in to exactly that category
            rows = np.flatnonzero(need_opt_in)
            pair = ucodes[rows].astype(np.int64) * (n_cat + 1) + cat_codes[rows]
            upair, pinv = np.unique(pair, return_inverse=True)
            granted = np.zeros(len(upair), dtype=bool)
            for k, pcode in enumerate(upair):
                uj, cj = divmod(int(pcode), n_cat + 1)  # a missing user (-1) has no opt-in
                granted[k] = uj >= 0 and cnames[cj] in self.sensitive_opt_ins.categories(
                    uuniq[uj])
            out[rows[~granted[pinv.ravel()]]] = SCREEN_SENSITIVE
        if opt_outs or minors:
            import pandas as pd

            ustat = np.zeros(len(uuniq) + 1, dtype=np.int8)  # last slot: missing user id
            index = pd.Index(np.asarray(uuniq, dtype=object))  # Python equality, one hash pass
            if minors:
                ustat[:-1][np.asarray(index.isin(list(minors)))] = SCREEN_UNDER_AGE
            if opt_outs:  # written last: an opt-out is the first reason that applies
                ustat[:-1][np.asarray(index.isin(list(opt_outs)))] = SCREEN_OPT_OUT
            row_ustat = ustat[ucodes]
            out = np.where(row_ustat > 0, row_ustat, out).astype(np.int8, copy=False)
        return out

    def feature_spec(self, spec: Any, categories: Iterable[Any]) -> Any:
        """``spec`` with every blocked category of ``categories`` added to its deny list."""
        from dataclasses import replace

        deny = tuple(dict.fromkeys(tuple(spec.deny_categories)
                                   + self.blocked_categories(categories)))
        return replace(spec, deny_categories=deny)

    def erase(self, user_id: Any) -> bool:
        """Withdraw the user's sensitive opt-ins (consent data about them); True if any.

        Opt-outs and the minors registry are kept on purpose: they are suppression lists, and
        forgetting them would let a re-ingested event profile the user again.
        """
        had = user_id in self.sensitive_opt_ins
        self.sensitive_opt_ins.remove(user_id)
        return had

    # ---- serving --------------------------------------------------------------------------------
    def serving_gate(self, user_id: Any, consent: Mapping[str, Any] | None) -> str:
        """Why this request may not be targeted, or ``"ok"``. Never raises.

        ``consent`` keys (all optional): ``opt_out`` (bool), ``age`` (number), ``gdpr`` (0/1,
        OpenRTB ``regs.gdpr``), ``tcf`` (TCF v2 consent string), ``purposes`` (iterable of
        granted purpose numbers, when the caller decoded them), ``coppa`` (0/1).
        """
        try:
            if user_id is not None and user_id in self.opt_outs:
                return "opt_out"
            if user_id is not None and user_id in self.minors:
                return "under_age"
            c = consent or {}
            if c.get("opt_out"):
                return "opt_out"
            if c.get("coppa"):
                return "under_age"
            age = c.get("age")
            # "not >=" also catches NaN and fails closed
            if age is not None and (isinstance(age, bool) or not float(age) >= self.min_age):
                return "under_age"
            purposes = c.get("purposes")
            tcf = c.get("tcf")
            if purposes is None and tcf is not None:
                purposes = tcf_purposes(tcf) or frozenset()
            if purposes is not None:
                granted = {int(p) for p in purposes}
                return "no_consent" if not self.required_purposes <= granted else GATE_OK
            if c.get("gdpr") or self.require_consent_signal:
                return "no_consent"
            return GATE_OK
        except Exception:  # noqa: BLE001 - a malformed signal must fail closed, not raise
            return "bad_consent"


# ---- erasure -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErasureReceipt:
    """What :func:`erase` did, place by place.

    Attributes
    ----------
    user_id : object
        The id erased (as the places hold it: a pseudonym where ids are pseudonymized).
    places : tuple of str
        A description of each place, in the order given.
    held : tuple of bool or None
        Whether each place held the user (None: the place does not say).
    results : tuple
        For places that are immutable (an ``EventLog``, a ``SegmentBook``), the new object
        without the user, which the caller must use from now on; for the others, the place
        itself.
    """

    user_id: Any
    places: tuple[str, ...]
    held: tuple[bool | None, ...]
    results: tuple[Any, ...]

    @property
    def held_by(self) -> tuple[str, ...]:
        """The places that held the user."""
        return tuple(p for p, h in zip(self.places, self.held) if h)


def _held_before(place: Any, user_id: Any) -> bool | None:
    """For an immutable place, whether it holds ``user_id`` (None: cannot tell)."""
    try:
        if hasattr(place, "user_code") and hasattr(place, "quarantine"):  # EventLog
            col = place.user_column
            in_q = (col in place.quarantine.columns
                    and bool(place.quarantine[col].isin([user_id]).any()))
            return bool(place.user_code(user_id) >= 0) or in_q
        if hasattr(place, "segments_of") and hasattr(place, "users"):  # SegmentBook
            return bool(place._user_index.get_indexer([user_id])[0] >= 0)
    except Exception:  # noqa: BLE001 - a receipt detail, never a reason to skip the erasure
        return None
    return None


def erase(user_id: Any, *places: Any) -> ErasureReceipt:
    """Remove ``user_id`` from every place given; a receipt says which held the user.

    Parameters
    ----------
    user_id : object
        The id as bta holds it (apply :func:`pseudonymize` first when ids were pseudonymized
        at ingestion).
    *places : objects with an ``erase`` method
        Event logs, ``OnlineProfiles``, profile stores (memory, Redis), segment books,
        engines, privacy policies. Mutable places are erased in place; immutable ones
        (``EventLog``, ``SegmentBook``) return a new object, found in ``receipt.results``.

    Returns
    -------
    ErasureReceipt

    Raises
    ------
    ConfigError
        When a place has no ``erase`` method (checked before anything is erased).
    StoreError
        When some places failed (e.g. Redis unreachable): every place is still tried, and the
        error lists the failures; ``error.receipt`` holds the receipt of what succeeded.

    Notes
    -----
    An :class:`~bta.serve.Engine` forgets only its own state (frequency-cap history); pass its
    store too. Opt-outs are kept (see :meth:`PrivacyPolicy.erase`).
    """
    from bta.errors import StoreError

    for i, place in enumerate(places):
        if not callable(getattr(place, "erase", None)):
            raise ConfigError(f"places[{i}] must have an erase method, got "
                              f"{type(place).__name__}")
    names, held, results, failures = [], [], [], []
    for i, place in enumerate(places):
        names.append(f"{i}:{type(place).__name__}")
        before = _held_before(place, user_id)
        try:
            out = place.erase(user_id)
        except Exception as exc:  # noqa: BLE001 - try every place, then report all failures
            failures.append(f"{names[-1]}: {type(exc).__name__}: {exc}")
            held.append(None)
            results.append(place)
            continue
        if isinstance(out, (bool, np.bool_)):
            held.append(bool(out))
            results.append(place)
        elif out is None:
            held.append(None)
            results.append(place)
        else:
            held.append(before)
            results.append(out)
    receipt = ErasureReceipt(user_id, tuple(names), tuple(held), tuple(results))
    if failures:
        err = StoreError(f"erasure of user {user_id!r} is incomplete; failed places: "
                         + "; ".join(failures))
        err.receipt = receipt  # type: ignore[attr-defined]
        raise err
    return receipt

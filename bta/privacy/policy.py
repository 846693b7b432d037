"""PrivacyPolicy: the rules, consulted at ingestion, feature building and serving (see
:mod:`bta.privacy`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Callable, ClassVar, Iterable, Mapping

import numpy as np

from bta.privacy.consent import (
    DEFAULT_SENSITIVE_CATEGORIES,
    category_key,
    GATE_OK,
    SCREEN_OK,
    SCREEN_OPT_OUT,
    SCREEN_REASONS,
    SCREEN_SENSITIVE,
    SCREEN_UNDER_AGE,
    MinorRegistry,
    OptOutRegistry,
    SensitiveOptIns,
    UserRegistry,
    _as_1d,
    pseudonymize,
    tcf_purposes,
)
from bta.privacy.erasure import ErasureReceipt, erase
from bta.privacy.gate import UNREADABLE, ConsentSignals, read_consent, read_number
from bta._params import Boolean, InstanceOf, Interval, Predicate, validate_fields
from bta.errors import ConfigError, SchemaError
from bta.ids import canonical_id

__all__ = [
    "PrivacyPolicy", "UserRegistry", "OptOutRegistry", "MinorRegistry", "SensitiveOptIns",
    "DEFAULT_SENSITIVE_CATEGORIES", "tcf_purposes", "pseudonymize", "GATE_OK",
    "category_key", "canonical_id", "ConsentSignals", "read_consent",
    "SCREEN_OK", "SCREEN_OPT_OUT", "SCREEN_UNDER_AGE", "SCREEN_SENSITIVE", "SCREEN_REASONS",
    "ErasureReceipt", "erase",
]


# Characters that cannot be part of a bare feature name in rule text or a name pattern.
_NAME_SPLIT = re.compile(r"[\s`\"'()\[\]{},;<>=!+/*?]+")


def _is_collection(value: Any) -> bool:
    """An iterable that is not a single string (a string is one name, not a list of them)."""
    return not isinstance(value, (str, bytes)) and isinstance(value, (Iterable, Mapping))


_TCF_PURPOSE = Interval(Integral, 1, 24)  # the purposes TCF v2 defines


def _is_purposes(value: Any) -> bool:
    return _is_collection(value) and all(_TCF_PURPOSE.is_satisfied_by(p) for p in value)


def _registry(cls: type) -> list[Any]:
    # "a OptOutRegistry": the wording users' tests already match
    return [InstanceOf(cls, desc=f"a {cls.__name__}", show_type=True),
            Predicate(_is_collection, "an iterable of user ids", show_type=True)]


_CATEGORY_NAMES = [Predicate(_is_collection, "an iterable of category names", show_type=True)]


@dataclass(frozen=True)
class PrivacyPolicy:
    """What may be profiled and who may be targeted.

    Parameters
    ----------
    sensitive_categories : iterable of str
        Categories kept out of profiles and segment definitions, compared on their
        :func:`category_key` (case, spacing, separators and invisible characters do not
        matter: ``"Mental-Health "`` is ``mental_health``).
    allowed_sensitive : iterable of str
        Sensitive categories explicitly allowed, for users with opt-in consent only.
    min_age : int, default 16
        Users younger than this (when the request states an age) get untargeted ads.
    required_purposes : iterable of int, default (3, 4)
        TCF purposes a personalised ad needs.
    tcf_vendor_id : int, optional
        This ad server's vendor id in the IAB Global Vendor List. When set, a personalised ad
        also needs the user's consent for this vendor in the TC string's vendor consent
        section (TCF requires purpose *and* vendor consent); a request whose consent gives
        purposes but no vendor consents is then ``no_consent``.
    require_consent_signal : bool, default False
        When True, a request with no consent signal at all is treated as no consent (strict
        GDPR-region setting, like Prebid Server's ``gdpr.default_value = 1``); when False, a
        request that says nothing (no ``gdpr``, no TC string, no purposes) is taken to come
        from where GDPR does not apply. An explicit ``gdpr = 1`` always requires consent, and
        any signal that is given is always judged.
    opt_outs : OptOutRegistry or iterable
        Users who objected to profiling.
    minors : MinorRegistry or iterable
        Users known to be younger than ``min_age`` (neither profiled nor targeted).
    sensitive_opt_ins : SensitiveOptIns, mapping or iterable of (user, category)
        Users' opt-in consent to single sensitive categories; effective only for categories in
        ``allowed_sensitive``.

    Notes
    -----
    Every registry compares user ids in their canonical form (:mod:`bta.ids`): ``923`` and
    ``"923"`` are one user, ``"0923"`` another. The registries are shared, mutable objects (a
    change takes effect at once everywhere the policy is used); the rest of the policy is
    frozen. Two policies compare equal when their rules are equal, whatever their registries
    hold.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "sensitive_categories": _CATEGORY_NAMES,
        "allowed_sensitive": _CATEGORY_NAMES,
        "min_age": [Interval(Integral, 0, 120, desc="an integer age between 0 and 120")],
        "required_purposes": [Predicate(_is_purposes, "TCF purpose numbers between 1 and 24")],
        "tcf_vendor_id": [None, Interval(Integral, 1, 65_535,
                                         desc="a Global Vendor List id between 1 and 65535")],
        "require_consent_signal": [Boolean(desc="a bool")],
        "opt_outs": _registry(OptOutRegistry),
        "minors": _registry(MinorRegistry),
        "sensitive_opt_ins": _registry(SensitiveOptIns),
    }

    sensitive_categories: frozenset = DEFAULT_SENSITIVE_CATEGORIES
    allowed_sensitive: frozenset = frozenset()
    min_age: int = 16
    required_purposes: frozenset = frozenset({3, 4})
    require_consent_signal: bool = False
    opt_outs: OptOutRegistry = field(default_factory=OptOutRegistry, compare=False)
    minors: MinorRegistry = field(default_factory=MinorRegistry, compare=False)
    sensitive_opt_ins: SensitiveOptIns = field(default_factory=SensitiveOptIns, compare=False)
    tcf_vendor_id: int | None = None

    def __post_init__(self) -> None:
        validate_fields(self)
        sens = frozenset(k for k in map(category_key, self.sensitive_categories) if k)
        allowed = frozenset(k for k in map(category_key, self.allowed_sensitive) if k)
        unknown = sorted(allowed - sens)
        if unknown:
            raise ConfigError(f"allowed_sensitive names categories that are not sensitive: "
                              f"{unknown}")
        object.__setattr__(self, "sensitive_categories", sens)
        object.__setattr__(self, "allowed_sensitive", allowed)
        object.__setattr__(self, "_blocked", tuple(sorted(sens - allowed)))
        object.__setattr__(self, "required_purposes",
                           frozenset(int(p) for p in self.required_purposes))
        for name, cls in (("opt_outs", OptOutRegistry), ("minors", MinorRegistry),
                          ("sensitive_opt_ins", SensitiveOptIns)):
            if not isinstance(getattr(self, name), cls):
                object.__setattr__(self, name, cls(getattr(self, name)))

    # ---- profiling ------------------------------------------------------------------------------
    def is_blocked_category(self, category: Any) -> bool:
        """True when events in ``category`` must not enter profiles (no opt-in exemption);
        compared on :func:`category_key`."""
        return category_key(category) in self._blocked

    def blocked_categories(self, categories: Iterable[Any]) -> tuple:
        """The categories of a vocabulary that must stay out of profiles."""
        return tuple(c for c in categories if self.is_blocked_category(c))

    def blocked_category_in(self, name: Any) -> str | None:
        """The blocked category a feature name (or name pattern) carries, or None.

        Feature names are ``:``-separated (``count:page_view:health:7d``,
        ``recency:ad_click:health``; see :meth:`FeatureSpec.cell_feature_name`); a name carries
        category ``c`` when the :func:`category_key` of one of its ``:``-separated runs (or of
        the whole name) is ``c``'s, so ``count:page_view: Mental-Health:7d`` carries
        ``mental_health``. Wildcards never match a category here: they are resolved against a
        feature layout, which :meth:`feature_spec` keeps free of blocked categories.
        """
        if not self._blocked:
            return None
        text = name if type(name) is str else str(name)
        blocked = self._blocked
        for part in (text, *text.split(":")):
            k = category_key(part)
            if k in blocked:
                return k
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

        An age that is not a finite number (``inf``, NaN, ``"1e999"``, unreadable text, a bool)
        counts as under age (fail closed); numeric text such as ``"12"`` is read as a number.
        """
        minor = self.is_under_age(age)
        if minor:
            self.minors.add(user_id)
        return minor

    def is_under_age(self, age: Any) -> bool:
        """True unless ``age`` (a number or numeric text) is finite and at least ``min_age``."""
        a = read_number(age)
        return a is None or a is UNREADABLE or not (math.isfinite(a) and a >= self.min_age)

    def screen_events(self, user_ids: Any, categories: Any) -> np.ndarray:
        """Whether each event may enter a profile, as a screening code per row.

        Parameters
        ----------
        user_ids : array-like of shape (n_events,)
            User id of each event, compared with the registries in canonical form
            (:mod:`bta.ids`: ``923`` and ``"923"`` are one user).
        categories : array-like of shape (n_events,)
            Content category of each event, compared on its :func:`category_key`. A missing
            category (None/NaN) is not sensitive.

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
        registries are consulted once per distinct user, and only when they are not empty,
        through a hash index of each registry built once per change of it
        (:meth:`UserRegistry.snapshot_index`): a batch costs its distinct users, not the
        registry's size.

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
        cnames = [category_key(c) for c in cat_uniques]
        for j, c in enumerate(cnames):
            if c in self.sensitive_categories:
                cstat[j] = 2 if c in self.allowed_sensitive else 1
        # registries are probed per distinct user through indexes cached per change: a batch
        # costs its distinct users, not the registry's size
        opt_outs, minors = self.opt_outs, self.minors
        if not (cstat.any() or len(opt_outs) or len(minors)):
            return out
        row_cstat = cstat[cat_codes]  # code -1 indexes the trailing 0 slot
        out[row_cstat == 1] = SCREEN_SENSITIVE
        need_opt_in = row_cstat == 2
        if not (len(opt_outs) or len(minors) or need_opt_in.any()):
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
        if len(opt_outs) or len(minors):
            ustat = np.zeros(len(uuniq) + 1, dtype=np.int8)  # last slot: missing user id
            uarr = uuniq if isinstance(uuniq, np.ndarray) else np.asarray(uuniq, dtype=object)
            if len(minors):
                ustat[:-1][minors.members(uarr)] = SCREEN_UNDER_AGE
            if len(opt_outs):  # written last: an opt-out is the first reason that applies
                ustat[:-1][opt_outs.members(uarr)] = SCREEN_OPT_OUT
            row_ustat = ustat[ucodes]
            out = np.where(row_ustat > 0, row_ustat, out).astype(np.int8, copy=False)
        return out

    def feature_spec(self, spec: Any, categories: Iterable[Any]) -> Any:
        """``spec`` with every blocked category of ``categories`` added to its deny list."""
        from dataclasses import replace

        deny = tuple(dict.fromkeys(tuple(spec.deny_categories)
                                   + self.blocked_categories(categories)))
        return replace(spec, deny_categories=deny)

    def screened_spellings(self, categories: Iterable[Any]) -> dict[str, list]:
        """The raw spellings among ``categories`` that screening blocks, by category key.

        For a report of what was screened (``{"health": ["Health ", "health\u200b"]}``).
        """
        out: dict[str, list] = {}
        for c in dict.fromkeys(categories):
            k = category_key(c)
            if k in self._blocked:
                out.setdefault(k, []).append(c)
        return out

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

        Parameters
        ----------
        user_id : object
            Compared with the registries in canonical form (:mod:`bta.ids`).
        consent : mapping, ConsentSignals or None
            The request's signals; the shapes each key accepts are listed in
            :mod:`bta.privacy.gate` (``opt_out``, ``gpc``, ``coppa``, ``age``, ``gdpr``,
            ``tcf``, ``purposes``, ``vendors``, ``gpp``, ``gpp_sid``, ``us_privacy``). Pass
            :func:`read_consent`'s result to decode a request's signals once for several
            decisions.

        Returns
        -------
        str
            The first reason that applies, in this order: ``"opt_out"`` (registry, an opt-out
            flag, GPC, ``us_privacy``), ``"under_age"`` (registry, COPPA, an age that is not a
            finite number at least ``min_age``), ``"bad_consent"`` (a signal in a shape bta
            does not read, a malformed TC or GPP string), the GPP sections' verdict
            (``"opt_out"``, ``"no_consent"``, ``"bad_consent"``), ``"no_consent"`` (required
            purposes or this vendor not granted, or GDPR applies and no consent is given);
            else ``"ok"``.
        """
        try:
            if user_id is not None:
                k = user_id if type(user_id) is str else canonical_id(user_id)
                if k is not None:
                    if k in self.opt_outs:
                        return "opt_out"
                    if k in self.minors:
                        return "under_age"
            d = read_consent(consent).decoded
            if d.opt_out:
                return "opt_out"
            if d.coppa or (d.age is not None and self.is_under_age(d.age)):
                return "under_age"
            if d.bad is not None:
                return d.bad
            if d.gpp_reason is not None:
                return d.gpp_reason
            if d.purposes is not None:
                if not self.required_purposes <= d.purposes:
                    return "no_consent"
                if self.tcf_vendor_id is not None and (
                        d.vendor_consent is None or not d.vendor_consent(self.tcf_vendor_id)):
                    return "no_consent"
                return GATE_OK
            if d.gdpr or (d.gdpr is None and self.require_consent_signal):
                return "no_consent"
            return GATE_OK
        except Exception:  # noqa: BLE001 - a malformed signal must fail closed, not raise
            return "bad_consent"

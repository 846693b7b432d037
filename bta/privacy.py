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

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from bta._privacy_consent import (
    DEFAULT_SENSITIVE_CATEGORIES,
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
from bta._privacy_erasure import ErasureReceipt, erase
from bta.errors import ConfigError, SchemaError, check_param

__all__ = [
    "PrivacyPolicy", "UserRegistry", "OptOutRegistry", "MinorRegistry", "SensitiveOptIns",
    "DEFAULT_SENSITIVE_CATEGORIES", "tcf_purposes", "pseudonymize", "GATE_OK",
    "SCREEN_OK", "SCREEN_OPT_OUT", "SCREEN_UNDER_AGE", "SCREEN_SENSITIVE", "SCREEN_REASONS",
    "ErasureReceipt", "erase",
]


def _members(ids: Any, registry: Any) -> np.ndarray:
    """Which of ``ids`` (a pandas Index of objects) are in ``registry`` (a cached snapshot
    index): a probe of the registry's hash table per id; ``isin`` (which hashes the whole
    registry each call) only where pandas sees duplicates in it (ids pandas equates, such as
    two NaN objects, that a Python set keeps apart)."""
    if registry.is_unique:
        return np.asarray(registry.get_indexer(ids) >= 0)
    return np.asarray(ids.isin(registry))


# Characters that cannot be part of a bare feature name in rule text or a name pattern.
_NAME_SPLIT = re.compile(r"[\s`\"'()\[\]{},;<>=!+/*?]+")


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
        cnames = [str(c).lower() for c in cat_uniques]
        for j, c in enumerate(cnames):
            if c in self.sensitive_categories:
                cstat[j] = 2 if c in self.allowed_sensitive else 1
        # registries as indexes cached per change: a batch costs its distinct users, not the
        # registry's size (a snapshot, taken once, serves both the test and the membership)
        opt_outs = self.opt_outs.snapshot_index() if len(self.opt_outs) else ()
        minors = self.minors.snapshot_index() if len(self.minors) else ()
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
            import pandas as pd

            ustat = np.zeros(len(uuniq) + 1, dtype=np.int8)  # last slot: missing user id
            index = pd.Index(np.asarray(uuniq, dtype=object))  # Python equality, one hash pass
            if len(minors):
                ustat[:-1][_members(index, minors)] = SCREEN_UNDER_AGE
            if len(opt_outs):  # written last: an opt-out is the first reason that applies
                ustat[:-1][_members(index, opt_outs)] = SCREEN_OPT_OUT
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

"""PrivacyPolicy: one object consulted at ingestion, feature building and serving.

Behavioral targeting runs on personal data. The industry codes this policy follows:

- NAI Code of Conduct: sensitive data (health, sexual orientation, ...) only with opt-in
  consent; no tailored ads to children (bta's default minimum age is 16); opt-outs honored.
- IAB TCF v2.2: personalised ads need consent for purposes 3 ("create a personalised ads
  profile") and 4 ("use a personalised ads profile"); limited-data, untargeted ads run under
  purpose 2 ("basic ads").
- GDPR: objection to profiling is absolute (an opt-out); erasure on request.

Decisions the policy makes are pure functions of its configuration and the request, so the
serving path can call :meth:`PrivacyPolicy.serving_gate` without locks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from bta.errors import ConfigError, check_param

__all__ = [
    "PrivacyPolicy", "OptOutRegistry", "DEFAULT_SENSITIVE_CATEGORIES", "tcf_purposes",
    "pseudonymize", "GATE_OK",
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


def pseudonymize(user_ids: Any, key: bytes) -> np.ndarray:
    """Keyed hash (HMAC-SHA256, hex, 32 characters) of each user id.

    The same id and key always give the same pseudonym; without the key the mapping cannot be
    rebuilt. Apply at ingestion so raw ids never enter logs or profiles.
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise ConfigError("key must be bytes of length >= 16 (a secret supplied by the caller)")
    ids = np.asarray(user_ids, dtype=object).ravel()
    return np.array([hmac.new(bytes(key), str(u).encode(), hashlib.sha256).hexdigest()[:32]
                     for u in ids], dtype=object)


class OptOutRegistry:
    """Users who objected to profiling (thread-safe set of user ids)."""

    def __init__(self, users: Iterable[Any] = ()):
        self._users = set(users)
        self._lock = threading.Lock()

    def add(self, user_id: Any) -> None:
        with self._lock:
            self._users.add(user_id)

    def remove(self, user_id: Any) -> None:
        with self._lock:
            self._users.discard(user_id)

    def __contains__(self, user_id: Any) -> bool:
        return user_id in self._users  # set lookup is atomic under the GIL

    def __len__(self) -> int:
        return len(self._users)


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
    opt_outs : OptOutRegistry
        Users who objected to profiling.
    """

    sensitive_categories: frozenset = DEFAULT_SENSITIVE_CATEGORIES
    allowed_sensitive: frozenset = frozenset()
    min_age: int = 16
    required_purposes: frozenset = frozenset({3, 4})
    require_consent_signal: bool = False
    opt_outs: OptOutRegistry = field(default_factory=OptOutRegistry, compare=False)

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
        if not isinstance(self.opt_outs, OptOutRegistry):
            object.__setattr__(self, "opt_outs", OptOutRegistry(self.opt_outs))

    # ---- profiling ------------------------------------------------------------------------------
    def is_blocked_category(self, category: Any) -> bool:
        """True when events in ``category`` must not enter profiles (no opt-in exemption)."""
        c = str(category).lower()
        return c in self.sensitive_categories and c not in self.allowed_sensitive

    def blocked_categories(self, categories: Iterable[Any]) -> tuple:
        """The categories of a vocabulary that must stay out of profiles."""
        return tuple(c for c in categories if self.is_blocked_category(c))

    def feature_spec(self, spec: Any, categories: Iterable[Any]) -> Any:
        """``spec`` with every blocked category of ``categories`` added to its deny list."""
        from dataclasses import replace

        deny = tuple(dict.fromkeys(tuple(spec.deny_categories)
                                   + self.blocked_categories(categories)))
        return replace(spec, deny_categories=deny)

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

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

from bta.privacy.policy import (  # noqa: F401 - the public names of bta.privacy
    PrivacyPolicy,
    UserRegistry,
    OptOutRegistry,
    MinorRegistry,
    SensitiveOptIns,
    DEFAULT_SENSITIVE_CATEGORIES,
    tcf_purposes,
    pseudonymize,
    GATE_OK,
    category_key,
    canonical_id,
    ConsentSignals,
    read_consent,
    SCREEN_OK,
    SCREEN_OPT_OUT,
    SCREEN_UNDER_AGE,
    SCREEN_SENSITIVE,
    SCREEN_REASONS,
    ErasureReceipt,
    erase,
)

__all__ = [
    "PrivacyPolicy",
    "UserRegistry",
    "OptOutRegistry",
    "MinorRegistry",
    "SensitiveOptIns",
    "DEFAULT_SENSITIVE_CATEGORIES",
    "tcf_purposes",
    "pseudonymize",
    "GATE_OK",
    "category_key",
    "canonical_id",
    "ConsentSignals",
    "read_consent",
    "SCREEN_OK",
    "SCREEN_OPT_OUT",
    "SCREEN_UNDER_AGE",
    "SCREEN_SENSITIVE",
    "SCREEN_REASONS",
    "ErasureReceipt",
    "erase",
]

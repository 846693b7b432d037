"""Privacy gates on every shape real signals come in: spellings of sensitive categories, id
types in every registry, consent objects, OpenRTB flags in every type.

Each gate has a property test (hypothesis) and the table at the end lists gate x input shape x
expected reason. The references here are naive and written from the documented rules, not from
bta's code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError
from bta.ids import canonical_id
from bta.privacy import (
    DEFAULT_SENSITIVE_CATEGORIES, SCREEN_OK, SCREEN_OPT_OUT, SCREEN_SENSITIVE, SCREEN_UNDER_AGE,
    OptOutRegistry, PrivacyPolicy, category_key, pseudonymize, read_consent,
)
from naive import naive_category_key
from test_openrtb import tcf_string

GRANTED = tcf_string({1, 2, 3, 4})
NOT_GRANTED = tcf_string({1, 2})


# ---- spellings --------------------------------------------------------------------------------
_FULLWIDTH = {ord(c): ord(c) - 0x21 + 0xFF01 for c in "abcdefghijklmnopqrstuvwxyz"}
SPELLINGS = [
    ("trailing space", lambda c: c + " "),
    ("leading space", lambda c: " " + c),
    ("tab", lambda c: c + "\t"),
    ("newline", lambda c: "\n" + c),
    ("title", lambda c: c.title()),
    ("upper", str.upper),
    ("hyphens", lambda c: c.replace("_", "-")),
    ("spaces", lambda c: c.replace("_", " ")),
    ("slashes", lambda c: c.replace("_", "/")),
    ("runs of separators", lambda c: c.replace("_", " -\t_ ")),
    ("zero-width space", lambda c: c + "\u200b"),
    ("zero-width inside", lambda c: c[:2] + "\u200b" + c[2:]),
    ("byte-order mark", lambda c: "\ufeff" + c),
    ("soft hyphen", lambda c: c[:3] + "\u00ad" + c[3:]),
    ("non-breaking space", lambda c: c.replace("_", "\u00a0") + "\u00a0"),
    ("en dash", lambda c: c.replace("_", "\u2013")),
    ("fullwidth", lambda c: c.translate(_FULLWIDTH)),
    ("sharp s casefold", lambda c: c),  # identity, kept to exercise casefold on plain names
]
_CATS = sorted(DEFAULT_SENSITIVE_CATEGORIES)
_spelled = st.tuples(st.sampled_from(_CATS),
                     st.lists(st.sampled_from([f for _, f in SPELLINGS]), min_size=1,
                              max_size=4))


def _spell(cat_and_transforms) -> tuple[str, str]:
    cat, transforms = cat_and_transforms
    s = cat
    for f in transforms:
        s = f(s)
    return cat, s


def test_issue_spellings_are_screened():
    policy = PrivacyPolicy()
    for raw, key in [("Health ", "health"), (" health", "health"), ("health\t", "health"),
                     ("Mental-Health", "mental_health"), ("Religion ", "religion"),
                     ("health\u200b", "health"), ("MENTAL health", "mental_health")]:
        assert category_key(raw) == key
        assert policy.is_blocked_category(raw), raw
        assert policy.screen_events(["u"], [raw]).tolist() == [SCREEN_SENSITIVE]
        assert policy.blocked_category_in(f"count:page_view:{raw}:7d") == key
    # near names are not sensitive: the key is compared whole
    for raw in ("healthy", "health_insurance", "religions", "sports"):
        assert not policy.is_blocked_category(raw)
    assert category_key(None) is None and category_key(float("nan")) is None


@settings(max_examples=300, deadline=None)
@given(_spelled)
def test_every_spelling_of_every_blocked_category_is_screened(ct):
    cat, spelled = _spell(ct)
    policy = PrivacyPolicy()
    assert category_key(spelled) == naive_category_key(spelled) == cat
    assert policy.is_blocked_category(spelled)
    assert policy.screen_events(["u1", "u2"], [spelled, "sports"]).tolist() == [
        SCREEN_SENSITIVE, SCREEN_OK]
    assert policy.blocked_category_in(f"count:page_view:{spelled}:7d") == cat
    assert policy.blocked_in_definition({"top_categories": [spelled]})
    # allowed and opted in (under any spelling of either): profiled
    allow = PrivacyPolicy(allowed_sensitive={spelled}, sensitive_opt_ins=[("u1", cat.upper())])
    assert allow.screen_events(["u1", "u2"], [spelled, spelled]).tolist() == [
        SCREEN_OK, SCREEN_SENSITIVE]


@settings(max_examples=60, deadline=None)
@given(st.lists(_spelled, min_size=1, max_size=6))
def test_spellings_never_enter_a_log_or_online_profiles(cts):
    from bta.events import EventLog
    from bta.features import FeatureSpec, OnlineProfiles

    spelled = [_spell(ct)[1] for ct in cts]
    n = len(spelled)
    df = pd.DataFrame({"user_id": [f"u{i % 3}" for i in range(2 * n)],
                       "ts": 1_767_225_600_000 + np.arange(2 * n) * 1000,
                       "event": "page_view", "category": spelled + ["sports"] * n})
    log = EventLog.from_pandas(df, ts_unit="ms")
    assert log.removed.get("sensitive", 0) == n
    assert all(not PrivacyPolicy().is_blocked_category(c) for c in log.categories)
    prof = OnlineProfiles(FeatureSpec(windows=("7d",), events=("page_view",)),
                          privacy=PrivacyPolicy())
    res = prof.update(df, ts_unit="ms")
    assert res.n_skipped_sensitive == n
    names = prof.features().feature_names
    assert not any(PrivacyPolicy().blocked_category_in(x) for x in names)


def test_rules_patterns_and_definitions_refuse_any_spelling():
    from bta.segment.rules import RuleSegment

    for spelled in ("Mental-Health", "HEALTH", "Religion"):
        with pytest.raises(ConfigError, match="blocked"):
            RuleSegment("r", f"count:page_view:{spelled}:7d > 0")
        with pytest.raises(ConfigError, match="blocked"):
            RuleSegment("r", f'total("count:page_view:{spelled}:*") > 0')
    assert PrivacyPolicy().screened_spellings(["Health ", "sports", "health\u200b", "Health "]
                                              ) == {"health": ["Health ", "health\u200b"]}


# ---- ids in every type ------------------------------------------------------------------------------
ID_FORMS = {
    "int": int, "str": str, "np.int64": np.int64, "np.int32": np.int32,
    "np.uint32": np.uint32, "float": float, "np.str_": lambda i: np.str_(str(i)),
}
_forms = st.sampled_from(sorted(ID_FORMS))


@settings(max_examples=200, deadline=None)
@given(i=st.integers(0, 2**31 - 1), reg=_forms, query=_forms)
def test_every_id_type_honours_every_registry(i, reg, query):
    rid, qid = ID_FORMS[reg](i), ID_FORMS[query](i)
    padded = "0" + str(i)
    policy = PrivacyPolicy(opt_outs={rid})
    assert qid in policy.opt_outs and padded not in policy.opt_outs
    assert policy.serving_gate(qid, None) == "opt_out"
    assert policy.serving_gate(padded, None) == "ok"
    assert policy.screen_events([qid, padded], ["sports", "sports"]).tolist() == [
        SCREEN_OPT_OUT, SCREEN_OK]
    # an integer column (the ingestion path) against the registry's text
    assert policy.screen_events(np.array([i, i + 1], dtype=np.int64),
                                np.array(["a", "a"], dtype=object)).tolist() == [
        SCREEN_OPT_OUT, SCREEN_OK]
    minors = PrivacyPolicy(minors=[rid])
    assert minors.serving_gate(qid, None) == "under_age"
    assert minors.screen_events([qid], ["x"]).tolist() == [SCREEN_UNDER_AGE]
    opt_in = PrivacyPolicy(allowed_sensitive={"health"}, sensitive_opt_ins=[(rid, "health")])
    assert opt_in.screen_events([qid, padded], ["health", "health"]).tolist() == [
        SCREEN_OK, SCREEN_SENSITIVE]
    key = b"0123456789abcdef"
    assert pseudonymize(qid, key) == pseudonymize(rid, key) != pseudonymize(padded, key)


def test_registries_refuse_values_that_are_no_id():
    for bad in (None, True, "", 1.5, float("nan"), ["a"]):
        with pytest.raises(ConfigError, match="not a user id"):
            OptOutRegistry([bad])
    reg = OptOutRegistry()
    with pytest.raises(ConfigError):
        reg.add(None)
    assert None not in reg and [1] not in reg and True not in reg


def _int_world():
    from bta.events import EventLog
    from bta.features import FeatureSpec, OnlineProfiles, build_features
    from bta.segment.book import Segment, SegmentBook
    from bta.serve import MemoryProfileStore

    users = np.array([0, 7, 923], dtype=np.int64)
    df = pd.DataFrame({"user_id": np.repeat(users, 2),
                       "ts": 1_767_225_600_000 + np.arange(6) * 1000,
                       "event": "page_view", "category": "autos"})
    spec = FeatureSpec(windows=("7d",), events=("page_view",))
    log = EventLog.from_pandas(df, ts_unit="ms")
    fm = build_features(log, spec)
    prof = OnlineProfiles(spec, categories=["autos"], grow_categories=False)
    prof.update(df, ts_unit="ms")
    book = SegmentBook.from_segments(users, [Segment("all", "custom", {}, np.ones(3, bool))],
                                     min_audience=1)
    return dict(df=df, log=log, fm=fm, prof=prof, book=book,
                store=MemoryProfileStore(prof, book))


@pytest.mark.parametrize("form", ["str", "np.int64", "float", "np.str_"])
def test_ids_of_another_type_find_the_user_everywhere(form):
    from bta.privacy import erase

    w = _int_world()
    q = ID_FORMS[form](923)
    assert w["fm"].user_rows(q).tolist() == [2]
    assert w["fm"].row(q) == w["fm"].row(923)
    assert w["book"].segments_of(q) == ["all"]
    assert w["store"].get(q) is not None and w["prof"].vector(q) is not None
    assert w["store"].get("0923") is None and w["book"].segments_of("0923") == []
    receipt = erase(ID_FORMS[form](0), w["fm"], w["book"], w["store"])
    assert receipt.held == (True, True, True)
    fm2, book2 = receipt.results[0], receipt.results[1]
    assert fm2.users.tolist() == [7, 923] and book2.users.tolist() == [7, 923]
    assert w["store"].get(0) is None and w["prof"].vector(0) is None


def test_text_ids_meet_integer_ids_in_online_profiles():
    from bta.features import FeatureSpec, OnlineProfiles

    spec = FeatureSpec(windows=("7d",), events=("page_view",))
    prof = OnlineProfiles(spec)
    t = 1_767_225_600_000
    prof.update(pd.DataFrame({"user_id": [923, 5], "ts": [t, t], "event": "page_view",
                              "category": "autos"}), ts_unit="ms")
    prof.update(pd.DataFrame({"user_id": ["923", "0923"], "ts": [t + 1, t + 1],
                              "event": "page_view", "category": "autos"}), ts_unit="ms")
    assert prof.n_users == 3  # 923 and "923" are one user; "0923" another
    fm = prof.features()
    assert fm.row(923)["count:page_view:autos:7d"] == 2.0
    assert fm.row("0923")["count:page_view:autos:7d"] == 1.0
    assert prof.erase(np.int64(923)) and prof.vector("923") is None and prof.n_users == 2


def test_engine_opt_outs_in_another_id_type():
    from bta.serve import Campaign, Creative, Engine, Experiment

    w = _int_world()
    for registered, asked in (("923", 923), (923, "923"), (923.0, np.int64(923))):
        eng = Engine([Campaign("c", (Creative("c1"),), targeting='segment("all")', bid=2.0)],
                     fallback=Campaign("house", (Creative("h"),), bid=0.1), store=w["store"],
                     experiment=Experiment({"control": 0.0, "targeted": 1.0}),
                     privacy=PrivacyPolicy(opt_outs={registered}), time_budget_ms=1000.0)
        eng.warmup()  # compiled before the first request, as a server does
        assert eng.decide({"user_id": asked, "ts": 1_767_225_700_000}).reason == \
            "fallback:opt_out"
        assert eng.decide({"user_id": 7, "ts": 1_767_225_700_000}).targeted
        batch = eng.decide_batch(pd.DataFrame({"user_id": [asked, 7],
                                               "ts": [1_767_225_700_000] * 2}))
        assert batch["reason"].tolist()[0] == "fallback:opt_out"


# ---- consent objects ----------------------------------------------------------------------------
OK_SHAPES = [
    {"purposes": [1, 3, 4]}, {"purposes": (3, 4)}, {"purposes": {3, 4}},
    {"purposes": frozenset({3, 4, 7})}, {"purposes": np.array([3, 4])},
    {"purposes": {3: True, 4: True, 5: False}}, {"purposes": {"3": True, "4": True}},
    {"purposes": {3: 1, 4: 1}}, {"tcf": GRANTED}, {"gdpr": 1, "tcf": GRANTED},
    {"gdpr": "1", "purposes": [3, 4]}, {"gdpr": 0}, {"gdpr": "0"}, {"gdpr": False}, {},
    None, {"opt_out": 0}, {"opt_out": "false"}, {"age": "30"}, {"age": 16}, {"coppa": "0"},
    {"us_privacy": "1NNN"}, {"us_privacy": "1---"},
]
NO_CONSENT_SHAPES = [
    {"gdpr": 1, "purposes": {3: False, 4: False}}, {"purposes": {"3": False, "4": True}},
    {"purposes": [3]}, {"purposes": []}, {"purposes": {}}, {"tcf": NOT_GRANTED},
    {"gdpr": 1}, {"gdpr": "1"}, {"gdpr": True}, {"gdpr": "yes"}, {"gdpr": 1, "tcf": ""},
]
BAD_SHAPES = [
    {"purposes": "34"}, {"purposes": b"34"}, {"purposes": 34}, {"purposes": [3.0, 4.0]},
    {"purposes": [True, True]}, {"purposes": {3: "yes", 4: True}}, {"purposes": {"x": True}},
    {"purposes": [0, 3, 4]}, {"purposes": [3, 4, 25]}, {"purposes": {3: None, 4: True}},
    {"purposes": [[3], [4]]}, {"purposes": object()},
    {"tcf": 12345}, {"tcf": ["x"]}, {"tcf": GRANTED + "!!"}, {"tcf": "not base64!"},
    {"tcf": GRANTED[:20]}, {"tcf": tcf_string({1, 2, 3, 4}, version=1)},
    {"tcf": GRANTED + "AAAA"}, {"opt_out": "maybe"}, {"opt_out": 2}, {"gpc": "on"},
    {"us_privacy": "YYYY"}, {"us_privacy": 1}, {"gpp_sid": "x,y"}, {"gpp_sid": [2]},
    {"vendors": "12"},
]


@pytest.mark.parametrize("consent", OK_SHAPES, ids=repr)
def test_documented_shapes_that_grant(consent):
    assert PrivacyPolicy().serving_gate("u", consent) == "ok"


@pytest.mark.parametrize("consent", NO_CONSENT_SHAPES, ids=repr)
def test_documented_shapes_that_do_not_grant(consent):
    assert PrivacyPolicy().serving_gate("u", consent) == "no_consent"


@pytest.mark.parametrize("consent", BAD_SHAPES, ids=repr)
def test_every_other_shape_is_bad_consent(consent):
    assert PrivacyPolicy().serving_gate("u", consent) == "bad_consent"
    # decoded once, judged the same
    assert PrivacyPolicy().serving_gate("u", read_consent(consent)) == "bad_consent"


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=8), st.binary(max_size=4), st.floats(), st.booleans(),
    st.lists(st.one_of(st.floats(), st.text(max_size=2), st.booleans(), st.none()),
             min_size=1, max_size=4),
    st.dictionaries(st.one_of(st.floats(), st.text(max_size=3).filter(lambda s: not s.isdigit())),
                    st.booleans(), min_size=1, max_size=3),
    st.dictionaries(st.integers(1, 24), st.one_of(st.text(max_size=3), st.floats(),
                                                  st.none()), min_size=1, max_size=3),
))
def test_purposes_outside_the_documented_shapes_are_bad_consent(value):
    assert PrivacyPolicy().serving_gate("u", {"purposes": value}) == "bad_consent"


def test_non_mapping_consent_is_bad_consent():
    for c in ([3, 4], "34", 1, ("gdpr", 1)):
        assert PrivacyPolicy().serving_gate("u", c) == "bad_consent"


def test_vendor_consent_is_required_with_a_vendor_id():
    policy = PrivacyPolicy(tcf_vendor_id=3)
    assert policy.serving_gate("u", {"tcf": tcf_string({1, 3, 4}, vendors=(1, 3))}) == "ok"
    assert policy.serving_gate("u", {"tcf": tcf_string({1, 3, 4}, vendors=(1, 2))}) == \
        "no_consent"
    assert policy.serving_gate("u", {"tcf": tcf_string({1, 3, 4}, vendors=(5,))}) == \
        "no_consent"
    # decoded purposes alone cannot prove vendor consent
    assert policy.serving_gate("u", {"purposes": [3, 4]}) == "no_consent"
    assert policy.serving_gate("u", {"purposes": [3, 4], "vendors": [3]}) == "ok"
    assert policy.serving_gate("u", {"purposes": [3, 4], "vendors": {3: False}}) == \
        "no_consent"
    with pytest.raises(ConfigError, match="tcf_vendor_id"):
        PrivacyPolicy(tcf_vendor_id=0)


@pytest.mark.parametrize("age, reason", [
    (30, "ok"), ("30", "ok"), (" 30 ", "ok"), (16.0, "ok"), ("12", "under_age"),
    (12, "under_age"), (float("inf"), "under_age"), ("1e999", "under_age"),
    (float("nan"), "under_age"), ("nan", "under_age"), ("twelve", "under_age"),
    (True, "under_age"), ([30], "under_age"), (-5, "under_age"), (10**400, "under_age"),
])
def test_ages_in_every_type(age, reason):
    policy = PrivacyPolicy()
    assert policy.serving_gate("u", {"age": age}) == reason
    assert policy.note_age("someone", age) == (reason == "under_age")


# ---- OpenRTB flags in every type ------------------------------------------------------------------
_ONE = [1, True, "1", "true", " TRUE ", 1.0, np.int64(1)]
_ZERO = [0, False, "0", "false", 0.0, np.int8(0)]


def _openrtb_reason(req_extra: dict) -> str:
    from bta.serve.openrtb import _consent

    return PrivacyPolicy().serving_gate("u", _consent(req_extra, 1_767_225_600_000))


@pytest.mark.parametrize("path", [("device", "lmt"), ("device", "dnt"), ("regs", "coppa"),
                                  ("regs", "ext", "gpc")])
def test_openrtb_restrictive_flags_mean_the_same_in_every_type(path):
    def req(v):
        obj: dict = {}
        cur = obj
        for k in path[:-1]:
            cur = cur.setdefault(k, {})
        cur[path[-1]] = v
        return obj

    on = {_openrtb_reason(req(v)) for v in _ONE}
    off = {_openrtb_reason(req(v)) for v in _ZERO}
    assert len(on) == 1 and on != {"ok"}
    assert off == {"ok"}
    # unreadable values fail closed
    assert _openrtb_reason(req("maybe")) != "ok"
    assert _openrtb_reason(req([1])) != "ok"


def test_openrtb_gpp_and_gpc_are_read():
    assert _openrtb_reason({"regs": {"gpp": "DBABLA~BVVVVVVVVWA", "gpp_sid": [7]}}) == "opt_out"
    assert _openrtb_reason({"regs": {"ext": {"gpp": "DBABTA~1YYN", "gpp_sid": [6]}}}) == \
        "opt_out"
    assert _openrtb_reason({"regs": {"gpp": "DBABTA~1YNN", "gpp_sid": [6]}}) == "ok"
    assert _openrtb_reason({"regs": {"gpp": "DBABTA~1YNN!", "gpp_sid": [6]}}) == "bad_consent"
    assert _openrtb_reason({"regs": {"ext": {"gpc": 1}}}) == "opt_out"
    assert _openrtb_reason({"regs": {"ext": {"gpc": "1"}}}) == "opt_out"


def test_openrtb_gdpr_atts_and_ages_in_every_type():
    for v in _ONE:
        assert _openrtb_reason({"regs": {"gdpr": v}}) == "no_consent"
        assert _openrtb_reason({"regs": {"gdpr": v}, "user": {"consent": GRANTED}}) == "ok"
    for v in _ZERO:
        assert _openrtb_reason({"regs": {"gdpr": v}}) == "ok"
    assert _openrtb_reason({"regs": {"gdpr": "x"}}) == "no_consent"  # unreadable: applies
    for v in (1, 2, "1", "2", 2.0):
        assert _openrtb_reason({"device": {"ext": {"atts": v}}}) == "opt_out"
    for v in (0, 3, "3"):
        assert _openrtb_reason({"device": {"ext": {"atts": v}}}) == "ok"
    assert _openrtb_reason({"device": {"ext": {"atts": "denied"}}}) == "opt_out"
    for v in (12, "12", 12.0):
        assert _openrtb_reason({"user": {"ext": {"age": v}}}) == "under_age"
    for yob in (2020, "2020", 2020.0, "abc", float("nan")):
        assert _openrtb_reason({"user": {"yob": yob}}) == "under_age"
    for yob in (1980, "1980"):
        assert _openrtb_reason({"user": {"yob": yob}}) == "ok"


# ---- the table: gate x shape x reason ---------------------------------------------------------------
TABLE = [
    # gate,              consent,                                          reason
    ("opt-out flag",     {"opt_out": True},                                "opt_out"),
    ("opt-out flag",     {"opt_out": "1"},                                 "opt_out"),
    ("opt-out flag",     {"opt_out": "garbage"},                           "bad_consent"),
    ("gpc",              {"gpc": 1},                                       "opt_out"),
    ("us_privacy",       {"us_privacy": "1YYN"},                           "opt_out"),
    ("us_privacy",       {"us_privacy": "1yYn"},                           "opt_out"),
    ("us_privacy",       {"us_privacy": "Y"},                              "bad_consent"),
    ("coppa",            {"coppa": 1},                                     "under_age"),
    ("coppa",            {"coppa": "maybe"},                               "under_age"),
    ("age",              {"age": "15"},                                    "under_age"),
    ("tcf",              {"tcf": GRANTED},                                 "ok"),
    ("tcf",              {"tcf": NOT_GRANTED},                             "no_consent"),
    ("tcf",              {"tcf": GRANTED + "x"},                           "bad_consent"),
    ("tcf",              {"tcf": None, "gdpr": 1},                         "no_consent"),
    ("purposes",         {"purposes": {3: False, 4: False}, "gdpr": 1},    "no_consent"),
    ("purposes",         {"purposes": "34"},                               "bad_consent"),
    ("purposes+tcf",     {"purposes": [3, 4], "tcf": NOT_GRANTED},         "no_consent"),
    ("gdpr",             {"gdpr": None},                                   "ok"),
    # GPP strings published by the specification and the IAB reference libraries
    # (see tests/test_privacy_signals.py for their sources and decoded fields)
    ("gpp usnat",        {"gpp": "DBABLA~BVVVVVVVVWA", "gpp_sid": [7]},    "opt_out"),
    ("gpp usnat",        {"gpp": "DBABLA~BVQqAAAAAgA.QA", "gpp_sid": [7]}, "ok"),
    ("gpp usp",          {"gpp": "DBABTA~1YYN", "gpp_sid": [6]},           "opt_out"),
    ("gpp usp",          {"gpp": "DBABTA~1YNN", "gpp_sid": "6"},           "ok"),
    ("gpp tcf eu",       {"gpp": "DBABMA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA",
                          "gpp_sid": [2]},                                 "no_consent"),
    ("gpp tcf eu",       {"gpp": "DBABMA~" + GRANTED, "gpp_sid": [2]},     "ok"),
    ("gpp tcf eu",       {"gpp": "DBABMA~" + GRANTED, "tcf": NOT_GRANTED}, "no_consent"),
    ("gpp missing sid",  {"gpp": "DBABTA~1YNN", "gpp_sid": [7]},           "bad_consent"),
    ("gpp malformed",    {"gpp": "garbage", "gpp_sid": [7]},               "bad_consent"),
    ("gpp malformed",    {"gpp": "DBABTA~1YNN~", "gpp_sid": [6]},          "bad_consent"),
    ("gpp sid alone",    {"gpp_sid": [7]},                                 "bad_consent"),
    ("gpc",              {"gpc": "1", "gpp": "DBABTA~1YNN"},               "opt_out"),
    ("order",            {"opt_out": 1, "purposes": "34"},                 "opt_out"),
    ("order",            {"coppa": 1, "purposes": "34"},                   "under_age"),
]


@pytest.mark.parametrize("gate, consent, reason", TABLE, ids=[f"{g}:{c!r}" for g, c, _ in TABLE])
def test_gate_shape_reason_table(gate, consent, reason):
    assert PrivacyPolicy().serving_gate("u", consent) == reason


def test_unknown_gdpr_follows_require_consent_signal():
    assert PrivacyPolicy().serving_gate("u", {}) == "ok"
    strict = PrivacyPolicy(require_consent_signal=True)
    assert strict.serving_gate("u", {}) == "no_consent"
    assert strict.serving_gate("u", None) == "no_consent"
    assert strict.serving_gate("u", {"gdpr": 0}) == "ok"  # an explicit "does not apply"
    assert strict.serving_gate("u", {"tcf": GRANTED}) == "ok"


def test_canonical_id_table():
    for x, want in [(923, "923"), ("923", "923"), (923.0, "923"), (np.uint64(2**63), str(2**63)),
                    ("0923", "0923"), (b"abc", "abc"), (True, None), (None, None), ("", None),
                    (1.5, None), (float("inf"), None), ([1], None), ("x" * 2000, None)]:
        assert canonical_id(x) == want, x


def test_the_log_reports_the_raw_spellings_it_screened():
    from bta.events import EventLog

    cats = ["Health ", "health\u200b", "sports", "Health ", "Mental-Health", None]
    df = pd.DataFrame({"user_id": list("abcdef"), "ts": 1_767_225_600_000 + np.arange(6),
                       "event": "page_view", "category": cats})
    log = EventLog.from_pandas(df, ts_unit="ms")
    s = log.summary()
    assert s["removed_by_reason"]["sensitive"] == 4
    assert s["screened_spellings"] == {"Health ": 2, "health\u200b": 1, "Mental-Health": 1}
    assert log.select_users([1]).summary()["screened_spellings"] == s["screened_spellings"]

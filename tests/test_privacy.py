"""PrivacyPolicy: event screening, registries, and the privacy guarantees across bta.

Layers: a table of bad inputs with the exact error each gives; screening against a naive per-row
reference (fixed cases and hypothesis); properties over generated populations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, SchemaError
from bta.privacy import (
    SCREEN_OK, SCREEN_OPT_OUT, SCREEN_REASONS, SCREEN_SENSITIVE, SCREEN_UNDER_AGE,
    MinorRegistry, OptOutRegistry, PrivacyPolicy, SensitiveOptIns, pseudonymize,
)
from naive import naive_screen
from test_openrtb import tcf_string


# ---- screen_events: fixed cases ----------------------------------------------------------------
def test_screen_codes_and_reasons():
    assert (SCREEN_OK, SCREEN_OPT_OUT, SCREEN_UNDER_AGE, SCREEN_SENSITIVE) == (0, 1, 2, 3)
    assert SCREEN_REASONS == ("ok", "opt_out", "under_age", "sensitive")


def test_screen_events_each_reason():
    policy = PrivacyPolicy(allowed_sensitive={"health"}, opt_outs={"out"}, minors={"kid"},
                           sensitive_opt_ins=[("fan", "health"), ("fan", "religion")])
    users = ["a", "a", "a", "out", "kid", "fan", "fan", "fan", "out", "kid"]
    cats = ["sports", "Health", "RELIGION", "sports", "sports", "health", "religion", "autos",
            "health", "health"]
    got = policy.screen_events(users, cats)
    assert got.dtype == np.int8
    # "fan" opted in to religion, but religion is not in allowed_sensitive: still screened.
    assert got.tolist() == [0, 3, 3, 1, 2, 0, 3, 0, 1, 2]
    assert [SCREEN_REASONS[c] for c in got[:5]] == ["ok", "sensitive", "sensitive", "opt_out",
                                                    "under_age"]


def test_screen_events_registry_changes_apply_at_once():
    policy = PrivacyPolicy(allowed_sensitive={"health"})
    users, cats = np.array([7, 7, 8]), np.array(["health", "news", "news"])
    assert policy.screen_events(users, cats).tolist() == [3, 0, 0]
    policy.sensitive_opt_ins.add(7, "HEALTH")
    assert policy.screen_events(users, cats).tolist() == [0, 0, 0]
    policy.opt_outs.add(8)
    policy.minors.add(7)
    assert policy.screen_events(users, cats).tolist() == [2, 2, 1]
    policy.minors.remove(7)
    policy.sensitive_opt_ins.remove(7, "health")
    assert policy.screen_events(users, cats).tolist() == [3, 0, 1]


def test_screen_events_inputs_of_many_kinds():
    policy = PrivacyPolicy(opt_outs={3})
    cats = pd.Series(["news", None, np.nan, "health"], dtype=object)
    users = pd.Series([1, 2, 3, 4], dtype="int64")
    assert policy.screen_events(users, cats).tolist() == [0, 0, 1, 3]
    assert policy.screen_events(users.to_numpy(), cats.astype("category")).tolist() == \
        [0, 0, 1, 3]
    assert policy.screen_events([], []).shape == (0,)
    # a missing user id is nobody's opt-out; sensitive still applies
    assert policy.screen_events([None, None], ["news", "health"]).tolist() == [0, 3]


@pytest.mark.parametrize("users, cats, message", [
    (["a", "b"], ["x"], "user_ids and categories must have the same length, got 2 and 1"),
    (np.zeros((2, 2)), ["x", "y"], "user_ids must be one-dimensional, got shape (2, 2)"),
    (["a"], np.array([["x"]]), "categories must be one-dimensional, got shape (1, 1)"),
])
def test_screen_events_bad_input(users, cats, message):
    with pytest.raises(SchemaError) as info:
        PrivacyPolicy().screen_events(users, cats)
    assert str(info.value) == message


@pytest.mark.parametrize("kwargs, message", [
    ({"allowed_sensitive": {"sports"}},
     "allowed_sensitive names categories that are not sensitive: ['sports']"),
    ({"opt_outs": "u1"}, "opt_outs must be a OptOutRegistry or an iterable of user ids, got str"),
    ({"minors": 5}, "minors must be a MinorRegistry or an iterable of user ids, got int"),
    ({"min_age": -1}, "min_age must be an integer age between 0 and 120, got -1"),
])
def test_policy_bad_config(kwargs, message):
    with pytest.raises(ConfigError) as info:
        PrivacyPolicy(**kwargs)
    assert str(info.value) == message


def test_registries_coerced_and_shared():
    opt = OptOutRegistry({"x"})
    p = PrivacyPolicy(opt_outs=opt, minors=["k"], sensitive_opt_ins={"u": ["Health", "debt"]})
    assert p.opt_outs is opt
    assert isinstance(p.minors, MinorRegistry) and "k" in p.minors
    assert isinstance(p.sensitive_opt_ins, SensitiveOptIns)
    assert p.sensitive_opt_ins.categories("u") == {"health", "debt"}
    assert [] not in p.opt_outs  # unhashable ids are never members
    assert p == PrivacyPolicy()  # registries do not take part in equality


def test_note_age_and_serving_gate_for_minors():
    p = PrivacyPolicy(min_age=16)
    assert p.note_age("teen", 15) is True and "teen" in p.minors
    assert p.note_age("adult", 16) is False and "adult" not in p.minors
    assert p.note_age("unknown", float("nan")) is True
    assert p.note_age("bad", "x") is True
    assert p.serving_gate("teen", None) == "under_age"
    assert p.serving_gate("adult", None) == "ok"


def test_screen_events_is_fast_on_repeating_categories():
    """Work is per distinct category and user: 200k rows with 2k users cost little."""
    rng = np.random.default_rng(0)
    n = 200_000
    users = rng.integers(0, 2_000, n)
    cats = rng.choice(np.array(["news", "sports", "health", "autos", "religion"]), n)
    p = PrivacyPolicy(opt_outs=range(0, 2_000, 7), minors=range(3, 2_000, 11))
    got = p.screen_events(users, cats)
    sample = rng.choice(n, 2_000, replace=False)
    assert np.array_equal(got[sample], naive_screen(p, users[sample], cats[sample]))


# ---- screen_events: hypothesis against the naive reference ------------------------------------
_CATS = ["news", "sports", "health", "Health", "religion", "debt", "autos", None]
_USERS = st.one_of(st.integers(0, 12), st.sampled_from(["a", "b", "c", "d"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(_USERS, st.sampled_from(_CATS)), max_size=60),
       opt_outs=st.sets(_USERS, max_size=4), minors=st.sets(_USERS, max_size=4),
       allowed=st.sets(st.sampled_from(["health", "religion", "debt"])),
       opt_ins=st.lists(st.tuples(_USERS, st.sampled_from(["health", "religion", "debt"])),
                        max_size=8))
def test_screen_events_matches_naive(rows, opt_outs, minors, allowed, opt_ins):
    policy = PrivacyPolicy(allowed_sensitive=allowed, opt_outs=opt_outs, minors=minors,
                           sensitive_opt_ins=opt_ins)
    users = [u for u, _ in rows]
    cats = [c for _, c in rows]
    got = policy.screen_events(users, cats)
    assert got.dtype == np.int8 and got.shape == (len(rows),)
    assert np.array_equal(got, naive_screen(policy, users, cats))


# ---- pseudonymize --------------------------------------------------------------------------------
KEY = b"privacy-test-key-0001"


def test_pseudonymize_matches_hmac_reference():
    import hashlib
    import hmac

    ids = ["alice", 7, 7.0, "7", None, float("nan"), "", "ünï"]
    got = pseudonymize(ids, KEY)

    def ref(u):
        if u is None or u == "" or (isinstance(u, float) and np.isnan(u)):
            return None
        text = str(int(u)) if isinstance(u, float) else str(u)
        return hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()[:32]

    assert got.tolist() == [ref(u) for u in ids]
    assert pseudonymize("alice", KEY) == got[0] and pseudonymize(np.int64(7), KEY) == got[1]
    assert pseudonymize("alice", KEY + b"x") != got[0]
    with pytest.raises(ConfigError, match=r"key must be bytes of length >= 16"):
        pseudonymize(["a"], b"short")


# ---- no blocked category in features or segment definitions ------------------------------------
_ALL_CATS = ["autos", "travel", "news", "health", "Religion", "debt", "politics", "sports"]


@st.composite
def populations(draw):
    n_users = draw(st.integers(1, 8))
    rows = []
    for u in range(n_users):
        for _ in range(draw(st.integers(1, 6))):
            rows.append((f"u{u}", 1_767_225_600_000 - draw(st.integers(0, 10 * 86_400_000)),
                         draw(st.sampled_from(["page_view", "ad_click", "search"])),
                         draw(st.sampled_from(_ALL_CATS))))
    return pd.DataFrame(rows, columns=["user_id", "ts", "event", "category"]).drop_duplicates()


_policies = st.builds(
    lambda allowed, opt_ins: PrivacyPolicy(allowed_sensitive=allowed, sensitive_opt_ins=opt_ins),
    st.sets(st.sampled_from(["health", "debt"])),
    st.lists(st.tuples(st.sampled_from([f"u{i}" for i in range(8)]),
                       st.sampled_from(["health", "debt", "religion"])), max_size=6))


def _blocked_set(policy):
    return policy.sensitive_categories - policy.allowed_sensitive


def _mentions(text: str, categories) -> set:
    """Categories that appear in ``text`` as a whole ':'-delimited field (the naming scheme)."""
    fields = str(text).lower().split(":")
    return {c for c in categories if c in fields}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=populations(), policy=_policies)
def test_no_blocked_category_in_feature_names(df, policy):
    from bta.events import EventLog
    from bta.features import FeatureSpec, OnlineProfiles, build_features
    from bta.features.matrix import layout_for

    spec = FeatureSpec(windows=("1d", "7d"), events=("page_view", "ad_click", "search"))
    blocked = _blocked_set(policy)
    log = EventLog.from_pandas(df, ts_unit="ms", privacy=policy)
    fm = build_features(log, spec)
    assert not any(_mentions(n, blocked) for n in fm.feature_names)
    # an allowed sensitive category holds only its opted-in users' events
    for c in policy.allowed_sensitive:
        users = set(log.to_pandas().query("category.str.lower() == @c").user_id)
        assert all(c in policy.sensitive_opt_ins.categories(u) for u in users)
    # the online path: a fixed layout over the whole vocabulary, through the policy
    cats = sorted(set(df.category))
    names = layout_for(policy.feature_spec(spec, cats), cats).feature_names
    assert not any(_mentions(n, blocked) for n in names)
    prof = OnlineProfiles(policy.feature_spec(spec, cats), categories=cats,
                          grow_categories=False)
    assert not any(_mentions(n, blocked) for n in prof.feature_names)


_RULE_PARTS = ["count:page_view:autos:7d", "count:page_view:health:7d", "decay:search:debt",
               "recency:ad_click:Religion", 'total("count:*:7d")', 'total("*:politics:*")',
               "count:search:news:1d"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.sampled_from(_RULE_PARTS), min_size=1, max_size=3), policy=_policies,
       extra=st.lists(st.sampled_from(_ALL_CATS), max_size=3))
def test_no_blocked_category_in_an_accepted_segment_definition(parts, policy, extra):
    from bta.segment.book import Segment, SegmentBook
    from bta.segment.rules import RuleSegment

    blocked = _blocked_set(policy)
    expr = " + ".join(parts) + " > 1"
    segs = []
    try:
        rule = RuleSegment("r", expr, privacy=policy)
        segs.append(Segment("r", "rule", {"expr": rule.expr}, np.ones(2, bool)))
    except ConfigError:
        mentioned = set().union(*(_mentions(p.replace('total("', "").replace('")', "")
                                            .replace("*", ":"), blocked) for p in parts))
        assert mentioned  # refused only for a reason
    segs.append(Segment("c", "cluster", {"top_categories": extra}, np.ones(2, bool)))
    try:
        book = SegmentBook.from_segments(["a", "b"], segs, privacy=policy)
    except ConfigError:
        assert set(c.lower() for c in extra) & blocked
        return
    for d in book.definitions:
        strings = [d.get("expr", "")] + list(d.get("top_categories", []))
        for s in strings:
            for token in s.replace('"', " ").replace("(", " ").replace(")", " ").split():
                assert not _mentions(token.replace("*", ":"), blocked), (token, d)


# ---- the Engine never targets an opted-out, non-consenting or under-age user ---------------------
T_SERVE = 1_767_225_600_000
_SERVE_CATS = ("autos", "travel", "sports")


_consent = st.fixed_dictionaries({}, optional={
    "opt_out": st.sampled_from([False, True, 0, 1]),
    "age": st.one_of(st.integers(0, 90), st.floats(0, 90), st.just(float("nan"))),
    "gdpr": st.sampled_from([0, 1]),
    "coppa": st.sampled_from([0, 1]),
    "tcf": st.sets(st.integers(1, 12)).map(tcf_string),
    "purposes": st.sets(st.integers(1, 6)).map(sorted),
})


def _may_target(user, consent, policy) -> bool:
    """The rules read literally: any one of them forbids a targeted creative."""
    from bta.privacy import tcf_purposes

    if user in policy.opt_outs or user in policy.minors:
        return False
    if consent.get("opt_out") or consent.get("coppa"):
        return False
    age = consent.get("age")
    if age is not None and not age >= policy.min_age:
        return False
    purposes = consent.get("purposes")
    if purposes is None and "tcf" in consent:
        purposes = tcf_purposes(consent["tcf"]) or set()
    if purposes is not None:
        return {3, 4} <= set(purposes)
    return not consent.get("gdpr")


@st.composite
def serving_worlds(draw):
    n_users = draw(st.integers(2, 10))
    rows = []
    for u in range(n_users):
        for _ in range(draw(st.integers(1, 5))):
            rows.append((u, T_SERVE - draw(st.integers(1, 6 * 86_400_000)),
                         draw(st.sampled_from(["page_view", "ad_click"])),
                         draw(st.sampled_from(_SERVE_CATS))))
    users = list(range(n_users))
    opt_outs = draw(st.sets(st.sampled_from(users), max_size=3))
    minors = draw(st.sets(st.sampled_from(users), max_size=2))
    requests = draw(st.lists(st.tuples(st.sampled_from(users + [99]), _consent),
                             min_size=1, max_size=12))
    return rows, opt_outs, minors, requests


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(world=serving_worlds())
def test_engine_never_targets_users_the_policy_protects(world):
    from bta.features import FeatureSpec, OnlineProfiles
    from bta.segment.book import Segment, SegmentBook
    from bta.serve.campaigns import Campaign, Creative
    from bta.serve.engine import Engine
    from bta.serve.experiment import Experiment
    from bta.serve.store import MemoryProfileStore

    rows, opt_outs, minors, requests = world
    df = pd.DataFrame(rows, columns=["user_id", "ts", "event", "category"]).drop_duplicates()
    spec = FeatureSpec(windows=("1d", "7d"), events=("page_view", "ad_click"))
    prof = OnlineProfiles(spec, categories=_SERVE_CATS, grow_categories=False)
    prof.update(df, ts_unit="ms")
    users = np.array(sorted(set(df.user_id)))
    book = SegmentBook.from_segments(users, [Segment("all", "custom", {},
                                                     np.ones(len(users), bool))],
                                     min_audience=1)
    policy = PrivacyPolicy(opt_outs=opt_outs, minors=minors)
    targeted = [
        Campaign("everyone", (Creative("e-1"),), targeting="ctr:smoothed >= 0", bid=5.0),
        Campaign("autos", (Creative("a-1"),), targeting="count:page_view:autos:7d >= 1",
                 bid=6.0),
        Campaign("seg", (Creative("s-1"),), targeting='segment("all")', bid=4.0),
    ]
    ron = Campaign("ron", (Creative("r-1"),), bid=1.0)
    house = Campaign("house", (Creative("h-1"),), bid=0.1)
    untargeted_creatives = {"r-1", "h-1"}
    eng = Engine(targeted + [ron], fallback=house, store=MemoryProfileStore(prof, book),
                 experiment=Experiment({"control": 0.0, "targeted": 1.0}), privacy=policy,
                 time_budget_ms=1000.0)
    reqs = [{"user_id": u, "ts": T_SERVE, "consent": c} for u, c in requests]
    one_by_one = [eng.decide(r) for r in reqs]
    batch = eng.decide_batch(reqs)
    for (u, c), d, (_, b) in zip(requests, one_by_one, batch.iterrows()):
        if not _may_target(u, c, policy):
            assert d.targeted is False and d.creative_id in untargeted_creatives, (u, c, d)
            assert not b["targeted"] and b["creative_id"] in untargeted_creatives, (u, c)
        if d.targeted:  # the converse: a targeted creative only where every rule allows it
            assert _may_target(u, c, policy) and u in set(users)


# ---- erasure: nothing remains anywhere ----------------------------------------------------------
def _erasure_world(redis_url, prefix):
    from bta.events import EventLog
    from bta.features import FeatureSpec, OnlineProfiles
    from bta.segment.book import Segment, SegmentBook
    from bta.serve.campaigns import Campaign, Creative, FrequencyCap
    from bta.serve.engine import Engine
    from bta.serve.experiment import Experiment
    from bta.serve.redis_store import RedisProfileStore
    from bta.serve.store import MemoryProfileStore

    rng = np.random.default_rng(5)
    users = [f"user{i}" for i in range(12)]
    rows = [(u, T_SERVE - int(rng.integers(1, 5 * 86_400_000)),
             str(rng.choice(["page_view", "ad_click"])), str(rng.choice(_SERVE_CATS)))
            for u in users for _ in range(4)]
    df = pd.DataFrame(rows, columns=["user_id", "ts", "event", "category"]).drop_duplicates()
    df.loc[len(df)] = ["user3", T_SERVE, "bogus", "autos"]  # a quarantined row of user3
    log = EventLog.from_pandas(df, ts_unit="ms", errors="quarantine")
    spec = FeatureSpec(windows=("1d", "7d"), events=("page_view", "ad_click"))
    prof = OnlineProfiles(spec, categories=_SERVE_CATS, grow_categories=False)
    prof.update(df.iloc[:-1], ts_unit="ms")
    book = SegmentBook.from_segments(users, [
        Segment("all", "custom", {}, np.ones(len(users), bool)),
        Segment("half", "custom", {}, np.arange(len(users)) % 2 == 1)], min_audience=1)
    policy = PrivacyPolicy(allowed_sensitive={"health"},
                           sensitive_opt_ins=[("user3", "health")])
    memory = MemoryProfileStore(prof, book)
    redis_store = RedisProfileStore.from_profiles(prof, book, url=redis_url, prefix=prefix,
                                                  timeout_ms=2000.0)
    redis_store.publish_from(prof, book, as_of=T_SERVE)
    eng = Engine([Campaign("all", (Creative("a-1"),), targeting='segment("all")', bid=2.0,
                           caps=(FrequencyCap(5, "1d", "campaign"),))],
                 fallback=Campaign("house", (Creative("h-1"),), bid=0.1), store=memory,
                 experiment=Experiment({"control": 0.0, "targeted": 1.0}), privacy=policy,
                 time_budget_ms=1000.0)
    return dict(log=log, prof=prof, book=book, policy=policy, memory=memory,
                redis=redis_store, engine=eng)


def _redis_keys(url):
    import redis

    client = redis.Redis.from_url(url)
    try:
        return {k.decode(): client.type(k).decode() for k in client.scan_iter(count=1000)}
    finally:
        client.close()


@pytest.mark.redis
def test_erase_everywhere_leaves_nothing(redis_server, redis_prefix):
    from bta.privacy import ErasureReceipt, erase

    w = _erasure_world(redis_server, redis_prefix)
    u = "user3"
    assert w["engine"].decide({"user_id": u, "ts": T_SERVE}).targeted  # builds cap history
    assert any(k.endswith(":id:" + u) for k in _redis_keys(redis_server))
    places = (w["log"], w["prof"], w["memory"], w["redis"], w["book"], w["engine"], w["policy"])
    receipt = erase(u, *places)
    assert isinstance(receipt, ErasureReceipt)
    assert receipt.held == (True, True, True, True, True, None, True)
    log, book = receipt.results[0], receipt.results[4]
    assert receipt.results[1] is w["prof"] and receipt.results[3] is w["redis"]

    # the event log: no event, no vocabulary entry, no quarantined row
    assert u not in log.users.tolist() and not (log.to_pandas().user_id == u).any()
    assert not (log.quarantine["user_id"] == u).any()
    assert log.removed["erased"] == (w["log"].to_pandas().user_id == u).sum() + 1
    # online profiles and both stores
    assert w["prof"].vector(u) is None and u not in w["prof"].features().users.tolist()
    assert w["memory"].get(u, T_SERVE) is None
    assert u not in w["memory"].book.users.tolist() and w["memory"].book.segments_of(u) == []
    assert w["redis"].get(u) is None and u not in w["redis"].book.users.tolist()
    # a scan of every key of the server: none names the user, in any layout or prefix
    assert not [k for k in _redis_keys(redis_server) if u in k]
    # the segment book, the engine's frequency history, the policy's opt-ins
    assert u not in book.users.tolist() and book.segments_of(u) == []
    assert u not in w["engine"]._history
    assert w["policy"].sensitive_opt_ins.categories(u) == frozenset()
    # everyone else is intact
    v = "user4"
    assert v in log.users.tolist() and w["redis"].get(v) is not None
    assert w["memory"].get(v, T_SERVE) is not None and v in book.users.tolist()
    # erasing again finds nothing
    again = erase(u, receipt.results[0], w["prof"], w["memory"], w["redis"], book, w["policy"])
    assert again.held_by == ()


def test_erase_orchestrator_errors_and_incomplete_erasures():
    from bta.errors import StoreError
    from bta.privacy import erase

    with pytest.raises(ConfigError, match=r"places\[1\] must have an erase method, got int"):
        erase("u", PrivacyPolicy(), 5)

    class Broken:
        def erase(self, user_id):
            raise ConnectionError("down")

    policy = PrivacyPolicy(sensitive_opt_ins=[("u", "health")])
    with pytest.raises(StoreError) as info:
        erase("u", Broken(), policy)
    assert str(info.value) == ("erasure of user 'u' is incomplete; failed places: "
                               "0:Broken: ConnectionError: down")
    # every place was still tried
    assert info.value.receipt.held == (None, True) and "u" not in policy.sensitive_opt_ins


def test_policy_erase_keeps_suppression_lists():
    p = PrivacyPolicy(opt_outs={"u"}, minors={"u"}, sensitive_opt_ins=[("u", "debt")])
    assert p.erase("u") is True and p.erase("u") is False
    assert "u" in p.opt_outs and "u" in p.minors


def test_engine_erase_drops_pending_decisions():
    from bta.features import FeatureSpec, OnlineProfiles
    from bta.serve.campaigns import Campaign, Creative
    from bta.serve.engine import Engine
    from bta.serve.experiment import Experiment
    from bta.serve.store import MemoryProfileStore

    spec = FeatureSpec(windows=("1d",), events=("page_view",))
    prof = OnlineProfiles(spec, categories=("autos",), grow_categories=False)
    prof.update(pd.DataFrame({"user_id": ["u"], "ts": [T_SERVE - 1000], "event": ["page_view"],
                              "category": ["autos"]}), ts_unit="ms")
    eng = Engine([Campaign("c", (Creative("c-1"),), targeting="ctr:smoothed >= 0", bid=1.0)],
                 fallback=Campaign("h", (Creative("h-1"),), bid=0.1),
                 store=MemoryProfileStore(prof), count_on="win",
                 experiment=Experiment({"control": 0.0, "targeted": 1.0}),
                 time_budget_ms=1000.0)
    d = eng.decide({"user_id": "u", "ts": T_SERVE, "request_id": "r1"})
    assert d.targeted and eng.n_pending == 1, d
    eng.erase("u")
    # a win notice after the erasure must not bring the user's history back
    assert eng.notify_win(d.request_id) is False


def test_policy_and_registries_pickle_with_their_contents():
    # a policy travels to worker processes (Dask, multiprocessing) inside books and engines
    import pickle

    from bta.privacy import PrivacyPolicy

    pol = PrivacyPolicy(allowed_sensitive={"health"}, opt_outs={"u1"},
                        sensitive_opt_ins=[("u2", "health")])
    pol.minors.add("kid")
    back = pickle.loads(pickle.dumps(pol))
    assert "u1" in back.opt_outs and "kid" in back.minors
    assert back.sensitive_opt_ins.categories("u2") == frozenset({"health"})
    back.opt_outs.add("u3")  # the copy has a working lock of its own
    assert "u3" in back.opt_outs and "u3" not in pol.opt_outs


def test_engine_targeting_follows_the_engines_policy():
    # a campaign on a sensitive category is refused by default and accepted when the Engine's
    # policy allows the category (profiles then hold it only for users who opted in)
    from bta.errors import ConfigError
    from bta.features import FeatureSpec, OnlineProfiles
    from bta.privacy import PrivacyPolicy
    from bta.serve.campaigns import Campaign, Creative
    from bta.serve.engine import Engine
    from bta.serve.store import MemoryProfileStore

    spec = FeatureSpec(windows=("1d",), events=("page_view",))
    allow = PrivacyPolicy(allowed_sensitive={"health"}, sensitive_opt_ins=[("u", "health")])
    prof = OnlineProfiles(spec, categories=("autos", "health"), grow_categories=False,
                          privacy=allow)
    camp = [Campaign("c", (Creative("c-1", "health"),),
                     targeting="count:page_view:health:1d >= 1", bid=1.0)]
    house = Campaign("h", (Creative("h-1"),), bid=0.1)
    store = MemoryProfileStore(prof)
    with pytest.raises(ConfigError, match="blocked \\(sensitive\\) category 'health'"):
        Engine(camp, fallback=house, store=store)
    Engine(camp, fallback=house, store=store, privacy=allow)

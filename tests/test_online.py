"""OnlineProfiles: state layout, id table, pools, erasure, retention and privacy screening.

``tests/test_features.py`` checks online == batch on random logs; here the same equality is
checked after the operations that move or free state (pool compaction, erase, slot reuse,
expire), against a rebuild from the events that should remain.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError
from bta.events import STANDARD_EVENTS, EventLog
from bta.features import FeatureSpec, OnlineProfiles, build_features
from bta.features import families as F
from bta.features import _online_kernels as OK_
from bta.privacy import PrivacyPolicy

DAY = 86_400_000
T0 = 1_750_000_000_000 - 1_750_000_000_000 % DAY
# "gambling" is sensitive only for the policies made here (it is not on the default list that
# ingestion always applies), so these tests exercise the profiles' own screening
CATS = ["autos", "news", "travel", "gambling"]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_log(df: pd.DataFrame) -> EventLog:
    return EventLog.from_pandas(df, ts_unit="ms")


@st.composite
def frames(draw, max_rows=80, n_users=12):
    n = draw(st.integers(1, max_rows))
    offsets = st.sampled_from([0, 1, 30, 31, 60, 1440, 1441, 2880, 4000, 10080, 10081, 20000,
                               43200])
    df = pd.DataFrame({
        "user_id": draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n)),
        "ts": [T0 + o * 60_000 for o in draw(st.lists(offsets, min_size=n, max_size=n))],
        "event": draw(st.lists(st.sampled_from(STANDARD_EVENTS), min_size=n, max_size=n)),
        "category": pd.Series(draw(st.lists(st.sampled_from(CATS + [None]), min_size=n,
                                            max_size=n)), dtype=object),
    })
    return df.drop_duplicates(ignore_index=True).sort_values("ts", kind="stable",
                                                             ignore_index=True)


SPECS = st.sampled_from([
    FeatureSpec(exclude_flagged=False),
    FeatureSpec(windows=("1h", "1d"), window_bucket="1h", exclude_flagged=False),
    FeatureSpec(events=("page_view", "ad_click"), user_features=False, exclude_flagged=False),
])


def feed(prof: OnlineProfiles, df: pd.DataFrame, splits: int, via_log: bool = True) -> list:
    results = []
    for part in np.array_split(np.arange(len(df)), splits):
        if len(part):
            chunk = df.iloc[part]
            results.append(prof.update_log(make_log(chunk)) if via_log
                           else prof.update(chunk, ts_unit="ms"))
    return results


def assert_bitwise_equal(online, batch):
    """``online`` equals ``batch`` bit for bit on ``batch``'s columns; any further online
    column (a category only forgotten users had) is empty."""
    assert list(online.users) == list(batch.users)
    pos = {n: j for j, n in enumerate(online.feature_names)}
    assert set(batch.feature_names) <= set(pos)
    cols = np.array([pos[n] for n in batch.feature_names], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(online.feature_names)), cols)
    assert online.X[:, rest].nnz == 0
    sub = online.X[:, cols].tocsr()
    sub.sort_indices()
    assert np.array_equal(sub.indptr, batch.X.indptr)
    assert np.array_equal(sub.indices, batch.X.indices)
    assert np.array_equal(sub.data, batch.X.data)  # same kernels, same order: exact


def assert_no_stale_state(prof: OnlineProfiles):
    """Every nonzero row of the pools belongs to a live run: erased, expired and relocated
    data leave no copy behind."""
    n = len(prof._user_ids)
    U = prof._U[:n]
    live_cells = int((U[:, OK_.H_CLC] & 0xFFFFFFFF).sum())
    assert np.count_nonzero(prof._CS[:, F.cells.C_N]) == live_cells
    assert np.count_nonzero(prof._P[:, 0]) == prof.window_entries()
    for s, u in enumerate(prof._user_ids):
        if u is None:  # a free slot holds the initial state
            fresh = np.zeros(OK_.N_H, dtype=np.int64)
            fresh[:F.N_INT] = F.INITIAL_INTS
            assert np.array_equal(U[s], fresh) and not prof._UF[s].any()


# ---- layout and pools ---------------------------------------------------------------------------
def test_bucketed_online_memory_is_bounded():
    spec = FeatureSpec(windows=("1d", "7d"), window_bucket="1d", user_features=False)
    prof = OnlineProfiles(spec)
    # one very active user: 20 events per hour for 30 days, in 2 categories
    hours = np.arange(30 * 24)
    ts = np.repeat(T0 + hours * 3_600_000, 20) + np.tile(np.arange(20) * 1000, hours.size)
    df = pd.DataFrame({"user_id": 1, "ts": ts, "event": "page_view",
                       "category": np.where(np.arange(ts.size) % 2, "autos", "news")})
    for part in np.array_split(np.arange(len(df)), 30):
        prof.update(df.iloc[part], ts_unit="ms")
    # at most (7d / 1d + 1) buckets x 2 cells may be live, whatever the event rate
    assert prof.window_entries() <= (7 + 1) * 2
    batch = build_features(make_log(df), spec, as_of=int(ts.max()))
    assert np.array_equal(batch.X.data, prof.features().X.data)


def test_pool_compaction_and_forced_growth_keep_results_exact():
    rng = np.random.default_rng(7)
    n = 30_000
    # 3,000 light users and one heavy user whose single run outgrows half of any pool so far
    users = np.where(rng.random(n) < 0.2, 10**12, rng.integers(0, 3000, n))
    df = pd.DataFrame({"user_id": users, "ts": T0 + np.sort(rng.integers(0, 20 * DAY, n)),
                       "event": rng.choice(["page_view", "ad_click"], n),
                       "category": rng.choice(CATS[:3] + [f"c{i}" for i in range(40)], n)})
    df = df.drop_duplicates(ignore_index=True)
    spec = FeatureSpec(exclude_flagged=False)
    prof = OnlineProfiles(spec)
    feed(prof, df, 6)
    assert prof._P.shape[0] > 1024 and prof._CK.shape[0] > 1024  # grew, compacting on the way
    batch = build_features(make_log(df), spec, as_of=int(df.ts.max()))
    assert_bitwise_equal(prof.features(as_of=int(df.ts.max())), batch)
    assert_no_stale_state(prof)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.sampled_from(
    [0, 1, -1, 7, 16, 33, 2**40, -(2**62), 2**63 - 1, 12345])), max_size=60))
def test_id_table_matches_a_dict(ops):
    """lookup_ids / hash_delete against a Python dict, in a 16-entry table (collisions and
    wrap-around probing guaranteed; at most 10 keys exist, under the half-full limit + 2)."""
    keys = np.zeros(16, dtype=np.int64)
    vals = np.full(16, -1, dtype=np.int64)
    ref: dict[int, int] = {}
    free: list[int] = []
    next_slot = 0
    for insert, k in ops:
        if insert:
            slots, is_new, n_free = OK_.lookup_ids(
                np.array([k], dtype=np.int64), keys, vals, np.int64(next_slot),
                np.asarray(free, dtype=np.int64), np.int64(len(free)))
            if k in ref:
                assert not is_new[0] and slots[0] == ref[k]
            else:
                want = free.pop() if free else next_slot
                next_slot += want == next_slot
                assert is_new[0] and slots[0] == want and n_free == len(free)
                ref[k] = want
        else:
            found = OK_.hash_delete(np.array([k], dtype=np.int64), keys, vals)
            assert found == (k in ref)
            if k in ref:
                free.append(ref.pop(k))
        assert sorted(zip(keys[vals >= 0].tolist(), vals[vals >= 0].tolist())) == sorted(
            ref.items())


# ---- erase --------------------------------------------------------------------------------------
@SETTINGS
@given(df=frames(), spec=SPECS, splits=st.integers(1, 4),
       erased=st.sets(st.integers(0, 11), max_size=6))
def test_erase_leaves_no_trace(df, spec, splits, erased):
    half = len(df) // 2
    before, after = df.iloc[:half], df.iloc[half:]
    prof = OnlineProfiles(spec)
    feed(prof, before, splits)
    known = set(prof._user_slot)
    freed = {prof._user_slot[u] for u in erased & known}
    for u in sorted(erased):
        assert prof.erase(u) == (u in known)
        assert u not in set(prof.users.tolist()) and prof.vector(u) is None
    assert_no_stale_state(prof)
    feed(prof, after, splits)
    # returning and new users take the freed slots before the table grows
    n_new = len(set(after.user_id) - (known - erased))
    assert len(prof._user_ids) == len(known) + max(0, n_new - len(freed))
    keep = before[~before.user_id.isin(erased)]
    rest = pd.concat([keep, after], ignore_index=True)
    as_of = T0 + 60 * DAY
    if len(rest):
        batch = build_features(make_log(rest), spec, as_of=as_of)
        assert_bitwise_equal(prof.features(as_of=as_of), batch)
    else:
        assert prof.features(as_of=as_of).n_users == 0
    assert_no_stale_state(prof)


def test_erased_slot_is_reused_and_vector_sees_only_the_new_user():
    spec = FeatureSpec(windows=("1d",))
    prof = OnlineProfiles(spec)
    prof.update(pd.DataFrame({"user_id": ["a", "b"], "ts": [T0, T0 + 1], "event": "page_view",
                              "category": ["autos", "news"]}), ts_unit="ms")
    slot = prof._user_slot["a"]
    assert prof.erase("a") and not prof.erase("a")
    prof.update(pd.DataFrame({"user_id": ["c"], "ts": [T0 + 2], "event": "page_view",
                              "category": ["travel"]}), ts_unit="ms")
    assert prof._user_slot["c"] == slot
    assert prof.vector("a") is None
    idx, _ = prof.vector("c")
    names = [prof.feature_names[i] for i in idx]
    assert any("travel" in n for n in names) and not any("autos" in n for n in names)


# ---- expire / retention -------------------------------------------------------------------------
@SETTINGS
@given(df=frames(), spec=SPECS, splits=st.integers(1, 4),
       older_than=st.sampled_from([1, 60_000, "1h", "1d", pd.Timedelta(days=3), "7d", "40d"]),
       as_of_extra=st.sampled_from([None, 0, DAY, 10 * DAY]))
def test_expire_equals_rebuild_from_retained_users(df, spec, splits, older_than, as_of_extra):
    prof = OnlineProfiles(spec)
    feed(prof, df, splits)
    latest = int(df.ts.max())
    now = latest if as_of_extra is None else latest + as_of_extra
    ms = older_than if isinstance(older_than, int) else int(
        pd.Timedelta(older_than.replace("d", "D") if isinstance(older_than, str) else older_than)
        / pd.Timedelta(milliseconds=1))
    last = df.groupby("user_id").ts.max()
    gone = set(last[last < now - ms].index)
    n = prof.expire(older_than, as_of=None if as_of_extra is None else now)
    assert n == len(gone)
    assert set(prof.users.tolist()) == set(last.index) - gone
    assert prof.expire(older_than, as_of=None if as_of_extra is None else now) == 0
    kept = df[~df.user_id.isin(gone)]
    if len(kept):
        batch = build_features(make_log(kept), spec, as_of=now)
        assert_bitwise_equal(prof.features(as_of=now), batch)
    assert_no_stale_state(prof)


@SETTINGS
@given(df=frames(), splits=st.integers(1, 5), retention=st.sampled_from(["1h", "1d", "5d"]))
def test_retention_is_expire_after_every_update(df, splits, retention):
    spec = FeatureSpec(exclude_flagged=False)
    auto = OnlineProfiles(spec, retention=retention)
    manual = OnlineProfiles(spec)
    for part in np.array_split(np.arange(len(df)), splits):
        if len(part):
            log = make_log(df.iloc[part])
            r = auto.update_log(log)
            manual.update_log(log)
            assert r.n_expired == manual.expire(retention)
    assert list(auto.users) == list(manual.users)
    a, m = auto.features(), manual.features()
    assert a.feature_names == m.feature_names
    assert (a.X != m.X).nnz == 0 and np.array_equal(a.X.data, m.X.data)
    cutoff = int(df.ts.max()) - int(pd.Timedelta(retention.replace("d", "D")).value // 10**6)
    for u in auto.users:
        assert auto.last_event_time(u).value // 10**6 >= cutoff


# ---- privacy ------------------------------------------------------------------------------------
@SETTINGS
@given(df=frames(), spec=SPECS, splits=st.integers(1, 4),
       opt_outs=st.sets(st.integers(0, 11), max_size=5), via_log=st.booleans())
def test_opted_out_users_and_blocked_categories_never_enter(df, spec, splits, opt_outs,
                                                             via_log):
    policy = PrivacyPolicy(sensitive_categories={"gambling"}, opt_outs=opt_outs)
    prof = OnlineProfiles(spec, privacy=policy)
    results = feed(prof, df, splits, via_log=via_log)
    out = df.user_id.isin(opt_outs)
    blocked = ~out & (df.category == "gambling")
    assert sum(r.n_skipped_opt_out for r in results) == int(out.sum())
    assert sum(r.n_skipped_sensitive for r in results) == int(blocked.sum())
    for r in results:
        assert r.n_in == (r.n_applied + r.n_excluded + r.n_quarantined + r.n_skipped)
    fm = prof.features(as_of=T0 + 60 * DAY)
    assert not any("gambling" in n for n in fm.feature_names)
    assert not set(fm.users.tolist()) & opt_outs
    assert not set(prof.users.tolist()) & opt_outs  # no slot, not even an empty profile
    kept = df[~out & ~blocked]
    if len(kept):
        batch = build_features(make_log(kept), spec, as_of=T0 + 60 * DAY)
        assert fm.feature_names == batch.feature_names
        assert_bitwise_equal(fm, batch)
    else:
        assert fm.n_users == 0


def test_allowed_sensitive_category_enters_only_with_the_users_opt_in():
    policy = PrivacyPolicy(sensitive_categories={"gambling"}, allowed_sensitive={"gambling"},
                           sensitive_opt_ins={1: ["gambling"]})
    prof = OnlineProfiles(FeatureSpec(windows=("1d",)), privacy=policy)
    df = pd.DataFrame({"user_id": [1, 2, 2], "ts": [T0, T0, T0 + 1], "event": "page_view",
                       "category": ["gambling", "gambling", "autos"]})
    r = prof.update(df, ts_unit="ms")
    assert (r.n_applied, r.n_skipped_sensitive) == (2, 1)
    fm = prof.features()
    assert fm.row(1)["count:page_view:gambling:1d"] == 1.0
    assert fm.row(2).get("count:page_view:gambling:1d", 0.0) == 0.0


def test_user_who_opts_out_later_is_skipped_and_erase_removes_the_profile():
    policy = PrivacyPolicy(sensitive_categories={"gambling"})
    prof = OnlineProfiles(FeatureSpec(windows=("1d",)), privacy=policy)
    ev = pd.DataFrame({"user_id": [1, 2], "ts": [T0, T0], "event": "page_view",
                       "category": "autos"})
    prof.update(ev, ts_unit="ms")
    before = prof.vector(1)
    policy.opt_outs.add(1)
    r = prof.update(ev.assign(ts=T0 + 1000), ts_unit="ms")
    assert (r.n_applied, r.n_skipped_opt_out) == (1, 1)
    after = prof.vector(1, as_of_ms=T0)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert prof.erase(1)
    assert 1 not in set(prof.users.tolist()) and prof.vector(1) is None
    assert prof.update(ev.assign(ts=T0 + 2000), ts_unit="ms").n_skipped_opt_out == 1
    assert 1 not in set(prof.users.tolist())


def test_no_policy_costs_no_screen():
    prof = OnlineProfiles(FeatureSpec())
    r = prof.update(pd.DataFrame({"user_id": [1], "ts": [T0], "event": "page_view",
                                  "category": ["gambling"]}), ts_unit="ms")
    assert (r.n_applied, r.n_skipped) == (1, 0)
    assert prof._screen(make_log(pd.DataFrame({"user_id": [1], "ts": [T0],
                                               "event": "page_view"}))).rows is None


# ---- bad input ----------------------------------------------------------------------------------
DUR = "a positive duration (integer ms, '90d', Timedelta)"


@pytest.mark.parametrize("call, message", [
    (lambda p: p.expire(-1), f"older_than must be {DUR}, got -1"),
    (lambda p: p.expire(0), f"older_than must be {DUR}, got 0"),
    (lambda p: p.expire(1.5), f"older_than must be {DUR}, got 1.5"),
    (lambda p: p.expire(None), f"older_than must be {DUR}, got None"),
    (lambda p: p.expire(True), f"older_than must be {DUR}, got True"),
    (lambda p: p.expire("soon"), "older_than must be a positive duration (a string like "
                                 "'30min', a Timedelta, a timedelta or seconds), got 'soon'"),
    (lambda p: p.expire("1d", as_of="never"), "as_of must be a time"),
    (lambda p: OnlineProfiles(retention="-3d"), "retention must be a positive duration"),
    (lambda p: OnlineProfiles(retention=[1]), f"retention must be {DUR}, got [1]"),
    (lambda p: OnlineProfiles(privacy="strict"),
     "privacy must be a PrivacyPolicy or None, got str"),
])
def test_bad_input_is_refused_with_a_clear_message(call, message):
    prof = OnlineProfiles(FeatureSpec())
    with pytest.raises(ConfigError) as err:
        call(prof)
    assert str(err.value).startswith(message)


def test_expire_on_empty_profiles_removes_nothing():
    assert OnlineProfiles(FeatureSpec()).expire("1d") == 0


@pytest.mark.parametrize("as_of_ms", [2**63, 10**19, -(2**63) - 1, float("nan"), float("inf"),
                                      "soon", None, T0 - DAY, T0 + DAY])
def test_vector_never_raises_on_request_times(as_of_ms):
    prof = OnlineProfiles(FeatureSpec(windows=("1d",)))
    prof.update(pd.DataFrame({"user_id": [1], "ts": [T0], "event": "page_view",
                              "category": ["autos"]}), ts_unit="ms")
    got = prof.vector(1, as_of_ms)
    if isinstance(as_of_ms, (float, str)):
        assert got is None
        return
    if as_of_ms is not None and as_of_ms >= 2**63:  # read at the int64 maximum
        top = prof.vector(1, 2**63 - 1)
        assert np.array_equal(got[0], top[0]) and np.array_equal(got[1], top[1])
        names = [prof.feature_names[i] for i in got[0]]
        assert "count:page_view:autos:1d" not in names and "recency:page_view:autos" in names
        return
    # at or before the latest event: read at it
    at = T0 if as_of_ms is None or as_of_ms < T0 else as_of_ms
    want = prof.features(as_of=at).X
    assert np.array_equal(got[0], want.indices) and np.array_equal(got[1], want.data)
    assert prof.vector([1], as_of_ms) is None  # an unhashable id is unknown, not an error


def test_users_with_only_denied_events_get_no_profile():
    spec = FeatureSpec(windows=("1d",), deny_categories=("news",))
    prof = OnlineProfiles(spec)
    r = prof.update(pd.DataFrame({"user_id": [1, 2, 2], "ts": [T0, T0, T0 + 1],
                                  "event": "page_view", "category": ["news", "news", "autos"]}),
                    ts_unit="ms")
    assert (r.n_applied, r.n_excluded) == (1, 2)
    assert prof.users.tolist() == [2] and prof.n_users == 1
    assert not any("news" in n for n in prof.feature_names)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=frames(), spec=SPECS, users=st.integers(0, 50), events=st.integers(0, 500),
       split=st.floats(0, 1))
def test_reserve_changes_capacity_not_results(df, spec, users, events, split):
    # reserve before anything, and again between two batches (live state must survive it)
    cut = int(split * len(df))
    plain = OnlineProfiles(spec)
    plain.update(df, ts_unit="ms")
    res = OnlineProfiles(spec).reserve(users=users, events=events)
    res.update(df.iloc[:cut], ts_unit="ms")
    res.reserve(users=2 * users + 8, events=2 * events + 64)
    res.update(df.iloc[cut:], ts_unit="ms")
    a, b = plain.features(), res.features()
    assert a.feature_names == b.feature_names
    np.testing.assert_array_equal(a.users, b.users)
    for part in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(a.X, part), getattr(b.X, part))


@pytest.mark.parametrize("kwargs", [{"users": -1}, {"events": 1.5}, {"users": True}])
def test_reserve_rejects_bad_sizes(kwargs):
    with pytest.raises(ConfigError, match=f"{next(iter(kwargs))} must be an integer"):
        OnlineProfiles(FeatureSpec()).reserve(**kwargs)

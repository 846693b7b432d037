"""RedisProfileStore: the binary value format, equality with the in-process store, layouts,
erasure, timeouts, and an outage the Engine survives and recovers from by itself."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, SchemaError, StoreError
from bta.features import FeatureSpec, OnlineProfiles
from bta.segment.book import Segment, SegmentBook
from bta.serve.campaigns import Campaign, Creative
from bta.serve.engine import Engine, decisions_frame
from bta.serve.experiment import Experiment
from bta.serve.redis_store import (
    FORMAT_VERSION, RedisProfileStore, decode_profile, encode_profile, layout_fingerprint,
)
from bta.serve.store import MemoryProfileStore
from bta.sim import simulate_clickstream

# generous for loaded CI machines; the timeout test sets its own
TIMEOUT_MS = 2000.0


# ---- the value format (no server needed) --------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(
    st.just(n),
    st.lists(st.integers(0, n - 1), unique=True, max_size=n),
    st.lists(st.booleans(), max_size=40))),
    st.sampled_from(["float64", "float32"]), st.integers(0, 2**32 - 1),
    st.integers(-2**62, 2**62), st.data())
def test_encode_decode_round_trip(shape, dtype, fp, as_of, data):
    n_feat, cols, flags = shape
    values = data.draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
                                min_size=len(cols), max_size=len(cols)))
    idx = np.array(cols, dtype=np.int64)
    val = np.array(values, dtype=np.float64)
    seg = np.array(flags, dtype=bool)
    raw = encode_profile(idx, val, seg, fp, as_of, dtype)
    assert len(raw) == 28 + 4 * len(cols) + (8 if dtype == "float64" else 4) * len(cols) \
        + (len(flags) + 7) // 8
    prof, t = decode_profile(raw, n_feat, len(flags), fp)
    assert t == as_of
    assert prof.indices.dtype == np.int32 and prof.values.dtype == np.float64
    np.testing.assert_array_equal(prof.indices, idx)
    # float32 inputs survive float32 storage exactly; NaN stays NaN
    np.testing.assert_array_equal(prof.values, val)
    np.testing.assert_array_equal(prof.segments, seg)
    # another segment book: no memberships rather than wrong ones
    other, _ = decode_profile(raw, n_feat, len(flags), (fp + 1) % 2**32)
    assert not other.segments.any() and other.segments.shape == seg.shape
    np.testing.assert_array_equal(other.values, val)


def test_float32_values_are_rounded_to_float32():
    val = np.array([0.1, 1 / 3, 123456.789])
    raw = encode_profile(np.arange(3), val, np.zeros(0, bool), dtype="float32")
    got, _ = decode_profile(raw, 3, 0, 0)
    np.testing.assert_array_equal(got.values, val.astype(np.float32).astype(np.float64))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b[:10], "profile value is not a bta profile: 10 bytes, shorter than the 28-byte "
                       "header"),
    (lambda b: b"xxxx" + b[4:], "profile value is not a bta profile: magic b'xxxx', expected "
                                "b'btap'"),
    (lambda b: b[:4] + bytes([FORMAT_VERSION + 1]) + b[5:],
     f"profile value has format version {FORMAT_VERSION + 1} and dtype code 0; this bta reads "
     f"version {FORMAT_VERSION} with dtype codes 0-1"),
    (lambda b: b[:-1], "profile value has 52 bytes, expected 53 for 2 entries and 3 segments"),
    (lambda b: b + b"\x00", "profile value has 54 bytes, expected 53 for 2 entries and 3 segments"),
])
def test_garbage_values_raise_store_error(mutate, message):
    raw = encode_profile(np.array([0, 4]), np.array([1.0, 2.0]), np.array([True, False, True]))
    assert len(raw) == 53
    with pytest.raises(StoreError, match=re.escape(message)):
        decode_profile(mutate(raw), 5, 3, 0)
    with pytest.raises(StoreError, match=re.escape("feature columns outside [0, 4)")):
        decode_profile(raw, 4, 3, 0)


def test_layout_fingerprint():
    names = ("a:1", "b:2", "c:3")
    nan = np.array([False, True, False])
    fp = layout_fingerprint(names, nan)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fp == layout_fingerprint(list(names), nan.tolist())
    assert fp != layout_fingerprint(("a:1", "c:3", "b:2"), nan)      # order
    assert fp != layout_fingerprint(names, ~nan)                      # nan_absent flags
    assert fp != layout_fingerprint(("a:1", "b:2"), nan[:2])          # width
    assert layout_fingerprint(("ab", "c"), [0, 0]) != layout_fingerprint(("a", "bc"), [0, 0])


@pytest.mark.parametrize(("kw", "message"), [
    (dict(feature_names=()), "feature_names must be a non-empty sequence of str, got ()"),
    (dict(nan_absent=[True]), "nan_absent must have one flag per feature (2), got shape (1,)"),
    (dict(prefix="a:b"), "prefix must be a non-empty string without ':', got 'a:b'"),
    (dict(timeout_ms=0), "timeout_ms must be a finite number of milliseconds > 0, got 0"),
    (dict(connect_timeout_ms=float("nan")),
     "connect_timeout_ms must be a finite number of milliseconds > 0, got nan"),
    (dict(dtype="float16"), "dtype must be 'float64' or 'float32', got 'float16'"),
    (dict(url="localhost"), "url must be a Redis URL such as 'redis://127.0.0.1:6379/0', got "
                            "'localhost'"),
    (dict(segment_names=["a", "a"]), "segment_names must be unique strings, got ('a', 'a')"),
    (dict(ttl=-1), "ttl must be a positive duration"),
])
def test_constructor_errors(kw, message):
    args = dict(feature_names=("x:1", "y:2"), nan_absent=[False, True])
    args.update(kw)
    with pytest.raises(ConfigError, match=re.escape(message)):
        RedisProfileStore(**args)


# ---- a small world from the simulator -----------------------------------------------------------
@pytest.fixture(scope="module")
def world():
    cs = simulate_clickstream(n_users=150, days=3, n_categories=4, seed=2, events_per_user_day=4)
    spec = FeatureSpec(windows=("1d", "3d"), events=("page_view", "ad_click", "ad_impression"))
    prof = OnlineProfiles(spec, categories=cs.categories, grow_categories=False)
    prof.update(cs.events[["user_id", "ts", "event", "category", "value"]])
    users = np.sort(cs.users["user_id"].to_numpy())
    rng = np.random.default_rng(0)
    segs = [Segment(f"s{j}", "custom", {}, rng.random(len(users)) < 0.3) for j in range(11)]
    # a user of the book without any event: published with segments and no features
    book = SegmentBook.from_segments(np.append(users, 10_000), [
        Segment(s.name, s.kind, s.definition, np.append(s.members, True)) for s in segs],
        min_audience=5)
    as_of = int(cs.end.value // 1_000_000)
    return dict(profiles=prof, book=book, as_of=as_of, users=users, categories=cs.categories,
                memory=MemoryProfileStore(prof, book))


def redis_store(url, prefix, world, **kw):
    kw.setdefault("timeout_ms", TIMEOUT_MS)
    return RedisProfileStore.from_profiles(world["profiles"], world["book"], url=url,
                                           prefix=prefix, **kw)


def assert_same_profile(got, want):
    assert (got is None) == (want is None)
    if want is None:
        return
    order = np.argsort(want.indices)
    np.testing.assert_array_equal(np.sort(got.indices), want.indices[order])
    np.testing.assert_array_equal(got.values[np.argsort(got.indices)], want.values[order])
    np.testing.assert_array_equal(got.segments, want.segments)


@pytest.mark.redis
def test_publish_matches_memory_store(redis_server, redis_prefix, world):
    store = redis_store(redis_server, redis_prefix, world)
    n = store.publish_from(world["profiles"], as_of=world["as_of"], chunk_size=37)
    assert n == len(world["users"]) + 1
    mem, t = world["memory"], world["as_of"]
    ids = list(world["users"]) + [10_000, 99_999, "1"]
    for u in ids:
        assert_same_profile(store.get(u, t), mem.get(u, t))
    # the snapshot does not age: a later read returns the publish-time values
    assert_same_profile(store.get(ids[0], t + 86_400_000), mem.get(ids[0], t))
    assert store.published_at(ids[0]) == t
    many = store.get_many(ids)
    assert len(many) == len(ids)
    for u, p in zip(ids, many):
        assert_same_profile(p, mem.get(u, t))
    assert store.get_many([]) == []
    assert store.get(1.5) is None and store.get_many([None, 1.5]) == [None, None]


@pytest.mark.redis
def test_put_and_ids_of_both_types(redis_server, redis_prefix, world):
    store = redis_store(redis_server, redis_prefix, world)
    store.put(7, [0, 3], [1.5, np.nan], ["s1", "s4"], as_of_ms=123)
    p = store.get(7)
    np.testing.assert_array_equal(p.indices, [0, 3])
    np.testing.assert_array_equal(p.values, [1.5, np.nan])
    assert [store.segment_names[j] for j in np.flatnonzero(p.segments)] == ["s1", "s4"]
    assert store.published_at(7) == 123
    # ids compare in canonical form (bta.ids): "7" and np.int64(7) are user 7, "07" is not
    assert_same_profile(store.get("7"), p)
    assert_same_profile(store.get(np.int64(7)), p)
    assert store.get("07") is None
    store.put("7", np.array([2], dtype=np.int32), [2.0])  # the same user: replaced
    q = store.get(7)
    assert q.indices.tolist() == [2] and not q.segments.any()
    store.put("07", [1], [1.0])
    assert store.get(7).indices.tolist() == [2] and store.get("07").indices.tolist() == [1]
    flags = np.zeros(len(store.segment_names), dtype=bool)
    flags[2] = True
    store.put(8, [], [], flags)
    assert store.get(8).segments.tolist() == flags.tolist()


@pytest.mark.parametrize(("args", "message"), [
    (([0, 1], [1.0]), "profile of user 1: indices and values must be 1-d arrays of the same "
                      "length, got shapes (2,) and (1,)"),
    (([0.5], [1.0]), "profile of user 1: indices must be integer feature columns, got dtype "
                     "float64"),
    (([0, 10**6], [1.0, 2.0]), "profile of user 1: indices must be feature columns in [0, "),
    (([1, 1], [1.0, 2.0]), "profile of user 1: indices must be unique feature columns"),
    (([0], [1.0], ["nope"]), "profile of user 1: segment 'nope' is not one of the store's "
                             "segment names"),
    (([0], [1.0], np.zeros(3, dtype=bool)), "profile of user 1: segments must be bool flags of "
                                            "shape (11,) over the store's segment names, got "
                                            "shape (3,)"),
])
def test_put_errors(world, args, message):
    # validation happens before any connection is used: the URL points nowhere
    store = RedisProfileStore.from_profiles(world["profiles"], world["book"],
                                            url="redis://127.0.0.1:1/0")
    with pytest.raises(SchemaError, match=re.escape(message)):
        store.put(1, *args)


def test_publish_errors(world):
    store = RedisProfileStore.from_profiles(world["profiles"], world["book"],
                                            url="redis://127.0.0.1:1/0")
    other = OnlineProfiles(FeatureSpec(windows=("1d",)), categories=["a"], grow_categories=False)
    with pytest.raises(ConfigError, match=re.escape(
            "profiles have another feature layout (23 features) than the store (56 features)")):
        store.publish_from(other)
    book2 = SegmentBook.from_segments([1, 2], [Segment("z", "custom", {}, np.array([1, 0], bool))])
    with pytest.raises(ConfigError, match=re.escape("call store.set_book(book) first")):
        store.publish_from(world["profiles"], book2)
    with pytest.raises(ConfigError, match=re.escape("profiles must have a fixed layout")):
        RedisProfileStore.from_profiles(OnlineProfiles(FeatureSpec()))
    with pytest.raises(SchemaError, match=re.escape(
            "X must have shape (n_users, n_features) = (2, 56), got (2, 3)")):
        store.put_many([1, 2], sp.csr_matrix((2, 3)))


@pytest.mark.redis
def test_layout_change_never_reads_stale_vectors(redis_server, redis_prefix, world):
    store = redis_store(redis_server, redis_prefix, world)
    store.publish_from(world["profiles"], as_of=world["as_of"])
    u = int(world["users"][0])
    assert store.get(u) is not None
    # one category fewer: another layout, another key space
    cats = world["categories"][:-1]
    smaller = OnlineProfiles(world["profiles"].spec, categories=cats, grow_categories=False)
    other = RedisProfileStore.from_profiles(smaller, world["book"], url=redis_server,
                                            prefix=redis_prefix, timeout_ms=TIMEOUT_MS)
    assert other.layout != store.layout
    assert other.get(u) is None
    # erasure reaches every layout ever written under the prefix
    other.put(u, [0], [1.0])
    assert other.erase(u) is True
    assert other.get(u) is None and store.get(u) is None
    assert other.book.segments_of(u) == []
    # no key is left, but this store's own copy of the book still listed the user
    assert store.erase(u) is True and store.erase(u) is False


@pytest.mark.redis
def test_new_segment_book_reads_no_stale_memberships(redis_server, redis_prefix, world):
    store = redis_store(redis_server, redis_prefix, world)
    u = int(world["users"][0])
    store.put(u, [1], [2.0], ["s0", "s3"])
    reordered = SegmentBook.from_segments(
        world["book"].users, [Segment(n, "custom", {}, world["book"].column(n))
                              for n in reversed(world["book"].names)], min_audience=5)
    store.set_book(reordered)
    p = store.get(u)
    assert p.indices.tolist() == [1] and not p.segments.any()
    store.put(u, [1], [2.0], ["s0", "s3"])
    names = [store.segment_names[j] for j in np.flatnonzero(store.get(u).segments)]
    assert sorted(names) == ["s0", "s3"]


@pytest.mark.redis
def test_ttl_and_float32(redis_server, redis_prefix, world):
    import redis

    store = redis_store(redis_server, redis_prefix, world, ttl="1h", dtype="float32")
    store.put(5, [0, 1], [0.1, 2.0])
    client = redis.Redis.from_url(redis_server)
    try:
        assert 0 < client.pttl(store.key(5)) <= 3_600_000
    finally:
        client.close()
    assert store.get(5).values.tolist() == [float(np.float32(0.1)), 2.0]


def _engine(world, store) -> Engine:
    campaigns = [
        Campaign("a", (Creative("a-1"),), targeting='segment("s1") and ctr:smoothed > 0.005',
                 bid=3.0),
        Campaign("b", (Creative("b-1"), Creative("b-2")),
                 targeting=f"count:page_view:{world['categories'][0]}:3d >= 2",
                 bid=2.0),
        Campaign("ron", (Creative("r-1"),), bid=1.0),
    ]
    house = Campaign("house", (Creative("h-1"),), bid=0.1)
    exp = Experiment({"control": 0.2, "targeted": 0.8})
    return Engine(campaigns, fallback=house, store=store, experiment=exp,
                  time_budget_ms=TIMEOUT_MS).warmup()


class CountingGets:
    """Counts a store's single-user reads (a bulk replay should make none)."""

    def __init__(self, monkeypatch, store):
        self.n = 0
        real = store.get

        def get(*args, **kwargs):
            self.n += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(store, "get", get)


@pytest.mark.redis
def test_engine_on_redis_equals_engine_in_memory(redis_server, redis_prefix, world):
    store = redis_store(redis_server, redis_prefix, world)
    t = world["as_of"]
    store.publish_from(world["profiles"], as_of=t)
    on_redis, in_memory = _engine(world, store), _engine(world, world["memory"])
    requests = [{"user_id": u, "ts": t, "request_id": f"r{i}"}
                for i, u in enumerate(list(world["users"][:80]) + [10_000, 424242])]
    got = on_redis.decide_batch(requests)
    want = in_memory.decide_batch(requests)
    pd.testing.assert_frame_equal(got, want)
    assert (got["reason"] == "targeted").sum() > 20


@pytest.mark.redis
@pytest.mark.parametrize("chunks", [(1000, 10), (7, 2)])  # one round trip; several
def test_get_block_equals_get_per_user(redis_server, redis_prefix, world, monkeypatch, chunks):
    import bta.serve.redis_store as rs

    monkeypatch.setattr(rs, "_MGET_CHUNK", chunks[0])
    monkeypatch.setattr(rs, "_MGETS_PER_TRIP", chunks[1])
    store = redis_store(redis_server, redis_prefix, world)
    store.publish_from(world["profiles"], as_of=world["as_of"])
    users = [int(u) for u in world["users"]]
    bad = users[7]
    store._writer().set(store.key(bad), b"not a profile")
    # a lone surrogate (valid JSON, no valid key) is absent, as no publisher can write it
    ids = users[:60] + users[:5] + [bad, 10_000, 424242, "nobody", -3, 1.5, True, "\ud800",
                                    np.int32(users[1]), "é"]
    rng = np.random.default_rng(1)
    rng.shuffle(ids)
    block = store.get_block(ids, np.full(len(ids), world["as_of"]))  # times are ignored
    assert block.segment_names == store.segment_names
    assert block.failed is not None and block.failed.sum() == 2  # users[:60] holds bad too
    for i, u in enumerate(ids):
        if block.failed[i]:
            assert u == bad and not block.present[i]
            with pytest.raises(StoreError, match="not a bta profile"):
                store.get(u)
            continue
        want = store.get(u)
        assert bool(block.present[i]) == (want is not None), u
        lo, hi = block.indptr[i], block.indptr[i + 1]
        if want is None:
            assert lo == hi and not block.segments[i].any()
            continue
        np.testing.assert_array_equal(block.indices[lo:hi], want.indices)
        np.testing.assert_array_equal(block.values[lo:hi], want.values)
        np.testing.assert_array_equal(block.segments[i], want.segments)
    empty = store.get_block([])
    assert empty.present.shape == (0,) and empty.indptr.tolist() == [0]


@pytest.mark.redis
def test_replay_on_redis_reads_in_bulk_and_fails_one_bad_value(redis_server, redis_prefix,
                                                              world, monkeypatch):
    store = redis_store(redis_server, redis_prefix, world)
    t = world["as_of"]
    store.publish_from(world["profiles"], as_of=t)
    users = [int(u) for u in world["users"]]
    store._writer().set(store.key(users[3]), b"btap garbage")
    rng = np.random.default_rng(5)
    # many distinct times: a read per distinct time would be a round trip per request
    requests = [{"user_id": users[int(rng.integers(0, 40))] if i % 9 else 424242,
                 "ts": t + int(rng.integers(0, 3_600_000)), "request_id": f"r{i}"}
                for i in range(400)]
    loop_engine = _engine(world, store)
    want = decisions_frame([loop_engine.decide(r).as_dict() for r in requests])
    gets = CountingGets(monkeypatch, store)
    got = _engine(world, store).decide_batch(requests, chunk_size=150)
    assert gets.n == 0  # read with get_block only
    pd.testing.assert_frame_equal(got, want)
    bad = (got["user_id"] == str(users[3])) & (got["arm"] == "targeted")
    assert bad.any() and (got.loc[bad, "reason"] == "fallback:store_error").all()
    assert (got.loc[~bad, "reason"] != "fallback:store_error").all()
    assert (got["reason"] == "targeted").sum() > 100


def test_replay_during_an_outage_falls_back_for_every_read(world, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = redis_store(f"redis://127.0.0.1:{port}/0", "down", world,
                        connect_timeout_ms=200.0)
    with pytest.raises(StoreError, match="Redis MGET of 3 keys failed"):
        store.get_block([1, 2, 3])
    gets = CountingGets(monkeypatch, store)
    requests = [{"user_id": int(u), "ts": world["as_of"], "request_id": f"r{i}"}
                for i, u in enumerate(world["users"][:50])]
    got = _engine(world, store).decide_batch(requests)
    arm = got["arm"] == "targeted"  # the control arm reads no profile
    # the failed bulk read is read again user by user (a shard may be down, not all of them)
    assert gets.n == got.loc[arm, "user_id"].nunique()
    assert arm.sum() > 20 and (got.loc[arm, "reason"] == "fallback:store_error").all()
    assert (got.loc[~arm, "reason"] == "control").all() and not got["targeted"].any()


@pytest.mark.redis
def test_outage_falls_back_and_recovers_by_itself(redis_process, world):
    store = RedisProfileStore.from_profiles(world["profiles"], world["book"],
                                            url=redis_process.url, timeout_ms=TIMEOUT_MS,
                                            connect_timeout_ms=TIMEOUT_MS)
    t = world["as_of"]
    store.publish_from(world["profiles"], as_of=t)
    everyone = Campaign("everyone", (Creative("e-1"),), targeting="ctr:smoothed >= 0", bid=5.0)
    ron = Campaign("ron", (Creative("r-1"),), bid=1.0)
    eng = Engine([everyone, ron], fallback=Campaign("house", (Creative("h-1"),)), store=store,
                 experiment=Experiment({"control": 0.0, "targeted": 1.0}),
                 time_budget_ms=TIMEOUT_MS).warmup()
    users = [int(u) for u in world["users"][:5]]
    assert [eng.decide({"user_id": u, "ts": t}).reason for u in users] == ["targeted"] * 5

    redis_process.stop()
    down = [eng.decide({"user_id": u, "ts": t}) for u in users]
    assert [(d.reason, d.targeted, d.campaign_id) for d in down] == \
        [("fallback:store_error", False, "ron")] * 5
    with pytest.raises(StoreError, match="Redis read of .* failed: ConnectionError"):
        store.get(users[0])

    redis_process.start()  # same port, empty: the publisher writes again
    store.publish_from(world["profiles"], as_of=t)
    assert [eng.decide({"user_id": u, "ts": t}).reason for u in users] == ["targeted"] * 5


@pytest.mark.redis
def test_hung_server_times_out(redis_process, world):
    store = RedisProfileStore.from_profiles(world["profiles"], world["book"],
                                            url=redis_process.url, timeout_ms=50.0)
    u = int(world["users"][0])
    store.put(u, [0], [1.0])
    assert store.get(u) is not None
    os.kill(redis_process.proc.pid, signal.SIGSTOP)  # the server hangs: accepts, never answers
    try:
        t0 = time.perf_counter()
        with pytest.raises(StoreError, match="Redis read of .* failed: TimeoutError"):
            store.get(u)
        elapsed = time.perf_counter() - t0
        # one socket timeout and no retries (a retry would double the wait)
        assert 0.04 < elapsed < 1.0
        with pytest.raises(StoreError, match="Redis MGET of 1 keys failed: TimeoutError"):
            store.get_many([u])
    finally:
        os.kill(redis_process.proc.pid, signal.SIGCONT)
    assert store.get(u) is not None  # answers again on the same store


@pytest.mark.redis
def test_publish_selected_users_and_erased_ones(redis_server, redis_prefix, world):
    spec = world["profiles"].spec
    cats = world["categories"]
    prof = OnlineProfiles(spec, categories=cats, grow_categories=False)
    t = world["as_of"]
    prof.update(pd.DataFrame({"user_id": [1, 1, 2], "ts": [t - 5000, t - 4000, t - 3000],
                              "event": ["page_view"] * 3, "category": [cats[0]] * 3}),
                ts_unit="ms")
    store = RedisProfileStore.from_profiles(prof, url=redis_server, prefix=redis_prefix,
                                            timeout_ms=TIMEOUT_MS)
    assert store.publish_from(prof, as_of=t, users=[1, 2]) == 2
    mem = MemoryProfileStore(prof)
    assert_same_profile(store.get(1), mem.get(1, t))
    prof.erase(1)
    # publishing an erased (or unknown) user removes the stale snapshot: None, as in memory
    assert store.publish_from(prof, as_of=t, users=[1, 2, 3]) == 1
    assert store.get(1) is None and mem.get(1, t) is None and store.get(3) is None
    assert_same_profile(store.get(2), mem.get(2, t))


@pytest.mark.redis
def test_erase_leaves_no_key_and_no_membership(redis_server, redis_prefix, world):
    import redis

    store = redis_store(redis_server, redis_prefix, world)
    assert store.publish_from(world["profiles"], world["book"], as_of=world["as_of"]) > 0
    cats = world["categories"][:-1]
    smaller = OnlineProfiles(world["profiles"].spec, categories=cats, grow_categories=False)
    other = RedisProfileStore.from_profiles(smaller, world["book"], url=redis_server,
                                            prefix=redis_prefix, timeout_ms=TIMEOUT_MS)
    u, v = int(world["users"][0]), int(world["users"][1])
    other.put(u, [0], [1.0], ["s0"])
    other.put(v, [0], [1.0], ["s0"])
    client = redis.Redis.from_url(redis_server)
    try:
        def keys_of(user):
            suffix = f":id:{user}".encode()
            return [k for k in client.scan_iter(match=f"{redis_prefix}:*", count=1000)
                    if k.endswith(suffix)]

        assert len(keys_of(u)) == 2  # one per layout
        assert store.erase(u) is True
        assert keys_of(u) == []
        assert store.get(u) is None and other.get(u) is None
        assert store.book.segments_of(u) == [] and u not in store.book.users.tolist()
        # nobody else was touched
        assert len(keys_of(v)) == 2 and v in store.book.users.tolist()
        assert store.erase(u) is False
        # the only keys left under the prefix are other users' profiles and the layout set
        left = {k.decode() for k in client.scan_iter(match=f"{redis_prefix}:*", count=1000)}
        assert f"{redis_prefix}:layouts" in left
        assert all(k == f"{redis_prefix}:layouts" or ":id:" in k for k in left)
    finally:
        client.close()


def test_erase_unreachable_redis_raises(world):
    store = RedisProfileStore.from_profiles(world["profiles"], url="redis://127.0.0.1:1/0",
                                            timeout_ms=50, connect_timeout_ms=50,
                                            write_timeout_ms=50)
    with pytest.raises(StoreError, match=re.escape("Redis erase of user 5 failed")):
        store.erase(5)

"""Bulk profile reads (``OnlineProfiles.vectors``, ``MemoryProfileStore.get_block`` /
``get_many``) equal the per-user reads exactly, and the replay reads through them; erasure from
decision logs (``DecisionLog.erase``, ``erase_parquet``, through ``bta.privacy.erase``); the
cached registry snapshots behind ``PrivacyPolicy.screen_events``."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, SchemaError, StoreError
from bta.privacy import OptOutRegistry, PrivacyPolicy, erase
from bta.schema import DECISION_SCHEMA
from bta.serve.campaigns import Campaign, Creative, FrequencyCap
from bta.serve.engine import Decision, Engine, decisions_frame
from bta.serve.experiment import Experiment
from bta.serve.log import DecisionLog, erase_parquet
from bta.serve.store import MemoryProfileStore
from naive import naive_screen
from test_engine import DAY, HOUSE, N_USERS, T0, H, _book, make_world


@pytest.fixture(scope="module")
def world():
    return make_world()


def _same_profile(a, b) -> None:
    assert (a is None) == (b is None)
    if a is None:
        return
    assert a.indices.dtype == b.indices.dtype == np.int32
    assert a.values.dtype == b.values.dtype == np.float64
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.values, b.values)  # bit for bit: NaN where NaN
    np.testing.assert_array_equal(a.segments, b.segments)
    assert a.segment_names == b.segment_names


# ---- bulk reads equal the per-user reads --------------------------------------------------------
# ids: stored users, unknown ints, text, an unhashable list (unknown, never an error without a
# book); times: ints around the events, None (the user's latest event), floats (truncated as
# int() does), NaN / text (no profile), beyond the int64 range (clipped)
IDS = st.one_of(st.integers(0, N_USERS + 5), st.sampled_from(["3", "u1", -1, 10**30]))
TIMES = st.one_of(
    st.integers(T0 - 7 * DAY, T0 + 9 * DAY), st.none(),
    st.floats(T0 - 7 * DAY, T0 + 2 * DAY), st.sampled_from(
        [float("nan"), float("inf"), -float("inf"), "soon", 2**70, -(2**70), True,
         str(T0 + H)]))


@settings(max_examples=80, deadline=None)
@given(ids=st.lists(IDS, max_size=40), times=st.lists(TIMES, min_size=40, max_size=40),
       one=TIMES, kind=st.sampled_from(["per-user", "one", "int64", "float64", "uint64"]))
def test_vectors_equal_vector_per_user(world, ids, times, one, kind):
    prof = world["profiles"]
    n = len(ids)
    if kind == "one":
        arg, per = one, [one] * n
    elif kind == "per-user":
        arg = per = times[:n]
    else:  # typed arrays: the vectorized conversions
        base = np.array([T0 - 3 * DAY + (i * 7919 * H) % (9 * DAY) for i in range(n)],
                        dtype=np.int64)
        arr = {"int64": base, "float64": base.astype(np.float64) + 0.75,
               "uint64": base.astype(np.uint64)}[kind]
        if kind == "uint64" and n:
            arr[0] = np.uint64(2**64 - 1)  # above the int64 range: clipped, not wrapped
        arg, per = arr, arr.tolist()
    indptr, indices, values, found = prof.vectors(ids, arg)
    assert indptr.shape == (n + 1,) and found.shape == (n,) and indptr[0] == 0
    for i, (u, t) in enumerate(zip(ids, per)):
        want = prof.vector(u, t)
        assert found[i] == (want is not None), (u, t)
        got_i, got_v = indices[indptr[i]:indptr[i + 1]], values[indptr[i]:indptr[i + 1]]
        if want is None:
            assert got_i.size == 0
        else:
            np.testing.assert_array_equal(got_i, want[0])
            np.testing.assert_array_equal(got_v, want[1])


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(0, N_USERS + 5), max_size=60),
       offsets=st.lists(st.integers(-7 * DAY, 3 * DAY), min_size=60, max_size=60),
       with_book=st.booleans())
def test_get_many_equals_get(world, ids, offsets, with_book):
    store = MemoryProfileStore(world["profiles"], world["book"] if with_book else None)
    ts = [T0 + o for o in offsets[:len(ids)]]
    for t_arg, per in ((ts, ts), (np.array(ts, dtype=np.int64), ts), (T0, [T0] * len(ids)),
                       (None, [None] * len(ids))):
        got = store.get_many(ids, t_arg)
        assert len(got) == len(ids)
        for u, t, p in zip(ids, per, got):
            _same_profile(p, store.get(u, t))
        block = store.get_block(ids, t_arg)
        assert block.segments.shape == (len(ids), len(store.segment_names))
        assert block.present.tolist() == [p is not None for p in got]


def test_get_block_in_the_book_without_events_and_after_a_book_swap(world):
    users = np.arange(N_USERS + 3)  # three book members without any event
    store = MemoryProfileStore(world["profiles"], _book(users))
    ids = [0, N_USERS + 1, N_USERS + 9, 5, N_USERS + 2]
    got = store.get_many(ids, T0)
    for u, p in zip(ids, got):
        _same_profile(p, store.get(u, T0))
    assert got[1] is not None and got[1].indices.size == 0 and got[2] is None
    store.set_book(_book(users, seed=9, names=("autos_fans", "travelers")))
    for u, p in zip(ids, store.get_many(ids, T0)):
        _same_profile(p, store.get(u, T0))
        assert p is None or p.segment_names == ("autos_fans", "travelers")


def test_bulk_reads_after_erase_and_on_unhashable_ids(world):
    from test_engine import _events
    from bta.features import FeatureSpec, OnlineProfiles

    prof = OnlineProfiles(FeatureSpec(windows=("1d", "7d"), events=("page_view", "ad_click")),
                          categories=("autos", "travel", "sports"), grow_categories=False)
    prof.update(_events(), ts_unit="ms")
    store = MemoryProfileStore(prof)
    assert store.erase(4)
    ids = [3, 4, [1, 2], 5]
    got = store.get_many(ids, T0)
    assert got[1] is None and got[2] is None  # erased; unhashable: unknown, not an error
    for u, p in zip(ids, got):
        _same_profile(p, store.get(u, T0))
    # with a book an unhashable id is no id (bta.ids): unknown, in bulk as one by one
    booked = MemoryProfileStore(prof, _book(np.arange(N_USERS)))
    assert booked.get([1, 2], T0) is None
    assert booked.get_many(ids, T0)[2] is None


@pytest.mark.parametrize("as_of, msg", [
    (np.zeros(2, dtype=np.int64), "as_of_ms must be one time or one per user (3), got an array "
                                  "of shape (2,)"),
    ([T0] * 4, "as_of_ms must be one time or one per user (3), got an array of shape (4,)"),
    (np.zeros((3, 1), dtype=np.int64), "as_of_ms must be one time or one per user (3), got an "
                                       "array of shape (3, 1)"),
])
def test_bulk_read_bad_as_of(world, as_of, msg):
    with pytest.raises(ConfigError) as exc:
        world["store"].get_many([1, 2, 3], as_of)
    assert str(exc.value) == msg
    with pytest.raises(ConfigError):
        world["profiles"].vectors([1, 2, 3], as_of)


def test_empty_bulk_reads(world):
    indptr, indices, values, found = world["profiles"].vectors([], np.zeros(0, dtype=np.int64))
    assert indptr.tolist() == [0] and indices.size == values.size == found.size == 0
    assert world["store"].get_many([], T0) == []


# ---- the replay reads in bulk -------------------------------------------------------------------
class _CountingStore(MemoryProfileStore):
    """Counts bulk and single reads; ``broken`` users make a bulk read fail and their own
    single read fail."""

    def __init__(self, profiles, book, broken=()):
        super().__init__(profiles, book)
        self.broken = set(broken)
        self.blocks: list[int] = []
        self.singles = 0

    def get(self, user_id, as_of_ms=None):
        self.singles += 1
        if user_id in self.broken:
            raise StoreError("shard down")
        return super().get(user_id, as_of_ms)

    def get_block(self, user_ids, as_of_ms=None):
        ids = list(user_ids)
        self.blocks.append(len(ids))
        if self.broken & set(ids):
            raise StoreError("shard down")
        return super().get_block(ids, as_of_ms)


CAPPED = [Campaign("autos", (Creative("a-1"), Creative("a-2")),
                   targeting="count:page_view:autos:7d >= 1", bid=3.0,
                   caps=(FrequencyCap(2, "1h", "campaign"),)),
          Campaign("travel", (Creative("t-1"),), targeting='segment("travelers")', bid=2.0),
          Campaign("ron", (Creative("r-1"),), bid=1.0, caps=(FrequencyCap(3, "2h"),))]


def _replay_requests(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.integers(0, 2 * DAY, n))  # (nearly) every request its own time
    users = rng.integers(0, N_USERS + 4, n)
    return [{"user_id": int(u), "ts": int(t), "request_id": f"s{seed}-{i}"}
            for i, (u, t) in enumerate(zip(users, ts))]


def test_replay_reads_each_chunk_in_one_bulk_call(world):
    store = _CountingStore(world["profiles"], world["book"])
    reqs = _replay_requests(900, seed=1)

    def make():
        return Engine(CAPPED, fallback=HOUSE, store=store, experiment=Experiment(
            {"control": 0.2, "t": 0.8}, salt="st"), time_budget_ms=60_000.0)

    loop_engine = make()
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in reqs])
    store.blocks.clear()
    store.singles = 0
    batch = make().decide_batch(reqs, chunk_size=300)
    pd.testing.assert_frame_equal(batch, loop)
    assert len(store.blocks) == 3 and store.singles == 0  # one read per chunk, not per time
    assert sum(store.blocks) > 600  # the targeted requests' distinct (user, time) pairs
    assert {"targeted", "control", "fallback:no_profile"} <= set(loop["reason"])


def test_failed_bulk_read_falls_back_user_by_user(world):
    """A bulk read that raises is read again user by user: only the broken users' requests
    fall back, exactly as a loop of decide."""
    store = _CountingStore(world["profiles"], world["book"], broken={3, 17})
    reqs = _replay_requests(400, seed=2)

    def make():
        return Engine(CAPPED, fallback=HOUSE, store=store, experiment=Experiment(
            {"control": 0.0, "t": 1.0}), time_budget_ms=60_000.0)

    loop_engine = make()
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in reqs])
    batch = make().decide_batch(reqs, chunk_size=150)
    pd.testing.assert_frame_equal(batch, loop)
    failed = set(batch["user_id"][batch["reason"] == "fallback:store_error"])
    assert failed == {"3", "17"}


# ---- erasure from decision logs -----------------------------------------------------------------
def _decision(i: int, user) -> Decision:
    return Decision(ts=T0 + i, request_id=f"r{i}", user_id=user, arm="t", creative_id="c",
                    campaign_id="k", targeted=True, propensity=1.0, n_eligible=1, score=1.0,
                    price=0.5, policy_version="v", reason="targeted")


USERS = [7, "7", "u1", None, 8, 7, "x", 8, None, 7]


def _want(rows, key: str) -> list[str]:
    return [r for r, u in rows if u != key]


def test_memory_log_erase(world):
    log = DecisionLog()
    for i, u in enumerate(USERS):
        log.append(_decision(i, u))
    assert log.erase(7) is True  # 7 and "7" are one user once written as text
    got = log.to_frame()
    assert got["request_id"].tolist() == [f"r{i}" for i, u in enumerate(USERS)
                                          if str(u) != "7" or u is None]
    assert len(log) == len(USERS) - 4
    assert log.erase(7) is False and log.erase("nobody") is False
    assert log.erase(None) is False  # rows without an id are no user's
    assert got["user_id"].isna().sum() == 2


def test_directory_log_erase_rewrites_its_files(tmp_path):
    log = DecisionLog(tmp_path, flush_rows=3)
    for i, u in enumerate(USERS):
        log.append(_decision(i, u))
    before = {p: p.stat().st_mtime_ns for p in log.files}
    untouched = [p for p in log.files if "8" not in
                 pq.read_table(p)["user_id"].to_pylist()]
    assert len(log.files) == 3 and len(log) == len(USERS)
    assert log.erase(8) is True
    assert len(log) == len(USERS) - 2
    rows = log.to_frame()
    assert "8" not in set(rows["user_id"].dropna())
    assert rows["request_id"].tolist() == [f"r{i}" for i, u in enumerate(USERS) if u != 8]
    for p in log.files:  # every file still a decision log; only files that held the user moved
        assert pq.read_table(p).schema.equals(DECISION_SCHEMA, check_metadata=False)
        if p in untouched:
            assert p.stat().st_mtime_ns == before[p]
    assert not list(tmp_path.glob("*.tmp"))
    # the buffer too
    log.append(_decision(20, "u1"))
    assert log.erase("u1") is True
    assert "u1" not in set(log.to_frame()["user_id"].dropna())


def test_privacy_erase_reaches_the_decision_log(world, tmp_path):
    log = DecisionLog(tmp_path, flush_rows=4)
    eng = Engine(CAPPED, fallback=HOUSE, store=world["store"],
                 experiment=Experiment({"control": 0.0, "t": 1.0}), time_budget_ms=60_000.0)
    for i, u in enumerate([1, 2, 1, 3, 1, 2, 4]):
        log.append(eng.decide({"user_id": u, "ts": T0 + i * H, "request_id": f"p{i}"}))
    receipt = erase(1, eng, log)
    assert receipt.held == (None, True)
    assert "1" not in set(log.to_frame()["user_id"])
    assert len(log) == 4 and 1 not in eng._history
    assert erase(1, log).held == (False,)


def test_erase_parquet(tmp_path):
    path = tmp_path / "old.parquet"
    table = pa.table({"user_id": pa.array(["a", None, "b", "a"]), "x": [1, 2, 3, 4]},
                     metadata={"origin": "test"})
    pq.write_table(table, path)
    assert erase_parquet(path, "zz") == 0
    assert erase_parquet(path, None) == 0
    assert erase_parquet(path, "a") == 2
    got = pq.read_table(path)
    assert got.column("x").to_pylist() == [2, 3] and got["user_id"].to_pylist() == [None, "b"]
    assert got.schema.metadata[b"origin"] == b"test"
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"uid": pa.array([5, 6, 5], type=pa.int64())}), ints)
    assert erase_parquet(ints, 5, column="uid") == 2
    assert pq.read_table(ints)["uid"].to_pylist() == [6]
    assert pq.read_table(ints).schema.field("uid").type == pa.int64()
    with pytest.raises(SchemaError) as exc:
        erase_parquet(ints, 5)
    assert str(exc.value) == ("ints.parquet: no column 'user_id' to erase a user from; got "
                              "columns ['uid']")


def test_log_erase_while_appending(tmp_path):
    """Appenders go on while a user is erased: no row is lost or duplicated."""
    log = DecisionLog(tmp_path, flush_rows=50)
    n, done = 2000, threading.Event()

    def append():
        for i in range(n):
            log.append(_decision(i, "other" if i % 2 else "gone"))
        done.set()

    t = threading.Thread(target=append)
    t.start()
    while not done.is_set():
        log.erase("gone")
    t.join()
    log.erase("gone")
    rows = log.to_frame()
    assert rows["request_id"].tolist() == [f"r{i}" for i in range(1, n, 2)]
    assert len(log) == n // 2


# ---- registry snapshots of screen_events ---------------------------------------------------------
OPS = st.lists(st.tuples(st.sampled_from(["opt_out", "unopt", "minor", "grow_up", "screen"]),
                         st.integers(0, 12)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, users=st.lists(st.one_of(st.integers(0, 14), st.just("3")), min_size=1,
                               max_size=40))
def test_screen_events_follows_every_registry_change(ops, users):
    """The cached registry snapshots are invalidated by every add and remove: screening after
    any sequence of changes equals the screening a plain set gives."""
    policy = PrivacyPolicy(opt_outs=OptOutRegistry([1]))
    cats = ["sports" if i % 3 else "health" for i in range(len(users))]
    opt, minors = {1}, set()
    for op, u in ops + [("screen", 0)]:
        if op == "opt_out":
            policy.opt_outs.add(u)
            opt.add(u)
        elif op == "unopt":
            policy.opt_outs.remove(u)
            opt.discard(u)
        elif op == "minor":
            policy.note_age(u, 12)
            minors.add(u)
        elif op == "grow_up":
            policy.minors.remove(u)
            minors.discard(u)
        else:
            got = policy.screen_events(users, cats).tolist()
            assert got == naive_screen(policy, users, cats, opt, minors).tolist()


def test_registry_snapshot_index_is_cached_per_change():
    reg = OptOutRegistry(["a", 2])
    first = reg.snapshot_index()
    assert reg.snapshot_index() is first  # no change: no rebuild
    v = reg.version
    reg.add("c")
    # ids are held in canonical form (bta.ids): 2 is "2"
    assert reg.version > v and set(reg.snapshot_index()) == {"a", "2", "c"}
    reg.remove("zz")  # a removal of an absent user still counts as a change (cheap, safe)
    copy = pickle.loads(pickle.dumps(reg))
    assert set(copy.snapshot_index()) == {"a", "2", "c"} and "c" in copy and 2 in copy
    copy.add("d")
    assert "d" not in reg and set(copy.snapshot_index()) == {"a", "2", "c", "d"}


def test_failed_write_keeps_rows_without_deadlock(tmp_path, monkeypatch):
    """A write that fails while another thread fills the buffer and waits to write: the
    failing writer keeps its rows without waiting for the buffer lock (which the other thread
    holds), both finish, and the next flush writes every row in order."""
    import bta.serve.log as log_mod

    real = log_mod.pq.write_table
    started, fail = threading.Event(), [True]

    def flaky(table, where, **kw):
        if fail[0]:
            fail[0] = False
            started.set()
            threading.Event().wait(0.3)  # the other appender reaches the full buffer meanwhile
            raise OSError("disk full")
        return real(table, where, **kw)

    monkeypatch.setattr(log_mod.pq, "write_table", flaky)
    log = DecisionLog(tmp_path, flush_rows=3)
    errors = []

    def first():
        try:
            for i in range(3):
                log.append(_decision(i, "a"))
        except OSError as exc:
            errors.append(exc)

    def second():
        started.wait(5)
        for i in range(3, 6):
            log.append(_decision(i, "b"))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "the writers deadlocked"
    assert [str(e) for e in errors] == ["disk full"]
    log.flush()
    assert len(log) == 6
    assert log.to_frame()["request_id"].tolist() == [f"r{i}" for i in range(6)]
    assert log.erase("a") and log.to_frame()["request_id"].tolist() == ["r3", "r4", "r5"]

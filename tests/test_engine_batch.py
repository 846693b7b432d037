"""Engine.decide_batch: the vectorized replay equals a loop of Engine.decide (arms, creatives,
propensities, reasons, spend, caps) with caps, budgets, pacing, exploration policies,
experiments with a holdout, context targeting, request profiles, opt-outs, bad requests and
store outages; the vectorized hash equals hash_unit; chunking changes nothing."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, StoreError
from bta.privacy import OptOutRegistry, PrivacyPolicy
from bta.schema import DECISION_SCHEMA
from bta.serve import _kernels as K
from bta.serve.campaigns import Campaign, Creative, FrequencyCap
from bta.serve.engine import Engine, Request, decisions_frame
from bta.serve.experiment import Experiment, hash_unit
from bta.serve.policy import EpsilonGreedy, Greedy, Softmax, Uniform
from bta.serve.store import Profile, profiles_block
from test_engine import DAY, HOUSE, N_USERS, SEQ_CAMPAIGNS, T0, H, make_world


@pytest.fixture(scope="module")
def world():
    return make_world()


# ---- the vectorized hash -------------------------------------------------------------------------


def _hash_kernel(prefix: str, keys: list[str]) -> np.ndarray:
    arr = pa.array(keys, type=pa.string())
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=len(keys) + 1).astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else \
        np.zeros(0, dtype=np.uint8)
    out = np.empty(len(keys))
    K.hash_units(np.frombuffer(prefix.encode(), dtype=np.uint8), data, offsets, out)
    return out


def test_hash_kernel_equals_hash_unit_across_block_boundaries():
    # BLAKE2b works in 128-byte blocks: lengths around each boundary, with and without prefix
    rng = random.Random(3)
    alphabet = "az09:-_\u00e9\u4e2d\U0001f600"
    keys = ["".join(rng.choice(alphabet) for _ in range(n))
            for n in (0, 1, 7, 8, 63, 64, 120, 127, 128, 129, 255, 256, 257, 300, 1000)]
    for prefix in ("", "bta:", "v1:choose:", "x" * 127, "y" * 128):
        got = _hash_kernel(prefix, keys)
        want = np.array([hash_unit(prefix + k) for k in keys])
        assert np.array_equal(got, want), prefix


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=300), min_size=1,
                max_size=20), st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_hash_kernel_property(keys, prefix):
    assert np.array_equal(_hash_kernel(prefix, keys),
                          np.array([hash_unit(prefix + k) for k in keys]))


def test_softmax_kernel_matches_the_formula():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 40):
        s = rng.normal(0, 3, n)
        p = Softmax(temperature=0.7).probabilities(s)
        e = np.exp((s - s.max()) / 0.7)
        np.testing.assert_allclose(p, e / e.sum(), rtol=1e-12)
        for u in (0.0, 0.3, 0.999999):
            a, pa_ = Softmax(temperature=0.7).choose(s, u)
            want = min(int(np.searchsorted(np.cumsum(e / e.sum()), u, side="right")), n - 1)
            assert a == want and pa_ == p[a]


# ---- a world that exercises every path ---------------------------------------------------------
CONTEXTUAL = [
    # contextual only: behaviourally untargeted, so it also serves the control arm
    Campaign("ctx-sports", (Creative("cs-1"), Creative("cs-2")), bid=2.2,
             context={"page_category": ["sports", "IAB17"]},
             caps=(FrequencyCap(2, "3h", "campaign"),)),
    # behavioural and contextual
    Campaign("ctx-autos", (Creative("ca-1"),), targeting='segment("autos_fans")', bid=3.5,
             context={"page_category": "autos", "slot": ["top", "side"]}),
    Campaign("ctx-slot", (Creative("cl-1"),), bid=0.9, pricing="cpc", prior_ctr=0.003,
             context={"slot": "side"}, budget=0.01),
]
PAGES = [None, "sports", "autos", "travel", "IAB17"]
SLOTS = [None, "top", "side", "footer"]


def _campaigns():
    return [c for c, _ in SEQ_CAMPAIGNS] + CONTEXTUAL


def _requests(store, n: int, seed: int) -> list[dict]:
    """Requests in time order: repeat users (caps), unknown users, context, consent signals,
    request profiles (valid and malformed) and malformed requests."""
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.integers(0, 48 * H, size=n))
    users = np.where(rng.random(n) < 0.3, rng.integers(0, 4, size=n),
                     rng.integers(0, N_USERS + 3, size=n))
    names = store.feature_names
    out = []
    for i, (u, t) in enumerate(zip(users.tolist(), ts.tolist())):
        r = {"user_id": u, "ts": t, "request_id": f"b{seed}-{i}"}
        page, slot = PAGES[int(rng.integers(len(PAGES)))], SLOTS[int(rng.integers(len(SLOTS)))]
        if page is not None:
            r["page_category"] = page
        if slot is not None:
            r["slot"] = slot
        x = rng.random()
        if x < 0.05:
            r["consent"] = {"opt_out": True}
        elif x < 0.08:
            r["consent"] = {"age": 13}
        elif x < 0.10:
            r["consent"] = {"gdpr": 1}  # no TCF string: no consent
        elif x < 0.12:
            r["profile"] = {names[3]: 2.0, names[0]: 1.0, "segments": ["travelers"]}
        elif x < 0.13:
            r["profile"] = {"no such feature": 1.0}
        elif x < 0.14:
            r["profile"] = Profile(np.array([1, 2], dtype=np.int32), np.array([3.0, 0.5]),
                                   np.array([True, False, False]), ("travelers", "autos_fans",
                                                                    "tiny"))
        elif x < 0.15:
            r = {"user_id": None, "ts": t, "request_id": f"b{seed}-{i}"}  # malformed
        elif x < 0.16:
            r["request_id"] = 17  # malformed
        elif x < 0.17:
            r["user_id"] = f"s{u}"  # a string id: no profile in the store
        out.append(r)
    return out


def _engine(world, policy, **kw):
    opt = OptOutRegistry([5, 7])
    kw.setdefault("experiment", Experiment({"control": 0.2, "a": 0.4, "b": 0.4}, salt="batch",
                                           holdout=0.1))
    return Engine(_campaigns(), fallback=HOUSE, store=world["store"], policy=policy,
                  untargeted_policy=kw.pop("untargeted", Uniform()),
                  privacy=PrivacyPolicy(opt_outs=opt), time_budget_ms=60_000.0, version="bv",
                  **kw).warmup()


def _assert_same(batch: pd.DataFrame, loop: pd.DataFrame) -> None:
    bad = loop["reason"] == "fallback:bad_request"
    # a malformed request is decided at the current time, and one without a usable id gets a
    # random one (so a random rotation): those cannot be replayed; everything else must be equal
    random_id = ~loop["request_id"].str.fullmatch(r"b\d+-\d+")
    assert (random_id <= bad).all()
    fixed = ["user_id", "arm", "targeted", "policy_version", "reason"]
    pd.testing.assert_frame_equal(batch[fixed], loop[fixed])
    pd.testing.assert_frame_equal(batch[~random_id], loop[~random_id].drop(columns="ts").join(
        batch["ts"][~random_id])[list(loop.columns)])
    pd.testing.assert_series_equal(batch["ts"][~bad], loop["ts"][~bad])


def _after(engine, n: int = 200) -> pd.DataFrame:
    """Decisions on fresh requests (same users, later): they read the caps and spend state."""
    reqs = [{"user_id": u % 5, "ts": T0 + 47 * H + i * 1000, "request_id": f"after-{i}"}
            for i, u in enumerate(range(n))]
    return decisions_frame([engine.decide(r).as_dict() for r in reqs])


POLICIES = [Greedy(), EpsilonGreedy(epsilon=0.3), Softmax(temperature=0.4), Uniform()]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_batch_equals_loop_of_decide(world, policy):
    reqs = _requests(world["store"], 2500, seed=int(policy.kind) + 1)
    loop_engine = _engine(world, policy)
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in reqs])
    batch_engine = _engine(world, policy)
    batch = batch_engine.decide_batch(reqs, chunk_size=700)
    _assert_same(batch, loop)
    assert batch_engine.spend() == loop_engine.spend()
    assert batch_engine._history == loop_engine._history
    pd.testing.assert_frame_equal(_after(batch_engine), _after(loop_engine))
    # the stream went through every path
    want = {"targeted", "control", "holdout", "fallback:no_profile", "fallback:opt_out",
            "fallback:under_age", "fallback:no_consent", "fallback:bad_request",
            "fallback:bad_profile", "fallback:no_eligible"}
    assert want <= set(loop["reason"]), want - set(loop["reason"])
    served = set(loop["campaign_id"])
    assert {"ctx-sports", "ctx-autos", "ctx-slot", "autos", "sports", "budget"} <= served
    assert set(loop["arm"]) == {"control", "a", "b", "holdout"}


def test_batch_from_a_dataframe_with_context_columns(world):
    """The simulator's form: columns user_id, ts, request_id, page_category, slot."""
    rng = np.random.default_rng(4)
    n = 3000
    df = pd.DataFrame({
        "user_id": rng.integers(0, N_USERS + 5, n),
        "ts": pd.to_datetime(np.sort(T0 + rng.integers(0, 40 * H, n)), unit="ms", utc=True),
        "request_id": [f"df-{i}" for i in range(n)],
        "page_category": pd.Series(np.array(PAGES, dtype=object)[rng.integers(0, 5, n)]),
        "slot": pd.Series(np.array(SLOTS, dtype=object)[rng.integers(0, 4, n)]),
    })
    recs = df.to_dict("records")
    loop_engine = _engine(world, EpsilonGreedy(epsilon=0.2))
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in recs])
    for chunk in (n, 512):
        eng = _engine(world, EpsilonGreedy(epsilon=0.2))
        pd.testing.assert_frame_equal(eng.decide_batch(df, chunk_size=chunk), loop)
        assert eng.spend() == loop_engine.spend()
    # list-valued categories (OpenRTB lists several) and integer ids as text
    df2 = df.assign(page_category=[["travel", p] if p else None for p in df["page_category"]],
                    user_id=df["user_id"].astype(str))
    loop_engine = _engine(world, Greedy())
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in df2.to_dict("records")])
    pd.testing.assert_frame_equal(_engine(world, Greedy()).decide_batch(df2), loop)
    # the decision-log schema: the frame converts to the Arrow schema the evaluator reads
    table = pa.Table.from_pandas(loop, preserve_index=False)
    assert table.cast(DECISION_SCHEMA).schema == DECISION_SCHEMA


def test_batch_chunks_and_inputs_agree(world):
    reqs = _requests(world["store"], 600, seed=9)
    good = [r for r in reqs if isinstance(r.get("request_id"), str) and r["user_id"] is not None]
    whole = _engine(world, Softmax()).decide_batch(good)
    for chunk in (1, 7, 64):
        pd.testing.assert_frame_equal(_engine(world, Softmax()).decide_batch(good,
                                                                           chunk_size=chunk),
                                      whole)
    as_requests = [Request(user_id=r["user_id"], ts=r["ts"], request_id=r["request_id"],
                           consent=r.get("consent"), profile=r.get("profile"),
                           context={k: r[k] for k in ("page_category", "slot") if k in r})
                   for r in good]
    pd.testing.assert_frame_equal(_engine(world, Softmax()).decide_batch(iter(as_requests)),
                                  whole)


def test_batch_empty_and_bad_arguments(world):
    eng = _engine(world, Greedy())
    for empty in ([], pd.DataFrame({"user_id": [], "ts": [], "request_id": []})):
        out = eng.decide_batch(empty)
        assert len(out) == 0 and list(out.columns) == DECISION_SCHEMA.names
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ConfigError, match=r"chunk_size must be an integer >= 1, got"):
            eng.decide_batch([], chunk_size=bad)


class _OutageStore:
    """A store whose bulk read fails for some users (an outage of some shards)."""

    def __init__(self, base, broken):
        self.base, self.broken = base, broken
        self.feature_names = base.feature_names
        self.nan_absent = base.nan_absent
        self.segment_names = base.segment_names
        self.book = base.book

    def get(self, user_id, as_of_ms):
        if user_id in self.broken:
            raise StoreError("shard down")
        return self.base.get(user_id, as_of_ms)

    def get_many(self, user_ids, as_of_ms):
        return [self.get(u, as_of_ms) for u in user_ids]

    def get_block(self, user_ids, as_of_ms=None):
        """One bulk read per distinct time: a read holding a broken user fails for all its
        users (marked ``failed``)."""
        times = np.broadcast_to(np.asarray(as_of_ms), (len(user_ids),))
        got, failed = [], np.zeros(len(user_ids), dtype=bool)
        for t in np.unique(times).tolist():
            js = np.flatnonzero(times == t)
            if len(js) > 1 and any(user_ids[j] in self.broken for j in js.tolist()):
                failed[js] = True
        for j, u in enumerate(user_ids):
            got.append(None if failed[j] or u in self.broken else self.get(u, int(times[j])))
            failed[j] |= u in self.broken
        return profiles_block(got, self.segment_names, failed)

    def warmup(self):
        return self

    def erase(self, user_id):
        return False


def test_batch_store_outage_falls_back(world):
    store = _OutageStore(world["store"], broken={1, 2, 3})
    all_targeted = Experiment({"control": 0.0, "targeted": 1.0})
    reqs = [{"user_id": u, "ts": T0 + u, "request_id": f"o-{u}"} for u in range(20)]

    def make():
        return Engine([c for c, _ in SEQ_CAMPAIGNS], fallback=HOUSE, store=store,
                      experiment=all_targeted, time_budget_ms=60_000.0)

    loop_engine = make()
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in reqs])
    batch = make().decide_batch(reqs)
    pd.testing.assert_frame_equal(batch, loop)
    assert set(batch["reason"][batch["user_id"].isin(["1", "2", "3"])]) == {"fallback:store_error"}
    # one bulk read holding a broken user fails the requests that read it, and only those
    both = [{"user_id": u, "ts": T0, "request_id": f"p-{u}"} for u in (1, 10, 11)]
    got = make().decide_batch(both)
    assert list(got["reason"]) == ["fallback:store_error"] * 3


def test_custom_policy_runs_through_decide(world):
    class FirstPolicy:
        def choose(self, scores, u):
            return 0, 1.0

    eng = _engine(world, FirstPolicy())
    reqs = _requests(world["store"], 200, seed=2)
    loop_engine = _engine(world, FirstPolicy())
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in reqs])
    _assert_same(eng.decide_batch(reqs), loop)


def test_batch_with_win_notices_holds_decisions(world):
    reqs = [r for r in _requests(world["store"], 400, seed=5)
            if isinstance(r.get("request_id"), str) and r["user_id"] is not None]
    loop_engine = _engine(world, Greedy(), count_on="win")
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in reqs])
    eng = _engine(world, Greedy(), count_on="win")
    pd.testing.assert_frame_equal(eng.decide_batch(reqs), loop)
    assert eng.spend() == {} and eng.n_pending == loop_engine.n_pending > 0
    # the wins counted alike in both
    served = loop[loop["campaign_id"] != HOUSE.id]
    for rid in served["request_id"][::3]:
        assert eng.notify_win(rid) and loop_engine.notify_win(rid)
    assert eng.spend() == loop_engine.spend() != {}
    want = served["price"][::3].groupby(served["campaign_id"][::3]).sum() / 1000.0
    assert eng.spend() == pytest.approx(want.to_dict(), rel=1e-12)


def test_the_batch_never_falls_back_to_the_request_path(world, monkeypatch):
    """The replay decides in its own kernel, not by calling ``decide`` per row (its speed is
    measured in ``benchmarks/test_bench_serve.py``, not here)."""
    rng = np.random.default_rng(0)
    n = 2_000
    df = pd.DataFrame({"user_id": rng.integers(0, N_USERS, n), "ts": T0 + DAY,
                       "request_id": [f"t-{i}" for i in range(n)]})
    eng = _engine(world, Greedy())

    def no_decide(*args, **kwargs):
        raise AssertionError("decide_batch called decide")

    monkeypatch.setattr(eng, "decide", no_decide)
    out = eng.decide_batch(df)
    assert len(out) == n and (out["reason"] == "targeted").any()


_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, N_USERS + 3), st.floats(),
                  st.text(max_size=4), st.lists(st.text(max_size=3), max_size=3),
                  st.dictionaries(st.text(max_size=6), st.integers(0, 30), max_size=3))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {"user_id": st.one_of(st.integers(0, N_USERS + 3), _JUNK),
     "ts": st.one_of(st.integers(T0, T0 + 48 * H), st.just(None), _JUNK)},
    optional={"page_category": _JUNK, "slot": st.sampled_from(SLOTS[1:]) | _JUNK,
              "consent": _JUNK | st.just({"opt_out": True}), "context": _JUNK,
              "profile": _JUNK}), max_size=25))
def test_batch_never_raises_and_equals_the_loop(world, rows):
    reqs = [dict(r, request_id=f"b0-{i}") for i, r in enumerate(rows)]
    loop_engine = _engine(world, Softmax())
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in reqs])
    got = _engine(world, Softmax()).decide_batch(reqs)
    assert (got["reason"] != "fallback:error").all()
    # a request without a time is decided now: its time cannot be replayed either
    now = np.array([r["ts"] is None for r in reqs], dtype=bool)
    keep = ~now
    _assert_same(got[keep].reset_index(drop=True), loop[keep].reset_index(drop=True))


def test_batch_and_decide_share_state_across_threads(world):
    """A replay running while requests are served: spend stays the sum of what was charged."""
    import threading

    eng = _engine(world, Greedy())
    reqs = [r for r in _requests(world["store"], 3000, seed=8)
            if isinstance(r.get("request_id"), str) and r["user_id"] is not None]
    out = {}

    def replay():
        out["batch"] = eng.decide_batch(reqs[:2000], chunk_size=100)

    t = threading.Thread(target=replay)
    t.start()
    single = [eng.decide(r) for r in reqs[2000:]]
    t.join()
    rows = pd.concat([out["batch"], decisions_frame([d.as_dict() for d in single])])
    paid = rows[rows["campaign_id"] != HOUSE.id]
    want = (paid["price"] / 1000.0).groupby(paid["campaign_id"]).sum().to_dict()
    assert eng.spend() == pytest.approx(want, rel=1e-9)


def test_batch_log_feeds_the_evaluator(world):
    """The replay's frame is the log bta.evaluate reads: same report as the loop's log."""
    from bta.evaluate import ab_report
    from bta.serve.log import join_outcomes

    reqs = [r for r in _requests(world["store"], 1500, seed=12)
            if isinstance(r.get("request_id"), str) and r["user_id"] is not None]
    batch = _engine(world, Greedy()).decide_batch(reqs)
    loop_engine = _engine(world, Greedy())
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in reqs])
    rng = np.random.default_rng(1)
    outcomes = pd.DataFrame({"request_id": batch["request_id"],
                             "clicks": (rng.random(len(batch)) < 0.05).astype(np.int32)})
    outcomes["conversions"] = (outcomes["clicks"] * (rng.random(len(batch)) < 0.3)).astype(
        np.int32)
    outcomes["revenue"] = outcomes["conversions"] * 20.0
    a = ab_report(join_outcomes(batch, outcomes), control="control")
    b = ab_report(join_outcomes(loop, outcomes), control="control")
    pd.testing.assert_frame_equal(a.arm_table(), b.arm_table())
    assert set(a.arm_table().index) >= {"control", "a", "b"}


def test_batch_after_a_swap_reads_the_history_of_the_old_campaigns(world):
    """Caps history written under an earlier configuration (other campaigns, a creative id that
    moved to another campaign) counts in a replay exactly as in decide."""
    caps = (FrequencyCap(1, "6h", "creative"), FrequencyCap(3, "1d", "campaign"))
    old = [Campaign("A", (Creative("x-1"), Creative("x-2")), bid=3.0, caps=caps),
           Campaign("gone", (Creative("g-1"),), bid=2.0, caps=caps),
           Campaign("ron", (Creative("ron-1"),), bid=1.0)]
    new = [Campaign("B", (Creative("x-1"), Creative("y-1")), bid=3.5, caps=caps),
           Campaign("A", (Creative("x-2"), Creative("x-3")), bid=2.5, caps=caps),
           Campaign("ron", (Creative("ron-1"),), bid=1.0)]
    rng = np.random.default_rng(3)
    reqs = [{"user_id": int(u), "ts": T0 + i * 60_000, "request_id": f"b7-{i}"}
            for i, u in enumerate(rng.integers(0, 6, 600))]

    def make():
        return Engine(old, fallback=HOUSE, store=world["store"],
                      experiment=Experiment({"control": 1.0}), untargeted_policy=Greedy(),
                      time_budget_ms=60_000.0)

    e_loop, e_batch = make(), make()
    for e in (e_loop, e_batch):
        for r in reqs[:300]:
            e.decide(r)
        e.swap(campaigns=new)
    loop = decisions_frame([e_loop.decide(r).as_dict() for r in reqs[300:]])
    pd.testing.assert_frame_equal(e_batch.decide_batch(reqs[300:], chunk_size=50), loop)
    assert e_batch._history == e_loop._history and e_batch.spend() == e_loop.spend()
    assert {"A", "B", "ron"} <= set(loop["campaign_id"])


@pytest.mark.parametrize("ts", [
    np.array(["2263-01-01", "2026-01-01T10:00:00.123456"], dtype="datetime64[us]"),
    np.array(["1600-01-01", "2026-01-01T10:00:00"], dtype="datetime64[s]"),
    np.array([2**62, T0], dtype=np.int64),
    np.array([2**63, T0], dtype=np.uint64),
], ids=["us", "s", "int64", "uint64"])
def test_frame_times_the_log_cannot_hold_are_bad_requests(world, ts):
    frame = pd.DataFrame({"request_id": ["b0-0", "b0-1"], "user_id": [1, 2], "ts": ts})
    loop = [_engine(world, Greedy()).decide(r) for r in frame.to_dict("records")]
    got = _engine(world, Greedy()).decide_batch(frame)
    assert list(got["reason"]) == [d.reason for d in loop]
    assert got["reason"].iloc[0] == "fallback:bad_request" != got["reason"].iloc[1]
    assert got["ts"].iloc[1] == pd.Timestamp(loop[1].ts, unit="ms", tz="UTC")


# ---- the caps history kept across chunks ---------------------------------------------------------
def _interleaved(reqs, chunk, engine, side):
    """The requests as a stream that acts on ``engine`` (``side(engine, k)``) before every
    ``chunk``-th request: the replay pulls a chunk only after deciding the one before, so the
    act lands between two chunks, where a loop of decide meets it at the same request."""
    for i, r in enumerate(reqs):
        if i and i % chunk == 0:
            side(engine, i // chunk)
        yield r


def _between_chunks(engine, k):
    """What another thread may do between two chunks: serve a capped user, erase a user."""
    u = k % 4
    engine.decide({"user_id": u, "ts": T0 + 20 * H + k, "request_id": f"side-{k}"})
    if k % 3 == 0:
        engine.erase((k + 1) % 4)


@pytest.mark.parametrize("side", [None, _between_chunks], ids=["alone", "interleaved"])
def test_history_kept_across_chunks_equals_the_loop(world, side, monkeypatch):
    reqs = [r for r in _requests(world["store"], 1500, seed=21) if "profile" not in r]
    chunk = 97
    act = side or (lambda e, k: None)
    loop_engine = _engine(world, Greedy())
    rows = []
    for i, r in enumerate(reqs):
        if i and i % chunk == 0:
            act(loop_engine, i // chunk)
        rows.append(loop_engine.decide(r).as_dict())
    loop = decisions_frame(rows)
    batch_engine = _engine(world, Greedy())
    moved = [0]

    def counted(e, k):
        v = e._history_version
        act(e, k)
        moved[0] += e._history_version != v

    from bta.serve import _replay

    resets = []
    reset = _replay._History._reset
    monkeypatch.setattr(_replay._History, "_reset", lambda self: (resets.append(1), reset(self)))
    batch = batch_engine.decide_batch(_interleaved(reqs, chunk, batch_engine, counted),
                                      chunk_size=chunk)
    # built once (plus the empty start), then again after each change made in between
    assert len(resets) == 2 + moved[0]
    assert (moved[0] > 3) == (side is not None)
    _assert_same(batch, loop)
    assert batch_engine._history == loop_engine._history
    assert batch_engine.spend() == loop_engine.spend()
    # the caps bound: some user was capped and the history holds entries of many chunks
    assert (loop["campaign_id"] == "autos").any() and len(loop_engine._history) >= 4


def test_history_rebuilt_when_it_outgrows_its_bounds(world, monkeypatch):
    from bta.serve import _replay

    reqs = [r for r in _requests(world["store"], 1200, seed=22) if "profile" not in r]
    loop_engine = _engine(world, Softmax(temperature=0.5))
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in reqs])
    monkeypatch.setattr(_replay, "_HISTORY_MAX_EVENTS", 64)  # a rebuild every chunk or two
    monkeypatch.setattr(_replay, "_HISTORY_MAX_USERS", 8)
    batch_engine = _engine(world, Softmax(temperature=0.5))
    _assert_same(batch_engine.decide_batch(reqs, chunk_size=40), loop)
    assert batch_engine._history == loop_engine._history
    assert batch_engine.spend() == loop_engine.spend()


def test_history_version_moves_with_every_change(world):
    capped = Campaign("capped", (Creative("k-1"),), bid=1.0, caps=(FrequencyCap(5, "1d"),))
    eng = Engine([capped], fallback=HOUSE, store=world["store"],
                 experiment=Experiment({"control": 1.0}), time_budget_ms=60_000.0)
    v0 = eng._history_version
    eng.decide({"user_id": 1, "ts": T0 + H, "request_id": "v-1"})
    # keyed by the canonical id: user 1 and "1" are one user
    assert list(eng._history) == ["1"] and 1 in eng._history and eng._history_version > v0
    v1 = eng._history_version
    eng.erase(1)
    assert eng._history == {} and eng._history_version > v1
    v2 = eng._history_version
    eng.decide_batch([{"user_id": 2, "ts": T0 + H, "request_id": "v-2"}])
    assert list(eng._history) == ["2"] and eng._history_version > v2

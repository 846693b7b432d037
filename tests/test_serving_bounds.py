"""No request may stall or bloat the serving path: every request field is bounded before it is
parsed (a table of each bound, at and over it, in decide and decide_batch; multi-megabyte
fields of every kind answered at once, in about the time of a normal decision and independent
of their size); the frequency-cap history is keyed by canonical user id and bounded by age and
size (resident memory after a million distinct users); the context cache is bounded by bytes;
a stored profile with NaN or infinite values is ``fallback:bad_profile`` in both paths.

The strict 1 ms bound over a normal decision is the benchmark's
(``benchmarks/test_bench_serve.py -k hostile``); here the bounds are loose enough for a
shared CI machine: 20 ms over a normal decision, and an 8 MB field no slower than a 1 MB one
beyond a margin."""

from __future__ import annotations

import functools
import gc
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.serve import _request as R
from bta.serve import _snapshot as snapshot_module
from bta.serve import delivery as delivery_module
from bta.serve.campaigns import CONTEXT_FIELDS, Campaign, Creative, FrequencyCap
from bta.serve.engine import Engine, Request, decisions_frame
from bta.serve.experiment import Experiment
from bta.serve.policy import Greedy
from bta.serve.store import Profile
from test_engine import ALL_TARGETED, HOUSE, SEQ_CAMPAIGNS, T0, H, engine_for, make_world
from test_engine_batch import _OutageStore, _assert_same

BAD, BAD_PROFILE = "fallback:bad_request", "fallback:bad_profile"
MB = 1 << 20
CTX = Campaign("ctx", (Creative("ctx-1"),), bid=9.0, context={"page_category": "sports"})


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def eng(world):
    """Targeted arm for everyone (a carried profile is read), caps and context campaigns."""
    return engine_for(world, [c for c, _ in SEQ_CAMPAIGNS] + [CTX], policy=Greedy(),
                      time_budget_ms=60_000.0)


def _base(**over) -> dict:
    r = {"user_id": 3, "ts": T0, "request_id": "r-1"}
    r.update(over)
    return r


# ---- each bound, at and over it ------------------------------------------------------------------
def _known_feature(world) -> str:
    return world["store"].feature_names[0]


def _cases(world) -> list[tuple[str, dict, dict, str]]:
    """(name, request at the bound, request over it, reason over the bound)."""
    f = _known_feature(world)
    n_feat = len(world["store"].feature_names)
    seg = world["store"].segment_names[0]
    ctx_keys = {f"k{i}": 1 for i in range(R.MAX_CONTEXT_KEYS - 1)}
    return [
        ("user_id text", _base(user_id="u" * 256), _base(user_id="u" * 257), BAD),
        ("user_id int high", _base(user_id=2**64 - 1), _base(user_id=2**64), BAD),
        ("user_id int low", _base(user_id=-(2**63)), _base(user_id=-(2**63) - 1), BAD),
        ("request_id", _base(request_id="q" * 256), _base(request_id="q" * 257), BAD),
        ("ts text", _base(ts="2026-01-01" + " " * 54), _base(ts="2026-01-01" + " " * 55), BAD),
        ("context keys", _base(context={"slot": "top", **ctx_keys}),
         _base(context={"slot": "top", "k": 1, **ctx_keys}), BAD),
        ("context text", _base(context={"page_category": "s" * 256}),
         _base(context={"page_category": "s" * 257}), BAD),
        ("context list", _base(context={"page_category": ["sports"] * 64}),
         _base(context={"page_category": ["sports"] * 65}), BAD),
        ("context list text", _base(page_category=["s" * 256]),
         _base(page_category=["s" * 257]), BAD),
        ("context nested", _base(page_category=["sports"]),
         _base(page_category=[["sports"]]), BAD),
        ("context mapping", _base(page_category="sports"),
         _base(page_category={"sports": 1}), BAD),
        ("consent keys", _base(consent={f"x{i}": 1 for i in range(32)}),
         _base(consent={f"x{i}": 1 for i in range(33)}), BAD),
        ("consent text", _base(consent={"tcf": "C" * R.MAX_CONSENT_CHARS}),
         _base(consent={"tcf": "C" * (R.MAX_CONSENT_CHARS + 1)}), BAD),
        ("consent items", _base(consent={"vendors": list(range(1, 4097))}),
         _base(consent={"vendors": list(range(1, 4098))}), BAD),
        ("consent item text", _base(consent={"purposes": ["3" * 64]}),
         _base(consent={"purposes": ["3" * 65]}), BAD),
        ("consent number", _base(consent={"age": 2**64 - 1}),
         _base(consent={"age": 2**64}), BAD),
        ("consent item number", _base(consent={"vendors": [2**64 - 1]}),
         _base(consent={"vendors": [2**64]}), BAD),
        ("profile number", _base(profile={f: 2**64 - 1}), _base(profile={f: 2**64}),
         BAD_PROFILE),
        ("consent nested", _base(consent={"purposes": [3, 4]}),
         _base(consent={"purposes": [[3, 4]]}), BAD),
        ("consent iterator", _base(consent={"purposes": (3, 4)}),
         _base(consent={"purposes": iter((3, 4))}), BAD),
        ("profile entries", _base(profile={f: 1.0}),
         _base(profile={**{f"f{i}": 1.0 for i in range(n_feat + 2)}}), BAD_PROFILE),
        ("profile segments", _base(profile={"segments": [seg] * R.MAX_PROFILE_SEGMENTS}),
         _base(profile={"segments": [seg] * (R.MAX_PROFILE_SEGMENTS + 1)}), BAD_PROFILE),
        ("Profile entries", _base(profile=Profile(np.zeros(1, np.int32), np.ones(1),
                                                  np.zeros(3, bool))),
         _base(profile=Profile(np.zeros(n_feat + 1, np.int32), np.ones(n_feat + 1),
                               np.zeros(3, bool))), BAD_PROFILE),
    ]


def test_each_bound_at_and_over_it_in_decide_and_decide_batch(world, eng):
    cases = _cases(world)
    at = [eng.decide(a) for _, a, _, _ in cases]
    over = [eng.decide(o) for _, _, o, _ in cases]
    for (name, _a, _o, want), d_at, d_over in zip(cases, at, over):
        assert d_at.reason not in (BAD, BAD_PROFILE), (name, d_at.reason)
        assert d_over.reason == want, (name, d_over.reason)
    # the replay applies the same rules (records are parsed row by row by the same code)
    fresh = engine_for(world, [c for c, _ in SEQ_CAMPAIGNS] + [CTX], policy=Greedy(),
                       time_budget_ms=60_000.0)
    got = fresh.decide_batch([o for _, _, o, _ in cases])
    assert list(got["reason"]) == [d.reason for d in over]


def test_frame_columns_apply_the_same_bounds(world):
    """The replay's column path (no parsing per row) against the rule per row."""
    frame = pd.DataFrame({
        "user_id": ["u" * 256, "u" * 257, "ok", "ok", "ok", "ok"],
        "ts": T0 + np.arange(6, dtype=np.int64),
        "request_id": ["a", "b", "q" * 257, "d", "e", "f"],
        "page_category": ["sports", "sports", "sports", "s" * 257, "sports", "sports"],
        "consent": [None, None, None, None, {"tcf": "C" * (R.MAX_CONSENT_CHARS + 1)},
                    {"x": 1}],
    })

    def make():
        return engine_for(world, [c for c, _ in SEQ_CAMPAIGNS] + [CTX], policy=Greedy())

    loop = [make().decide(r).reason for r in frame.to_dict("records")]
    assert loop == ["fallback:no_profile", BAD, BAD, BAD, BAD, "fallback:no_profile"]
    assert list(make().decide_batch(frame)["reason"]) == loop


def test_extra_keys_of_a_request_cost_nothing(eng):
    req = {**_base(), **{f"k{i}": i for i in range(200_000)}}
    normal = _best_of(lambda: eng.decide(_base()), 5)
    assert eng.decide(req).reason == eng.decide(_base()).reason
    assert _best_of(lambda: eng.decide(req), 3) < normal + 0.020


# ---- hostile input: multi-megabyte fields of every kind ------------------------------------------
KINDS = ("text", "list", "dict", "deep", "int")
FIELDS = ("user_id", "ts", "request_id", "consent", "consent value", "context",
          "context value", "top-level context", "profile", "profile value", "profile segments",
          "Profile")


@functools.lru_cache(maxsize=None)
def _payload(kind: str, size: int) -> Any:
    """About ``size`` bytes of one kind: text, a flat list, a dict, lists nested deep, an int."""
    if kind == "text":
        return "1" * size
    if kind == "list":
        return ["x"] * (size // 8)
    if kind == "dict":
        return {f"k{i}": i for i in range(size // 100)}
    if kind == "deep":
        x: Any = []
        for _ in range(size // 64):
            x = [x]
        return x
    return 1 << (8 * size)  # an integer of ``size`` bytes


def hostile_request(store, field: str, kind: str, size: int, base: dict | None = None
                    ) -> tuple[dict | Request, str]:
    """(``base`` with a payload of ``kind`` and about ``size`` bytes in ``field``, the reason
    it must get); also the benchmark's battery (``benchmarks/test_bench_serve.py``)."""
    base = _base() if base is None else base
    x = _payload(kind, size)
    if field in ("user_id", "ts", "request_id", "consent", "context", "profile"):
        return {**base, field: x}, BAD_PROFILE if field == "profile" else BAD
    if field == "consent value":
        return {**base, "consent": {"gdpr": 1, "tcf": x} if kind != "deep" else
                {"purposes": x}}, BAD
    if field == "context value":
        return Request(user_id=base["user_id"], ts=base["ts"], request_id=base["request_id"],
                       context={"page_category": x}), BAD
    if field == "top-level context":
        return {**base, "slot": x}, BAD
    if field == "profile value":
        return {**base, "profile": {store.feature_names[0]: x}}, BAD_PROFILE
    if field == "profile segments":
        return {**base, "profile": {"segments": x}}, BAD_PROFILE
    n = size // 8  # a Profile with arrays of that size
    return {**base, "profile": Profile(np.zeros(n, np.int32), np.ones(n),
                                       np.zeros(len(store.segment_names), bool))}, BAD_PROFILE


def _hostile(world, field: str, kind: str, size: int) -> tuple[dict | Request, str]:
    return hostile_request(world["store"], field, kind, size)


def _best_of(fn, n: int) -> float:
    """The shortest of ``n`` runs (s): the machine's stalls only ever add time."""
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.fixture(scope="module")
def normal_s(eng):
    """The calibration: a normal decision's time on this machine, now (best of 20)."""
    for _ in range(50):
        eng.decide(_base())
    return _best_of(lambda: eng.decide(_base()), 20)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FIELDS), st.sampled_from(KINDS), st.sampled_from([MB, 8 * MB]))
def test_hostile_fields_are_refused_at_once(world, eng, normal_s, field, kind, size):
    if kind == "int" and field == "ts":
        size = 64  # an int time is compared, never parsed: any size is one comparison
    req, want = _hostile(world, field, kind, size)
    d = eng.decide(req)
    assert d.reason == want, (field, kind, d.reason)
    # loose for a shared machine: the strict 1 ms is the benchmark's (min of many runs)
    took = _best_of(lambda: eng.decide(req), 3)
    assert took < normal_s + 0.020, (field, kind, size, took, normal_s)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("kind", ["text", "list", "dict", "deep"])
def test_hostile_work_does_not_grow_with_the_field(world, eng, field, kind):
    """An 8 MB field costs what a 1 MB one does: nothing reads it whole."""
    small, _ = _hostile(world, field, kind, MB)
    big, _ = _hostile(world, field, kind, 8 * MB)
    eng.decide(small), eng.decide(big)
    t1 = _best_of(lambda: eng.decide(small), 5)
    t8 = _best_of(lambda: eng.decide(big), 5)
    # read whole, 8 MB would cost 7 MB more of scanning (milliseconds) than 1 MB
    assert t8 < 2 * t1 + 0.002, (field, kind, t1, t8)


def test_hostile_rows_in_decide_batch(world):
    reqs = [_hostile(world, field, kind, MB)[0] for field in FIELDS for kind in KINDS]
    loop_engine = engine_for(world, [c for c, _ in SEQ_CAMPAIGNS] + [CTX], policy=Greedy())
    loop = [loop_engine.decide(r).reason for r in reqs]
    got = engine_for(world, [c for c, _ in SEQ_CAMPAIGNS] + [CTX],
                     policy=Greedy()).decide_batch(reqs)
    assert list(got["reason"]) == loop and set(loop) == {BAD, BAD_PROFILE}


# ---- the context cache -------------------------------------------------------------------------
def test_context_cache_is_bounded_by_bytes(world):
    import tracemalloc

    eng = engine_for(world, [CTX, Campaign("ron", (Creative("r-1"),), bid=1.0)],
                     experiment=Experiment({"control": 1.0}))
    # the largest context a request may carry: every field, 64 values of 256 characters
    def ctx(i):
        return {f: [f"{i}-{j}-".ljust(R.MAX_CONTEXT_CHARS, "x") for j in range(64)]
                for f in CONTEXT_FIELDS}

    assert eng.decide(_base(context=ctx(0))).reason == "control"
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            eng.decide(_base(context=ctx(i + 1)))
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    cache = eng._snap.ctx_cache
    assert cache.nbytes <= snapshot_module._CTX_CACHE_BYTES
    # 300 keys of about 460 KB would be 135 MB; the cache keeps at most 32 MiB of them
    assert grown < 48 * MB, grown
    # the case, a 1 MiB value: refused, never cached
    eng.decide(_base())  # the key of no context, which a bad request is decided with
    n = len(cache)
    assert eng.decide(_base(context={"page_category": "x" * MB})).reason == BAD
    assert len(cache) == n


# ---- the frequency-cap history ----------------------------------------------------------------
def _capped_engine(world, **kw):
    capped = Campaign("capped", (Creative("k-1"),), bid=5.0, caps=(FrequencyCap(2, "1h"),))
    kw.setdefault("experiment", Experiment({"control": 1.0}))
    return Engine([capped, Campaign("ron", (Creative("r-1"),), bid=1.0)], fallback=HOUSE,
                  store=world["store"], untargeted_policy=Greedy(), time_budget_ms=60_000.0,
                  **kw).warmup()


def test_caps_hold_whatever_type_the_id_arrives_in(world):
    eng = _capped_engine(world)
    served = [eng.decide({"user_id": u, "ts": T0 + i}).campaign_id
              for i, u in enumerate([923, "923", np.int64(923), np.uint32(923)])]
    assert served == ["capped", "capped", "ron", "ron"]
    assert list(eng._history) == ["923"] and "923" in eng._history and 923 in eng._history
    # the replay reads and writes the same keys
    got = eng.decide_batch([{"user_id": "923", "ts": T0 + 10, "request_id": "x"},
                            {"user_id": 924, "ts": T0 + 10, "request_id": "y"}])
    assert list(got["campaign_id"]) == ["ron", "capped"]
    eng.erase(np.int64(923))
    assert 923 not in eng._history
    assert eng.decide({"user_id": 923, "ts": T0 + 11}).campaign_id == "capped"


def test_erase_drops_pending_decisions_of_any_id_type(world):
    eng = _capped_engine(world, count_on="win")
    eng.decide({"user_id": 5, "ts": T0, "request_id": "p-1"})
    eng.decide_batch([{"user_id": "5", "ts": T0, "request_id": "p-2"}])
    assert eng.n_pending == 2
    eng.erase("5")
    assert eng.n_pending == 0 and not eng.notify_win("p-1") and not eng.notify_win("p-2")


def test_history_ages_out_and_the_size_bound_forgets_the_least_recent(world):
    eng = _capped_engine(world)
    window = H
    # 20,000 users, one every 1.8 s: 2,000 of them fall within any one-hour window
    for i in range(20_000):
        eng.decide({"user_id": i, "ts": T0 + i * 1_800, "request_id": f"a{i}"})
    held = eng._history.users
    assert len(held) <= 2_000 + 2 * delivery_module._SWEEP
    assert eng._history.horizon == T0 + 19_999 * 1_800 - window
    assert eng._history.n_entries == sum(len(v) for v in held.values())
    # the size bound: at most 500 impressions, the least recently served forgotten first
    small = _capped_engine(world, max_history_entries=500)
    for i in range(1_000):
        for k in range(2):  # two impressions each: the cap of two is reached
            small.decide({"user_id": i, "ts": T0 + 2 * i + k, "request_id": f"b{i}-{k}"})
    assert small._history.n_entries <= 500 and list(small._history)[0] == "750"
    assert small.decide({"user_id": 999, "ts": T0 + 3_000}).campaign_id == "ron"  # capped
    assert small.decide({"user_id": 0, "ts": T0 + 3_000}).campaign_id == "capped"  # forgotten


def test_a_far_future_time_cannot_expire_everyone(world):
    eng = _capped_engine(world)
    now = int(time.time() * 1000) - 10 * 60_000
    for i in range(2):
        eng.decide({"user_id": "a", "ts": now + i})
    assert eng.decide({"user_id": "a", "ts": now + 2}).campaign_id == "ron"  # capped
    eng.decide({"user_id": "b", "ts": pd.Timestamp("2200-01-01").value // 1_000_000})
    assert eng.decide({"user_id": "a", "ts": now + 3}).campaign_id == "ron"  # still capped


def _spread_requests(n: int, seed: int, *, ordered: bool) -> list[dict]:
    rng = np.random.default_rng(seed)
    ts = T0 + rng.integers(0, 10 * 24 * H, n)  # ten days, caps of hours: users age out
    if ordered:
        ts = np.sort(ts)
    users = rng.integers(0, 300, n)
    return [{"user_id": int(u) if i % 3 else str(u), "ts": int(t), "request_id": f"b{seed}-{i}"}
            for i, (u, t) in enumerate(zip(users.tolist(), ts.tolist()))]


@pytest.mark.parametrize("ordered", [True, False], ids=["in-order", "out-of-order"])
def test_batch_equals_the_loop_while_users_age_out(world, ordered):
    campaigns = [c for c, _ in SEQ_CAMPAIGNS] + [CTX]
    reqs = _spread_requests(3_000, seed=5 if ordered else 6, ordered=ordered)
    loop_engine = engine_for(world, campaigns, experiment=Experiment({"control": 0.5, "t": 0.5}))
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in reqs])
    batch_engine = engine_for(world, campaigns, experiment=Experiment({"control": 0.5,
                                                                       "t": 0.5}))
    _assert_same(batch_engine.decide_batch(reqs, chunk_size=128), loop)
    assert batch_engine._history == loop_engine._history
    assert batch_engine._history.horizon == loop_engine._history.horizon
    assert batch_engine.spend() == loop_engine.spend()
    assert (loop["campaign_id"] == "ron").any()


def test_batch_keeps_the_size_bound(world):
    reqs = _spread_requests(2_000, seed=7, ordered=True)

    def make():
        return _capped_engine(world, max_history_entries=40)

    loop_engine = make()
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in reqs])
    # one request a chunk: the bound is applied where the loop applies it
    one = make()
    _assert_same(one.decide_batch(reqs, chunk_size=1), loop)
    assert one._history == loop_engine._history
    # larger chunks apply it at each chunk's end: the bound holds after every call
    big = make()
    for a in range(0, len(reqs), 250):
        big.decide_batch(reqs[a:a + 250], chunk_size=250)
        assert big._history.n_entries <= 40


@pytest.mark.slow
def test_memory_after_a_million_distinct_unknown_users(world):
    """A million users never seen before, each served a capped campaign once, one every 36 ms
    (ten hours, caps of one hour): the history holds the last hour's 100,000 users, and
    resident memory stops growing once the first users age out."""
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    eng = _capped_engine(world)
    decide = eng.decide
    n, step = 1_000_000, 36

    def serve(a, b):
        for i in range(a, b):
            decide({"user_id": 50_000_000 + i, "ts": T0 + i * step, "request_id": "m"})

    gc.collect()
    rss0 = proc.memory_info().rss
    serve(0, 300_000)  # the first users have aged out from 100,000 on
    gc.collect()
    rss_mid = proc.memory_info().rss
    serve(300_000, n)
    gc.collect()
    rss_end = proc.memory_info().rss
    assert len(eng._history.users) <= 100_000 + 2 * delivery_module._SWEEP
    grown, late = (rss_end - rss0) / MB, (rss_end - rss_mid) / MB
    # before the bounds: 91 MiB per 100,000 users, about 900 MiB here
    assert grown < 150, grown
    assert late < 24, late  # 700,000 more users: no growth beyond a dict resize (7 MiB)


# ---- stored profiles with NaN or infinite values ------------------------------------------------
class _PoisonedStore(_OutageStore):
    """The world's store, with NaN or inf in the stored profiles of some users (reads of
    many users go through ``get``)."""

    def __init__(self, store, poisoned: dict):
        super().__init__(store, broken=frozenset())
        self.poisoned = poisoned

    def get(self, user_id, as_of_ms=None):
        p = self.base.get(user_id, as_of_ms)
        bad = self.poisoned.get(user_id)
        if p is None or bad is None or not len(p.values):
            return p
        values = p.values.copy()
        values[0] = bad
        return Profile(p.indices, values, p.segments, p.segment_names)


@pytest.mark.parametrize("with_block", [False, True], ids=["get_many", "get_block"])
def test_stored_nan_or_inf_profiles_are_bad_profiles(world, with_block):
    store = _PoisonedStore(world["store"], {2: np.nan, 4: np.inf, 6: -np.inf})
    if with_block:
        def get_block(users, as_of_ms=None):
            block = world["store"].get_block(users, as_of_ms)
            values = block.values.copy()
            for i, u in enumerate(users):
                bad = store.poisoned.get(u)
                lo, hi = block.indptr[i], block.indptr[i + 1]
                if bad is not None and block.present[i] and hi > lo:
                    values[lo] = bad
            return block._replace(values=values)

        store.get_block = get_block
    reqs = [{"user_id": u, "ts": T0, "request_id": f"n{u}"} for u in range(10)]

    def make():
        return Engine([c for c, _ in SEQ_CAMPAIGNS], fallback=HOUSE, store=store,
                      experiment=ALL_TARGETED, time_budget_ms=60_000.0).warmup()

    loop = decisions_frame([make().decide(r).as_dict() for r in reqs])
    bad = loop["reason"] == BAD_PROFILE
    assert set(loop["user_id"][bad]) == {"2", "4", "6"} and not loop["targeted"][bad].any()
    pd.testing.assert_frame_equal(make().decide_batch(reqs), loop)

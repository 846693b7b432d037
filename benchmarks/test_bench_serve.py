"""Serving latency and throughput: ``Engine.decide`` p50/p99, ``decide_batch`` decisions/s (a
replay of 1M requests over 100 campaigns at full scale, at one time or spread over a day,
against a loop of ``decide`` in the same run), in process and through Redis; the worst case of
``decide`` on hostile input (multi-megabyte fields of every kind) beside the normal p50/p99.

The full run (``BTA_BENCH_SCALE=1``) serves 1,000 creatives (500 campaigns of 2) over 100
segments, with a 100-tree LightGBM click model (flattened by ``TreeScorer.from_lightgbm``)
pricing a fifth of the campaigns, for 100,000 simulated users; the target is a p99 of
``decide`` under 200 us with the in-process store. The default scale (0.01, the CI smoke run)
keeps at least 20 creatives, 5 segments and 5 trees.

Before timing, the decisions for a sample of requests are checked against a reference written
in plain Python: targeting conditions evaluated on the profile's named features, click
probabilities from the real ``lightgbm.Booster``, eCPM, the greedy choice and the hashed
creative rotation. Compile and setup stay outside the timed part (``warmup()`` runs first).

    BTA_BENCH_SCALE=1 python -m pytest benchmarks/test_bench_serve.py -p no:randomly -s
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest

from bta.features import FeatureSpec, OnlineProfiles
from bta.privacy import PrivacyPolicy
from bta.segment.book import Segment, SegmentBook
from bta.serve.campaigns import Campaign, Creative, FrequencyCap
from bta.serve.engine import Engine
from bta.serve.experiment import Experiment, hash_unit
from bta.serve.policy import Greedy
from bta.serve.store import MemoryProfileStore
from _data import bench_scale, report_line

#: p99 latency the in-process path should meet at full scale (microseconds)
TARGET_P99_US = 200.0
N_CHECK = 300  # requests compared with the reference before timing



def _n(full: int, minimum: int) -> int:
    return max(minimum, int(round(full * bench_scale())))


# ---- the world ----------------------------------------------------------------------------------
@dataclass
class World:
    profiles: OnlineProfiles
    book: SegmentBook
    store: MemoryProfileStore
    campaigns: list
    conditions: list  # Python predicate per campaign (None: untargeted)
    house: Campaign
    scorer: Any
    booster: Any
    as_of: int
    users: np.ndarray


def _conditions(rng, cats, n_seg):
    """(rule text, the same condition in Python) drawn from a few realistic templates."""
    c = cats[int(rng.integers(len(cats)))]
    a, b = (int(x) for x in rng.integers(0, n_seg, 2))
    k = int(rng.integers(1, 4))
    kind = int(rng.integers(0, 5))
    if kind == 0:
        return f'segment("seg{a}")', lambda f, s: f"seg{a}" in s
    if kind == 1:
        return (f"`count:page_view:{c}:7d` >= {k}",
                lambda f, s: f[f"count:page_view:{c}:7d"] >= k)
    if kind == 2:
        return (f'segment("seg{a}") and `decay:page_view:{c}` > 0.5',
                lambda f, s: f"seg{a}" in s and f[f"decay:page_view:{c}"] > 0.5)
    if kind == 3:
        return (f'`recency:page_view:{c}` < 2 or segment("seg{b}")',
                lambda f, s: f[f"recency:page_view:{c}"] < 2 or f"seg{b}" in s)
    pat = "count:page_view:*:7d"
    return (f'total("{pat}") >= {k + 2}',
            lambda f, s: sum(v for n, v in f.items() if fnmatchcase(n, pat)) >= k + 2)


def _tree_scorer(profiles, n_trees, users, as_of):
    import lightgbm as lgb

    from bta.scoring import TreeScorer

    fm = profiles.features(as_of=as_of, users=list(users))
    X = fm.X.toarray()
    X[:, np.asarray(fm.nan_absent)] = np.where(X[:, np.asarray(fm.nan_absent)] == 0, np.nan,
                                               X[:, np.asarray(fm.nan_absent)])
    rng = np.random.default_rng(5)
    signal = X[:, : min(40, X.shape[1])].sum(axis=1)
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-(signal - np.median(signal))))).astype(int)
    # LightGBM refuses ':' in feature names: train on positions, then name the columns
    booster = lgb.train({"objective": "binary", "num_leaves": 31, "learning_rate": 0.1,
                         "min_data_in_leaf": 5, "verbose": -1, "seed": 1},
                        lgb.Dataset(X, y), num_boost_round=n_trees)
    flat = TreeScorer.from_lightgbm(booster)
    spec = flat.to_dict()
    spec["feature_names"] = list(fm.feature_names)
    return TreeScorer.from_dict(spec), booster


@pytest.fixture(scope="module")
def world() -> World:
    from bta.sim import simulate_clickstream

    n_users = _n(100_000, 1_000)
    n_seg = _n(100, 5)
    n_campaigns = _n(1_000, 20) // 2
    n_trees = _n(100, 5)
    cs = simulate_clickstream(n_users=n_users, days=7, n_categories=20, seed=3,
                              events_per_user_day=3.0)
    spec = FeatureSpec(windows=("1d", "7d"),
                       events=("page_view", "search", "ad_impression", "ad_click"))
    profiles = OnlineProfiles(spec, categories=cs.categories, grow_categories=False)
    profiles.update(cs.events[["user_id", "ts", "event", "category", "value"]])
    as_of = int(cs.end.value // 1_000_000)
    users = np.sort(cs.users["user_id"].to_numpy())
    rng = np.random.default_rng(11)
    shares = rng.uniform(0.05, 0.3, n_seg)  # every segment far above the minimum audience
    book = SegmentBook.from_segments(users, [
        Segment(f"seg{j}", "custom", {}, rng.random(n_users) < shares[j]) for j in range(n_seg)],
        min_audience=min(50, n_users // 50))
    store = MemoryProfileStore(profiles, book)
    scorer, booster = _tree_scorer(profiles, n_trees, users[: min(n_users, 20_000)], as_of)
    campaigns, conditions = [], []
    # rules may not read sensitive categories (the privacy policy refuses them at build time)
    cats = [c for c in cs.categories if not PrivacyPolicy().is_blocked_category(c)]
    for i in range(n_campaigns):
        creatives = (Creative(f"c{i}-a"), Creative(f"c{i}-b"))
        r = rng.random()
        if r < 0.2:  # untargeted run of network
            campaigns.append(Campaign(f"c{i}", creatives, bid=float(rng.uniform(0.2, 1.5))))
            conditions.append(None)
            continue
        rule, cond = _conditions(rng, cats, n_seg)
        kw: dict[str, Any] = {}
        if r < 0.4:  # a fifth of the campaigns price clicks with the tree model
            kw = dict(pricing="cpc", bid=float(rng.uniform(0.2, 2.0)), model="ctr")
        else:
            kw = dict(bid=float(rng.uniform(0.5, 5.0)))
        if rng.random() < 0.3:  # caps never bind in the checked sample (one request per user)
            kw["caps"] = (FrequencyCap(3, "1d"),)
        campaigns.append(Campaign(f"c{i}", creatives, targeting=rule, **kw))
        conditions.append(cond)
    house = Campaign("house", (Creative("house-1"),), bid=0.05)
    return World(profiles, book, store, campaigns, conditions, house, scorer, booster, as_of,
                 users)


def make_engine(world: World, store=None) -> Engine:
    return Engine(world.campaigns, fallback=world.house, store=store or world.store,
                  scorers={"ctr": world.scorer}, experiment=Experiment(
                      {"control": 0.1, "targeted": 0.9}, salt="bench"),
                  policy=Greedy(), untargeted_policy=Greedy(),
                  time_budget_ms=1000.0).warmup()  # the full path is timed, never cut short


def requests_for(world: World, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    users = world.users[rng.integers(0, len(world.users), n)]
    return [{"user_id": int(u), "ts": world.as_of, "request_id": f"b{seed}-{i}"}
            for i, u in enumerate(users)]


# ---- the reference ------------------------------------------------------------------------------
def reference_decision(world: World, user: Any, rid: str) -> tuple:
    """(campaign, creative, n_eligible, score, reason) computed without the Engine."""
    exp = Experiment({"control": 0.1, "targeted": 0.9}, salt="bench")
    arm = exp.assign(user)
    profile = world.store.get(user, world.as_of) if arm != "control" else None
    names = world.store.feature_names
    if profile is not None:
        f = {n: (math.nan if world.store.nan_absent[j] else 0.0) for j, n in enumerate(names)}
        for j, v in zip(profile.indices.tolist(), profile.values.tolist()):
            f[names[j]] = v
        segs = {world.store.segment_names[j] for j in np.flatnonzero(profile.segments)}
        x = np.array([f[n] for n in names])[None, :]
        p_click = float(world.booster.predict(x)[0])
        cand = [(c, cond) for c, cond in zip(world.campaigns, world.conditions)
                if cond is None or cond(f, segs)]
        reason = "targeted"
    else:
        cand = [(c, cond) for c, cond in zip(world.campaigns, world.conditions) if cond is None]
        p_click = None
        reason = "control" if arm == "control" else "fallback:no_profile"
    scores = [c.bid if c.pricing == "cpm" else
              (p_click if c.model else c.prior_ctr) * c.bid * 1000.0 for c, _ in cand]
    best = int(np.argmax(scores))
    c = cand[best][0]
    v = hash_unit(f"v1:creative:{rid}")
    cr = c.creatives[min(int(v * len(c.creatives)), len(c.creatives) - 1)].id
    return c.id, cr, len(cand), scores[best], reason


def check_against_reference(world: World, engine: Engine, requests: list[dict]) -> None:
    seen = set()
    checked = 0
    for r in requests:
        if r["user_id"] in seen:  # one request per user: caps cannot bind
            continue
        seen.add(r["user_id"])
        d = engine.decide(r)
        assert d.reason != "fallback:error", (
            f"decide failed internally for {r}; see the 'bta' logger's traceback")
        want = reference_decision(world, r["user_id"], r["request_id"])
        got = (d.campaign_id, d.creative_id, d.n_eligible, d.score, d.reason)
        assert got[:3] == want[:3] and got[4] == want[4], (r, got, want)
        # TreeScorer vs lightgbm: equal up to summation rounding
        assert got[3] == pytest.approx(want[3], rel=1e-9), (r, got, want)
        checked += 1
        if checked >= N_CHECK:
            break
    assert checked >= min(N_CHECK, len(world.users) // 2)


# ---- timing helpers -----------------------------------------------------------------------------
def latencies_us(engine: Engine, requests: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per-request wall-clock and thread CPU time (us).

    On a shared machine the wall clock includes time the process was preempted; the thread's
    CPU time does not, so its percentiles show what an unloaded server would see (a Redis round
    trip, spent waiting, shows only in the wall clock).
    """
    wall = np.empty(len(requests))
    cpu = np.empty(len(requests))
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    decide = engine.decide
    for i, r in enumerate(requests):
        c0 = cpu_clock()
        t0 = clock()
        decide(r)
        wall[i] = clock() - t0
        cpu[i] = cpu_clock() - c0
    return wall / 1000.0, cpu / 1000.0


def _busy(k: int) -> int:
    acc = 0
    for i in range(k):
        acc += i
    return acc


def noise_floor_us(median_us: float, n: int) -> tuple[float, float]:
    """(p50, p99) in us of ``n`` calls of a fixed pure-Python loop that takes about
    ``median_us``, timed per call as :func:`latencies_us` times ``decide``.

    Every call does the same work, so its tail is the machine's alone (interrupts, the
    hypervisor taking the core): the share of ``decide``'s p99 that no code change removes."""
    clock = time.perf_counter_ns
    k = 1_000
    for _ in range(3):  # calibrate k three times: the machine's speed drifts
        lap = np.empty(500)
        for i in range(lap.shape[0]):
            t0 = clock()
            _busy(k)
            lap[i] = clock() - t0
        k = max(1, int(round(k * median_us / (np.median(lap) / 1000.0))))
    wall = np.empty(n)
    for i in range(n):
        t0 = clock()
        _busy(k)
        wall[i] = clock() - t0
    p50, p99 = np.percentile(wall / 1000.0, [50, 99])
    return float(p50), float(p99)


def _report(request: pytest.FixtureRequest, line: str) -> None:
    report_line(request, "bta serve", line)


def _time_decide(benchmark, request, engine: Engine, reqs: list[dict], label: str) -> np.ndarray:
    lat: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def run():
        lat["us"] = latencies_us(engine, reqs)

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    wall, cpu = lat["us"]
    p50, p99 = np.percentile(wall, [50, 99])
    c50, c99 = np.percentile(cpu, [50, 99])
    benchmark.extra_info.update(p50_us=float(p50), p99_us=float(p99), cpu_p50_us=float(c50),
                                cpu_p99_us=float(c99), n_requests=len(reqs),
                                scale=bench_scale(), target_p99_us=TARGET_P99_US)
    _report(request, f"{label}: {len(reqs):,} requests, wall p50 {p50:.1f} us, p99 "
                            f"{p99:.1f} us; thread CPU p50 {c50:.1f} us, p99 {c99:.1f} us "
                            f"(scale {bench_scale():g}, target p99 {TARGET_P99_US:.0f} us)")
    return wall


# ---- benchmarks ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_requests(world):
    return requests_for(world, _n(200_000, 3_000), seed=1)


def test_decide_latency_in_process(benchmark, request, world, bench_requests):
    check_against_reference(world, make_engine(world), bench_requests)
    engine = make_engine(world)
    for r in bench_requests[:200]:  # warm the caches of the request path
        engine.decide(r)
    us = _time_decide(benchmark, request, engine, bench_requests, "decide (in-process store)")
    assert np.isfinite(us).all()
    # the machine's own tail, measured right after: a fixed loop as long as decide's median
    f50, f99 = noise_floor_us(float(np.median(us)), len(bench_requests))
    benchmark.extra_info.update(noise_p50_us=f50, noise_p99_us=f99)
    _report(request, f"machine noise floor: {len(bench_requests):,} calls of a fixed Python "
                     f"loop of about decide's median length, timed the same way: p50 "
                     f"{f50:.1f} us, p99 {f99:.1f} us (p99/p50 {f99 / f50:.2f}; decide "
                     f"{np.percentile(us, 99) / np.median(us):.2f})")


# ---- hostile input: the worst case of decide ------------------------------------------------------
#: What a hostile request may cost ``decide`` beyond a normal one (the bounds' target, us).
TARGET_HOSTILE_EXCESS_US = 1_000.0
N_HOSTILE_RUNS = 20  # each hostile request timed this many times; its shortest run counts


def hostile_battery(world: World, base: dict) -> list[tuple[str, Any, set | None]]:
    """(label, request, the reasons it may get): a multi-megabyte field of every kind in every
    field a request has, 1 MB and 8 MB (the hostile requests of ``tests/test_serving_bounds.py``),
    and a request with 200,000 extra keys (read as a normal one)."""
    bounds = _tests_module("test_serving_bounds")
    out = []
    for size in (1 << 20, 8 << 20):
        for kind in bounds.KINDS:
            for field in bounds.FIELDS:
                r, reason = bounds.hostile_request(world.store, field, kind, size, base)
                out.append((f"{field}: {kind} of {size >> 20} MB", r, {reason}))
    out.append(("200,000 extra keys", {**base, **{f"k{i}": i for i in range(200_000)}}, None))
    return out


def _shortest_us(fn: Callable, n: int) -> float:
    best = math.inf
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best / 1000.0


def test_decide_hostile_worst_case(benchmark, request, world, bench_requests):
    """The worst ``decide`` time over a battery of hostile requests (multi-megabyte fields of
    each kind), beside the normal p50/p99 of the same run; each hostile request is first
    checked to get its fallback, then timed by its shortest of 20 runs (the machine's stalls
    only add time), against the shortest run of the normal request it was made from."""
    engine = make_engine(world)
    reqs = bench_requests[: _n(20_000, 1_000)]
    for r in reqs[:200]:
        engine.decide(r)
    wall, _cpu = latencies_us(engine, reqs)
    p50, p99 = (float(x) for x in np.percentile(wall, [50, 99]))
    base = dict(reqs[0])
    normal = engine.decide(base).reason
    battery = hostile_battery(world, base)
    for label, r, ok in battery:  # check before timing
        got = engine.decide(r).reason
        assert got in (ok if ok is not None else {normal}), (label, got)
    results = {}

    def run():
        results["normal"] = _shortest_us(lambda: engine.decide(base), N_HOSTILE_RUNS)
        for label, r, _ok in battery:
            results[label] = _shortest_us(lambda: engine.decide(r), N_HOSTILE_RUNS)

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    normal_us = results.pop("normal")
    worst = max(results, key=results.get)
    worst_us = results[worst]
    benchmark.extra_info.update(p50_us=p50, p99_us=p99, normal_shortest_us=normal_us,
                                hostile_worst_us=worst_us, hostile_worst=worst,
                                n_hostile=len(results), scale=bench_scale())
    _report(request, f"decide on hostile input: {len(results)} requests with multi-MB fields, "
                     f"each the shortest of {N_HOSTILE_RUNS} runs: worst {worst_us:.1f} us "
                     f"({worst}); the normal request they were made from {normal_us:.1f} us; "
                     f"normal decide in the same run: {len(reqs):,} requests, p50 {p50:.1f} us, "
                     f"p99 {p99:.1f} us (target: worst - normal < "
                     f"{TARGET_HOSTILE_EXCESS_US:.0f} us)")
    assert worst_us - normal_us < TARGET_HOSTILE_EXCESS_US, (worst, worst_us, normal_us)
    # within the bounds, the privacy gate decodes: the longest consent string accepted, of
    # the slowest pattern found (a core segment whose fields announce range after range)
    from bta.serve._request import MAX_CONSENT_CHARS

    longest = {**base, "consent": {"gdpr": 1,
                                   "tcf": "CQ" + "S" * (MAX_CONSENT_CHARS - 2)}}
    engine.decide(longest)
    consent_us = _shortest_us(lambda: engine.decide(longest), N_HOSTILE_RUNS)
    benchmark.extra_info.update(longest_consent_us=consent_us)
    _report(request, f"decide with the longest consent string accepted ({MAX_CONSENT_CHARS:,} "
                     f"characters announcing TCF ranges, decoded by the gate): {consent_us:.1f} us")


def replay_frame(world: World, n: int, seed: int) -> pd.DataFrame:
    """A replay's requests as the simulator writes them: user, time, id, page and slot."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": world.users[rng.integers(0, len(world.users), n)].astype(np.int64),
        "ts": world.as_of,
        "request_id": [f"r{seed}-{i}" for i in range(n)],
        "page_category": np.array(["news", "sports", "autos", "travel"],
                                  dtype=object)[rng.integers(0, 4, n)],
        "slot": np.array(["top", "side"], dtype=object)[rng.integers(0, 2, n)],
    })


N_REPLAY_CAMPAIGNS = 100


def replay_engine(world: World, store) -> Engine:
    """The replay benchmarks' engine: the first 100 campaigns (fewer at small scale)."""
    return Engine(world.campaigns[:N_REPLAY_CAMPAIGNS], fallback=world.house, store=store,
                  scorers={"ctr": world.scorer},
                  experiment=Experiment({"control": 0.1, "targeted": 0.9}, salt="bench"),
                  time_budget_ms=1000.0).warmup()


def checked_loop(world: World, store, check: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """A loop of ``decide`` over ``check`` (decisions, decisions/s), checked equal to
    ``decide_batch`` of the same requests on a fresh engine."""
    from bta.serve.engine import decisions_frame

    loop_engine = replay_engine(world, store)
    t0 = time.perf_counter()
    loop = decisions_frame([loop_engine.decide(r).as_dict() for r in check.to_dict("records")])
    rate = len(check) / (time.perf_counter() - t0)
    pd.testing.assert_frame_equal(replay_engine(world, store).decide_batch(check), loop)
    return loop, rate


def _time_replay(benchmark, eng: Engine, df: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """``eng.decide_batch(df)`` timed once: (decisions, seconds); no request failed."""
    out: dict[str, Any] = {}

    def run():
        t0 = time.perf_counter()
        out["df"] = eng.decide_batch(df)
        out["s"] = time.perf_counter() - t0

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    res = out["df"]
    assert len(res) == len(df) and (res["reason"] != "fallback:error").all()
    return res, out["s"]


@pytest.mark.parametrize("times", ["one", "spread"])
def test_decide_batch_throughput(benchmark, request, world, times):
    """``decide_batch`` on a replay with 100 campaigns (1M requests at full scale), checked
    equal to a loop of ``decide`` first; the loop's rate is measured in the same run.

    ``times="one"``: every request at one time (a profile read per user); ``"spread"``: the
    requests spread over a day, each at its own time (a profile read per request, in one bulk
    store call per chunk)."""
    df = replay_frame(world, _n(1_000_000, 20_000), seed=2)
    if times == "spread":
        df["ts"] = world.as_of + np.arange(len(df), dtype=np.int64) * (86_400_000 // len(df))
    check = df.iloc[:2_000]
    _, loop_rate = checked_loop(world, world.store, check)
    replay_engine(world, world.store).decide_batch(df.iloc[:100])  # compile outside the timing
    res, seconds = _time_replay(benchmark, replay_engine(world, world.store), df)
    n_campaigns = min(N_REPLAY_CAMPAIGNS, len(world.campaigns))
    rate = len(res) / seconds
    benchmark.extra_info.update(decisions_per_s=rate, loop_decisions_per_s=loop_rate,
                                n_requests=len(res), n_campaigns=n_campaigns, times=times)
    _report(request, f"decide_batch ({times} time{'s' if times == 'spread' else ''}): "
                     f"{len(res):,} decisions ({n_campaigns} campaigns) in "
                     f"{seconds:.2f} s, {rate:,.0f} decisions/s; loop of decide "
                     f"{loop_rate:,.0f}/s ({rate / loop_rate:.0f}x)")


def _tests_module(name: str) -> Any:
    """A module of ``tests/`` whose helpers a benchmark shares (imported with its folder on
    the path, as pytest imports it)."""
    import sys

    folder = str(Path(__file__).resolve().parents[1] / "tests")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def _load_redis_helper() -> Callable:
    # the tests' fixture logic (loopback only; skip locally, fail when CI=true), shared here
    path = Path(__file__).resolve().parents[1] / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_bta_tests_redis_fixture", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.redis_url_session


@pytest.fixture(scope="module")
def redis_url():
    yield from _load_redis_helper()()


@pytest.fixture(scope="module")
def redis_published(world, redis_url):
    """(store, profiles published, seconds the publish took): the world's profiles in Redis
    under a prefix of this run, deleted at the end."""
    import redis

    from bta.serve.redis_store import RedisProfileStore

    prefix = f"btabench-{os.getpid()}"
    store = RedisProfileStore.from_profiles(world.profiles, world.book, url=redis_url,
                                            prefix=prefix, timeout_ms=1000.0)
    try:
        t0 = time.perf_counter()
        n = store.publish_from(world.profiles, as_of=world.as_of)
        yield store, n, time.perf_counter() - t0
    finally:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
            for i in range(0, len(keys), 5000):
                client.delete(*keys[i:i + 5000])
        finally:
            client.close()


def test_decide_latency_redis(benchmark, request, world, bench_requests, redis_url,
                              redis_published):
    import redis

    store, n, publish_s = redis_published
    # requests at the publish time: the Redis snapshot equals the in-memory profile
    check = bench_requests[: min(len(bench_requests), 1_000)]
    pd.testing.assert_frame_equal(make_engine(world, store).decide_batch(check),
                                  make_engine(world).decide_batch(check))
    check_against_reference(world, make_engine(world, store), bench_requests)
    engine = make_engine(world, store)
    for r in bench_requests[:200]:
        engine.decide(r)
    _time_decide(benchmark, request, engine, bench_requests, "decide (Redis store)")
    # the floor under it: one bare redis-py GET round trip per request, same server
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        n_rtt = min(len(bench_requests), 20_000)
        rtt = np.empty(n_rtt)
        clock = time.perf_counter_ns
        for i in range(n_rtt):
            t0 = clock()
            client.get(f"{store.prefix}:rtt")
            rtt[i] = clock() - t0
    finally:
        client.close()
    r50, r99 = np.percentile(rtt / 1000.0, [50, 99])
    benchmark.extra_info.update(redis_get_p50_us=float(r50), redis_get_p99_us=float(r99))
    _report(request, f"bare redis-py GET round trip ({n_rtt:,}): p50 {r50:.1f} us, p99 "
                     f"{r99:.1f} us")
    _report(request, f"publish_from: {n:,} profiles in {publish_s:.2f} s "
                     f"({n / publish_s:,.0f} profiles/s)")


class _WithoutBlockReads:
    """A store whose ``get_block`` fails: the replay then reads user by user with ``get``
    (about the path before stores other than the in-memory one had bulk reads)."""

    def __init__(self, store):
        self._store = store

    def get_block(self, user_ids, as_of_ms=None):
        raise ConnectionError("bulk reads switched off")

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_decide_batch_redis(benchmark, request, world, redis_published):
    """``decide_batch`` over the Redis store with the requests spread over a day (200k at full
    scale): bulk reads (``get_block``: pipelined ``MGET`` of each chunk's distinct users)
    against reads user by user and a loop of ``decide``, in the same run."""
    store = redis_published[0]
    df = replay_frame(world, _n(200_000, 5_000), seed=3)
    df["ts"] = world.as_of + np.arange(len(df), dtype=np.int64) * (86_400_000 // len(df))
    check = df.iloc[:2_000]
    loop, loop_rate = checked_loop(world, store, check)
    t0 = time.perf_counter()
    per_time = replay_engine(world, _WithoutBlockReads(store)).decide_batch(check)
    per_time_rate = len(check) / (time.perf_counter() - t0)
    pd.testing.assert_frame_equal(per_time, loop)
    res, seconds = _time_replay(benchmark, replay_engine(world, store), df)
    assert (res["reason"] != "fallback:store_error").all()
    rate = len(res) / seconds
    benchmark.extra_info.update(decisions_per_s=rate, per_user_reads_decisions_per_s=
                                per_time_rate, loop_decisions_per_s=loop_rate,
                                n_requests=len(res))
    _report(request, f"decide_batch (Redis store, spread times): {len(res):,} decisions in "
                     f"{seconds:.2f} s, {rate:,.0f} decisions/s; reads user by user "
                     f"{per_time_rate:,.0f}/s ({rate / per_time_rate:.0f}x); loop of decide "
                     f"{loop_rate:,.0f}/s ({rate / loop_rate:.0f}x)")

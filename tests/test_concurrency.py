"""Concurrency: decisions from several threads while scorers, campaigns and segment books are
hot-swapped, opt-outs and profile updates arrive, and spend, caps and win notices are counted.

What must hold:

- no errors, and no decision mixes two configurations: each decision equals exactly what a
  single-threaded Engine with *one* consistent configuration (the one its ``policy_version``
  names, with one of the segment books) decides for the same request;
- with a fixed configuration, decisions made by many threads equal those of a single-threaded
  run, request by request (configurations without caps and budgets, where order matters);
- spend and frequency-cap counts lose no update, and a budget or a cap is overrun by at most
  the requests in flight (one per thread);
- an opt-out registered while threads decide takes effect for every request that starts after
  the registration returns;
- profile updates folded in while threads decide leave the same state as without readers;
- with ``count_on="win"``, racing win and loss notices count each won impression exactly once.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np
import pytest

from bta.privacy import PrivacyPolicy
from bta.scoring import LinearScorer
from bta.serve import (
    Campaign, Creative, Decision, Engine, EpsilonGreedy, Experiment, FrequencyCap, Greedy,
    MemoryProfileStore, Softmax,
)
from test_fuzz import N_USERS, T0, make_world, world_book

N_THREADS = 4
H = 3_600_000
POLICIES = (Greedy(), Softmax(0.7), EpsilonGreedy(0.25))
FEATURES = ("count:page_view:autos:7d", "ctr:smoothed", "count:page_view:travel:7d",
            "decay:page_view:sports")


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    w = make_world()
    users = np.arange(N_USERS)
    w["books"] = [w["book"], world_book(users, seed=99), world_book(users, seed=123)]
    return w


def campaigns_of(kc: int) -> tuple[list[Campaign], Campaign]:
    """Configuration ``kc``: campaign and creative ids carry ``kc``, so a decision names the
    configuration it came from."""
    rule = ('segment("travelers")', "count:page_view:autos:7d >= 1",
            'segment("autos_fans") or ctr:smoothed > 0.05')[kc % 3]
    campaigns = [
        Campaign(f"v{kc}-rule", (Creative(f"v{kc}-rule-1"), Creative(f"v{kc}-rule-2")),
                 targeting=rule, bid=2.0 + 0.3 * kc),
        Campaign(f"v{kc}-model", (Creative(f"v{kc}-model-1"),), targeting="ctr:smoothed >= 0",
                 pricing="cpc", bid=1.5, model="m"),
        Campaign(f"v{kc}-ron", (Creative(f"v{kc}-ron-1"), Creative(f"v{kc}-ron-2")),
                 bid=0.5 + 0.1 * kc),
        Campaign(f"v{kc}-ron2", (Creative(f"v{kc}-ron2-1"),), bid=0.7),
    ]
    house = Campaign(f"v{kc}-house", (Creative(f"v{kc}-house-1"),), bid=0.1)
    return campaigns, house


def scorer_of(ks: int) -> LinearScorer:
    """Scorer ``ks``: its own features and weights, so its click probabilities differ."""
    names = [FEATURES[ks % 4], FEATURES[(ks + 1) % 4]]
    return LinearScorer([0.2 * (ks + 1), 0.5 - 0.1 * ks], intercept=-3.0 - 0.2 * ks,
                        feature_names=names)


def _engine(store: MemoryProfileStore, kc: int, ks: int, **kw: Any) -> Engine:
    campaigns, house = campaigns_of(kc)
    kw.setdefault("experiment", Experiment({"control": 0.2, "targeted": 0.8}))
    return Engine(campaigns, fallback=house, store=store, scorers={"m": scorer_of(ks)},
                  policy=POLICIES[kc % 3], time_budget_ms=600_000.0,
                  version=f"c{kc}-s{ks}", **kw).warmup()


def _run_threads(n: int, target: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    return errors


def _request(i: int, n: int, rng: np.random.Generator) -> dict[str, Any]:
    # users beyond N_USERS have no profile; a few times cover both sides of the 7-day windows
    return {"user_id": int(rng.integers(0, N_USERS + 3)), "request_id": f"t{i}-{n}",
            "ts": T0 + int(rng.choice([0, H, 3 * 24 * H]))}


def test_hot_swaps_never_mix_configurations(world):
    store = MemoryProfileStore(world["profiles"], world["books"][0])  # private: books change
    eng = _engine(store, 0, 0)
    done = threading.Barrier(N_THREADS + 1)  # the deciders and the swapper
    made: list[list[tuple[dict, Decision]]] = [[] for _ in range(N_THREADS)]
    per_thread = 500

    def decide(i: int) -> None:
        rng = np.random.default_rng(i)
        try:
            for n in range(per_thread):
                r = _request(i, n, rng)
                made[i].append((r, eng.decide(r)))
                if n % 50 == 0:
                    time.sleep(0.001)  # let the swapper in more often than the GIL would
        finally:
            done.wait()

    swapper_rng = np.random.default_rng(2024)
    swaps = {"c0-s0"}

    def swap_loop(_: int) -> None:
        kc, ks = 0, 0
        stop = threading.Thread(target=done.wait)
        stop.start()  # alive until every decider has finished
        while stop.is_alive():
            what = int(swapper_rng.integers(0, 4))
            if what in (0, 3):  # a new segment book (same names, new members)
                store.set_book(world["books"][int(swapper_rng.integers(0, 3))])
            if what in (0, 1):  # campaigns (and their policy)
                kc = int(swapper_rng.integers(0, 6))
            if what in (0, 2):  # the model alone
                ks = int(swapper_rng.integers(0, 4))
            campaigns, house = campaigns_of(kc)
            if what == 2:
                eng.swap(scorers={"m": scorer_of(ks)}, version=f"c{kc}-s{ks}")
            else:
                eng.swap(campaigns=campaigns, fallback=house, scorers={"m": scorer_of(ks)},
                         policy=POLICIES[kc % 3], version=f"c{kc}-s{ks}")
            swaps.add(f"c{kc}-s{ks}")
            time.sleep(0.002)

    errors = _run_threads(N_THREADS + 1, lambda i: swap_loop(i) if i == N_THREADS else
                          decide(i))
    assert not errors, errors
    decisions = [rd for m in made for rd in m]
    assert len(decisions) == N_THREADS * per_thread
    seen = {d.policy_version for _, d in decisions}
    assert seen <= swaps and len(seen) >= 5, seen

    # every decision is exactly that of one consistent configuration
    refs: dict[tuple[int, int, int], Engine] = {}

    def ref(kc: int, ks: int, b: int) -> Engine:
        if (kc, ks, b) not in refs:
            refs[kc, ks, b] = _engine(MemoryProfileStore(world["profiles"], world["books"][b]),
                                      kc, ks)
        return refs[kc, ks, b]

    n_targeted = 0
    for r, d in decisions:
        kc, ks = (int(x[1:]) for x in d.policy_version.split("-"))
        want = [ref(kc, ks, b).decide(r) for b in range(3)]
        assert d in want, (r, d, want)
        n_targeted += d.targeted
    assert n_targeted >= 50


def test_many_threads_equal_one_thread_for_a_fixed_configuration(world):
    store = world["store"]
    rng = np.random.default_rng(7)
    requests = [_request(0, n, rng) for n in range(1500)]
    single = {d.request_id: d for d in map(_engine(store, 1, 2).decide, requests)}
    assert len(single) == len(requests)

    eng = _engine(store, 1, 2)
    got: list[list[Decision]] = [[] for _ in range(N_THREADS)]

    def decide(i: int) -> None:  # thread i takes every N_THREADS-th request
        got[i].extend(eng.decide(r) for r in requests[i::N_THREADS])

    assert not _run_threads(N_THREADS, decide)
    threaded = {d.request_id: d for g in got for d in g}
    assert threaded == single
    assert sum(d.targeted for d in single.values()) >= 100

    # decide_batch from several threads at once: the same decisions again
    frames: list[Any] = [None] * N_THREADS

    def batch(i: int) -> None:
        frames[i] = eng.decide_batch(requests[i::N_THREADS])

    assert not _run_threads(N_THREADS, batch)
    for i, frame in enumerate(frames):
        want = [single[r["request_id"]] for r in requests[i::N_THREADS]]
        assert frame["request_id"].tolist() == [d.request_id for d in want]
        assert frame["campaign_id"].tolist() == [d.campaign_id for d in want]
        assert frame["creative_id"].tolist() == [d.creative_id for d in want]
        assert frame["reason"].tolist() == [d.reason for d in want]
        np.testing.assert_array_equal(frame["propensity"].to_numpy(),
                                      [d.propensity for d in want])


def test_spend_and_caps_lose_no_update_under_threads(world):
    capped = Campaign("capped", (Creative("capped-1"), Creative("capped-2")),
                      targeting="ctr:smoothed >= 0", bid=9.0,
                      caps=(FrequencyCap(3, "1d", "campaign"), FrequencyCap(2, "1d", "creative")))
    budgeted = Campaign("budgeted", (Creative("budgeted-1"),), bid=8.0, budget=0.2)
    ron = Campaign("ron", (Creative("ron-1"),), bid=1.0)
    eng = Engine([capped, budgeted, ron], fallback=Campaign("house", (Creative("h-1"),)),
                 store=world["store"], experiment=Experiment({"control": 0.0, "t": 1.0}),
                 time_budget_ms=600_000.0).warmup()
    per_thread = 300
    got: list[list[Decision]] = [[] for _ in range(N_THREADS)]

    def decide(i: int) -> None:
        for n in range(per_thread):
            # every thread hammers the same few users at the same time: caps race
            got[i].append(eng.decide({"user_id": n % 6, "ts": T0, "request_id": f"s{i}-{n}"}))

    assert not _run_threads(N_THREADS, decide)
    decisions = [d for g in got for d in g]
    spend = eng.spend()
    for cid in ("capped", "budgeted", "ron"):
        prices = [d.price for d in decisions if d.campaign_id == cid]
        # every impression is counted exactly once (no lost update)
        assert spend.get(cid, 0.0) == pytest.approx(sum(prices) / 1000.0, rel=1e-12), cid
    # a budget check and its spend are not one step: at most one request per thread overruns
    # (1e-9: the budget is reached by a float sum of 25 prices of 0.008)
    assert 0.2 - 1e-9 <= spend["budgeted"] <= 0.2 + N_THREADS * 8.0 / 1000.0 + 1e-9
    for u in range(6):
        mine = [d for d in decisions if d.user_id == u and d.campaign_id == "capped"]
        if world["store"].get(u, T0) is None:
            assert not mine
            continue
        assert 3 <= len(mine) <= 3 + N_THREADS - 1, (u, len(mine))
        for cr in ("capped-1", "capped-2"):
            n = sum(d.creative_id == cr for d in mine)
            assert n <= 2 + N_THREADS - 1, (u, cr, n)


def test_opt_out_under_threads_applies_to_every_later_request(world):
    policy = PrivacyPolicy()
    eng = _engine(world["store"], 2, 1, privacy=policy,
                  experiment=Experiment({"control": 0.0, "t": 1.0}))
    target = 4  # a user with a profile, targeted when allowed
    assert eng.decide({"user_id": target, "ts": T0}).targeted
    registered = threading.Event()
    t_registered: list[float] = []
    made: list[list[tuple[float, Decision]]] = [[] for _ in range(N_THREADS)]

    def decide(i: int) -> None:
        for n in range(400):
            t0 = time.monotonic()
            made[i].append((t0, eng.decide({"user_id": target, "ts": T0,
                                             "request_id": f"o{i}-{n}"})))
            if i == 0 and n == 100:
                policy.opt_outs.add(target)
                t_registered.append(time.monotonic())
                registered.set()

    assert not _run_threads(N_THREADS, decide)
    after = [d for m in made for t0, d in m if t0 > t_registered[0]]
    before = [d for m in made for t0, d in m if t0 < t_registered[0]]
    assert len(after) >= 200 and any(d.targeted for d in before)
    assert all(not d.targeted and d.reason == "fallback:opt_out" for d in after)


def test_profile_updates_while_deciding(world):
    """The event stream folds into the online profiles while threads decide: no errors, and the
    readers leave the state exactly as a run without readers would (same events, same order)."""
    import pandas as pd

    live, quiet = make_world(), make_world()  # private profiles: this test mutates them
    store = MemoryProfileStore(live["profiles"], live["book"])
    eng = _engine(store, 0, 0)
    rng = np.random.default_rng(3)
    n_users = 120  # users beyond the world's first appear during the run
    batches = [pd.DataFrame({
        "user_id": rng.integers(0, n_users, 40), "ts": T0 + k * 60_000 + np.arange(40),
        "event": rng.choice(["page_view", "ad_click"], 40, p=[0.9, 0.1]),
        "category": rng.choice(["autos", "travel", "sports"], 40)}) for k in range(60)]
    made: list[list[Decision]] = [[] for _ in range(N_THREADS)]

    def work(i: int) -> None:
        if i == N_THREADS:  # the updater
            for b in batches:
                store.update(b, ts_unit="ms")
            return
        r = np.random.default_rng(i)
        for n in range(400):
            made[i].append(eng.decide({"user_id": int(r.integers(0, n_users)),
                                       "ts": T0 + 61 * 60_000, "request_id": f"p{i}-{n}"}))

    assert not _run_threads(N_THREADS + 1, work)
    decisions = [d for m in made for d in m]
    assert all(d.reason != "fallback:error" for d in decisions)
    assert {"targeted", "fallback:no_profile"} <= {d.reason for d in decisions}
    for b in batches:
        quiet["profiles"].update(b, ts_unit="ms")
    quiet_store = MemoryProfileStore(quiet["profiles"], quiet["book"])
    for u in range(n_users):
        got, want = store.get(u, T0 + 61 * 60_000), quiet_store.get(u, T0 + 61 * 60_000)
        assert (got is None) == (want is None), u
        if want is not None:
            np.testing.assert_array_equal(got.indices, want.indices)
            np.testing.assert_array_equal(got.values, want.values)
    # and the decisions now are those of an engine that never saw a concurrent reader
    reqs = [{"user_id": u, "ts": T0 + 61 * 60_000, "request_id": f"q{u}"} for u in range(n_users)]
    assert [eng.decide(r) for r in reqs] == [_engine(quiet_store, 0, 0).decide(r) for r in reqs]


def test_win_notices_race_with_decisions_and_each_other(world):
    """``count_on="win"``: deciders, and two notifiers that both report every win (an exchange
    retrying its notice). Each win counts exactly once, a loss never, and the spend is the sum
    of the won prices."""
    capped = Campaign("capped", (Creative("capped-1"),), targeting="ctr:smoothed >= 0",
                      bid=9.0, caps=(FrequencyCap(1000, "1d", "campaign"),))
    ron = Campaign("ron", (Creative("ron-1"),), bid=1.0)
    eng = Engine([capped, ron], fallback=Campaign("house", (Creative("h-1"),)),
                 store=world["store"], experiment=Experiment({"control": 0.3, "t": 0.7}),
                 time_budget_ms=600_000.0, count_on="win").warmup()
    n_deciders, per_thread = 3, 300
    decided: list[list[Decision]] = [[] for _ in range(n_deciders)]
    notified: list[dict[str, bool]] = [{}, {}]

    def work(i: int) -> None:
        if i < n_deciders:
            for n in range(per_thread):
                decided[i].append(eng.decide({"user_id": n % N_USERS, "ts": T0,
                                              "request_id": f"w{i}-{n}"}))
            return
        mine = notified[i - n_deciders]  # a notifier: wins for even requests, losses for odd
        while len(mine) < n_deciders * per_thread:
            for d in [d for ds in decided for d in list(ds)]:  # the decisions made so far
                if d.request_id not in mine:
                    even = int(d.request_id.rsplit("-", 1)[1]) % 2 == 0
                    mine[d.request_id] = (eng.notify_win if even else
                                          eng.notify_loss)(d.request_id)
            time.sleep(0.001)

    assert not _run_threads(n_deciders + 2, work)
    decisions = {d.request_id: d for ds in decided for d in ds}
    assert len(decisions) == n_deciders * per_thread
    # every notice was answered True by exactly one of the two notifiers
    for rid in decisions:
        assert notified[0][rid] + notified[1][rid] == 1, rid
    assert eng.n_pending == 0
    won = [d for rid, d in decisions.items() if int(rid.rsplit("-", 1)[1]) % 2 == 0]
    spend = eng.spend()
    for cid in ("capped", "ron", "house"):
        want = sum(d.price for d in won if d.campaign_id == cid) / 1000.0
        assert spend.get(cid, 0.0) == pytest.approx(want, rel=1e-12, abs=1e-15), cid

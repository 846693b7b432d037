"""Faults under load: a real redis-server behind a RedisProfileStore is killed (SIGKILL) and
restarted, or hangs (SIGSTOP), while threads make decisions and a publisher writes profiles.

What must hold:

- no exception reaches a caller of ``Engine.decide``; during the outage every decision falls
  back (``fallback:store_error`` or ``fallback:timeout``) to an untargeted campaign;
- the store reconnects by itself: after the restart the same Engine and store make targeted
  decisions again, and the publisher's writes are acknowledged again;
- no profile write acknowledged before the outage is lost (the server runs with
  ``appendonly yes`` and ``appendfsync always``, so an acknowledged write is on disk);
- every call's latency is bounded by the store's timeouts (with a generous allowance for a
  loaded machine).

The server is a private process on a free loopback port with its data directory under the test's
``tmp_path``. Locally the tests skip when ``redis-server`` is not installed; under ``CI=true``
they fail instead (see ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest

from bta.errors import StoreError
from bta.serve import REASONS, Campaign, Creative, Engine, Experiment, RedisProfileStore
from test_fuzz import T0, make_world

pytestmark = pytest.mark.redis

#: Store timeouts of these tests (ms): short, so that an outage costs little per call, and long
#: enough that a healthy server on a loaded CI machine answers within them.
READ_TIMEOUT_MS = 500.0
CONNECT_TIMEOUT_MS = 500.0
WRITE_TIMEOUT_MS = 1000.0
#: Allowance on top of the timeouts for a loaded machine (threads wait for the GIL and the CPU).
SLACK_S = 2.5
FALLBACKS = {"fallback:store_error", "fallback:timeout"}
#: Writes acknowledged by the publisher go to users from here on, one fresh key per write, so
#: that a later write can never hide the loss of an earlier one.
WRITE_BASE = 1_000_000


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    return make_world()


def _engine(store: RedisProfileStore) -> Engine:
    everyone = Campaign("everyone", (Creative("e-1"),), targeting="ctr:smoothed >= 0", bid=5.0)
    ron = Campaign("ron", (Creative("r-1"),), bid=1.0)
    # the Engine's own time budget is wide: the store's socket timeouts are under test here
    return Engine([everyone, ron], fallback=Campaign("house", (Creative("h-1"),)), store=store,
                  experiment=Experiment({"control": 0.0, "targeted": 1.0}),
                  time_budget_ms=60_000.0).warmup()


class Load:
    """Decision threads and one publisher thread, recording every call with its times."""

    def __init__(self, engine: Engine, store: RedisProfileStore, users: list[int],
                 n_deciders: int = 3):
        self.engine, self.store, self.users = engine, store, users
        self.stop = threading.Event()
        self.decisions: list[tuple[float, float, Any]] = []
        self.writes: list[tuple[float, float, int, bool]] = []  # start, end, seq, acked
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._decide, args=(i,), daemon=True)
                        for i in range(n_deciders)]
        self.threads.append(threading.Thread(target=self._publish, daemon=True))

    def _decide(self, i: int) -> None:
        rng = np.random.default_rng(i)
        k = 0
        try:
            while not self.stop.is_set():
                u = self.users[int(rng.integers(0, len(self.users)))]
                t0 = time.monotonic()
                d = self.engine.decide({"user_id": u, "ts": T0, "request_id": f"d{i}-{k}"})
                t1 = time.monotonic()
                with self._lock:
                    self.decisions.append((t0, t1, d))
                k += 1
                time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001 - the main thread reports it
            self.errors.append(exc)

    def _publish(self) -> None:
        seq = 0
        try:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    self.store.put(WRITE_BASE + seq, [0], [float(seq)], as_of_ms=T0)
                    acked = True
                except StoreError:
                    acked = False  # not acknowledged: the publisher would retry it
                t1 = time.monotonic()
                with self._lock:
                    self.writes.append((t0, t1, seq, acked))
                seq += 1
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self.threads), "a load thread hangs"

    def wait_for(self, predicate, timeout_s: float = 20.0) -> bool:
        """Wait until ``predicate(decisions, writes)`` holds on what was recorded so far."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(list(self.decisions), list(self.writes)):
                    return True
            time.sleep(0.01)
        return False


def _targeted_after(t: float, n: int = 10):
    return lambda ds, ws: sum(1 for t0, _, d in ds if t0 >= t and d.reason == "targeted") >= n


def test_kill_and_restart_under_load(persistent_redis, world):
    store = RedisProfileStore.from_profiles(
        world["profiles"], world["book"], url=persistent_redis.url, prefix="faults",
        timeout_ms=READ_TIMEOUT_MS, connect_timeout_ms=CONNECT_TIMEOUT_MS,
        write_timeout_ms=WRITE_TIMEOUT_MS)
    users = [int(u) for u in world["profiles"].users]
    assert store.publish_from(world["profiles"], as_of=T0) == len(users)
    eng = _engine(store)
    bound_s = (CONNECT_TIMEOUT_MS + READ_TIMEOUT_MS) / 1000.0 + SLACK_S

    with Load(eng, store, users) as load:
        assert load.wait_for(lambda ds, ws: len(ds) >= 30 and sum(a for *_, a in ws) >= 5), \
            "the load did not get going"
        t_kill = time.monotonic()
        persistent_redis.stop()
        t_down = time.monotonic()  # the process is gone: every call from here on fails
        assert load.wait_for(lambda ds, ws: sum(1 for t0, _, _ in ds if t0 >= t_down) >= 30
                             and sum(1 for t0, *_ in ws if t0 >= t_down) >= 3)
        t_restart = time.monotonic()
        persistent_redis.start()  # same port, same directory: the AOF is replayed
        t_up = time.monotonic()
        reconnected = load.wait_for(_targeted_after(t_up))
        wrote_again = load.wait_for(lambda ds, ws: any(a and t0 >= t_up for t0, _, _, a in ws))

    assert not load.errors, load.errors
    assert reconnected, ("no targeted decision after the restart: the store did not "
                         "reconnect, or the published profiles were lost")
    assert wrote_again, "no write acknowledged after the restart"
    decisions = load.decisions
    for t0, t1, d in decisions:
        assert d.reason in REASONS and d.reason != "fallback:error", d
        assert t1 - t0 <= bound_s, (t1 - t0, d)
        if t1 <= t_kill:
            assert d.reason == "targeted" and d.campaign_id == "everyone", d
        if t0 >= t_down and t1 <= t_restart:
            assert d.reason in FALLBACKS and not d.targeted and d.campaign_id == "ron", d
    during = [d for t0, t1, d in decisions if t0 >= t_down and t1 <= t_restart]
    assert len(during) >= 30

    # writes: refused (StoreError) during the outage, acknowledged around it
    writes = load.writes
    assert all(not a for t0, t1, _, a in writes if t0 >= t_down and t1 <= t_restart)
    for t0, t1, _, _ in writes:
        assert t1 - t0 <= WRITE_TIMEOUT_MS / 1000.0 + CONNECT_TIMEOUT_MS / 1000.0 + SLACK_S
    # no acknowledged write is lost, and the published profiles came back from the AOF
    acked = [seq for *_, seq, a in writes if a]
    before = [seq for t0, t1, seq, a in writes if a and t1 <= t_kill]
    assert before, "no write was acknowledged before the outage"
    got = store.get_many([WRITE_BASE + s for s in acked])
    lost = [s for s, p in zip(acked, got) if p is None or p.values.tolist() != [float(s)]]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. seq {lost[:5]}"
    memory = world["store"]
    for u in users:
        got, want = store.get(u), memory.get(u, T0)
        np.testing.assert_array_equal(np.sort(got.indices), np.sort(want.indices))
        np.testing.assert_array_equal(got.values[np.argsort(got.indices)],
                                      want.values[np.argsort(want.indices)])
        np.testing.assert_array_equal(got.segments, want.segments)


def test_hung_server_under_load_is_bounded_by_the_timeout(persistent_redis, world):
    """SIGSTOP: the server accepts connections and never answers. Every decision waits at most
    about one read timeout, falls back, and targeting resumes after SIGCONT."""
    store = RedisProfileStore.from_profiles(
        world["profiles"], world["book"], url=persistent_redis.url, prefix="hung",
        timeout_ms=READ_TIMEOUT_MS, connect_timeout_ms=CONNECT_TIMEOUT_MS,
        write_timeout_ms=WRITE_TIMEOUT_MS)
    users = [int(u) for u in world["profiles"].users]
    store.publish_from(world["profiles"], as_of=T0)
    eng = _engine(store)
    pid = persistent_redis.proc.pid
    with Load(eng, store, users) as load:
        assert load.wait_for(lambda ds, ws: len(ds) >= 20)
        t_stop = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            hung = load.wait_for(lambda ds, ws: sum(1 for t0, _, _ in ds if t0 >= t_stop) >= 12)
            t_cont = time.monotonic()
        finally:
            os.kill(pid, signal.SIGCONT)
        t_resumed = time.monotonic()
        resumed = load.wait_for(_targeted_after(t_resumed))
    assert not load.errors, load.errors
    assert hung and resumed
    during = [(t1 - t0, d) for t0, t1, d in load.decisions if t0 >= t_stop and t1 <= t_cont]
    assert len(during) >= 12
    for latency, d in during:
        assert d.reason in FALLBACKS and not d.targeted, d
        # one read timeout (no retries), or a connect timeout for a new connection
        assert latency <= max(READ_TIMEOUT_MS, CONNECT_TIMEOUT_MS) / 1000.0 + SLACK_S, latency
    # each call waited for the socket timeout: the fallback came from the timeout firing, not
    # from an error that happened to arrive early
    assert min(lat for lat, _ in during) >= 0.9 * READ_TIMEOUT_MS / 1000.0


def test_outage_between_calls_raises_store_error_for_writes_and_erasure(persistent_redis, world):
    """Writers learn of an outage (StoreError, never silence): a publish or an erasure that did
    not happen must be retried by the caller."""
    store = RedisProfileStore.from_profiles(
        world["profiles"], world["book"], url=persistent_redis.url, prefix="writes",
        timeout_ms=READ_TIMEOUT_MS, connect_timeout_ms=CONNECT_TIMEOUT_MS,
        write_timeout_ms=WRITE_TIMEOUT_MS)
    store.publish_from(world["profiles"], as_of=T0)
    u = int(world["profiles"].users[0])
    persistent_redis.stop()
    with pytest.raises(StoreError, match="Redis write of .* failed"):
        store.publish_from(world["profiles"], as_of=T0)
    with pytest.raises(StoreError, match="Redis write of 1 profiles failed"):
        store.put(u, [0], [1.0])
    with pytest.raises(StoreError, match=f"Redis erase of user {u} failed"):
        store.erase(u)
    with pytest.raises(StoreError, match="Redis read of .* failed"):
        store.get(u)
    persistent_redis.start()
    assert store.get(u) is not None  # the earlier publish survived the kill
    assert store.erase(u) is True and store.get(u) is None


def test_corrupt_values_fall_back_for_that_user_only(persistent_redis, world):
    """A value that is not a profile of this layout (another writer, a truncated copy) is a
    store error for that user's requests, never an exception and never a wrong profile."""
    import redis

    store = RedisProfileStore.from_profiles(
        world["profiles"], world["book"], url=persistent_redis.url, prefix="corrupt",
        timeout_ms=READ_TIMEOUT_MS, connect_timeout_ms=CONNECT_TIMEOUT_MS)
    users = [int(u) for u in world["profiles"].users]
    store.publish_from(world["profiles"], as_of=T0)
    eng = _engine(store)
    client = redis.Redis.from_url(persistent_redis.url)
    try:
        good = client.get(store.key(users[1]))
        for bad in (b"", b"not a profile", good[:-1], good + b"\x00", b"btap" + good[4:10]):
            client.set(store.key(users[0]), bad)
            d = eng.decide({"user_id": users[0], "ts": T0})
            assert (d.reason, d.targeted, d.campaign_id) == ("fallback:store_error", False,
                                                            "ron"), bad
            assert eng.decide({"user_id": users[1], "ts": T0}).reason == "targeted"
    finally:
        client.close()

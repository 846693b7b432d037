"""A bounded load test of the example HTTP ad server (``examples/adserver.py``) on localhost.

The server (``make_server``, one thread per connection) runs in a thread of this process, over
the example's Engine on simulated users. A few client threads, each on one kept-alive
``http.client`` connection, send a fixed number of OpenRTB 2.6 bid requests (two impressions
each, users drawn from the simulated population plus unknown ones, a share with a TCF consent
string, opted-out users among them); the run stops by itself when every request is answered.
It reports throughput (requests/s), wall latency p50/p99 seen by the clients, and errors, and
asserts that there are no errors and that every response is a valid BidResponse.

Before timing, a sample of requests is sent over HTTP and each response is compared with
``decide_openrtb`` called in-process on the same request: the HTTP layer must add nothing and
lose nothing.

Sizes: ``BTA_BENCH_SCALE`` (default 0.01, the CI smoke run: 400 requests from 4 clients over
500 users); at 1.0, 40,000 requests from 8 clients over 20,000 users::

    BTA_BENCH_SCALE=1 python -m pytest benchmarks/test_bench_http.py -p no:randomly -s

Client and server share the machine's cores and the GIL of one process, so the figures are a
floor for a server running on its own.
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bta.privacy import OptOutRegistry
from bta.serve import REASONS, decide_openrtb
from _data import bench_scale, report_line

_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "adserver.py"
N_CHECK = 40  # requests compared with the in-process answer before timing


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tcf_string(purposes: set[int]) -> str:
    """A TCF v2 consent string granting ``purposes``, from the tests' encoder (the library
    decodes consent strings; it has no reason to write them)."""
    tests = Path(__file__).resolve().parents[1] / "tests" / "test_openrtb.py"
    return _load(tests, "_bta_tests_openrtb_encoder").tcf_string(purposes)


def _sizes() -> tuple[int, int, int]:
    """(requests, client threads, simulated users) at the current scale."""
    s = bench_scale()
    return max(400, int(40_000 * s)), 8 if s >= 0.5 else 4, max(500, int(20_000 * s))


def _report(request: pytest.FixtureRequest, line: str) -> None:
    report_line(request, "bta http", line)


def _bid_requests(n: int, n_users: int, consent: str, seed: int, distinct: bool = False
                  ) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    # a few ids beyond the population: users without a profile
    pool = n_users + n_users // 20
    users = rng.permutation(pool)[:n] if distinct else rng.integers(0, pool, n)
    out = []
    for i, u in enumerate(users.tolist()):
        req: dict[str, Any] = {"id": f"load-{seed}-{i}", "imp": [{"id": "1"}, {"id": "2"}],
                               "user": {"id": str(u)}, "site": {"cat": ["IAB2"]}}
        if rng.random() < 0.5:  # GDPR applies and the user granted purposes 1-4
            req["regs"] = {"gdpr": 1}
            req["user"]["consent"] = consent
        out.append(req)
    return out


def _check_response(req: dict[str, Any], status: int, body: bytes, creatives: dict) -> str | None:
    """None for a valid BidResponse to ``req``, else what is wrong."""
    if status != 200:
        return f"status {status}"
    try:
        resp = json.loads(body)
    except ValueError:
        return "body is not JSON"
    if resp.get("id") != req["id"] or resp.get("nbr") is not None:
        return f"id or nbr wrong: {str(resp)[:200]}"
    bids = resp["seatbid"][0]["bid"] if resp.get("seatbid") else []
    if sorted(b.get("impid") for b in bids) != ["1", "2"]:
        return f"impids {[b.get('impid') for b in bids]}"
    for b in bids:
        f = b.get("ext", {}).get("bta", {})
        if not (isinstance(b.get("price"), float) and math.isfinite(b["price"])
                and b["price"] > 0 and b.get("crid") in creatives.get(b.get("cid"), ())
                and f.get("reason") in REASONS and f.get("reason") != "fallback:error"
                and 0.0 < f.get("propensity", 0) <= 1.0):
            return f"invalid bid {str(b)[:300]}"
    return None


@pytest.fixture(scope="module")
def adserver():
    if not _EXAMPLE.exists():
        pytest.fail(f"the example ad server is missing: {_EXAMPLE.name}")
    return _load(_EXAMPLE, "bta_example_adserver_bench")


def test_http_adserver_load(benchmark, request, adserver):
    n_requests, n_clients, n_users = _sizes()
    registry = OptOutRegistry(str(u) for u in range(0, n_users, 10))  # every tenth user
    engine = adserver.build_engine(n_users=n_users, days=10, seed=5, opt_outs=registry)
    creatives = {c.id: {cr.id for cr in c.creatives}
                 for c in (*engine.campaigns, engine.fallback)}
    consent = _tcf_string({1, 2, 3, 4})
    server = adserver.make_server(engine)
    port = server.server_address[1]
    thread = adserver.serve_in_thread(server)
    try:
        # ---- check before timing: HTTP answers exactly what the library answers --------------
        conn = HTTPConnection("127.0.0.1", port, timeout=30)
        for req in _bid_requests(N_CHECK, n_users, consent, seed=99, distinct=True):
            conn.request("POST", adserver.AUCTION_PATH, json.dumps(req),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            assert _check_response(req, resp.status, body, creatives) is None, body[:300]
            # the same request in-process: the same decision again (users are distinct, so
            # these 4 impressions per user stay under the example's cap of 5 a day)
            want = decide_openrtb(engine, req)
            got = json.loads(body)
            for g, w in zip(got["seatbid"][0]["bid"], want["seatbid"][0]["bid"]):
                keys = ("impid", "cid", "crid", "price")
                assert [g[k] for k in keys] == [w[k] for k in keys], (g, w)
                for k in ("reason", "targeted", "propensity", "arm", "policy_version"):
                    assert g["ext"]["bta"][k] == w["ext"]["bta"][k], (k, g, w)
        conn.close()

        # ---- the load -------------------------------------------------------------------------
        reqs = _bid_requests(n_requests, n_users, consent, seed=1)
        bodies = [json.dumps(r).encode() for r in reqs]
        lat = np.full(n_requests, np.nan)
        problems: list[str] = []
        reasons: list[str] = []
        lock = threading.Lock()

        def client(k: int) -> None:
            c = HTTPConnection("127.0.0.1", port, timeout=30)
            mine: list[str] = []
            try:
                for i in range(k, n_requests, n_clients):
                    t0 = time.perf_counter()
                    try:
                        c.request("POST", adserver.AUCTION_PATH, bodies[i],
                                  {"Content-Type": "application/json"})
                        r = c.getresponse()
                        body = r.read()
                    except Exception as exc:  # noqa: BLE001 - counted as an error
                        with lock:
                            problems.append(f"request {i}: {type(exc).__name__}: {exc}")
                        c.close()
                        c = HTTPConnection("127.0.0.1", port, timeout=30)
                        continue
                    lat[i] = time.perf_counter() - t0
                    bad = _check_response(reqs[i], r.status, body, creatives)
                    if bad is not None:
                        with lock:
                            problems.append(f"request {i}: {bad}")
                    else:
                        mine.extend(b["ext"]["bta"]["reason"]
                                    for b in json.loads(body)["seatbid"][0]["bid"])
            finally:
                c.close()
                with lock:
                    reasons.extend(mine)

        wall: dict[str, float] = {}

        def run() -> None:
            threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=600)
            wall["s"] = time.perf_counter() - t0
            assert not any(t.is_alive() for t in threads), "a client hangs"

        benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    assert not problems, problems[:10]
    assert np.isfinite(lat).all()
    assert len(reasons) == 2 * n_requests
    # the load exercised the privacy gate and targeting both
    assert "fallback:opt_out" in reasons and "targeted" in reasons
    rate = n_requests / wall["s"]
    p50, p99 = np.percentile(lat * 1e3, [50, 99])
    benchmark.extra_info.update(requests=n_requests, clients=n_clients, users=n_users,
                                requests_per_s=rate, p50_ms=float(p50), p99_ms=float(p99),
                                errors=len(problems))
    _report(request, f"{n_requests:,} bid requests (2 impressions each) from {n_clients} "
                     f"kept-alive clients in {wall['s']:.2f} s: {rate:,.0f} requests/s, "
                     f"latency p50 {p50:.2f} ms, p99 {p99:.2f} ms, errors {len(problems)} "
                     f"({n_users:,} users, scale {bench_scale():g})")

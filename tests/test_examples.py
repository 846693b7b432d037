"""The examples run: the OpenRTB ad server over real HTTP on localhost, and the offline notebook.

The ad server is exercised with ``http.client`` against a server started by ``make_server`` in
a thread: valid bid requests (targeted and control arms checked against the Engine's own
experiment and segment book), malformed JSON (400, and the server keeps serving), a missing
consent under GDPR, an opted-out user, no-bids (204), oversized bodies, concurrent clients,
and arbitrary bodies that must never break the server.
"""

from __future__ import annotations

import importlib.util
import json
import runpy
import socket
import sys
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bta_example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(mod)
    return mod


adserver = _load("adserver")


@pytest.fixture(scope="module")
def served():
    """(engine, opt-out registry, port) of a running server; stopped after the module."""
    from bta.privacy import OptOutRegistry

    registry = OptOutRegistry()
    engine = adserver.build_engine(n_users=1500, days=10, seed=3, opt_outs=registry)
    server = adserver.make_server(engine)
    thread = adserver.serve_in_thread(server)
    yield engine, registry, server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def _post(port: int, body: bytes | str, path: str = adserver.AUCTION_PATH,
          conn: HTTPConnection | None = None, headers: dict | None = None):
    c = conn or HTTPConnection("127.0.0.1", port, timeout=10)
    data = body.encode() if isinstance(body, str) else body
    c.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    raw = r.read()
    if conn is None:
        c.close()
    return r.status, dict(r.getheaders()), raw


def _bid_request(user_id: str | None, rid: str = "r1", **over) -> str:
    req = {"id": rid, "imp": [{"id": "1"}], **over}
    if user_id is not None:
        req.setdefault("user", {})["id"] = user_id
    return json.dumps(req)


def _users(engine, arm: str, with_segments: bool):
    """Simulated users in ``arm`` that do (or do not) belong to some segment."""
    book = engine.store.book
    out = []
    for u in book.users.tolist():
        if engine.experiment.assign(u) == arm and bool(book.segments_of(u)) == with_segments:
            out.append(u)
    assert out, f"the fixture world has no {arm} user with_segments={with_segments}"
    return out


def _bid(raw: bytes) -> dict:
    resp = json.loads(raw)
    (seat,) = resp["seatbid"]
    (bid,) = seat["bid"]
    return bid


def test_healthz_and_unknown_paths(served):
    engine, _, port = served
    c = HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", adserver.HEALTH_PATH)
    r = c.getresponse()
    assert r.status == 200
    assert json.loads(r.read()) == {"status": "ok", "version": engine.version}
    c.request("GET", "/nope")
    r = c.getresponse()
    assert r.status == 404 and "error" in json.loads(r.read())
    status, _, raw = _post(port, _bid_request("1"), path="/openrtb2/other")
    assert status == 404


def test_targeted_user_gets_a_campaign_of_one_of_their_segments(served):
    engine, _, port = served
    book = engine.store.book
    for u in _users(engine, "targeted", with_segments=True)[:20]:
        status, headers, raw = _post(port, _bid_request(str(u), rid=f"t{u}"))
        assert status == 200
        assert headers["X-Openrtb-Version"] == "2.6"
        resp = json.loads(raw)
        assert resp["id"] == f"t{u}" and resp["cur"] == "USD"
        bid = _bid(raw)
        ext = bid["ext"]["bta"]
        assert bid["impid"] == "1" and bid["id"] == f"t{u}:1"
        assert ext["arm"] == "targeted"
        assert ext["reason"] in ("targeted", "fallback:no_eligible")
        if ext["reason"] == "targeted":
            # the only targeted campaigns are cpc-{category}, each on segment {category}_readers
            cat = bid["cid"].removeprefix("cpc-")
            assert f"{cat}_readers" in book.segments_of(u)
            assert ext["targeted"] is True
        assert bid["crid"] == bid["adid"] == ext["creative_id"]
        assert bid["price"] == pytest.approx(ext["price"])
        assert 0 < ext["propensity"] <= 1


def test_control_user_gets_an_untargeted_bid(served):
    engine, _, port = served
    for u in _users(engine, "control", with_segments=True)[:10]:
        status, _, raw = _post(port, _bid_request(str(u)))
        assert status == 200
        ext = _bid(raw)["ext"]["bta"]
        assert (ext["arm"], ext["reason"], ext["targeted"]) == ("control", "control", False)
        assert ext["campaign_id"] in ("ron-1", "ron-2")


def test_malformed_json_is_400_and_the_server_keeps_serving(served):
    _, _, port = served
    c = HTTPConnection("127.0.0.1", port, timeout=10)
    for body in (b"{bad", b"", b"\xff\xfe\x00garbage", b'{"id": "r1", "imp": [', b"[1, 2"):
        status, headers, raw = _post(port, body, conn=c)
        assert status == 400, body
        assert json.loads(raw)["error"].startswith("body is not JSON")
    # the same kept-alive connection still answers valid requests
    status, _, raw = _post(port, _bid_request("7"), conn=c)
    assert status == 200 and _bid(raw)["impid"] == "1"
    c.close()


@pytest.mark.parametrize("body, nbr, reason", [
    (json.dumps([1, 2, 3]), "2", "fallback:bad_request"),         # JSON, but not an object
    (json.dumps({"imp": [{"id": "1"}]}), "2", "fallback:bad_request"),  # no request id
    (json.dumps({"id": "r1", "imp": []}), "2", "fallback:bad_request"),
    (json.dumps({"id": "r1", "imp": [{"id": "1", "bidfloor": 1e6}], "user": {"id": "3"}}),
     "0", "below_floor"),
])
def test_no_bid_is_204_with_the_reason_in_headers(served, body, nbr, reason):
    _, _, port = served
    status, headers, raw = _post(port, body)
    assert (status, raw) == (204, b"")
    assert (headers["X-Bta-Nbr"], headers["X-Bta-Reason"]) == (nbr, reason)


def test_missing_consent_under_gdpr_gets_an_untargeted_bid(served):
    engine, _, port = served
    u = str(_users(engine, "targeted", with_segments=True)[0])
    status, _, raw = _post(port, _bid_request(u, regs={"gdpr": 1}))
    assert status == 200
    ext = _bid(raw)["ext"]["bta"]
    assert (ext["arm"], ext["reason"], ext["targeted"]) == \
        ("targeted", "fallback:no_consent", False)
    # without the regulation the same user is profiled again
    status, _, raw = _post(port, _bid_request(u, regs={"gdpr": 0}))
    assert _bid(raw)["ext"]["bta"]["reason"] != "fallback:no_consent"


def test_opted_out_user_is_not_targeted(served):
    engine, registry, port = served
    users = [str(u) for u in _users(engine, "targeted", with_segments=True)[:5]]
    before = [_bid(_post(port, _bid_request(u))[2])["ext"]["bta"]["reason"] for u in users]
    assert all(r != "fallback:opt_out" for r in before)
    for u in users:
        registry.add(u)
    try:
        for u in users:
            status, _, raw = _post(port, _bid_request(u))
            assert status == 200
            ext = _bid(raw)["ext"]["bta"]
            assert (ext["reason"], ext["targeted"]) == ("fallback:opt_out", False)
        # the exchange's own opt-out signals work too (us_privacy "1YYN": opted out of sale)
        other = str(_users(engine, "targeted", with_segments=True)[10])
        status, _, raw = _post(port, _bid_request(other, regs={"us_privacy": "1YYN"}))
        assert _bid(raw)["ext"]["bta"]["reason"] == "fallback:opt_out"
    finally:
        for u in users:
            registry.remove(u)


def test_unknown_user_gets_the_untargeted_fallback(served):
    engine, _, port = served
    u = next(f"stranger{i}" for i in range(1000)
             if engine.experiment.assign(f"stranger{i}") == "targeted")
    ext = _bid(_post(port, _bid_request(u))[2])["ext"]["bta"]
    assert (ext["reason"], ext["targeted"]) == ("fallback:no_profile", False)


def test_oversized_and_unlengthed_bodies_are_refused(served):
    _, _, port = served
    # a body several times the socket buffers: the client is still writing when the answer
    # comes, and must still get it (not a broken pipe or a reset)
    big = json.dumps({"id": "r1", "imp": [{"id": "1"}],
                      "pad": "x" * (8 * adserver.DEFAULT_MAX_BODY)})
    for _ in range(3):
        status, _, raw = _post(port, big)
        assert status == 413 and "exceeds" in json.loads(raw)["error"]
    c = HTTPConnection("127.0.0.1", port, timeout=10)
    c.putrequest("POST", adserver.AUCTION_PATH)
    c.endheaders()
    r = c.getresponse()
    assert r.status == 411
    c.close()
    assert _post(port, _bid_request("1"))[0] == 200


def _raw_exchange(port: int, head: str) -> bytes:
    """Send ``head`` on a new connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode())
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
    return got


def test_a_refusal_closes_a_kept_alive_connection(served):
    _, _, port = served
    c = HTTPConnection("127.0.0.1", port, timeout=10)
    c.putrequest("POST", adserver.AUCTION_PATH)
    c.putheader("Content-Length", str(adserver.DEFAULT_MAX_BODY + 1))
    c.endheaders()  # the body is never sent: the answer must come, and the close with it
    r = c.getresponse()
    assert r.status == 413 and r.getheader("Connection") == "close" and r.will_close
    r.read()
    c.close()


def test_expect_100_continue_gets_the_refusal_instead_of_an_invitation(served):
    _, _, port = served
    head = (f"POST {adserver.AUCTION_PATH} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            f"Content-Length: {adserver.DEFAULT_MAX_BODY + 1}\r\n\r\n")
    got = _raw_exchange(port, head)
    assert got.startswith(b"HTTP/1.1 413") and b"100 Continue" not in got
    body = json.dumps({"id": "r1", "imp": [{"id": "1"}]})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((f"POST {adserver.AUCTION_PATH} HTTP/1.1\r\nHost: x\r\n"
                   f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n").encode())
        assert s.recv(1 << 16).startswith(b"HTTP/1.1 100 Continue")  # a body we will read
        s.sendall(body.encode())
        assert s.recv(1 << 16).split(b"\r\n", 1)[0] in (b"HTTP/1.1 200 OK",
                                                           b"HTTP/1.1 204 No Content")


def test_a_refused_client_that_keeps_sending_is_cut_off_after_the_linger(served, monkeypatch):
    _, _, port = served
    monkeypatch.setattr(adserver, "LINGER_SECONDS", 0.3)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST {adserver.AUCTION_PATH} HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Length: {10 * adserver.DEFAULT_MAX_BODY}\r\n\r\n".encode())
        got = b""
        while chunk := s.recv(1 << 16):  # the answer, then the end of the server's sending
            got += chunk
        assert got.startswith(b"HTTP/1.1 413")
        # the server still reads (and drops) what comes, but only for the linger time
        t0 = time.monotonic()
        with pytest.raises(OSError):  # a reset once the server closes
            while time.monotonic() - t0 < 10:
                s.sendall(b"x" * 1024)
                time.sleep(0.01)
        assert time.monotonic() - t0 < 5
    assert _post(port, _bid_request("1"))[0] == 200


def test_concurrent_clients_all_get_answers(served):
    engine, _, port = served
    users = [str(u) for u in engine.store.book.users.tolist()[:200]]
    results: list[tuple[int, str, str]] = []
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            c = HTTPConnection("127.0.0.1", port, timeout=30)
            for i, u in enumerate(users[k::8]):
                status, _, raw = _post(port, _bid_request(u, rid=f"c{k}-{i}"), conn=c)
                results.append((status, json.loads(raw)["id"], f"c{k}-{i}"))
            c.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(results) == len(users)
    assert all(s == 200 and got == want for s, got, want in results)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                 | st.text(max_size=20),
                 lambda kids: st.lists(kids, max_size=3)
                 | st.dictionaries(st.sampled_from(["id", "imp", "user", "regs", "device",
                                                    "site", "bidfloor", "consent", "gdpr"]),
                                   kids, max_size=4),
                 max_leaves=12).map(lambda x: json.dumps(x).encode())))
def test_any_body_gets_a_clean_answer(served, body):
    _, _, port = served
    status, headers, raw = _post(port, body)
    assert status in (200, 204, 400)
    if status == 200:
        assert json.loads(raw)["seatbid"][0]["bid"]
    elif status == 204:
        assert headers["X-Bta-Nbr"] in ("0", "1", "2")


def test_make_server_rejects_bad_arguments():
    with pytest.raises(TypeError, match="engine must be a bta Engine"):
        adserver.make_server(object())


def test_offline_experiment_notebook_runs(monkeypatch, capsys):
    from bta.evaluate import ab_report

    monkeypatch.setenv("BTA_EXAMPLE_USERS", "2500")
    monkeypatch.setenv("BTA_EXAMPLE_DAYS", "10")
    monkeypatch.setenv("BTA_EXAMPLE_SEED", "2")
    ns = runpy.run_path(str(EXAMPLES / "offline_experiment.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "history:" in out and "campaigns (" in out and "sample ratio mismatch" in out
    # the notebook's objects are the real pipeline's: the report is the evaluator's on its log
    decisions, report = ns["decisions"], ns["report"]
    assert set(decisions["arm"]) == {"control", "targeted"}
    assert not decisions.loc[decisions["arm"] == "control", "targeted"].any()
    assert decisions.loc[decisions["arm"] == "targeted", "targeted"].any()
    again = ab_report(decisions, control="control", cost=None,
                      expected_weights=ns["result"].expected_weights)
    pd.testing.assert_frame_equal(report.arm_table(), again.arm_table())
    assert report.arm_table().loc["control", "impressions"] == \
        (decisions["arm"] == "control").sum()
    # every targeted campaign targets an activatable segment of the notebook's book
    book = ns["book"]
    for c in ns["campaigns"]:
        if c.targeting is not None:
            assert book.is_activatable(c.targeting.split('"')[1])

"""A small ad server: OpenRTB 2.6 bid requests over HTTP, answered by a bta Engine.

Run it::

    python examples/adserver.py --port 8080                 # an Engine on simulated users
    python examples/adserver.py --config engine.toml        # an Engine from a config file

and send a bid request::

    curl -s localhost:8080/openrtb2/auction -d '{"id": "r1", "imp": [{"id": "1"}],
                                                 "user": {"id": "42"}}'

Endpoints:

- ``POST /openrtb2/auction``: a BidRequest (JSON) -> ``200`` with a BidResponse, or ``204``
  (no content) for a no-bid, with the OpenRTB no-bid reason code in the ``X-Bta-Nbr`` header
  and bta's reason in ``X-Bta-Reason``. A body that is not JSON gets ``400`` with a JSON
  ``{"error": ...}``; a body over ``max_body`` bytes gets ``413`` and a request without a
  ``Content-Length`` gets ``411``, each unread and with ``Connection: close`` (to a client
  that sent ``Expect: 100-continue``, instead of the invitation to send the body): the server
  then closes the connection after reading and dropping what the client still sends (at most
  ``LINGER_SECONDS``), so that a client still writing its body reads the refusal instead of
  a reset. The server keeps serving
  after any of them: :func:`bta.serve.decide_openrtb` never raises on request data.
- ``GET /healthz``: ``200 {"status": "ok", "version": ...}``.

Only the standard library and bta are used. :func:`make_server` is the API for tests and load
tests: it returns a bound ``ThreadingHTTPServer`` that the caller runs (``serve_forever``) in a
thread and stops (``shutdown`` then ``server_close``).
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Sequence

from bta.serve import Engine, decide_openrtb

__all__ = ["make_server", "build_engine", "serve_in_thread", "AUCTION_PATH", "HEALTH_PATH"]

logger = logging.getLogger("bta.examples.adserver")

AUCTION_PATH = "/openrtb2/auction"
HEALTH_PATH = "/healthz"
#: Largest accepted request body. Real bid requests are a few kilobytes; the cap keeps one
#: client from making the server buffer arbitrary amounts of memory.
DEFAULT_MAX_BODY = 1 << 20
#: After refusing a body (411, 413), how long and how many bytes the server keeps reading and
#: discarding what the client still sends, so that the client can read the refusal.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 20


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, which is how exchanges and load generators talk to a
    # bidder; every response therefore states its length (or is a bodiless 204)
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes; with Nagle's algorithm on, the body waits for
    # the client's delayed ACK (~40 ms on Linux), which would dominate every response
    disable_nagle_algorithm = True
    server: "_Server"

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if status != HTTPStatus.NO_CONTENT:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _refuse(self, status: int, error: str) -> None:
        """Answer ``status`` without reading the body, then close the connection gracefully.

        The unread body would be taken for the next request, so the connection must close. A
        plain close with unread bytes in the receive buffer makes the kernel send a reset, and
        a client still writing its body then gets "broken pipe" instead of this answer. So,
        like web servers' "lingering close": send the answer, shut down our sending side, and
        read and discard what the client still sends (bounded in bytes and time) until it
        closes, so that it can finish writing and read the answer.
        """
        self.close_connection = True
        sock = self.connection
        try:
            # "Connection: close" tells a keep-alive client to close once it has the answer,
            # which ends the linger at once
            self._send(status, {"error": error}, {"Connection": "close"})
            self.wfile.flush()
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            left = LINGER_BYTES
            while left > 0:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                sock.settimeout(wait)
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:  # the client closed: it has read the answer
                    break
                left -= len(chunk)
        except OSError:  # a reset or a timeout: the client is gone or too slow; close anyway
            pass

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        if self.path.split("?", 1)[0] == HEALTH_PATH:
            self._send(HTTPStatus.OK, {"status": "ok", "version": self.server.engine.version})
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path: {self.path[:100]}"})

    def _body_length(self) -> int | None:
        """The request's body length, or None after refusing it (411, 413)."""
        length = self.headers.get("Content-Length")
        try:
            n = int(length) if length is not None else -1
        except ValueError:
            n = -1
        if n < 0:
            # without a length the request body cannot be delimited on a kept-alive connection
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return None
        if n > self.server.max_body:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"body of {n} bytes exceeds {self.server.max_body}")
            return None
        return n

    def handle_expect_100(self) -> bool:
        # "Expect: 100-continue": refuse a body we will not read before inviting it
        if self.command == "POST" and self._body_length() is None:
            return False
        return super().handle_expect_100()

    def do_POST(self) -> None:  # noqa: N802
        n = self._body_length()
        if n is None:
            return
        raw = self.rfile.read(n)
        if self.path.split("?", 1)[0] != AUCTION_PATH:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path: {self.path[:100]}"})
            return
        try:
            req = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": f"body is not JSON: {exc}"})
            return
        resp = decide_openrtb(self.server.engine, req)
        if not resp.get("seatbid"):
            info = resp.get("ext", {}).get("bta", {})
            self._send(HTTPStatus.NO_CONTENT, headers={
                "X-Bta-Nbr": str(resp.get("nbr", 0)),
                "X-Bta-Reason": str(info.get("reason", "")),
            })
            return
        self._send(HTTPStatus.OK, resp, {"X-Openrtb-Version": "2.6"})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        # one line per request would dominate the cost of a decision; keep it at debug level
        logger.debug("%s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Engine, max_body: int):
        self.engine = engine
        self.max_body = max_body
        super().__init__(address, _Handler)


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 0, *,
                max_body: int = DEFAULT_MAX_BODY) -> ThreadingHTTPServer:
    """An HTTP server answering OpenRTB bid requests with ``engine``, bound but not running.

    Parameters
    ----------
    engine : Engine
        Warm it up (:meth:`Engine.warmup`) before serving so no request waits for compilation.
    host : str, default "127.0.0.1"
    port : int, default 0
        0 picks a free port; read it from ``server.server_address[1]``.
    max_body : int, default 1 MiB
        Largest request body accepted (larger: ``413``).

    Returns
    -------
    http.server.ThreadingHTTPServer
        Run it with ``serve_forever()`` (one thread per connection); stop it with
        ``shutdown()`` from another thread, then ``server_close()``.

    Examples
    --------
    >>> server = make_server(engine)                                  # doctest: +SKIP
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
    >>> url = f"http://127.0.0.1:{server.server_address[1]}/openrtb2/auction"  # doctest: +SKIP
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"engine must be a bta Engine, got {type(engine).__name__}")
    if not (isinstance(max_body, int) and max_body > 0):
        raise ValueError(f"max_body must be a positive integer, got {max_body!r}")
    return _Server((host, port), engine, max_body)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Start ``server.serve_forever`` in a daemon thread and return the thread."""
    t = threading.Thread(target=server.serve_forever, name="adserver", daemon=True)
    t.start()
    return t


def build_engine(n_users: int = 5_000, days: int = 14, seed: int = 0, *,
                 opt_outs: Iterable[Any] | Any = ()) -> Engine:
    """An Engine over simulated users whose history ends now, warmed up.

    Users browse for ``days`` up to the current time (so that windowed features are live);
    one rule segment per category (``{category}_readers``: at least two page views in it over
    7 days) targets one CPC campaign per category; two run-of-network campaigns and a house ad
    serve everyone else. User ids are the simulator's integers as strings (``"0"``, ``"1"``...),
    the form OpenRTB carries them in. ``opt_outs`` is an iterable of user ids or an
    :class:`~bta.privacy.OptOutRegistry`.
    """
    import pandas as pd

    from bta.events import EventLog
    from bta.features import FeatureSpec, OnlineProfiles, build_features
    from bta.privacy import OptOutRegistry, PrivacyPolicy
    from bta.segment import SegmentBook, evaluate_rules
    from bta.serve import Campaign, Creative, FrequencyCap, MemoryProfileStore
    from bta.sim import simulate_clickstream

    start = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(days=days)
    cs = simulate_clickstream(n_users=n_users, days=days, seed=seed, start=start,
                              events_per_user_day=2.0, user_ids="int")
    events = cs.events.assign(user_id=cs.events["user_id"].astype(str))
    log = EventLog.from_pandas(events, errors="quarantine")
    spec = FeatureSpec()
    fm = build_features(log, spec)
    rules = {f"{c}_readers": f"count:page_view:{c}:7d >= 2" for c in log.categories}
    book = SegmentBook.from_segments(fm.users, evaluate_rules(rules, fm))
    profiles = OnlineProfiles(spec, categories=log.categories, grow_categories=False)
    profiles.update(log)
    store = MemoryProfileStore(profiles, book)
    campaigns = [Campaign(f"cpc-{c}", (Creative(f"cr-{c}-a", c), Creative(f"cr-{c}-b", c)),
                          targeting=f'segment("{c}_readers")', pricing="cpc", bid=0.5,
                          prior_ctr=0.004, caps=(FrequencyCap(5, "1d"),))
                 for c in log.categories if book.is_activatable(f"{c}_readers")]
    campaigns += [Campaign("ron-1", (Creative("ron-1-a"),), bid=1.2),
                  Campaign("ron-2", (Creative("ron-2-a"),), bid=1.0)]
    # a registry passed in stays live: users added to it later are opted out from then on
    registry = opt_outs if isinstance(opt_outs, OptOutRegistry) else OptOutRegistry(opt_outs)
    privacy = PrivacyPolicy(opt_outs=registry)
    return Engine(campaigns, fallback=Campaign("house", (Creative("house-a"),), bid=0.01),
                  store=store, privacy=privacy, version="adserver-v1").warmup()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Answer OpenRTB 2.6 bid requests with a bta Engine.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--config", help="Engine config (TOML/JSON, as for `bta replay`); default: "
                                    "an Engine over simulated users")
    p.add_argument("--users", type=int, default=5_000, help="simulated users (default 5,000)")
    p.add_argument("--days", type=int, default=14, help="simulated days of history (default 14)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.config:
        from bta.config import load_engine

        engine = load_engine(args.config).warmup()
    else:
        engine = build_engine(args.users, args.days, args.seed)
    server = make_server(engine, args.host, args.port)
    host, port = server.server_address[:2]
    logger.info("serving %d campaigns on http://%s:%d%s", len(engine.campaigns), host, port,
                AUCTION_PATH)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

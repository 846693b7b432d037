"""Shared test configuration, and a loopback Redis server for the profile-store tests.

Hypothesis: under ``CI=true`` the examples are derandomized (the same examples every run), so a
CI verdict is reproducible, and no verdict depends on the machine's speed (no deadline, no
"too slow" health check: a shared 2-core runner stalls); locally every run draws new examples
and keeps failures in its database.

``redis_server`` yields a Redis URL on 127.0.0.1:

1. ``BTA_REDIS_URL`` when set (it must name a loopback host);
2. otherwise a private ``redis-server`` started on a free port (no persistence), stopped at the
   end of the session, when the binary is installed;
3. otherwise ``redis://127.0.0.1:6379/0`` if something answers there.

When none is reachable the Redis tests skip locally with the reason, and FAIL when ``CI=true``:
CI must exercise the store, never skip it silently.

``redis_process`` starts a private server a test may stop and restart on the same port (the
outage test); it needs the ``redis-server`` binary whatever ``BTA_REDIS_URL`` says.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: How long a starting server may take to answer PING (a cold CI container can be slow).
_START_S = 10.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if _in_ci():
        pytest.fail(f"Redis is required when CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def _ping(url: str, timeout_s: float = 0.5) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A private ``redis-server`` on 127.0.0.1 that can be stopped and started again.

    With ``data_dir`` it keeps an append-only file there, fsynced on every write, so a server
    killed (SIGKILL, no final save) and started again on the same port and directory comes
    back with every write it acknowledged.
    """

    def __init__(self, binary: str, port: int | None = None, data_dir: Path | None = None,
                 start_timeout_s: float | None = None):
        self.binary = binary
        self.port = port or _free_port()
        self.data_dir = data_dir
        self.start_timeout_s = start_timeout_s or _START_S
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisProcess":
        persist = (["--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync",
                    "always"] if self.data_dir is not None else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *persist, "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.proc.returncode} on "
                                   f"port {self.port}")
            if _ping(self.url, 0.2):  # PING fails while an append-only file is loading
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within "
                           f"{self.start_timeout_s}s")

    def stop(self) -> None:
        """Kill the server (an outage, not a clean shutdown) and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in _LOOPBACK:
        pytest.fail(f"BTA_REDIS_URL must point at a loopback host {_LOOPBACK}, got {url!r}: "
                    f"the tests write to and delete from that server", pytrace=False)


def redis_url_session() -> Iterator[str]:
    """Generator behind the ``redis_server`` fixture (shared with the serving benchmarks)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        unavailable("the redis package is not installed (pip install 'bta[redis]')")
    url = os.environ.get("BTA_REDIS_URL", "").strip()
    if url:
        _check_loopback(url)
        if not _ping(url):
            unavailable(f"no Redis answers at BTA_REDIS_URL={url}")
        yield url
        return
    binary = shutil.which("redis-server")
    if binary:
        server = RedisProcess(binary).start()
        try:
            yield server.url
        finally:
            server.stop()
        return
    url = "redis://127.0.0.1:6379/0"
    if not _ping(url):
        unavailable("no redis-server binary, BTA_REDIS_URL unset, and nothing answers at "
                    "127.0.0.1:6379")
    yield url


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of a reachable loopback Redis (see the module docstring)."""
    yield from redis_url_session()


@pytest.fixture
def redis_binary() -> str:
    """Path of the redis-server binary (skips locally, fails in CI when it or redis-py is
    missing)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        unavailable("the redis package is not installed (pip install 'bta[redis]')")
    binary = shutil.which("redis-server")
    if not binary:
        unavailable("the redis-server binary is not installed")
    return binary


@pytest.fixture
def redis_process(redis_binary: str) -> Iterator[RedisProcess]:
    """A private redis-server that the test may stop and restart on the same port."""
    server = RedisProcess(redis_binary).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_prefix(redis_server: str) -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted after the test."""
    import redis

    prefix = f"btatest-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_server, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def persistent_redis(tmp_path: Path, redis_binary: str) -> Iterator[RedisProcess]:
    """A private redis-server with an fsync-always append-only file in ``tmp_path``: killed
    (SIGKILL, no shutdown, no final save) and restarted on the same port and directory, it
    comes back with every write it acknowledged."""
    server = RedisProcess(redis_binary, data_dir=tmp_path, start_timeout_s=20.0).start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)  # in case a test left it stopped
        server.stop()

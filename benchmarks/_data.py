"""Synthetic clickstream for the feature benchmarks: plain NumPy arrays, sized by environment.

Sizes
-----
``BTA_BENCH_EVENTS`` sets the number of events (default 200,000: the smoke run CI does on every
change); ``BTA_BENCH_USERS`` the number of users (default one user per 10 events). The full run
is ``BTA_BENCH_EVENTS=20000000`` (2,000,000 users). Categories: 200; period: 30 days.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["DAY_MS", "WINDOWS_MS", "HALF_LIFE_MS", "T0_MS", "Events", "bench_size",
           "make_events", "time_ordered"]

DAY_MS = 86_400_000
#: The count windows every implementation computes: 1, 7 and 30 days.
WINDOWS_MS = (DAY_MS, 7 * DAY_MS, 30 * DAY_MS)
#: Half-life of the decayed count.
HALF_LIFE_MS = 7 * DAY_MS
#: Start of the period: 2023-11-14 22:13:20 UTC, well inside bta's default accepted time range.
T0_MS = 1_700_000_000_000

_DEFAULT_EVENTS = 200_000
_EVENTS_PER_USER = 10


@dataclass(frozen=True)
class Events:
    """One synthetic clickstream; every event is a page view.

    Attributes
    ----------
    user : ndarray of int64, shape (n_events,)
        User ids, uniform over ``0 .. n_users - 1``.
    ts : ndarray of int64, shape (n_events,)
        Epoch milliseconds, uniform over ``[T0_MS, T0_MS + days)``, all distinct.
    category : ndarray of int32, shape (n_events,)
        Category ids, uniform over ``0 .. n_categories - 1``.
    as_of : int
        End of the period (epoch ms): the point in time the features are computed at.
    n_users, n_categories, days : int
    """

    user: np.ndarray
    ts: np.ndarray
    category: np.ndarray
    as_of: int
    n_users: int
    n_categories: int
    days: int

    @property
    def n_events(self) -> int:
        return int(self.ts.shape[0])


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def bench_size() -> tuple[int, int]:
    """(n_events, n_users) from ``BTA_BENCH_EVENTS`` / ``BTA_BENCH_USERS``."""
    n_events = _env_int("BTA_BENCH_EVENTS", _DEFAULT_EVENTS)
    n_users = _env_int("BTA_BENCH_USERS", max(1, n_events // _EVENTS_PER_USER))
    return n_events, n_users


def make_events(n_events: int, n_users: int, n_categories: int = 200, days: int = 30,
                seed: int = 0) -> Events:
    """Uniform random clickstream in random row order.

    Times are jittered-stratified: the period is cut into ``n_events`` equal strata with one time
    drawn uniformly in each, then the times are shuffled over the rows. Each time is still
    uniform over the period, but no two events share a time, so no row is an exact duplicate of
    another: bta quarantines (or with ``errors="raise"`` refuses) exact duplicates, and the
    peers would count them, so duplicates would make the implementations disagree by design.
    """
    span = days * DAY_MS
    if n_events > span:
        raise ValueError(f"n_events must be at most {span} (one per millisecond of {days} days), "
                         f"got {n_events}")
    rng = np.random.default_rng(seed)
    edges = (np.arange(n_events, dtype=np.int64) * span) // n_events
    width = np.diff(np.append(edges, span))
    ts = T0_MS + edges + (rng.random(n_events) * width).astype(np.int64)
    rng.shuffle(ts)
    user = rng.integers(0, n_users, size=n_events, dtype=np.int64)
    category = rng.integers(0, n_categories, size=n_events, dtype=np.int32)
    return Events(user=user, ts=ts, category=category, as_of=T0_MS + span, n_users=n_users,
                  n_categories=n_categories, days=days)


def time_ordered(ev: Events) -> Events:
    """The same events sorted by time, as a live stream delivers them."""
    order = np.argsort(ev.ts, kind="stable")
    return Events(user=ev.user[order], ts=ev.ts[order], category=ev.category[order],
                  as_of=ev.as_of, n_users=ev.n_users, n_categories=ev.n_categories, days=ev.days)


def bench_scale() -> float:
    """Size factor of the segment, scoring, serving and A/B benchmarks (env ``BTA_BENCH_SCALE``).

    Default 0.01 (the CI smoke size); 1.0 is the full size documented in RESULTS.md.
    """
    raw = os.environ.get("BTA_BENCH_SCALE", "").strip()
    if not raw:
        return 0.01
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"BTA_BENCH_SCALE must be a positive number, got {raw!r}") from None
    if not scale > 0:
        raise ValueError(f"BTA_BENCH_SCALE must be a positive number, got {raw!r}")
    return scale


def report_line(request, tag: str, line: str) -> None:
    """Print ``[tag] line`` on the terminal even when output is captured: the figures are the
    point of a benchmark, so they show when the test passes too."""
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            tr.write_line(f"[{tag}] {line}")


# Above this many events a round takes seconds, so fewer rounds keep the full run to minutes.
_LARGE = 2_000_000


def bench_rounds(n_events: int, online: bool = False) -> tuple[int, int]:
    """(rounds, warmup_rounds) for ``benchmark.pedantic``; ``BTA_BENCH_ROUNDS`` overrides the
    rounds."""
    raw = os.environ.get("BTA_BENCH_ROUNDS", "").strip()
    if raw:
        return max(1, int(raw)), 1
    if n_events <= _LARGE:
        return 7, 1
    # At full size one online round feeds 2,000 micro-batches and takes minutes: one round
    # already averages over many batches, and more would stretch the run past half an hour.
    return (1, 0) if online else (3, 1)

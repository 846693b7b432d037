"""Synthetic clickstreams for the feature and ingestion benchmarks, sized by environment.

Two shapes:

- :func:`make_events`: plain NumPy arrays (integer users and categories, all-distinct
  millisecond times, random row order), the feature benchmarks' data;
- :func:`make_log`: a log shaped like real ones (:class:`LogEvents`): 16-hex-character cookie
  ids, category names, event names, second-resolution times (so ties), identical rows, rows in
  time order as a tracker writes them; handed over as an Arrow table (:func:`log_table`), a
  pandas frame with NumPy or Arrow dtypes (:func:`log_frame`) or a Parquet file.

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

__all__ = ["DAY_MS", "WINDOWS_MS", "HALF_LIFE_MS", "T0_MS", "Events", "LogEvents",
           "EVENT_NAMES", "bench_size", "make_events", "make_log", "log_table", "log_frame",
           "time_ordered"]

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


#: Event names of :func:`make_log` and their shares of the rows.
EVENT_NAMES = ("page_view", "search", "ad_impression", "ad_click")
_EVENT_SHARES = (0.85, 0.04, 0.10, 0.01)
_ID_CHARS = 16


@dataclass(frozen=True)
class LogEvents:
    """A log shaped like real ones, with the integer truth behind it.

    Attributes
    ----------
    user : ndarray of int64, shape (n_events,)
        Rank of the row's user id in ``user_ids`` (which is sorted).
    user_ids : ndarray of uint8, shape (n_users, 16)
        The cookie ids: 16 lowercase hex characters each, distinct, in ascending order.
    ts_s : ndarray of int64, shape (n_events,)
        Epoch seconds, non-decreasing (rows in time order, as a tracker appends them).
    event : ndarray of int8, shape (n_events,)
        Index into :data:`EVENT_NAMES`.
    category : ndarray of int32, shape (n_events,)
        Index into ``category_names``.
    category_names : tuple of str
        IAB-style names (``"IAB3-7"``), so their text order is not their index order.
    as_of : int
        End of the period (epoch ms).
    n_identical : int
        Rows that repeat another row on every column (kept: rows are data).
    n_tied : int
        Rows that share user and second with another row of another category.
    """

    user: np.ndarray
    user_ids: np.ndarray
    ts_s: np.ndarray
    event: np.ndarray
    category: np.ndarray
    category_names: tuple
    as_of: int
    n_users: int
    days: int
    n_identical: int
    n_tied: int

    @property
    def n_events(self) -> int:
        return int(self.ts_s.shape[0])

    @property
    def n_categories(self) -> int:
        return len(self.category_names)

    def page_views(self) -> Events:
        """The page views as :class:`Events` (integer codes, ms), what the features count."""
        pv = self.event == EVENT_NAMES.index("page_view")
        return Events(user=self.user[pv], ts=self.ts_s[pv] * 1000, category=self.category[pv],
                      as_of=self.as_of, n_users=self.n_users, n_categories=self.n_categories,
                      days=self.days)


def make_log(n_events: int, n_users: int, n_categories: int = 200, days: int = 30,
             identical_share: float = 0.02, tied_share: float = 0.03, seed: int = 0
             ) -> LogEvents:
    """A log like real ones: see :class:`LogEvents`.

    Base events are uniform over users, categories and the period (in whole seconds); then
    ``identical_share`` of the rows are copies of a base row (a double-logged view, two
    purchases of one amount in one second) and ``tied_share`` copies of a base row's user,
    second and event in another category; all rows are then put in time order (ties in
    generation order).
    """
    rng = np.random.default_rng(seed)
    n_ident = int(n_events * identical_share)
    n_tied = int(n_events * tied_share)
    n_base = n_events - n_ident - n_tied
    if n_base <= 0 and n_events > 0:
        raise ValueError("identical_share + tied_share must leave base rows")
    # distinct 64-bit ids; as fixed-width lowercase hex their text order is their numeric order
    ids = np.unique(rng.integers(0, 2**63 - 1, size=n_users + n_users // 100 + 16,
                                 dtype=np.int64))
    ids = np.sort(rng.permutation(ids)[:n_users])
    if ids.shape[0] < n_users:  # pragma: no cover - 2**63 values make this astronomically rare
        raise RuntimeError("id collision; pick another seed")
    shifts = np.arange(4 * (_ID_CHARS - 1), -1, -4, dtype=np.int64)
    nibbles = (ids[:, None] >> shifts) & 15
    user_ids = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    span_s = days * DAY_MS // 1000
    user = rng.integers(0, n_users, size=n_base, dtype=np.int64)
    ts_s = T0_MS // 1000 + rng.integers(0, span_s, size=n_base, dtype=np.int64)
    event = rng.choice(len(EVENT_NAMES), size=n_base, p=_EVENT_SHARES).astype(np.int8)
    category = rng.integers(0, n_categories, size=n_base, dtype=np.int32)
    if n_base:
        ident = rng.integers(0, n_base, size=n_ident)
        tied = rng.integers(0, n_base, size=n_tied)
        user = np.concatenate([user, user[ident], user[tied]])
        ts_s = np.concatenate([ts_s, ts_s[ident], ts_s[tied]])
        event = np.concatenate([event, event[ident], event[tied]])
        other = (category[tied] + rng.integers(1, max(n_categories, 2), size=n_tied,
                                               dtype=np.int32)) % n_categories
        category = np.concatenate([category, category[ident], other.astype(np.int32)])
    order = np.argsort(ts_s, kind="stable")
    names = tuple(f"IAB{i // 10 + 1}-{i % 10 + 1}" for i in range(n_categories))
    return LogEvents(user=user[order], user_ids=user_ids, ts_s=ts_s[order], event=event[order],
                     category=category[order], category_names=names,
                     as_of=T0_MS + days * DAY_MS, n_users=n_users, days=days,
                     n_identical=n_ident, n_tied=n_tied)


def _strings(codes: np.ndarray, chars: np.ndarray):
    """Arrow ``string`` array of ``chars[codes]`` (rows of fixed-width text), built from buffers."""
    import pyarrow as pa

    n, width = codes.shape[0], chars.shape[1]
    data = np.ascontiguousarray(chars[codes]).reshape(-1)
    offsets = np.arange(0, width * (n + 1), width, dtype=np.int32 if width * n < 2**31
                        else np.int64)
    kind = pa.string() if offsets.dtype == np.int32 else pa.large_string()
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def log_table(lg: LogEvents):
    """The log as an Arrow table: ``user_id``, ``ts`` (``timestamp[us, tz=UTC]``, whole
    seconds, as Parquet writers store times), ``event`` and ``category`` as strings."""
    import pyarrow as pa

    names = np.array(lg.category_names, dtype=object)
    return pa.table({
        "user_id": _strings(lg.user, lg.user_ids),
        "ts": pa.array(lg.ts_s * 1_000_000, pa.timestamp("us", tz="UTC")),
        "event": pa.array(np.array(EVENT_NAMES, dtype=object)).take(pa.array(lg.event)),
        "category": pa.array(names).take(pa.array(lg.category)),
    })


def log_frame(lg: LogEvents, backend: str):
    """The log as a pandas frame. ``backend="numpy"``: object columns of Python strings (one
    object per row, as a CSV reader makes them) and ``datetime64[ns]`` times (naive UTC);
    ``"pyarrow"``: ``pd.ArrowDtype`` columns (``dtype_backend="pyarrow"``)."""
    import pandas as pd

    table = log_table(lg)
    if backend == "pyarrow":
        return table.to_pandas(types_mapper=pd.ArrowDtype)
    if backend != "numpy":
        raise ValueError(f"backend must be 'numpy' or 'pyarrow', got {backend!r}")
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("user_id", "event",
                                                                       "category")}
    cols["ts"] = (lg.ts_s * 1_000_000_000).view("datetime64[ns]")
    # dtype=object explicitly: pandas 3 would infer its Arrow-backed ``str`` dtype
    return pd.DataFrame({c: pd.Series(cols[c], dtype=cols[c].dtype, copy=False)
                         for c in ("user_id", "ts", "event", "category")})


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

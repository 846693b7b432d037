"""An Engine's delivery state: spend per campaign, the frequency-cap history and the
decisions pending a win notice, in one object that ``decide``, the replay and the win
notices read and write (the interface a fleet-wide implementation provides)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from bta.ids import canonical_id
from bta.serve._request import _now_ms

__all__ = ["Delivery", "MAX_HISTORY_ENTRIES"]

_INT64_MIN = np.iinfo(np.int64).min
#: The most impressions the frequency-cap history keeps by default (see _CapHistory).
MAX_HISTORY_ENTRIES = 1_000_000
_SWEEP = 2  # users the history's age sweep may drop per recorded impression


class _CapHistory:
    """The frequency-cap history: per user (canonical id, :func:`bta.ids.canonical_id`), the
    impressions that may still count against a cap, ``(time ms, campaign id, creative id)``
    in the order they were recorded. ``decide`` and the replay read and write this one object.

    Bounded by age and by size, whatever the requests:

    - **Age.** The *horizon* is the time of the latest recorded impression, never ahead of
      the wall clock (a request with a far-future time cannot expire everyone's history),
      less the longest cap window of the configuration that recorded it. An impression at or
      before the horizon never counts again, for any request: entries older than the longest
      window are useless. They are dropped from a user's entries when the user gets a new
      impression, and users whose entries are all past the horizon are dropped from the
      front of the queue of users (least recently recorded first), at most ``_SWEEP`` per
      recorded impression: an amortized O(1) sweep; the history holds about the users seen
      within the longest window.
    - **Size.** At most ``max_entries`` impressions: beyond, whole users are forgotten,
      least recently recorded first (their caps start afresh). One impression with its user
      takes about 250 bytes (1M users with one each: 250 MB), so the default of
      :data:`MAX_HISTORY_ENTRIES` bounds the history at about 250 MB.

    The mapping methods (``==``, ``in``, ``len``, iteration) are views of the impressions that
    still count, for inspection and tests: O(users).
    """

    __slots__ = ("users", "horizon", "n_entries", "max_entries")

    def __init__(self, max_entries: int):
        # user -> entries, in the order of the users' latest impression (oldest first)
        self.users: OrderedDict[str, tuple] = OrderedDict()
        self.horizon = _INT64_MIN
        self.n_entries = 0
        self.max_entries = max_entries

    def entries(self, key: str | None) -> tuple:
        """The user's impressions that still count (an immutable tuple: no lock to read)."""
        v = self.users.get(key) if key is not None else None
        if not v:
            return ()
        h = self.horizon
        return v if min(v)[0] > h else tuple(e for e in v if e[0] > h)

    def record(self, key: str, entry: tuple, max_window: int, now_ms: int) -> bool:
        """Add one impression (under the engine's runtime lock); returns whether a user whose
        impressions still counted was forgotten (the size bound)."""
        h = min(entry[0], now_ms) - max_window
        if h > self.horizon:
            self.horizon = h
        users = self.users
        old = users.get(key)
        if old is None:
            new = (entry,)
        else:
            self.n_entries -= len(old)
            if min(old)[0] <= self.horizon:
                old = tuple(e for e in old if e[0] > self.horizon)
            new = old + (entry,)
        users[key] = new
        users.move_to_end(key)
        self.n_entries += len(new)
        return self.sweep(_SWEEP)

    def put(self, key: str, entries: tuple) -> None:
        """Set a user's impressions as the most recently recorded (a replay's write-back)."""
        users = self.users
        old = users.get(key)
        if old is not None:
            self.n_entries -= len(old)
        users[key] = entries
        users.move_to_end(key)
        self.n_entries += len(entries)

    def sweep(self, k: int) -> bool:
        """Drop up to ``k`` users at the front whose impressions are all past the horizon,
        then forget users from the front while over ``max_entries``; returns whether a user
        whose impressions still counted was forgotten."""
        users, h = self.users, self.horizon
        for _ in range(k):
            if not users:
                break
            key = next(iter(users))
            v = users[key]
            if max(v)[0] > h:
                break
            del users[key]
            self.n_entries -= len(v)
        forgot = False
        while self.n_entries > self.max_entries and users:
            _key, v = users.popitem(last=False)
            self.n_entries -= len(v)
            forgot = forgot or max(v)[0] > h
        return forgot

    def pop(self, key: str | None) -> None:
        v = self.users.pop(key, None) if key is not None else None
        if v is not None:
            self.n_entries -= len(v)

    # views of the impressions that still count (inspection and tests)
    def live(self) -> dict[str, tuple]:
        return {k: v for k in self.users if (v := self.entries(k))}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _CapHistory):
            return self.live() == other.live()
        if isinstance(other, Mapping):
            return self.live() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __contains__(self, user: object) -> bool:
        return bool(self.entries(canonical_id(user)))

    def __iter__(self) -> Iterator[str]:
        return iter(self.live())

    def __len__(self) -> int:
        return len(self.live())

    def __repr__(self) -> str:
        return (f"_CapHistory({len(self.users)} users, {self.n_entries} impressions, "
                f"horizon {self.horizon})")


#: The clock of pending decisions' time to live (a module name, so tests can drive it).
_monotonic = time.monotonic


class Delivery:
    """An Engine's delivery state, in one object with one representation: spend per campaign
    (one array, a slot per campaign id that survives swaps), the frequency-cap history
    (:class:`_CapHistory`) and the decisions pending a win notice (``count_on="win"``).

    Its interface is what ``decide``, the replay and the win notices use, and what a shared
    (fleet) implementation must provide:

    - ``slots(campaign_ids)``: each campaign's slot in ``spend_arr`` (new ids get one);
    - ``record(ukey, ts, campaign, creative_id, price, max_window)``: count an impression;
    - ``hold(request_id, ...)`` / ``take(request_id)`` / ``drop(request_id)``: a decision
      pending its win notice, the win, the loss; ``n_pending``, ``n_expired``;
    - ``spend()``, ``erase(ukey)``;
    - for a replay's sequential pass: ``lock`` (held while it reads and writes), ``spend_arr``,
      ``history`` and ``version`` (bumped under ``lock`` at every change of the history, so
      a replay keeps its copy across chunks only while no one else changed it).
    """

    def __init__(self, max_history_entries: int, pending_ttl_s: float, max_pending: int):
        self.lock = threading.Lock()
        self.slot: dict[str, int] = {}
        self.spend_arr = np.zeros(0, dtype=np.float64)
        self.history = _CapHistory(int(max_history_entries))
        self.version = 0
        self.pending_ttl_s = float(pending_ttl_s)
        self.max_pending = int(max_pending)
        # request id -> (deadline, user key, ts, campaign, creative id, price, max cap window);
        # insertion order is deadline order (one TTL), so expiry pops from the front
        self._pending: OrderedDict[str, tuple] = OrderedDict()
        self._pending_lock = threading.Lock()
        self.n_expired = 0

    def slots(self, campaign_ids: Sequence[str]) -> np.ndarray:
        with self.lock:
            for cid in campaign_ids:
                self.slot.setdefault(cid, len(self.slot))
            if self.spend_arr.shape[0] < len(self.slot):
                grown = np.zeros(len(self.slot), dtype=np.float64)
                grown[: self.spend_arr.shape[0]] = self.spend_arr
                self.spend_arr = grown
        return np.array([self.slot[c] for c in campaign_ids], dtype=np.int64)

    def record(self, ukey, ts, campaign, creative_id, price, max_window) -> None:
        with self.lock:
            self.spend_arr[self.slot[campaign.id]] += price / 1000.0
            if max_window and ukey is not None and campaign.caps:
                self.history.record(ukey, (ts, campaign.id, creative_id), max_window,
                                    _now_ms())
                self.version += 1

    def spend(self) -> dict[str, float]:
        with self.lock:
            return {cid: float(self.spend_arr[i]) for cid, i in self.slot.items()
                    if self.spend_arr[i] != 0.0}

    def erase(self, key: str) -> None:
        with self.lock:
            self.history.pop(key)
            self.version += 1
        with self._pending_lock:
            gone = [rid for rid, entry in self._pending.items() if entry[1] == key]
            for rid in gone:
                del self._pending[rid]

    def hold(self, request_id, ukey, ts, campaign, creative_id, price, max_window) -> None:
        with self._pending_lock:
            self._expire_locked()
            self._pending.pop(request_id, None)  # a repeated id: the latest decision counts
            self._pending[request_id] = (_monotonic() + self.pending_ttl_s, ukey, ts,
                                         campaign, creative_id, price, max_window)
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
                self.n_expired += 1

    def take(self, request_id: Any) -> tuple | None:
        """The pending decision of ``request_id`` (removed), or None."""
        with self._pending_lock:
            self._expire_locked()
            return self._pending.pop(request_id, None) if isinstance(request_id, str) else None

    def drop(self, request_id: Any) -> bool:
        return self.take(request_id) is not None

    @property
    def n_pending(self) -> int:
        with self._pending_lock:
            self._expire_locked()
            return len(self._pending)

    def _expire_locked(self) -> None:
        now = _monotonic()
        pending = self._pending
        while pending:
            rid = next(iter(pending))
            if pending[rid][0] > now:
                break
            del pending[rid]
            self.n_expired += 1

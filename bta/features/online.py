"""OnlineProfiles: the features of :func:`build_features`, kept up to date event by event.

State lives in NumPy tables that the numba kernels of :mod:`bta.features._online_kernels` update
in place (layout described there): one 128-byte row per user, each user's cells and window-buffer
entries in contiguous runs of two pools, so an event touches a handful of cache lines.

Privacy hooks: a :class:`~bta.privacy.PrivacyPolicy` screens every event before it can reach a
profile (opted-out users, known minors and blocked sensitive categories never enter);
:meth:`OnlineProfiles.erase` forgets one user; :meth:`OnlineProfiles.expire` (or the
``retention`` option, applied at every update) forgets users whose latest event is too old.
"""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bta.errors import ConfigError, check_param
from bta.events import EventLog, to_epoch_ms, to_millis
from bta.ids import canonical_id, canonical_ids, int_key
from bta.features import families as F
from bta.features import _online_kernels as OK_
from bta.features.batch import event_slots
from bta.features.matrix import FeatureMatrix, layout_for
from bta.features.spec import FeatureSpec

__all__ = ["OnlineProfiles", "UpdateResult"]

_LO = 0xFFFFFFFF
_INT64_MAX = int(np.iinfo(np.int64).max)


@dataclass(frozen=True)
class UpdateResult:
    """What one :meth:`OnlineProfiles.update` did with its events.

    ``n_in = n_applied + n_excluded + n_quarantined + n_skipped_opt_out + n_skipped_under_age
    + n_skipped_sensitive``.
    """

    n_in: int            #: events received (rows a log had already erased or expired excluded)
    n_applied: int       #: events folded into profiles
    n_excluded: int      #: events in the spec's denied categories (never enter a profile)
    n_quarantined: int   #: invalid events (see ``quarantine``)
    quarantine: pd.DataFrame  #: the invalid rows with a ``reason``
    n_skipped_opt_out: int = 0    #: events of users who opted out (privacy policy)
    n_skipped_under_age: int = 0  #: events of users known to be minors (privacy policy)
    n_skipped_sensitive: int = 0  #: events in blocked sensitive categories (privacy policy)
    n_expired: int = 0   #: users forgotten by the retention rule after this update

    @property
    def n_skipped(self) -> int:
        """Events the privacy policy kept out of profiles."""
        return self.n_skipped_opt_out + self.n_skipped_under_age + self.n_skipped_sensitive


def _aligned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Zeroed array whose data starts on a 64-byte (cache line) boundary, so that a 128-byte
    user row or a 32-byte cell row never straddles one line more than it must."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.zeros(nbytes + 64, dtype=np.uint8)
    off = (-buf.ctypes.data) % 64
    return buf[off:off + nbytes].view(dtype).reshape(shape)


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with room for ``n`` rows (capacity doubles), new rows zeroed, 64-byte aligned."""
    if a.shape[0] >= n:
        return a
    out = _aligned((max(n, 2 * a.shape[0], 16),) + a.shape[1:], a.dtype)
    out[: a.shape[0]] = a
    return out


def _duration_ms(value: Any, name: str) -> int:
    """A positive duration in ms: integers are milliseconds, else anything :func:`to_millis`
    reads (``"90d"``, a Timedelta, a timedelta)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        check_param(name, value, value > 0, "a positive duration (integer ms, '90d', Timedelta)")
        return int(value)
    check_param(name, value, isinstance(value, (str, _dt.timedelta, np.timedelta64)),
                "a positive duration (integer ms, '90d', Timedelta)")
    return to_millis(value, name)


@dataclass
class _Screen:
    """Events of one batch that passed the privacy screen, and the counts of those that did
    not."""

    rows: np.ndarray | None = None  #: kept row positions (None: all rows kept)
    counts: dict = field(default_factory=dict)


class OnlineProfiles:
    """Per-user feature state updated event by event, for serving.

    For the same events and ``as_of`` (at or after each user's last event),
    :meth:`features` returns exactly what :func:`build_features` returns: both call the same
    numba kernels in the same order. Events of one user should arrive in time order; events
    within one :meth:`update` call are sorted first. A late event (older than the user's latest)
    is still counted in windows, decayed counts and recency (decay of late events is equal up to
    floating-point rounding), and joins the user's open session.

    Parameters
    ----------
    spec : FeatureSpec, optional
    categories : sequence, optional
        Known category vocabulary; new categories seen in updates are added.
    event_types : sequence of str, optional
        Extra event names besides the standard ones (unknown names are quarantined).
    grow_categories : bool, default True
        When False, the column layout is fixed to ``categories``: events in other categories
        still count in the per-user features but get no columns. Serving code uses this so that
        compiled rules and scorers keep valid column indices.
    privacy : PrivacyPolicy, optional
        Screens every event with :meth:`~bta.privacy.PrivacyPolicy.screen_events` before it
        reaches a profile: events of opted-out users and known minors, and events in sensitive
        categories the user has no effective opt-in for, are skipped and counted in the
        :class:`UpdateResult`. Blocked categories never get feature columns. The registries are
        read at each update: a user who opts out after having a profile is skipped from then
        on, and :meth:`erase` is how the data already held about them goes.
    retention : duration, optional
        When set (integer ms, ``"90d"``, a Timedelta), every update ends with
        ``expire(retention)``: users whose latest event is older than the latest event seen
        minus ``retention`` are forgotten. The sweep over all users runs only when some user
        can be that old (a lower bound of the oldest latest-event time is kept).

    Notes
    -----
    Memory, per user: 128 bytes of state, 8 of float state, plus the id maps (~150 bytes).
    Per touched (event type, category) cell: 40 bytes, up to twice that while its run waits for
    compaction. Window buffer: 16 bytes per entry, up to twice the live entries. In exact mode
    a user keeps one entry per event within the longest window (a user with 1,000 events in 30
    days: ~16-32 kB). With ``FeatureSpec(window_bucket=B)`` entries of the same bucket and cell
    merge, so a user keeps at most ``(longest_window / B + 1) * cells`` entries whatever their
    event rate: bounded memory, with bucketed window semantics that :func:`build_features`
    applies identically. Slots of erased or expired users are reused by new users.

    Thread safety: updates and reads take a lock; kernels release the GIL.

    Examples
    --------
    >>> prof = OnlineProfiles(FeatureSpec(windows=("1d",)))
    >>> r = prof.update(pd.DataFrame({"user_id": [1, 1], "ts": [0, 1000],
    ...     "event": ["page_view", "ad_click"], "category": ["autos", "autos"]}), ts_unit="ms",
    ...     time_range=None)
    >>> r.n_applied
    2
    """

    def __init__(self, spec: FeatureSpec | None = None, categories: Iterable[Any] | None = None,
                 event_types: Iterable[str] | None = None, grow_categories: bool = True,
                 privacy: Any = None, retention: Any = None):
        if spec is None:
            spec = FeatureSpec()
        if not isinstance(spec, FeatureSpec):
            raise ConfigError(f"spec must be a FeatureSpec, got {type(spec).__name__}")
        if privacy is not None:
            from bta.privacy import PrivacyPolicy

            if not isinstance(privacy, PrivacyPolicy):
                raise ConfigError(f"privacy must be a PrivacyPolicy or None, got "
                                  f"{type(privacy).__name__}")
        self.spec = spec
        self.privacy = privacy
        self.retention_ms = None if retention is None else _duration_ms(retention, "retention")
        self._lock = threading.RLock()
        self._extra_events = () if event_types is None else tuple(event_types)
        self._user_ids: list[Any] = []  # per slot: the id as it arrived (None: free slot)
        # id key -> slot; keys are ints while every id is an integer, else canonical text
        # (bta.ids), so 923 and "923" are one user whatever type each batch brings
        self._user_slot: dict[Any, int] = {}
        # slots of erased or expired users (a stack: the last freed is reused first)
        self._free = np.zeros(0, dtype=np.int64)
        self._n_free = 0
        self._cats: list[Any] = []
        self._cat_code: dict[Any, int] = {}
        self._cat_flag = np.zeros(0, dtype=np.int64)
        self._deny = frozenset(spec.deny_categories)
        self._grow_categories = bool(grow_categories)
        if not self._grow_categories and categories is None:
            raise ConfigError("grow_categories=False needs the categories to fix the layout")
        self._fixed_categories = () if categories is None else tuple(categories)
        self._layout_cache: tuple[int, Any] | None = None
        self._emit_cache: tuple | None = None  # (layout, emit_one's layout arguments)
        for c in self._fixed_categories:
            self._add_category(c, fixed=True)
        self._U = _aligned((0, OK_.N_H), np.int64)
        self._UF = _aligned((0, F.N_FLOAT), np.float64)
        self._CK = _aligned((1024,), np.int64)
        self._CS = _aligned((1024, OK_.N_CS), np.int64)
        self._c_used = 0
        self._P = _aligned((1024, 2), np.int64)
        self._p_used = 0
        # integer user ids -> slot (open-addressing table, see _online_kernels.lookup_ids),
        # mirrored in _user_slot; dropped once a non-integer id arrives
        self._int_ids = True
        self._hkeys = np.zeros(1024, dtype=np.int64)
        self._hvals = np.full(1024, -1, dtype=np.int64)
        self._max_window = int(spec.windows_ms.max())
        self._event_types: tuple[str, ...] | None = None
        self._ev_slots: tuple[Any, np.ndarray, np.ndarray] | None = None
        self._latest = F.NO_TIME   # latest event time seen (the clock of expire/retention)
        self._oldest = F.NO_TIME   # lower bound of the users' latest-event times

    # ---- vocabulary ----------------------------------------------------------------------------
    def _add_category(self, c: Any, fixed: bool = False) -> int:
        code = self._cat_code.get(c)
        if code is None:
            code = len(self._cats)
            self._cats.append(c)
            self._cat_code[c] = code
            if c in self._deny or (self.privacy is not None
                                   and self.privacy.is_blocked_category(c)):
                flag = -2  # never in a profile, never a column
            elif not fixed and not self._grow_categories:
                flag = -1  # counted per user, no column: the layout is fixed
            elif self.spec.categories is None or c in set(self.spec.categories):
                flag = 0
            else:
                flag = -1
            self._cat_flag = np.append(self._cat_flag, flag)
        return code

    def _user_slots(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids`` (distinct), adding new users; freed slots are reused first."""
        if ids.dtype.kind in "iu" and self._int_ids:
            # integer ids: one compiled hash lookup per batch instead of a Python loop
            keys = ids.astype(np.int64)
            if 2 * (len(self._user_slot) + keys.shape[0]) > self._hkeys.shape[0]:
                self._rehash(len(self._user_slot) + keys.shape[0])
            slots, is_new, n_free = OK_.lookup_ids(keys, self._hkeys, self._hvals,
                                                   np.int64(len(self._user_ids)), self._free,
                                                   np.int64(self._n_free))
            new = np.flatnonzero(is_new)
            if new.size:
                self._n_free = int(n_free)
                new_ids = ids[new].tolist()
                self._register(new_ids, slots[new].tolist(), new_ids)
            return slots
        if self._int_ids:
            # text ids: the Python dict alone is the truth from now on, keyed canonically
            self._int_ids = False
            self._hkeys = self._hvals = np.zeros(0, dtype=np.int64)
            self._user_slot = {str(k): v for k, v in self._user_slot.items()}
        get = self._user_slot.get
        ids_list = ids.tolist()
        keys = ids_list if pd.api.types.infer_dtype(ids, skipna=False) == "string" \
            else canonical_ids(ids).tolist()
        slots = np.fromiter((get(u, -1) for u in keys), dtype=np.int64, count=len(keys))
        new = np.flatnonzero(slots < 0)
        if new.size:
            n_slots = len(self._user_ids)
            take = min(self._n_free, new.size)
            reused = self._free[self._n_free - take:self._n_free][::-1].tolist()
            self._n_free -= take
            slots[new] = np.asarray(reused + list(range(n_slots, n_slots + new.size - take)),
                                    dtype=np.int64)
            self._register([ids_list[i] for i in new], slots[new].tolist(),
                           [keys[i] for i in new])
        return slots

    def _rehash(self, n_keys: int) -> None:
        """Resize the id table to hold ``n_keys`` at most a quarter full (half full before it
        grows again: linear probing stays short below that load)."""
        size = 1 << max(10, int(4 * n_keys - 1).bit_length())
        keys = np.zeros(size, dtype=np.int64)
        vals = np.full(size, -1, dtype=np.int64)
        OK_.rehash(self._hkeys, self._hvals, keys, vals)
        self._hkeys, self._hvals = keys, vals

    def _register(self, ids: list, slots: list, keys: list) -> None:
        n_slots = len(self._user_ids)
        if slots and slots[0] == n_slots and slots[-1] == n_slots + len(slots) - 1:
            self._user_ids.extend(ids)  # all fresh (the common case): no per-id Python loop
        else:
            for u, s in zip(ids, slots):
                if s < len(self._user_ids):
                    self._user_ids[s] = u
                else:  # fresh slots come in increasing order
                    self._user_ids.append(u)
        self._user_slot.update(zip(keys, slots))

    def _key(self, user_id: Any) -> Any:
        """The key of ``user_id`` in ``_user_slot`` (None: it can name no user here)."""
        if self._int_ids:
            if type(user_id) is int:
                return user_id
            if isinstance(user_id, np.integer) and not isinstance(user_id, np.bool_):
                return int(user_id)
            return int_key(canonical_id(user_id))
        return user_id if type(user_id) is str else canonical_id(user_id)

    def _slot(self, user_id: Any) -> int | None:
        """The slot of ``user_id`` in canonical form, or None for an unknown id."""
        k = self._key(user_id)
        return None if k is None else self._user_slot.get(k)

    @property
    def n_users(self) -> int:
        """Users with a profile (erased users excluded)."""
        return len(self._user_slot)

    @property
    def users(self) -> np.ndarray:
        """Ids of the users with a profile, in slot order."""
        return np.asarray([u for u in self._user_ids if u is not None],
                          dtype=object)

    # ---- updates -------------------------------------------------------------------------------
    def update(self, events: Any, columns: dict | None = None, **ingest: Any) -> UpdateResult:
        """Fold a micro-batch of events into the profiles.

        ``events`` is anything :class:`~bta.events.EventLog` ingests (DataFrame, Arrow table,
        Parquet path) or an ``EventLog``; ``columns`` and ``ingest`` keyword arguments go to the
        ingestion (e.g. ``ts_unit="ms"``). Invalid rows never raise: they are quarantined and
        reported in the result. Bot flagging is a population statistic and is not applied here.
        With a privacy policy, ingestion screens with it too (screened rows are then removed
        before they are stored anywhere); either way the result counts them by reason.
        """
        if isinstance(events, EventLog):
            log = events
        else:
            ingest.setdefault("errors", "quarantine")
            ingest.setdefault("flag_bots", None)
            ingest.setdefault("event_types", self._extra_events)
            if self.privacy is not None:
                ingest.setdefault("privacy", self.privacy)
            log = EventLog.from_any(events, columns=columns, **ingest)
            if self.privacy is not None and ingest.get("privacy") is self.privacy:
                # ingestion has just screened every row with this very policy
                return self._update_log(log, screened=True)
        return self.update_log(log)

    def update_log(self, log: EventLog) -> UpdateResult:
        """Fold the events of an :class:`~bta.events.EventLog` into the profiles."""
        return self._update_log(log, screened=False)

    def _update_log(self, log: EventLog, screened: bool) -> UpdateResult:
        with self._lock:
            screen = _Screen() if screened else self._screen(log)
            rows = screen.rows
            user, category = log.user, log.category
            ts, event, value = log.ts, log.event, log.value
            if rows is not None:
                user, category = user[rows], category[rows]
                ts, event, value = ts[rows], event[rows], value[rows]
            # only categories with an event that passed the screen enter the vocabulary
            cat_of_code = np.full(len(log.categories), -1, dtype=np.int64)
            if rows is None:
                used_cats = range(len(log.categories))
            else:  # bincount, not np.unique: O(n) over few distinct codes
                seen = np.bincount(category + 1, minlength=len(log.categories) + 1)[1:]
                used_cats = np.flatnonzero(seen).tolist()
            names = log.categories.tolist()
            for code in used_cats:
                if code >= 0:
                    cat_of_code[code] = self._add_category(names[code])
            if cat_of_code.size:
                cats = np.where(category >= 0, cat_of_code[np.maximum(category, 0)], -1)
            else:  # no event of this batch has a category
                cats = np.full(user.shape[0], -1, dtype=np.int64)
            # and only users with an event that will count get a slot (not those whose events
            # were all screened out or in denied categories)
            flags = self._cat_flag
            if flags.size:
                denied = (cats >= 0) & (flags[np.maximum(cats, 0)] == -2)
            else:  # no category known yet, so none is denied
                denied = np.zeros(cats.shape[0], dtype=bool)
            if rows is None and not denied.any():
                slot_of_code = self._user_slots(log.users)
            else:
                slot_of_code = np.full(len(log.users), -1, dtype=np.int64)
                # rows are sorted by user code, so distinct codes are where the code changes
                kept = user[~denied]
                present = kept[np.flatnonzero(np.diff(kept, prepend=-1))]
                if present.size:
                    slot_of_code[present] = self._user_slots(log.users[present])
            ev_slot, weights, ev_map = self._events_of(log.event_types)
            slots = slot_of_code[user]
            events = ev_map[event]
            self._grow_users(len(self._user_ids))
            applied, excluded = self._apply(slots, ts, events, cats, value, ev_slot, weights)
            if applied:
                self._latest = max(self._latest, int(ts.max()))
                # a user's latest event is never before the earliest event of this batch
                low = int(ts.min())
                self._oldest = low if self._oldest == F.NO_TIME else min(self._oldest, low)
            n_expired = 0
            if self.retention_ms is not None and self._latest != F.NO_TIME:
                n_expired = self._expire_before(self._latest - self.retention_ms)
            # rows a policy removed at ingestion count like rows screened here
            removed = getattr(log, "removed", None) or {}
            skipped = {r: screen.counts.get(r, 0) + int(removed.get(r, 0))
                       for r in ("opt_out", "under_age", "sensitive")}
            n_other = sum(int(v) for r, v in removed.items() if r not in skipped)
            return UpdateResult(n_in=log.n_input_rows - n_other, n_applied=applied,
                                n_excluded=excluded, n_quarantined=len(log.quarantine),
                                quarantine=log.quarantine,
                                n_skipped_opt_out=skipped["opt_out"],
                                n_skipped_under_age=skipped["under_age"],
                                n_skipped_sensitive=skipped["sensitive"], n_expired=n_expired)

    def _screen(self, log: EventLog) -> _Screen:
        """Rows of ``log`` the privacy policy lets into profiles (no policy: all, at no cost)."""
        if self.privacy is None or log.n_rows == 0:
            return _Screen()
        from bta.privacy import SCREEN_OK, SCREEN_REASONS

        names = np.empty(len(log.categories) + 1, dtype=object)  # last: no category (-1)
        names[:-1] = log.categories
        names[-1] = None
        codes = self.privacy.screen_events(log.users[log.user], names[log.category])
        counts = np.bincount(codes, minlength=len(SCREEN_REASONS))
        if counts[SCREEN_OK] == log.n_rows:
            return _Screen()
        return _Screen(rows=np.flatnonzero(codes == SCREEN_OK),
                       counts={r: int(counts[k]) for k, r in enumerate(SCREEN_REASONS) if k})

    def _events_of(self, event_types: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
        """Spec slots and weights of the profile's event codes, and the batch's code map."""
        if self._event_types is None:
            self._event_types = tuple(event_types)
        else:
            extra = tuple(e for e in event_types if e not in self._event_types)
            self._event_types = self._event_types + extra
        cached = self._ev_slots
        if cached is None or cached[0] != (self._event_types, event_types):
            ev_slot, weights = event_slots(self.spec, self._event_types)
            ev_map = np.array([self._event_types.index(e) for e in event_types], dtype=np.int16)
            cached = self._ev_slots = ((self._event_types, event_types), ev_slot, weights, ev_map)
        return cached[1], cached[2], cached[3]

    def _tables(self) -> "OK_.ProfileTables":
        """The state tables as the kernels take them (rebuilt per call: growth replaces them)."""
        return OK_.ProfileTables(self._U, self._UF, self._CK, self._CS, self._P)

    def _apply(self, slots, ts, events, cats, value, ev_slot, weights) -> tuple[int, int]:
        step = F.step_params(self.spec)
        i = 0
        applied = excluded = 0
        stuck = None
        while True:
            status, i, self._c_used, self._p_used, a, x = OK_.update(
                slots, ts, events, cats, value, np.int64(i), ev_slot, weights, self._cat_flag,
                step, np.int64(self._max_window), self._tables(), np.int64(self._c_used),
                np.int64(self._p_used))
            applied += a
            excluded += x
            if status == OK_.OK:
                return applied, excluded
            # no progress since the last compaction (one run needs more than the free half):
            # the pool must grow
            force = stuck == (status, i)
            stuck = (status, i)
            if status == OK_.NEED_POOL:
                self._grow_pool(force)
            else:
                self._grow_cells(force)

    def _run_order(self, start_col: int, lc_col: int) -> np.ndarray:
        """Slots holding a run (capacity > 0), by ascending run start."""
        U = self._U[:len(self._user_ids)]
        order = np.flatnonzero((U[:, lc_col] >> 32) > 0)
        return order[np.argsort(U[order, start_col], kind="stable")]

    def _grow_users(self, n: int) -> None:
        """Room for ``n`` user rows; fresh rows hold the state ``user_init`` gives (the run
        columns stay 0: no run yet)."""
        if self._U.shape[0] < n:
            old = self._U.shape[0]
            self._U = _grown(self._U, n)
            self._UF = _grown(self._UF, n)
            self._U[old:, :F.N_INT] = F.INITIAL_INTS

    def _grow_pool(self, force: bool = False) -> None:
        """Called when the window-buffer pool is full: compact it in place (relocated runs
        leave holes behind), then double it unless at least half of it is free (or ``force``).
        In place: growing into fresh memory (page faults) cost more than the compaction."""
        order = self._run_order(OK_.H_BSTART, OK_.H_BLC)
        # slack 4: a compacted run takes a few more events before it moves again
        self._p_used = OK_.compact_pool(order, self._U, self._P, np.int64(4))
        if force or 2 * self._p_used > self._P.shape[0]:
            self._P = _grown(self._P, 2 * self._P.shape[0])

    def _grow_cells(self, force: bool = False) -> None:
        """:meth:`_grow_pool` for the cell pool."""
        order = self._run_order(OK_.H_CSTART, OK_.H_CLC)
        self._c_used = OK_.compact_cells(order, self._U, self._CK, self._CS, np.int64(2))
        if force or 2 * self._c_used > self._CK.shape[0]:
            self._CK = _grown(self._CK, 2 * self._CK.shape[0])
            self._CS = _grown(self._CS, 2 * self._CS.shape[0])

    def reserve(self, users: int = 0, events: int = 0) -> "OnlineProfiles":
        """Make room for ``users`` users and ``events`` events in the window of the longest
        feature window, so the state tables, the cell and window pools and the id table do not
        grow (copy, compact, fault in fresh pages) while serving. Optional: without it they
        grow by doubling. Like ``reserve`` of a C++ vector: capacity only, no change in
        results. Returns ``self``.
        """
        for name, v in (("users", users), ("events", events)):
            check_param(name, v, isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                        and 0 <= v <= 2**40, "an integer between 0 and 2**40")
        users, events = int(users), int(events)
        with self._lock:
            self._grow_users(users)
            if self._int_ids and 4 * users > self._hkeys.shape[0]:
                self._rehash(users)
            # a user's runs double when full and leave their old room behind until the next
            # compaction: twice the entries keeps most compactions away
            if self._P.shape[0] < 2 * events:
                self._P = _grown(self._P, 2 * events)
            if self._CK.shape[0] < 2 * events:
                self._CK = _grown(self._CK, 2 * events)
                self._CS = _grown(self._CS, 2 * events)
            # fault the pages in now, not on first use: the zeroed tables come from calloc,
            # whose pages the kernel maps only when first written (a byte per page is written
            # back with its own value: live state is untouched)
            for a in (self._U, self._UF, self._P, self._CK, self._CS):
                b = a.reshape(-1).view(np.uint8)
                b[::4096] = b[::4096].copy()
        return self

    # ---- reads ---------------------------------------------------------------------------------
    def features(self, as_of: Any = None, users: Iterable[Any] | None = None) -> FeatureMatrix:
        """Features at ``as_of`` (default: the latest event seen), like :func:`build_features`.

        ``as_of`` must not be earlier than any selected user's latest event: events already folded
        in cannot be taken back out. Rows are users with at least one event, sorted by id
        (``users=`` keeps the given order and gives empty rows for unknown ids).
        """
        with self._lock:
            if users is None:
                ids = sorted((u for u in self._user_ids if u is not None), key=_id_key)
            else:
                ids = list(users)
            slots = self._slots_of(ids)
            known = slots[slots >= 0]
            U = self._U
            latest = int(U[known, F.U_LAST_TS].max()) if known.size else 0
            as_of_ms = latest if as_of is None else to_epoch_ms(as_of, "as_of")
            if known.size and as_of_ms < latest:
                raise ConfigError(
                    f"as_of must be at or after the latest event of the selected users "
                    f"({pd.Timestamp(latest, unit='ms', tz='UTC')}), got "
                    f"{pd.Timestamp(as_of_ms, unit='ms', tz='UTC')}")
            indptr, indices, data, layout = self._emit(slots, as_of_ms)
            X = sp.csr_matrix((data, indices, indptr),
                              shape=(len(ids), len(layout.feature_names)))
            X.has_sorted_indices = True
            if users is None:
                keep = U[slots, F.U_N_EVENTS] > 0
                X = X[keep]
                ids = [u for u, k in zip(ids, keep) if k]
            if self.spec.dtype == "float32":
                X = X.astype(np.float32)
            return FeatureMatrix(
                X=X, feature_names=layout.feature_names, users=np.asarray(ids),
                as_of=pd.Timestamp(as_of_ms, unit="ms", tz="UTC"), spec=self.spec,
                nan_absent=layout.nan_absent,
                n_events=int(U[known, F.U_N_EVENTS].sum()))

    @property
    def layout(self):
        """Column layout of the features (see :func:`bta.features.matrix.layout_for`).

        Categories the privacy policy blocks count as denied: they never get a column."""
        n = len(self._cats)
        if self._layout_cache is None or self._layout_cache[0] != n:
            blocked = tuple(c for c, f in zip(self._cats, self._cat_flag.tolist())
                            if f == -2 and c not in self._deny)
            spec = self.spec
            if blocked:
                spec = replace(spec, deny_categories=tuple(spec.deny_categories) + blocked)
            if self._grow_categories:
                layout = layout_for(spec, self._cats)
            else:
                base = layout_for(spec, self._fixed_categories)
                extra = np.where(self._cat_flag[len(self._fixed_categories):] == -2, -2, -1)
                layout = replace(base, cat_slot=np.concatenate([base.cat_slot, extra]))
            self._layout_cache = (n, layout)
        return self._layout_cache[1]

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.layout.feature_names

    def vector(self, user_id: Any, as_of_ms: int | None = None):
        """One user's stored feature entries ``(indices int32, values float64)``, or None.

        For serving: no pandas, allocations of the user's own size only, and no exception on
        request data. ``as_of_ms`` (epoch ms) earlier than the user's latest event is raised to
        it, one beyond the int64 range lowered to its maximum; one that is not an integer time
        (NaN, text) reads no profile (None).
        """
        s = self._slot(user_id)  # canonical form: never raises, an unhashable id is no id
        if s is None:
            return None
        with self._lock:
            U = self._U
            if self._slot(user_id) != s or U.item(s, F.U_N_EVENTS) == 0:
                return None  # erased meanwhile, or no counted event
            last = U.item(s, F.U_LAST_TS)
            t = last
            if as_of_ms is not None:
                try:
                    t = max(last, min(int(as_of_ms), _INT64_MAX))
                except (TypeError, ValueError, OverflowError):
                    return None
            cat_slot, params = self._emit_args()
            return OK_.emit_one(s, t, cat_slot, params,
                                OK_.ProfileTables(U, self._UF, self._CK, self._CS, self._P))

    def _emit_args(self) -> tuple:
        """The layout and spec arguments of ``emit_one`` (``cat_slot``, ``RowParams``) (cached with the layout: a request
        reads one profile, and converting these per call would cost as much as the read)."""
        layout = self.layout
        cached = self._emit_cache
        if cached is None or cached[0] is not layout:
            cached = self._emit_cache = (layout, (layout.cat_slot,
                                                  F.row_params(self.spec, layout)))
        return cached[1]

    def vectors(self, user_ids: Iterable[Any], as_of_ms: Any = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Many users' stored feature entries at once, equal to :meth:`vector` per user.

        Compiled calls read the rows, one per 4,096 users (``vector`` costs a Python call
        and a lock per user); for bulk reads such as an offline replay. The lock is held per
        block of users, so concurrent updates and ``vector`` calls wait for one block only.

        Parameters
        ----------
        user_ids : iterable of user ids, length n_users
        as_of_ms : None, int or array-like of shape (n_users,)
            Epoch ms, one for all users or one per user, with the rules of :meth:`vector`:
            earlier than the user's latest event is raised to it, beyond the int64 range
            lowered to its maximum, None means the user's latest event, and a value that is not
            an integer time (NaN, text) reads no profile for that user.

        Returns
        -------
        indptr : ndarray of int64, shape (n_users + 1,)
        indices : ndarray of int32, shape (nnz,)
        values : ndarray of float64, shape (nnz,)
            User ``i``'s entries are ``indices[indptr[i]:indptr[i + 1]]`` (and ``values``),
            exactly ``vector(user_ids[i], as_of_ms[i])``.
        found : ndarray of bool, shape (n_users,)
            Whether ``vector`` would return a row (False: it returns None; the row is empty).

        Raises
        ------
        ConfigError
            If ``as_of_ms`` is an array whose length is not the number of users.

        Examples
        --------
        >>> indptr, indices, values, found = profiles.vectors(["u1", "u2"], t)  # doctest: +SKIP
        >>> indices[indptr[0]:indptr[1]]  # u1's feature columns              # doctest: +SKIP
        """
        ids = user_ids if isinstance(user_ids, list) else list(user_ids)
        n = len(ids)
        t, use_last, bad = _as_of_column(as_of_ms, n)
        found = np.zeros(n, dtype=bool)
        ptrs, idx_parts, val_parts = [np.zeros(1, dtype=np.int64)], [], []
        nnz = 0
        for a in range(0, n, _BULK_ROWS):
            ids_ab = ids[a:a + _BULK_ROWS]
            # a block at a time under the lock (an erasure cannot slip between a slot's lookup
            # and its read), so concurrent updates and vector() wait for one block, not all
            with self._lock:
                slots = self._slots_of(ids_ab)
                U = self._U
                known = slots >= 0
                known[known] = U[slots[known], F.U_N_EVENTS] != 0
                ok = known & ~bad[a:a + _BULK_ROWS]
                slots[~ok] = -1
                last = np.where(ok, U[np.maximum(slots, 0), F.U_LAST_TS], 0)
                t_ab = np.where(use_last[a:a + _BULK_ROWS], last,
                                np.maximum(last, t[a:a + _BULK_ROWS]))
                cat_slot, params = self._emit_args()
                ptr, ind, dat = OK_.emit_rows(slots, t_ab, cat_slot, params, self._tables())
            found[a:a + _BULK_ROWS] = ok
            ptrs.append(ptr[1:] + nnz)
            idx_parts.append(ind)
            val_parts.append(dat)
            nnz += int(ptr[-1])
        indptr = np.concatenate(ptrs)
        indices = np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int32)
        data = np.concatenate(val_parts) if val_parts else np.zeros(0, dtype=np.float64)
        return indptr, indices, data, found

    def _slots_of(self, ids: list) -> np.ndarray:
        """Slots of ``ids`` in canonical form (-1: unknown, or no id); called holding the lock."""
        get = self._user_slot.get
        key = self._key
        return np.fromiter((-1 if (k := key(u)) is None else get(k, -1) for u in ids),
                           dtype=np.int64, count=len(ids))

    def _emit(self, slots: np.ndarray, as_of_ms: int):
        layout = self.layout
        cat_slot, params = self._emit_args()
        indptr, indices, data = OK_.emit(slots, np.int64(as_of_ms), cat_slot, params,
                                         self._tables())
        return indptr, indices, data, layout

    def last_event_time(self, user_id: Any) -> pd.Timestamp | None:
        """Time of the user's latest event, or None for an unknown user."""
        s = self._slot(user_id)
        if s is None or self._U[s, F.U_N_EVENTS] == 0:
            return None
        return pd.Timestamp(int(self._U[s, F.U_LAST_TS]), unit="ms", tz="UTC")

    # ---- privacy -------------------------------------------------------------------------------
    def erase(self, user_id: Any) -> bool:
        """Remove everything kept about ``user_id``; returns whether the user was known.

        The user's state row returns to the initial state, their cells and window-buffer
        entries are zeroed and their slot goes to the next new user. Use it when a user opts
        out after having a profile: with a privacy policy, later events of an opted-out user
        are skipped, but only ``erase`` removes what was already folded in.
        """
        with self._lock:
            s = self._slot(user_id)
            if s is None:
                return False
            self._forget([self._user_ids[s]], np.array([s], dtype=np.int64))
            return True

    def expire(self, older_than: Any, as_of: Any = None) -> int:
        """Forget every user whose latest event is older than ``as_of - older_than``.

        Parameters
        ----------
        older_than : int, str, pandas.Timedelta or datetime.timedelta
            Retention period; an integer is milliseconds (``"90d"``, ``pd.Timedelta(days=90)``).
        as_of : datetime-like, optional
            The present; default the latest event seen. Pass the wall clock
            (``pd.Timestamp.now(tz="UTC")``) when events may stop arriving.

        Returns
        -------
        int
            Number of users forgotten, each exactly as :meth:`erase` does.

        Notes
        -----
        A user is kept when ``latest_event >= as_of - older_than``. The result equals profiles
        rebuilt from the kept users' events only.
        """
        ms = _duration_ms(older_than, "older_than")
        with self._lock:
            now = self._latest if as_of is None else to_epoch_ms(as_of, "as_of")
            if now == F.NO_TIME:
                return 0
            return self._expire_before(now - ms)

    def _expire_before(self, cutoff: int) -> int:
        if self._oldest == F.NO_TIME or self._oldest >= cutoff:
            return 0  # no user's latest event can be that old: skip the sweep
        slots, oldest = OK_.expired_slots(np.int64(len(self._user_ids)), self._U,
                                          np.int64(cutoff))
        self._oldest = int(oldest) if oldest != np.iinfo(np.int64).max else F.NO_TIME
        if slots.size:
            self._forget([self._user_ids[s] for s in slots.tolist()], slots)
        return int(slots.size)

    def _forget(self, ids: list, slots: np.ndarray) -> None:
        OK_.erase_users(slots, self._U, self._UF, self._CK, self._CS, self._P)
        if self._int_ids:
            OK_.hash_delete(np.asarray(ids).astype(np.int64), self._hkeys, self._hvals)
        for u, s in zip(ids, slots.tolist()):
            del self._user_slot[self._key(u)]
            self._user_ids[s] = None
        need = self._n_free + slots.shape[0]
        if need > self._free.shape[0]:
            grown = np.zeros(max(need, 2 * self._free.shape[0]), dtype=np.int64)
            grown[:self._n_free] = self._free[:self._n_free]
            self._free = grown
        self._free[self._n_free:need] = slots
        self._n_free = need

    def window_entries(self) -> int:
        """Live window-buffer entries over all users (bounded in bucketed mode, see Notes)."""
        with self._lock:
            return int((self._U[:len(self._user_ids), OK_.H_BLC] & _LO).sum())

    def memory_bytes(self) -> int:
        """Bytes held by the NumPy state tables and the two pools (ids excluded)."""
        arrays = (self._U, self._UF, self._CK, self._CS, self._P)
        return int(sum(a.nbytes for a in arrays))

    def warmup(self) -> "OnlineProfiles":
        """Compile the kernels on a throw-away instance so no request waits for numba."""
        tmp = OnlineProfiles(self.spec)
        t0 = 1_700_000_000_000
        tmp.update(pd.DataFrame({"user_id": [0, 0], "ts": [t0, t0 + 1000],
                                 "event": ["page_view", "conversion"],
                                 "category": ["a", "a"], "value": [0.0, 1.0]}), ts_unit="ms")
        tmp.features()
        tmp.vector(0)
        tmp.vectors([0])
        tmp.expire(1, as_of=t0 + 2000)
        return self


def _id_key(u: Any) -> tuple:
    return (0, u, "") if isinstance(u, (int, np.integer)) else (1, 0, str(u))


def _as_of_column(as_of_ms: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``as_of_ms`` of :meth:`OnlineProfiles.vectors` as int64 times clipped to the int64 range,
    with masks of the users that take their latest event (None) and that read nothing (not an
    integer time); the conversion of :meth:`OnlineProfiles.vector`, per user."""
    t = np.zeros(n, dtype=np.int64)
    use_last = np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    if as_of_ms is None:
        use_last[:] = True
        return t, use_last, bad
    if isinstance(as_of_ms, (list, tuple)):  # objects as given: NumPy would turn [1.5, "x"]
        arr = np.empty(len(as_of_ms), dtype=object)  # into text, which int() reads otherwise
        for i, x in enumerate(as_of_ms):  # one by one: nested lists must not broadcast
            arr[i] = x
    elif isinstance(as_of_ms, (np.ndarray, pd.Series, pd.Index)):
        arr = np.asarray(as_of_ms)
    else:
        arr = None
    if arr is None or arr.ndim == 0:  # one time for all users
        v = _one_as_of(as_of_ms if arr is None else as_of_ms)
        if v is None:
            use_last[:] = True
        elif v is _BAD:
            bad[:] = True
        else:
            t[:] = v
        return t, use_last, bad
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ConfigError(f"as_of_ms must be one time or one per user ({n}), got an array of "
                          f"shape {arr.shape}")
    if arr.dtype.kind == "i":
        return arr.astype(np.int64), use_last, bad
    if arr.dtype.kind == "u":  # compared before the cast: above the int64 range must not wrap
        return np.minimum(arr, _INT64_MAX).astype(np.int64), use_last, bad
    for i, x in enumerate(arr.tolist()):  # floats, objects: int() as vector does
        v = _one_as_of(x)
        if v is None:
            use_last[i] = True
        elif v is _BAD:
            bad[i] = True
        else:
            t[i] = v
    return t, use_last, bad


_BAD = object()
_BULK_ROWS = 4_096  # users a bulk read serves per lock hold (about 10 ms of reading)
_INT64_MIN = int(np.iinfo(np.int64).min)


def _one_as_of(x: Any) -> Any:
    """One ``as_of_ms`` as :meth:`OnlineProfiles.vector` reads it: None, an int in the int64
    range (below it is the same as its minimum: the user's latest event is later), or _BAD."""
    if x is None:
        return None
    try:
        return max(_INT64_MIN, min(int(x), _INT64_MAX))
    except (TypeError, ValueError, OverflowError):
        return _BAD


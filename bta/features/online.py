"""OnlineProfiles: the features of :func:`build_features`, kept up to date event by event."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from numba import types
from numba.typed import Dict

from bta.errors import ConfigError
from bta.events import EventLog, to_epoch_ms
from bta.features import _kernels as K
from bta.features import _online_kernels as OK_
from bta.features.batch import event_slots
from bta.features.matrix import FeatureMatrix, layout_for
from bta.features.spec import FeatureSpec

__all__ = ["OnlineProfiles", "UpdateResult"]


@dataclass(frozen=True)
class UpdateResult:
    """What one :meth:`OnlineProfiles.update` did with its events."""

    n_in: int            #: events received
    n_applied: int       #: events folded into profiles
    n_excluded: int      #: events in denied categories (never enter a profile)
    n_quarantined: int   #: invalid events (see ``quarantine``)
    quarantine: pd.DataFrame  #: the invalid rows with a ``reason``


def _grow(a: np.ndarray, n: int, fill: Any = 0) -> np.ndarray:
    """``a`` with room for ``n`` rows (capacity doubles); new rows hold ``fill``, or are left
    uninitialized with ``fill=None`` (cell rows: the update kernel initializes each new cell)."""
    if a.shape[0] >= n:
        return a
    cap = max(n, 2 * a.shape[0], 16)
    if fill is None:
        out = np.empty((cap,) + a.shape[1:], dtype=a.dtype)
    else:
        out = np.full((cap,) + a.shape[1:], fill, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


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

    Notes
    -----
    Memory, per user: about 200 bytes (state, buffer bookkeeping, id map). Per touched
    (event type, category) cell: about 56 bytes (state and list link). Window buffer:
    20 bytes per entry, up to twice the live entries. In exact mode a user keeps one entry per
    event within the longest window (a user with 1,000 events in 30 days: ~20-40 kB). With
    ``FeatureSpec(window_bucket=B)`` entries of the same bucket and cell merge, so a user keeps
    at most ``(longest_window / B + 1) * cells`` entries whatever their event rate: bounded
    memory, with bucketed window semantics that :func:`build_features` applies identically.

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
                 event_types: Iterable[str] | None = None, grow_categories: bool = True):
        if spec is None:
            spec = FeatureSpec()
        if not isinstance(spec, FeatureSpec):
            raise ConfigError(f"spec must be a FeatureSpec, got {type(spec).__name__}")
        self.spec = spec
        self._lock = threading.RLock()
        self._extra_events = () if event_types is None else tuple(event_types)
        self._user_ids: list[Any] = []
        self._user_slot: dict[Any, int] = {}
        self._cats: list[Any] = []
        self._cat_code: dict[Any, int] = {}
        self._cat_flag = np.zeros(0, dtype=np.int64)
        self._grow_categories = bool(grow_categories)
        if not self._grow_categories and categories is None:
            raise ConfigError("grow_categories=False needs the categories to fix the layout")
        self._fixed_categories = () if categories is None else tuple(categories)
        self._layout_cache: tuple[int, Any] | None = None
        for c in self._fixed_categories:
            self._add_category(c, fixed=True)
        self._UI = np.zeros((0, K.N_UI), dtype=np.int64)
        self._UF = np.zeros((0, K.N_UF), dtype=np.float64)
        self._first = np.zeros(0, dtype=np.int64)
        self._UB = np.zeros((0, 3), dtype=np.int64)
        self._CI = np.zeros((0, K.N_CI), dtype=np.int64)
        self._CF = np.zeros((0, K.N_CF), dtype=np.float64)
        self._cell_ev = np.zeros(0, dtype=np.int64)
        self._cell_cat = np.zeros(0, dtype=np.int64)
        self._cell_next = np.zeros(0, dtype=np.int64)
        self._n_cells = 0
        # integer user ids -> slot, mirrored in _user_slot; None once a non-integer id arrives
        self._int_slots = Dict.empty(key_type=types.int64, value_type=types.int64)
        self._P_t = np.zeros(1024, dtype=np.int64)
        self._P_cell = np.zeros(1024, dtype=np.int64)
        self._P_n = np.zeros(1024, dtype=np.int32)
        self._pool_used = 0
        self._max_window = int(spec.windows_ms.max())
        self._event_types: tuple[str, ...] | None = None

    # ---- vocabulary ----------------------------------------------------------------------------
    def _add_category(self, c: Any, fixed: bool = False) -> int:
        code = self._cat_code.get(c)
        if code is None:
            code = len(self._cats)
            self._cats.append(c)
            self._cat_code[c] = code
            if c in set(self.spec.deny_categories):
                flag = -2
            elif not fixed and not self._grow_categories:
                flag = -1  # counted per user, no column: the layout is fixed
            elif self.spec.categories is None or c in set(self.spec.categories):
                flag = 0
            else:
                flag = -1
            self._cat_flag = np.append(self._cat_flag, flag)
        return code

    def _user_slots(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids``, adding new users (one dict lookup per distinct id)."""
        if ids.dtype.kind in "iu" and self._int_slots is not None:
            # integer ids: one compiled hash lookup per batch instead of a Python loop
            old = len(self._user_ids)
            slots, n_new = OK_.lookup_ids(ids.astype(np.int64), self._int_slots, np.int64(old))
            if n_new:
                is_new = slots >= old
                new_ids = ids[is_new].tolist()
                self._user_ids.extend(new_ids)
                self._user_slot.update(zip(new_ids, slots[is_new].tolist()))
            return slots
        if ids.dtype.kind not in "iu":
            self._int_slots = None  # mixed id types: the Python dict alone is the truth
        get = self._user_slot.get
        ids_list = ids.tolist()
        slots = np.fromiter((get(u, -1) for u in ids_list), dtype=np.int64, count=len(ids_list))
        new = np.flatnonzero(slots < 0)
        if new.size:
            first = len(self._user_ids)
            new_ids = [ids_list[i] for i in new]
            self._user_ids.extend(new_ids)
            self._user_slot.update(zip(new_ids, range(first, first + new.size)))
            slots[new] = np.arange(first, first + new.size)
        return slots

    @property
    def n_users(self) -> int:
        """Users with a profile (erased users excluded)."""
        return len(self._user_slot)

    @property
    def users(self) -> np.ndarray:
        return np.asarray([u for u in self._user_ids if u in self._user_slot], dtype=object)

    # ---- updates -------------------------------------------------------------------------------
    def update(self, events: Any, columns: dict | None = None, **ingest: Any) -> UpdateResult:
        """Fold a micro-batch of events into the profiles.

        ``events`` is anything :class:`~bta.events.EventLog` ingests (DataFrame, Arrow table,
        Parquet path) or an ``EventLog``; ``columns`` and ``ingest`` keyword arguments go to the
        ingestion (e.g. ``ts_unit="ms"``). Invalid rows never raise: they are quarantined and
        reported in the result. Bot flagging is a population statistic and is not applied here.
        """
        if isinstance(events, EventLog):
            log = events
        else:
            ingest.setdefault("errors", "quarantine")
            ingest.setdefault("flag_bots", None)
            ingest.setdefault("event_types", self._extra_events)
            log = EventLog.from_any(events, columns=columns, **ingest)
        return self.update_log(log)

    def update_log(self, log: EventLog) -> UpdateResult:
        """Fold the events of an :class:`~bta.events.EventLog` into the profiles."""
        with self._lock:
            n = log.n_rows
            slot_of_code = self._user_slots(log.users)
            cat_of_code = np.fromiter((self._add_category(c) for c in log.categories.tolist()),
                                      dtype=np.int64, count=len(log.categories))
            self._ensure_events(log.event_types)
            ev_slot, weights = event_slots(self.spec, self._event_types)
            ev_map = np.array([self._event_types.index(e) for e in log.event_types], dtype=np.int16)
            slots = slot_of_code[log.user]
            if cat_of_code.size:
                cats = np.where(log.category >= 0, cat_of_code[np.maximum(log.category, 0)], -1)
            else:  # no event of this batch has a category
                cats = np.full(n, -1, dtype=np.int64)
            events = ev_map[log.event]
            n_users = len(self._user_ids)
            old_u = self._UI.shape[0]
            self._UI = _grow(self._UI, n_users)
            self._UF = _grow(self._UF, n_users)
            self._first = _grow(self._first, n_users, -1)
            self._UB = _grow(self._UB, n_users)
            if self._UI.shape[0] > old_u:  # fresh rows: the state user_init gives
                self._UI[old_u:] = 0
                self._UI[old_u:, K.U_LAST_TS] = K.NO_TIME
                self._UI[old_u:, K.U_LAST_CONV] = K.NO_TIME
                self._UF[old_u:] = 0.0
            need_c = self._n_cells + n
            self._CI = _grow(self._CI, need_c, None)
            self._CF = _grow(self._CF, need_c, None)
            self._cell_ev = _grow(self._cell_ev, need_c, None)
            self._cell_cat = _grow(self._cell_cat, need_c, None)
            self._cell_next = _grow(self._cell_next, need_c, None)
            spec = self.spec
            i = 0
            applied = excluded = 0
            while True:
                status, i, self._n_cells, self._pool_used, a, x = OK_.update(
                    slots, log.ts, events, cats, log.value, np.int64(i), ev_slot, weights,
                    self._cat_flag, np.int64(len(spec.events)), spec.half_life_ms,
                    np.int64(spec.session_gap_ms), np.int64(spec.max_session_ms),
                    np.int64(self._max_window), np.int64(spec.bucket_ms),
                    self._UI, self._UF, self._first, self._UB, self._CI, self._CF, self._cell_ev,
                    self._cell_cat, self._cell_next, np.int64(self._n_cells),
                    self._P_t, self._P_cell, self._P_n, np.int64(self._pool_used))
                applied += a
                excluded += x
                if status == OK_.OK:
                    break
                self._grow_pool()
            return UpdateResult(n_in=log.n_input_rows, n_applied=applied, n_excluded=excluded,
                                n_quarantined=len(log.quarantine), quarantine=log.quarantine)

    def _ensure_events(self, event_types: tuple[str, ...]) -> None:
        if self._event_types is None:
            self._event_types = tuple(event_types)
        else:
            extra = tuple(e for e in event_types if e not in self._event_types)
            self._event_types = self._event_types + extra

    def _grow_pool(self) -> None:
        live = int(self._UB[:, 1].sum())
        n_users = len(self._user_ids)
        size = max(2 * self._P_t.shape[0], 2 * live + 8 * n_users + 1024)
        new_t = np.zeros(size, dtype=np.int64)
        new_cell = np.zeros(size, dtype=np.int64)
        new_n = np.zeros(size, dtype=np.int32)
        self._pool_used = OK_.compact_pool(np.int64(n_users), self._UB, self._P_t, self._P_cell,
                                           self._P_n, new_t, new_cell, new_n, np.int64(4))
        self._P_t, self._P_cell, self._P_n = new_t, new_cell, new_n

    # ---- reads ---------------------------------------------------------------------------------
    def features(self, as_of: Any = None, users: Iterable[Any] | None = None) -> FeatureMatrix:
        """Features at ``as_of`` (default: the latest event seen), like :func:`build_features`.

        ``as_of`` must not be earlier than any selected user's latest event: events already folded
        in cannot be taken back out. Rows are users with at least one event, sorted by id
        (``users=`` keeps the given order and gives empty rows for unknown ids).
        """
        with self._lock:
            if users is None:
                ids = sorted(self._user_slot, key=_id_key)
            else:
                ids = list(users)
            slots = np.array([self._user_slot.get(u, -1) for u in ids], dtype=np.int64)
            known = slots[slots >= 0]
            latest = int(self._UI[known, K.U_LAST_TS].max()) if known.size else 0
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
                keep = self._UI[slots, K.U_N_EVENTS] > 0
                X = X[keep]
                ids = [u for u, k in zip(ids, keep) if k]
            if self.spec.dtype == "float32":
                X = X.astype(np.float32)
            return FeatureMatrix(
                X=X, feature_names=layout.feature_names, users=np.asarray(ids),
                as_of=pd.Timestamp(as_of_ms, unit="ms", tz="UTC"), spec=self.spec,
                nan_absent=layout.nan_absent,
                n_events=int(self._UI[known, K.U_N_EVENTS].sum()))

    @property
    def layout(self):
        """Column layout of the features (see :func:`bta.features.matrix.layout_for`)."""
        n = len(self._cats)
        if self._layout_cache is None or self._layout_cache[0] != n:
            if self._grow_categories:
                layout = layout_for(self.spec, self._cats)
            else:
                base = layout_for(self.spec, self._fixed_categories)
                extra = np.where(self._cat_flag[len(self._fixed_categories):] == -2, -2, -1)
                layout = replace(base, cat_slot=np.concatenate([base.cat_slot, extra]))
            self._layout_cache = (n, layout)
        return self._layout_cache[1]

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.layout.feature_names

    def vector(self, user_id: Any, as_of_ms: int | None = None):
        """One user's stored feature entries ``(indices int32, values float64)``, or None.

        For serving: no pandas, allocations of the user's own size only. ``as_of_ms`` (epoch
        ms) earlier than the user's latest event is raised to it.
        """
        s = self._user_slot.get(user_id)
        if s is None:
            return None
        with self._lock:
            if self._UI[s, K.U_N_EVENTS] == 0:
                return None
            last = int(self._UI[s, K.U_LAST_TS])
            t = last if as_of_ms is None or as_of_ms < last else int(as_of_ms)
            layout = self.layout
            spec = self.spec
            return OK_.emit_one(
                np.int64(s), np.int64(t), layout.cat_slot, np.int64(layout.n_cat),
                np.int64(layout.pv_slot), spec.windows_ms, np.int64(spec.bucket_ms),
                spec.half_life_ms, spec.ctr_prior[0], spec.ctr_prior[1], spec.user_features,
                np.int64(len(spec.events)), self._UI, self._UF, self._first, self._UB, self._CI,
                self._CF, self._cell_ev, self._cell_cat, self._cell_next, self._P_t,
                self._P_cell, self._P_n)

    def _emit(self, slots: np.ndarray, as_of_ms: int):
        layout = self.layout
        spec = self.spec
        max_cells = OK_.cells_per_user(np.int64(len(self._user_ids)), self._first,
                                       self._cell_next)
        indptr, indices, data = OK_.emit(
            slots, np.int64(as_of_ms), layout.cat_slot, np.int64(layout.n_cat),
            np.int64(layout.pv_slot), spec.windows_ms, np.int64(spec.bucket_ms),
            spec.half_life_ms, spec.ctr_prior[0], spec.ctr_prior[1], spec.user_features,
            np.int64(len(spec.events)),
            self._UI, self._UF, self._first, self._UB, self._CI, self._CF, self._cell_ev,
            self._cell_cat, self._cell_next, self._P_t, self._P_cell, self._P_n,
            np.int64(self._n_cells), np.int64(max_cells))
        return indptr, indices, data, layout

    def last_event_time(self, user_id: Any) -> pd.Timestamp | None:
        """Time of the user's latest event, or None for an unknown user."""
        s = self._user_slot.get(user_id)
        if s is None or self._UI[s, K.U_N_EVENTS] == 0:
            return None
        return pd.Timestamp(int(self._UI[s, K.U_LAST_TS]), unit="ms", tz="UTC")

    # ---- privacy -------------------------------------------------------------------------------
    def erase(self, user_id: Any) -> bool:
        """Remove everything kept about ``user_id``; returns whether the user was known."""
        with self._lock:
            s = self._user_slot.pop(user_id, None)
            if s is None:
                return False
            if self._int_slots is not None and isinstance(user_id, (int, np.integer)):
                self._int_slots.pop(int(user_id), None)
            OK_.erase_user(np.int64(s), self._UI, self._UF, self._first, self._UB, self._CI,
                           self._CF, self._cell_ev, self._cell_cat, self._cell_next)
            self._user_ids[s] = None
            return True

    def memory_bytes(self) -> int:
        """Bytes held by the NumPy state tables and the window-buffer pool (ids excluded)."""
        arrays = (self._UI, self._UF, self._first, self._UB, self._CI, self._CF, self._cell_ev,
                  self._cell_cat, self._cell_next, self._P_t, self._P_cell, self._P_n)
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
        return self


def _id_key(u: Any) -> tuple:
    return (0, u, "") if isinstance(u, (int, np.integer)) else (1, 0, str(u))

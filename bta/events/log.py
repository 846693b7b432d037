"""EventLog: the validated, columnar log (its documentation is :mod:`bta.events`'s)."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bta.events import kernels as _k
from bta.events.bots import _FLAG_REASONS, BotRule, _bot_stats
from bta.events.columns import _where
from bta.events.ingest import _ingest, _Options, _session_codes
from bta.events.sessions import Sessions, _utc
from bta.events.times import _fmt_ms, to_epoch_ms, to_millis
from bta.events.vocabulary import REASONS, REMOVAL_REASONS, _resolve
from bta.errors import ConfigError, SchemaError, UnknownNameError, check_param, check_paths
from bta.ids import canonical_ids, id_keys

__all__ = ["EventLog"]


# ---------------------------------------------------------------------------- EventLog

_OPTIONS_DOC = """
    event_types : sequence of str, optional
        Extra event names, coded after the standard ones in the order given.
    strict_events : bool, default True
        Unknown event names are quarantined (``unknown_event``); with False they join the
        vocabulary, sorted, after the standard and declared names.
    errors : {"raise", "quarantine"}, default "raise"
        On row problems raise :class:`~bta.errors.SchemaError`, or set the rows aside in
        ``quarantine`` and go on. Rows set aside by ``dedupe`` never raise.
    dedupe : {"event_id", "exact", "none"}, default "event_id"
        Which rows are one event delivered twice. ``"event_id"``: repeats of an
        ``event_id`` (when the input has that column) are quarantined as
        ``duplicate_event_id``, the first valid row of each id kept; without the column
        nothing is dropped. ``"exact"``: rows identical to an earlier one on every provided
        column are quarantined as ``duplicate``. ``"none"``: every row is an event. The
        default follows the trackers that produce clickstreams: Snowplow deduplicates on its
        ``event_id``, Segment on the ``messageId`` (not on the payload), GA4 purchases on
        their ``transaction_id``. Identical content is no evidence of a repeat: at
        second or day resolution two real events often look alike, and dropping them
        loses behavior and revenue.
    ts_unit : {"auto", "s", "ms"}, default "auto"
        Unit of numeric epoch times (ignored for datetimes and strings). ``"auto"`` decides
        once for the whole column: seconds when the median magnitude is below 1e11
        (1e11 s is the year 5138, 1e11 ms is March 1973), else milliseconds. A column whose
        every number reads as a ``YYYYMMDD`` date (``19970101``) is refused: pass
        ``ts_format="%Y%m%d"`` or a ``ts_unit``.
    ts_format : str, optional
        strptime format of text times (``"%d/%m/%Y %H:%M"``), passed to
        :func:`pandas.to_datetime`; whole numbers are read as their decimal text. Without
        it text must be ISO 8601 (``2026-03-01``, ``2026-03-01 10:00:00``,
        ``2026-03-01T10:00:00+01:00``, ``20260301``), parsed exactly; a column in another
        date format is refused with an error naming it and an example row, never guessed
        (``01/02/2026`` is January 2 in one country and February 1 in another). Rows that
        are no time at all are ``bad_time``.
    time_range : (start, end), default ("1970-01-01", None)
        Accepted times, ``start <= ts < end`` (UTC; either end may be None). While the range
        holds epoch 0, a time of exactly 0 is ``epoch_zero`` (see the module docs). None
        accepts any time: no range, epoch-zero or future check.
    max_future : duration or None, default "1d"
        Rows later than the time of ingestion plus this are ``future_time`` (clocks drift,
        and a day covers any time zone written as UTC); None disables the check.
    flag_bots : BotRule or None, default BotRule()
        Bot and anomaly flagging; None flags nobody.
    privacy : PrivacyPolicy, optional
        Screens every row before any check (:meth:`PrivacyPolicy.screen_events`): rows of
        opted-out users and known minors, and rows in sensitive categories without the
        user's opt-in, are removed and counted in ``removed``. None means ``PrivacyPolicy()``:
        the default sensitive deny list always applies (privacy is a gate, not an option);
        to keep sensitive categories, say so with a policy that allows them.
    pseudonymize_key : bytes, optional
        When given, user ids are replaced by :func:`bta.privacy.pseudonymize` of them (in the
        log, its vocabulary and its quarantine) before screening, so the policy's registries
        must hold pseudonyms too."""


class EventLog:
    """Validated, encoded events sorted by (user, time).

    ``EventLog(data, columns=None, **options)`` is :meth:`from_any`: a DataFrame (pandas or
    polars), an Arrow table, Parquet path(s) or a dict of arrays.

    User ids are kept as the input gave them (an integer column stays integer) and compared
    in their canonical form (:mod:`bta.ids`: text as it is, integers as decimal text):
    :meth:`user_code` and :meth:`erase` find user ``923`` by ``923`` or ``"923"`` whichever
    the log holds, and ``"0923"`` is another user, as in the privacy registries.

    Attributes
    ----------
    user : ndarray of shape (n_rows,), int32
        User code, indexing ``users``.
    ts : ndarray of shape (n_rows,), int64
        Epoch milliseconds, UTC.
    event : ndarray of shape (n_rows,), int16
        Event code, indexing ``event_types``.
    category : ndarray of shape (n_rows,), int32
        Category code indexing ``categories``; -1 for none.
    value : ndarray of shape (n_rows,), float64
        0.0 where the input had no value.
    item : ndarray of shape (n_rows,), int32, or None
        Item code indexing ``items``, -1 for none; None when the input had no ``item_id``.
    user_offsets : ndarray of shape (n_users + 1,), int64
        Rows of user ``u`` are ``user_offsets[u]:user_offsets[u + 1]``.
    users : ndarray of shape (n_users,)
        Sorted unique user ids (``np.unique`` order) of the accepted rows.
    categories : ndarray of shape (n_categories,)
        Sorted unique categories of the accepted rows.
    items : ndarray of shape (n_items,)
        Sorted unique items of the accepted rows (empty without an ``item_id`` column).
    event_types : tuple of str
        ``STANDARD_EVENTS`` then the declared extras (then, non-strict, unseen names).
    flagged : ndarray of shape (n_users,), bool
        Users flagged by the :class:`BotRule` (see ``flag_report``).
    quarantine : pandas.DataFrame
        Rejected input rows (original columns), ``row`` (0-based input position) and
        ``reason`` (categorical over :data:`REASONS`).
    n_input_rows : int
        Always ``n_rows + len(quarantine) + sum(removed.values())``.
    screened_spellings : dict of str to int
        The raw spellings of the input's categories that privacy screening removed as
        sensitive, with their row counts (``{"Health ": 3, "health\u200b": 1}``): which
        spellings the normalized key (:func:`bta.privacy.category_key`) caught.
    removed : dict of str to int
        Rows removed, by reason (:data:`REMOVAL_REASONS`): privacy screening at ingestion
        (``opt_out``, ``under_age``, ``sensitive``), :meth:`retain` / :meth:`drop_before`
        (``expired``) and :meth:`erase` (``erased``). Removed rows are not kept anywhere.
    session_id, event_id : ndarray of shape (n_rows,) or None
        The input's session ids and event ids, as given, when it had them.
    bot_rule : BotRule
        The rule ``flagged`` was computed with.
    flag_report : pandas.DataFrame
        The flagged users and why (see the property).

    All arrays are C-contiguous. Rows are sorted by (user code, ts) with ties in input
    order, and all codes come from sorted vocabularies, so shuffling the input rows only
    reorders tied events.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"user_id": ["b", "a", "a"],
    ...                    "ts": pd.to_datetime(["2024-01-01 10:00", "2024-01-01 09:00",
    ...                                          "2024-01-01 09:05"]),
    ...                    "event": ["page_view", "search", "ad_click"]})
    >>> log = EventLog.from_pandas(df)
    >>> log.users.tolist(), log.user.tolist(), log.event.tolist()
    (['a', 'b'], [0, 0, 1], [1, 3, 0])
    """

    user: np.ndarray
    ts: np.ndarray
    event: np.ndarray
    category: np.ndarray
    value: np.ndarray
    item: np.ndarray | None
    user_offsets: np.ndarray
    users: np.ndarray
    categories: np.ndarray
    items: np.ndarray
    event_types: tuple[str, ...]
    flagged: np.ndarray
    quarantine: pd.DataFrame
    n_input_rows: int
    session_id: np.ndarray | None
    event_id: np.ndarray | None

    def __init__(self, data: Any, columns: Mapping[str, Hashable] | None = None,
                 **options: Any) -> None:
        built = self.from_any(data, columns, **options)
        self.__dict__.update(built.__dict__)

    @classmethod
    def _from_parts(cls, **parts: Any) -> EventLog:
        log = object.__new__(cls)
        parts.setdefault("removed", dict.fromkeys(REMOVAL_REASONS, 0))
        parts.setdefault("user_column", "user_id")
        parts.setdefault("item", None)
        parts.setdefault("items", np.empty(0, dtype=object))
        parts.setdefault("event_id", None)
        parts.setdefault("screened_spellings", {})
        log.__dict__.update(parts)
        log.flagged = np.zeros(len(parts["users"]), bool)
        log._bot = None
        log.bot_rule = BotRule(enabled=False)
        return log

    @classmethod
    def _ingested(cls, raw: dict[str, Any], sources: dict[str, Hashable], n: int | None,
                  take: Any, opts: _Options) -> EventLog:
        """Every constructor ends here: validate, encode and sort, then flag bots."""
        log = cls._from_parts(**_ingest(raw, sources, n, take, opts))
        log._set_flags(opts.flag_bots)
        return log

    def _set_flags(self, rule: BotRule) -> None:
        self.bot_rule = rule
        if rule.enabled:
            stats = _bot_stats(self.user_offsets, self.ts, self.event, rule)
            self._bot = {k: stats[k] for k in ("rate", "rate_z", "ctr", "flag")}
            self.flagged = stats["flag"] > 0

    # -------------------------------------------------------------- constructors

    @classmethod
    def from_pandas(cls, df: Any, columns: Mapping[str, Hashable] | None = None,
                    **options: Any) -> EventLog:
        """Events from a pandas DataFrame (NumPy or Arrow dtypes) or a polars frame.

        Parameters
        ----------
        df : pandas.DataFrame of shape (n_input_rows, n_columns), or polars DataFrame/LazyFrame
            Columns may hold NumPy dtypes, pandas extension dtypes or Arrow-backed dtypes
            (``dtype_backend="pyarrow"``, ``pd.ArrowDtype``). A polars frame is read through
            Arrow (:meth:`from_polars`).
        columns : mapping, optional
            bta column name -> your column name, e.g. ``{"ts": "time"}``; unmapped names
            are looked up as they are. ``user_id``, ``ts`` and ``event`` are required.
        %(options)s

        Returns
        -------
        EventLog
            ``quarantine`` holds the rejected rows with every column of ``df``.

        Raises
        ------
        SchemaError
            A required column is missing or unusable (always), or rows have problems
            (with ``errors="raise"``).
        ConfigError
            An option is invalid.
        """
        if _is_polars(df):
            return cls.from_polars(df, columns, **options)
        opts = _Options.make(**options)
        if not isinstance(df, pd.DataFrame):
            raise SchemaError(f"df must be a pandas DataFrame, got {type(df).__name__}")
        sources = _resolve(columns, list(df.columns))
        raw = {c: df[src] for c, src in sources.items()}
        return cls._ingested(raw, sources, len(df), lambda rows: _take_rows(df, rows), opts)

    @classmethod
    def from_polars(cls, frame: Any, columns: Mapping[str, Hashable] | None = None,
                    **options: Any) -> EventLog:
        """Events from a polars DataFrame or LazyFrame (options as :meth:`from_pandas`).

        Only the mapped columns are collected (a LazyFrame is collected with just them) and
        handed over as Arrow (:meth:`from_arrow`); the quarantine is a pandas frame.
        """
        _Options.make(**options)  # fail on bad options before collecting anything
        if not _is_polars(frame):
            raise SchemaError(f"frame must be a polars DataFrame or LazyFrame, "
                              f"got {type(frame).__name__}")
        names = (frame.collect_schema().names() if hasattr(frame, "collect_schema")
                 else list(frame.columns))
        sources = _resolve(columns, names)
        picked = frame.select(list(dict.fromkeys(sources.values())))
        if hasattr(picked, "collect"):
            picked = picked.collect()
        return cls.from_arrow(picked.to_arrow(), dict(sources), **options)

    @classmethod
    def from_arrow(cls, table: Any, columns: Mapping[str, Hashable] | None = None,
                   **options: Any) -> EventLog:
        """Events from a ``pyarrow.Table`` or ``RecordBatch`` (options as :meth:`from_pandas`).

        Any Arrow type pandas reads: (large) strings and string views, dictionaries,
        integers of any width (with nulls they stay exact), timestamps with or without a
        time zone.
        """
        import pyarrow as pa

        opts = _Options.make(**options)
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise SchemaError(f"table must be a pyarrow Table or RecordBatch, "
                              f"got {type(table).__name__}")
        sources = _resolve(columns, table.column_names)
        names = table.column_names
        for c, src in sources.items():
            if names.count(src) > 1:
                raise SchemaError(f"{_where(c, src)} appears more than once")
        raw = {c: table.column(src) for c, src in sources.items()}
        return cls._ingested(raw, sources, table.num_rows, lambda rows: _take_rows(table, rows),
                             opts)

    @classmethod
    def from_parquet(cls, path_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
                     columns: Mapping[str, Hashable] | None = None, **options: Any
                     ) -> EventLog:
        """Events from a Parquet file, a list of files, or a directory dataset.

        Only the mapped columns are read (with ``pyarrow.dataset``; hive-style
        ``key=value`` directories add their keys as columns). ``row`` in the quarantine
        is the position in the files concatenated in the order pyarrow lists them.
        Options as :meth:`from_pandas`.
        """
        import pyarrow.dataset as ds

        source = check_paths("path_or_paths", path_or_paths,
                             "a path or a non-empty list of paths")
        _Options.make(**options)  # fail on bad options before reading anything
        dataset = ds.dataset(source, format="parquet", partitioning="hive")
        sources = _resolve(columns, dataset.schema.names)
        table = dataset.to_table(columns=sorted(set(sources.values()), key=str))
        return cls.from_arrow(table, {c: src for c, src in sources.items()}, **options)

    @classmethod
    def from_arrays(cls, user_id: Any, ts: Any, event: Any, category: Any = None,
                    value: Any = None, session_id: Any = None, item_id: Any = None,
                    event_id: Any = None, **options: Any) -> EventLog:
        """Events from 1-D arrays of equal length (NumPy, pandas, Arrow or lists).

        This is the fast path: integer ids in a modest range are encoded by direct
        addressing, the sort is a counting sort on the user code, and NumPy inputs are
        not copied before encoding.

        Parameters
        ----------
        user_id, ts, event : array-like of shape (n_input_rows,)
        category, value, session_id, item_id, event_id : array-like of shape \
(n_input_rows,), optional
        %(options)s

        Returns
        -------
        EventLog
            ``quarantine`` holds the rejected rows with columns named as the arguments.

        Raises
        ------
        SchemaError, ConfigError
            As :meth:`from_pandas`.
        """
        opts = _Options.make(**options)
        given = {"user_id": user_id, "ts": ts, "event": event, "category": category,
                 "value": value, "session_id": session_id, "item_id": item_id,
                 "event_id": event_id}
        raw = {c: x for c, x in given.items() if x is not None}
        return cls._ingested(raw, {c: c for c in raw}, None, None, opts)

    @classmethod
    def from_any(cls, data: Any, columns: Mapping[str, Hashable] | None = None,
                 **options: Any) -> EventLog:
        """Events from whatever ``data`` is.

        =============================== ======================================
        ``EventLog``                    returned unchanged (no options allowed)
        ``pandas.DataFrame``            :meth:`from_pandas`
        polars DataFrame / LazyFrame    :meth:`from_polars`
        ``pyarrow.Table`` / RecordBatch :meth:`from_arrow`
        path, or list of paths          :meth:`from_parquet`
        mapping of name -> array        columns, as a DataFrame's (``columns`` applies)
        object with ``to_arrow()``      :meth:`from_arrow`
        =============================== ======================================
        """
        if isinstance(data, EventLog):
            if columns is not None or options:
                raise ConfigError("columns/options cannot apply to an existing EventLog, "
                                  f"got columns={columns!r}, options={sorted(options)}")
            return data
        if isinstance(data, pd.DataFrame):
            return cls.from_pandas(data, columns, **options)
        if _is_polars(data):
            return cls.from_polars(data, columns, **options)
        if type(data).__module__.startswith("pyarrow"):
            return cls.from_arrow(data, columns, **options)
        if isinstance(data, (str, os.PathLike)) or (
                isinstance(data, (list, tuple)) and data
                and all(isinstance(p, (str, os.PathLike)) for p in data)):
            return cls.from_parquet(data, columns, **options)
        if isinstance(data, Mapping):
            opts = _Options.make(**options)
            sources = _resolve(columns, list(data.keys()))
            raw = {c: data[src] for c, src in sources.items()}
            return cls._ingested(raw, sources, None, None, opts)
        if hasattr(data, "to_arrow"):
            return cls.from_arrow(data.to_arrow(), columns, **options)
        raise SchemaError("cannot read events from a " + type(data).__name__ + "; expected a "
                          "DataFrame, an Arrow table, Parquet path(s) or a mapping of arrays")

    # ------------------------------------------------------------------ basics

    @property
    def n_rows(self) -> int:
        """Number of accepted events."""
        return len(self.ts)

    @property
    def n_users(self) -> int:
        """Number of users with at least one accepted event."""
        return len(self.users)

    def __len__(self) -> int:
        return len(self.ts)

    def __repr__(self) -> str:
        span = "empty"
        if self.n_rows:
            span = f"{_fmt_ms(int(self.ts.min()))} .. {_fmt_ms(int(self.ts.max()))}"
        return (f"EventLog(n_rows={self.n_rows:,}, n_users={self.n_users:,}, "
                f"flagged={int(self.flagged.sum()):,}, quarantined={len(self.quarantine):,}, "
                f"event_types={len(self.event_types)}, categories={len(self.categories):,}, "
                f"span={span})")

    def _index(self, attr: str) -> pd.Index:
        key = "_index_" + attr
        if key not in self.__dict__:
            self.__dict__[key] = pd.Index(getattr(self, attr))
        return self.__dict__[key]

    def _lookup(self, attr: str, values: Any) -> Any:
        scalar = np.ndim(values) == 0
        vals = np.atleast_1d(np.asarray(values, dtype=object))
        codes = self._index(attr).get_indexer(pd.Index(vals, dtype=object)).astype(np.int32)
        return int(codes[0]) if scalar else codes

    def _user_codes(self, ids: Any) -> np.ndarray:
        """Codes (int32, -1 = unknown) of user ids, matched in canonical form."""
        vals = np.atleast_1d(np.asarray(ids, dtype=object)).ravel()
        if self.users.dtype.kind in "iu":
            keys, ok = id_keys(vals, integer=True)
            codes = self._index("users").get_indexer(keys)
            codes[~ok] = -1
        else:
            keys = id_keys(vals, integer=False)
            # None (no id) is looked up as such and never found: a log holds no null user
            codes = self._index("users").get_indexer(pd.Index(keys, dtype=object))
        return codes.astype(np.int32)

    def user_code(self, ids: Any) -> Any:
        """Codes of user ids: an int for a scalar, an int32 array otherwise; -1 = unknown.

        Ids are matched in canonical form (:mod:`bta.ids`): on a log of integer ids ``"923"``
        finds user 923, on a log of text ids ``923`` finds ``"923"``; ``"0923"`` is neither.
        """
        codes = self._user_codes(ids)
        return int(codes[0]) if np.ndim(ids) == 0 else codes

    def category_code(self, values: Any) -> Any:
        """Codes of categories: an int for a scalar, an int32 array otherwise; -1 = unknown."""
        return self._lookup("categories", values)

    def event_code(self, name: str) -> int:
        """Code of an event type name.

        Raises
        ------
        UnknownNameError
            If ``name`` is not in ``event_types``.
        """
        try:
            return self.event_types.index(name)
        except ValueError:
            raise UnknownNameError(f"unknown event type {name!r}; known: "
                                   f"{list(self.event_types)}") from None

    def to_pandas(self) -> pd.DataFrame:
        """The accepted events decoded, in the log's order.

        Returns
        -------
        pandas.DataFrame of shape (n_rows, 5 to 8)
            ``user_id`` (original ids), ``ts`` (``datetime64[ms, UTC]``), ``event``,
            ``category`` and ``item_id`` (categoricals over the vocabularies; a missing one
            is null; ``item_id`` when the input had it), ``value``, then ``session_id`` and
            ``event_id`` when the input had them.
        """
        data = {
            "user_id": self.users[self.user],
            "ts": _utc(self.ts),
            "event": pd.Categorical.from_codes(self.event, categories=list(self.event_types)),
            "category": pd.Categorical.from_codes(self.category,
                                                  categories=pd.Index(self.categories)),
        }
        if self.item is not None:
            data["item_id"] = pd.Categorical.from_codes(self.item,
                                                        categories=pd.Index(self.items))
        data["value"] = self.value
        for name in ("session_id", "event_id"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return pd.DataFrame(data)

    def summary(self) -> dict[str, Any]:
        """Counts for a report: rows in / accepted / identical / quarantined / removed (by
        reason), users, flagged users, categories, time span and events by type.

        ``rows_identical`` counts the accepted rows identical to an earlier accepted row on
        every column of the log (user, time, event, category, item, value, session and event
        id): rows that only look repeated are kept as events, and counted here.
        """
        by_reason = self.quarantine["reason"].value_counts().reindex(list(REASONS),
                                                                     fill_value=0)
        removed = dict(self.removed)
        counts = np.bincount(self.event, minlength=len(self.event_types))
        return {
            "rows_in": self.n_input_rows,
            "rows_accepted": self.n_rows,
            "rows_identical": self._identical_rows(),
            "rows_quarantined": len(self.quarantine),
            "quarantined_by_reason": {r: int(k) for r, k in by_reason.items()},
            "rows_removed": sum(removed.values()),
            "removed_by_reason": removed,
            "screened_spellings": dict(self.screened_spellings),
            "n_users": self.n_users,
            "n_flagged": int(self.flagged.sum()),
            "n_categories": len(self.categories),
            "start": _utc([self.ts.min()])[0] if self.n_rows else None,
            "end": _utc([self.ts.max()])[0] if self.n_rows else None,
            "events_by_type": {name: int(k) for name, k in zip(self.event_types, counts)},
        }

    def _identical_rows(self) -> int:
        """Rows identical to an earlier row of the log on every column it holds."""
        if "_n_identical" not in self.__dict__:
            keys = []
            if self.item is not None:
                keys.append(self.item.astype(np.int64))
            for name in ("session_id", "event_id"):
                ids = getattr(self, name)
                if ids is not None:
                    try:
                        keys.append(_session_codes(ids, name))
                    except SchemaError:  # unhashable ids: no two rows share one
                        keys.append(np.arange(self.n_rows, dtype=np.int64))
            key_arr = (np.ascontiguousarray(np.stack(keys, axis=1)) if keys
                       else np.empty((self.n_rows, 0), np.int64))
            dup = _k.find_duplicates(self.user_offsets, self.ts,
                                     np.arange(self.n_rows, dtype=np.int64), self.event,
                                     self.category, self.value, key_arr)
            self.__dict__["_n_identical"] = int(np.count_nonzero(dup))
        return self.__dict__["_n_identical"]

    # ---------------------------------------------------------------- selections

    def select_users(self, users: Any) -> EventLog:
        """A new log with only some users' events, re-coded densely.

        Parameters
        ----------
        users : array-like of shape (n_users,), bool, or array-like of int codes
            A mask over ``users`` or the codes to keep.

        Returns
        -------
        EventLog
            ``users`` is the kept subset (still sorted); ``categories`` and
            ``event_types`` are unchanged so category and event codes stay comparable.
            ``flagged`` and ``flag_report`` keep the flags computed on the full log.
            ``quarantine`` and ``removed`` are the full log's, and ``n_input_rows`` counts
            the kept rows plus those.
        """
        sel = np.asarray(users)
        if sel.size == 0 and sel.dtype != bool:
            sel = sel.astype(np.int64)  # [] selects nobody, whatever dtype it came as
        if sel.dtype == bool:
            if sel.shape != (self.n_users,):
                raise ConfigError(f"users must be a bool mask of length n_users={self.n_users} "
                                  f"or user codes, got a bool array of shape {sel.shape}")
            keep = sel
        else:
            check_param("users", users, sel.dtype.kind in "iu" and sel.ndim <= 1
                        and (sel.size == 0 or (sel.min() >= 0 and sel.max() < self.n_users)),
                        f"a bool mask or user codes in [0, {self.n_users})")
            keep = np.zeros(self.n_users, bool)
            keep[sel] = True
        counts = np.diff(self.user_offsets)[keep]
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        return self._subset(keep[self.user], keep, offsets, self.quarantine, dict(self.removed),
                            int(offsets[-1]) + len(self.quarantine) + sum(self.removed.values()))

    def _subset(self, rows: np.ndarray, users_kept: np.ndarray, offsets: np.ndarray,
                quarantine: pd.DataFrame, removed: dict[str, int], n_input_rows: int
                ) -> EventLog:
        """A new log of the rows where ``rows`` (a mask), of the users where ``users_kept``
        (codes re-made densely, order kept); vocabularies of categories, items and event
        types stay, so their codes remain comparable. Flags are the parent's."""
        new_code = (np.cumsum(users_kept, dtype=np.int64) - 1).astype(np.int32)
        per_row = {name: None if getattr(self, name) is None else getattr(self, name)[rows]
                   for name in ("ts", "event", "category", "value", "item", "session_id",
                                "event_id")}
        log = EventLog._from_parts(
            user=np.ascontiguousarray(new_code[self.user[rows]]), **per_row,
            user_offsets=offsets, users=self.users[users_kept], categories=self.categories,
            items=self.items, event_types=self.event_types, quarantine=quarantine,
            n_input_rows=n_input_rows, removed=removed, user_column=self.user_column,
            screened_spellings=self.screened_spellings)
        log.bot_rule = self.bot_rule
        log.flagged = self.flagged[users_kept]
        if self._bot is not None:
            log._bot = {k: v[users_kept] for k, v in self._bot.items()}
        return log

    def _without_rows(self, keep: np.ndarray, reason: str,
                      keep_quarantine: np.ndarray | None = None) -> EventLog:
        """A new log of the rows where ``keep``; the others are counted as ``reason``.

        Users left without rows leave the vocabulary (codes re-made densely, order kept);
        categories and event types stay, so their codes remain comparable.
        """
        per_user = np.bincount(self.user[keep], minlength=self.n_users)
        users_kept = per_user > 0
        offsets = np.zeros(int(users_kept.sum()) + 1, np.int64)
        np.cumsum(per_user[users_kept], out=offsets[1:])
        quarantine = self.quarantine
        removed = dict(self.removed)
        removed[reason] += int(self.n_rows - np.count_nonzero(keep))
        if keep_quarantine is not None:
            quarantine = quarantine[keep_quarantine].reset_index(drop=True)
            removed[reason] += int(len(keep_quarantine) - np.count_nonzero(keep_quarantine))
        return self._subset(keep, users_kept, offsets, quarantine, removed, self.n_input_rows)

    def drop_before(self, ts: Any) -> EventLog:
        """A new log without the events before ``ts`` (counted in ``removed["expired"]``).

        Parameters
        ----------
        ts : time
            Anything :func:`to_epoch_ms` reads; events at ``ts`` or later stay.

        Returns
        -------
        EventLog
            Users left without events leave ``users``. The quarantine (rejected input kept
            for inspection) is unchanged; :meth:`erase` removes a user from it.
        """
        cutoff = to_epoch_ms(ts, "ts")
        return self._without_rows(self.ts >= cutoff, "expired")

    def retain(self, max_age: Any, as_of: Any = None) -> EventLog:
        """A new log with only the events younger than ``max_age`` at ``as_of``.

        Parameters
        ----------
        max_age : duration
            Anything :func:`to_millis` reads (``"90d"``, a timedelta, seconds).
        as_of : time, optional
            The reference time (default: now, UTC). Events with ``ts >= as_of - max_age``
            stay.

        Returns
        -------
        EventLog
            As :meth:`drop_before`.
        """
        age_ms = to_millis(max_age, "max_age")
        now = (int(pd.Timestamp.now(tz="UTC").value // 1_000_000) if as_of is None
               else to_epoch_ms(as_of, "as_of"))
        return self._without_rows(self.ts >= now - age_ms, "expired")

    def erase(self, user_ids: Any) -> EventLog:
        """A new log without any trace of ``user_ids``: events and quarantined rows.

        Parameters
        ----------
        user_ids : scalar or array-like
            Ids (pseudonyms when the log was built with ``pseudonymize_key``), matched in
            canonical form (:mod:`bta.ids`) like :meth:`user_code`. Unknown ids are ignored.

        Returns
        -------
        EventLog
            The removed rows are counted in ``removed["erased"]``; ``users`` no longer holds
            the ids (their quarantined rows are matched on the input's user column, in
            canonical form too).
        """
        codes = self._user_codes(user_ids)
        gone = np.zeros(self.n_users, bool)
        gone[codes[codes >= 0]] = True
        keep_q = None
        if len(self.quarantine) and self.user_column in self.quarantine.columns:
            wanted = {c for c in canonical_ids(np.asarray(user_ids, dtype=object))
                      if c is not None}
            held = canonical_ids(self.quarantine[self.user_column].to_numpy(dtype=object))
            keep_q = ~pd.Index(held, dtype=object).isin(wanted)
        return self._without_rows(~gone[self.user], "erased", keep_q)

    def exclude_flagged(self) -> EventLog:
        """:meth:`select_users` of the users not flagged (``self`` when none is)."""
        if not self.flagged.any():
            return self
        return self.select_users(~self.flagged)

    # --------------------------------------------------------------- analyses

    @property
    def flag_report(self) -> pd.DataFrame:
        """Flagged users: ``user_id``, ``n_events``, ``rate`` (events per active hour),
        ``rate_z``, ``ctr`` and ``reason`` (``high_rate``, ``click_pattern`` or both)."""
        codes = np.flatnonzero(self.flagged)
        if self._bot is None:
            stats = {k: np.empty(0) for k in ("rate", "rate_z", "ctr")}
            flag = np.empty(0, np.int8)
        else:
            stats = {k: self._bot[k][codes] for k in ("rate", "rate_z", "ctr")}
            flag = self._bot["flag"][codes]
        return pd.DataFrame({
            "user_id": self.users[codes],
            "n_events": np.diff(self.user_offsets)[codes],
            **stats,
            "reason": np.array(_FLAG_REASONS, dtype=object)[flag],
        })

    def bot_stats(self, rule: BotRule | None = None) -> pd.DataFrame:
        """Per-user bot statistics of this log under ``rule`` (default: the log's rule).

        Returns
        -------
        pandas.DataFrame of shape (n_users, 10)
            ``user_id``, ``n_events``, ``active_hours``, ``rate``, ``rate_z``, ``clicks``,
            ``impressions``, ``ctr``, ``flagged``, ``reason``; the median and MAD are over
            this log's users (a selection's statistics differ from its parent's).
        """
        rule = self.bot_rule if rule is None else rule
        check_param("rule", rule, isinstance(rule, BotRule), "a BotRule")
        stats = _bot_stats(self.user_offsets, self.ts, self.event, rule)
        flag = stats.pop("flag")
        return pd.DataFrame({"user_id": self.users, **stats, "flagged": flag > 0,
                             "reason": np.array(_FLAG_REASONS, dtype=object)[flag]})

    def sessionize(self, gap: Any = "30min", max_length: Any = None) -> Sessions:
        """Split each user's events into sessions.

        Parameters
        ----------
        gap : duration, default "30min"
            A session ends after more than ``gap`` without events (a gap of exactly
            ``gap`` stays in the session). Any form :func:`to_millis` reads.
        max_length : duration, optional
            A session also ends once it would last longer than this.

        Returns
        -------
        Sessions

        Notes
        -----
        Event ``j`` of a user opens a session if it is the user's first, or if
        ``t_j - t_last > gap`` or ``t_j - t_start > max_length``, with ``t_start`` and
        ``t_last`` the open session's first and last times: exactly
        :func:`bta.events.kernels.is_new_session`, which the feature kernels share.
        """
        gap_ms = to_millis(gap, "gap")
        max_ms = 0 if max_length is None else to_millis(max_length, "max_length")
        session = _k.session_codes(self.ts, self.user_offsets, gap_ms, max_ms)
        first = np.flatnonzero(np.diff(session, prepend=-1))
        n_events = np.diff(np.append(first, self.n_rows))
        start = self.ts[first]
        end = self.ts[first + n_events - 1]
        duration_s = (end - start) / 1000.0
        table = pd.DataFrame({
            "user_id": self.users[self.user[first]],
            "session": np.arange(len(first), dtype=np.int64),
            "start": _utc(start), "end": _utc(end),
            "n_events": n_events.astype(np.int64),
            "duration_s": duration_s,
        })
        count = len(first)
        return Sessions(session=session, table=table, gap_ms=gap_ms, max_ms=max_ms,
                        count=count,
                        mean_events=float(n_events.mean()) if count else float("nan"),
                        mean_duration_s=float(duration_s.mean()) if count else float("nan"))


for _meth in (EventLog.from_pandas, EventLog.from_arrays):
    _meth.__func__.__doc__ = _meth.__doc__.replace("        %(options)s",  # type: ignore
                                                   _OPTIONS_DOC.strip("\n"))


def _is_polars(x: Any) -> bool:
    """A polars DataFrame or LazyFrame (told by module, so polars need not be installed)."""
    return type(x).__module__.split(".")[0] == "polars" and hasattr(x, "select")


def _take_rows(data: Any, rows: np.ndarray) -> pd.DataFrame:
    """Rows of a pandas frame or an Arrow table as a pandas frame (for the quarantine).

    Arrow's ``take`` has no kernel for the view types (``string_view``, ``binary_view``, as
    polars and DuckDB write them), in a table or behind a ``pd.ArrowDtype``: those columns
    are taken as their large equivalents.
    """
    import pyarrow as pa

    views = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}
    if isinstance(data, pd.DataFrame):
        cast = {i: views[t.pyarrow_dtype] for i, t in enumerate(data.dtypes)
                if isinstance(t, pd.ArrowDtype) and t.pyarrow_dtype in views}
        if cast:  # pandas cannot astype these either: cast the Arrow data itself
            data = data.copy(deep=False)
            for i, t in cast.items():
                arr = data.iloc[:, i].array.__arrow_array__().cast(t)
                data.isetitem(i, pd.Series(pd.arrays.ArrowExtensionArray(arr), index=data.index))
        return data.iloc[rows]
    schema = pa.schema([f.with_type(views.get(f.type, f.type)) for f in data.schema])
    if schema != data.schema:
        data = data.cast(schema)
    return data.take(pa.array(rows, pa.int64())).to_pandas()

"""Ingestion for :mod:`bta.events`: options, privacy screening, row checks, encoding.

Every :class:`~bta.events.EventLog` constructor ends in :func:`_ingest`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal

import numba
import numpy as np
import pandas as pd

from bta.events import kernels as _k
from bta.events.bots import BotRule
from bta.events.columns import _column, _read_events, _read_ids, _read_times, _read_values, _where
from bta.events.vocabulary import (
    _DIRECT_SPAN_SLACK,
    _REASON_COLUMN,
    _REASON_TEXT,
    COLUMNS,
    DEDUPE_MODES,
    DEFAULT_MAX_FUTURE,
    DEFAULT_TIME_RANGE,
    REASONS,
    REMOVAL_REASONS,
    STANDARD_EVENTS,
    _threads,
    logger,
)
from bta.events.times import _fmt_ms, to_epoch_ms, to_millis
from bta._jit import num_threads
from bta.errors import SchemaError, check_param
from bta.privacy import SCREEN_REASONS, PrivacyPolicy, pseudonymize

__all__ = ["_Options", "_ingest", "_session_codes"]

# Columns whose readers take Arrow text as categories (bta.events.columns._arrow_text):
# the ids and names that become codes. Event and session ids are kept as given instead.
_TEXT_CODED = ("user_id", "ts", "event", "category", "item_id")


@dataclasses.dataclass(frozen=True)
class _Options:
    """Ingestion options shared by every constructor (validated once)."""

    event_types: tuple[str, ...] = ()
    strict_events: bool = True
    errors: Literal["raise", "quarantine"] = "raise"
    ts_unit: Literal["auto", "s", "ms"] = "auto"
    ts_format: str | None = None
    time_range: tuple[int | None, int | None] = (None, None)
    max_future_ms: int | None = None
    dedupe: Literal["event_id", "exact", "none"] = "event_id"
    flag_bots: BotRule = BotRule()
    privacy: PrivacyPolicy = dataclasses.field(default_factory=PrivacyPolicy)
    pseudonymize_key: bytes | None = None

    @classmethod
    def make(cls, event_types: Sequence[str] | None = None, strict_events: bool = True,
             errors: str = "raise", ts_unit: str = "auto", ts_format: str | None = None,
             time_range: tuple[Any, Any] | None = DEFAULT_TIME_RANGE,
             max_future: Any = DEFAULT_MAX_FUTURE, dedupe: str = "event_id",
             flag_bots: BotRule | None = BotRule(), privacy: PrivacyPolicy | None = None,
             pseudonymize_key: bytes | None = None) -> _Options:
        if event_types is None:
            extras: tuple[str, ...] = ()
        else:
            check_param("event_types", event_types,
                        not isinstance(event_types, str) and isinstance(event_types, Sequence)
                        and all(isinstance(e, str) and e for e in event_types),
                        "a sequence of non-empty event names")
            # Standard names are always known; repeating them in event_types is harmless.
            extras = tuple(e for e in event_types if e not in STANDARD_EVENTS)
            check_param("event_types", event_types, len(set(extras)) == len(extras),
                        "a sequence without repeated names")
            check_param("event_types", event_types,
                        len(extras) + len(STANDARD_EVENTS) <= np.iinfo(np.int16).max,
                        "at most 32762 extra names (event codes are int16)")
        if time_range is None:
            bounds: tuple[int | None, int | None] = (None, None)
        else:
            check_param("time_range", time_range,
                        isinstance(time_range, (tuple, list)) and len(time_range) == 2,
                        "a (start, end) pair or None")
            bounds = tuple(None if t is None else to_epoch_ms(t, "time_range")
                           for t in time_range)  # type: ignore[assignment]
            check_param("time_range", time_range,
                        None in bounds or bounds[0] < bounds[1], "a (start, end) with start < end")
        future = None if max_future is None else to_millis(max_future, "max_future")
        if time_range is None:
            future = None  # no time checks at all
        if ts_format is not None:
            _check_ts_format(ts_format)
        if flag_bots is None:
            flag_bots = BotRule(enabled=False)
        if privacy is None:
            privacy = PrivacyPolicy()  # fresh: its empty registries are nobody's to fill
        if pseudonymize_key is not None:
            pseudonymize([], pseudonymize_key)  # the one place the key's rules are checked
            pseudonymize_key = bytes(pseudonymize_key)
        return cls(extras, strict_events, errors, ts_unit, ts_format, bounds,  # type: ignore
                   future, dedupe, flag_bots, privacy, pseudonymize_key)

    def __post_init__(self) -> None:
        check_param("strict_events", self.strict_events, isinstance(self.strict_events, bool),
                    "True or False")
        check_param("errors", self.errors, self.errors in ("raise", "quarantine"),
                    "one of 'raise', 'quarantine'")
        check_param("ts_unit", self.ts_unit, self.ts_unit in ("auto", "s", "ms"),
                    "one of 'auto', 's', 'ms'")
        check_param("dedupe", self.dedupe, self.dedupe in DEDUPE_MODES,
                    "one of " + ", ".join(map(repr, DEDUPE_MODES)))
        check_param("flag_bots", self.flag_bots, isinstance(self.flag_bots, BotRule),
                    "a BotRule or None")
        check_param("privacy", self.privacy, isinstance(self.privacy, PrivacyPolicy),
                    "a PrivacyPolicy or None")


def _check_ts_format(fmt: Any) -> None:
    """Refuse a ``ts_format`` that is not a strptime format pandas can use."""
    expected = "a strptime format such as '%d/%m/%Y %H:%M'"
    check_param("ts_format", fmt, isinstance(fmt, str) and "%" in fmt, expected)
    try:
        pd.to_datetime(pd.Series(["0"], dtype=object), format=fmt, errors="coerce")
    except ValueError as exc:  # a bad directive
        check_param("ts_format", fmt, False, f"{expected} ({exc})")


# ------------------------------------------------------------------------ the pipeline


def _encode(vals: np.ndarray, uniques: np.ndarray | None, valid: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes (int32, -1 where not valid) and the sorted vocabulary of valid rows.

    ``vals`` are integer ids (``uniques`` None) or codes into ``uniques`` (from
    :func:`_read_ids`). Integer ids in a modest range are encoded by direct addressing in
    one O(n + span) kernel; others are hash-factorized, then compacted to the values that
    occur in valid rows and sorted, so that codes never depend on row order.
    """
    vals = np.ascontiguousarray(vals)
    if uniques is None:
        max_span = 2 * len(vals) + _DIRECT_SPAN_SLACK
        ok, codes, vocab = _k.dense_codes(vals, valid, max_span)
        if ok:
            return codes, vocab
        fcodes, funiq = pd.factorize(vals)
        vals, uniques = fcodes, np.asarray(funiq)
    ok, codes, present = _k.dense_codes(np.ascontiguousarray(vals, dtype=np.int64)
                                        if vals.dtype not in (np.int32, np.int64) else vals,
                                        valid, len(uniques) + 2)
    vocab = uniques[present]
    if vocab.dtype == object:
        import pyarrow as pa
        import pyarrow.compute as pc

        # Arrow sorts UTF-8 bytewise, which is code-point order, i.e. Python's (np.unique)
        order = pc.sort_indices(pa.array(vocab, type=pa.large_string())).to_numpy()
    else:
        order = np.argsort(vocab, kind="stable")
    if len(order) and not np.array_equal(order, np.arange(len(order))):
        rank = np.empty(len(order) + 1, np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        rank[-1] = -1  # code -1 (not valid) indexes the last slot
        codes = rank[codes]
        vocab = vocab[order]
    return codes, vocab


def _row_error(reason: np.ndarray, where: dict[str, str], texts: dict[str, str]) -> SchemaError:
    """The SchemaError for ``errors='raise'``: the first reason, its count and rows."""
    counts = np.bincount(reason, minlength=len(REASONS) + 1)
    found = [c for c in range(1, len(REASONS) + 1) if counts[c]]
    first = found[0]
    name = REASONS[first - 1]
    rows = np.flatnonzero(reason == first)[:5].tolist()
    col = _REASON_COLUMN[name]
    head = where[col] if col else "all columns"

    def n_rows(k: int) -> str:
        return f"{k} row{'s' if k != 1 else ''}"

    msg = f"{head}: {n_rows(counts[first])} with {name} ({texts[name]}), first rows {rows}"
    others = [f"{n_rows(counts[c])} with {REASONS[c - 1]}" for c in found[1:]]
    if others:
        msg += "; also " + ", ".join(others)
    return SchemaError(msg)


def _take(x: np.ndarray | pd.Series, rows: np.ndarray) -> Any:
    return x[rows] if isinstance(x, np.ndarray) else x.iloc[rows].reset_index(drop=True)


def _event_codes(ev_raw: np.ndarray, ev_names: list[str], opts: _Options, where: str
                 ) -> tuple[np.ndarray, tuple[str, ...], list[str]]:
    """Event codes (int16, -1 = unknown or null), the vocabulary and the unknown names.

    The vocabulary is the standard names, the declared ones, then (``strict_events``
    False) the names seen in the column, sorted so that codes do not depend on row order.
    """
    event_types = STANDARD_EVENTS + opts.event_types
    if not opts.strict_events:
        event_types += tuple(sorted(set(ev_names) - set(event_types)))
        if len(event_types) > np.iinfo(np.int16).max:
            raise SchemaError(f"{where} has {len(event_types)} event names; at most 32767 "
                              "fit the int16 event codes")
    known = {name: i for i, name in enumerate(event_types)}
    lut = np.array([known.get(name, -1) for name in ev_names] + [-1], dtype=np.int16)
    unknown = sorted(name for name in ev_names if name not in known)
    return lut[ev_raw], event_types, unknown  # code -1 (null) picks the last slot, -1


def _first_reasons(masks: Sequence[np.ndarray | None], n: int) -> np.ndarray | None:
    """Per row, 1 + the index of the first mask that is True (0: none); None if no row
    has a problem. Masks are applied last first so that earlier reasons overwrite."""
    reason = None
    for code in range(len(masks), 0, -1):
        m = masks[code - 1]
        if m is not None and m.any():
            if reason is None:
                reason = np.zeros(n, np.int8)
            reason[m] = code
    return reason


def _quarantine_frame(reason: np.ndarray | None, cols: dict[str, Any],
                      take: Callable[[np.ndarray], pd.DataFrame] | None,
                      user_column: Hashable = "user_id", key: bytes | None = None
                      ) -> pd.DataFrame:
    """Rejected input rows (original columns) with ``row`` and ``reason`` added.

    Input columns already named ``row``/``reason`` are kept as ``row_input``/
    ``reason_input``. With ``key`` the user column holds pseudonyms, like the log.
    """
    bad_rows = np.flatnonzero(reason) if reason is not None else np.empty(0, np.int64)
    if take is None:
        q = pd.DataFrame({c: _take(x, bad_rows) for c, x in cols.items()})
    else:
        q = take(bad_rows).reset_index(drop=True)
    if key is not None and user_column in q.columns:
        q[user_column] = pseudonymize(q[user_column].to_numpy(dtype=object), key)
    q = q.rename(columns={c: f"{c}_input" for c in ("row", "reason") if c in q.columns})
    q["row"] = bad_rows
    q["reason"] = pd.Categorical.from_codes(
        (reason[bad_rows] - 1) if reason is not None else np.empty(0, np.int8),
        categories=list(REASONS))
    return q


def _id_codes(vals: np.ndarray, uniques: np.ndarray | None, missing: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Codes (-1 where missing) and distinct values of ids as :func:`_read_ids` gives them:
    integer ids (``uniques`` None) are factorized, their distinct values an int64 array."""
    codes, uniques = pd.factorize(vals) if uniques is None else (vals, uniques)
    if missing is not None:
        codes = np.where(missing, -1, codes)
    return codes, uniques


def _pseudonymize_ids(vals: np.ndarray, uniques: np.ndarray | None,
                      missing: np.ndarray | None, key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """User ids as :func:`_read_ids` returns them, replaced by their pseudonyms.

    Returns codes (int32, -1 where missing) into an object array of distinct pseudonyms; each
    distinct id is hashed once.
    """
    codes, uniques = _id_codes(vals, uniques, missing)
    codes = np.asarray(codes, dtype=np.int32)
    # ids equal as text (7 and "7") get one pseudonym, so factorize the hashes again
    pcodes, puniq = pd.factorize(pseudonymize(np.asarray(uniques, dtype=object), key))
    lut = np.append(pcodes.astype(np.int32), np.int32(-1))  # code -1 picks the last slot
    return lut[codes], np.asarray(puniq, dtype=object)


def _screen(policy: PrivacyPolicy, uid: tuple, cat: tuple | None, n: int) -> np.ndarray:
    """:meth:`PrivacyPolicy.screen_events` codes of the input rows, from the read columns.

    ``uid`` and ``cat`` are ``(values, uniques, missing)`` as :func:`_read_ids` returns them.
    """
    if cat is None:
        cat_codes, cat_uniques = np.full(n, -1, np.int32), np.empty(0, dtype=object)
    else:
        vals, uniques, missing = cat
        if uniques is None and not any(c.lstrip("-").isdigit()
                                       for c in policy.sensitive_categories):
            # integer categories cannot name a sensitive category: skip hashing the column
            cat_codes, cat_uniques = np.full(n, -1, np.int32), np.empty(0, dtype=object)
        else:
            cat_codes, cat_uniques = _id_codes(vals, uniques, missing)

    return policy._screen_codes(np.asarray(cat_codes), cat_uniques, lambda: _id_codes(*uid))


def _time_reasons(ts_ms: np.ndarray, ts_big: np.ndarray | None, opts: _Options,
                  texts: dict[str, str]) -> tuple[np.ndarray | None, ...]:
    """Masks of ``epoch_zero``, ``time_out_of_range`` and ``future_time`` (None: no row).

    ``texts`` gets the range and the future limit written into its reasons.
    """
    lo, hi = opts.time_range
    out_of_range = ts_big
    zero = None
    if lo is not None or hi is not None:
        oor = (ts_ms < lo) if lo is not None else np.zeros(len(ts_ms), bool)
        if hi is not None:
            oor |= ts_ms >= hi
        out_of_range = oor if out_of_range is None else (oor | out_of_range)
        if (lo is None or lo <= 0) and (hi is None or hi > 0):
            # exactly 0 is what a null becomes where a system writes it as 0 (Unix time 0, a
            # NOT NULL DEFAULT 0 column, a JSON 0): no real event lies on that millisecond
            zero = ts_ms == 0
            if ts_big is not None:
                zero &= ~ts_big  # too big for int64: those read as 0 only as a placeholder
            zero = zero if zero.any() else None
    texts["time_out_of_range"] = texts["time_out_of_range"].format(
        range=f"[{_fmt_ms(lo)}, {_fmt_ms(hi) if hi is not None else '+inf'})")
    future = None
    if opts.max_future_ms is not None:
        limit = time.time_ns() // 1_000_000 + opts.max_future_ms
        future = ts_ms > limit
        future = future if future.any() else None
        texts["future_time"] = texts["future_time"].format(
            limit=f"{_fmt_ms(limit)} (max_future past the time of ingestion)")
    return zero, out_of_range, future


def _ingest(raw: dict[str, Any], sources: dict[str, Hashable], n: int | None,
            take: Callable[[np.ndarray], pd.DataFrame] | None, opts: _Options
            ) -> dict[str, Any]:
    """Validate, encode and sort: the parts of an :class:`~bta.events.EventLog`."""
    where = {c: _where(c, sources[c]) for c in raw}
    cols = {}
    for c in COLUMNS:
        if c in raw:
            cols[c] = _column(raw[c], where[c], n,
                              text_codes=take is not None and c in _TEXT_CODED)
            n = len(cols[c])

    uid_vals, uid_uniques, uid_missing = _read_ids(cols["user_id"], "user_id",
                                                   where["user_id"], small=False)
    if opts.pseudonymize_key is not None:
        uid_vals, uid_uniques = _pseudonymize_ids(uid_vals, uid_uniques, uid_missing,
                                                  opts.pseudonymize_key)
    ts_ms, ts_bad, ts_big = _read_times(cols["ts"], where["ts"], opts.ts_unit, opts.ts_format)
    ev_raw, ev_names = _read_events(cols["event"], where["event"])
    if "category" in cols:
        cat_vals, cat_uniques, cat_missing = _read_ids(cols["category"], "category",
                                                       where["category"], small=True)
    if "item_id" in cols:
        item_vals, item_uniques, item_missing = _read_ids(cols["item_id"], "item_id",
                                                          where["item_id"], small=False)
    event_ids = None
    if "event_id" in cols:
        eid_codes, eid_uniques = _id_codes(*_read_ids(cols["event_id"], "event_id",
                                                      where["event_id"], small=False))
        event_ids = (np.asarray(eid_codes, dtype=np.int64), len(eid_uniques))
        del eid_codes, eid_uniques
    value = _read_values(cols["value"], where["value"]) if "value" in cols else None

    event, event_types, unknown = _event_codes(ev_raw, ev_names, opts, where["event"])
    del ev_raw

    # row problems, assigned last reason first so that the first matching reason wins
    texts = dict(_REASON_TEXT)
    zero, out_of_range, future = _time_reasons(ts_ms, ts_big, opts, texts)
    bad_value = None
    if value is not None:
        with np.errstate(invalid="ignore"):
            bad_value = (value < 0) | np.isinf(value)
    reason = _first_reasons((uid_missing, ts_bad, zero, out_of_range, future, event < 0,
                             bad_value), n)
    # privacy screening comes first: a screened row is removed, never quarantined with its data
    screen = _screen(opts.privacy, (uid_vals, uid_uniques, uid_missing),
                     (cat_vals, cat_uniques, cat_missing) if "category" in cols else None, n)
    screened = screen > 0
    removed = dict.fromkeys(REMOVAL_REASONS, 0)
    spellings: dict[str, int] = {}
    if screened.any():
        for code, k in enumerate(np.bincount(screen, minlength=len(SCREEN_REASONS))):
            if code:
                removed[SCREEN_REASONS[code]] = int(k)
        sens = screen == SCREEN_REASONS.index("sensitive")
        if sens.any() and "category" in cols and cat_uniques is not None:
            codes = np.asarray(cat_vals)[sens]
            per = np.bincount(codes[codes >= 0], minlength=len(cat_uniques))
            spellings = {str(cat_uniques[j]): int(per[j]) for j in np.flatnonzero(per)}
        if reason is not None:
            reason[screened] = 0
            reason = reason if reason.any() else None
    else:
        screened = None
    del screen, zero, out_of_range, future, bad_value, uid_missing, ts_bad, ts_big
    if unknown:
        texts["unknown_event"] += (f"; unknown names {unknown[:5]}, declare them with "
                                   "event_types= or pass strict_events=False")
    if reason is not None and opts.errors == "raise":
        raise _row_error(reason, where, texts)
    if screened is None:
        valid = (reason == 0) if reason is not None else np.empty(0, bool)  # empty: all valid
    else:
        valid = ~screened if reason is None else (~screened & (reason == 0))
    del screened

    if event_ids is not None and opts.dedupe == "event_id":
        # a repeated event id is one event delivered again (trackers retry): the first valid
        # row of each id is the event; the repeats are set aside, whatever errors= says
        repeat = _k.repeated_codes(event_ids[0], valid, event_ids[1])
        if repeat.any():
            if reason is None:
                reason = np.zeros(n, np.int8)
            reason[repeat] = REASONS.index("duplicate_event_id") + 1
            valid = ~repeat if valid.size == 0 else (valid & ~repeat)
        del repeat

    with num_threads(_threads(n)):
        # encode users, categories and items over the valid rows only
        user_codes, users = _encode(uid_vals, uid_uniques, valid)
        del uid_vals, uid_uniques
        cat_codes, categories = np.empty(0, np.int32), np.empty(0, dtype=object)
        if "category" in cols:
            cat_codes, categories = _encode(cat_vals, cat_uniques,
                                            _and_present(valid, cat_missing))
            del cat_vals, cat_uniques
        item_codes, items = None, np.empty(0, dtype=object)
        if "item_id" in cols:
            item_codes, items = _encode(item_vals, item_uniques,
                                        _and_present(valid, item_missing))
            del item_vals, item_uniques
        del valid

        # one counter array of n_users per chunk: use few chunks when users are many
        n_chunks = max(1, min(numba.get_num_threads(), 8, n // max(4 * len(users), 1)))
        ts_ms = np.ascontiguousarray(ts_ms)
        ok, offsets, ts_sorted, rows = _k.sort_by_user_time(user_codes, ts_ms, len(users),
                                                            n_chunks)
        if not ok:
            # times too far apart to pack beside row numbers (over 17 years of ms at 20M
            # rows): sort their ranks, which always fit, and map back
            times, ranks = np.unique(ts_ms, return_inverse=True)
            ok, offsets, ts_sorted, rows = _k.sort_by_user_time(user_codes, ranks, len(users),
                                                                n_chunks)
            ts_sorted = times[ts_sorted]
            del times, ranks
        del ts_ms

        session = cols.get("session_id")
        val_k = value if value is not None else np.empty(0, np.float64)
        if opts.dedupe == "exact":
            # exact duplicates sit in the same (user, ts) run after the sort
            keys = _row_keys(item_codes, session, event_ids, n, where)
            dup = _k.find_duplicates(offsets, ts_sorted, rows, event, cat_codes, val_k, keys)
            del keys
            if dup.any():
                if reason is None:
                    reason = np.zeros(n, np.int8)
                reason[rows[dup]] = REASONS.index("duplicate") + 1
                removed_before = np.concatenate(([0], np.cumsum(dup)))
                offsets = offsets - removed_before[offsets]
                keep = ~dup
                ts_sorted, rows = ts_sorted[keep], rows[keep]
                del keep, removed_before
            del dup
        del event_ids

        user_s = user_codes[:len(rows)]  # dead after the sort; reused for the output
        ev_s, cat_s, val_s = _k.gather_columns(rows, offsets, event, cat_codes, val_k, user_s)
        if value is None:
            val_s = np.zeros(len(rows))  # calloc: pages are only touched when read
        del event, cat_codes, val_k, value
        item_s = None if item_codes is None else item_codes[rows]
        del item_codes
        session_s = None if session is None else np.asarray(_take(session, rows))
        event_id_s = None
        if "event_id" in cols:
            event_id_s = np.asarray(_take(cols["event_id"], rows))
        del rows

        user_column = sources["user_id"] if take is not None else "user_id"
        q = _quarantine_frame(reason, cols, take, user_column, opts.pseudonymize_key)
        user_column = f"{user_column}_input" if user_column in ("row", "reason") else user_column
        if len(q):
            logger.info("quarantined %d of %d input rows: %s", len(q), n,
                        q["reason"].value_counts().loc[lambda c: c > 0].to_dict())
        return dict(user=user_s, ts=ts_sorted, event=ev_s, category=cat_s, value=val_s,
                    user_offsets=offsets, users=users, categories=categories,
                    event_types=event_types, quarantine=q, n_input_rows=n,
                    session_id=session_s, item=item_s, items=items, event_id=event_id_s,
                    removed=removed, user_column=user_column, screened_spellings=spellings)


def _and_present(valid: np.ndarray, missing: np.ndarray | None) -> np.ndarray:
    """Rows that are valid (an empty ``valid`` means all) and hold a value."""
    if missing is None:
        return valid
    return ~missing if valid.size == 0 else (valid & ~missing)


def _row_keys(item_codes: np.ndarray | None, session: Any, event_ids: tuple | None,
              n: int, where: dict[str, str]) -> np.ndarray:
    """The optional id columns of each input row as int64 codes, shape (n, k): what, beside
    event, category and value, two rows must share to be identical."""
    keys = []
    if item_codes is not None:
        keys.append(item_codes.astype(np.int64))
    if session is not None:
        keys.append(_session_codes(session, where["session_id"]))
    if event_ids is not None:
        keys.append(event_ids[0])
    if not keys:
        return np.empty((n, 0), np.int64)
    return np.ascontiguousarray(np.stack(keys, axis=1))


def _session_codes(session: Any, where: str) -> np.ndarray:
    """Session ids (any hashable values, kept as given) as int64 codes, -1 for null."""
    try:
        return pd.factorize(session)[0].astype(np.int64, copy=False)
    except TypeError as exc:  # unhashable ids (lists, dicts)
        raise SchemaError(f"{where} must hold hashable ids: {exc}") from None

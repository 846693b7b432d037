"""Event-log vocabulary and time conversions shared by :mod:`bta.events` and its parts.

The constants here are re-exported by :mod:`bta.events`, which documents them.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bta.errors import ConfigError, SchemaError, check_param
from bta.privacy import SCREEN_REASONS

__all__ = [
    "COLUMNS",
    "DEDUPE_MODES",
    "DEFAULT_MAX_FUTURE",
    "DEFAULT_TIME_RANGE",
    "ID_COLUMNS",
    "REASONS",
    "REMOVAL_REASONS",
    "STANDARD_EVENTS",
    "_CLICK",
    "_DIRECT_SPAN_SLACK",
    "_IMPRESSION",
    "_MAX_EPOCH_S",
    "_REASON_COLUMN",
    "_REASON_TEXT",
    "_SECONDS_BELOW",
    "_fmt_ms",
    "_resolve",
    "_threads",
    "logger",
    "to_epoch_ms",
    "to_millis",
]


logger = logging.getLogger("bta")

#: Event types every log knows, with fixed codes 0..4.
STANDARD_EVENTS = ("page_view", "search", "ad_impression", "ad_click", "conversion")
#: bta's column names; ``columns=`` maps these to the caller's names.
COLUMNS = ("user_id", "ts", "event", "category", "value", "session_id", "item_id", "event_id")
_REQUIRED = ("user_id", "ts", "event")
#: Columns that name things (users, categories, items, sessions, events): a reader of text
#: files must keep them as text, so that ``"001"`` and ``"1"`` stay two ids whatever the other
#: rows hold.
ID_COLUMNS = ("user_id", "category", "item_id", "session_id", "event_id")
#: Quarantine reason codes, in the order they are checked.
REASONS = ("missing_user", "bad_time", "epoch_zero", "time_out_of_range", "future_time",
           "unknown_event", "bad_value", "duplicate_event_id", "duplicate")
#: Why accepted rows left a log (``EventLog.removed``): privacy screening at ingestion,
#: retention and erasure.
REMOVAL_REASONS = SCREEN_REASONS[1:] + ("expired", "erased")
#: Accepted times by default: from ``1970-01-01`` UTC on, with no fixed end (rows in the
#: future are caught by ``max_future`` instead).
DEFAULT_TIME_RANGE = ("1970-01-01", None)
#: How far past the time of ingestion an event may lie by default: clocks of browsers and
#: servers drift, and a day covers every time zone written as if it were UTC.
DEFAULT_MAX_FUTURE = "1d"
#: ``dedupe=`` choices: on the ``event_id`` column (when given), on every column, or none.
DEDUPE_MODES = ("event_id", "exact", "none")

_REASON_TEXT = {
    "missing_user": "null or empty user id",
    "bad_time": "unparseable or null time",
    "epoch_zero": "time exactly 1970-01-01T00:00:00Z, a null written as 0",
    "time_out_of_range": "time outside {range}",
    "future_time": "time later than {limit}",
    "unknown_event": "unknown or null event name",
    "bad_value": "negative or infinite value",
    "duplicate_event_id": "repeat of an earlier row's event id",
    "duplicate": "exact duplicate of an earlier row",
}
_REASON_COLUMN = {"missing_user": "user_id", "bad_time": "ts", "epoch_zero": "ts",
                  "time_out_of_range": "ts", "future_time": "ts", "unknown_event": "event",
                  "bad_value": "value", "duplicate_event_id": "event_id", "duplicate": None}
_CLICK = STANDARD_EVENTS.index("ad_click")
_IMPRESSION = STANDARD_EVENTS.index("ad_impression")
# Integer ids spanning at most this many values (beyond 2 per row) are encoded by a direct
# lookup table (O(n + span), 4 bytes per slot); wider ranges go through a hash table.
_DIRECT_SPAN_SLACK = 1 << 20
# Largest |epoch seconds| that still fits int64 milliseconds.
_MAX_EPOCH_S = np.iinfo(np.int64).max // 1000
# Waking numba's worker threads costs milliseconds (far more on a busy machine); below this
# many rows one thread finishes first.
_PARALLEL_MIN_ROWS = 200_000
# Epoch numbers whose median magnitude is below this are seconds, else milliseconds:
# 1e11 s is the year 5138 while 1e11 ms is 1973-03-03, so realistic data of either
# unit falls clearly on its side.
_SECONDS_BELOW = 1e11


# ----------------------------------------------------------------------------- helpers


def to_epoch_ms(t: Any, name: str) -> int:
    """One point in time as integer epoch milliseconds, UTC.

    Parameters
    ----------
    t : datetime, date, pandas.Timestamp, str, numpy.datetime64 or int
        Naive times are taken as UTC, aware ones converted; an int is epoch milliseconds.
    name : str
        Parameter name, for the error message.

    Returns
    -------
    int

    Raises
    ------
    ConfigError
        If ``t`` is not a time (or is NaT).

    Examples
    --------
    >>> to_epoch_ms("2020-01-01", "as_of")
    1577836800000
    """
    expected = ("a time (datetime, Timestamp, date string, numpy datetime64 or integer epoch "
                "milliseconds)")
    if isinstance(t, (bool, np.bool_)) or t is None:
        check_param(name, t, False, expected)
    if isinstance(t, (int, np.integer)):
        return int(t)
    if not isinstance(t, (str, _dt.date, np.datetime64)):
        check_param(name, t, False, expected)
    try:
        stamp = pd.Timestamp(t)
    except (ValueError, TypeError, OverflowError):
        stamp = pd.NaT
    check_param(name, t, stamp is not pd.NaT, expected)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    # Timestamp.value is nanoseconds whatever the unit; floor like datetime64 casts do.
    return int(stamp.value // 1_000_000)


_DAY_UNIT = re.compile(r"(?<=\d)\s*d(?![a-z])")


def to_millis(duration: Any, name: str) -> int:
    """A positive duration as integer milliseconds.

    Parameters
    ----------
    duration : str, pandas.Timedelta, datetime.timedelta, numpy.timedelta64, int or float
        Strings as pandas reads them (``"30min"``, ``"1h"``, ``"7D"``); numbers are seconds.
        Rounded to the nearest millisecond.
    name : str
        Parameter name, for the error message.

    Returns
    -------
    int
        At least 1.

    Raises
    ------
    ConfigError
        If ``duration`` is not a duration, or is not positive.

    Examples
    --------
    >>> to_millis("30min", "gap"), to_millis(1.5, "gap")
    (1800000, 1500)
    """
    expected = ("a positive duration (a string like '30min', a Timedelta, a timedelta or "
                "seconds)")
    if isinstance(duration, (bool, np.bool_)) or duration is None:
        check_param(name, duration, False, expected)
    if isinstance(duration, (int, np.integer, float, np.floating)) and not isinstance(
            duration, np.timedelta64):  # np.timedelta64 is an np.integer too
        seconds = float(duration)
        check_param(name, duration, bool(np.isfinite(seconds)) and seconds > 0, expected)
        ms = round(seconds * 1000.0)
    else:
        check_param(name, duration,
                    isinstance(duration, (str, _dt.timedelta, np.timedelta64)), expected)
        # pandas 3 deprecates the lowercase day unit ("7d"); bta's names use it, so spell it
        # the way pandas wants before parsing (messages keep the caller's spelling)
        parsed = _DAY_UNIT.sub("D", duration) if isinstance(duration, str) else duration
        try:
            td = pd.Timedelta(parsed)
        except (ValueError, TypeError, OverflowError):
            td = pd.NaT
        check_param(name, duration, td is not pd.NaT and td.value > 0, expected)
        ms = (td.value + 500_000) // 1_000_000  # Timedelta.value is nanoseconds
    check_param(name, duration, ms >= 1, "a duration of at least 1 millisecond")
    return int(ms)


def _threads(n_rows: int) -> int | None:
    """Thread count for the kernels on ``n_rows`` rows (None: numba's default)."""
    return 1 if n_rows < _PARALLEL_MIN_ROWS else None


def _fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-inf"
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


def _resolve(columns: Mapping[str, Hashable] | None, available: Sequence[Hashable]
             ) -> dict[str, Hashable]:
    """bta column -> the caller's column, for the columns present."""
    columns = {} if columns is None else columns
    check_param("columns", columns, isinstance(columns, Mapping),
                "a mapping from bta column names to your column names")
    unknown = [k for k in columns if k not in COLUMNS]
    if unknown:
        raise ConfigError(f"columns has unknown keys {unknown}; expected keys among "
                          f"{list(COLUMNS)}")
    present = set(available)
    out: dict[str, Hashable] = {}
    for c in COLUMNS:
        src = columns.get(c, c)
        if src in present:
            out[c] = src
        elif c in _REQUIRED or c in columns:
            shown = list(available)[:20] + (["..."] if len(available) > 20 else [])
            mapped = f" (mapped from {src!r})" if src != c else ""
            kind = "required " if c in _REQUIRED else ""
            raise SchemaError(f"missing {kind}column {c!r}{mapped}; got columns {shown}")
    return out

"""The event log's vocabulary: its columns, standard events, row reasons and defaults.

The public constants are re-exported by :mod:`bta.events`, which documents them.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

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
    "_REASON_COLUMN",
    "_REASON_TEXT",
    "_resolve",
    "_threads",
    "logger",
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
# Waking numba's worker threads costs milliseconds (far more on a busy machine); below this
# many rows one thread finishes first.
_PARALLEL_MIN_ROWS = 200_000


# ----------------------------------------------------------------------------- helpers


def _threads(n_rows: int) -> int | None:
    """Thread count for the kernels on ``n_rows`` rows (None: numba's default)."""
    return 1 if n_rows < _PARALLEL_MIN_ROWS else None


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

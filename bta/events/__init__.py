"""EventLog: the one validated, columnar form of clickstream events.

Every input (pandas with NumPy or Arrow dtypes, polars, Arrow, Parquet, plain arrays) is
converted once into contiguous arrays sorted by (user, time); users, categories, items and
event types become dense integer codes with sorted vocabularies, so that codes (and every
result computed from them) do not depend on the order of the input rows. Every input row is
accounted for: accepted, or quarantined with a reason code (``errors="raise"``, the default,
raises instead), or removed by the privacy policy and counted.

Rows are data. Two identical rows are two events (two views of one page in one second, two
purchases of one amount on one day) and both are kept; ``summary()`` counts them. Telling a
repeated *delivery* of one event from a second event takes an event id: with an
``event_id`` column, repeats of an id are set aside (see ``dedupe``).

Row problems, checked in this order (the first that applies is the row's reason):

======================= ================================================================
``missing_user``        null (or empty string) user id
``bad_time``            null or unparseable time
``epoch_zero``          time exactly 1970-01-01T00:00:00.000Z while the time range holds it:
                        what a null becomes where a system writes it as 0 (Unix time 0, a
                        ``NOT NULL DEFAULT 0`` column, a JSON ``0``); no real event lies on
                        that millisecond. ``time_range=None`` accepts it.
``time_out_of_range``   time outside ``time_range`` (``lo <= t < hi``)
``future_time``         time later than the moment of ingestion plus ``max_future`` (while
                        ``time_range`` is not None)
``unknown_event``       null event name, or a name neither standard nor declared
``bad_value``           negative or infinite value (a null value is 0.0, not a problem)
``duplicate_event_id``  (``dedupe="event_id"``, with an ``event_id`` column) repeat of the
                        event id of an earlier valid row; the first is kept
``duplicate``           (``dedupe="exact"`` only) identical to an earlier valid row on every
                        provided column (times compared in milliseconds, null equals null);
                        the first is kept
======================= ================================================================

The two duplicate reasons are the deduplication asked for, not errors: their rows are set
aside in the quarantine even with ``errors="raise"``.

Columns (bta name: what it may hold):

- ``user_id`` (required): strings or integers (floats are accepted when integral). Ids are
  kept as the source gave them and compared in their canonical form (:mod:`bta.ids`).
- ``ts`` (required): datetime64 of any unit (tz-aware converted to UTC, naive taken as UTC),
  Timestamps, ISO 8601 strings (any other text format needs ``ts_format``), or epoch seconds /
  milliseconds (``ts_unit``).
- ``event`` (required): event names as strings, pandas Categorical or Arrow dictionary.
- ``category`` (optional): strings or integers, null allowed (code -1).
- ``item_id`` (optional): the page, product or URL id of the event, strings or integers,
  null allowed (code -1); encoded like categories, vocabulary in ``items``.
- ``value`` (optional): numbers, null allowed (0.0).
- ``session_id`` (optional): any hashable ids, kept as given.
- ``event_id`` (optional): the event's own id (Snowplow ``event_id``, Segment
  ``messageId``, an order id), strings or integers, kept as given; null or empty ids never
  repeat.

Text files must keep the id columns (:data:`ID_COLUMNS`) as text, so that ``"001"`` and
``"1"`` stay two ids: the ``bta`` command's CSV reading does.

Privacy (see :mod:`bta.privacy`): before any check, each row is screened by the
``privacy`` policy (by default ``PrivacyPolicy()``, whose sensitive deny list always
applies): rows of opted-out users, of known minors, and in sensitive categories without
the user's opt-in are *removed*, not quarantined, so that the data the policy keeps out is
not kept anywhere; they are counted by reason in ``removed``. With ``pseudonymize_key``
user ids are replaced by their keyed hash (:func:`bta.privacy.pseudonymize`) before
anything else sees them, the quarantine included. Retention (:meth:`EventLog.retain`) and
erasure (:meth:`EventLog.erase`) return new logs and count what they removed the same way:
``n_input_rows == n_rows + len(quarantine) + sum(removed.values())`` always holds.
"""

from bta.events.bots import BotRule
from bta.events.log import EventLog
from bta.events.sessions import Sessions
from bta.events.times import to_epoch_ms, to_millis
from bta.events.vocabulary import (
    COLUMNS,
    DEDUPE_MODES,
    DEFAULT_MAX_FUTURE,
    DEFAULT_TIME_RANGE,
    ID_COLUMNS,
    REASONS,
    REMOVAL_REASONS,
    STANDARD_EVENTS,
)

__all__ = [
    "STANDARD_EVENTS",
    "COLUMNS",
    "ID_COLUMNS",
    "REASONS",
    "DEDUPE_MODES",
    "DEFAULT_TIME_RANGE",
    "DEFAULT_MAX_FUTURE",
    "REMOVAL_REASONS",
    "BotRule",
    "EventLog",
    "Sessions",
    "to_epoch_ms",
    "to_millis",
]

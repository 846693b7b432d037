"""EventLog: the one validated, columnar form of clickstream events.

Every input (pandas, Arrow, Parquet, plain arrays) is converted once into contiguous arrays
sorted by (user, time); users, categories and event types become dense integer codes with
sorted vocabularies, so that codes (and every result computed from them) do not depend on
the order of the input rows. Every input row is accounted for: accepted, or quarantined
with a reason code (``errors="raise"``, the default, raises instead).

Row problems, checked in this order (the first that applies is the row's reason):

======================= ================================================================
``missing_user``        null (or empty string) user id
``bad_time``            null or unparseable time
``time_out_of_range``   time outside ``time_range`` (``lo <= t < hi``)
``unknown_event``       null event name, or a name neither standard nor declared
``bad_value``           negative or infinite value (a null value is 0.0, not a problem)
``duplicate``           exact duplicate of an earlier accepted row on every provided
                        column (times compared in milliseconds, null equals null); the
                        first is kept
======================= ================================================================

Columns (bta name: what it may hold):

- ``user_id`` (required): strings or integers (floats are accepted when integral).
- ``ts`` (required): datetime64 of any unit (tz-aware converted to UTC, naive taken as UTC),
  Timestamps or strings pandas can parse, or epoch seconds / milliseconds (``ts_unit``).
- ``event`` (required): event names as strings, pandas Categorical or Arrow dictionary.
- ``category`` (optional): strings or integers, null allowed (code -1).
- ``value`` (optional): numbers, null allowed (0.0).
- ``session_id`` (optional): any hashable ids, kept as given.

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

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal

import numba
import numpy as np
import pandas as pd

from bta import _event_kernels as _k
from bta._jit import num_threads
from bta.errors import ConfigError, SchemaError, UnknownNameError, check_param
from bta.privacy import SCREEN_REASONS, PrivacyPolicy, pseudonymize

__all__ = [
    "STANDARD_EVENTS",
    "COLUMNS",
    "REASONS",
    "DEFAULT_TIME_RANGE",
    "REMOVAL_REASONS",
    "BotRule",
    "EventLog",
    "Sessions",
    "to_epoch_ms",
    "to_millis",
]

logger = logging.getLogger("bta")

#: Event types every log knows, with fixed codes 0..4.
STANDARD_EVENTS = ("page_view", "search", "ad_impression", "ad_click", "conversion")
#: bta's column names; ``columns=`` maps these to the caller's names.
COLUMNS = ("user_id", "ts", "event", "category", "value", "session_id")
_REQUIRED = ("user_id", "ts", "event")
#: Quarantine reason codes, in the order they are checked.
REASONS = ("missing_user", "bad_time", "time_out_of_range", "unknown_event", "bad_value",
           "duplicate")
#: Why accepted rows left a log (``EventLog.removed``): privacy screening at ingestion,
#: retention and erasure.
REMOVAL_REASONS = SCREEN_REASONS[1:] + ("expired", "erased")
#: Accepted times by default: ``2000-01-01 <= ts < 2100-01-01`` UTC.
DEFAULT_TIME_RANGE = ("2000-01-01", "2100-01-01")

_REASON_TEXT = {
    "missing_user": "null or empty user id",
    "bad_time": "unparseable or null time",
    "time_out_of_range": "time outside {range}",
    "unknown_event": "unknown or null event name",
    "bad_value": "negative or infinite value",
    "duplicate": "exact duplicate of an earlier row",
}
_REASON_COLUMN = {"missing_user": "user_id", "bad_time": "ts", "time_out_of_range": "ts",
                  "unknown_event": "event", "bad_value": "value", "duplicate": None}
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


# ------------------------------------------------------------------------ configuration


@dataclasses.dataclass(frozen=True)
class BotRule:
    """Which users to flag as bots or anomalies. Flagging never drops rows.

    Parameters
    ----------
    enabled : bool, default True
        ``BotRule(enabled=False)`` flags nobody.
    rate_z : float, default 6.0
        Flag users whose robust z-score of log event rate exceeds this.
    min_events : int, default 50
        ... and who have at least this many events (a short burst of a light user is not
        evidence of automation).
    min_scale : float, default 0.5
        Floor of the robust scale (natural-log units). Most users have one event per
        active hour, which can make the MAD zero; the floor keeps z finite, and with the
        defaults means a rate ``exp(6 * 0.5) ≈ 20`` times the median at the very least.
    min_clicks : int, default 10
        Click rule: users with at least this many clicks ...
    max_ctr : float, default 0.5
        ... and a click-through rate (clicks / impressions) above this, or clicks with no
        impression at all. Real CTRs are a few percent; above 50% is click fraud or a
        logging fault.

    Notes
    -----
    For user ``u`` with ``n_u`` events spread over ``h_u`` distinct UTC clock hours:

    .. math::

        r_u = \\log(n_u / h_u), \\quad
        z_u = \\frac{r_u - \\operatorname{median}(r)}
                    {\\max(1.4826 \\cdot \\operatorname{MAD}(r),\\ \\text{min\\_scale})}

    where median and MAD are over all users of the log. ``u`` is flagged ``high_rate`` if
    ``z_u > rate_z`` and ``n_u >= min_events``; ``click_pattern`` if ``clicks_u >=
    min_clicks`` and (``impressions_u == 0`` or ``clicks_u / impressions_u > max_ctr``).
    The click rule only applies when the log holds any ``ad_impression`` at all (a log
    without impressions says nothing about click-through).
    """

    enabled: bool = True
    rate_z: float = 6.0
    min_events: int = 50
    min_scale: float = 0.5
    min_clicks: int = 10
    max_ctr: float = 0.5

    def __post_init__(self) -> None:
        check_param("enabled", self.enabled, isinstance(self.enabled, bool), "True or False")
        for name in ("rate_z", "min_scale", "max_ctr"):
            v = getattr(self, name)
            check_param(name, v, isinstance(v, (int, float)) and not isinstance(v, bool)
                        and np.isfinite(v) and v > 0, "a positive finite number")
        for name in ("min_events", "min_clicks"):
            v = getattr(self, name)
            check_param(name, v, isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                        and v >= 1, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class _Options:
    """Ingestion options shared by every constructor (validated once)."""

    event_types: tuple[str, ...] = ()
    strict_events: bool = True
    errors: Literal["raise", "quarantine"] = "raise"
    ts_unit: Literal["auto", "s", "ms"] = "auto"
    time_range: tuple[int | None, int | None] = (None, None)
    flag_bots: BotRule = BotRule()
    privacy: PrivacyPolicy = dataclasses.field(default_factory=PrivacyPolicy)
    pseudonymize_key: bytes | None = None

    @classmethod
    def make(cls, event_types: Sequence[str] | None = None, strict_events: bool = True,
             errors: str = "raise", ts_unit: str = "auto",
             time_range: tuple[Any, Any] | None = DEFAULT_TIME_RANGE,
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
        if flag_bots is None:
            flag_bots = BotRule(enabled=False)
        if privacy is None:
            privacy = PrivacyPolicy()  # fresh: its empty registries are nobody's to fill
        if pseudonymize_key is not None:
            pseudonymize([], pseudonymize_key)  # the one place the key's rules are checked
            pseudonymize_key = bytes(pseudonymize_key)
        return cls(extras, strict_events, errors, ts_unit, bounds, flag_bots,  # type: ignore
                   privacy, pseudonymize_key)

    def __post_init__(self) -> None:
        check_param("strict_events", self.strict_events, isinstance(self.strict_events, bool),
                    "True or False")
        check_param("errors", self.errors, self.errors in ("raise", "quarantine"),
                    "one of 'raise', 'quarantine'")
        check_param("ts_unit", self.ts_unit, self.ts_unit in ("auto", "s", "ms"),
                    "one of 'auto', 's', 'ms'")
        check_param("flag_bots", self.flag_bots, isinstance(self.flag_bots, BotRule),
                    "a BotRule or None")
        check_param("privacy", self.privacy, isinstance(self.privacy, PrivacyPolicy),
                    "a PrivacyPolicy or None")


# ---------------------------------------------------------------- column normalization
#
# Each column is first brought to either a 1-D NumPy array or a pandas Series with an
# extension dtype (categorical, string, tz-aware datetime, nullable number); Arrow data
# goes through pandas once. The per-column readers below then return plain arrays.


def _where(col: str, source: Hashable) -> str:
    return f"column {col!r}" if source == col else f"column {col!r} (mapped from {source!r})"


def _arrow_to_series(arr: Any, where: str) -> pd.Series:
    import pyarrow as pa

    if isinstance(arr, pa.Array):
        arr = pa.chunked_array([arr], type=arr.type)
    if pa.types.is_nested(arr.type):
        raise SchemaError(f"{where} holds nested values ({arr.type}); expected scalars")

    def mapper(t: Any) -> Any:
        # Integers with nulls would become float64 (losing ids above 2**53); keep them exact.
        if pa.types.is_signed_integer(t):
            return pd.Int64Dtype()
        if pa.types.is_unsigned_integer(t):
            return pd.UInt64Dtype()
        return None

    return arr.to_pandas(types_mapper=mapper)


def _column(x: Any, where: str, n: int | None = None) -> np.ndarray | pd.Series:
    """A column as a 1-D ndarray, or a Series when its dtype is a pandas extension."""
    if isinstance(x, pd.DataFrame):
        raise SchemaError(f"{where} appears more than once (or is a frame); expected one column")
    if type(x).__module__.startswith("pyarrow"):
        x = _arrow_to_series(x, where)
    elif hasattr(x, "to_arrow") and not isinstance(x, (pd.Series, np.ndarray)):
        x = _arrow_to_series(x.to_arrow(), where)  # polars and other Arrow-speaking frames
    elif isinstance(x, (pd.Index, pd.api.extensions.ExtensionArray)):
        x = pd.Series(x)
    elif not isinstance(x, (pd.Series, np.ndarray)):
        if np.ndim(x) == 0 or isinstance(x, (str, bytes, Mapping)):
            raise SchemaError(f"{where} must be a 1-D array-like, got {type(x).__name__}")
        x = pd.Series(list(x)) if len(x) else np.empty(0, dtype=object)
    if isinstance(x, pd.Series):
        if isinstance(x.dtype, pd.ArrowDtype):
            import pyarrow as pa

            x = _arrow_to_series(pa.chunked_array(x.array), where)
        if not pd.api.types.is_extension_array_dtype(x.dtype):
            x = x.to_numpy()
    if isinstance(x, np.ndarray) and x.ndim != 1:
        raise SchemaError(f"{where} must be 1-D, got an array of shape {x.shape}")
    if n is not None and len(x) != n:
        raise SchemaError(f"{where} has {len(x)} rows; expected {n} like the other columns")
    return x


def _describe(x: np.ndarray | pd.Series) -> str:
    if x.dtype == object:
        return f"object ({pd.api.types.infer_dtype(x, skipna=True)})"
    return str(x.dtype)


def _check_not_nested(x: np.ndarray, where: str) -> None:
    """Raise if the first non-null element of an object column is a container."""
    for v in x[:1000]:
        if isinstance(v, (list, tuple, dict, set, np.ndarray)):
            raise SchemaError(f"{where} holds nested values ({type(v).__name__}); "
                              "expected scalars")
        if v is not None:
            return


def _nullable_numbers(x: np.ndarray, kind: str, expected: str) -> pd.Series:
    """An object column of Python numbers (and nulls) as a nullable Int64/Float64 Series."""
    try:
        return pd.Series(pd.array(x, dtype="Int64" if kind == "integer" else "Float64"))
    except (TypeError, ValueError, OverflowError):  # e.g. integers beyond int64
        raise SchemaError(f"{expected} {_describe(x)} beyond int64/float64") from None


def _factorize(x: np.ndarray | pd.Series, small: bool) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize`` (codes, uniques as an ndarray), with a fast path for object columns.

    A column of Python strings usually holds a handful of distinct string *objects* (the
    same interned names, repeated). With ``small``, such a column is factorized on object
    identity (the pointers, read as integers without touching the objects; ``x`` stays
    alive meanwhile) in one pass, and only the few distinct objects are hashed by value.
    Columns with many distinct objects fall back to pandas.
    """
    if (small and isinstance(x, np.ndarray) and x.dtype == object and len(x) > 0
            and x.flags.c_contiguous):
        ptrs = np.frombuffer(memoryview(x), dtype=np.intp).astype(np.int64, copy=False)
        ok, codes, first = _k.small_factorize(ptrs, 64)
        if ok:
            sub_codes, uniques = pd.factorize(x[first])
            return sub_codes.astype(np.int32)[codes], np.asarray(uniques, dtype=object)
    codes, uniques = pd.factorize(x)
    if not isinstance(uniques, np.ndarray):
        uniques = uniques.to_numpy()
    return codes, uniques


def _read_ids(x: np.ndarray | pd.Series, col: str, where: str, small: bool
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read a user_id / category column.

    Returns ``(values, uniques, missing)``: with ``uniques`` None, ``values`` are the
    integer ids themselves; otherwise codes into ``uniques`` (-1 = null). ``missing`` is a
    bool mask of null (or empty-string) rows, or None when there are none.
    """
    expected = f"{where} must hold strings or integers, got"
    dtype = x.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        cats = _column(dtype.categories, where)
        cat_vals, cat_uniques, cat_missing = _read_ids(cats, col, where, small=False)
        codes = np.asarray(x.cat.codes)
        if cat_uniques is None:  # integer categories: recode to the ids themselves
            lut = np.append(cat_vals.astype(np.int64), 0)
            missing = codes < 0
            return lut[codes], None, (missing if missing.any() else None)
        # categories are distinct, so their own codes are the identity
        codes = codes.astype(np.int32)
        uniques = cat_uniques
    elif isinstance(dtype, pd.StringDtype) or (isinstance(x, np.ndarray)
                                               and dtype.kind in "OUS"):
        if dtype == object:
            _check_not_nested(x, where)
            kind = pd.api.types.infer_dtype(x, skipna=True)
            if kind in ("integer", "floating", "mixed-integer-float"):
                return _read_ids(_nullable_numbers(x, kind, expected), col, where, small)
            if kind not in ("string", "empty"):
                raise SchemaError(f"{expected} {_describe(x)}")
        elif dtype.kind == "S":
            raise SchemaError(f"{expected} bytes ({dtype})")
        codes, uniques = _factorize(x, small)
        uniques = uniques.astype(object)
    elif dtype.kind == "b" or isinstance(dtype, pd.BooleanDtype):
        raise SchemaError(f"{expected} bool")
    elif pd.api.types.is_integer_dtype(dtype):
        if isinstance(x, pd.Series):  # nullable integers
            missing = np.asarray(x.isna())
            if dtype == pd.UInt64Dtype() and (x.max() or 0) > np.iinfo(np.int64).max:
                raise SchemaError(f"{expected} unsigned integers above 2**63")
            vals = x.to_numpy(dtype=np.int64, na_value=0)
            return vals, None, (missing if missing.any() else None)
        if dtype.kind == "u" and dtype.itemsize == 8 and len(x) and \
                x.max() > np.iinfo(np.int64).max:
            raise SchemaError(f"{expected} unsigned integers above 2**63")
        if dtype not in (np.int32, np.int64):
            x = x.astype(np.int64)
        return x, None, None
    elif pd.api.types.is_float_dtype(dtype):
        vals = x.to_numpy(dtype=np.float64, na_value=np.nan) if isinstance(x, pd.Series) \
            else x.astype(np.float64, copy=False)
        missing = np.isnan(vals)
        with np.errstate(invalid="ignore"):
            frac = ~missing & (vals != np.floor(vals))
        if frac.any() or np.isinf(vals).any():
            i = int(np.flatnonzero(frac | np.isinf(vals))[0])
            raise SchemaError(f"{expected} floats with fractions "
                              f"(e.g. {float(vals[i])!r} at row {i})")
        ints = np.where(missing, 0.0, vals).astype(np.int64)
        return ints, None, (missing if missing.any() else None)
    else:
        raise SchemaError(f"{expected} {_describe(x)}")
    missing = codes < 0
    if col == "user_id":
        # An empty id names nobody; it is quarantined as missing rather than a user "".
        empty = np.flatnonzero(uniques == "")
        if len(empty):
            missing |= codes == empty[0]
    return codes, uniques, (missing if missing.any() else None)


def _read_events(x: np.ndarray | pd.Series, where: str) -> tuple[np.ndarray, list[str]]:
    """Event names as (codes into names, names); code -1 is a null."""
    dtype = x.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        codes, names = np.asarray(x.cat.codes), list(dtype.categories)
    elif isinstance(dtype, pd.StringDtype) or (isinstance(x, np.ndarray) and dtype.kind in "OU"):
        if dtype == object:
            _check_not_nested(x, where)
        codes, uniques = _factorize(x, small=True)
        names = list(uniques)
    else:
        raise SchemaError(f"{where} must hold event names (strings), got {_describe(x)}")
    bad = [v for v in names if not isinstance(v, str)]
    if bad:
        raise SchemaError(f"{where} must hold event names (strings), got "
                          f"{type(bad[0]).__name__} values such as {bad[0]!r}")
    return codes, names


def _epoch_numbers(vals: np.ndarray, missing: np.ndarray | None, unit: str
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Epoch numbers -> (ms, bad, too_big)."""
    if unit == "auto":
        ok = vals if missing is None else vals[~missing]
        if vals.dtype.kind == "f":
            ok = ok[np.isfinite(ok)]
        # A strided sample keeps this O(1) in the number of rows; the decision is one
        # for the whole column, so a few stray rows cannot flip it.
        step = max(1, len(ok) // 100_001)
        sample = np.abs(ok[::step].astype(np.float64))
        unit = "s" if len(sample) and float(np.median(sample)) < _SECONDS_BELOW else "ms"
    scale = 1000 if unit == "s" else 1
    if vals.dtype.kind == "f":
        with np.errstate(invalid="ignore", over="ignore"):
            ms_f = np.rint(vals * scale) if scale != 1 else np.rint(vals)
            bad = ~np.isfinite(ms_f)
            too_big = ~bad & (np.abs(ms_f) >= 9.2e18)
        ms = np.where(bad | too_big, 0.0, ms_f).astype(np.int64)
        if missing is not None:
            bad |= missing
        return ms, (bad if bad.any() else None), (too_big if too_big.any() else None)
    vals = vals.astype(np.int64, copy=False)
    too_big = None
    if scale != 1:
        big = np.abs(vals) > _MAX_EPOCH_S
        if big.any():
            too_big = big
            vals = np.where(big, 0, vals)
        vals = vals * scale
    return vals, missing, too_big


def _datetimes_to_ms(x: np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray | None]:
    """datetime64 (numpy, or pandas naive/aware) -> (UTC epoch ms, NaT mask)."""
    if isinstance(x, pd.Series):  # tz-aware: asi8 is the UTC epoch in the dtype's unit
        unit = x.dtype.unit
        x = pd.DatetimeIndex(x).asi8.view(f"datetime64[{unit}]")
    ms = x.astype("datetime64[ms]", copy=False).view(np.int64)
    nat = ms == np.iinfo(np.int64).min
    return ms, (nat if nat.any() else None)


def _read_times(x: np.ndarray | pd.Series, where: str, unit: str
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read the ts column -> (epoch ms int64, bad_time mask, too-big-for-int64 mask)."""
    expected = (f"{where} must hold datetimes, date strings or epoch seconds/milliseconds, "
                "got")
    dtype = x.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or dtype.kind == "M":
        ms, bad = _datetimes_to_ms(x)
        return ms, bad, None
    if isinstance(dtype, pd.CategoricalDtype):
        # parse each distinct category once, then spread by code
        cats = _column(dtype.categories, where)
        cat_ms, cat_bad, cat_big = _read_times(cats, where, unit)
        codes = np.asarray(x.cat.codes)
        bad_c = np.zeros(len(cats) + 1, bool)
        bad_c[-1] = True  # code -1: null
        if cat_bad is not None:
            bad_c[:-1] |= cat_bad
        big_c = np.zeros(len(cats) + 1, bool)
        if cat_big is not None:
            big_c[:-1] = cat_big
        bad, big = bad_c[codes], big_c[codes]
        return (np.append(cat_ms, 0)[codes], (bad if bad.any() else None),
                (big if big.any() else None))
    if dtype.kind == "b" or isinstance(dtype, pd.BooleanDtype):
        raise SchemaError(f"{expected} bool")
    if pd.api.types.is_numeric_dtype(dtype) and dtype.kind in "iuf":
        if isinstance(x, pd.Series):  # nullable numbers
            missing = np.asarray(x.isna())
            kind = np.float64 if dtype.kind == "f" else np.int64
            vals = x.to_numpy(dtype=kind, na_value=0)
            return _epoch_numbers(vals, missing if missing.any() else None, unit)
        return _epoch_numbers(x, None, unit)
    if isinstance(dtype, pd.StringDtype) or dtype.kind in "OU":
        if dtype == object:
            _check_not_nested(x, where)
            kind = pd.api.types.infer_dtype(x, skipna=True)
            if kind in ("integer", "floating", "mixed-integer-float"):
                return _read_times(_nullable_numbers(x, kind, expected), where, unit)
            if kind in ("boolean", "timedelta", "bytes", "complex", "interval", "period"):
                raise SchemaError(f"{expected} {_describe(x)}")
        return _parse_times(x) + (None,)
    raise SchemaError(f"{expected} {_describe(x)}")


def _parse_times(x: np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray | None]:
    """Strings / Python datetimes -> (epoch ms, bad mask); naive taken as UTC."""
    s = pd.Series(x.array if isinstance(x, pd.Series) else x, copy=False)

    def parse(part: pd.Series, **kw: Any) -> pd.Series:
        try:
            return pd.to_datetime(part, utc=True, errors="coerce", **kw)
        except (TypeError, ValueError):  # objects pandas cannot even coerce
            return pd.Series(pd.NaT, index=part.index, dtype="datetime64[ms, UTC]")

    ms, bad = _datetimes_to_ms(parse(s))
    if bad is not None:
        failed = np.flatnonzero(bad & s.notna().to_numpy())
        if len(failed):
            # pandas infers one format from the first string; parse the rest one by one
            retry_ms, retry_bad = _datetimes_to_ms(parse(s.iloc[failed], format="mixed"))
            ms[failed] = retry_ms
            bad[failed] = False if retry_bad is None else retry_bad
            bad = bad if bad.any() else None
    return ms, bad


def _read_values(x: np.ndarray | pd.Series, where: str) -> np.ndarray:
    """The value column as float64, NaN where missing."""
    dtype = x.dtype
    if dtype.kind == "b" or isinstance(dtype, pd.BooleanDtype):
        raise SchemaError(f"{where} must hold numbers, got bool")
    if pd.api.types.is_numeric_dtype(dtype) and dtype.kind in "iuf":
        if isinstance(x, pd.Series):
            return x.to_numpy(dtype=np.float64, na_value=np.nan)
        return np.ascontiguousarray(x, dtype=np.float64)
    if dtype == object:
        _check_not_nested(x, where)
        if pd.api.types.infer_dtype(x, skipna=True) in ("integer", "floating",
                                                        "mixed-integer-float", "empty",
                                                        "decimal"):
            return pd.to_numeric(pd.Series(x, copy=False)).to_numpy(dtype=np.float64,
                                                                    na_value=np.nan)
    raise SchemaError(f"{where} must hold numbers, got {_describe(x)}")


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


def _pseudonymize_ids(vals: np.ndarray, uniques: np.ndarray | None,
                      missing: np.ndarray | None, key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """User ids as :func:`_read_ids` returns them, replaced by their pseudonyms.

    Returns codes (int32, -1 where missing) into an object array of distinct pseudonyms; each
    distinct id is hashed once.
    """
    if uniques is None:
        codes, uniques = pd.factorize(vals)
    else:
        codes = vals
    codes = np.array(codes, dtype=np.int32)
    if missing is not None:
        codes[missing] = -1
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
            cat_codes, cat_uniques = (pd.factorize(vals) if uniques is None
                                      else (vals, uniques))
            if missing is not None:
                cat_codes = np.where(missing, -1, cat_codes)

    def users() -> tuple[np.ndarray, np.ndarray]:
        vals, uniques, missing = uid
        codes, uniques = pd.factorize(vals) if uniques is None else (vals, uniques)
        if missing is not None:
            codes = np.where(missing, -1, codes)
        return codes, uniques

    return policy._screen_codes(np.asarray(cat_codes), cat_uniques, users)


def _ingest(raw: dict[str, Any], sources: dict[str, Hashable], n: int | None,
            take: Callable[[np.ndarray], pd.DataFrame] | None, opts: _Options) -> EventLog:
    """Validate, encode and sort; every constructor ends here."""
    where = {c: _where(c, sources[c]) for c in raw}
    cols = {}
    for c in COLUMNS:
        if c in raw:
            cols[c] = _column(raw[c], where[c], n)
            n = len(cols[c])

    uid_vals, uid_uniques, uid_missing = _read_ids(cols["user_id"], "user_id",
                                                   where["user_id"], small=False)
    if opts.pseudonymize_key is not None:
        uid_vals, uid_uniques = _pseudonymize_ids(uid_vals, uid_uniques, uid_missing,
                                                  opts.pseudonymize_key)
    ts_ms, ts_bad, ts_big = _read_times(cols["ts"], where["ts"], opts.ts_unit)
    ev_raw, ev_names = _read_events(cols["event"], where["event"])
    if "category" in cols:
        cat_vals, cat_uniques, cat_missing = _read_ids(cols["category"], "category",
                                                       where["category"], small=True)
    value = _read_values(cols["value"], where["value"]) if "value" in cols else None

    event, event_types, unknown = _event_codes(ev_raw, ev_names, opts, where["event"])
    del ev_raw

    # row problems, assigned last reason first so that the first matching reason wins
    lo, hi = opts.time_range
    out_of_range = ts_big
    if lo is not None or hi is not None:
        oor = (ts_ms < lo) if lo is not None else np.zeros(n, bool)
        if hi is not None:
            oor |= ts_ms >= hi
        out_of_range = oor if out_of_range is None else (oor | out_of_range)
    bad_value = None
    if value is not None:
        with np.errstate(invalid="ignore"):
            bad_value = (value < 0) | np.isinf(value)
    reason = _first_reasons((uid_missing, ts_bad, out_of_range, event < 0, bad_value), n)
    # privacy screening comes first: a screened row is removed, never quarantined with its data
    screen = _screen(opts.privacy, (uid_vals, uid_uniques, uid_missing),
                     (cat_vals, cat_uniques, cat_missing) if "category" in cols else None, n)
    screened = screen > 0
    removed = dict.fromkeys(REMOVAL_REASONS, 0)
    if screened.any():
        for code, k in enumerate(np.bincount(screen, minlength=len(SCREEN_REASONS))):
            if code:
                removed[SCREEN_REASONS[code]] = int(k)
        if reason is not None:
            reason[screened] = 0
            reason = reason if reason.any() else None
    else:
        screened = None
    del screen, out_of_range, bad_value, uid_missing, ts_bad, ts_big
    texts = dict(_REASON_TEXT)
    texts["time_out_of_range"] = texts["time_out_of_range"].format(
        range=f"[{_fmt_ms(lo)}, {_fmt_ms(hi) if hi is not None else '+inf'})")
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

    with num_threads(_threads(n)):
        # encode users and categories over the valid rows only
        user_codes, users = _encode(uid_vals, uid_uniques, valid)
        del uid_vals, uid_uniques
        if "category" in cols:
            cat_valid = valid if cat_missing is None else (
                ~cat_missing if valid.size == 0 else (valid & ~cat_missing))
            cat_codes, categories = _encode(cat_vals, cat_uniques, cat_valid)
            del cat_vals, cat_uniques, cat_valid
        else:
            cat_codes, categories = np.empty(0, np.int32), np.empty(0, dtype=object)
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

        # exact duplicates sit in the same (user, ts) run after the sort
        session = cols.get("session_id")
        val_k = value if value is not None else np.empty(0, np.float64)
        sess_k = np.empty(0, np.int64)
        if session is not None:
            try:
                sess_k = pd.factorize(session)[0].astype(np.int64, copy=False)
            except TypeError as exc:  # unhashable ids (lists, dicts)
                raise SchemaError(f"{where['session_id']} must hold hashable ids: "
                                  f"{exc}") from None
        dup = _k.find_duplicates(offsets, ts_sorted, rows, event, cat_codes, val_k, sess_k)
        del sess_k
        if dup.any():
            if reason is None:
                reason = np.zeros(n, np.int8)
            reason[rows[dup]] = REASONS.index("duplicate") + 1
            if opts.errors == "raise":
                raise _row_error(reason, where, texts)
            removed_before = np.concatenate(([0], np.cumsum(dup)))
            offsets = offsets - removed_before[offsets]
            keep = ~dup
            ts_sorted, rows = ts_sorted[keep], rows[keep]
            del keep, removed_before
        del dup

        user_s = user_codes[:len(rows)]  # dead after the sort; reused for the output
        ev_s, cat_s, val_s = _k.gather_columns(rows, offsets, event, cat_codes, val_k, user_s)
        if value is None:
            val_s = np.zeros(len(rows))  # calloc: pages are only touched when read
        del event, cat_codes, val_k, value
        session_s = None
        if session is not None:
            session_s = np.asarray(_take(session, rows))
        del rows

        user_column = sources["user_id"] if take is not None else "user_id"
        q = _quarantine_frame(reason, cols, take, user_column, opts.pseudonymize_key)
        user_column = f"{user_column}_input" if user_column in ("row", "reason") else user_column
        if len(q):
            logger.info("quarantined %d of %d input rows: %s", len(q), n,
                        q["reason"].value_counts().loc[lambda c: c > 0].to_dict())
        log = EventLog._from_parts(user=user_s, ts=ts_sorted, event=ev_s, category=cat_s,
                                   value=val_s, user_offsets=offsets, users=users,
                                   categories=categories, event_types=event_types,
                                   quarantine=q, n_input_rows=n, session_id=session_s,
                                   removed=removed, user_column=user_column)
        log._set_flags(opts.flag_bots)
        return log


# ------------------------------------------------------------------------ bots, sessions

_FLAG_REASONS = ("", "high_rate", "click_pattern", "high_rate+click_pattern")


def _bot_stats(user_offsets: np.ndarray, ts: np.ndarray, event: np.ndarray,
               rule: BotRule) -> dict[str, np.ndarray]:
    """Per-user rate, robust z, CTR and flag code (see :class:`BotRule` for the formula)."""
    starts = user_offsets[:-1]
    n_users = len(starts)
    n_events = np.diff(user_offsets)
    if n_users == 0:
        empty = np.empty(0, np.float64)
        return {"n_events": n_events, "active_hours": n_events.copy(), "rate": empty,
                "rate_z": empty, "clicks": n_events.copy(), "impressions": n_events.copy(),
                "ctr": empty, "flag": np.empty(0, np.int8)}
    with num_threads(_threads(len(ts))):
        hours, clicks, imps = _k.user_activity(user_offsets, ts, event, _CLICK, _IMPRESSION)
    rate = n_events / hours
    log_rate = np.log(rate)
    med = np.median(log_rate)
    scale = max(1.4826 * float(np.median(np.abs(log_rate - med))), rule.min_scale)
    z = (log_rate - med) / scale
    with np.errstate(divide="ignore", invalid="ignore"):
        ctr = clicks / imps  # NaN for 0/0, inf for clicks without impressions
    flag = np.zeros(n_users, np.int8)
    if rule.enabled:
        flag[(z > rule.rate_z) & (n_events >= rule.min_events)] = 1
        if imps.sum() > 0:
            with np.errstate(invalid="ignore"):
                clicky = (clicks >= rule.min_clicks) & ((imps == 0) | (ctr > rule.max_ctr))
            flag[clicky] += 2
    return {"n_events": n_events, "active_hours": hours, "rate": rate, "rate_z": z,
            "clicks": clicks, "impressions": imps, "ctr": ctr, "flag": flag}


@dataclasses.dataclass(frozen=True, eq=False)
class Sessions:
    """Sessions of an :class:`EventLog` (from :meth:`EventLog.sessionize`).

    Attributes
    ----------
    session : ndarray of shape (n_rows,), int64
        Session code of each event of the log, 0, 1, ... increasing in the log's order.
    table : pandas.DataFrame
        One row per session: ``user_id``, ``session``, ``start``, ``end`` (UTC datetimes),
        ``n_events`` and ``duration_s`` (``end - start`` in seconds).
    gap_ms, max_ms : int
        The rule used; ``max_ms`` 0 means no maximum length.
    count : int
        Number of sessions.
    mean_events, mean_duration_s : float
        Mean events and mean duration per session (NaN when there are no sessions).
    """

    session: np.ndarray
    table: pd.DataFrame
    gap_ms: int
    max_ms: int
    count: int
    mean_events: float
    mean_duration_s: float

    def summary(self) -> dict[str, float]:
        """``count``, ``mean_events`` and ``mean_duration_s`` as a dict."""
        return {"count": self.count, "mean_events": self.mean_events,
                "mean_duration_s": self.mean_duration_s}


def _utc(ms: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.asarray(ms, dtype=np.int64).view("datetime64[ms]")
                            ).tz_localize("UTC")


# ---------------------------------------------------------------------------- EventLog

_OPTIONS_DOC = """
    event_types : sequence of str, optional
        Extra event names, coded after the standard ones in the order given.
    strict_events : bool, default True
        Unknown event names are quarantined (``unknown_event``); with False they join the
        vocabulary, sorted, after the standard and declared names.
    errors : {"raise", "quarantine"}, default "raise"
        On row problems raise :class:`~bta.errors.SchemaError`, or set the rows aside in
        ``quarantine`` and go on.
    ts_unit : {"auto", "s", "ms"}, default "auto"
        Unit of numeric epoch times (ignored for datetimes and strings). ``"auto"`` decides
        once for the whole column: seconds when the median magnitude is below 1e11
        (1e11 s is the year 5138, 1e11 ms is March 1973), else milliseconds.
    time_range : (start, end), default ("2000-01-01", "2100-01-01")
        Accepted times, ``start <= ts < end`` (UTC; either end may be None; None for
        both disables the check).
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

    ``EventLog(data, columns=None, **options)`` is :meth:`from_any`: a DataFrame, an Arrow
    table, Parquet path(s), a dict of arrays or a polars frame.

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
    user_offsets : ndarray of shape (n_users + 1,), int64
        Rows of user ``u`` are ``user_offsets[u]:user_offsets[u + 1]``.
    users : ndarray of shape (n_users,)
        Sorted unique user ids (``np.unique`` order) of the accepted rows.
    categories : ndarray of shape (n_categories,)
        Sorted unique categories of the accepted rows.
    event_types : tuple of str
        ``STANDARD_EVENTS`` then the declared extras (then, non-strict, unseen names).
    flagged : ndarray of shape (n_users,), bool
        Users flagged by the :class:`BotRule` (see ``flag_report``).
    quarantine : pandas.DataFrame
        Rejected input rows (original columns), ``row`` (0-based input position) and
        ``reason`` (categorical over :data:`REASONS`).
    n_input_rows : int
        Always ``n_rows + len(quarantine) + sum(removed.values())``.
    removed : dict of str to int
        Rows removed, by reason (:data:`REMOVAL_REASONS`): privacy screening at ingestion
        (``opt_out``, ``under_age``, ``sensitive``), :meth:`retain` / :meth:`drop_before`
        (``expired``) and :meth:`erase` (``erased``). Removed rows are not kept anywhere.
    session_id : ndarray of shape (n_rows,) or None
        The input's session ids, when given.
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
    user_offsets: np.ndarray
    users: np.ndarray
    categories: np.ndarray
    event_types: tuple[str, ...]
    flagged: np.ndarray
    quarantine: pd.DataFrame
    n_input_rows: int
    session_id: np.ndarray | None

    def __init__(self, data: Any, columns: Mapping[str, Hashable] | None = None,
                 **options: Any) -> None:
        built = self.from_any(data, columns, **options)
        self.__dict__.update(built.__dict__)

    @classmethod
    def _from_parts(cls, **parts: Any) -> EventLog:
        log = object.__new__(cls)
        parts.setdefault("removed", dict.fromkeys(REMOVAL_REASONS, 0))
        parts.setdefault("user_column", "user_id")
        log.__dict__.update(parts)
        log.flagged = np.zeros(len(parts["users"]), bool)
        log._bot = None
        log.bot_rule = BotRule(enabled=False)
        return log

    def _set_flags(self, rule: BotRule) -> None:
        self.bot_rule = rule
        if rule.enabled:
            stats = _bot_stats(self.user_offsets, self.ts, self.event, rule)
            self._bot = {k: stats[k] for k in ("rate", "rate_z", "ctr", "flag")}
            self.flagged = stats["flag"] > 0

    # -------------------------------------------------------------- constructors

    @classmethod
    def from_pandas(cls, df: pd.DataFrame, columns: Mapping[str, Hashable] | None = None, *,
                    event_types: Sequence[str] | None = None, strict_events: bool = True,
                    errors: str = "raise", ts_unit: str = "auto",
                    time_range: tuple[Any, Any] | None = DEFAULT_TIME_RANGE,
                    flag_bots: BotRule | None = BotRule(), privacy: PrivacyPolicy | None = None,
                    pseudonymize_key: bytes | None = None) -> EventLog:
        """Events from a pandas DataFrame.

        Parameters
        ----------
        df : pandas.DataFrame of shape (n_input_rows, n_columns)
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
        opts = _Options.make(event_types, strict_events, errors, ts_unit, time_range,
                             flag_bots, privacy, pseudonymize_key)
        if not isinstance(df, pd.DataFrame):
            raise SchemaError(f"df must be a pandas DataFrame, got {type(df).__name__}")
        sources = _resolve(columns, list(df.columns))
        raw = {c: df[src] for c, src in sources.items()}
        return _ingest(raw, sources, len(df), lambda rows: df.iloc[rows], opts)

    @classmethod
    def from_arrow(cls, table: Any, columns: Mapping[str, Hashable] | None = None,
                   **options: Any) -> EventLog:
        """Events from a ``pyarrow.Table`` or ``RecordBatch`` (options as :meth:`from_pandas`).

        Dictionary-encoded columns are read through their codes; integer columns with
        nulls stay exact.
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
        return _ingest(raw, sources, table.num_rows,
                       lambda rows: table.take(pa.array(rows, pa.int64())).to_pandas(), opts)

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

        if isinstance(path_or_paths, (str, os.PathLike)):
            source: Any = os.fspath(path_or_paths)
        elif isinstance(path_or_paths, Sequence) and path_or_paths and all(
                isinstance(p, (str, os.PathLike)) for p in path_or_paths):
            source = [os.fspath(p) for p in path_or_paths]
        else:
            raise ConfigError("path_or_paths must be a path or a non-empty list of paths, "
                              f"got {path_or_paths!r}")
        _Options.make(**options)  # fail on bad options before reading anything
        dataset = ds.dataset(source, format="parquet", partitioning="hive")
        sources = _resolve(columns, dataset.schema.names)
        table = dataset.to_table(columns=sorted(set(sources.values()), key=str))
        return cls.from_arrow(table, {c: src for c, src in sources.items()}, **options)

    @classmethod
    def from_arrays(cls, user_id: Any, ts: Any, event: Any, category: Any = None,
                    value: Any = None, session_id: Any = None, *,
                    event_types: Sequence[str] | None = None, strict_events: bool = True,
                    errors: str = "raise", ts_unit: str = "auto",
                    time_range: tuple[Any, Any] | None = DEFAULT_TIME_RANGE,
                    flag_bots: BotRule | None = BotRule(), privacy: PrivacyPolicy | None = None,
                    pseudonymize_key: bytes | None = None) -> EventLog:
        """Events from 1-D arrays of equal length (NumPy, pandas, Arrow or lists).

        This is the fast path: integer ids in a modest range are encoded by direct
        addressing, the sort is a counting sort on the user code, and NumPy inputs are
        not copied before encoding.

        Parameters
        ----------
        user_id, ts, event : array-like of shape (n_input_rows,)
        category, value, session_id : array-like of shape (n_input_rows,), optional
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
        opts = _Options.make(event_types, strict_events, errors, ts_unit, time_range,
                             flag_bots, privacy, pseudonymize_key)
        given = {"user_id": user_id, "ts": ts, "event": event, "category": category,
                 "value": value, "session_id": session_id}
        raw = {c: x for c, x in given.items() if x is not None}
        return _ingest(raw, {c: c for c in raw}, None, None, opts)

    @classmethod
    def from_any(cls, data: Any, columns: Mapping[str, Hashable] | None = None,
                 **options: Any) -> EventLog:
        """Events from whatever ``data`` is.

        =============================== ======================================
        ``EventLog``                    returned unchanged (no options allowed)
        ``pandas.DataFrame``            :meth:`from_pandas`
        ``pyarrow.Table`` / RecordBatch :meth:`from_arrow`
        path, or list of paths          :meth:`from_parquet`
        mapping of name -> array        columns, as a DataFrame's (``columns`` applies)
        object with ``to_arrow()``      (polars) :meth:`from_arrow`
        =============================== ======================================
        """
        if isinstance(data, EventLog):
            if columns is not None or options:
                raise ConfigError("columns/options cannot apply to an existing EventLog, "
                                  f"got columns={columns!r}, options={sorted(options)}")
            return data
        if isinstance(data, pd.DataFrame):
            return cls.from_pandas(data, columns, **options)
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
            return _ingest(raw, sources, None, None, opts)
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

    def user_code(self, ids: Any) -> Any:
        """Codes of user ids: an int for a scalar, an int32 array otherwise; -1 = unknown."""
        return self._lookup("users", ids)

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
        pandas.DataFrame of shape (n_rows, 5 or 6)
            ``user_id`` (original ids), ``ts`` (``datetime64[ms, UTC]``), ``event`` and
            ``category`` (categoricals over the vocabularies; a missing category is null),
            ``value``, and ``session_id`` when the input had one.
        """
        data = {
            "user_id": self.users[self.user],
            "ts": _utc(self.ts),
            "event": pd.Categorical.from_codes(self.event, categories=list(self.event_types)),
            "category": pd.Categorical.from_codes(self.category,
                                                  categories=pd.Index(self.categories)),
            "value": self.value,
        }
        if self.session_id is not None:
            data["session_id"] = self.session_id
        return pd.DataFrame(data)

    def summary(self) -> dict[str, Any]:
        """Counts for a report: rows in / accepted / quarantined / removed (by reason), users,
        flagged users, categories, time span and events by type."""
        by_reason = self.quarantine["reason"].value_counts().reindex(list(REASONS),
                                                                     fill_value=0)
        removed = dict(self.removed)
        counts = np.bincount(self.event, minlength=len(self.event_types))
        return {
            "rows_in": self.n_input_rows,
            "rows_accepted": self.n_rows,
            "rows_quarantined": len(self.quarantine),
            "quarantined_by_reason": {r: int(k) for r, k in by_reason.items()},
            "rows_removed": sum(removed.values()),
            "removed_by_reason": removed,
            "n_users": self.n_users,
            "n_flagged": int(self.flagged.sum()),
            "n_categories": len(self.categories),
            "start": _utc([self.ts.min()])[0] if self.n_rows else None,
            "end": _utc([self.ts.max()])[0] if self.n_rows else None,
            "events_by_type": {name: int(k) for name, k in zip(self.event_types, counts)},
        }

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
        rows = keep[self.user]
        new_code = (np.cumsum(keep, dtype=np.int64) - 1).astype(np.int32)
        counts = np.diff(self.user_offsets)[keep]
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        log = EventLog._from_parts(
            user=new_code[self.user[rows]], ts=self.ts[rows], event=self.event[rows],
            category=self.category[rows], value=self.value[rows], user_offsets=offsets,
            users=self.users[keep], categories=self.categories, event_types=self.event_types,
            quarantine=self.quarantine,
            n_input_rows=int(offsets[-1]) + len(self.quarantine) + sum(self.removed.values()),
            session_id=None if self.session_id is None else self.session_id[rows],
            removed=dict(self.removed), user_column=self.user_column)
        log.bot_rule = self.bot_rule
        log.flagged = self.flagged[keep]
        if self._bot is not None:
            log._bot = {k: v[keep] for k, v in self._bot.items()}
        return log

    def _without_rows(self, keep: np.ndarray, reason: str,
                      keep_quarantine: np.ndarray | None = None) -> EventLog:
        """A new log of the rows where ``keep``; the others are counted as ``reason``.

        Users left without rows leave the vocabulary (codes re-made densely, order kept);
        categories and event types stay, so their codes remain comparable.
        """
        per_user = np.bincount(self.user[keep], minlength=self.n_users)
        users_kept = per_user > 0
        new_code = (np.cumsum(users_kept, dtype=np.int64) - 1).astype(np.int32)
        offsets = np.zeros(int(users_kept.sum()) + 1, np.int64)
        np.cumsum(per_user[users_kept], out=offsets[1:])
        quarantine = self.quarantine
        removed = dict(self.removed)
        removed[reason] += int(self.n_rows - np.count_nonzero(keep))
        if keep_quarantine is not None:
            quarantine = quarantine[keep_quarantine].reset_index(drop=True)
            removed[reason] += int(len(keep_quarantine) - np.count_nonzero(keep_quarantine))
        log = EventLog._from_parts(
            user=np.ascontiguousarray(new_code[self.user[keep]]), ts=self.ts[keep],
            event=self.event[keep], category=self.category[keep], value=self.value[keep],
            user_offsets=offsets, users=self.users[users_kept], categories=self.categories,
            event_types=self.event_types, quarantine=quarantine,
            n_input_rows=self.n_input_rows,
            session_id=None if self.session_id is None else self.session_id[keep],
            removed=removed, user_column=self.user_column)
        log.bot_rule = self.bot_rule
        log.flagged = self.flagged[users_kept]
        if self._bot is not None:
            log._bot = {k: v[users_kept] for k, v in self._bot.items()}
        return log

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
            Ids as the log holds them (pseudonyms when it was built with
            ``pseudonymize_key``). Unknown ids are ignored.

        Returns
        -------
        EventLog
            The removed rows are counted in ``removed["erased"]``; ``users`` no longer holds
            the ids (their quarantined rows are matched on the input's user column).
        """
        ids = np.atleast_1d(np.asarray(user_ids, dtype=object)).ravel()
        codes = self.user_code(ids)
        gone = np.zeros(self.n_users, bool)
        gone[codes[codes >= 0]] = True
        keep_q = None
        if len(self.quarantine) and self.user_column in self.quarantine.columns:
            keep_q = ~np.asarray(self.quarantine[self.user_column].isin(list(ids)))
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
        :func:`bta._event_kernels.is_new_session`, which the feature kernels share.
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

"""Points in time and durations as integer epoch milliseconds, the one time form of the log."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

import numpy as np
import pandas as pd

from bta.errors import check_param

__all__ = ["_MAX_EPOCH_S", "_SECONDS_BELOW", "_fmt_ms", "to_epoch_ms", "to_millis"]

# Largest |epoch seconds| that still fits int64 milliseconds.
_MAX_EPOCH_S = np.iinfo(np.int64).max // 1000
# Epoch numbers whose median magnitude is below this are seconds, else milliseconds:
# 1e11 s is the year 5138 while 1e11 ms is 1973-03-03, so realistic data of either
# unit falls clearly on its side.
_SECONDS_BELOW = 1e11


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


def _fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-inf"
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()

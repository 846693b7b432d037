"""Column normalization for :mod:`bta.events`: each input column to plain arrays.

Each column is first brought to either a 1-D NumPy array or a pandas Series with an
extension dtype (categorical, string, tz-aware datetime, nullable number); Arrow data
goes through pandas once. The per-column readers then return plain arrays.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from bta.events import kernels as _k
from bta.events.times import _MAX_EPOCH_S, _SECONDS_BELOW
from bta.events.vocabulary import _PARALLEL_MIN_ROWS
from bta.errors import SchemaError

__all__ = ["_column", "_read_events", "_read_ids", "_read_times", "_read_values", "_where"]


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


def _arrow_text(arr: Any) -> pd.Series | None:
    """An Arrow string column as a pandas Categorical of its distinct strings (sorted), read
    from the Arrow buffers by :func:`bta.events.text.factorize_text`; None for other types
    (string views, dictionaries, numbers), which pandas converts.

    Reading each row as a Python string and hashing it costs more than all the rest of
    ingestion; here only the distinct strings become Python objects.
    """
    import numba
    import pyarrow as pa

    from bta.events.text import factorize_text

    if isinstance(arr, pa.Array):
        arr = pa.chunked_array([arr], type=arr.type)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return None
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    chunks = []
    for ch in arr.chunks:
        if not len(ch):
            continue
        validity, offsets, data = ch.buffers()
        offsets = np.frombuffer(offsets, dtype=width)[ch.offset:ch.offset + len(ch) + 1]
        data = (np.frombuffer(data, dtype=np.uint8) if data is not None
                else np.zeros(0, np.uint8))
        bitmap = (np.frombuffer(validity, dtype=np.uint8) if validity is not None
                  and ch.null_count else np.zeros(0, np.uint8))
        chunks.append((offsets, data, bitmap, ch.offset))
    n = len(arr)
    if not chunks:
        return None
    # one hash part per thread (each thread owns its part's strings)
    n_threads = numba.get_num_threads() if n >= _PARALLEL_MIN_ROWS else 1
    codes, rank, data, offsets = factorize_text(chunks, n, n_threads, n_threads)
    vocab = pa.Array.from_buffers(pa.large_string(), len(offsets) - 1,
                                  [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    lut = np.append(rank, np.int32(-1))  # code -1 (null) picks the last slot
    categories = pd.Index(vocab.to_numpy(zero_copy_only=False), dtype=object)
    return pd.Series(pd.Categorical.from_codes(lut[codes], categories=categories,
                                               validate=False), copy=False)


def _column(x: Any, where: str, n: int | None = None, text_codes: bool = False
            ) -> np.ndarray | pd.Series:
    """A column as a 1-D ndarray, or a Series when its dtype is a pandas extension.

    ``text_codes``: Arrow text (Arrow and Parquet input, polars, pandas' Arrow dtypes)
    comes back as a Categorical of its distinct strings (:func:`_arrow_text`), for the
    columns whose readers take categories.
    """
    if isinstance(x, pd.DataFrame):
        raise SchemaError(f"{where} appears more than once (or is a frame); expected one column")
    if isinstance(x, pd.Series) and text_codes and (
            isinstance(x.dtype, pd.ArrowDtype)
            or (isinstance(x.dtype, pd.StringDtype) and x.dtype.storage == "pyarrow")):
        x = x.array.__arrow_array__()
    elif hasattr(x, "to_arrow") and not isinstance(x, (pd.Series, np.ndarray)) \
            and not type(x).__module__.startswith("pyarrow"):
        x = x.to_arrow()  # polars and other Arrow-speaking frames
    if type(x).__module__.startswith("pyarrow"):
        text = _arrow_text(x) if text_codes else None
        x = _arrow_to_series(x, where) if text is None else text
    elif isinstance(x, (pd.Index, pd.api.extensions.ExtensionArray)):
        x = pd.Series(x)
    elif not isinstance(x, (pd.Series, np.ndarray)):
        if np.ndim(x) == 0 or isinstance(x, (str, bytes, Mapping)):
            raise SchemaError(f"{where} must be a 1-D array-like, got {type(x).__name__}")
        x = pd.Series(list(x)) if len(x) else np.empty(0, dtype=object)
    if isinstance(x, pd.Series):
        if isinstance(x.dtype, pd.ArrowDtype):
            # the Arrow data itself (iterating the array would read each string as a
            # sequence of characters, and fails on numbers and timestamps)
            x = _arrow_to_series(x.array.__arrow_array__(), where)
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
    """Read an id column (user_id, category, item_id, event_id).

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
        # whole floats of magnitude 2**63 and more have no int64: refuse them rather than let
        # the cast collapse different ids to one (2.0**63 is the first float out of range)
        with np.errstate(invalid="ignore"):
            huge = ~missing & (np.abs(vals) >= 2.0**63)
        if huge.any():
            i = int(np.flatnonzero(huge)[0])
            raise SchemaError(f"{expected} floats beyond the 64-bit integer range "
                              f"(e.g. {float(vals[i])!r} at row {i})")
        ints = np.where(missing, 0.0, vals).astype(np.int64)
        return ints, None, (missing if missing.any() else None)
    else:
        raise SchemaError(f"{expected} {_describe(x)}")
    missing = codes < 0
    if col in ("user_id", "event_id"):
        # An empty id names nobody (no user, no event): missing rather than an id "".
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


def _date_integers(ok: np.ndarray) -> bool:
    """Whether every number reads as a ``YYYYMMDD`` date of 1900-2199 (``19970101``)."""
    if not len(ok) or ok.min() < 19_000_101 or ok.max() > 21_991_231:
        return False
    whole = ok.astype(np.int64)
    if not (whole == ok).all():
        return False
    month, day = whole // 100 % 100, whole % 100
    return bool(((month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)).all())


def _refuse_date_integers(ok: np.ndarray, vals: np.ndarray, where: str) -> None:
    """Raise if every number (``ok``: the non-null ones of ``vals``) reads as a date.

    Read as epoch seconds such a column falls in August 1970 (as milliseconds, on its first
    day), where no real log lies; read as dates it is 1900-2199. Which one is meant is not
    bta's to guess: the caller says ``ts_format="%Y%m%d"`` or ``ts_unit``.
    """
    if _date_integers(ok):
        i = int(np.flatnonzero(vals == ok[0])[0])
        raise SchemaError(f"{where} holds numbers that read as YYYYMMDD dates (e.g. "
                          f"{int(ok[0])} at row {i}) as well as epoch times in 1970; pass "
                          "ts_format='%Y%m%d' to read dates, or ts_unit='s' or 'ms' for epoch "
                          "times")


def _epoch_numbers(vals: np.ndarray, missing: np.ndarray | None, unit: str, where: str
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Epoch numbers -> (ms, bad, too_big)."""
    if unit == "auto":
        ok = vals if missing is None else vals[~missing]
        if vals.dtype.kind == "f":
            ok = ok[np.isfinite(ok)]
        # A strided sample keeps this O(1) in the number of rows; the decision is one
        # for the whole column, so a few stray rows cannot flip it.
        step = max(1, len(ok) // 100_001)
        if _date_integers(ok[::step]):  # the whole column is looked at only if the sample is
            _refuse_date_integers(ok, vals, where)
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


def _read_times(x: np.ndarray | pd.Series, where: str, unit: str, fmt: str | None
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read the ts column -> (epoch ms int64, bad_time mask, too-big-for-int64 mask).

    ``fmt`` (``ts_format``) reads text, and whole numbers as their decimal text; without it
    text must be ISO 8601.
    """
    expected = (f"{where} must hold datetimes, date strings or epoch seconds/milliseconds, "
                "got")
    dtype = x.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or dtype.kind == "M":
        ms, bad = _datetimes_to_ms(x)
        return ms, bad, None
    if isinstance(dtype, pd.CategoricalDtype):
        # parse each distinct category once, then spread by code
        cats = _column(dtype.categories, where)
        cat_ms, cat_bad, cat_big = _read_times(cats, where, unit, fmt)
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
        missing = None
        vals = x
        if isinstance(x, pd.Series):  # nullable numbers
            missing = np.asarray(x.isna())
            kind = np.float64 if dtype.kind == "f" else np.int64
            vals = x.to_numpy(dtype=kind, na_value=0)
            missing = missing if missing.any() else None
        if fmt is not None:
            return _parse_times(_number_text(vals, missing), where, fmt) + (None,)
        return _epoch_numbers(vals, missing, unit, where)
    if isinstance(dtype, pd.StringDtype) or dtype.kind in "OU":
        if dtype == object:
            _check_not_nested(x, where)
            kind = pd.api.types.infer_dtype(x, skipna=True)
            if kind in ("integer", "floating", "mixed-integer-float"):
                return _read_times(_nullable_numbers(x, kind, expected), where, unit, fmt)
            if kind in ("boolean", "timedelta", "bytes", "complex", "interval", "period"):
                raise SchemaError(f"{expected} {_describe(x)}")
        return _parse_times(x, where, fmt) + (None,)
    raise SchemaError(f"{expected} {_describe(x)}")


def _number_text(vals: np.ndarray, missing: np.ndarray | None) -> pd.Series:
    """Whole numbers as their decimal text (``19970101``, ``19970101.0`` -> ``"19970101"``),
    for ``ts_format``; anything else (fractions, NaN, nulls) is None, so a bad time."""
    vals = np.asarray(vals)
    ok = np.ones(len(vals), bool) if missing is None else ~missing
    if vals.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            ok &= np.isfinite(vals) & (vals == np.round(vals)) & (np.abs(vals) < 2.0**63)
    text = pd.Series(np.where(ok, vals, 0).astype(np.int64)).astype(str).astype(object)
    text[~ok] = None
    return text


def _to_datetime(s: pd.Series, fmt: str) -> pd.Series:
    """``pd.to_datetime(s, format=fmt)`` in UTC with failures as NaT (naive taken as UTC)."""
    try:
        return pd.to_datetime(s, utc=True, errors="coerce", format=fmt)
    except (TypeError, ValueError, OverflowError):  # objects pandas cannot even coerce
        return pd.Series(pd.NaT, index=s.index, dtype="datetime64[ms, UTC]")


def _parse_times(x: np.ndarray | pd.Series, where: str, fmt: str | None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Strings / Python datetimes -> (epoch ms, bad mask).

    Text is parsed with ``fmt``, or else as ISO 8601, exactly: one rule for every row, so that
    no row's time depends on the others (pandas left to itself infers a format from the first
    string: ``"01/02/2026"`` would then be January 2 or February 1 by row order). Without
    ``fmt``, a row that is not ISO 8601 but is a date in some other format refuses the column
    (the format is the caller's to say); rows that are no date at all are bad times.
    """
    s = pd.Series(x.array if isinstance(x, pd.Series) else x, copy=False)
    before = time.time_ns() // 1_000_000
    ms, bad = _datetimes_to_ms(_to_datetime(s, "ISO8601" if fmt is None else fmt))
    after = time.time_ns() // 1_000_000
    if bad is not None and fmt is None:
        _refuse_other_formats(s, bad & s.notna().to_numpy(), where)
    # pandas reads "now" and "today" as the clock's time, whatever the format: a time that
    # changes from run to run is no time. Only rows parsed inside the parse's own time span
    # can be such, so the text of those few is checked.
    clock = np.flatnonzero((ms >= before) & (ms <= after))
    if len(clock):
        said = s.iloc[clock].astype(object).map(
            lambda v: isinstance(v, str) and v.strip().lower() in ("now", "today")).to_numpy(bool)
        if said.any():
            bad = np.zeros(len(ms), bool) if bad is None else bad
            bad[clock[said]] = True
    return ms, bad


def _refuse_other_formats(s: pd.Series, failed: np.ndarray, where: str) -> None:
    """Raise if a text that failed ISO 8601 (rows ``failed``) reads as a date in another
    format; texts that read as no date at all are left to be bad times."""
    if not failed.any():
        return
    texts = np.array([t for t in pd.unique(s[failed].astype(object)) if isinstance(t, str)],
                     dtype=object)
    if not len(texts):
        return
    other = _to_datetime(pd.Series(texts, dtype=object), "mixed").notna().to_numpy()
    if other.any():
        example = texts[int(np.flatnonzero(other)[0])]
        row = int(np.flatnonzero(failed & (s.astype(object) == example).to_numpy())[0])
        raise SchemaError(f"{where} holds times that are not ISO 8601, such as {example!r} at "
                          f"row {row}; pass ts_format= (a strptime format, e.g. "
                          "'%d/%m/%Y %H:%M') to read them")


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

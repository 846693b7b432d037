"""Tests of bta.events: bad inputs, quarantine accounting, sort, input forms, sessions, bots."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.events import kernels as _k
from bta.errors import ConfigError, SchemaError, UnknownNameError
from bta.events import (REASONS, STANDARD_EVENTS, BotRule, EventLog, Sessions, to_epoch_ms,
                        to_millis)
import naive_events as naive

T0 = 1_704_067_200_000  # 2024-01-01 UTC in epoch ms
HOUR = 3_600_000


def frame(n=6):
    """A small valid frame with every bta column."""
    return pd.DataFrame({
        "user_id": [f"u{i % 3}" for i in range(n)],
        "ts": pd.to_datetime(T0 + np.arange(n) * 60_000, unit="ms"),
        "event": ["page_view", "search", "ad_impression", "ad_click", "conversion",
                  "page_view"][:n] + ["page_view"] * max(0, n - 6),
        "category": [1, 2, 3, 1, 2, 3][:n] + [1] * max(0, n - 6),
        "value": np.arange(n, dtype=float),
    })


def with_(df, col, rows, values):
    df = df.copy()
    df[col] = df[col].astype(object)
    for r, v in zip(rows, values):
        df.at[r, col] = v
    return df


def same_log(a: EventLog, b: EventLog) -> None:
    for name in ("user", "ts", "event", "category", "value", "user_offsets", "flagged"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.users.tolist() == b.users.tolist()
    assert a.categories.tolist() == b.categories.tolist()
    assert a.event_types == b.event_types


# ------------------------------------------------------------------ bad inputs

ALL = "['user_id', 'ts', 'event', 'category', 'value']"
BAD_INPUTS = [
    ("missing ts, mapped",
     lambda: EventLog.from_pandas(frame().rename(columns={"user_id": "user"}).drop(columns="ts"),
                                  {"user_id": "user", "ts": "time"}),
     SchemaError,
     "missing required column 'ts' (mapped from 'time'); got columns "
     "['user', 'event', 'category', 'value']"),
    ("missing event",
     lambda: EventLog.from_pandas(frame().drop(columns="event")),
     SchemaError, "missing required column 'event'; got columns "
     "['user_id', 'ts', 'category', 'value']"),
    ("mapped optional column missing",
     lambda: EventLog.from_pandas(frame(), {"value": "amount"}),
     SchemaError, f"missing column 'value' (mapped from 'amount'); got columns {ALL}"),
    ("unknown mapping key",
     lambda: EventLog.from_pandas(frame(), {"time": "ts"}),
     ConfigError, "columns has unknown keys ['time']; expected keys among "
     "['user_id', 'ts', 'event', 'category', 'value', 'session_id', 'item_id', 'event_id']"),
    ("ts of booleans",
     lambda: EventLog.from_pandas(frame().assign(ts=True)),
     SchemaError, "column 'ts' must hold datetimes, date strings or epoch "
     "seconds/milliseconds, got bool"),
    ("ts of timedeltas",
     lambda: EventLog.from_arrays([1, 2], np.arange(2).astype("timedelta64[s]"), ["search"] * 2),
     SchemaError, "column 'ts' must hold datetimes, date strings or epoch "
     "seconds/milliseconds, got timedelta64[s]"),
    ("user_id floats with fractions",
     lambda: EventLog.from_pandas(frame().assign(user_id=[1.0, 1.5, 2.0, 3.0, 4.0, 5.0])),
     SchemaError, "column 'user_id' must hold strings or integers, got floats with "
                  "fractions (e.g. 1.5 at row 1)"),
    ("user_id nested lists",
     lambda: EventLog.from_pandas(frame().assign(user_id=[[1]] * 6)),
     SchemaError, "column 'user_id' holds nested values (list); expected scalars"),
    ("user_id mixed str and int",
     lambda: EventLog.from_pandas(frame().assign(user_id=pd.Series(["a", 1] * 3, dtype=object))),
     SchemaError, "column 'user_id' must hold strings or integers, got object (mixed-integer)"),
    ("user_id bool",
     lambda: EventLog.from_pandas(frame().assign(user_id=True)),
     SchemaError, "column 'user_id' must hold strings or integers, got bool"),
    ("event of ints",
     lambda: EventLog.from_pandas(frame().assign(event=1)),
     SchemaError, "column 'event' must hold event names (strings), got int64"),
    ("category of datetimes",
     lambda: EventLog.from_pandas(frame().assign(category=pd.Timestamp("2024-01-01"))),
     SchemaError, "column 'category' must hold strings or integers, got datetime64[us]"),
    ("value of strings",
     lambda: EventLog.from_pandas(frame().assign(value="x")),
     SchemaError, "column 'value' must hold numbers, got str"),
    ("arrow nested column",
     lambda: EventLog.from_arrow(pa.table({"user_id": [1], "ts": [T0], "event": [["a"]]})),
     SchemaError, "column 'event' holds nested values (list<item: string>); expected scalars"),
    ("arrays of unequal length",
     lambda: EventLog.from_arrays([1, 2, 3, 4], [T0] * 3, ["search"] * 4),
     SchemaError, "column 'ts' has 3 rows; expected 4 like the other columns"),
    ("2-D array",
     lambda: EventLog.from_arrays(np.ones((2, 2), int), [T0] * 2, ["search"] * 2),
     SchemaError, "column 'user_id' must be 1-D, got an array of shape (2, 2)"),
    ("scalar column",
     lambda: EventLog.from_arrays(5, [T0], ["search"]),
     SchemaError, "column 'user_id' must be a 1-D array-like, got int"),
    ("duplicated column name",
     lambda: EventLog.from_pandas(pd.concat([frame(), frame()[["ts"]]], axis=1)),
     SchemaError, "column 'ts' appears more than once (or is a frame); expected one column"),
    ("not a frame",
     lambda: EventLog.from_pandas({"user_id": [1]}),
     SchemaError, "df must be a pandas DataFrame, got dict"),
    ("from_any of a number",
     lambda: EventLog.from_any(42),
     SchemaError, "cannot read events from a int; expected a DataFrame, an Arrow table, "
                  "Parquet path(s) or a mapping of arrays"),
    # row problems under errors="raise": one per reason, then several at once
    ("missing_user",
     lambda: EventLog.from_pandas(with_(frame(), "user_id", [2, 5], [None, ""])),
     SchemaError, "column 'user_id': 2 rows with missing_user (null or empty user id), "
                  "first rows [2, 5]"),
    ("bad_time",
     lambda: EventLog.from_pandas(with_(frame().assign(ts=frame().ts.astype(str)), "ts",
                                        [0, 3, 4], [None, "garbage", "2024-13-45"])),
     SchemaError, "column 'ts': 3 rows with bad_time (unparseable or null time), "
                  "first rows [0, 3, 4]"),
    ("time_out_of_range",
     lambda: EventLog.from_pandas(with_(frame(), "ts", [1], [pd.Timestamp("1999-12-31")]),
                                  time_range=("2000-01-01", "2100-01-01")),
     SchemaError, "column 'ts': 1 row with time_out_of_range (time outside "
                  "[2000-01-01T00:00:00+00:00, 2100-01-01T00:00:00+00:00)), first rows [1]"),
    ("unknown_event",
     lambda: EventLog.from_pandas(with_(frame(), "event", [1, 2], ["clik", None])),
     SchemaError, "column 'event': 2 rows with unknown_event (unknown or null event name; "
                  "unknown names ['clik'], declare them with event_types= or pass "
                  "strict_events=False), first rows [1, 2]"),
    ("bad_value",
     lambda: EventLog.from_pandas(with_(frame(), "value", [0, 4], [-1.0, np.inf])),
     SchemaError, "column 'value': 2 rows with bad_value (negative or infinite value), "
                  "first rows [0, 4]"),
    ("several reasons: the first in order is named, the others counted",
     lambda: EventLog.from_pandas(with_(with_(frame(), "value", [0], [-1.0]), "ts", [5],
                                        [pd.NaT]), {"ts": "ts"}),
     SchemaError, "column 'ts': 1 row with bad_time (unparseable or null time), first rows [5]; "
                  "also 1 row with bad_value"),
    ("mapped column named in row error",
     lambda: EventLog.from_pandas(with_(frame(), "user_id", [1], [None]).rename(
         columns={"user_id": "uid"}), {"user_id": "uid"}),
     SchemaError, "column 'user_id' (mapped from 'uid'): 1 row with missing_user (null or "
                  "empty user id), first rows [1]"),
    # options
    ("errors value",
     lambda: EventLog.from_pandas(frame(), errors="ignore"),
     ConfigError, "errors must be one of 'raise', 'quarantine', got 'ignore'"),
    ("ts_unit value",
     lambda: EventLog.from_arrays([1], [T0], ["search"], ts_unit="us"),
     ConfigError, "ts_unit must be one of 'auto', 's', 'ms', got 'us'"),
    ("time_range reversed",
     lambda: EventLog.from_pandas(frame(), time_range=("2024-01-02", "2024-01-01")),
     ConfigError, "time_range must be a (start, end) with start < end, got "
                  "('2024-01-02', '2024-01-01')"),
    ("time_range not a time",
     lambda: EventLog.from_pandas(frame(), time_range=("soon", None)),
     ConfigError, "time_range must be a time (datetime, Timestamp, date string, numpy "
                  "datetime64 or integer epoch milliseconds), got 'soon'"),
    ("event_types a string",
     lambda: EventLog.from_pandas(frame(), event_types="share"),
     ConfigError, "event_types must be a sequence of non-empty event names, got 'share'"),
    ("event_types repeated",
     lambda: EventLog.from_pandas(frame(), event_types=["share", "share"]),
     ConfigError, "event_types must be a sequence without repeated names, got "
                  "['share', 'share']"),
    ("strict_events not bool",
     lambda: EventLog.from_pandas(frame(), strict_events="yes"),
     ConfigError, "strict_events must be True or False, got 'yes'"),
    ("flag_bots not a rule",
     lambda: EventLog.from_pandas(frame(), flag_bots=6.0),
     ConfigError, "flag_bots must be a BotRule or None, got 6.0"),
    ("unknown option",
     lambda: EventLog.from_arrow(pa.table({"a": [1]}), error="raise"),
     TypeError, ".*unexpected keyword argument 'error'"),
    ("BotRule threshold", lambda: BotRule(rate_z=-1),
     ConfigError, "rate_z must be a positive finite number, got -1"),
    ("BotRule min_events", lambda: BotRule(min_events=0),
     ConfigError, "min_events must be an integer >= 1, got 0"),
    ("parquet paths", lambda: EventLog.from_parquet([]),
     ConfigError, "path_or_paths must be a path or a non-empty list of paths, got []"),
    ("from_any options on a log",
     lambda: EventLog.from_any(EventLog.from_pandas(frame()), errors="quarantine"),
     ConfigError, "columns/options cannot apply to an existing EventLog, got columns=None, "
                  "options=['errors']"),
]


@pytest.mark.parametrize("call, exc, message", [b[1:] for b in BAD_INPUTS],
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gives_exact_error(call, exc, message):
    pattern = message if message.startswith(".*") else re.escape(message)
    with pytest.raises(exc, match=f"^{pattern}$"):
        call()


def test_schema_errors_hold_under_quarantine():
    # unusable columns are never row problems, whatever errors= says
    with pytest.raises(SchemaError, match="^column 'ts' must hold datetimes"):
        EventLog.from_pandas(frame().assign(ts=True), errors="quarantine")
    with pytest.raises(SchemaError, match="^missing required column 'user_id'"):
        EventLog.from_pandas(frame().drop(columns="user_id"), errors="quarantine")


BAD_HELPERS = [
    (lambda: to_millis("soon", "gap"), "gap must be a positive duration (a string like "
     "'30min', a Timedelta, a timedelta or seconds), got 'soon'"),
    (lambda: to_millis(-5, "gap"), "gap must be a positive duration (a string like '30min', "
     "a Timedelta, a timedelta or seconds), got -5"),
    (lambda: to_millis(True, "gap"), "gap must be a positive duration (a string like "
     "'30min', a Timedelta, a timedelta or seconds), got True"),
    (lambda: to_millis(float("nan"), "window"), "window must be a positive duration (a "
     "string like '30min', a Timedelta, a timedelta or seconds), got nan"),
    (lambda: to_millis(0.0001, "gap"), "gap must be a duration of at least 1 millisecond, "
     "got 0.0001"),
    (lambda: to_epoch_ms("not a time", "as_of"), "as_of must be a time (datetime, Timestamp, "
     "date string, numpy datetime64 or integer epoch milliseconds), got 'not a time'"),
    (lambda: to_epoch_ms(None, "as_of"), "as_of must be a time (datetime, Timestamp, date "
     "string, numpy datetime64 or integer epoch milliseconds), got None"),
    (lambda: to_epoch_ms(1.5, "as_of"), "as_of must be a time (datetime, Timestamp, date "
     "string, numpy datetime64 or integer epoch milliseconds), got 1.5"),
]


@pytest.mark.parametrize("call, message", BAD_HELPERS)
def test_bad_helper_input(call, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        call()


@pytest.mark.parametrize("duration, ms", [
    ("30min", 1_800_000), (pd.Timedelta(hours=1), HOUR), (dt.timedelta(seconds=2), 2000),
    (np.timedelta64(5, "s"), 5000), (90, 90_000), (1.5, 1500), ("250ms", 250),
])
def test_to_millis(duration, ms):
    assert to_millis(duration, "gap") == ms


@pytest.mark.parametrize("t", [
    "2024-01-01", "2024-01-01T01:00:00+01:00", dt.datetime(2024, 1, 1),
    dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    pd.Timestamp("2024-01-01"), np.datetime64("2024-01-01T00:00:00.000"), T0, dt.date(2024, 1, 1),
])
def test_to_epoch_ms(t):
    assert to_epoch_ms(t, "as_of") == T0


# ------------------------------------------------------- quarantine accounting

EXTRA = "share"
ODD_TIMES = [-10**12, 0, 5_000_000_000_000]  # 1938, epoch 0, 2128
EVENTS = list(STANDARD_EVENTS) + [EXTRA, "bogus", None]
USERS = ["u0", "u1", "u2", "u3", None, ""]
VALUES = [0.0, 1.5, 2.0, float("nan"), -1.0, float("inf"), float("-inf")]


@st.composite
def dirty_rows(draw):
    n = draw(st.integers(0, 30))
    rows = []
    for _ in range(n):
        if rows and draw(st.integers(0, 5)) == 0:  # inject an exact duplicate
            rows.append(dict(draw(st.sampled_from(rows))))
            continue
        minute = draw(st.integers(-2, 40))
        # -1: a time the default range refuses (before 1970, epoch 0, far in the future)
        ts = None if minute == -2 else (draw(st.sampled_from(ODD_TIMES)) if minute == -1
                                        else T0 + minute * 60_000)
        rows.append({
            "user_id": draw(st.sampled_from(USERS)),
            "ts": ts,
            "event": draw(st.sampled_from(EVENTS)),
            "category": draw(st.sampled_from([None, 1, 2, 7])),
            "value": draw(st.sampled_from(VALUES)),
        })
    return rows


def as_ts(ts_ms, form):
    """Epoch ms (or None) in one of several input forms."""
    if form == "ms":
        return pd.array(ts_ms, dtype="Int64")
    if form == "s":
        return pd.array([None if t is None else t / 1000 for t in ts_ms], dtype="Float64")
    if form == "datetime64":
        return np.array([np.datetime64("NaT") if t is None else np.datetime64(t, "ms")
                         for t in ts_ms], dtype="datetime64[ms]")
    if form == "str":
        return pd.Series([None if t is None else
                          pd.Timestamp(t, unit="ms").strftime("%Y-%m-%d %H:%M:%S.%f")
                          for t in ts_ms], dtype=object)
    raise AssertionError(form)


@settings(max_examples=60, deadline=None)
@given(rows=dirty_rows(), form=st.sampled_from(["ms", "s", "datetime64", "str"]),
       declare=st.booleans())
def test_quarantine_accounting(rows, form, declare):
    event_types = [EXTRA] if declare else None
    df = pd.DataFrame(rows, columns=["user_id", "ts", "event", "category", "value"])
    df["ts"] = as_ts([r["ts"] for r in rows], form)
    log = EventLog.from_pandas(df, event_types=event_types, errors="quarantine")
    reasons, accepted, vocab = naive.ingest(rows, event_types or ())

    assert log.n_input_rows == len(rows) == log.n_rows + len(log.quarantine)
    assert dict(zip(log.quarantine["row"], log.quarantine["reason"].astype(str))) == {
        i: r for i, r in enumerate(reasons) if r is not None}
    # quarantined rows keep their original columns
    pd.testing.assert_frame_equal(
        log.quarantine[list(df.columns)],
        df.iloc[log.quarantine["row"].to_numpy()].reset_index(drop=True))
    got = log.to_pandas()
    got_rows = [(u, t.value // 1_000_000, e, None if pd.isna(c) else int(c), v)
                for u, t, e, c, v in zip(got.user_id, got.ts, got.event.astype(object),
                                         got.category.astype(object), got.value)]
    assert got_rows == [a[:5] for a in accepted]
    assert log.event_types == tuple(vocab)
    assert log.users.tolist() == sorted({a[0] for a in accepted})
    if any(reasons):
        with pytest.raises(SchemaError, match=next(r for r in REASONS if r in reasons)):
            EventLog.from_pandas(df, event_types=event_types)


def test_duplicates_compare_nulls_and_session():
    df = pd.DataFrame({
        "user_id": ["a"] * 6,
        "ts": [T0] * 6,
        "event": ["search"] * 6,
        "value": [np.nan, 0.0, np.nan, 0.0, 1.0, 1.0],
        "session_id": ["s1", "s1", "s1", "s1", "s1", "s2"],
    })
    log = EventLog.from_pandas(df, errors="quarantine", dedupe="exact")
    # NaN equals NaN but not 0.0; a different session id makes a different row
    assert log.quarantine["row"].tolist() == [2, 3]
    assert log.value.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert log.session_id.tolist() == ["s1", "s1", "s1", "s2"]


def test_long_tie_runs_and_unsorted_users_match_naive():
    # > 32 events per user in random order, and > 32 events sharing one time, exercise
    # the merge-sort and hashed duplicate paths of the kernels
    rng = np.random.default_rng(7)
    n = 600
    rows = [{"user_id": int(rng.integers(0, 3)),
             "ts": T0 + int(rng.integers(0, 4)) * 1000 if i % 3 else T0 + int(rng.integers(0, 500)),
             "event": str(rng.choice(["page_view", "search", "ad_click"])),
             "category": int(rng.integers(0, 3)),
             "value": float(rng.integers(0, 3))} for i in range(n)]
    df = pd.DataFrame(rows)
    log = EventLog.from_pandas(df, errors="quarantine", dedupe="exact")
    reasons, accepted, _ = naive.ingest(rows, dedupe="exact")
    assert sum(r == "duplicate" for r in reasons) > 100
    assert dict(zip(log.quarantine["row"], log.quarantine["reason"].astype(str))) == {
        i: r for i, r in enumerate(reasons) if r is not None}
    np.testing.assert_array_equal(log.ts, [a[1] for a in accepted])
    np.testing.assert_array_equal(log.users[log.user], [a[0] for a in accepted])
    np.testing.assert_array_equal(log.value, [a[4] for a in accepted])


# ------------------------------------------------------------ order and sort


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 200), n_users=st.integers(1, 20),
       ties=st.booleans())
def test_row_order_invariance(seed, n, n_users, ties):
    rng = np.random.default_rng(seed)
    span = 20 if ties else 10**9  # many (user, ts) ties, or (almost surely) none
    df = pd.DataFrame({
        "user_id": rng.integers(0, n_users, n) * 1000 + 5,
        "ts": T0 + rng.integers(0, span, n),
        "event": rng.choice(list(STANDARD_EVENTS), n),
        "category": rng.choice(["x", "y", "z"], n),
        "value": rng.integers(0, 3, n).astype(float),
    })
    shuffled = df.sample(frac=1.0, random_state=int(rng.integers(0, 2**31)))
    a = EventLog.from_pandas(df, errors="quarantine")
    b = EventLog.from_pandas(shuffled, errors="quarantine")
    assert a.n_rows == b.n_rows and len(a.quarantine) == len(b.quarantine)
    if not ties:
        same_log(a, b)
    else:
        # tied events may swap; everything else is identical
        key = ["user_id", "ts", "event", "category", "value"]
        pa_, pb = a.to_pandas(), b.to_pandas()
        for p in (pa_, pb):
            p["event"], p["category"] = p["event"].astype(str), p["category"].astype(str)
        pd.testing.assert_frame_equal(pa_.sort_values(key, kind="stable").reset_index(drop=True),
                                      pb.sort_values(key, kind="stable").reset_index(drop=True))
        np.testing.assert_array_equal(a.user_offsets, b.user_offsets)
        assert a.users.tolist() == b.users.tolist()
        assert a.categories.tolist() == b.categories.tolist()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300),
       id_span=st.sampled_from([5, 1000, 10**15]), ts_span=st.sampled_from([3, 10**6]))
def test_sort_matches_lexsort(seed, n, id_span, ts_span):
    rng = np.random.default_rng(seed)
    uid = rng.integers(-id_span, id_span, n)  # a span of 10**15 takes the hash path
    ts = T0 + rng.integers(0, ts_span, n)
    cat = rng.integers(0, 50, n).astype(np.int32)
    # value = input row: no duplicates, and it tells where each sorted row came from
    log = EventLog.from_arrays(uid, ts, np.full(n, "search", dtype=object), cat,
                               value=np.arange(n, dtype=float))
    order = np.lexsort((ts, uid))  # stable: ties stay in input order
    np.testing.assert_array_equal(log.value, order.astype(float))
    np.testing.assert_array_equal(log.users, np.unique(uid))
    np.testing.assert_array_equal(log.users[log.user], uid[order])
    np.testing.assert_array_equal(log.ts, ts[order])
    np.testing.assert_array_equal(log.categories[log.category], cat[order])
    np.testing.assert_array_equal(log.categories, np.unique(cat))
    counts = np.bincount(log.user, minlength=log.n_users)
    np.testing.assert_array_equal(np.diff(log.user_offsets), counts)
    for name in ("user", "ts", "event", "category", "value", "user_offsets"):
        assert getattr(log, name).flags.c_contiguous
    assert (log.user.dtype, log.ts.dtype, log.event.dtype, log.category.dtype,
            log.value.dtype, log.user_offsets.dtype) == (np.int32, np.int64, np.int16,
                                                          np.int32, np.float64, np.int64)


def test_vocabularies_round_trip():
    df = frame(12)
    df.loc[3, "category"] = None
    log = EventLog.from_pandas(df)
    back = EventLog.from_pandas(log.to_pandas())
    same_log(log, back)
    out = log.to_pandas()
    assert str(out["ts"].dtype) == "datetime64[ms, UTC]"
    assert out.columns.tolist() == ["user_id", "ts", "event", "category", "value"]
    exp = df.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    assert out["user_id"].tolist() == exp["user_id"].tolist()
    assert out["event"].astype(str).tolist() == exp["event"].tolist()
    assert out["category"].astype(object).where(out["category"].notna(), None).tolist() == \
        [None if pd.isna(c) else int(c) for c in exp["category"]]
    assert log.user_code(["u2", "nobody"]).tolist() == [2, -1]
    assert log.user_code("u1") == 1
    assert log.category_code([3, 1, 99]).tolist() == [2, 0, -1]
    assert log.event_code("ad_click") == 3
    with pytest.raises(UnknownNameError, match="^unknown event type 'clik'; known: "):
        log.event_code("clik")


def test_unknown_events_non_strict_join_vocabulary_sorted():
    df = frame().assign(event=["zoom", "page_view", "alpha", EXTRA, "zoom", "search"])
    log = EventLog.from_pandas(df, event_types=[EXTRA], strict_events=False)
    assert log.event_types == STANDARD_EVENTS + (EXTRA, "alpha", "zoom")
    assert log.to_pandas()["event"].astype(str).tolist() == [
        "zoom", EXTRA, "page_view", "zoom", "alpha", "search"]


def test_many_distinct_event_objects_fall_back_to_pandas():
    # more than 64 distinct string objects: the identity fast path gives way to pandas
    names = np.array([f"e{i:03d}" for i in range(100)] * 3, dtype=object)
    log = EventLog.from_arrays(np.arange(300) % 7, T0 + np.arange(300), names,
                               strict_events=False)
    assert log.event_types[5:] == tuple(sorted(set(names)))
    assert sorted(np.asarray(log.event_types)[log.event].tolist()) == sorted(names.tolist())


# -------------------------------------------------------------- input forms


def reference_log():
    rng = np.random.default_rng(3)
    n = 40
    return pd.DataFrame({
        "user_id": rng.choice(["ann", "bob", "cy", "dee"], n),
        "ts": T0 + rng.integers(0, 5 * HOUR, n) // 1000 * 1000,  # whole seconds
        "event": rng.choice(list(STANDARD_EVENTS), n),
        "category": rng.choice([10, 20, 30], n),
        "value": rng.integers(0, 5, n).astype(float),
    })


def write_parquet(table, path):
    pq.write_table(table, path)
    return path


FORMS = {
    "pandas epoch ms": lambda df, tmp: EventLog.from_pandas(df),
    "pandas epoch s": lambda df, tmp: EventLog.from_pandas(df.assign(ts=df.ts // 1000)),
    "pandas epoch s float": lambda df, tmp: EventLog.from_pandas(df.assign(ts=df.ts / 1000.0),
                                                                 ts_unit="s"),
    "explicit ms": lambda df, tmp: EventLog.from_pandas(df, ts_unit="ms"),
    "naive datetime": lambda df, tmp: EventLog.from_pandas(
        df.assign(ts=pd.to_datetime(df.ts, unit="ms"))),
    "tz-aware datetime": lambda df, tmp: EventLog.from_pandas(
        df.assign(ts=pd.to_datetime(df.ts, unit="ms", utc=True).dt.tz_convert("Asia/Tokyo"))),
    "datetime64[ns]": lambda df, tmp: EventLog.from_pandas(
        df.assign(ts=df.ts.to_numpy().astype("datetime64[ms]").astype("datetime64[ns]"))),
    "iso strings with offsets": lambda df, tmp: EventLog.from_pandas(df.assign(
        ts=pd.to_datetime(df.ts, unit="ms", utc=True).dt.tz_convert("America/New_York")
        .map(lambda t: t.isoformat()))),
    "categoricals": lambda df, tmp: EventLog.from_pandas(df.astype(
        {"event": "category", "user_id": "category", "category": "category"})),
    "column mapping": lambda df, tmp: EventLog.from_pandas(
        df.rename(columns={"user_id": "visitor", "ts": "time", "event": "action"}),
        {"user_id": "visitor", "ts": "time", "event": "action"}),
    "arrays": lambda df, tmp: EventLog.from_arrays(
        df.user_id.to_numpy(dtype=object), df.ts.to_numpy(), df.event.to_numpy(dtype=object),
        df.category.to_numpy(), df.value.to_numpy()),
    "lists": lambda df, tmp: EventLog.from_arrays(
        df.user_id.tolist(), df.ts.tolist(), df.event.tolist(), df.category.tolist(),
        df.value.tolist()),
    "arrow": lambda df, tmp: EventLog.from_arrow(pa.Table.from_pandas(df)),
    "arrow dictionary": lambda df, tmp: EventLog.from_arrow(pa.table({
        "user_id": pa.array(df.user_id).dictionary_encode(),
        "ts": pa.array(df.ts.to_numpy().astype("datetime64[ms]"), pa.timestamp("ms", "UTC")),
        "event": pa.array(df.event).dictionary_encode(),
        "category": pa.array(df.category),
        "value": pa.array(df.value)})),
    "arrow record batch": lambda df, tmp: EventLog.from_arrow(
        pa.RecordBatch.from_pandas(df, preserve_index=False)),
    "parquet file": lambda df, tmp: EventLog.from_parquet(
        write_parquet(pa.Table.from_pandas(df), tmp / "one.parquet")),
    "parquet files": lambda df, tmp: EventLog.from_parquet([
        write_parquet(pa.Table.from_pandas(df.iloc[:15]), tmp / "a.parquet"),
        write_parquet(pa.Table.from_pandas(df.iloc[15:]), tmp / "b.parquet")]),
    "parquet directory": lambda df, tmp: (
        (tmp / "ds").mkdir(),
        write_parquet(pa.Table.from_pandas(df.iloc[:20]), tmp / "ds" / "part-0.parquet"),
        write_parquet(pa.Table.from_pandas(df.iloc[20:]), tmp / "ds" / "part-1.parquet"),
        EventLog.from_parquet(tmp / "ds"))[-1],
    "from_any dict": lambda df, tmp: EventLog.from_any({c: df[c].to_numpy() for c in df}),
    "constructor": lambda df, tmp: EventLog(df.rename(columns={"ts": "when"}), {"ts": "when"}),
    "polars": lambda df, tmp: EventLog.from_any(pytest.importorskip("polars").from_pandas(df)),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_input_forms_agree(form, tmp_path):
    df = reference_log()
    expected = EventLog.from_pandas(df, ts_unit="ms")
    got = FORMS[form](df, tmp_path)
    same_log(got, expected)
    assert got.users.tolist() == ["ann", "bob", "cy", "dee"]
    assert got.categories.tolist() == [10, 20, 30]


def test_epoch_unit_auto_decides_on_the_whole_column():
    s = np.array([T0 // 1000, T0 // 1000 + 60, 5])  # one stray small value stays seconds
    log = EventLog.from_arrays([1, 2, 3], s, ["search"] * 3, errors="quarantine",
                               time_range=("2000-01-01", None))
    assert log.ts.tolist() == [T0, T0 + 60_000]
    assert log.quarantine["reason"].tolist() == ["time_out_of_range"]
    assert EventLog.from_arrays([1], [T0], ["search"]).ts.tolist() == [T0]


def test_integer_ids_with_nulls_stay_exact():
    big = 2**62 + 1
    tbl = pa.table({"user_id": pa.array([big, None, 3], pa.int64()), "ts": [T0, T0, T0],
                    "event": ["search"] * 3})
    log = EventLog.from_arrow(tbl, errors="quarantine")
    assert log.users.tolist() == [3, big]
    assert log.quarantine["reason"].tolist() == ["missing_user"]


def test_times_too_far_apart_to_pack_sort_by_rank():
    rng = np.random.default_rng(1)
    n = 50
    uid = rng.integers(0, 3, n)
    ts = rng.integers(-2**62, 2**62, n)  # epoch ms spanning far beyond any real log
    log = EventLog.from_arrays(uid, ts, ["search"] * n, value=np.arange(n, dtype=float),
                               time_range=None, ts_unit="ms")
    order = np.lexsort((ts, uid))
    np.testing.assert_array_equal(log.value, order.astype(float))
    np.testing.assert_array_equal(log.ts, ts[order])


def test_time_range_none_and_custom():
    df = frame().assign(ts=pd.to_datetime(["1970-01-02"] * 3 + ["2024-01-01"] * 3))
    assert EventLog.from_pandas(df, time_range=None).n_rows == 6
    log = EventLog.from_pandas(df, time_range=("2023-12-31", None), errors="quarantine")
    assert log.n_rows == 3 and log.quarantine["row"].tolist() == [0, 1, 2]


def test_empty_input():
    log = EventLog.from_arrays(np.empty(0, np.int64), np.empty(0, np.int64),
                               np.empty(0, dtype=object))
    assert (log.n_rows, log.n_users, log.user_offsets.tolist()) == (0, 0, [0])
    assert log.sessionize().count == 0
    assert "span=empty" in repr(log)
    assert log.summary()["rows_in"] == 0


def test_summary_repr_and_quarantine_columns():
    df = with_(frame(), "event", [2], ["clik"]).assign(row=range(6), reason="x")
    log = EventLog.from_pandas(df, errors="quarantine")
    s = log.summary()
    assert s["rows_in"] == 6 and s["rows_accepted"] == 5 and s["rows_quarantined"] == 1
    assert s["quarantined_by_reason"]["unknown_event"] == 1
    assert sum(s["quarantined_by_reason"].values()) == 1
    assert s["events_by_type"] == {"page_view": 2, "search": 1, "ad_impression": 0,
                                   "ad_click": 1, "conversion": 1}
    assert s["start"] == pd.Timestamp(T0, unit="ms", tz="UTC")
    assert s["end"] == pd.Timestamp(T0 + 5 * 60_000, unit="ms", tz="UTC")
    # input columns that clash with "row"/"reason" are kept under another name
    assert log.quarantine.columns.tolist() == [
        "user_id", "ts", "event", "category", "value", "row_input", "reason_input", "row",
        "reason"]
    assert repr(log).startswith("EventLog(n_rows=5, n_users=3, flagged=0, quarantined=1, ")


# ------------------------------------------------------------------ sessions


@settings(max_examples=50, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 2), st.sampled_from([0, 5, 10, 15, 30, 31])),
                      max_size=60),
       max_len=st.sampled_from([None, 20, 45]))
def test_sessions_match_naive(steps, max_len):
    # gaps of exactly 0, 10 (= gap: same session) and 15/30/31 minutes (> gap: new session)
    clock = {}
    uid, ts = [], []
    for u, minutes in steps:
        clock[u] = clock.get(u, T0) + minutes * 60_000
        uid.append(u)
        ts.append(clock[u])
    gap = 10 * 60_000
    log = EventLog.from_arrays(np.array(uid, dtype=np.int64), np.array(ts, dtype=np.int64),
                               np.array(["page_view"] * len(uid), dtype=object),
                               value=np.arange(len(uid), dtype=float))
    s = log.sessionize(gap="10min", max_length=None if max_len is None else f"{max_len}min")
    max_ms = 0 if max_len is None else max_len * 60_000
    expected = naive.sessions(log.user, log.ts, gap, max_ms)
    np.testing.assert_array_equal(s.session, expected)
    assert isinstance(s, Sessions) and s.gap_ms == gap and s.max_ms == max_ms
    assert s.count == (expected.max() + 1 if len(expected) else 0) == len(s.table)
    if len(expected):
        grouped = pd.DataFrame({"s": expected, "t": log.ts, "u": log.users[log.user]}
                               ).groupby("s")
        np.testing.assert_array_equal(s.table["n_events"], grouped.size())
        np.testing.assert_array_equal(s.table["duration_s"],
                                      (grouped.t.max() - grouped.t.min()) / 1000.0)
        np.testing.assert_array_equal(s.table["user_id"], grouped.u.first())
        assert (s.table["start"] == pd.to_datetime(grouped.t.min().to_numpy(), unit="ms",
                                                   utc=True)).all()
        assert s.mean_events == pytest.approx(len(expected) / s.count)
        assert s.summary()["count"] == s.count


def test_session_gap_boundary_and_ties():
    ts = T0 + np.array([0, 0, 30, 60, 90, 91, 200]) * 60_000
    log = EventLog.from_arrays(np.zeros(7, np.int64), ts, ["search"] * 7,
                               value=np.arange(7.0))
    s = log.sessionize("30min")
    assert s.session.tolist() == [0, 0, 0, 0, 0, 0, 1]  # gaps of exactly 30 min stay
    s = log.sessionize(1800, max_length="45min")
    assert s.session.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert s.table["duration_s"].tolist() == [1800.0, 1860.0, 0.0]
    assert s.table["n_events"].tolist() == [3, 3, 1]
    two = EventLog.from_arrays([1, 1], [T0, T0 + 31 * 60_000], ["search"] * 2)
    assert two.sessionize(pd.Timedelta("30min")).session.tolist() == [0, 1]
    with pytest.raises(ConfigError, match="^gap must be a positive duration"):
        log.sessionize(gap=0)


# ---------------------------------------------------------------------- bots


def bot_world(with_impressions=True):
    rng = np.random.default_rng(11)
    rows = []

    def add(user, times, events):
        rows.extend({"user_id": user, "ts": int(t), "event": e} for t, e in zip(times, events))

    for u in range(200):  # normal users: a few events in each of a few hours
        n = int(rng.integers(1, 40))
        hours = rng.integers(0, 48, n)
        events = rng.choice(["page_view", "search", "ad_impression", "ad_click"], n,
                            p=[0.5, 0.2, 0.28 if with_impressions else 0.0,
                               0.02 if with_impressions else 0.3])
        add(f"n{u:03d}", T0 + hours * HOUR + rng.integers(0, HOUR, n), events)
    for b in range(3):  # crawlers: 400 page views within one hour
        add(f"bot{b}", T0 + 5 * HOUR + np.sort(rng.integers(0, HOUR, 400)), ["page_view"] * 400)
    for c in range(2):  # click spam: 30 clicks on 10 impressions
        add(f"clk{c}", T0 + rng.integers(0, 40 * HOUR, 40),
            ["ad_click"] * 30 + ["ad_impression"] * 10)
    add("noimp", T0 + rng.integers(0, 20 * HOUR, 15), ["ad_click"] * 15)
    # a heavy but human user: many events spread over many hours is not flagged
    add("heavy", T0 + np.arange(300) * (HOUR // 3), ["page_view", "search", "ad_impression"] * 100)
    df = pd.DataFrame(rows)
    return df.drop_duplicates(["user_id", "ts", "event"]).reset_index(drop=True)


def test_bot_flags():
    df = bot_world()
    log = EventLog.from_pandas(df)
    flagged = set(log.users[log.flagged])
    assert flagged == {"bot0", "bot1", "bot2", "clk0", "clk1", "noimp"}
    events = {u: list(zip(g.ts, g.event)) for u, g in df.groupby("user_id")}
    ref = naive.bot_flags(events)
    assert flagged == {u for u, f in ref.items() if any(f)}
    report = log.flag_report.set_index("user_id")
    assert report.loc["bot0", "reason"] == "high_rate"
    assert report.loc["clk0", "reason"] == "click_pattern"
    assert report.loc["clk0", "ctr"] == 3.0 and report.loc["noimp", "ctr"] == np.inf
    assert report.loc["bot1", "n_events"] == 400 and report.loc["bot1", "rate_z"] > 6
    stats = log.bot_stats().set_index("user_id")
    assert stats["flagged"].sum() == 6 and stats.loc["heavy", "rate_z"] < 6
    assert stats.loc["bot2", "active_hours"] in (1, 2)
    # flagging drops nothing; exclusion is explicit
    assert log.n_rows == len(df)
    clean = log.exclude_flagged()
    assert clean.n_users == log.n_users - 6 and not clean.flagged.any()
    assert not set(clean.users) & flagged
    assert clean.n_rows == log.n_rows - sum(len(events[u]) for u in flagged)
    assert clean.exclude_flagged() is clean


def test_bot_rule_switches():
    df = bot_world()
    assert not EventLog.from_pandas(df, flag_bots=None).flagged.any()
    off = EventLog.from_pandas(df, flag_bots=BotRule(enabled=False))
    assert not off.flagged.any() and off.flag_report.empty
    # without any impression in the log the click rule says nothing
    no_imps = bot_world(with_impressions=False)
    no_imps = no_imps[no_imps.event != "ad_impression"]
    log = EventLog.from_pandas(no_imps)
    assert set(log.users[log.flagged]) == {"bot0", "bot1", "bot2"}
    strict = EventLog.from_pandas(df, flag_bots=BotRule(rate_z=3.0, min_events=20))
    assert strict.flagged.sum() >= 6


def test_select_users_recodes_densely():
    df = bot_world()
    log = EventLog.from_pandas(df)
    keep = np.flatnonzero(np.arange(log.n_users) % 3 == 0)
    sub = log.select_users(keep)
    assert sub.users.tolist() == log.users[keep].tolist()
    sub_df = sub.to_pandas()
    full = log.to_pandas()
    exp = full[full.user_id.isin(set(sub.users))].reset_index(drop=True)
    pd.testing.assert_frame_equal(sub_df, exp)
    np.testing.assert_array_equal(np.diff(sub.user_offsets),
                                  np.bincount(sub.user, minlength=sub.n_users))
    np.testing.assert_array_equal(sub.flagged, log.flagged[keep])
    assert sub.n_input_rows == sub.n_rows + len(sub.quarantine)
    mask = np.zeros(log.n_users, bool)
    mask[keep] = True
    same_log(log.select_users(mask), sub)
    with pytest.raises(ConfigError, match=re.escape(
            f"users must be a bool mask of length n_users={log.n_users} or user codes, got a "
            "bool array of shape (3,)")):
        log.select_users(np.ones(3, bool))
    with pytest.raises(ConfigError, match=re.escape(
            f"users must be a bool mask or user codes in [0, {log.n_users}), got [-1]")):
        log.select_users([-1])


# ------------------------------------------------------------- kernels directly


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 400), n_users=st.integers(1, 30),
       n_chunks=st.integers(1, 5))
def test_sort_kernel_any_chunking_is_stable_lexsort(seed, n, n_users, n_chunks):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, n_users, n).astype(np.int32)  # -1: rows left out
    # tiny spans, and spans too wide to pack beside the row number
    span = (5, 10**6, 2**62)[seed % 3]
    ts = rng.integers(-span, span, n).astype(np.int64)
    ok, offsets, ts_sorted, rows = _k.sort_by_user_time(codes, ts, n_users, n_chunks)
    kept = np.flatnonzero(codes >= 0)
    if not ok:  # span too wide to pack: the caller sorts time ranks instead
        bits = int(n - 1).bit_length()  # bits of the largest row number
        assert np.ptp(ts[kept].astype(float)) >= 2.0 ** (63 - bits)
        times, ranks = np.unique(ts, return_inverse=True)
        ok, offsets, ts_sorted, rows = _k.sort_by_user_time(codes, ranks, n_users, n_chunks)
        assert ok
        ts_sorted = times[ts_sorted]
    order = kept[np.lexsort((ts[kept], codes[kept]))]
    np.testing.assert_array_equal(rows, order)
    np.testing.assert_array_equal(ts_sorted, ts[order])
    np.testing.assert_array_equal(offsets, np.r_[0, np.cumsum(np.bincount(codes[kept],
                                                                          minlength=n_users))])


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.integers(-2**62, 2**62), max_size=50), seed=st.integers(0, 100))
def test_dense_codes_kernel(values, seed):
    vals = np.array(values, dtype=np.int64)
    valid = np.random.default_rng(seed).random(len(vals)) < 0.8
    ok, codes, uniques = _k.dense_codes(vals, valid, 1000)
    exp = np.unique(vals[valid])
    if len(exp) and int(exp[-1]) - int(exp[0]) + 1 > 1000:
        assert not ok  # too wide for a lookup table: the caller hashes instead
        return
    assert ok
    np.testing.assert_array_equal(uniques, exp)
    np.testing.assert_array_equal(codes[valid], np.searchsorted(exp, vals[valid]))
    assert (codes[~valid] == -1).all()
    ok, codes_all, uniq_all = _k.dense_codes(vals, np.empty(0, bool), 1000)  # empty: all valid
    if ok:
        np.testing.assert_array_equal(uniq_all, np.unique(vals))
        np.testing.assert_array_equal(codes_all, np.searchsorted(uniq_all, vals))


def test_small_factorize_kernel():
    keys = np.array([7, 7, 3, 7, 9, 3], dtype=np.int64)
    ok, codes, first = _k.small_factorize(keys, 4)
    assert ok and codes.tolist() == [0, 0, 1, 0, 2, 1] and first.tolist() == [0, 2, 4]
    ok, _, _ = _k.small_factorize(np.arange(10, dtype=np.int64), 4)
    assert not ok


def test_parallel_path_on_a_larger_log():
    # above the single-thread threshold the kernels run with numba's thread pool
    rng = np.random.default_rng(5)
    n = 250_000
    uid = rng.integers(0, 5_000, n)
    ts = T0 + rng.integers(0, 10**9, n)
    log = EventLog.from_arrays(uid, ts, pd.Categorical.from_codes(
        rng.integers(0, 5, n), categories=list(STANDARD_EVENTS)), value=np.arange(n, dtype=float))
    order = np.lexsort((ts, uid))
    np.testing.assert_array_equal(log.value, order.astype(float))
    np.testing.assert_array_equal(log.users[log.user], uid[order])


# ------------------------------------------------------------------------ privacy

from bta.events import REMOVAL_REASONS  # noqa: E402
from bta.privacy import PrivacyPolicy, pseudonymize  # noqa: E402
from naive import naive_screen_reason  # noqa: E402

KEY = b"test-key-0123456789"
PCATS = [None, "news", "autos", "health", "Religion", "debt"]


@st.composite
def private_rows(draw):
    rows = draw(dirty_rows())
    for r in rows:
        r["category"] = draw(st.sampled_from(PCATS))
    return rows


@settings(max_examples=60, deadline=None)
@given(rows=private_rows(), opt_outs=st.sets(st.sampled_from(["u0", "u1", "u2"]), max_size=2),
       minors=st.sets(st.sampled_from(["u1", "u3"]), max_size=1),
       allow_debt=st.booleans())
def test_privacy_screening_accounting(rows, opt_outs, minors, allow_debt):
    """rows in = accepted + quarantined + removed; screened rows are in neither the log nor
    the quarantine; the rest is ingested exactly as without them."""
    policy = PrivacyPolicy(allowed_sensitive={"debt"} if allow_debt else (), opt_outs=opt_outs,
                           minors=minors, sensitive_opt_ins=[("u2", "debt")])
    df = pd.DataFrame(rows, columns=["user_id", "ts", "event", "category", "value"])
    df["ts"] = as_ts([r["ts"] for r in rows], "ms")
    log = EventLog.from_pandas(df, errors="quarantine", privacy=policy)
    screened = [naive_screen_reason(policy, r["user_id"], r["category"]) for r in rows]
    kept = [i for i, s in enumerate(screened) if s is None]
    reasons, accepted, _ = naive.ingest([rows[i] for i in kept])

    expected_removed = dict.fromkeys(REMOVAL_REASONS, 0)
    for s in screened:
        if s is not None:
            expected_removed[s] += 1
    assert log.removed == expected_removed
    assert log.n_input_rows == len(rows) == (log.n_rows + len(log.quarantine)
                                             + sum(log.removed.values()))
    assert dict(zip(log.quarantine["row"], log.quarantine["reason"].astype(str))) == {
        kept[i]: r for i, r in enumerate(reasons) if r is not None}
    got = log.to_pandas()
    got_rows = [(u, t.value // 1_000_000, e, None if pd.isna(c) else c)
                for u, t, e, c in zip(got.user_id, got.ts, got.event.astype(object),
                                      got.category.astype(object))]
    assert got_rows == [a[:4] for a in accepted]
    s = log.summary()
    assert s["rows_removed"] == sum(expected_removed.values())
    assert s["removed_by_reason"] == expected_removed


def test_default_policy_always_screens_sensitive_categories():
    df = frame(6)
    df["category"] = ["news", "health", "HEALTH", "news", "politics", "autos"]
    log = EventLog.from_pandas(df)  # no policy: the default deny list applies
    assert log.categories.tolist() == ["autos", "news"]
    assert log.removed["sensitive"] == 3 and len(log.quarantine) == 0
    # an explicit policy is the only way to keep a category: allow it, with the users' opt-in
    allow = PrivacyPolicy(allowed_sensitive={"health"}, sensitive_opt_ins=[("u1", "health")])
    log2 = EventLog.from_pandas(df, privacy=allow)
    assert log2.categories.tolist() == ["autos", "health", "news"]  # u1's row only
    assert log2.removed["sensitive"] == 2
    assert log2.to_pandas().query("category == 'health'").user_id.tolist() == ["u1"]
    # screened rows are not errors: errors="raise" does not raise for them
    assert EventLog.from_arrays(df.user_id, df.ts, df.event, df.category).n_rows == 3


def test_screened_rows_never_reach_the_quarantine():
    df = frame(4)
    df["category"] = ["health", "news", "news", "news"]
    df.loc[0, "event"] = "bogus"  # would be quarantined, but it is sensitive: removed
    df.loc[1, "event"] = "bogus"
    log = EventLog.from_pandas(df, errors="quarantine", privacy=PrivacyPolicy(opt_outs={"u2"}))
    assert log.quarantine["row"].tolist() == [1]
    assert log.removed["sensitive"] == 1 and log.removed["opt_out"] == 1
    assert "health" not in log.quarantine["category"].tolist()


def test_integer_categories_and_ids_are_screened():
    policy = PrivacyPolicy(sensitive_categories={"health", "13"}, opt_outs={7})
    log = EventLog.from_arrays(np.array([7, 8, 8, 9]), np.full(4, T0) + np.arange(4),
                               ["page_view"] * 4, np.array([1, 13, 2, 3]), privacy=policy)
    assert log.users.tolist() == [8, 9] and log.categories.tolist() == [2, 3]
    assert log.removed["opt_out"] == 1 and log.removed["sensitive"] == 1


def test_privacy_option_errors():
    with pytest.raises(ConfigError, match=re.escape(
            "privacy must be a PrivacyPolicy or None, got 'strict'")):
        EventLog.from_pandas(frame(), privacy="strict")
    with pytest.raises(ConfigError, match=re.escape("key must be bytes of length >= 16")):
        EventLog.from_pandas(frame(), pseudonymize_key=b"short")
    with pytest.raises(ConfigError, match=re.escape("key must be bytes of length >= 16")):
        EventLog.from_arrays([1], [T0], ["page_view"], pseudonymize_key="a string key 1234")


@pytest.mark.parametrize("ids", [["a", "b", "a", "c"], [10, 20, 10, 30]])
def test_pseudonymized_ingestion(ids):
    df = pd.DataFrame({"user_id": ids + [None], "ts": pd.to_datetime([T0] * 5, unit="ms"),
                       "event": ["page_view", "search", "ad_click", "page_view", "search"],
                       "category": ["news"] * 5})
    if isinstance(ids[0], int):
        df["user_id"] = df["user_id"].astype("Int64")
    plain = EventLog.from_pandas(df, errors="quarantine")
    log = EventLog.from_pandas(df, errors="quarantine", pseudonymize_key=KEY)
    raw = [str(u) for u in ids]
    assert not set(map(str, log.users)) & set(raw)
    expect = pseudonymize(plain.users, KEY)
    assert sorted(log.users.tolist()) == sorted(expect.tolist())
    # same events per user, under the pseudonym
    a = plain.to_pandas().assign(user_id=lambda d: pseudonymize(d.user_id, KEY))
    b = log.to_pandas()
    key = ["user_id", "ts", "event"]
    pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True),
                                  b.sort_values(key).reset_index(drop=True))
    # the quarantine holds no raw id either (the missing one stays missing)
    assert log.quarantine["user_id"].isna().all() and len(log.quarantine) == 1
    # the policy's registries hold pseudonyms: screening happens after pseudonymizing
    gone = EventLog.from_pandas(df, errors="quarantine", pseudonymize_key=KEY,
                                privacy=PrivacyPolicy(opt_outs={pseudonymize(ids[0], KEY)}))
    assert gone.removed["opt_out"] == 2 and gone.n_users == 2


def test_pseudonymized_quarantine_and_from_arrays():
    log = EventLog.from_arrays(["x", "y", "x"], [T0, T0, -1], ["page_view", "bogus", "search"],
                               errors="quarantine", time_range=None, pseudonymize_key=KEY)
    assert log.quarantine["user_id"].tolist() == [pseudonymize("y", KEY)]
    assert log.users.tolist() == [pseudonymize("x", KEY)]


def test_drop_before_and_retain():
    df = bot_world()
    log = EventLog.from_pandas(df)
    cut = int(np.median(log.ts))
    new = log.drop_before(cut)
    full = log.to_pandas()
    exp = full[full.ts >= pd.Timestamp(cut, unit="ms", tz="UTC")].reset_index(drop=True)
    pd.testing.assert_frame_equal(new.to_pandas(), exp)
    np.testing.assert_array_equal(np.diff(new.user_offsets),
                                  np.bincount(new.user, minlength=new.n_users))
    assert new.users.tolist() == sorted(set(exp.user_id))
    assert new.removed["expired"] == log.n_rows - new.n_rows > 0
    assert new.n_input_rows == new.n_rows + len(new.quarantine) + sum(new.removed.values())
    np.testing.assert_array_equal(new.flagged,
                                  log.flagged[np.isin(log.users, new.users)])
    as_of = pd.Timestamp(int(log.ts.max()), unit="ms", tz="UTC")
    same_log(log.retain("1h", as_of=as_of), log.drop_before(int(log.ts.max()) - HOUR))
    assert log.retain("36500d").n_rows == log.n_rows
    assert log.retain(1.0, as_of="2099-01-01").n_rows == 0  # everything is older than 1 s
    assert log.retain(1.0, as_of="2000-01-01").n_rows == log.n_rows  # nothing is old yet
    with pytest.raises(ConfigError, match="max_age must be a positive duration"):
        log.retain(-1)
    with pytest.raises(ConfigError, match="as_of must be a time"):
        log.retain("1d", as_of="not a time")


def test_erase_removes_events_and_quarantined_rows():
    df = frame(6)
    df["user_id"] = ["u0", "u1", "u0", "u2", "u0", "u1"]
    df.loc[4, "event"] = "bogus"
    df = df.rename(columns={"user_id": "uid"})
    log = EventLog.from_pandas(df, {"user_id": "uid"}, errors="quarantine")
    assert log.quarantine["uid"].tolist() == ["u0"]
    new = log.erase("u0")
    assert "u0" not in new.users.tolist() and new.users.tolist() == ["u1", "u2"]
    assert len(new.quarantine) == 0
    assert new.removed["erased"] == 3
    assert new.n_input_rows == 6 == new.n_rows + len(new.quarantine) + sum(new.removed.values())
    assert not (new.to_pandas().user_id == "u0").any()
    assert log.erase(["nobody"]).n_rows == log.n_rows
    both = log.erase(["u0", "u1"])
    assert both.users.tolist() == ["u2"]
    # selections keep the accounting
    sel = both.select_users([0])
    assert sel.n_input_rows == sel.n_rows + len(sel.quarantine) + sum(sel.removed.values())

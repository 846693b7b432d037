"""Real logs load as they are: identical rows, event-id dedupe, items, times, input forms, ids.

The reference points are a real purchase log (CDNOW, as ``lifetimes`` ships it) against
``lifetimes``' own customer summaries, the naive references of ``naive_events`` and
``naive``, and the same data handed over in every common form.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, SchemaError
from bta.events import REASONS, STANDARD_EVENTS, EventLog
from bta.features import FeatureSpec, build_features
import naive_events
from naive import matrix_entries, naive_features

DAY = 86_400_000
T0 = 1_750_000_000_000 - 1_750_000_000_000 % DAY  # 2025-06-15, midnight UTC
CATS = ["autos", "travel", "news"]  # none sensitive: the default screen keeps them


def same_log(a: EventLog, b: EventLog) -> None:
    for name in ("user", "ts", "event", "category", "value", "user_offsets", "flagged"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert (a.item is None) == (b.item is None)
    if a.item is not None:
        np.testing.assert_array_equal(a.item, b.item)
    for name in ("users", "categories", "items"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    assert a.event_types == b.event_types


# ---------------------------------------------------------------- bad options and times

BAD = [
    ("dedupe value", lambda: EventLog.from_arrays([1], [T0], ["search"], dedupe="rows"),
     ConfigError, "dedupe must be one of 'event_id', 'exact', 'none', got 'rows'"),
    ("ts_format without a directive",
     lambda: EventLog.from_arrays([1], ["x"], ["search"], ts_format="dd/mm/yyyy"),
     ConfigError, "ts_format must be a strptime format such as '%d/%m/%Y %H:%M', got "
                  "'dd/mm/yyyy'"),
    ("ts_format with a bad directive",
     lambda: EventLog.from_arrays([1], ["x"], ["search"], ts_format="%Q"),
     ConfigError, "ts_format must be a strptime format such as '%d/%m/%Y %H:%M' ('Q' is a "
                  "bad directive in format '%Q'), got '%Q'"),
    ("max_future not a duration",
     lambda: EventLog.from_arrays([1], [T0], ["search"], max_future="soon"),
     ConfigError, "max_future must be a positive duration (a string like '30min', a "
                  "Timedelta, a timedelta or seconds), got 'soon'"),
    ("ambiguous day/month strings",
     lambda: EventLog.from_arrays([1, 2], ["2026-01-02", "13/02/2026"], ["search"] * 2),
     SchemaError, "column 'ts' holds times that are not ISO 8601, such as '13/02/2026' at "
                  "row 1; pass ts_format= (a strptime format, e.g. '%d/%m/%Y %H:%M') to read "
                  "them"),
    ("YYYYMMDD integers",
     lambda: EventLog.from_pandas(pd.DataFrame({"user_id": [1, 2], "day": [19970101, 19980630],
                                                "event": ["conversion"] * 2}), {"ts": "day"}),
     SchemaError, "column 'ts' (mapped from 'day') holds numbers that read as YYYYMMDD dates "
                  "(e.g. 19970101 at row 0) as well as epoch times in 1970; pass "
                  "ts_format='%Y%m%d' to read dates, or ts_unit='s' or 'ms' for epoch times"),
    ("epoch_zero under raise",
     lambda: EventLog.from_arrays([1, 2], [T0, 0], ["search"] * 2),
     SchemaError, "column 'ts': 1 row with epoch_zero (time exactly 1970-01-01T00:00:00Z, a "
                  "null written as 0), first rows [1]"),
    ("polars-like object that is not a frame",
     lambda: EventLog.from_polars(pd.DataFrame({"a": [1]})),
     SchemaError, "frame must be a polars DataFrame or LazyFrame, got DataFrame"),
]


@pytest.mark.parametrize("call, exc, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gives_exact_error(call, exc, message):
    with pytest.raises(exc, match=f"^{re.escape(message)}$"):
        call()


def test_future_time_names_the_limit():
    with pytest.raises(SchemaError, match=r"^column 'ts': 1 row with future_time \(time later "
                       r"than \d{4}-.* \(max_future past the time of ingestion\)\), first "
                       r"rows \[1\]$"):
        EventLog.from_arrays([1, 2], ["2026-01-01", "2200-01-01"], ["search"] * 2)


def test_default_time_range_accepts_real_history_and_refuses_sentinels():
    ts = ["1970-01-01T00:00:00.001", "1997-01-01", "1970-01-01", "1969-12-31", "2200-01-01",
          pd.Timestamp.now(tz="UTC").isoformat()]
    log = EventLog.from_arrays(list("abcdef"), ts, ["search"] * 6, errors="quarantine")
    assert log.users.tolist() == ["a", "b", "f"]
    assert dict(zip(log.quarantine["row"], log.quarantine["reason"].astype(str))) == {
        2: "epoch_zero", 3: "time_out_of_range", 4: "future_time"}
    # the tolerance is configurable; None and time_range=None switch the checks off
    assert EventLog.from_arrays(["a"], ["2200-01-01"], ["search"], max_future=None).n_rows == 1
    assert EventLog.from_arrays(["a"], ["2200-01-01"], ["search"],
                                max_future="80000d").n_rows == 1
    anything = EventLog.from_arrays(list("cde"), ts[2:5], ["search"] * 3, time_range=None)
    assert anything.n_rows == 3 and anything.ts.min() < 0
    # a range that does not hold epoch 0 leaves it to the range check
    r = EventLog.from_arrays(["a", "b"], [0, T0], ["search"] * 2, errors="quarantine",
                             time_range=("2000-01-01", None))
    assert r.quarantine["reason"].tolist() == ["time_out_of_range"]


@pytest.mark.parametrize("ts, fmt, expected", [
    (["01/02/2026", "13/02/2026"], "%d/%m/%Y", ["2026-02-01", "2026-02-13"]),
    (["13/02/2026", "01/02/2026"], "%d/%m/%Y", ["2026-02-13", "2026-02-01"]),
    (["02/01/2026 10:30", "02/13/2026 00:00"], "%m/%d/%Y %H:%M",
     ["2026-02-01 10:30", "2026-02-13"]),
    ([19970101, 19980630], "%Y%m%d", ["1997-01-01", "1998-06-30"]),
    ([19970101.0, np.nan], "%Y%m%d", ["1997-01-01", None]),
    (["2026-01-02", "2026-01-02T10:00:00+02:00", "20260102", "2026-01-02 08:00:00.250Z"],
     None, ["2026-01-02", "2026-01-02 08:00", "2026-01-02", "2026-01-02 08:00:00.250"]),
])
def test_times_parse_by_one_rule_never_by_row_order(ts, fmt, expected):
    n = len(ts)
    log = EventLog.from_arrays(np.arange(n), ts, ["search"] * n, ts_format=fmt,
                               value=np.arange(n, dtype=float), errors="quarantine")
    want = {i: pd.Timestamp(t, tz="UTC").value // 1_000_000
            for i, t in enumerate(expected) if t is not None}
    assert dict(zip(log.value.astype(int).tolist(), log.ts.tolist())) == want
    assert log.quarantine["reason"].astype(str).tolist() == ["bad_time"] * (n - len(want))


def test_text_that_is_no_time_is_a_bad_time_and_now_is_no_time():
    ts = ["2026-01-02", "garbage", "2026-13-45", "now", "today", None]
    log = EventLog.from_arrays(np.arange(6), ts, ["search"] * 6, errors="quarantine")
    assert log.n_rows == 1
    assert log.quarantine["reason"].astype(str).tolist() == ["bad_time"] * 5


# ------------------------------------------------------------------ identical rows


@st.composite
def frames_with_repeats(draw, max_rows=40):
    """Events on a coarse grid with exact copies of earlier rows mixed in."""
    n = draw(st.integers(1, max_rows))
    rows = []
    for _ in range(n):
        if rows and draw(st.integers(0, 2)) == 0:
            rows.append(dict(draw(st.sampled_from(rows))))
            continue
        event = draw(st.sampled_from(STANDARD_EVENTS))
        rows.append({
            "user_id": draw(st.sampled_from(["u0", "u1", "u2"])),
            "ts": T0 + draw(st.sampled_from([0, 1, 60, 1440, 1441, 10080])) * 60_000,
            "event": event,
            "category": draw(st.sampled_from(CATS + [None])),
            "value": draw(st.sampled_from([1.5, 20.0])) if event == "conversion" else np.nan,
        })
    return pd.DataFrame(rows, columns=["user_id", "ts", "event", "category", "value"])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=frames_with_repeats(), as_of_min=st.sampled_from([0, 1440, 20000]),
       user_features=st.booleans())
def test_identical_rows_are_kept_and_counted_by_features(df, as_of_min, user_features):
    log = EventLog.from_pandas(df, ts_unit="ms")  # errors="raise": identical rows are no error
    assert log.n_rows == len(df) and len(log.quarantine) == 0
    assert log.summary()["rows_identical"] == int(df.duplicated().sum())
    spec = FeatureSpec(windows=("1d", "7d"), half_life="1d", user_features=user_features,
                       exclude_flagged=False)
    as_of = T0 + as_of_min * 60_000
    got = matrix_entries(build_features(log, spec, as_of=as_of))
    ref = naive_features(df.assign(value=df["value"].fillna(0.0)), spec, as_of)
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


@settings(max_examples=60, deadline=None)
@given(df=frames_with_repeats(), ids=st.lists(st.sampled_from(["e1", "e2", "e3", "", None]),
                                              min_size=40, max_size=40),
       mode=st.sampled_from(["event_id", "exact", "none"]))
def test_dedupe_modes_match_naive(df, ids, mode):
    df = df.assign(event_id=pd.Series(ids[:len(df)], dtype=object))
    log = EventLog.from_pandas(df, ts_unit="ms", dedupe=mode)  # dedupes never raise
    rows = df.to_dict("records")
    reasons, accepted, _ = naive_events.ingest(rows, dedupe=mode)
    assert dict(zip(log.quarantine["row"], log.quarantine["reason"].astype(str))) == {
        i: r for i, r in enumerate(reasons) if r is not None}
    assert log.n_input_rows == len(df) == log.n_rows + len(log.quarantine)
    kept = [a[5] for a in accepted]
    np.testing.assert_array_equal(log.ts, [a[1] for a in accepted])
    # the first row of each event id is the one kept, and keeps its own id
    assert log.event_id.tolist() == df["event_id"].iloc[kept].tolist()


def test_event_id_repeats_keep_the_first_valid_row():
    df = pd.DataFrame({
        "user_id": ["a", "a", "a", "b", "b", "c"],
        "ts": [T0, T0 + 1, T0 + 2, T0, T0 + 5, T0],
        "event": ["bogus", "conversion", "conversion", "page_view", "page_view", "search"],
        "value": [1.0, 2.0, 3.0, np.nan, np.nan, np.nan],
        "event_id": ["x", "x", "x", "y", "y", "y"],
    })
    log = EventLog.from_pandas(df, ts_unit="ms", errors="quarantine")
    # row 0 is refused for its event, so row 1 is the event x; ids repeat across users too
    assert log.quarantine["reason"].astype(str).tolist() == [
        "unknown_event", "duplicate_event_id", "duplicate_event_id", "duplicate_event_id"]
    assert log.quarantine["row"].tolist() == [0, 2, 4, 5]
    assert log.value.tolist() == [2.0, 0.0] and log.users.tolist() == ["a", "b"]
    out = log.to_pandas()
    assert out.columns.tolist() == ["user_id", "ts", "event", "category", "value", "event_id"]
    assert out["event_id"].tolist() == ["x", "y"]
    s = log.summary()
    assert s["quarantined_by_reason"]["duplicate_event_id"] == 3
    assert s["rows_in"] == s["rows_accepted"] + s["rows_quarantined"] + s["rows_removed"]


# --------------------------------------------------------------------------- items


def test_items_are_encoded_kept_and_exported():
    df = pd.DataFrame({
        "user_id": [2, 1, 1, 2, 1],
        "ts": T0 + np.array([0, 1, 1, 2, 3]) * 1000,
        "event": ["page_view"] * 5,
        "category": ["news", "news", "news", None, "autos"],
        "item_id": ["p9", "p1", "p2", None, "p1"],
    })
    log = EventLog.from_pandas(df, ts_unit="ms")
    assert log.items.tolist() == ["p1", "p2", "p9"]
    assert log.item.dtype == np.int32 and log.item.flags.c_contiguous
    assert log.item.tolist() == [0, 1, 0, 2, -1]
    # two rows alike but for the item are two events, and not identical
    assert log.summary()["rows_identical"] == 0
    out = log.to_pandas()
    assert out.columns.tolist() == ["user_id", "ts", "event", "category", "item_id", "value"]
    assert out["item_id"].astype(object).where(out["item_id"].notna(), None).tolist() == [
        "p1", "p2", "p1", "p9", None]
    same_log(EventLog.from_pandas(out), log)  # round trip through the categorical
    sel = log.select_users([1])
    assert sel.items.tolist() == log.items.tolist() and sel.item.tolist() == [2, -1]
    assert log.erase(1).item.tolist() == [2, -1]
    assert log.drop_before(T0 + 2000).item.tolist() == [0, -1]
    assert EventLog.from_pandas(df.drop(columns="item_id"), ts_unit="ms").item is None


# ---------------------------------------------------------------------- input forms


def reference_frame(n=60, seed=3):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": rng.choice(["ab", "c", "0d1", "ee"], n),
        "ts": pd.to_datetime(T0 + rng.integers(0, 5 * 3_600, n) * 1000, unit="ms"),
        "event": rng.choice(list(STANDARD_EVENTS), n),
        "category": rng.choice(CATS, n),
        "item_id": rng.choice(["i1", "i2", "i3"], n),
        "value": rng.integers(0, 5, n).astype(float),
    })


ARROW_TYPES = {"user_id": pa.large_string(), "event": pa.string(),
               "category": pa.dictionary(pa.int32(), pa.string()), "item_id": pa.string_view()}


def arrow_table(df, tz="UTC"):
    cols = {c: pa.array(df[c].tolist(), ARROW_TYPES[c]) if c in ARROW_TYPES
            else pa.array(df[c]) for c in df}
    cols["ts"] = pa.array(df["ts"].to_numpy().astype("datetime64[ms]"), pa.timestamp("ms", tz))
    return pa.table(cols)


FORMS = {
    "read_csv pyarrow backend": lambda df, tmp: (
        df.assign(ts=df.ts.dt.strftime("%Y-%m-%dT%H:%M:%S")).to_csv(tmp / "e.csv", index=False),
        EventLog.from_pandas(pd.read_csv(tmp / "e.csv", dtype_backend="pyarrow")))[-1],
    "ArrowDtype columns": lambda df, tmp: EventLog.from_pandas(
        arrow_table(df).to_pandas(types_mapper=pd.ArrowDtype)),
    "ArrowDtype naive timestamps": lambda df, tmp: EventLog.from_pandas(
        arrow_table(df, tz=None).to_pandas(types_mapper=pd.ArrowDtype)),
    "ArrowDtype tz timestamps": lambda df, tmp: EventLog.from_pandas(
        arrow_table(df, tz="Asia/Tokyo").to_pandas(types_mapper=pd.ArrowDtype)),
    "ArrowDtype epoch ints": lambda df, tmp: EventLog.from_pandas(df.assign(
        ts=pd.array(df.ts.to_numpy().astype("datetime64[ms]").astype(np.int64),
                    dtype="int64[pyarrow]"))),
    "pandas string dtype": lambda df, tmp: EventLog.from_pandas(df.astype(
        {"user_id": "string", "event": "string[pyarrow]", "item_id": "str"})),
    "arrow table": lambda df, tmp: EventLog.from_arrow(arrow_table(df)),
    "arrow record batch": lambda df, tmp: EventLog.from_arrow(arrow_table(df).to_batches()[0]),
    "parquet from arrow": lambda df, tmp: (
        pq.write_table(arrow_table(df).cast(arrow_table(df).schema.set(
            4, pa.field("item_id", pa.string()))), tmp / "e.parquet"),
        EventLog.from_parquet(tmp / "e.parquet"))[-1],
    "parquet directory": lambda df, tmp: (
        (tmp / "ds").mkdir(),
        df.iloc[:30].to_parquet(tmp / "ds" / "a.parquet"),
        df.iloc[30:].to_parquet(tmp / "ds" / "b.parquet"),
        EventLog.from_parquet(tmp / "ds"))[-1],
    "polars in from_pandas": lambda df, tmp: EventLog.from_pandas(
        pytest.importorskip("polars").from_pandas(df)),
    "polars lazy in from_pandas": lambda df, tmp: EventLog.from_pandas(
        pytest.importorskip("polars").from_pandas(df).lazy()),
    "polars renamed": lambda df, tmp: EventLog.from_polars(
        pytest.importorskip("polars").from_pandas(df.rename(columns={"user_id": "uid"})),
        {"user_id": "uid"}),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_common_input_forms_give_the_same_log(form, tmp_path):
    df = reference_frame()
    got = FORMS[form](df, tmp_path)
    same_log(got, EventLog.from_pandas(df))
    assert got.users.tolist() == ["0d1", "ab", "c", "ee"]


def test_arrow_backed_integers_and_nulls():
    df = pd.DataFrame({
        "user_id": pd.array([5, None, 2**62 + 1], dtype="int64[pyarrow]"),
        "ts": pd.array([T0, T0, None], dtype="int64[pyarrow]"),
        "event": pd.array(["search", "search", "ad_click"], dtype=pd.ArrowDtype(pa.string())),
        "value": pd.array([1.5, None, 2.0], dtype="double[pyarrow]"),
    })
    log = EventLog.from_pandas(df, errors="quarantine")
    assert log.users.tolist() == [5] and log.value.tolist() == [1.5]
    assert log.quarantine["reason"].astype(str).tolist() == ["missing_user", "bad_time"]


@st.composite
def plain_frames(draw):
    n = draw(st.integers(0, 30))
    users = st.one_of(st.sampled_from(["ab", "", "0a", "ä€"]), st.none())
    return pd.DataFrame({
        "user_id": pd.Series(draw(st.lists(users, min_size=n, max_size=n)), dtype=object),
        "ts": pd.Series(draw(st.lists(st.one_of(st.integers(-5, 5_000), st.none()),
                                      min_size=n, max_size=n)), dtype="Int64") * 60_000 + T0,
        "event": pd.Series(draw(st.lists(st.sampled_from(list(STANDARD_EVENTS) + ["bogus"]),
                                         min_size=n, max_size=n)), dtype=object),
        "category": pd.Series(draw(st.lists(st.one_of(st.sampled_from(CATS), st.none()),
                                            min_size=n, max_size=n)), dtype=object),
        "value": pd.Series(draw(st.lists(st.one_of(st.sampled_from([0.0, 2.5, -1.0]),
                                                   st.none()), min_size=n, max_size=n)),
                           dtype="Float64"),
    })


@settings(max_examples=60, deadline=None)
@given(df=plain_frames(), dedupe=st.sampled_from(["event_id", "exact"]))
def test_pyarrow_and_numpy_backed_frames_give_identical_logs(df, dedupe):
    numpy_backed = df  # object, Int64 and Float64: NumPy arrays (and masks)
    schema = pa.schema([("user_id", pa.string()), ("ts", pa.int64()), ("event", pa.string()),
                        ("category", pa.large_string()), ("value", pa.float64())])
    arrow_backed = pa.Table.from_pandas(df, schema, preserve_index=False).to_pandas(
        types_mapper=pd.ArrowDtype)
    assert all(isinstance(t, pd.ArrowDtype) for t in arrow_backed.dtypes)
    a = EventLog.from_pandas(numpy_backed, errors="quarantine", dedupe=dedupe)
    b = EventLog.from_pandas(arrow_backed, errors="quarantine", dedupe=dedupe)
    same_log(a, b)
    assert a.quarantine["row"].tolist() == b.quarantine["row"].tolist()
    assert a.quarantine["reason"].tolist() == b.quarantine["reason"].tolist()


# ---------------------------------------------------------------- canonical user ids


def test_user_ids_are_found_in_canonical_form():
    ints = EventLog.from_arrays(np.array([0, 923, 7]), [T0] * 3, ["search"] * 3)
    assert ints.user_code("0") == 0 and ints.user_code("923") == 2 and ints.user_code(923) == 2
    assert ints.user_code(np.int32(7)) == 1 and ints.user_code(923.0) == 2
    assert ints.user_code(["0923", "+7", "", None, True, 1.5]).tolist() == [-1] * 6
    assert ints.erase("0").users.tolist() == [7, 923]
    text = EventLog.from_arrays(["923", "0923", "a"], [T0] * 3, ["search"] * 3)
    assert text.user_code(923) == text.user_code("923") == 1
    assert text.user_code("0923") == 0 and text.user_code(9230) == -1
    assert text.erase([923, "a"]).users.tolist() == ["0923"]
    assert text.erase(923.0).removed["erased"] == 1


def test_erase_matches_quarantined_rows_in_canonical_form():
    df = pd.DataFrame({"uid": pd.array([923, 923, 5], dtype="Int64"),
                       "ts": [T0, T0, T0], "event": ["search", "bogus", "bogus"]})
    log = EventLog.from_pandas(df, {"user_id": "uid"}, ts_unit="ms", errors="quarantine")
    assert len(log.quarantine) == 2
    gone = log.erase("923")
    assert gone.n_users == 0 and gone.quarantine["uid"].tolist() == [5]
    assert gone.removed["erased"] == 2
    assert gone.n_input_rows == gone.n_rows + len(gone.quarantine) + sum(gone.removed.values())


# ------------------------------------------------------------ a real log: CDNOW


def test_cdnow_loads_whole_and_its_rfm_equals_lifetimes():
    """The CDNOW purchase log (69,659 rows, 1997-01-01 .. 1998-06-30) that ``lifetimes`` ships.

    Mapping from bta's RFM (:func:`bta.segment.rfm_table`, one row per customer) to
    ``lifetimes.utils.summary_data_from_transaction_data`` with ``freq="D"`` and the
    observation end as ``as_of``:

    - ``frequency`` (lifetimes) counts *repeat purchase days*: distinct purchase days minus
      one. bta's ``frequency`` counts purchases (rows, identical ones included), so it equals
      the customer's rows, and lifetimes' equals bta's distinct purchase days minus one
      (days of the log's own ``ts``);
    - ``T - recency`` (lifetimes: age minus age at the last purchase) is bta's
      ``recency_days`` (days from the last purchase to ``as_of``), and ``T`` is ``as_of``
      minus the log's first purchase;
    - ``monetary`` (bta) is the sum of the customer's purchases, which is lifetimes'
      ``monetary_value * frequency`` with ``include_first_transaction=True`` (the mean over
      all purchase days of each day's total).
    """
    datasets = pytest.importorskip("lifetimes.datasets")
    from lifetimes.utils import summary_data_from_transaction_data

    raw = datasets.load_dataset("CDNOW_master.txt", sep=r"\s+")
    assert len(raw) == 69_659 and int(raw.duplicated().sum()) == 255
    events = raw.assign(event="conversion")
    cols = {"user_id": "customer_id", "ts": "date", "value": "dollar_value"}
    log = EventLog.from_pandas(events, cols, ts_format="%Y%m%d")  # otherwise defaults
    s = log.summary()
    assert (s["rows_in"], s["rows_accepted"], s["rows_quarantined"], s["rows_removed"]) == (
        69_659, 69_659, 0, 0)
    assert s["rows_identical"] == 255 and s["n_users"] == 23_570 and s["n_flagged"] == 0
    assert (str(s["start"].date()), str(s["end"].date())) == ("1997-01-01", "1998-06-30")
    # the dates as text are ISO 8601 (basic format) and need no format
    same_log(EventLog.from_pandas(events.assign(date=events["date"].astype(str)), cols), log)

    from bta.segment import rfm_table

    as_of = pd.Timestamp("1998-06-30")
    rfm = rfm_table(log, as_of=as_of)
    dated = raw.assign(date=pd.to_datetime(raw["date"].astype(str), format="%Y%m%d"))
    ref = summary_data_from_transaction_data(dated, "customer_id", "date",
                                             monetary_value_col="dollar_value",
                                             observation_period_end=as_of)
    ref_all = summary_data_from_transaction_data(dated, "customer_id", "date",
                                                 monetary_value_col="dollar_value",
                                                 observation_period_end=as_of,
                                                 include_first_transaction=True)
    assert rfm.index.tolist() == ref.index.tolist()  # every customer, in id order
    days = log.ts // DAY
    first_day = np.r_[True, (np.diff(days) != 0) | (np.diff(log.user) != 0)]
    distinct_days = np.add.reduceat(first_day.astype(np.int64), log.user_offsets[:-1])
    np.testing.assert_array_equal(distinct_days - 1, ref["frequency"].to_numpy())
    np.testing.assert_array_equal(rfm["frequency"].to_numpy(),
                                  raw.groupby("customer_id").size().to_numpy())
    np.testing.assert_array_equal(rfm["recency_days"].to_numpy(),
                                  (ref["T"] - ref["recency"]).to_numpy())
    first = log.ts[log.user_offsets[:-1]]
    np.testing.assert_array_equal((as_of.value // 10**6 - first) // DAY, ref["T"].to_numpy())
    spent = raw.groupby("customer_id")["dollar_value"].sum()
    np.testing.assert_allclose(rfm["monetary"].to_numpy(), spent.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(rfm["monetary"].to_numpy(),
                               (ref_all["monetary_value"] * ref_all["frequency"]).to_numpy(),
                               rtol=1e-9)
    assert rfm["monetary"].sum() == pytest.approx(raw["dollar_value"].sum(), rel=1e-12)


def test_reasons_are_documented_in_order():
    assert REASONS == ("missing_user", "bad_time", "epoch_zero", "time_out_of_range",
                       "future_time", "unknown_event", "bad_value", "duplicate_event_id",
                       "duplicate")

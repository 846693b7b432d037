"""Value segments: RFM against a pandas qcut reference, Pareto tiers, CRM indicators."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, SchemaError, UnknownNameError
from bta.events import EventLog
from bta.features import FeatureSpec, build_features
from bta.segment.book import SegmentBook
from bta.segment.value import (
    RFM_SEGMENT_RULES,
    crm_indicators,
    pareto_segments,
    pareto_tiers,
    rfm_segments,
    rfm_table,
)

DAY = 86_400_000
T0 = 1_750_000_000_000 - 1_750_000_000_000 % DAY
AS_OF = T0 + 20 * DAY


def make_log(df: pd.DataFrame) -> EventLog:
    return EventLog.from_pandas(df, ts_unit="ms", flag_bots=None, errors="quarantine")


@st.composite
def conversion_frames(draw, max_rows=50, days=25):
    n = draw(st.integers(1, max_rows))
    return pd.DataFrame({
        "user_id": draw(st.lists(st.integers(0, 14), min_size=n, max_size=n)),
        # whole days, so that last-conversion times tie often
        "ts": [T0 + d * DAY for d in draw(st.lists(st.integers(0, days), min_size=n,
                                                   max_size=n))],
        "event": draw(st.lists(st.sampled_from(["conversion", "conversion", "page_view"]),
                               min_size=n, max_size=n)),
        "value": draw(st.lists(st.sampled_from([0.0, 5.0, 10.0, 10.0, 25.0, 100.0]),
                               min_size=n, max_size=n)),
    }).drop_duplicates()


# ---- references -------------------------------------------------------------------------------
def qcut_scores(s: pd.Series) -> pd.Series:
    """Quintile of the first of each run of ties: pandas.qcut over ranks, min over ties."""
    if len(s) == 1:
        return pd.Series([1], index=s.index)
    first = pd.qcut(s.rank(method="first"), 5, labels=False) + 1
    return first.groupby(s.to_numpy()).transform("min")


def naive_rfm(df: pd.DataFrame, as_of: int) -> pd.DataFrame:
    seen = df[df.ts <= as_of]
    conv = seen[seen.event == "conversion"]
    g = conv.groupby("user_id")
    out = pd.DataFrame(index=pd.Index(sorted(seen.user_id.unique()), name="user_id"))
    out["frequency"] = g.size().reindex(out.index, fill_value=0)
    out["monetary"] = g.value.sum().reindex(out.index, fill_value=0.0)
    out["last"] = g.ts.max().reindex(out.index)
    cust = out[out.frequency > 0]
    for col, src in (("R", "last"), ("F", "frequency"), ("M", "monetary")):
        out[col] = 0
        if len(cust):
            out.loc[cust.index, col] = qcut_scores(cust[src]).to_numpy()
    return out


# ---- RFM --------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(conversion_frames())
def test_rfm_matches_qcut_reference(df):
    table = rfm_table(make_log(df), AS_OF)
    ref = naive_rfm(df, AS_OF)
    assert list(table.index) == list(ref.index)
    for col in ("R", "F", "M", "frequency"):
        assert table[col].tolist() == ref[col].tolist(), col
    np.testing.assert_allclose(table["monetary"], ref["monetary"])
    cust = ref.frequency > 0
    np.testing.assert_allclose(table["recency_days"][cust], (AS_OF - ref["last"][cust]) / DAY)
    assert table["recency_days"][~cust].isna().all()
    assert (table["customer"] == cust).all()
    assert table["rfm"].tolist() == [f"{r}{f}{m}" for r, f, m in
                                     zip(ref.R, ref.F, ref.M)]


@settings(max_examples=30, deadline=None)
@given(conversion_frames())
def test_rfm_from_feature_matrix_equals_from_log(df):
    log = make_log(df)
    fm = build_features(log, FeatureSpec(windows=("1d",)), AS_OF)
    a, b = rfm_table(log, AS_OF), rfm_table(fm)
    pd.testing.assert_frame_equal(a.drop(columns=["recency_days", "monetary"]),
                                  b.drop(columns=["recency_days", "monetary"]))
    np.testing.assert_allclose(a["recency_days"], b["recency_days"], rtol=1e-12)
    np.testing.assert_allclose(a["monetary"], b["monetary"], rtol=1e-12)


def test_rfm_fixed_example():
    # six customers and one browser; days before AS_OF of each conversion
    rows = [("a", 1, 10.0), ("a", 2, 10.0), ("a", 3, 10.0), ("b", 1, 500.0), ("c", 10, 5.0),
            ("d", 10, 5.0), ("d", 12, 5.0), ("e", 19, 1.0), ("f", 5, 50.0)]
    df = pd.DataFrame({"user_id": [r[0] for r in rows] + ["g"],
                       "ts": [AS_OF - r[1] * DAY for r in rows] + [AS_OF],
                       "event": ["conversion"] * len(rows) + ["page_view"],
                       "value": [r[2] for r in rows] + [0.0]})
    t = rfm_table(make_log(df), AS_OF)
    # n = 6 customers, score = max(1, ceil(5 p / 5)) = max(1, p) with p = # strictly smaller
    # R (last conversion, recent high): e(19d)=0, c,d(10d)=1 tied, f(5d)=3, a,b(1d)=4 tied
    assert t["R"].to_dict() == {"a": 4, "b": 4, "c": 1, "d": 1, "e": 1, "f": 3, "g": 0}
    # F: b,c,e,f = 1 conversion (p=0), d = 2 (p=4), a = 3 (p=5)
    assert t["F"].to_dict() == {"a": 5, "b": 1, "c": 1, "d": 4, "e": 1, "f": 1, "g": 0}
    # M: e=1 (0), c=5 (1), d=10 (2), a=30 (3), f=50 (4), b=500 (5)
    assert t["M"].to_dict() == {"a": 3, "b": 5, "c": 1, "d": 2, "e": 1, "f": 4, "g": 0}
    assert t.loc["g", "rfm"] == "000" and not t.loc["g", "customer"]


@settings(max_examples=40, deadline=None)
@given(conversion_frames())
def test_rfm_segments_partition_users_by_first_matching_rule(df):
    table = rfm_table(make_log(df), AS_OF)
    segs = rfm_segments(table)
    assert [s.name for s in segs] == [f"rfm:{r[0]}" for r in RFM_SEGMENT_RULES] + [
        "rfm:prospects"]
    M = np.column_stack([s.members for s in segs])
    assert (M.sum(axis=1) == 1).all()  # a partition
    for i, (user, row) in enumerate(table.iterrows()):
        if row.frequency == 0:
            expected = "prospects"
        else:
            r, f, m = row.R, row.F, row.M
            if r >= 4 and f >= 4 and m >= 4:
                expected = "champions"
            elif r >= 3 and f >= 4:
                expected = "loyal"
            elif r >= 4 and f <= 2:
                expected = "new"
            elif r <= 2 and f >= 3:
                expected = "at_risk"
            elif r <= 2 and f <= 2:
                expected = "lost"
            else:
                expected = "promising"
        assert segs[int(np.argmax(M[i]))].name == "rfm:" + expected, (user, row)
    book = SegmentBook.from_segments(table.index, segs, min_audience=1)
    assert book.sizes.sum() == len(table)
    assert all(s.kind == "value" for s in segs)


# ---- Pareto tiers -----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(conversion_frames(), st.sampled_from([(0.8, 0.95), (0.5, 0.9), (0.2, 1.0)]))
def test_pareto_tiers_match_naive(df, shares):
    log = make_log(df)
    tiers = pareto_tiers(log, AS_OF, shares=shares)
    ref = naive_rfm(df, AS_OF)
    cust = ref[ref.frequency > 0]
    total = cust.monetary.sum()
    for user, row in ref.iterrows():
        got = tiers.loc[user, "tier"]
        if row.frequency == 0:
            assert got == "none" and math.isnan(tiers.loc[user, "share_above"])
            continue
        if total == 0:
            assert got == "low"
            continue
        above = sum(v for v in cust.monetary if v > row.monetary) / total
        expected = "top" if above < shares[0] else "middle" if above < shares[1] else "low"
        assert got == expected, (user, above)
        assert tiers.loc[user, "share_above"] == pytest.approx(above, abs=1e-12)
    segs = pareto_segments(log, AS_OF, shares=shares)
    assert [s.name for s in segs] == ["value:top", "value:middle", "value:low"]
    for s in segs:
        np.testing.assert_array_equal(s.members, (tiers["tier"] == s.name[6:]).to_numpy())


def test_pareto_80_20_fixed():
    # values 50, 30, 10, 5, 5: cumulative from the top 50%, 80%, 90%, 95%, 100%
    df = pd.DataFrame({"user_id": list("abcde"), "ts": [AS_OF] * 5, "event": ["conversion"] * 5,
                       "value": [50.0, 30.0, 10.0, 5.0, 5.0]})
    t = pareto_tiers(make_log(df), AS_OF)
    # b: customers above bring 50% < 80%, so b (who crosses 80%) is top; c: 80% above -> middle;
    # d, e tied: 90% above both -> middle together
    assert t["tier"].tolist() == ["top", "top", "middle", "middle", "middle"]
    assert t["share_above"].tolist() == pytest.approx([0.0, 0.5, 0.8, 0.9, 0.9])


# ---- CRM indicators ---------------------------------------------------------------------------
def naive_crm(df, start, end, shares=(0.8, 0.95)):
    L = end - start
    conv = df[df.event == "conversion"]
    cur = conv[(conv.ts >= start) & (conv.ts < end)]
    prev = conv[(conv.ts >= start - L) & (conv.ts < start)]
    older = conv[conv.ts < start - L]
    C, P, O = set(cur.user_id), set(prev.user_id), set(older.user_id)

    def tiers(part):
        v = part.groupby("user_id").value.sum()
        total = v.sum()
        out = {}
        for u, x in v.items():
            if total == 0:
                out[u] = 2
                continue
            a = v[v > x].sum() / total
            out[u] = 0 if a < shares[0] else 1 if a < shares[1] else 2
        return out

    tc, tp = tiers(cur), tiers(prev)
    return {
        "n_customers": len(C), "n_previous_customers": len(P),
        "n_new": len(C - P - O), "n_retained": len(C & P), "n_reactivated": len((C - P) & O),
        "n_churned": len(P - C),
        "n_upgraded": sum(tc[u] < tp[u] for u in C & P),
        "n_downgraded": sum(tc[u] > tp[u] for u in C & P),
        "revenue": cur.value.sum(), "previous_revenue": prev.value.sum(),
        "avg_value_per_customer": cur.value.sum() / len(C) if C else math.nan,
        "churn_rate": len(P - C) / len(P) if P else math.nan,
    }


@settings(max_examples=60, deadline=None)
@given(conversion_frames(max_rows=60, days=29), st.integers(1, 15), st.integers(1, 10))
def test_crm_indicators_match_naive(df, start_day, length):
    start, end = T0 + start_day * DAY, T0 + (start_day + length) * DAY
    got = crm_indicators(make_log(df), start, end)
    ref = naive_crm(df, start, end)
    for k, v in ref.items():
        g = getattr(got, k)
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(g), k
        else:
            assert g == pytest.approx(v, abs=1e-9), k
    assert got.n_customers == got.n_new + got.n_retained + got.n_reactivated
    assert len(got.table) == len(set(got.table.index))
    assert (got.table["status"] == "churned").sum() == got.n_churned


def test_crm_indicators_hand_made():
    d = lambda k: T0 + k * DAY  # noqa: E731
    df = pd.DataFrame({
        "user_id": ["old", "old", "keep", "keep", "gone", "fresh", "browse", "up", "up"],
        "ts": [d(0), d(25), d(15), d(25), d(15), d(22), d(24), d(12), d(21)],
        "event": ["conversion"] * 6 + ["page_view", "conversion", "conversion"],
        "value": [10.0, 10.0, 100.0, 5.0, 50.0, 20.0, 0.0, 1.0, 200.0],
    })
    # period [d20, d30), previous [d10, d20)
    got = crm_indicators(make_log(df), d(20), d(30))
    assert (got.n_customers, got.n_previous_customers) == (4, 3)  # browse is no customer
    assert got.n_new == 1            # fresh
    assert got.n_retained == 2       # keep, up
    assert got.n_reactivated == 1    # old: bought at d0, not in the previous period
    assert got.n_churned == 1        # gone
    assert got.churn_rate == pytest.approx(1 / 3)
    # previous (total 151): keep 100 (0% above: top), gone 50 (66% above: top), up 1 (99%:
    # low); current (total 235): up 200 (top), fresh 20, old 10, keep 5 (98% above: low)
    assert (got.n_upgraded, got.n_downgraded) == (1, 1)
    assert got.table.loc["up", "tier_previous"] == "low"
    assert got.table.loc["up", "tier_current"] == "top"
    assert got.revenue == 235.0 and got.avg_value_per_customer == 235.0 / 4
    assert got.table.loc["gone", "status"] == "churned"
    assert got.table.loc["gone", "tier_current"] == "none"
    assert got.to_dict()["n_new"] == 1 and "table" not in got.to_dict()
    empty = crm_indicators(make_log(df), d(40), d(41))
    assert empty.n_customers == 0 and math.isnan(empty.avg_value_per_customer)
    assert math.isnan(empty.churn_rate)


# ---- bad input --------------------------------------------------------------------------------
def test_bad_inputs():
    df = pd.DataFrame({"user_id": [1, 2], "ts": [T0, T0 + DAY], "event": ["conversion"] * 2,
                       "value": [1.0, 2.0]})
    log = make_log(df)
    fm = build_features(log, FeatureSpec(windows=("1d",)), T0 + DAY)
    no_rfm = build_features(log, FeatureSpec(windows=("1d",), user_features=False), T0 + DAY)
    cases = [
        (lambda: rfm_table(df), ConfigError,
         "data must be an EventLog or a FeatureMatrix, got DataFrame"),
        (lambda: rfm_table(fm, T0), ConfigError,
         "as_of must be None or the FeatureMatrix's as_of (2025-06-16 00:00:00+00:00) when data "
         "is a FeatureMatrix, got"),
        (lambda: rfm_table(no_rfm), UnknownNameError,
         "unknown feature 'rfm:recency_days'; RFM needs the rfm:* features: build the "
         "FeatureMatrix with FeatureSpec(user_features=True)"),
        (lambda: rfm_segments(df), SchemaError,
         "data must be an rfm_table (columns R, F, M, frequency, monetary), an EventLog or a "
         "FeatureMatrix; the DataFrame lacks ['R', 'F', 'M', 'frequency', 'monetary']"),
        (lambda: pareto_tiers(log, shares=(0.9, 0.8)), ConfigError,
         "shares must be a pair (top, middle) with 0 < top < middle <= 1, got (0.9, 0.8)"),
        (lambda: crm_indicators(log, T0 + DAY, T0), ConfigError, "end must be after start"),
        (lambda: crm_indicators(df, T0, T0 + DAY), ConfigError,
         "log must be an EventLog, got DataFrame"),
        (lambda: rfm_table(log, exclude_flagged=1), ConfigError,
         "exclude_flagged must be True or False, got 1"),
    ]
    for call, cls, message in cases:
        with pytest.raises(cls, match=re.escape(message)):
            call()

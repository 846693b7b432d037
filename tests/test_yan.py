"""Yan et al. analysis: similarity ratio against pairwise loops, the CTR-by-segment table
against a naive pandas computation, the F-measure choice, the plot, and bad logs."""

from __future__ import annotations

import re
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, SchemaError, UnknownNameError
from bta.segment.book import Segment, SegmentBook
from bta.segment.yan import plot_yan, similarity_ratio, yan_analysis, yan_best


# ---- similarity ratio ------------------------------------------------------------------------
def naive_ratio(X: np.ndarray, M: np.ndarray):
    """Pairwise cosine loops over users with a non-zero row."""
    active = np.flatnonzero(X.any(axis=1))

    def cos(u, v):
        return X[u] @ X[v] / (np.linalg.norm(X[u]) * np.linalg.norm(X[v]))

    members = [[u for u in active if M[u, s]] for s in range(M.shape[1])]
    within = []
    for us in members:
        if len(us) >= 2:
            within.append(np.mean([cos(u, v) for u in us for v in us if u != v]))
    between = []
    for s in range(len(members)):
        for t in range(s + 1, len(members)):
            sims = [cos(u, v) for u in members[s] for v in members[t] if u != v]
            if sims:
                between.append(np.mean(sims))
    return (np.mean(within) if within else np.nan), (np.mean(between) if between else np.nan)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 15), st.integers(1, 5), st.integers(1, 4), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_similarity_ratio_matches_pairwise(n, d, n_seg, overlapping, seed):
    rng = np.random.default_rng(seed)
    X = rng.exponential(1.0, (n, d)) * (rng.random((n, d)) < 0.6)
    if overlapping:
        M = rng.random((n, n_seg)) < 0.5
        r = similarity_ratio(X, M)
    else:
        labels = rng.integers(-1, n_seg, n)
        M = np.zeros((n, n_seg), dtype=bool)
        M[labels >= 0, labels[labels >= 0]] = True
        r = similarity_ratio(X, labels)
    within, between = naive_ratio(X, M)
    assert r.within == pytest.approx(within, rel=1e-9, abs=1e-12, nan_ok=True)
    assert r.between == pytest.approx(between, rel=1e-9, abs=1e-12, nan_ok=True)
    if np.isnan(within):
        assert r.status == "no_within_pairs" and np.isnan(r.ratio)
    elif np.isnan(between):
        assert r.status == "too_few_segments" and np.isnan(r.ratio)
    elif between == 0:
        assert r.status == "zero_between" and r.ratio == np.inf
    else:
        assert r.status == "ok" and r.ratio == pytest.approx(within / between, rel=1e-9)


def test_similarity_ratio_fixed_values():
    X = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [0.0, 0.0]])
    r = similarity_ratio(X, np.array([0, 0, 1, 1, 1]))
    c = 1 / np.sqrt(1.01)  # cos between [1, 0] and [1, 0.1]
    assert r.within == pytest.approx(c)
    assert r.between == pytest.approx((0 + 0.1 * c + 0.1 * c + 0.2 / 1.01) / 4)
    assert r.n_users == 4 and r.status == "ok"
    with pytest.raises(SchemaError, match=re.escape(
            "segments must be 5 integer labels (one per user) or a boolean matrix of shape "
            "(5, n_segments), got dtype float64 with shape (5,)")):
        similarity_ratio(X, np.zeros(5))


# ---- the CTR table ---------------------------------------------------------------------------
def naive_yan(log: pd.DataFrame, book: SegmentBook, min_impressions: int,
              activatable_only: bool) -> pd.DataFrame:
    rows = []
    in_book = set(book.users.tolist())
    for ad, g in log.groupby("ad_id", sort=True):
        aI, aC = g["impressions"].sum(), g["clicks"].sum()
        unmatched = g.loc[~g["user_id"].isin(in_book), "impressions"].sum()
        ad_ctr = aC / aI if aI else np.nan
        block = []
        for name in book.names:
            m = g[g["user_id"].isin(set(book.members(name).tolist()))]
            I, C = m["impressions"].sum(), m["clicks"].sum()
            P = C / I if I else np.nan
            R = C / aC if aC else np.nan
            if np.isnan(P) or np.isnan(R):
                F = np.nan
            else:
                F = 0.0 if P + R == 0 else 2 * P * R / (P + R)
            lift = P / ad_ctr - 1 if aC else np.nan
            eligible = I >= max(1, min_impressions) and (
                not activatable_only or book.is_activatable(name))
            block.append(dict(ad_id=ad, segment=name, impressions=I, clicks=C, ctr=P, recall=R,
                              f_measure=F, lift=lift, eligible=eligible, best=False,
                              ad_impressions=aI, ad_clicks=aC, ad_ctr=ad_ctr,
                              ad_unmatched_impressions=unmatched))
        cands = [r for r in block if r["eligible"] and not np.isnan(r["f_measure"])]
        if aC > 0 and cands:
            top = max(r["f_measure"] for r in cands)
            next(r for r in cands if r["f_measure"] == top)["best"] = True
        rows.extend(block)
    return pd.DataFrame(rows)


@st.composite
def logs_and_books(draw):
    n_book, n_seg = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    users = [f"u{i}" for i in range(n_book)]
    segs = [Segment(f"s{j}", "custom", {}, np.array(draw(st.lists(
        st.booleans(), min_size=n_book, max_size=n_book)), dtype=bool)) for j in range(n_seg)]
    book = SegmentBook.from_segments(users, segs, min_audience=draw(st.integers(1, 3)))
    n = draw(st.integers(1, 25))
    pool = users + ["stranger1", "stranger2"]
    rows = []
    for _ in range(n):
        imp = draw(st.integers(0, 6))
        rows.append((draw(st.sampled_from(pool)), draw(st.sampled_from(["ad_a", "ad_b", "ad_c"])),
                     imp, draw(st.integers(0, imp))))
    log = pd.DataFrame(rows, columns=["user_id", "ad_id", "impressions", "clicks"])
    return log, book


def per_impression(log: pd.DataFrame) -> pd.DataFrame:
    out = []
    for r in log.itertuples(index=False):
        out += [(r.user_id, r.ad_id, i < r.clicks) for i in range(r.impressions)]
    return pd.DataFrame(out, columns=["user_id", "ad_id", "clicked"])


@settings(max_examples=50, deadline=None)
@given(logs_and_books(), st.integers(0, 5), st.booleans())
def test_table_matches_naive_pandas(log_book, min_impressions, activatable_only):
    log, book = log_book
    got = yan_analysis(log, book, min_impressions=min_impressions,
                       activatable_only=activatable_only)
    want = naive_yan(log, book, min_impressions, activatable_only)
    pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-12)
    # one row per impression gives the same table (ads without impressions have no row there)
    rows = per_impression(log)
    if len(rows):
        again = yan_analysis(rows, book, min_impressions=min_impressions,
                             activatable_only=activatable_only)
        seen = got[got["ad_impressions"] > 0].reset_index(drop=True)
        pd.testing.assert_frame_equal(again, seen, check_dtype=False, rtol=1e-12)


def test_f_measure_beats_lucky_tiny_segment_and_best_summary():
    users = [f"u{i}" for i in range(300)]
    big = np.zeros(300, dtype=bool)
    big[:100] = True
    tiny = np.zeros(300, dtype=bool)
    tiny[299] = True
    book = SegmentBook.from_segments(users, [Segment("tiny", "custom", {}, tiny),
                                             Segment("big", "custom", {}, big)], min_audience=1)
    # big segment: 1000 impressions, 40 clicks; the rest: 1000 impressions, 20 clicks;
    # the tiny segment's single user: 1 impression, 1 click (CTR 100%)
    log = pd.DataFrame({"user_id": ["u0", "u150", "u299", "u1"], "ad_id": ["ad"] * 4,
                        "impressions": [1000, 1000, 1, 0], "clicks": [40, 20, 1, 0]})
    table = yan_analysis(log, book, min_impressions=0, activatable_only=False)
    tiny_row, big_row = table.iloc[0], table.iloc[1]
    assert tiny_row["ctr"] == 1.0 and big_row["ctr"] == 0.04
    assert tiny_row["f_measure"] < big_row["f_measure"]  # recall 1/61 against 40/61
    assert big_row["best"] and not tiny_row["best"]
    assert big_row["lift"] == pytest.approx(0.04 / (61 / 2001) - 1)
    best = yan_best(table)
    assert best[["ad_id", "segment", "status"]].values.tolist() == [["ad", "big", "ok"]]
    # an ad without clicks, and one whose only segment is too small
    log2 = pd.DataFrame({"user_id": ["u0", "u299"], "ad_id": ["quiet", "niche"],
                         "impressions": [10, 10], "clicks": [0, 1]})
    best2 = yan_best(yan_analysis(log2, book, segments=["tiny"], min_impressions=20))
    assert best2[["ad_id", "status"]].values.tolist() == [["niche", "no_eligible_segment"],
                                                          ["quiet", "no_clicks"]]
    assert best2["segment"].tolist() == [None, None] and best2["lift"].isna().all()


def test_plot_writes_png(tmp_path, monkeypatch):
    users = [f"u{i}" for i in range(4)]
    book = SegmentBook.from_segments(users, [Segment("a", "custom", {}, np.array(
        [True, True, False, False]))], min_audience=1)
    log = pd.DataFrame({"user_id": users * 2, "ad_id": ["x"] * 4 + ["y"] * 4,
                        "impressions": [10] * 8, "clicks": [2, 1, 0, 0, 0, 1, 1, 1]})
    table = yan_analysis(log, book, min_impressions=1)
    path = plot_yan(table, tmp_path / "yan.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=re.escape(
            "plot_yan needs matplotlib: pip install 'bta[plot]'")):
        plot_yan(table, tmp_path / "again.png")
    with pytest.raises(SchemaError, match=re.escape("table must be a yan_analysis() result")):
        plot_yan(pd.DataFrame({"a": [1]}), tmp_path / "bad.png")


# ---- bad logs ----------------------------------------------------------------------------------
BOOK = SegmentBook.from_segments(["a", "b"], [Segment("sports", "custom", {}, np.array(
    [True, False]))], min_audience=1)
OK = {"user_id": ["a", "b"], "ad_id": [1, 1], "impressions": [3, 2], "clicks": [1, 0]}
COLS = "user_id, ad_id and either (impressions, clicks) or clicked"

BAD_LOGS = [
    ({k: v for k, v in OK.items() if k != "ad_id"}, SchemaError,
     f"log is missing column 'ad_id' (expected {COLS})"),
    ({k: v for k, v in OK.items() if k != "clicks"}, SchemaError,
     f"log is missing column 'clicks' (expected {COLS})"),
    ({**OK, "clicked": [True, False]}, SchemaError,
     "log must have either impressions and clicks (aggregated) or clicked (one row per "
     "impression), not both"),
    ({"user_id": ["a"], "ad_id": [1]}, SchemaError,
     f"log must have columns impressions and clicks, or clicked (expected {COLS}), got "
     "['user_id', 'ad_id']"),
    ({**OK, "clicks": [4, 0]}, SchemaError,
     "log column 'clicks' must be <= 'impressions', got 4 clicks for 3 impressions at row 0"),
    ({**OK, "impressions": [3, -2]}, SchemaError,
     "log column 'impressions' must hold integers >= 0, got -2 at row 1"),
    ({**OK, "impressions": [3, 1.5]}, SchemaError,
     "log column 'impressions' must hold integers >= 0, got 1.5 at row 1"),
    ({"user_id": ["a", "b"], "ad_id": [1, 1], "clicked": [True, "yes"]}, SchemaError,
     "log column 'clicked' must be True/False or 0/1, got 'yes' at row 1"),
    ({**OK, "user_id": ["a", None]}, SchemaError,
     "log column 'user_id' must not be missing, got a null at row 1"),
    ({k: [] for k in OK}, SchemaError, "log has no rows: nothing to analyse"),
]


@pytest.mark.parametrize("columns, cls, message", BAD_LOGS)
def test_bad_logs(columns, cls, message):
    with pytest.raises(cls, match=re.escape(message)):
        yan_analysis(pd.DataFrame(columns), BOOK)


def test_bad_arguments():
    log = pd.DataFrame(OK)
    with pytest.raises(ConfigError, match=re.escape(
            "log must be a pandas DataFrame with columns user_id, ad_id and either (impressions, "
            "clicks) or clicked, got dict")):
        yan_analysis(OK, BOOK)
    with pytest.raises(ConfigError, match=re.escape("book must be a SegmentBook, got list")):
        yan_analysis(log, [])
    with pytest.raises(ConfigError, match=re.escape(
            "min_impressions must be an integer >= 0, got -1")):
        yan_analysis(log, BOOK, min_impressions=-1)
    with pytest.raises(UnknownNameError, match=re.escape(
            "unknown segment 'sprots'; did you mean 'sports'?")):
        yan_analysis(log, BOOK, segments=["sprots"])

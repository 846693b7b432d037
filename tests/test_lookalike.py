"""Lookalikes: scores against naive NumPy, ranking and reach, held-out seed recovery on the
simulator, and bad seeds with exact messages."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, NotFittedError, UnknownNameError
from bta.events import EventLog
from bta.features import FeatureMatrix, FeatureSpec, build_features
from bta.segment.book import SegmentBook
from bta.segment.lookalike import Lookalike
from bta.sim import simulate_clickstream


def make_fm(values, users=None) -> FeatureMatrix:
    """FeatureMatrix holding only ``decay:page_view:{c}`` columns with the given values."""
    values = np.asarray(values, dtype=np.float64)
    n, d = values.shape
    return FeatureMatrix(X=sp.csr_matrix(values),
                         feature_names=tuple(f"decay:page_view:c{j}" for j in range(d)),
                         users=np.asarray(users if users is not None else np.arange(n)),
                         as_of=pd.Timestamp("2026-01-01", tz="UTC"),
                         spec=FeatureSpec(events=("page_view",), user_features=False),
                         nan_absent=np.zeros(d, dtype=bool))


def unit_tfidf(A: np.ndarray) -> np.ndarray:
    n = A.shape[0]
    W = A * (np.log((1 + n) / (1 + (A > 0).sum(axis=0))) + 1)
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    return np.divide(W, norms, out=np.zeros_like(W), where=norms > 0)


def naive_scores(X: np.ndarray, seed: list[int], method: str, k: int) -> np.ndarray:
    """Score of each row, one row at a time; seed rows leave themselves out."""
    active = [s for s in seed if X[s].any()]
    out = np.zeros(len(X))
    for u in range(len(X)):
        if not X[u].any():
            continue
        others = [s for s in active if s != u]
        if not others:
            continue
        if method == "centroid":
            c = X[others].sum(axis=0)
            out[u] = X[u] @ c / np.linalg.norm(c)
        else:
            sims = sorted((float(X[u] @ X[s]) for s in others), reverse=True)
            out[u] = np.mean(sims[:k])
    return out


# ---- bad input -------------------------------------------------------------------------------
FM = make_fm([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]], users=["a", "b", "c", "d"])


def test_bad_seeds_and_params():
    with pytest.raises(ConfigError, match=re.escape(
            "seed_users must be a non-empty sequence of user ids, got 0 users")):
        Lookalike([])
    with pytest.raises(ConfigError, match=re.escape(
            "seed_users must be a sequence of user ids, got str")):
        Lookalike("abc")
    with pytest.raises(ConfigError, match=re.escape(
            "method must be 'centroid' or 'knn', got 'nn'")):
        Lookalike(["a"], method="nn")
    with pytest.raises(ConfigError, match=re.escape("k must be an integer >= 1, got 0")):
        Lookalike(["a"], method="knn", k=0)
    with pytest.raises(ConfigError, match=re.escape(
            "on_unknown must be 'raise' or 'ignore', got 'skip'")):
        Lookalike(["a"], on_unknown="skip")
    many = ["a", "x1", "x2", "x3", "x4", "x5", "x6", "x7"]
    with pytest.raises(UnknownNameError, match=re.escape(
            "seed_users has 7 of 8 users not in the FeatureMatrix: 'x1', 'x2', 'x3', 'x4', "
            "'x5' and 2 more; pass on_unknown='ignore' to drop them")):
        Lookalike(many).fit(FM)
    with pytest.raises(UnknownNameError, match=re.escape(
            "seed_users has 1 of 2 users not in the FeatureMatrix: 7; pass on_unknown='ignore' "
            "to drop them")):
        Lookalike([0, 7]).fit(make_fm(np.eye(3)))
    with pytest.raises(ConfigError, match=re.escape(
            "none of the 2 seed_users is in the FeatureMatrix")):
        Lookalike(["x", "y"], on_unknown="ignore").fit(FM)
    with pytest.raises(ConfigError, match=re.escape(
            "none of the 1 seed users found has any 'page_view' affinity: there is nothing to "
            "look alike")):
        Lookalike(["d"]).fit(FM)
    with pytest.raises(NotFittedError, match=re.escape(
            "Lookalike is not fitted yet: call fit(fm) first")):
        Lookalike(["a"]).rank()
    la = Lookalike(["a"]).fit(FM)
    with pytest.raises(ConfigError, match=re.escape(
            "reach must be a number of users between 1 and 3 (the non-seed users) or a fraction "
            "in (0, 1], got 4")):
        la.segment("x", reach=4)
    with pytest.raises(ConfigError, match=re.escape(
            "reach must be a number of users between 1 and 3 (the non-seed users) or a fraction "
            "in (0, 1], got 1.5")):
        la.segment("x", reach=1.5)
    with pytest.raises(ConfigError, match=re.escape(
            "holdout_fraction=0.2 of 1 seed users leaves 0 held out and 1 for training; both "
            "must be at least 1")):
        la.evaluate(0.2)
    with pytest.raises(ConfigError, match=re.escape(
            "holdout_fraction must be a fraction in (0, 1), got 1.0")):
        la.evaluate(1.0)


def test_unknown_seed_ignored_and_reported():
    la = Lookalike(["a", "zz", "a", "c"], on_unknown="ignore").fit(FM)
    assert la.unknown_seed_.tolist() == ["zz"]
    rep = la.report(reach=2)
    assert (rep.n_seed_given, rep.n_seed, rep.n_unknown, rep.n_candidates, rep.reach) == (
        3, 2, 1, 2, 2)
    assert rep.n_no_affinity_in_expansion == 1  # "d" has no affinity and comes last
    assert la.rank()["user_id"].tolist() == ["b", "d"]


# ---- scores against the naive definition -----------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(2, 25), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from(["centroid", "knn"]), st.integers(0, 2**31 - 1))
def test_scores_match_naive(n, d, k, method, seed):
    rng = np.random.default_rng(seed)
    A = rng.exponential(1.0, (n, d)) * (rng.random((n, d)) < 0.5)
    n_seed = int(rng.integers(1, n))
    seed_rows = sorted(rng.choice(n, n_seed, replace=False).tolist())
    if not A[seed_rows].any():
        return  # no seed user with affinity: a ConfigError, tested above
    la = Lookalike(seed_rows, method=method, k=k).fit(make_fm(A))
    X = unit_tfidf(A)
    want = naive_scores(X, seed_rows, method, k)
    np.testing.assert_allclose(la.scores_, want, rtol=1e-9, atol=1e-12)
    # ranking: non-seed users, with affinity first, then by score, ties by row
    ranked = la.rank()
    cand = [u for u in range(n) if u not in seed_rows]
    expect = sorted(cand, key=lambda u: (not A[u].any(), -want[u], u))
    got = ranked["user_id"].tolist()
    assert sorted(got) == cand
    # equal scores up to rounding may swap; the score sequence must match exactly in order
    np.testing.assert_allclose(ranked["score"].to_numpy(), want[expect], atol=1e-12)


def test_segment_reach_and_definition():
    rng = np.random.default_rng(0)
    A = rng.exponential(1.0, (40, 5)) * (rng.random((40, 5)) < 0.6)
    fm = make_fm(A, users=[f"u{i}" for i in range(40)])
    seed = [f"u{i}" for i in range(8)]
    la = Lookalike(seed).fit(fm)
    top = la.rank()["user_id"].tolist()
    seg = la.segment("lookalike:test", reach=5)
    assert seg.kind == "lookalike" and seg.size == 5
    assert sorted(fm.users[seg.members].tolist()) == sorted(top[:5])
    assert not seg.members[:8].any()
    frac = la.segment("la", reach=0.25)  # a quarter of the 32 non-seed users
    assert frac.size == 8
    both = la.segment("la", reach=5, include_seed=True)
    assert both.size == 13 and both.members[:8].all()
    d = seg.definition
    rep = la.report(5)
    assert d["method"] == "centroid" and d["reach"] == 5 and d["n_seed"] == 8
    assert d["score_threshold"] == rep.score_threshold == la.scores_[seg.members].min()
    # seed_overlap: share of seed users (leave-one-out scores) reaching the threshold
    assert rep.seed_overlap == pytest.approx(
        np.mean(la.scores_[:8][A[:8].any(axis=1)] >= rep.score_threshold))
    book = SegmentBook.from_segments(fm.users, [seg], min_audience=1)
    assert book.members("lookalike:test").tolist() == [u for u in fm.users if u in top[:5]]


# ---- held-out recovery on the simulator -------------------------------------------------------
@pytest.fixture(scope="module")
def world():
    cs = simulate_clickstream(n_users=1500, days=14, seed=5, events_per_user_day=3.0,
                              bot_fraction=0.0)
    fm = build_features(EventLog.from_pandas(cs.events),
                        FeatureSpec(windows=("7d",), events=("page_view",), user_features=False))
    return cs, fm


@pytest.mark.parametrize("method", ["centroid", "knn"])
def test_recovers_held_out_seed(world, method):
    cs, fm = world
    truth = cs.groups[fm.users.astype(np.int64)]
    group_users = fm.users[truth == 1]
    seed = np.random.default_rng(0).choice(group_users, 150, replace=False)
    la = Lookalike(seed, method=method, k=10).fit(fm)
    share = (truth == 1).mean()
    ev = la.evaluate(0.3, reach=float(share), random_state=0)
    assert ev.n_holdout == 45 and ev.n_train == 105
    assert ev.random_recall == pytest.approx(ev.reach / ev.n_candidates)
    assert ev.recall > 0.7 and ev.lift > 3.0  # random ranking: recall ~ share ~ 0.17
    # the expansion is mostly the planted group's users outside the seed
    seg = la.segment("la", reach=int(0.5 * (len(group_users) - len(seed))))
    assert (truth[seg.members] == 1).mean() > 0.8
    assert la.report(0.1).seed_overlap > 0.5

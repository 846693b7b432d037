"""Interest clusters: geometry, k-means kernels against SciPy and a naive Lloyd loop, k-means++,
planted-group recovery on the simulator, persistence, and bad input with exact messages."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.cluster.vq import kmeans2, vq

from bta.errors import ConfigError, NotFittedError, SchemaError, UnknownNameError
from bta.events import EventLog
from bta.privacy import PrivacyPolicy
from bta.features import FeatureMatrix, FeatureSpec, build_features
from bta.segment.book import SegmentBook
from bta.segment.clusters import (InterestClusters, interest_affinity, kmeans,
                                  kmeans_plusplus)
from bta.sim import simulate_clickstream


def make_fm(values, categories=None, users=None, event="page_view", stat="decay") -> FeatureMatrix:
    """FeatureMatrix holding only ``{stat}:{event}:{c}`` columns with the given values."""
    values = np.asarray(values, dtype=np.float64)
    n, d = values.shape
    cats = list(categories) if categories is not None else [f"c{j}" for j in range(d)]
    if stat == "decay":
        names = tuple(f"decay:{event}:{c}" for c in cats)
    else:
        names = tuple(f"count:{event}:{c}:{stat[6:]}" for c in cats)
    return FeatureMatrix(X=sp.csr_matrix(values), feature_names=names,
                         users=np.asarray(users if users is not None else np.arange(n)),
                         as_of=pd.Timestamp("2026-01-01", tz="UTC"),
                         spec=FeatureSpec(events=(event,), user_features=False),
                         nan_absent=np.zeros(d, dtype=bool))


def naive_affinity(A: np.ndarray) -> np.ndarray:
    """TF-IDF (smoothed idf) and row L2 normalization, straight from the documented formula."""
    n = A.shape[0]
    df = (A > 0).sum(axis=0)
    W = A * (np.log((1 + n) / (1 + df)) + 1)
    out = np.zeros_like(W)
    for i in range(n):
        norm = np.sqrt((W[i] ** 2).sum())
        if norm > 0:
            out[i] = W[i] / norm
    return out


def naive_spherical_lloyd(X: np.ndarray, init: np.ndarray, max_iter: int):
    """Spherical k-means, one obvious step at a time (dense NumPy; zero rows get -1)."""
    C = init / np.linalg.norm(init, axis=1, keepdims=True)
    zero = ~X.any(axis=1)
    k = C.shape[0]

    def assign(C):
        cos = X @ C.T
        lab = np.argmax(cos, axis=1)
        dist = 1.0 - cos[np.arange(len(X)), lab]
        lab[zero] = -1
        dist[zero] = 0.0
        return lab, dist

    labels, dist = assign(C)
    for _ in range(max_iter):
        members = [np.flatnonzero(labels == j) for j in range(k)]
        relocated = False
        # empty cluster: take the farthest row of a cluster with more than one member
        order = list(np.argsort(-dist, kind="stable"))
        for j in range(k):
            if len(members[j]) == 0:
                relocated = True
                while order:
                    r = order.pop(0)
                    old = labels[r]
                    if old >= 0 and len(members[old]) > 1:
                        members[old] = members[old][members[old] != r]
                        members[j] = np.array([r])
                        labels[r] = j
                        break
        sums = np.array([X[m].sum(axis=0) for m in members])
        C = sums / np.linalg.norm(sums, axis=1, keepdims=True)
        new, dist = assign(C)
        same = np.array_equal(new, labels)
        labels = new
        if same and not relocated:
            break
    return C, labels, float(dist.sum())


def adjusted_rand_index(a, b) -> float:
    """Hubert and Arabie's ARI from the contingency table."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def pairs(x):
        return (x * (x - 1) / 2).sum()

    index = pairs(table)
    pa, pb = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = pa * pb / pairs(np.array([len(a)]))
    top = (pa + pb) / 2
    return 1.0 if top == expected else float((index - expected) / (top - expected))


# ---- bad input, exact messages -------------------------------------------------------------------
GOOD = make_fm([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [2.0, 2.0, 0.0]])

BAD_PARAMS = [
    (dict(n_clusters=0), "n_clusters must be an integer >= 1, got 0"),
    (dict(n_clusters=2.5), "n_clusters must be an integer >= 1, got 2.5"),
    (dict(stat="recency"), "stat must be 'decay' or 'count:<window>' (e.g. 'count:7d'), "
                           "got 'recency'"),
    (dict(max_iter=0), "max_iter must be an integer >= 1, got 0"),
    (dict(tol=-1.0), "tol must be a finite number >= 0, got -1.0"),
    (dict(n_init=0), "n_init must be an integer >= 1, got 0"),
    (dict(random_state="seed"), "random_state must be None, an int or a numpy Generator, "
                                "got 'seed'"),
]


@pytest.mark.parametrize("kwargs, message", BAD_PARAMS)
def test_bad_params(kwargs, message):
    kwargs = {"n_clusters": 2, **kwargs}
    with pytest.raises(ConfigError, match=re.escape(message)):
        InterestClusters(**kwargs)


def test_bad_inputs():
    with pytest.raises(ConfigError, match=re.escape(
            "n_clusters must be at most the number of users with interest affinity (2 of 3), "
            "got 3")):
        InterestClusters(3).fit(make_fm([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))
    with pytest.raises(ConfigError, match=re.escape(
            "n_clusters must be at most the number of users with interest affinity (3 of 3), "
            "got 4")):
        InterestClusters(4).fit(GOOD)
    empty = make_fm(np.zeros((0, 3)))
    with pytest.raises(SchemaError, match=re.escape(
            "fm has no users: interest affinity needs a FeatureMatrix with at least one user")):
        InterestClusters(2).fit(empty)
    with pytest.raises(UnknownNameError, match=re.escape(
            "no feature matches 'decay:page_vew:{category}' in this FeatureMatrix; did you mean "
            "event='page_view'?")):
        InterestClusters(2, event="page_vew").fit(GOOD)
    with pytest.raises(UnknownNameError, match=re.escape(
            "no feature matches 'count:page_view:{category}:7d' in this FeatureMatrix; stats "
            "available for event 'page_view': ['decay']")):
        interest_affinity(GOOD, stat="count:7d")
    with pytest.raises(ConfigError, match=re.escape(
            "fm must be a FeatureMatrix (see build_features), got DataFrame")):
        InterestClusters(2).fit(pd.DataFrame({"a": [1]}))
    with pytest.raises(SchemaError, match=re.escape(
            "feature 'decay:page_view:c1' must be finite and >= 0 to measure interest, got "
            "-1.0 for user 1")):
        interest_affinity(make_fm([[1.0, 0.0], [0.0, -1.0]]))
    # duplicated rows: fewer distinct points than clusters
    with pytest.raises(ConfigError, match=re.escape(
            "n_clusters must be at most the number of distinct rows (2), got 3")):
        InterestClusters(3, random_state=0).fit(make_fm([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3))
    X = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ConfigError, match=re.escape(
            "init must have at most as many centers as usable rows (2), got 3")):
        kmeans(X, np.eye(3, 2) + 0.1, metric="cosine")
    with pytest.raises(ConfigError, match=re.escape(
            "init must be a finite array of shape (n_clusters, 2), got shape (2, 3)")):
        kmeans(X, np.ones((2, 3)))
    with pytest.raises(ConfigError, match=re.escape(
            "metric must be 'cosine' or 'euclidean', got 'l1'")):
        kmeans(X, np.ones((1, 2)), metric="l1")
    with pytest.raises(SchemaError, match=re.escape(
            "X must be a non-empty 2-d matrix, got shape (0, 2)")):
        kmeans_plusplus(np.zeros((0, 2)), 1)
    with pytest.raises(NotFittedError, match=re.escape(
            "InterestClusters is not fitted yet: call fit(fm) or InterestClusters.from_dict(...) "
            "first")):
        InterestClusters(2).predict(GOOD)
    with pytest.raises(SchemaError, match=re.escape(
            "state is not a saved InterestClusters: expected format "
            "'bta.segment.InterestClusters', got None")):
        InterestClusters.from_dict({"centroids": []})


# ---- geometry ------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_affinity_matches_naive(n, d, seed):
    rng = np.random.default_rng(seed)
    A = rng.exponential(1.0, (n, d)) * (rng.random((n, d)) < 0.5)
    aff = interest_affinity(make_fm(A))
    want = naive_affinity(A)
    np.testing.assert_allclose(aff.X.toarray(), want, rtol=1e-12, atol=1e-15)
    assert list(aff.has_affinity) == list(A.any(axis=1))
    assert aff.n_no_affinity == int((~A.any(axis=1)).sum())
    norms = np.linalg.norm(aff.X.toarray(), axis=1)
    assert np.allclose(norms[aff.has_affinity], 1.0) and not np.isnan(aff.X.data).any()


def test_affinity_aligns_categories_and_reuses_idf():
    A = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]])
    fm = make_fm(A, categories=["autos", "news", "travel"], users=["a", "b"])
    fitted = interest_affinity(fm)
    # a new matrix with the columns in another order, one missing and one extra
    fm2 = make_fm([[2.0, 5.0, 1.0]], categories=["travel", "pets", "autos"], users=["c"])
    aff = interest_affinity(fm2, idf=fitted.idf, categories=fitted.categories)
    w = np.array([1.0 * fitted.idf[0], 0.0, 2.0 * fitted.idf[2]])
    np.testing.assert_allclose(aff.X.toarray()[0], w / np.linalg.norm(w), rtol=1e-12)
    assert aff.categories == ("autos", "news", "travel")
    # count statistic and no idf
    fmc = make_fm(A, stat="count:7d")
    plain = interest_affinity(fmc, stat="count:7d", idf=False).X.toarray()
    np.testing.assert_allclose(plain, A / np.linalg.norm(A, axis=1, keepdims=True), rtol=1e-12)
    with pytest.raises(SchemaError, match=re.escape(
            "fm has none of the 2 requested categories as 'decay:page_view:{category}' columns "
            "(first: ['x', 'y'])")):
        interest_affinity(fm, categories=["x", "y"])


# ---- k-means kernels -----------------------------------------------------------------------------
def blobs(rng, n_per, centers, scale):
    return np.vstack([c + scale * rng.standard_normal((n_per, len(c))) for c in centers])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n_iter", [1, 3, 20])
def test_euclidean_steps_match_scipy_kmeans2(seed, n_iter):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (4, 6))
    data = blobs(rng, 40, centers, 1.5)
    init = data[rng.choice(len(data), 4, replace=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty cluster (scipy keeps it, bta re-seeds) fails
        ref_c, _ = kmeans2(data, init.copy(), iter=n_iter, minit="matrix")
    res = kmeans(sp.csr_matrix(data), init, metric="euclidean", max_iter=n_iter, tol=0.0)
    np.testing.assert_allclose(res.centers, ref_c, rtol=1e-10, atol=1e-12)
    ref_labels, ref_dist = vq(data, ref_c)
    np.testing.assert_array_equal(res.labels, ref_labels)
    assert res.inertia == pytest.approx(float((ref_dist ** 2).sum()), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.integers(1, 8), st.integers(1, 5), st.integers(1, 15),
       st.integers(0, 2**31 - 1))
def test_spherical_kmeans_matches_naive_lloyd(n, d, k, max_iter, seed):
    rng = np.random.default_rng(seed)
    A = rng.exponential(1.0, (n, d)) * (rng.random((n, d)) < 0.6)
    # rows with one non-zero coordinate share a direction, which makes exact ties between
    # centers whose winner depends on summation order; a small jitter on the non-empty rows
    # removes them (empty rows stay empty: they test the "no affinity" label)
    live = A.any(axis=1)
    A[live] += 1e-3 * rng.random((int(live.sum()), d))
    X = naive_affinity(A)
    nonzero = np.flatnonzero(X.any(axis=1))
    k = min(k, len(nonzero))
    if k == 0:
        return
    init = X[rng.choice(nonzero, k, replace=False)]
    C, labels, inertia = naive_spherical_lloyd(X, init, max_iter)
    res = kmeans(sp.csr_matrix(X), init, metric="cosine", max_iter=max_iter, tol=0.0)
    np.testing.assert_array_equal(res.labels, labels)
    np.testing.assert_allclose(res.centers, C, rtol=1e-9, atol=1e-12)
    assert res.inertia == pytest.approx(inertia, rel=1e-9, abs=1e-9)


def test_empty_cluster_is_reseeded_with_farthest_row():
    X = naive_affinity(np.array([[1.0, 0.0], [1.0, 0.05], [0.9, 0.2], [0.0, 1.0]]))
    # two centers on the same side: the second gets no member at the first assignment
    init = np.array([[1.0, 0.0], [1.0, 0.0]])
    res = kmeans(sp.csr_matrix(X), init, metric="cosine", max_iter=10, tol=0.0)
    assert sorted(np.bincount(res.labels).tolist()) == [1, 3]
    assert res.labels[3] != res.labels[0]
    C, labels, _ = naive_spherical_lloyd(X, init, 10)
    np.testing.assert_array_equal(res.labels, labels)


def test_kmeans_plusplus_first_center_is_uniform_data_point():
    X = naive_affinity(np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [2.0, 1.0]]))
    rng = np.random.default_rng(7)
    firsts = np.array([kmeans_plusplus(X, 1, random_state=rng)[0] for _ in range(2000)])
    # the zero row is never a center; the four others are equally likely
    assert (firsts != 1).all()
    counts = np.bincount(firsts, minlength=5)[[0, 2, 3, 4]]
    assert stats.chisquare(counts).pvalue > 1e-3
    rows = kmeans_plusplus(X, 4, random_state=np.random.default_rng(0))
    assert len(set(rows.tolist())) == 4 and set(rows.tolist()) <= {0, 2, 3, 4}


def test_kmeans_plusplus_draws_by_squared_distance():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [0.5, 0.5]])
    D2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=2)
    rng = np.random.default_rng(11)
    n = 3000
    pairs = np.array([kmeans_plusplus(X, 2, random_state=rng, metric="euclidean")
                      for _ in range(n)])
    observed = np.zeros((5, 5))
    np.add.at(observed, (pairs[:, 0], pairs[:, 1]), 1)
    assert np.trace(observed) == 0  # never the same point twice
    n_first = observed.sum(axis=1)
    expected = n_first[:, None] * D2 / D2.sum(axis=1, keepdims=True)
    mask = expected > 0
    chi2 = (((observed - expected) ** 2)[mask] / expected[mask]).sum()
    dof = int(mask.sum() - 5)
    assert stats.chi2.sf(chi2, dof) > 1e-3
    assert stats.chisquare(n_first).pvalue > 1e-3


# ---- the simulator's planted groups --------------------------------------------------------------
@pytest.fixture(scope="module")
def world():
    cs = simulate_clickstream(n_users=1500, days=14, seed=3, events_per_user_day=3.0,
                              bot_fraction=0.0)
    fm = build_features(EventLog.from_pandas(cs.events),
                        FeatureSpec(windows=("7d",), events=("page_view",), user_features=False))
    return cs, fm


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=30), st.integers(0, 2**31 - 1))
def test_ari_matches_sklearn(a, seed):
    from sklearn.metrics import adjusted_rand_score

    b = np.random.default_rng(seed).integers(0, 4, len(a))
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_clusters_recover_planted_groups(world):
    cs, fm = world
    k = int(cs.groups.max()) + 1
    ic = InterestClusters(k, random_state=0).fit(fm)
    truth = cs.groups[fm.users.astype(np.int64)]
    # the simulator's sensitive category ("health") is screened out at ingestion: a user who
    # only ever read health pages has no affinity left, and only such users
    seen = np.diff(fm.X.tocsr().indptr) > 0
    assert ic.n_no_affinity_ == int((~seen).sum()) and (ic.labels_[seen] >= 0).all()
    assert (ic.labels_[~seen] < 0).all()
    ari = adjusted_rand_index(truth[seen], ic.labels_[seen])
    assert ari > 0.7  # chance is 0
    # each cluster is described by its group's favourite categories that may be profiled
    policy = PrivacyPolicy()
    fav = {g: set([cs.categories[c] for c in np.argsort(-cs.group_profiles[g])
                   if not policy.is_blocked_category(cs.categories[c])][:3]) for g in range(k)}
    for j in range(k):
        g = np.bincount(truth[ic.labels_ == j]).argmax()
        assert len(set(ic.top_categories_[j][:3]) & fav[g]) >= 2
    r = ic.similarity_ratio_
    assert r.status == "ok" and r.ratio > 3 and r.within > r.between
    assert ic.inertia_ == pytest.approx(
        float((1 - (ic.affinity_.X.toarray()[seen]
                    * ic.centroids_[ic.labels_[seen]]).sum(axis=1)).sum()),
        rel=1e-9)
    # reproducible from random_state, and n_init keeps the best run
    again = InterestClusters(k, random_state=0).fit(fm)
    np.testing.assert_array_equal(again.labels_, ic.labels_)
    one = InterestClusters(k, random_state=0, n_init=1).fit(fm)
    assert ic.inertia_ <= one.inertia_ + 1e-9


def test_segments_predict_and_round_trip(world, tmp_path):
    cs, fm = world
    ic = InterestClusters(4, random_state=1, n_top=3).fit(fm)
    segs = ic.segments(prefix="interest")
    book = SegmentBook.from_segments(fm.users, segs, min_audience=10)
    assert book.names == ("interest:0", "interest:1", "interest:2", "interest:3")
    assert set(book.kinds) == {"cluster"}
    assert book.sizes.to_numpy().tolist() == ic.cluster_sizes_.tolist()
    d = segs[2].definition
    assert d["centroid_index"] == 2 and d["top_categories"] == ic.top_categories_[2]
    assert d["params"]["n_clusters"] == 4 and d["params"]["random_state"] == 1
    np.testing.assert_allclose(segs[2].scores, ic.transform(fm)[:, 2])

    state = json.loads(json.dumps(ic.to_dict()))
    restored = InterestClusters.from_dict(state)
    np.testing.assert_array_equal(restored.predict(fm), ic.labels_)
    assert restored.top_categories_ == ic.top_categories_
    # new users: a matrix over a subset of the categories and other users
    sub = fm.to_pandas().iloc[:50]
    keep = [c for c in sub.columns if c.startswith("decay:")][:12]
    fm2 = make_fm(sub[keep].to_numpy(), categories=[c.split(":")[2] for c in keep],
                  users=[f"new{i}" for i in range(50)])
    labels = restored.predict(fm2)
    aff = interest_affinity(fm2, idf=ic.idf_, categories=ic.categories_)
    want = np.where(aff.has_affinity, np.argmax(aff.X.toarray() @ ic.centroids_.T, axis=1), -1)
    np.testing.assert_array_equal(labels, want)
    segs2 = restored.segments(fm=fm2)
    assert [s.size for s in segs2] == np.bincount(labels[labels >= 0], minlength=4).tolist()
    with pytest.raises(ConfigError, match=re.escape(
            "segments() of a model loaded with from_dict needs fm: the users to place")):
        restored.segments()


def test_warmup_compiles_every_kernel():
    from bta.segment import _kernels

    _kernels.warmup()
    for kernel in (_kernels.assign_nearest, _kernels.cluster_sums, _kernels.knn_scores):
        assert len(kernel.signatures) >= 1

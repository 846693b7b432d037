"""Uplift and Qini curves against a naive pandas version, hand-computed cases and properties."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, SchemaError
from bta.evaluate.uplift import (
    UpliftCurve,
    auuc,
    plot_uplift,
    qini_coefficient,
    qini_curve,
    uplift_curve,
)

CURVES = {"uplift": uplift_curve, "qini": qini_curve}


def naive_curve(kind, score, treated, outcome, propensity=None):
    """The curve straight from the textbook formulas, exact ties grouped with pandas.

    Y_T, Y_C: summed outcomes of the top rows; N_T, N_C: their counts. With a propensity the
    group means are weighted by 1/e (treated) and 1/(1-e) (control).
    """
    df = pd.DataFrame({"s": np.asarray(score, float), "t": np.asarray(treated, bool),
                       "y": np.asarray(outcome, float)})
    e = np.full(len(df), 0.5) if propensity is None else np.asarray(propensity, float)
    df["w"] = np.where(df["t"], 1.0 / e, 1.0 / (1.0 - e))
    df["wt"] = df["w"] * df["t"]
    df["wc"] = df["w"] * ~df["t"]
    df["ywt"] = df["y"] * df["wt"]
    df["ywc"] = df["y"] * df["wc"]
    g = df.groupby("s").agg(k=("y", "size"), nt=("t", "sum"), wt=("wt", "sum"),
                            wc=("wc", "sum"), ywt=("ywt", "sum"), ywc=("ywc", "sum"))
    g = g.sort_index(ascending=False).cumsum()
    ks, values = [0], [0.0]
    for row in g.itertuples():
        mean_t = row.ywt / row.wt if row.wt > 0 else 0.0
        mean_c = row.ywc / row.wc if row.wc > 0 else 0.0
        ks.append(int(row.k))
        values.append((mean_t - mean_c) * (row.k if kind == "uplift" else row.nt))
    return np.array(ks), np.array(values)


def naive_area(ks, values):
    area = 0.0
    for i in range(1, len(ks)):
        area += (ks[i] - ks[i - 1]) / ks[-1] * (values[i] + values[i - 1]) / 2.0
    return area


logs = st.integers(2, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 6), min_size=n, max_size=n),  # few distinct scores: many ties
    st.lists(st.booleans(), min_size=n, max_size=n),
    st.lists(st.integers(0, 1), min_size=n, max_size=n),
    st.lists(st.floats(0.05, 0.95), min_size=n, max_size=n),
    st.randoms(use_true_random=False),
)).filter(lambda d: 0 < sum(d[1]) < len(d[1]))


# -- against the naive version and by hand ------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(logs, st.sampled_from(["uplift", "qini"]), st.booleans())
def test_matches_naive(data, kind, weighted):
    s, t, y, e, _ = data
    s = np.array(s, float) / 3.0  # scores that are not integers, still exactly tied
    prop = e if weighted else None
    curve = CURVES[kind](s, t, y, propensity=prop)
    ks, values = naive_curve(kind, s, t, y, prop)
    np.testing.assert_array_equal(curve.n_targeted, ks)
    np.testing.assert_allclose(curve.value, values, rtol=1e-12, atol=1e-12)
    assert curve.area == pytest.approx(naive_area(ks, values), abs=1e-12)
    assert curve.baseline_area == pytest.approx(values[-1] / 2.0)
    np.testing.assert_allclose(curve.baseline, values[-1] * ks / len(s))
    assert (curve.n_treated, curve.n_control) == (sum(t), len(t) - sum(t))


def test_textbook_formulas_without_ties():
    rng = np.random.default_rng(0)
    n = 200
    s, t, y = rng.random(n), rng.random(n) < 0.4, (rng.random(n) < 0.3).astype(float)
    order = np.argsort(-s)
    yt, yc = np.cumsum((y * t)[order]), np.cumsum((y * ~t)[order])
    nt, nc = np.cumsum(t[order]), np.cumsum(~t[order])
    k = np.arange(1, n + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        qini = yt - np.where(nc > 0, yc * nt / nc, 0.0)
        upl = (np.where(nt > 0, yt / nt, 0.0) - np.where(nc > 0, yc / nc, 0.0)) * k
    np.testing.assert_allclose(qini_curve(s, t, y).value[1:], qini, atol=1e-12)
    np.testing.assert_allclose(uplift_curve(s, t, y).value[1:], upl, atol=1e-12)
    one_sided = int(np.count_nonzero((nt == 0) | (nc == 0)))
    assert qini_curve(s, t, y).n_one_sided == one_sided


def test_hand_computed():
    c = uplift_curve([0.9, 0.8, 0.2, 0.1], [1, 0, 1, 0], [1, 0, 0, 0])
    assert c.n_targeted.tolist() == [0, 1, 2, 3, 4]
    assert c.value.tolist() == [0.0, 1.0, 2.0, 1.5, 2.0]
    assert c.n_one_sided == 1  # the first point has no control row yet
    # areas over fractions 0, .25, .5, .75, 1: .25 * (0.5 + 1.5 + 1.75 + 1.75)
    assert c.area == pytest.approx(1.375)
    assert (c.overall, c.baseline_area) == (2.0, 1.0)
    # the tied pair (3, 3) enters at once: Q = 1 - 1 * 1/1 = 0; then 2 - 1 * 2/1 = 0;
    # then 2 - 1 * 2/2 = 1
    q = qini_curve([3, 3, 2, 1], [1, 0, 1, 0], [1, 1, 1, 0])
    assert q.n_targeted.tolist() == [0, 2, 3, 4]
    assert q.value.tolist() == [0.0, 0.0, 0.0, 1.0]
    assert q.area == pytest.approx(0.25 * 0.5)
    # continuous outcomes (revenue): (5 - 0) * 1, then (5 - 2) * 2
    r = uplift_curve([2.0, 1.0], [True, False], [5.0, 2.0], continuous=True)
    assert r.value.tolist() == [0.0, 5.0, 6.0]
    assert auuc([2.0, 1.0], [True, False], [5.0, 2.0], continuous=True) == pytest.approx(
        0.5 * 2.5 + 0.5 * 5.5)


# -- ties and permutations ----------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(logs, st.sampled_from(["uplift", "qini"]))
def test_row_order_does_not_matter(data, kind):
    s, t, y, e, rnd = data
    perm = rnd.sample(range(len(s)), len(s))
    a = CURVES[kind](s, t, y, propensity=e)
    b = CURVES[kind]([s[i] for i in perm], [t[i] for i in perm], [y[i] for i in perm],
                     propensity=[e[i] for i in perm])
    # bit-identical, not merely close: the curve is a function of the multiset of rows
    np.testing.assert_array_equal(a.n_targeted, b.n_targeted)
    np.testing.assert_array_equal(a.value, b.value)


def test_tie_tolerance():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 300).astype(float)
    t, y = rng.random(300) < 0.5, (rng.random(300) < 0.4).astype(float)
    jitter = s + rng.uniform(-1e-13, 1e-13, 300)  # the same scores, recomputed another way
    exact = qini_curve(s, t, y)
    assert exact.n_targeted.shape == (6,)
    tol = qini_curve(jitter, t, y)
    np.testing.assert_array_equal(tol.n_targeted, exact.n_targeted)
    np.testing.assert_allclose(tol.value, exact.value, atol=1e-12)
    assert qini_curve(jitter, t, y, tie_tol=0.0).n_targeted.shape[0] > 6
    coarse = qini_curve(s, t, y, tie_tol=1.5)  # every gap is 1: one block
    assert coarse.n_targeted.tolist() == [0, 300]


# -- baselines, the perfect score and propensities ----------------------------------------------

def simulate(rng, n):
    """Randomized log with heterogeneous uplift tau(x) = 0.2 x - 0.05 (negative for small x)."""
    x = rng.random(n)
    t = rng.random(n) < 0.5
    tau = 0.2 * x - 0.05
    y = (rng.random(n) < 0.1 + 0.1 * x + t * tau).astype(float)
    return x, t, y, tau


def test_random_score_auuc_is_the_baseline_and_true_uplift_beats_it():
    rng = np.random.default_rng(2)
    gaps, oracle, coeffs = [], [], []
    for _ in range(200):
        x, t, y, tau = simulate(rng, 1_000)
        c = uplift_curve(rng.random(1_000), t, y)
        gaps.append(c.area - c.baseline_area)
        o = uplift_curve(tau, t, y)
        oracle.append(o.area - o.baseline_area)
        coeffs.append((qini_coefficient(tau, t, y), qini_coefficient(rng.random(1_000), t, y)))
    gaps, oracle, coeffs = np.array(gaps), np.array(oracle), np.array(coeffs)
    se = gaps.std(ddof=1) / np.sqrt(len(gaps))
    assert abs(gaps.mean()) < 4 * se
    assert oracle.mean() > 10 * oracle.std(ddof=1) / np.sqrt(len(oracle))
    se_coef = coeffs.std(axis=0, ddof=1) / np.sqrt(len(coeffs))
    assert coeffs[:, 0].mean() > 10 * se_coef[0]  # the true uplift ranks well above random
    assert abs(coeffs[:, 1].mean()) < 4 * se_coef[1]  # a random score is random targeting


binary_logs = st.integers(2, 30).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-3, 3), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n),
    st.lists(st.integers(0, 1), min_size=n, max_size=n),
)).filter(lambda d: 0 < sum(d[1]) < len(d[1]))


@settings(max_examples=60, deadline=None)
@given(binary_logs)
def test_perfect_score_gives_the_maximum_curve(data):
    s, t, y = (np.array(v) for v in data)
    t = t.astype(bool)
    n_tr = int(np.sum(t & (y == 1)))
    n_cr = int(np.sum(~t & (y == 1)))
    perfect = qini_curve(np.where(t, y, -y), t, y)
    curve = qini_curve(s, t, y)
    # Q(k) <= Y_T(k) <= min(k, treated responders): the perfect score reaches that bound at
    # every k until the control responders enter, and no score's curve passes it
    k = np.arange(len(s) - n_cr + 1)
    np.testing.assert_allclose(np.interp(k, perfect.n_targeted, perfect.value),
                               np.minimum(k, n_tr), atol=1e-12)
    upto = curve.n_targeted <= len(s) - n_cr
    assert np.all(curve.value[upto] <= np.minimum(curve.n_targeted[upto], n_tr) + 1e-12)
    assert curve.overall == pytest.approx(perfect.overall)
    if n_tr > 0:
        assert qini_coefficient(np.where(t, y, -y), t, y) == pytest.approx(1.0)


def test_constant_propensity_changes_nothing():
    rng = np.random.default_rng(3)
    x, t, y, _ = simulate(rng, 500)
    for curve in CURVES.values():
        a, b = curve(x, t, y), curve(x, t, y, propensity=0.3)
        c = curve(x, t, y, propensity=np.full(500, 0.3))
        np.testing.assert_array_equal(a.value, b.value)
        np.testing.assert_allclose(a.value, c.value, atol=1e-12)


def test_row_propensities_remove_the_bias_of_unequal_assignment():
    rng = np.random.default_rng(4)
    n = 20_000
    stratum = rng.random(n) < 0.5
    e = np.where(stratum, 0.8, 0.2)  # the high-base-rate stratum is mostly treated
    t = rng.random(n) < e
    y = (rng.random(n) < np.where(stratum, 0.5, 0.1) + 0.05 * t).astype(float)
    score = rng.random(n)
    naive = uplift_curve(score, t, y).overall / n
    fixed = uplift_curve(score, t, y, propensity=e).overall / n
    assert naive > 0.2  # 0.47 - 0.18 in expectation
    assert fixed == pytest.approx(0.05, abs=0.025)


# -- errors, the result type and the plot -------------------------------------------------------

S, TR, Y = [0.3, 0.2, 0.1], [1, 0, 1], [1, 0, 0]

BAD = [
    (lambda: uplift_curve([], [], []), SchemaError, "score must have at least one row, got 0 rows"),
    (lambda: uplift_curve([0.1, math.nan, 0.3], TR, Y), SchemaError,
     "score must be finite, got nan at row 1 (1 row not finite)"),
    (lambda: uplift_curve(S, [1, 0], Y), SchemaError,
     "treated must have the same length as score (3), got 2"),
    (lambda: uplift_curve(S, [1, 2, 0], Y), SchemaError,
     "treated must be boolean or 0/1, got 2.0 at row 1 (1 row out of range)"),
    (lambda: qini_curve(S, [1, 0, math.nan], Y), SchemaError,
     "treated must be boolean or 0/1, got nan at row 2 (1 row out of range)"),
    (lambda: qini_curve(S, [1, 1, 1], Y), SchemaError,
     "treated must hold both treated and control rows, got 3 treated and 0 control"),
    (lambda: qini_curve(S, TR, [1, 0]), SchemaError,
     "outcome must have the same length as score (3), got 2"),
    (lambda: qini_curve(S, TR, [1, 2.5, 3]), SchemaError,
     "outcome must be 0 or 1 (pass continuous=True for other outcomes), got 2.5 at row 1 "
     "(2 rows out of range)"),
    (lambda: auuc(S, TR, [1, math.inf, 0], continuous=True), SchemaError,
     "outcome must be finite, got inf at row 1 (1 row not finite)"),
    (lambda: auuc(S, TR, [1, math.nan, 0]), SchemaError,
     "outcome must be 0 or 1 (pass continuous=True for other outcomes), got nan at row 1 "
     "(1 row out of range)"),
    (lambda: uplift_curve(S, TR, Y, propensity=[0.5, 1.0, 0.5]), SchemaError,
     "propensity must be in (0, 1), got 1.0 at row 1 (1 row out of range)"),
    (lambda: uplift_curve(S, TR, Y, propensity=[0.5, 0.5]), SchemaError,
     "propensity must have the same length as score (3), got 2"),
    (lambda: uplift_curve(S, TR, Y, propensity=0.0), ConfigError,
     "propensity must be in (0, 1), got 0.0"),
    (lambda: uplift_curve(S, TR, Y, tie_tol=-1e-9), ConfigError,
     "tie_tol must be a non-negative number, got -1e-09"),
    (lambda: uplift_curve(S, TR, Y, continuous="yes"), ConfigError,
     "continuous must be a bool, got 'yes'"),
    (lambda: UpliftCurve("gain", [0, 2], [0.0, 1.0], 1, 1), ConfigError,
     "kind must be one of ('uplift', 'qini'), got 'gain'"),
    (lambda: UpliftCurve("qini", [1, 2], [0.0, 1.0], 1, 1), ConfigError,
     "n_targeted must start at 0 and increase strictly, got [1, 2]..."),
    (lambda: UpliftCurve("qini", [0, 3], [0.0, 1.0], 1, 1), ConfigError,
     "n_targeted must end at n_treated + n_control (2), got 3"),
    (lambda: plot_uplift([], "x.png"), ConfigError,
     "curves must be an UpliftCurve or a non-empty mapping of names to UpliftCurve, got list"),
    (lambda: plot_uplift({"a": uplift_curve(S, TR, Y), "b": qini_curve(S, TR, Y)}, "x.png"),
     ConfigError, "curves must all be of one kind, got ['qini', 'uplift']"),
]


@pytest.mark.parametrize("call, cls, message", BAD, ids=[m for _, _, m in BAD])
def test_invalid_input_messages(call, cls, message):
    with pytest.raises(cls, match="^" + re.escape(message) + "$"):
        call()


def test_boolean_and_arrow_inputs():
    df = pd.DataFrame({"s": [0.9, 0.8, 0.2, 0.1], "t": [True, False, True, False],
                       "y": [1, 0, 0, 0]}).astype({"s": "float64[pyarrow]", "t": "bool[pyarrow]"})
    c = uplift_curve(df["s"], df["t"], df["y"])
    assert c.value.tolist() == [0.0, 1.0, 2.0, 1.5, 2.0]


def test_plot_writes_png(tmp_path):
    rng = np.random.default_rng(5)
    x, t, y, tau = simulate(rng, 400)
    out = plot_uplift({"true uplift": qini_curve(tau, t, y), "random": qini_curve(
        rng.random(400), t, y)}, tmp_path / "qini.png", title="Qini")
    assert out == tmp_path / "qini.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = plot_uplift(uplift_curve(tau, t, y), tmp_path / "u.png")
    assert single.stat().st_size > 1_000

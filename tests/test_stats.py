"""Summary statistics and estimators: against SciPy/statsmodels, hand-computed values, A/A
simulations, merge properties, the bootstrap kernel and status codes."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from bta._jit import num_threads
from bta.errors import ConfigError, UnknownNameError
from bta.evaluate.ab import kernels as K
from bta.evaluate.stats import (
    BASE_METRICS,
    METRICS,
    ArmStats,
    Moments,
    adjust_pvalues,
    compare,
    estimate,
    merge,
    msprt_rho,
    srm_test,
)


def units(rng, n, ctr=0.05, cvr=0.2, imp=8.0, cpm=2.0, aov=30.0):
    """Per-user base metrics in BASE_METRICS order."""
    i = rng.poisson(imp, n)
    c = rng.binomial(i, ctr)
    v = rng.binomial(c, cvr)
    spend = i * cpm / 1000.0 * rng.uniform(0.5, 1.5, n)
    rev = v * rng.gamma(2.0, aov / 2.0, n)
    return np.column_stack([i, c, v, c > 0, v > 0, spend, rev]).astype(float)


def arm(x, names=BASE_METRICS):
    return ArmStats.from_units(x, names)


# ---- ArmStats ----------------------------------------------------------------------------------


def test_from_units_sums_and_types():
    x = np.array([[3, 1, 0, 1, 0, 0.5, 0.0], [2, 0, 0, 0, 0, 0.25, 0.0]])
    a = arm(x)
    assert a.n == 2
    assert a.sums[:5] == (5, 1, 0, 1, 0) and all(type(v) is int for v in a.sums[:5])
    assert a.sums[5] == 0.75 and type(a.sums[5]) is float
    assert a.cross[0][0] == 13 and type(a.cross[0][0]) is int
    assert a.cross[0][5] == pytest.approx(3 * 0.5 + 2 * 0.25) and type(a.cross[0][5]) is float


def test_zero_is_neutral_and_sum_works():
    rng = np.random.default_rng(0)
    a = arm(units(rng, 10))
    assert a + ArmStats.zero(BASE_METRICS) == a
    assert sum([a, a]) == a + a


def test_merge_needs_same_names():
    a = ArmStats.from_units(np.ones((2, 1)), ("clicks",))
    b = ArmStats.from_units(np.ones((2, 1)), ("impressions",))
    with pytest.raises(ConfigError, match=r"ArmStats to merge must have the same names"):
        a + b


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 60), parts=st.integers(1, 5))
def test_merged_equals_whole(seed, n, parts):
    rng = np.random.default_rng(seed)
    x = units(rng, n) * np.array([1, 1, 1, 1, 1, 1e3, 1e4])  # large floats: rounding shows
    part = rng.integers(0, parts, n)
    whole = arm(x)
    merged = sum(arm(x[part == p]) for p in range(parts))
    assert merged.n == whole.n
    for i, nm in enumerate(BASE_METRICS):
        if nm in ("spend", "revenue"):
            assert merged.sums[i] == pytest.approx(whole.sums[i], rel=1e-12, abs=1e-12)
        else:  # integer sums are exact
            assert merged.sums[i] == whole.sums[i]
        for j, nm2 in enumerate(BASE_METRICS):
            if {nm, nm2} & {"spend", "revenue"}:
                assert merged.cross[i][j] == pytest.approx(whole.cross[i][j], rel=1e-12,
                                                           abs=1e-12)
            else:
                assert merged.cross[i][j] == whole.cross[i][j]


def test_merge_by_arm():
    a = ArmStats.from_units(np.array([[1.0]]), ("revenue",))
    b = ArmStats.from_units(np.array([[2.0]]), ("revenue",))
    m = merge({"x": a}, {"x": b, "y": b})
    assert m["x"].sums == (3.0,) and m["y"] == b


# ---- against SciPy / statsmodels ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_welch_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    xc, xt = units(rng, 300 + 50 * seed), units(rng, 250, aov=40.0)
    r = compare(arm(xc), arm(xt), "revenue_per_user", alpha=0.1)
    ref = sps.ttest_ind(xt[:, 6], xc[:, 6], equal_var=False)
    assert r["test"] == "welch_t"
    assert r["statistic"] == pytest.approx(ref.statistic, rel=1e-9)
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert r["df"] == pytest.approx(ref.df, rel=1e-9)
    lo, hi = ref.confidence_interval(0.9)
    assert (r["abs_ci_low"], r["abs_ci_high"]) == pytest.approx((lo, hi), rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_two_proportion_matches_statsmodels(seed):
    rng = np.random.default_rng(100 + seed)
    xc, xt = units(rng, 500, ctr=0.03), units(rng, 400 + 30 * seed, ctr=0.04)
    r = compare(arm(xc), arm(xt), "user_click_rate")
    count = [xt[:, 3].sum(), xc[:, 3].sum()]
    nobs = [len(xt), len(xc)]
    z, p = proportions_ztest(count, nobs)
    assert r["test"] == "two_proportion_z"
    assert r["statistic"] == pytest.approx(z, rel=1e-9)
    assert r["p_value"] == pytest.approx(p, rel=1e-9)
    lo, hi = confint_proportions_2indep(count[0], nobs[0], count[1], nobs[1], method="wald")
    assert (r["abs_ci_low"], r["abs_ci_high"]) == pytest.approx((lo, hi), rel=1e-9)


def test_adjust_pvalues_matches_statsmodels():
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = rng.uniform(0, 0.2, rng.integers(1, 12))
        for ours, theirs in (("holm", "holm"), ("bh", "fdr_bh")):
            assert adjust_pvalues(p, ours) == pytest.approx(multipletests(p, method=theirs)[1])


def test_adjust_pvalues_nan_counts_as_member():
    p = np.array([0.01, np.nan, 0.02])
    got = adjust_pvalues(p, "holm")
    ref = multipletests([0.01, 1.0, 0.02], method="holm")[1]
    assert np.isnan(got[1]) and got[[0, 2]] == pytest.approx(ref[[0, 2]])
    assert np.array_equal(adjust_pvalues(p, None), p, equal_nan=True)


def test_srm_matches_scipy():
    chi2, p, shares = srm_test({"a": 5100, "b": 4900, "c": 10100}, {"a": 1, "b": 1, "c": 2})
    ref = sps.chisquare([5100, 4900, 10100], [5025, 5025, 10050])
    assert (chi2, p) == pytest.approx((ref.statistic, ref.pvalue))
    assert shares == {"a": 0.25, "b": 0.25, "c": 0.5}


@pytest.mark.parametrize("weights, exc, msg", [
    ({"a": 1.0}, ConfigError, r"expected_weights must give a weight to every arm; missing \['b'\]"),
    ({"a": 1, "b": 1, "z": 1}, UnknownNameError,
     r"expected_weights names arms that are not in the data: \['z'\]"),
    ({"a": 1, "b": 0}, ConfigError, r"expected_weights\['b'\] must be a positive number, got 0"),
])
def test_srm_bad_weights(weights, exc, msg):
    with pytest.raises(exc, match=msg):
        srm_test({"a": 10, "b": 12}, weights)


# ---- hand-computed delta method ----------------------------------------------------------------

# (clicks, impressions) per user
CONTROL = [(1, 4), (0, 2), (3, 6)]
TREATMENT = [(2, 5), (1, 5), (0, 4), (4, 6)]


def _ctr_arm(rows):
    x = np.zeros((len(rows), len(BASE_METRICS)))
    x[:, 0] = [r[1] for r in rows]
    x[:, 1] = [r[0] for r in rows]
    x[:, 3] = x[:, 1] > 0
    return arm(x)


def test_delta_method_hand_computed():
    # control: R = 4/12, var(clicks) = 7/3, var(imps) = 4, cov = 3 (ddof 1), mean imps 4:
    #   Var(R) = (7/3 - 2 (1/3) 3 + (1/9) 4) / (3 * 4^2) = 7/432
    # treatment: R = 7/20, var(clicks) = 35/12, var(imps) = 2/3, cov = 4/3, mean imps 5:
    #   Var(R) = (35/12 - 2 (7/20)(4/3) + (49/400)(2/3)) / (4 * 5^2) = 1239/60000
    vc, vt = Fraction(7, 432), Fraction(1239, 60000)
    rc, rt = Fraction(1, 3), Fraction(7, 20)
    r = compare(_ctr_arm(CONTROL), _ctr_arm(TREATMENT), "ctr", alpha=0.05)
    e = estimate(_ctr_arm(CONTROL), "ctr")
    assert e["value"] == pytest.approx(float(rc), rel=1e-14)
    assert e["std_error"] == pytest.approx(math.sqrt(vc), rel=1e-12)
    assert r["abs_lift"] == pytest.approx(float(rt - rc), rel=1e-12)
    assert r["abs_se"] == pytest.approx(math.sqrt(vc + vt), rel=1e-12)
    assert r["rel_lift"] == pytest.approx(float(rt / rc - 1), rel=1e-12)
    var_rel = vt / rc**2 + rt**2 * vc / rc**4
    assert r["rel_se"] == pytest.approx(math.sqrt(var_rel), rel=1e-12)
    z = float(rt - rc) / math.sqrt(vc + vt)
    assert r["statistic"] == pytest.approx(z, rel=1e-12)
    assert r["p_value"] == pytest.approx(2 * sps.norm.sf(abs(z)), rel=1e-9)
    assert r["abs_ci_high"] - r["abs_lift"] == pytest.approx(1.959963984540 * math.sqrt(vc + vt))


def test_cuped_hand_computed():
    rng = np.random.default_rng(7)
    xc, xt = units(rng, 200), units(rng, 180)
    pre_c = xc[:, 6] * 0.8 + rng.gamma(1, 5, 200)
    pre_t = xt[:, 6] * 0.8 + rng.gamma(1, 5, 180)
    names = BASE_METRICS + ("pre:revenue",)
    ac = ArmStats.from_units(np.column_stack([xc, pre_c]), names)
    at = ArmStats.from_units(np.column_stack([xt, pre_t]), names)
    r = compare(ac, at, "revenue_per_user", covariates=["pre:revenue"])
    y = np.concatenate([xc[:, 6], xt[:, 6]])
    x = np.concatenate([pre_c, pre_t])
    theta = np.cov(y, x, ddof=1)[0, 1] / np.var(x, ddof=1)  # pooled
    adj_c = xc[:, 6].mean() - theta * (pre_c.mean() - x.mean())
    adj_t = xt[:, 6].mean() - theta * (pre_t.mean() - x.mean())
    vc = np.var(xc[:, 6] - theta * pre_c, ddof=1) / 200
    vt = np.var(xt[:, 6] - theta * pre_t, ddof=1) / 180
    assert r["theta"][0] == pytest.approx(theta, rel=1e-9)
    assert (r["control"], r["treatment"]) == pytest.approx((adj_c, adj_t), rel=1e-9)
    assert r["abs_se"] == pytest.approx(math.sqrt(vc + vt), rel=1e-9)
    plain = compare(ac, at, "revenue_per_user")
    assert r["abs_se"] < plain["abs_se"]  # the covariate is correlated: variance shrinks


# ---- status codes ------------------------------------------------------------------------------


def test_statuses():
    rng = np.random.default_rng(1)
    x = units(rng, 50)
    a = arm(x)
    empty = ArmStats.zero(BASE_METRICS)
    r = compare(empty, a, "ctr")
    assert r["status"] == "empty_arm" and np.isnan(r["control"]) and np.isnan(r["p_value"])
    nospend = x.copy()
    nospend[:, 5] = 0.0
    r = compare(arm(nospend), a, "roas")
    assert r["status"] == "zero_denominator" and np.isnan(r["abs_lift"])
    noclick = x.copy()
    noclick[:, [1, 2, 3, 4, 6]] = 0.0
    r = compare(arm(noclick), arm(noclick), "ctr")
    assert r["status"] == "zero_variance" and r["abs_lift"] == 0 and np.isnan(r["p_value"])
    assert np.isnan(r["abs_ci_low"])
    r = compare(arm(noclick), a, "user_click_rate")
    assert r["status"] == "zero_control" and np.isnan(r["rel_lift"])
    assert np.isfinite(r["abs_lift"]) and np.isfinite(r["p_value"])
    r = compare(arm(x[:1]), a, "revenue_per_user")
    assert r["status"] == "too_few_units" and np.isfinite(r["control"]) and np.isnan(r["abs_se"])
    small = ArmStats.from_units(x[:, :5], BASE_METRICS[:5])
    r = compare(small, small, "roas")
    assert r["status"] == "not_measured" and np.isnan(r["control"])


def test_constant_metric_is_zero_variance_not_rounding_noise():
    # spend is exactly 2 per 1000 impressions: CPM is 2 in every user, up to rounding
    rng = np.random.default_rng(2)
    x = units(rng, 500)
    x[:, 5] = x[:, 0] * 0.002
    y = units(rng, 400)
    y[:, 5] = y[:, 0] * 0.002
    r = compare(arm(x), arm(y), "cpm")
    assert r["status"] == "zero_variance"
    assert r["control"] == pytest.approx(2.0) and np.isnan(r["p_value"])


# ---- A/A simulation: error rate and coverage ---------------------------------------------------


def _moments(x):
    """Moments of per-unit data of shape (n_exp, n_units, K)."""
    return Moments(np.full(x.shape[0], float(x.shape[1])), x.sum(axis=1),
                   np.einsum("eui,euj->eij", x, x), BASE_METRICS)


def test_aa_false_positive_rate_and_coverage():
    n_exp, n = 300, 400
    rng = np.random.default_rng(2024)
    xc = units(rng, n_exp * n).reshape(n_exp, n, -1)
    xt = units(rng, n_exp * n).reshape(n_exp, n, -1)
    truth = {"ctr": 0.05, "revenue_per_user": 8.0 * 0.05 * 0.2 * 30.0,
             "user_conversion_rate": None, "roas": None}
    mc, mt = _moments(xc), _moments(xt)
    for metric in truth:
        r = compare(mc, mt, metric, alpha=0.05)
        assert (r["status"] == "ok").all()
        fpr = np.mean(r["p_value"] < 0.05)
        # 300 experiments: the rejection count is Binomial(300, 0.05) (mean 15, sd 3.8)
        assert 0.02 <= fpr <= 0.09, (metric, fpr)
        cover = np.mean((r["abs_ci_low"] <= 0) & (0 <= r["abs_ci_high"]))
        assert 0.91 <= cover <= 0.98, (metric, cover)
        # the test and the interval agree
        assert np.array_equal(r["p_value"] < 0.05, (r["abs_ci_low"] > 0) | (r["abs_ci_high"] < 0)) \
            or METRICS[metric].kind == "proportion"
        if truth[metric] is not None:  # per-arm intervals cover the true value
            e = estimate(mc, metric)
            cov_arm = np.mean(np.abs(e["value"] - truth[metric]) <= 1.96 * e["std_error"])
            assert 0.91 <= cov_arm <= 0.98, (metric, cov_arm)


def test_aa_sequential_peeking_stays_below_alpha():
    # 300 A/A experiments, looked at after each of 10 batches: stopping at the first
    # p < alpha must reject at most ~alpha of them with the always-valid p-value, while
    # the fixed-horizon p-value, peeked at the same way, rejects far more often.
    n_exp, looks, batch = 300, 10, 100
    rng = np.random.default_rng(11)
    xc = units(rng, n_exp * looks * batch).reshape(n_exp, looks, batch, -1)
    xt = units(rng, n_exp * looks * batch).reshape(n_exp, looks, batch, -1)
    rho = msprt_rho(0.05, 2000)
    seq_hit = np.zeros(n_exp, bool)
    fixed_hit = np.zeros(n_exp, bool)
    for k in range(1, looks + 1):
        mc = _moments(xc[:, :k].reshape(n_exp, k * batch, -1))
        mt = _moments(xt[:, :k].reshape(n_exp, k * batch, -1))
        r = compare(mc, mt, "clicks_per_user", sequential_rho=rho)
        seq_hit |= r["p_value"] < 0.05
        # always-valid p and confidence sequence agree
        assert np.array_equal(r["p_value"] < 0.05, (r["abs_ci_low"] > 0) | (r["abs_ci_high"] < 0))
        fixed_hit |= compare(mc, mt, "clicks_per_user")["p_value"] < 0.05
    assert seq_hit.mean() <= 0.06
    assert fixed_hit.mean() > 0.1


@settings(max_examples=40, deadline=None)
@given(z=st.floats(-6, 6), n=st.integers(10, 10**7), alpha=st.sampled_from([0.01, 0.05, 0.2]))
def test_msprt_p_and_sequence_agree(z, n, alpha):
    # the always-valid p-value is below alpha exactly when the sequence excludes 0
    rho = msprt_rho(0.05, 5000)
    nr2 = n * rho**2
    p = min(1.0, math.sqrt(1 + nr2) * math.exp(-0.5 * z * z * nr2 / (1 + nr2)))
    half = math.sqrt(2 * (1 + nr2) / nr2 * math.log(math.sqrt(1 + nr2) / alpha))
    if abs(abs(z) - half) > 1e-9:
        assert (p < alpha) == (abs(z) > half)


# ---- the bootstrap kernel ----------------------------------------------------------------------


def naive_weights(seeds, n):
    """Same counter-based draw as the kernel, in plain NumPy: splitmix64 -> inverse CDF."""
    with np.errstate(over="ignore"):
        u = np.arange(n, dtype=np.uint64) + np.uint64(1)
        z = seeds[:, None] + u[None, :] * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    v = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    cdf = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(41)])
    return np.searchsorted(cdf, v, side="right")


def test_bootstrap_kernel_matches_naive():
    rng = np.random.default_rng(5)
    seeds = rng.integers(0, 2**64, size=40, dtype=np.uint64)
    x = rng.normal(size=(777, 3))
    g = rng.integers(0, 3, 777)
    w = naive_weights(seeds, 777)
    assert np.array_equal(K.poisson_weights(seeds, 777), w)
    ref = np.stack([w[:, g == a] @ x[g == a] for a in range(3)], axis=1)
    got = K.poisson_bootstrap_sums(x, g, 3, seeds)
    assert got == pytest.approx(ref, rel=1e-12, abs=1e-12)
    with num_threads(1):  # the draw is a function of (seed, unit): thread count is irrelevant
        assert np.array_equal(K.poisson_bootstrap_sums(x, g, 3, seeds), got)


def test_poisson_weights_distribution():
    seeds = np.random.default_rng(6).integers(0, 2**64, size=50, dtype=np.uint64)
    w = K.poisson_weights(seeds, 4000).ravel()
    freq = np.bincount(w, minlength=6)[:6] / w.size
    pmf = [math.exp(-1) / math.factorial(k) for k in range(6)]
    assert freq == pytest.approx(pmf, abs=3e-3)
    assert w.mean() == pytest.approx(1.0, abs=0.01) and w.var() == pytest.approx(1.0, abs=0.02)


def _naive_text_hash(v: str) -> int:
    mask = 2**64 - 1
    h = 0xCBF29CE484222325
    data = v.encode("utf-8")
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & mask
    z = h ^ len(data)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) ^ 0x5851F42D4C957F2D


_LABELS = st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=12), st.booleans(),
                    st.floats(allow_nan=False),
                    st.text(st.characters(blacklist_categories=()), max_size=4))  # surrogates


@settings(max_examples=60, deadline=None)
@given(st.lists(_LABELS, min_size=1, max_size=30))
def test_unit_label_hash_is_per_label(labels):
    """A label's hash depends on the label alone (not on the rest of its column), so a user's
    bootstrap weights are the same in a log and in any partition of it; text is FNV-1a over
    UTF-8 then splitmix64, as a naive implementation computes it."""
    from bta.evaluate.ab.prepare import _label_hash

    arr = np.empty(len(labels), dtype=object)
    arr[:] = labels
    got = _label_hash(arr).tolist()
    alone = [_label_hash(np.array([v], dtype=object))[0] for v in labels]
    assert got == alone
    for v, h in zip(labels, got):
        if isinstance(v, str) and not any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            assert h == _naive_text_hash(v)  # (a lone surrogate has no UTF-8 bytes)
    same = {}
    for v, h in zip(labels, got):  # equal labels of one type, equal hashes
        same.setdefault((type(v), v), set()).add(h)
    assert all(len(hs) == 1 for hs in same.values())


def test_unit_label_hash_keeps_kinds_apart():
    from bta.evaluate.ab.prepare import _label_hash

    labels = np.array([1, "1", True, 1.0, 2**70, str(2**70), "", np.int32(1), np.str_("1")],
                      dtype=object)
    h = _label_hash(labels).tolist()
    assert len(set(h[:7])) == 7  # int, text, bool, float, big int, its text, empty text
    assert h[7] == h[0] and h[8] == h[1]  # NumPy scalars hash as their Python kind
    assert _label_hash(np.array([], dtype=object)).shape == (0,)
    mixed = _label_hash(np.array([np.float64(1.5), np.True_, -0.0, "x"], dtype=object))
    alone = [_label_hash(np.array([v], dtype=object))[0] for v in (1.5, True, 0.0)]
    assert mixed[:3].tolist() == alone  # -0.0 is 0.0, as pandas factorizes them
    floats = _label_hash(np.array([1.5, -0.0, 0.0, np.inf], dtype=object))
    assert floats[0] == alone[0] and floats[1] == floats[2] != floats[3]


# ---- power -------------------------------------------------------------------------------------

from statsmodels.stats.power import NormalIndPower, TTestIndPower  # noqa: E402
from statsmodels.stats.proportion import proportion_effectsize  # noqa: E402

from bta.evaluate import power as pw  # noqa: E402


@pytest.mark.parametrize("p, mde, ratio, alt", [
    (0.10, 0.02, 1.0, "two-sided"), (0.03, 0.005, 2.0, "two-sided"), (0.5, -0.05, 0.5, "smaller"),
    (0.2, 0.01, 1.0, "larger"),
])
def test_proportions_match_statsmodels(p, mde, ratio, alt):
    h = proportion_effectsize(p + mde, p)
    ref_n = NormalIndPower().solve_power(h, nobs1=None, alpha=0.05, power=0.8, ratio=ratio,
                                         alternative=alt)
    n = pw.sample_size_proportions(p, mde, power=0.8, ratio=ratio, alternative=alt)
    assert n == pytest.approx(ref_n, rel=1e-6)
    assert pw.sample_size_proportions(p, mde / p, relative=True, ratio=ratio,
                                      alternative=alt) == pytest.approx(n, rel=1e-9)
    assert pw.power_proportions(p, p + mde, n, ratio=ratio, alternative=alt) == pytest.approx(0.8)
    assert pw.power_proportions(p, p + mde, 1000, ratio=ratio, alternative=alt) == pytest.approx(
        NormalIndPower().power(h, 1000, 0.05, ratio=ratio, alternative=alt), rel=1e-9)
    # MDE at that n is the effect we started from
    assert pw.mde_proportions(p, n, ratio=ratio, alternative=alt) == pytest.approx(mde, rel=1e-6)
    ref_h = NormalIndPower().solve_power(None, nobs1=5000, alpha=0.05, power=0.8, ratio=ratio,
                                         alternative=alt)
    got = pw.mde_proportions(p, 5000, ratio=ratio, alternative=alt)
    assert proportion_effectsize(p + got, p) == pytest.approx(ref_h, rel=1e-4)


@pytest.mark.parametrize("mde, sd, ratio, alt", [
    (0.5, 10.0, 1.0, "two-sided"), (2.0, 30.0, 3.0, "two-sided"), (1.0, 4.0, 1.0, "larger"),
    (50.0, 10.0, 1.0, "two-sided"),
])
def test_means_match_statsmodels(mde, sd, ratio, alt):
    ref = TTestIndPower().solve_power(mde / sd, nobs1=None, alpha=0.05, power=0.9, ratio=ratio,
                                      alternative=alt)
    n = pw.sample_size_means(mde, sd, power=0.9, ratio=ratio, alternative=alt)
    assert n == pytest.approx(ref, rel=1e-6)
    assert pw.power_means(mde, sd, 400, ratio=ratio, alternative=alt) == pytest.approx(
        TTestIndPower().power(mde / sd, 400, 0.05, ratio=ratio, alternative=alt), rel=1e-9)
    d = TTestIndPower().solve_power(None, nobs1=800, alpha=0.05, power=0.9, ratio=ratio,
                                    alternative=alt)
    got = pw.mde_means(sd, 800, power=0.9, ratio=ratio, alternative=alt)
    # statsmodels' own solver stops early (about 1e-5); its power function is exact
    assert got == pytest.approx(d * sd, rel=1e-4)
    assert TTestIndPower().power(got / sd, 800, 0.05, ratio=ratio,
                                 alternative=alt) == pytest.approx(0.9, rel=1e-9)


@pytest.mark.parametrize("call, msg", [
    (lambda: pw.sample_size_proportions(1.2, 0.1), "p_baseline must be in (0, 1), got 1.2"),
    (lambda: pw.sample_size_proportions(0.9, 0.2),
     "mde must be such that the treatment proportion is in (0, 1) (it is 1.1), got 0.2"),
    (lambda: pw.sample_size_proportions(0.1, 0), "mde must be a non-zero number, got 0"),
    (lambda: pw.sample_size_means(1.0, -2.0), "sd must be a positive number, got -2.0"),
    (lambda: pw.mde_means(1.0, 100, power=1.0), "power must be in (0, 1), got 1.0"),
    (lambda: pw.power_means(1.0, 1.0, 100, alternative="up"),
     "alternative must be 'two-sided', 'larger' or 'smaller', got 'up'"),
    (lambda: pw.power_means(1.0, 1.0, 1), "n must be at least 3 / (1 + ratio) users, got 1"),
])
def test_power_bad_input(call, msg):
    with pytest.raises(ConfigError, match="^" + re.escape(msg) + "$"):
        call()


# ----------------------------------------------------------------------------- Fieller


def _fieller_bruteforce(rc, rt, vc, vt, crit):
    """The ratios r with (rt - r rc)^2 <= crit^2 (vt + r^2 vc), found by root bracketing."""
    from scipy.optimize import brentq

    f = lambda r: (rt - r * rc) ** 2 - crit**2 * (vt + r * r * vc)  # noqa: E731
    centre = rt / rc
    assert f(centre) <= 0
    lo = brentq(f, centre - 1e6, centre)
    hi = brentq(f, centre, centre + 1e6)
    return lo, hi


@settings(max_examples=200, deadline=None)
@given(rc=st.floats(0.5, 10), rt=st.floats(0.0, 10), vc=st.floats(1e-4, 0.05),
       vt=st.floats(1e-4, 2.0), crit=st.floats(1.0, 3.0))
def test_fieller_matches_root_finding(rc, rt, vc, vt, crit):
    from hypothesis import assume

    from bta.evaluate.stats import fieller

    assume(rc * rc - crit * crit * vc > 0.05)  # bounded sets (the unbounded case is below)
    lo, hi = fieller(rc, rt, vc, vt, crit)
    blo, bhi = _fieller_bruteforce(rc, rt, vc, vt, crit)
    assert float(lo) == pytest.approx(blo, rel=1e-7, abs=1e-9)
    assert float(hi) == pytest.approx(bhi, rel=1e-7, abs=1e-9)


def test_fieller_unbounded_when_control_is_noise():
    from bta.evaluate.stats import fieller

    lo, hi = fieller(0.1, 1.0, 0.01, 0.01, 1.96)  # rc / se(rc) = 1 < 1.96
    assert lo == -np.inf and hi == np.inf


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), effect=st.floats(0.0, 0.6), heavy=st.booleans())
def test_relative_interval_agrees_with_the_test(seed, effect, heavy):
    # the relative interval excludes 0 exactly when the test rejects at the same level
    # (z-tested ratio metrics and mean metrics use the same critical value for both)
    rng = np.random.default_rng(seed)
    n = 60
    xc, xt = units(rng, n), units(rng, n)
    if heavy:  # one huge order in control: the case where the delta interval misleads
        xc[0, 6] += 1e4
    xt[:, 6] *= 1.0 + effect
    ac, at = ArmStats.from_units(xc, BASE_METRICS), ArmStats.from_units(xt, BASE_METRICS)
    for metric in ("roas", "revenue_per_user"):
        r = compare(ac, at, metric, alpha=0.05)
        if r["status"] != "ok" or not np.isfinite(r["rel_ci_low"]):
            continue
        excludes = (r["rel_ci_low"] > 0) or (r["rel_ci_high"] < 0)
        # the boundary itself is measure zero; compare away from it
        if abs(float(r["p_value"]) - 0.05) > 1e-6:
            assert bool(excludes) == bool(r["p_value"] < 0.05), (metric, r)

"""Off-policy estimators: exact errors, hand-computed values, properties, and a simulated bandit.

The simulated contextual bandit has a few discrete contexts and actions with known mean rewards,
so the value of any policy is known exactly: ``V(pi) = mean_x sum_a pi(a|x) mu(x, a)``.
"""

from __future__ import annotations

import math
import re
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, SchemaError
from bta.evaluate.ope import OPEResult, clipped_ipw, dm, dr, ipw, snipw

# -- invalid inputs and the exact message each gives -------------------------------------------

R, P, T = [1.0, 0.0], [0.5, 0.5], [1.0, 0.0]

BAD = [
    (lambda: ipw([], [], []), SchemaError, "reward must have at least one row, got 0 rows"),
    (lambda: ipw([[1.0]], [[0.5]], [[1.0]]), SchemaError, "reward must be 1-d, got shape (1, 1)"),
    (lambda: ipw(["a", "b"], P, T), SchemaError,
     "reward must be an array of numbers, got list with dtype None"),
    (lambda: ipw([1.0, math.inf], P, T), SchemaError,
     "reward must be finite, got inf at row 1 (1 row not finite)"),
    (lambda: ipw([math.nan, math.nan], P, T), SchemaError,
     "reward must be finite, got nan at row 0 (2 rows not finite)"),
    (lambda: ipw(R, [0.5], T), SchemaError,
     "pscore must have the same length as reward (2), got 1"),
    (lambda: ipw(R, [0.5, math.nan], T), SchemaError,
     "pscore must not be NaN, got NaN in 1 row (first at row 1)"),
    (lambda: ipw(R, [0.0, 0.5], T), SchemaError,
     "pscore must be in (0, 1], got 0.0 at row 0 (1 row out of range)"),
    (lambda: ipw(R, [1.5, -0.2], T), SchemaError,
     "pscore must be in (0, 1], got 1.5 at row 0 (2 rows out of range)"),
    (lambda: ipw(R, P, [1.0, 0.0, 1.0]), SchemaError,
     "target_prob must have the same length as reward (2), got 3"),
    (lambda: ipw(R, P, [math.nan, 0.0]), SchemaError,
     "target_prob must not be NaN, got NaN in 1 row (first at row 0)"),
    (lambda: ipw(R, P, [1.0, -0.1]), SchemaError,
     "target_prob must be in [0, 1], got -0.1 at row 1 (1 row out of range)"),
    (lambda: ipw(R, P, [1.0, 1.01]), SchemaError,
     "target_prob must be in [0, 1], got 1.01 at row 1 (1 row out of range)"),
    (lambda: dr(R, P, T, [0.5], [0.5, 0.5]), SchemaError,
     "q_logged must have the same length as reward (2), got 1"),
    (lambda: dr(R, P, T, [0.5, 0.5], [0.5, math.nan]), SchemaError,
     "q_target must be finite, got nan at row 1 (1 row not finite)"),
    (lambda: dm([]), SchemaError, "q_target must have at least one row, got 0 rows"),
    (lambda: dm([0.5, 0.5], pscore=[0.5]), ConfigError,
     "pscore and target_prob must be given together, got only pscore"),
    (lambda: dm([0.5, 0.5], target_prob=T), ConfigError,
     "pscore and target_prob must be given together, got only target_prob"),
    (lambda: dm([0.5, 0.5], pscore=[0.5], target_prob=T), SchemaError,
     "pscore must have the same length as q_target (2), got 1"),
    (lambda: ipw(R, P, T, clip=-1), ConfigError, "clip must be a positive number or None, got -1"),
    (lambda: ipw(R, P, T, clip=math.inf), ConfigError,
     "clip must be a positive number or None, got inf"),
    (lambda: clipped_ipw(R, P, T, clip=0), ConfigError, "clip must be a positive number, got 0"),
    (lambda: ipw(R, P, T, alpha=1.0), ConfigError, "alpha must be in (0, 1), got 1.0"),
    (lambda: snipw(R, P, T, ci="exact"), ConfigError,
     "ci must be one of ('normal', 'bootstrap'), got 'exact'"),
    (lambda: dr(R, P, T, R, R, ci="bootstrap", n_bootstrap=10), ConfigError,
     "n_bootstrap must be an integer >= 100, got 10"),
    (lambda: OPEResult("naive", 0.0, 0.0, 0.0, 0.0, 0.05, "normal", 1, 1.0, 1.0, 1.0, 0.0),
     ConfigError, "estimator must be one of ('ipw', 'clipped_ipw', 'snipw', 'dm', 'dr', "
                  "'clipped_dr'), got 'naive'"),
    (lambda: OPEResult("ipw", 0.0, 0.0, 0.0, 0.0, 0.05, "normal", 0, 1.0, 1.0, 1.0, 0.0),
     ConfigError, "n must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("call, cls, message", BAD, ids=[m for _, _, m in BAD])
def test_invalid_input_messages(call, cls, message):
    with pytest.raises(cls, match="^" + re.escape(message) + "$"):
        call()


def test_pandas_arrow_columns():
    log = pd.DataFrame({"reward": [1.0, 0.0, 1.0], "propensity": [0.5, 0.25, 1.0]})
    log = log.astype("float64[pyarrow]")
    res = ipw(log["reward"], log["propensity"], pd.Series([1.0, 1.0, 0.0]))
    assert res.estimate == pytest.approx(2.0 / 3.0)
    log.loc[1, "propensity"] = None  # a missing propensity must not slip through as a number
    with pytest.raises(SchemaError, match=re.escape("pscore must not be NaN, got NaN in 1 row")):
        ipw(log["reward"], log["propensity"], [1.0, 1.0, 0.0])


# -- hand-computed values -----------------------------------------------------------------------

def test_hand_computed_values():
    r = [1.0, 0.0, 1.0, 0.0]
    p = [0.5, 0.5, 0.25, 0.25]
    t = [1.0, 0.0, 0.5, 0.5]
    # weights 2, 0, 2, 2; w*r = 2, 0, 2, 0
    z = NormalDist().inv_cdf(0.975)
    res = ipw(r, p, t)
    se = math.sqrt(4.0 / 3.0) / 2.0  # sd(2, 0, 2, 0) = sqrt(4/3), over sqrt(4)
    assert (res.estimator, res.estimate, res.n) == ("ipw", 1.0, 4)
    assert res.std_error == pytest.approx(se)
    assert (res.ci_low, res.ci_high) == pytest.approx((1.0 - z * se, 1.0 + z * se))
    assert res.ess == pytest.approx(36.0 / 12.0)  # (sum w)^2 / sum w^2
    assert (res.max_weight, res.mean_weight, res.unsupported_share) == (2.0, 1.5, 0.25)

    res = ipw(r, p, t, clip=1.5)  # weights 1.5, 0, 1.5, 1.5 -> 1.5, 0, 1.5, 0
    assert (res.estimator, res.estimate, res.max_weight) == ("clipped_ipw", 0.75, 1.5)
    assert res.ess == pytest.approx(3.0)

    res = snipw(r, p, t)  # 4 / 6; psi = w (r - 2/3) / 1.5 = 4/9, 0, 4/9, -8/9
    assert res.estimate == pytest.approx(2.0 / 3.0)
    psi = np.array([4, 0, 4, -8]) / 9.0
    assert res.std_error == pytest.approx(psi.std(ddof=1) / 2.0)

    ql, qt = [0.5, 0.5, 0.5, 0.5], [0.6, 0.4, 0.6, 0.4]
    res = dr(r, p, t, ql, qt)  # 0.6 + 1, 0.4 + 0, 0.6 + 1, 0.4 - 1 -> 1.6, 0.4, 1.6, -0.6
    contrib = np.array([1.6, 0.4, 1.6, -0.6])
    assert res.estimate == pytest.approx(0.75)
    assert res.std_error == pytest.approx(contrib.std(ddof=1) / 2.0)
    assert dr(r, p, t, ql, qt, clip=1.0).estimate == pytest.approx((1.1 + 0.4 + 1.1 - 0.1) / 4)

    res = dm(qt)
    assert (res.estimate, res.std_error) == pytest.approx((0.5, np.std(qt, ddof=1) / 2.0))
    assert math.isnan(res.ess) and math.isnan(res.unsupported_share)
    assert dm(qt, pscore=p, target_prob=t).ess == pytest.approx(3.0)


def test_undefined_results_are_nan_with_a_status():
    one = ipw([1.0], [0.5], [1.0])
    assert (one.estimate, one.status) == (2.0, "too_few_rows")
    assert math.isnan(one.std_error) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    none = snipw([1.0, 0.0, 1.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0])
    assert none.status == "no_overlap" and math.isnan(none.estimate)
    assert (none.ess, none.unsupported_share) == (0.0, 1.0)
    # IPW is defined without overlap: the target gets nothing the log can show
    assert ipw([1.0, 0.0, 1.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]).estimate == 0.0


# -- properties ---------------------------------------------------------------------------------

rows = st.integers(2, 30).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-5, 5), min_size=n, max_size=n),
    st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n),
    st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n),
    st.lists(st.floats(-5, 5), min_size=n, max_size=n),
    st.randoms(use_true_random=False),
))


@settings(max_examples=50, deadline=None)
@given(rows)
def test_estimator_identities(data):
    r, p, t, q, rnd = data
    r, p, t, q = map(np.array, (r, p, t, q))
    w = t / p
    perm = np.array(rnd.sample(range(len(r)), len(r)))
    base = ipw(r, p, t)
    assert base.estimate == pytest.approx(np.mean(w * r), abs=1e-9)
    assert ipw(r[perm], p[perm], t[perm]).estimate == pytest.approx(base.estimate, abs=1e-9)
    # DR with a zero model is IPW; DR with a model that predicts every reward exactly is DM
    zero = np.zeros_like(r)
    assert dr(r, p, t, zero, zero).estimate == pytest.approx(base.estimate, abs=1e-9)
    assert dr(r, p, t, r, q).estimate == pytest.approx(dm(q).estimate, abs=1e-9)
    # clipping above the largest weight changes nothing
    assert ipw(r, p, t, clip=float(w.max()) + 1.0).estimate == pytest.approx(base.estimate)
    if w.sum() > 0:
        # self-normalization: a constant factor on the target probabilities cancels
        assert snipw(r, p, t * 0.5).estimate == pytest.approx(snipw(r, p, t).estimate)
        est = snipw(r, p, t).estimate
        assert r[w > 0].min() - 1e-9 <= est <= r[w > 0].max() + 1e-9
    for res in (base, snipw(r, p, t), dr(r, p, t, q, q), dm(q)):
        if res.status == "ok":
            assert res.ci_low <= res.estimate <= res.ci_high
            assert res.ci_high - res.estimate == pytest.approx(res.estimate - res.ci_low)


@settings(max_examples=40, deadline=None)
@given(rows, st.floats(0.1, 20.0), st.floats(0.1, 20.0))
def test_clipping_is_monotone_for_non_negative_rewards(data, c1, c2):
    r, p, t, _, _ = data
    r = np.abs(np.array(r))
    lo, hi = sorted((c1, c2))
    a, b = ipw(r, p, t, clip=lo), ipw(r, p, t, clip=hi)
    assert a.estimate <= b.estimate + 1e-12 <= ipw(r, p, t).estimate + 2e-12
    assert a.max_weight <= lo


# -- the simulated contextual bandit ------------------------------------------------------------

MU = np.array([[0.10, 0.30, 0.50],
               [0.60, 0.20, 0.10],
               [0.30, 0.30, 0.70],
               [0.05, 0.40, 0.20]])
N_CTX, N_ACT = MU.shape


def softmax_policy(pref: np.ndarray, temp: float) -> np.ndarray:
    z = np.exp(pref / temp)
    return z / z.sum(axis=1, keepdims=True)


def eps_greedy(pref: np.ndarray, eps: float) -> np.ndarray:
    pi = np.full(pref.shape, eps / pref.shape[1])
    pi[np.arange(pref.shape[0]), pref.argmax(axis=1)] += 1.0 - eps
    return pi


# logger: softmax over a preference unrelated to the rewards; target: eps-greedy on the truth
LOGGER = softmax_policy(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0],
                                  [0.0, 1.0, 0.0], [1.0, 0.0, 0.5]]), 0.7)
TARGET = eps_greedy(MU, 0.1)


def value(pi: np.ndarray) -> float:
    return float((pi * MU).sum(axis=1).mean())


def simulate(seed: int, reps: int, n: int, logger=LOGGER, target=TARGET, q=MU):
    """(reps, n) arrays of a logged bandit and the inputs of every estimator."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, N_CTX, size=(reps, n))
    u = rng.random((reps, n, 1))
    a = (u > np.cumsum(logger[x], axis=2)).sum(axis=2)
    a = np.minimum(a, N_ACT - 1)  # guards a u equal to the float sum of the last row
    r = (rng.random((reps, n)) < MU[x, a]).astype(float)
    return dict(reward=r, pscore=logger[x, a], target_prob=target[x, a], q_logged=q[x, a],
                q_target=(target * q).sum(axis=1)[x])


def run_all(sim, rep: int, estimators=("ipw", "snipw", "dr", "dm")) -> dict[str, OPEResult]:
    d = {k: v[rep] for k, v in sim.items()}
    out = {}
    for name in estimators:
        if name == "ipw":
            out[name] = ipw(d["reward"], d["pscore"], d["target_prob"])
        elif name == "snipw":
            out[name] = snipw(d["reward"], d["pscore"], d["target_prob"])
        elif name == "dr":
            out[name] = dr(d["reward"], d["pscore"], d["target_prob"], d["q_logged"],
                           d["q_target"])
        else:
            out[name] = dm(d["q_target"], pscore=d["pscore"], target_prob=d["target_prob"])
    return out


@pytest.fixture(scope="module")
def repeated():
    """Estimates over 400 independent logs of 1,000 rows, each with a correct reward model."""
    sim = simulate(seed=1, reps=400, n=1_000)
    wrong = simulate(seed=1, reps=400, n=1_000, q=MU + 0.1)  # same logs, biased model
    res = [run_all(sim, i) for i in range(400)]
    res_wrong = [run_all(wrong, i, ("dr", "dm")) for i in range(400)]
    return res, res_wrong


def test_unbiased_over_repetitions(repeated):
    res, res_wrong = repeated
    truth = value(TARGET)
    for name in ("ipw", "snipw", "dr", "dm"):
        est = np.array([r[name].estimate for r in res])
        se_mean = est.std(ddof=1) / np.sqrt(len(est))
        assert abs(est.mean() - truth) < 4 * se_mean, name
    # DR stays unbiased with a wrong model (the weights are right); DM takes the model's bias
    est = np.array([r["dr"].estimate for r in res_wrong])
    assert abs(est.mean() - truth) < 4 * est.std(ddof=1) / np.sqrt(len(est))
    est = np.array([r["dm"].estimate for r in res_wrong])
    se_mean = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - (truth + 0.1)) < 4 * se_mean
    assert est.mean() - truth > 20 * se_mean


def test_dr_with_correct_model_has_lower_variance_than_ipw(repeated):
    res, _ = repeated
    var = {k: np.var([r[k].estimate for r in res]) for k in ("ipw", "dr")}
    assert var["dr"] < 0.8 * var["ipw"]
    assert all(r["dr"].std_error < r["ipw"].std_error for r in res)


def test_normal_interval_coverage(repeated):
    res, _ = repeated
    truth = value(TARGET)
    for name in ("ipw", "snipw", "dr"):
        cover = np.mean([r[name].ci_low <= truth <= r[name].ci_high for r in res])
        # 400 repetitions: the binomial sd of the coverage is about 0.011; 3 sd either side
        assert 0.915 <= cover <= 0.985, (name, cover)
        # the reported standard error matches the spread of the estimates over repetitions
        spread = np.std([r[name].estimate for r in res], ddof=1)
        assert 0.85 < spread / np.mean([r[name].std_error for r in res]) < 1.15, name


def test_converges_as_n_grows():
    truth = value(TARGET)
    small = run_all(simulate(seed=7, reps=1, n=1_000), 0)
    large = run_all(simulate(seed=8, reps=1, n=100_000), 0)
    for name in ("ipw", "snipw", "dr"):
        assert 8.0 < small[name].std_error / large[name].std_error < 12.5  # sqrt(100)
        assert abs(large[name].estimate - truth) < 4 * large[name].std_error
        assert large[name].std_error < 0.01  # a tenth of the n = 1,000 error, about


def test_on_policy_weights_are_one():
    sim = simulate(seed=3, reps=1, n=2_000, target=LOGGER)
    res = run_all(sim, 0)
    r = sim["reward"][0]
    for name in ("ipw", "snipw", "dr", "dm"):
        assert res[name].ess == pytest.approx(2_000)
        assert res[name].max_weight == pytest.approx(1.0)
        assert res[name].mean_weight == pytest.approx(1.0)
        assert res[name].unsupported_share == 0.0
    assert res["ipw"].estimate == pytest.approx(r.mean())
    assert res["snipw"].estimate == pytest.approx(r.mean())


def test_support_deficiency_is_reported_by_mean_weight():
    # the logger never takes action 2; the target puts 0.3 of its mass there in every context
    logger = np.tile([0.5, 0.5, 0.0], (N_CTX, 1))
    target = np.tile([0.2, 0.5, 0.3], (N_CTX, 1))
    sim = simulate(seed=4, reps=1, n=50_000, logger=logger, target=target)
    res = run_all(sim, 0)
    truth = value(target)
    assert res["ipw"].mean_weight == pytest.approx(0.7, abs=0.01)
    assert res["ipw"].unsupported_share == 0.0  # every logged action is one the target takes
    # IPW sees only the logger's support: it misses the action-2 part of the value
    missed = 0.3 * MU[:, 2].mean()
    assert abs(res["ipw"].estimate - (truth - missed)) < 4 * res["ipw"].std_error
    assert truth - res["ipw"].estimate > 10 * res["ipw"].std_error
    # DR recovers it through the (here correct) model
    assert abs(res["dr"].estimate - truth) < 4 * res["dr"].std_error


def test_unsupported_share_counts_rows_the_target_never_takes():
    target = np.tile([1.0, 0.0, 0.0], (N_CTX, 1))
    sim = simulate(seed=5, reps=1, n=20_000, target=target)
    res = run_all(sim, 0, ("ipw",))["ipw"]
    x_share = (sim["target_prob"][0] == 0).mean()
    assert res.unsupported_share == x_share
    assert res.unsupported_share == pytest.approx(1 - LOGGER[:, 0].mean(), abs=0.01)


def test_bootstrap_interval():
    sim = simulate(seed=6, reps=1, n=5_000)
    d = {k: v[0] for k, v in sim.items()}
    args = (d["reward"], d["pscore"], d["target_prob"])
    for est in (ipw, snipw):
        normal = est(*args)
        boot = est(*args, ci="bootstrap", n_bootstrap=400, random_state=0)
        assert boot.ci_method == "bootstrap" and boot.estimate == normal.estimate
        assert boot == est(*args, ci="bootstrap", n_bootstrap=400, random_state=0)
        # large n: the percentile interval matches the normal one to within a few percent
        width_n, width_b = normal.ci_high - normal.ci_low, boot.ci_high - boot.ci_low
        assert width_b == pytest.approx(width_n, rel=0.15)
        assert boot.ci_low == pytest.approx(normal.ci_low, abs=0.1 * width_n)
    dr_boot = dr(*args, d["q_logged"], d["q_target"], ci="bootstrap", n_bootstrap=200,
                 random_state=np.random.default_rng(1))
    assert dr_boot.ci_low < dr_boot.estimate < dr_boot.ci_high

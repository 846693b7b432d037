"""The segment models keep scikit-learn's estimator contract: constructor arguments stored as
given, ``get_params`` / ``set_params``, ``sklearn.base.clone`` giving an unfitted copy, fitted
state only in ``*_`` attributes, and bad values set later reported by ``fit`` with the message
construction gives.

``sklearn.utils.estimator_checks`` as a whole assumes ``fit(X, y)`` on arrays; the checks of it
that only look at parameters are run as they are, and the ones that need a fit
(parameters unchanged by ``fit``, refitting a clone) are written here on FeatureMatrix data."""

from __future__ import annotations

import inspect
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.utils import estimator_checks

from bta._params import ParamsMixin
from bta.errors import ConfigError, NotFittedError
from bta.features import FeatureMatrix, FeatureSpec
from bta.segment import InterestClusters, Lookalike, PropensityModel

# ---- data and the three estimators ---------------------------------------------------------------
AS_OF = pd.Timestamp("2026-01-01", tz="UTC")


def affinity_fm() -> FeatureMatrix:
    """Six users over three categories, two clear tastes: enough for 2-3 clusters and a seed."""
    values = np.array([[3.0, 0.1, 0.0], [2.0, 0.0, 0.2], [0.0, 2.0, 0.1],
                       [0.1, 3.0, 0.0], [0.0, 0.2, 2.0], [1.0, 1.0, 1.0]])
    return FeatureMatrix(X=sp.csr_matrix(values),
                         feature_names=tuple(f"decay:page_view:c{j}" for j in range(3)),
                         users=np.array([f"u{i}" for i in range(6)]), as_of=AS_OF,
                         spec=FeatureSpec(events=("page_view",), user_features=False),
                         nan_absent=np.zeros(3, dtype=bool))


def propensity_data() -> tuple[FeatureMatrix, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 400
    dense = rng.exponential(1.0, size=(n, 2))
    y = (rng.random(n) < 1 / (1 + np.exp(2 - 1.5 * dense[:, 0]))).astype(np.int8)
    fm = FeatureMatrix(sp.csr_matrix(dense), ("a", "b"), np.arange(n), AS_OF, FeatureSpec(),
                       np.zeros(2, dtype=bool))
    return fm, y


FM = affinity_fm()
PFM, PY = propensity_data()


def fit(est):
    return est.fit(PFM, PY) if isinstance(est, PropensityModel) else est.fit(FM)


def outcome(est) -> np.ndarray:
    """What a fitted model learned, to compare two fits."""
    if isinstance(est, InterestClusters):
        return est.centroids_
    if isinstance(est, Lookalike):
        return est.scores_
    return est.predict(PFM)


# name -> (factory, a parameter change that must show in the next fit,
#          a bad value with the message construction gives for it)
CASES = {
    "InterestClusters": (lambda: InterestClusters(2, n_init=2, random_state=0),
                         {"n_clusters": 3},
                         ({"n_init": 0}, "n_init must be an integer >= 1, got 0")),
    "Lookalike": (lambda: Lookalike(["u0", "u2", "u0"], method="knn", k=2),
                  {"method": "centroid"},
                  ({"k": 0}, "k must be an integer >= 1, got 0")),
    "PropensityModel": (lambda: PropensityModel({"num_leaves": 7}, num_boost_round=10,
                                                n_jobs=1, random_state=2),
                        {"params": {"num_leaves": 3}},
                        ({"validation_fraction": 1.0},
                         "validation_fraction must be a number in [0, 1), got 1.0")),
}
NAMES = list(CASES)


def make(name):
    return CASES[name][0]()


def use(est):
    """A call that needs a fitted model."""
    if isinstance(est, Lookalike):
        return est.rank()
    return est.predict(PFM if isinstance(est, PropensityModel) else FM)


def fitted_attributes(est) -> list[str]:
    # what sklearn.utils.validation.check_is_fitted looks for (it needs sklearn's tags, which
    # only BaseEstimator subclasses have, so it is not called on these)
    return sorted(k for k in vars(est) if k.endswith("_") and not k.startswith("__"))


def same_params(a: dict, b: dict) -> bool:
    """Equal parameter dicts (seed lists and arrays compared by value)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        if isinstance(a[k], np.ndarray) or isinstance(b[k], np.ndarray):
            if not np.array_equal(np.asarray(a[k]), np.asarray(b[k])):
                return False
        elif a[k] != b[k]:
            return False
    return True


# ---- get_params ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_get_params_are_the_constructor_arguments(name):
    est = make(name)
    signature = [p for p in inspect.signature(type(est).__init__).parameters if p != "self"]
    params = est.get_params()
    assert list(params) == signature
    assert est.get_params(deep=True) == est.get_params(deep=False)  # no nested estimators
    for k, v in params.items():
        assert getattr(est, k) is v


@pytest.mark.parametrize("name", NAMES)
def test_get_params_round_trip_through_the_constructor(name):
    est = make(name)
    params = est.get_params(deep=False)
    again = type(est)(**params)
    assert all(again.get_params(deep=False)[k] is v for k, v in params.items())
    np.testing.assert_array_equal(outcome(fit(again)), outcome(fit(make(name))))


def test_arguments_are_stored_as_given():
    seed = ["u0", "u2", "u0"]
    la = Lookalike(seed)
    assert la.seed_users is seed  # duplicates are dropped at fit, not here
    params = {"num_leaves": 7}
    pm = PropensityModel(params, num_boost_round=np.int64(5))
    assert pm.params is params and type(pm.num_boost_round) is np.int64
    assert PropensityModel().params is None
    rng = np.random.default_rng(1)
    assert InterestClusters(2, random_state=rng).random_state is rng


# ---- clone ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fitted", [False, True], ids=["unfitted", "fitted"])
@pytest.mark.parametrize("name", NAMES)
def test_clone_is_an_unfitted_copy_with_equal_parameters(name, fitted):
    est = make(name)
    if fitted:
        fit(est)
        assert fitted_attributes(est)
    copy = clone(est)
    assert type(copy) is type(est) and copy is not est
    assert same_params(copy.get_params(), est.get_params())
    assert fitted_attributes(copy) == []
    with pytest.raises(NotFittedError):
        use(copy)
    # the copy learns what the original learned
    np.testing.assert_array_equal(outcome(fit(copy)), outcome(fit(est)))


def test_clone_copies_mutable_arguments():
    la = Lookalike(np.array(["u0", "u2"]))
    copy = clone(la)
    assert copy.seed_users is not la.seed_users
    np.testing.assert_array_equal(copy.seed_users, la.seed_users)


# ---- set_params ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_set_params_sets_returns_self_and_takes_effect_at_fit(name):
    _, change, _ = CASES[name]
    est = make(name)
    fit(est)
    assert est.set_params(**change) is est
    for k, v in change.items():
        assert est.get_params()[k] is v
    expected = type(est)(**{**make(name).get_params(deep=False), **change})
    np.testing.assert_array_equal(outcome(fit(est)), outcome(fit(expected)))
    assert est.set_params() is est


@pytest.mark.parametrize("name", NAMES)
def test_set_params_rejects_unknown_names_and_sets_nothing(name):
    est = make(name)
    before = est.get_params(deep=False)
    first = next(iter(before))
    valid = list(before)
    message = (f"{name}.set_params: unknown parameter(s) ['bogus', 'zeta']; expected some of "
               f"{valid}")
    with pytest.raises(ConfigError, match=re.escape(message)):
        est.set_params(**{first: None, "zeta": 1, "bogus": 2})
    assert all(est.get_params(deep=False)[k] is v for k, v in before.items())
    with pytest.raises(ConfigError, match=re.escape(f"unknown parameter(s) ['{first}__x']")):
        est.set_params(**{f"{first}__x": 1})  # not an estimator: it has no sub-parameters


@pytest.mark.parametrize("name", NAMES)
def test_bad_value_raises_at_construction_and_at_fit_with_one_message(name):
    _, _, (bad, message) = CASES[name]
    with pytest.raises(ConfigError, match=re.escape(message)):
        type(make(name))(**{**make(name).get_params(deep=False), **bad})
    est = make(name).set_params(**bad)  # set_params only sets, as in scikit-learn
    with pytest.raises(ConfigError, match=re.escape(message)):
        fit(est)


def test_lookalike_seed_set_later_is_checked_at_fit():
    la = Lookalike(["u0"]).set_params(seed_users=[])
    with pytest.raises(ConfigError, match=re.escape(
            "seed_users must be a non-empty sequence of user ids, got 0 users")):
        la.fit(FM)
    la.set_params(seed_users="u0")
    with pytest.raises(ConfigError, match=re.escape(
            "seed_users must be a sequence of user ids, got str")):
        la.fit(FM)


# ---- fit leaves the parameters alone (sklearn's check_dont_overwrite_parameters) ----------------
@pytest.mark.parametrize("name", NAMES)
def test_fit_does_not_change_the_parameters(name):
    est = make(name)
    before = est.get_params(deep=False)
    snapshot = clone(est).get_params(deep=False)
    fit(est)
    after = est.get_params(deep=False)
    assert all(after[k] is v for k, v in before.items())
    assert same_params(after, snapshot)  # not mutated in place either
    assert fitted_attributes(est)


# ---- scikit-learn's own parameter checks -------------------------------------------------------
@pytest.mark.parametrize("check", ["check_get_params_invariance", "check_set_params",
                                   "check_no_attributes_set_in_init",
                                   "check_parameters_default_constructible"])
@pytest.mark.parametrize("name", NAMES)
def test_sklearn_parameter_checks(name, check):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_set_params only warns about what it finds
        getattr(estimator_checks, check)(name, make(name))


# ---- the mixin on nested estimators -------------------------------------------------------------
class Inner(ParamsMixin):
    def __init__(self, a=1):
        self.a = a


class Outer(ParamsMixin):
    def __init__(self, inner=None, *, b=2):
        self.inner = inner
        self.b = b


def test_nested_parameters():
    inner = Inner()
    outer = Outer(inner)
    assert outer.get_params() == {"inner__a": 1, "inner": inner, "b": 2}
    assert outer.get_params(deep=False) == {"inner": inner, "b": 2}
    assert outer.set_params(inner__a=5, b=3) is outer
    assert (inner.a, outer.b) == (5, 3)
    with pytest.raises(ConfigError, match=re.escape(
            "Outer.set_params: unknown parameter(s) ['inner__c']; expected some of "
            "['inner', 'b']")):
        outer.set_params(inner__c=1)
    copy = clone(outer)
    assert copy.inner is not inner and copy.get_params()["inner__a"] == 5


def test_constructor_must_name_its_parameters():
    class Loose(ParamsMixin):
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    with pytest.raises(TypeError, match=re.escape(
            "Loose.__init__ must list its parameters by name, not **kwargs")):
        Loose().get_params()

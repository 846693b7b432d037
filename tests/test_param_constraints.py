"""Declared parameter constraints (bta._params): the constraint objects, the one message
template, and every declaring class checked against its own declaration.

For each class in ``DECLARING`` hypothesis draws, per parameter, values outside the declared
constraints (wrong types, out-of-range numbers, NaN, infinities, bools for integers, strings
not among the options) and values inside them; the first must raise ``ConfigError`` naming
the parameter and the description, the second must construct.
"""

from __future__ import annotations

import inspect
import math
import re
from numbers import Integral, Real
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bta._params import (
    Boolean,
    InstanceOf,
    Interval,
    NoneConstraint,
    Options,
    Predicate,
    RandomState,
    describe,
    make_constraint,
    validate_args,
    validate_params,
)
from bta.errors import ConfigError, check_param
from bta.evaluate.ope import OPEResult
from bta.evaluate.uplift import UpliftCurve
from bta.features.spec import FeatureSpec
from bta.privacy.policy import PrivacyPolicy
from bta.segment.clusters import InterestClusters
from bta.segment.lookalike import Lookalike
from bta.segment.propensity import PropensityModel

# class -> the arguments a construction needs besides the parameter under test
DECLARING: list[tuple[type, dict[str, Any]]] = [
    (InterestClusters, {}),
    (PropensityModel, {}),
    (Lookalike, {"seed_users": ["u1", "u2"]}),
    (FeatureSpec, {}),
    (PrivacyPolicy, {}),
    (OPEResult, dict(estimator="ipw", estimate=0.1, std_error=0.01, ci_low=0.08, ci_high=0.12,
                     alpha=0.05, ci_method="normal", n=10, ess=9.0, max_weight=2.0,
                     mean_weight=1.0, unsupported_share=0.0)),
    (UpliftCurve, dict(kind="uplift", n_targeted=np.array([0, 1, 2]),
                       value=np.array([0.0, 0.5, 1.0]), n_treated=1, n_control=1)),
]
# estimators store parameters unchanged; configs (frozen dataclasses) store them normalized
ESTIMATORS = (InterestClusters, PropensityModel, Lookalike)

CASES = [(cls, base, name) for cls, base in DECLARING for name in cls._parameter_constraints]


# ---- the constraint objects -----------------------------------------------------------------
DESCRIPTIONS = [
    ([Interval(Integral, 1, None, closed="left")], "an integer >= 1"),
    ([Interval(Integral, 0, None, closed="neither")], "an integer > 0"),
    ([Interval(Integral, 1, 10)], "an integer in [1, 10]"),
    ([None, Interval(Integral, 1, None, closed="left")], "None or an integer >= 1"),
    ([Interval(Real, 0, None, closed="left")], "a finite number >= 0"),
    ([Interval(Real, 0, None, closed="neither")], "a positive number"),
    ([Interval(Real, None, 5, closed="neither")], "a finite number < 5"),
    ([Interval(Real, 0, 1, closed="left")], "a number in [0, 1)"),
    ([Interval(Real, 0, 1, closed="neither", desc="a fraction in (0, 1)")],
     "a fraction in (0, 1)"),
    ([Interval(Real, None, None, closed="neither")], "a finite number"),
    ([Options(("centroid", "knn"))], "'centroid' or 'knn'"),
    ([Options(("a", "b", "c"))], "'a', 'b' or 'c'"),
    (["boolean"], "True or False"),
    (["random_state"], "None, an int or a numpy Generator"),
    ([InstanceOf(dict)], "a dict"),
    ([InstanceOf(int, str)], "an int or a str"),
    ([Predicate(bool, "anything truthy")], "anything truthy"),
]


@pytest.mark.parametrize("constraints, text", DESCRIPTIONS)
def test_describe(constraints: list[Any], text: str) -> None:
    assert describe(constraints) == text


MEMBERSHIP = [
    (Interval(Integral, 1, None, closed="left"), [1, 5, np.int64(3)], [0, True, 2.0, 2.5, "3"]),
    (Interval(Real, 0, 1, closed="left"), [0, 0.5, np.float32(0.25)],
     [1, 1.0, -0.1, math.nan, False, "0.5", None]),
    (Interval(Real, 0, None, closed="neither"), [1e-300, 1e300], [0, math.inf, math.nan]),
    (Interval(Real, None, None, closed="neither"), [-1e300, 0], [math.inf, -math.inf, math.nan]),
    (Options(("raise", "ignore")), ["raise", "ignore"], ["skip", "", None, 1]),
    (Options((1, 2)), [1, 2], [True, 1.0, "1"]),
    (Options(("a",)), ["a"], [np.array(["a", "a"])]),
    (Boolean(), [True, False, np.bool_(True)], [0, 1, "True", None]),
    (RandomState(), [None, 0, np.int64(7), np.random.default_rng(0)],
     [True, 1.5, "seed", np.random.RandomState(0)]),
    (NoneConstraint(), [None], [0, "", False]),
    (InstanceOf(dict), [{}], [[], None]),
    (Predicate(lambda v: v > 0, "positive"), [1], [0, "x", None]),  # a raising test is "no"
]


@pytest.mark.parametrize("constraint, inside, outside", MEMBERSHIP)
def test_is_satisfied_by(constraint: Any, inside: list[Any], outside: list[Any]) -> None:
    assert all(constraint.is_satisfied_by(v) for v in inside)
    assert not any(constraint.is_satisfied_by(v) for v in outside)


def test_the_one_template() -> None:
    with pytest.raises(ConfigError, match=r"^n must be an integer >= 1, got 0$"):
        validate_params({"n": [Interval(Integral, 1, None, closed="left")]}, {"n": 0}, "f")
    with pytest.raises(ConfigError, match=r"^n must be an integer >= 1, got 0$"):
        check_param("n", 0, False, "an integer >= 1")
    with pytest.raises(ConfigError, match=r"^x must be a dict, got list$"):
        validate_params({"x": [InstanceOf(dict, show_type=True)]}, {"x": [1, 2]}, "f")
    with pytest.raises(ConfigError, match=r"^x must be None or a dict, got \[1\]$"):
        # the type name is shown only when every constraint of the parameter asks for it
        validate_params({"x": [None, InstanceOf(dict, show_type=True)]}, {"x": [1]}, "f")
    validate_params({"n": [None]}, {"n": None, "m": "not declared, not checked"}, "f")


def test_validate_args_checks_the_named_arguments_only() -> None:
    declared = {"n": [Interval(Integral, 1, None, closed="left")], "flag": ["boolean"]}
    validate_args(declared, "f", flag=True)  # n is not checked: not passed
    with pytest.raises(ConfigError, match=r"^flag must be True or False, got 1$"):
        validate_args(declared, "f", n=2, flag=1)
    with pytest.raises(TypeError, match=r"f checks \['m'\], which have no declared"):
        validate_args(declared, "f", m=1)


def test_declaration_errors_are_programming_errors() -> None:
    with pytest.raises(TypeError, match="f declares constraints for 'z'"):
        validate_params({"z": [None]}, {"n": 1}, "f")
    with pytest.raises(TypeError, match="unknown parameter constraint 'bool'"):
        make_constraint("bool")
    with pytest.raises(TypeError, match="Interval kind"):
        Interval(float, 0, 1)
    with pytest.raises(TypeError, match="low must be <= high"):
        Interval(Real, 1, 0)


# ---- values drawn from a declaration ----------------------------------------------------------
_ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 2.5, -0.5, 1.5, 0.0, -1]),
    st.text(max_size=8), st.lists(st.integers(), max_size=3), st.builds(object),
    st.just(np.float64("nan")), st.just(np.int64(-3)), st.just(np.bool_(True)),
)


def _outside_one(c: Any) -> st.SearchStrategy[Any]:
    """Values near and beyond the edges of one constraint (filtered later by the whole list)."""
    if isinstance(c, Interval):
        draws: list[st.SearchStrategy[Any]] = [st.booleans(), st.just(math.nan),
                                               st.just(math.inf), st.just(-math.inf)]
        if c.kind is Integral:
            draws.append(st.floats(-1e6, 1e6).filter(lambda v: not float(v).is_integer()))
            if c.low is not None:
                draws.append(st.integers(max_value=int(c.low) - (1 if c.low_closed else 0)))
            if c.high is not None:
                draws.append(st.integers(min_value=int(c.high) + (1 if c.high_closed else 0)))
        else:
            if c.low is not None:
                draws.append(st.floats(max_value=c.low, allow_nan=False))
            if c.high is not None:
                draws.append(st.floats(min_value=c.high, allow_nan=False))
        return st.one_of(draws)
    if isinstance(c, Options):
        return st.one_of(st.text(max_size=12), st.sampled_from(
            [str(o).upper() + "_" for o in c.options]))
    return _ANYTHING


def invalid_values(constraints: list[Any]) -> st.SearchStrategy[Any]:
    objs = [make_constraint(c) for c in constraints]
    return st.one_of([_ANYTHING] + [_outside_one(c) for c in objs]).filter(
        lambda v: not any(c.is_satisfied_by(v) for c in objs))


def _inside_one(c: Any) -> st.SearchStrategy[Any] | None:
    """Values of one constraint, or None where it cannot be drawn (a predicate)."""
    if isinstance(c, Interval):
        if c.kind is Integral:
            lo = None if c.low is None else int(c.low) + (0 if c.low_closed else 1)
            hi = None if c.high is None else int(c.high) - (0 if c.high_closed else 1)
            # keep counts small: a drawn n_clusters or num_boost_round only has to construct
            return st.integers(lo, hi if hi is not None else (lo or 0) + 1000)
        return st.floats(c.low, c.high, exclude_min=c.low is not None and not c.low_closed,
                         exclude_max=c.high is not None and not c.high_closed, allow_nan=False,
                         allow_infinity=False)
    if isinstance(c, Options):
        return st.sampled_from(c.options)
    if isinstance(c, NoneConstraint):
        return st.none()
    if isinstance(c, Boolean):
        return st.sampled_from([True, False, np.bool_(False)])
    if isinstance(c, RandomState):
        return st.one_of(st.none(), st.integers(0, 2**32),
                         st.builds(np.random.default_rng, st.integers(0, 100)))
    if isinstance(c, InstanceOf) and any(issubclass(dict, t) for t in c.types):
        return st.just({})
    return None


@pytest.mark.parametrize("cls, base, name", CASES,
                         ids=[f"{c.__name__}.{n}" for c, _, n in CASES])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_invalid_values_raise_the_declared_message(cls: type, base: dict[str, Any], name: str,
                                                   data: st.DataObject) -> None:
    constraints = cls._parameter_constraints[name]
    value = data.draw(invalid_values(constraints), label=name)
    objs = [make_constraint(c) for c in constraints]
    got = type(value).__name__ if all(c.show_type for c in objs) else repr(value)
    expected = f"{name} must be {describe(constraints)}, got {got}"
    with pytest.raises(ConfigError) as info:
        cls(**{**base, name: value})
    assert str(info.value) == expected


@pytest.mark.parametrize("cls, base, name", CASES,
                         ids=[f"{c.__name__}.{n}" for c, _, n in CASES])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_valid_values_construct(cls: type, base: dict[str, Any], name: str,
                                data: st.DataObject) -> None:
    draws = [s for s in map(_inside_one, map(make_constraint, cls._parameter_constraints[name]))
             if s is not None]
    if not draws:  # declared by a predicate only: its default (or the base value) is valid
        default = inspect.signature(cls.__init__).parameters[name].default
        draws = [st.just(base.get(name, default))]
    value = data.draw(st.one_of(draws), label=name)
    est = cls(**{**base, name: value})
    if cls in ESTIMATORS:
        assert getattr(est, name) is value


@pytest.mark.parametrize("cls, base", DECLARING, ids=[c.__name__ for c, _ in DECLARING])
def test_declaration_names_constructor_parameters(cls: type, base: dict[str, Any]) -> None:
    assert set(cls._parameter_constraints) <= set(inspect.signature(cls).parameters)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=[c.__name__ for c in ESTIMATORS])
def test_bad_set_params_is_reported_by_fit(cls: type) -> None:
    base = dict(DECLARING)[cls]
    name = next(iter(n for n in cls._parameter_constraints if n not in base))
    est = cls(**base).set_params(**{name: object()})  # set_params only sets
    with pytest.raises(ConfigError, match="^" + re.escape(f"{name} must be ")):
        # fit validates before it reads its data, so placeholders do
        n_data = sum(p.default is p.empty for p in inspect.signature(est.fit).parameters.values())
        est.fit(*[None] * n_data)

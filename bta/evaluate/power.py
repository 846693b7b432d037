"""Power, sample size and minimum detectable effect (MDE) for two-arm tests.

Proportions (e.g. the share of users who convert) use the normal test on Cohen's arcsine effect
size ``h = 2 asin(sqrt(p_t)) - 2 asin(sqrt(p_c))``; means (e.g. revenue per user) use the
two-sample t-test with the noncentral t distribution. Both agree with ``statsmodels``'
``NormalIndPower`` and ``TTestIndPower`` (checked in the tests).

Sizes are users in the control arm, ``n``; the treatment arm has ``ratio * n``. Sample sizes
are returned unrounded: round up (``math.ceil``) to plan.

For a ratio metric (CTR, ROAS) use :func:`sample_size_means` with ``sd`` the per-user standard
deviation of its linearization (``std_error * sqrt(n)`` from a previous report's ``arms`` table).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Literal

from scipy import optimize, stats

from bta._params import Interval, Options, Predicate, validate_args, validate_params
from bta.errors import ConfigError, check_param

__all__ = ["power_proportions", "sample_size_proportions", "mde_proportions", "power_means",
           "sample_size_means", "mde_means"]

Alternative = Literal["two-sided", "larger", "smaller"]
# Search brackets: no experiment has more than 1e12 users per arm, and no standardized effect
# is detectable beyond 1e3 standard deviations.
_MAX_N = 1e12
_MAX_D = 1e3


_FINITE = Interval(Real, None, None, closed="neither")
_UNIT = [Interval(Real, 0, 1, closed="neither", desc="in (0, 1)")]
_POSITIVE = [Interval(Real, 0, None, closed="neither")]
_PARAMS: dict[str, list[Any]] = {
    "alpha": _UNIT, "power": _UNIT, "p_baseline": _UNIT, "p_treatment": _UNIT,
    "ratio": _POSITIVE, "sd": _POSITIVE,
    "alternative": [Options(("two-sided", "larger", "smaller"))],
    "mde": [Predicate(lambda v: _FINITE.is_satisfied_by(v) and v != 0, "a non-zero number")],
    "n": [Interval(Real, 0, None, closed="neither", desc="a positive number of users")],
}


def _check(alpha: float, power: float | None, ratio: float, alternative: str) -> None:
    validate_args(_PARAMS, "power", alpha=alpha, **({} if power is None else {"power": power}),
                  ratio=ratio, alternative=alternative)


def _check_t_users(n: float, ratio: float) -> None:
    """The t-test's ``n``: at least one degree of freedom, ``n (1 + ratio) >= 3``."""
    validate_params({"n": [Interval(Real, 3 / (1 + ratio), None, closed="left",
                                    desc="at least 3 / (1 + ratio) users")]}, {"n": n}, "power")


def _nobs(n: float, ratio: float) -> float:
    # effective sample size of a two-sample comparison: 1 / (1/n_c + 1/n_t)
    return 1.0 / (1.0 / n + 1.0 / (n * ratio))


def _normal_power(d: float, n: float, alpha: float, ratio: float, alternative: str) -> float:
    shift = d * math.sqrt(_nobs(n, ratio))
    if alternative == "two-sided":
        crit = stats.norm.isf(alpha / 2)
        return float(stats.norm.sf(crit - shift) + stats.norm.cdf(-crit - shift))
    crit = stats.norm.isf(alpha)
    return float(stats.norm.sf(crit - shift) if alternative == "larger"
                 else stats.norm.cdf(-crit - shift))


def _t_power(d: float, n: float, alpha: float, ratio: float, alternative: str) -> float:
    df = n * (1 + ratio) - 2
    nc = d * math.sqrt(_nobs(n, ratio))
    a = alpha / 2 if alternative == "two-sided" else alpha
    crit = stats.t.isf(a, df)
    p = 0.0
    if alternative in ("two-sided", "larger"):
        p += float(stats.nct.sf(crit, df, nc))
    if alternative in ("two-sided", "smaller"):
        p += float(stats.nct.cdf(-crit, df, nc))
    return p


def _bracket(fn, target: float, lo: float, limit: float) -> float:
    # double the upper end until power reaches the target: it stays within a factor 2 of the
    # solution, where the noncentral t is well behaved (at 1e12 users it returns NaN)
    hi = max(2.0 * lo, 1e-6)
    while fn(hi) < target:
        if hi > limit:
            return math.nan
        hi *= 2.0
    return hi


def _solve_n(fn, target: float, lo: float) -> float:
    if fn(lo) >= target:
        return lo
    hi = _bracket(fn, target, lo, _MAX_N)
    if math.isnan(hi):
        raise ConfigError(f"power {target!r} needs more than {_MAX_N:.0e} users per arm for "
                          f"this effect")
    return float(optimize.brentq(lambda n: fn(n) - target, lo, hi, xtol=1e-10, rtol=1e-14))


def _solve_d(fn, target: float) -> float:
    # power grows with the effect in the tested direction; the MDE is reported as positive
    hi = _bracket(fn, target, 1e-6, _MAX_D)
    if math.isnan(hi):
        return math.nan
    return float(optimize.brentq(lambda d: fn(d) - target, 0.0, hi, xtol=1e-14, rtol=1e-14))


def _h(p_c: float, p_t: float) -> float:
    return 2 * math.asin(math.sqrt(p_t)) - 2 * math.asin(math.sqrt(p_c))


def _sign(alternative: str) -> float:
    return -1.0 if alternative == "smaller" else 1.0


def power_proportions(p_baseline: float, p_treatment: float, n: float, *, alpha: float = 0.05,
                      ratio: float = 1.0, alternative: Alternative = "two-sided") -> float:
    """Power of the two-proportion test with ``n`` control users.

    Parameters
    ----------
    p_baseline, p_treatment : float
        Proportions in (0, 1) of the control and treatment arms.
    n : float
        Users in the control arm (``ratio * n`` in the treatment arm).
    alpha : float
    ratio : float
    alternative : {"two-sided", "larger", "smaller"}

    Returns
    -------
    float

    Examples
    --------
    >>> round(power_proportions(0.10, 0.12, 3839), 3)
    0.8
    """
    _check(alpha, None, ratio, alternative)
    validate_args(_PARAMS, "power_proportions", p_baseline=p_baseline, p_treatment=p_treatment,
                  n=n)
    return _normal_power(_h(p_baseline, p_treatment), n, alpha, ratio, alternative)


def sample_size_proportions(p_baseline: float, mde: float, *, relative: bool = False,
                            alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0,
                            alternative: Alternative = "two-sided") -> float:
    """Control-arm users needed to detect ``p_baseline -> p_baseline + mde`` with ``power``.

    ``mde`` is absolute (``0.01`` = one percentage point), or relative to ``p_baseline``
    when ``relative=True``.
    """
    _check(alpha, power, ratio, alternative)
    validate_args(_PARAMS, "sample_size_proportions", p_baseline=p_baseline, mde=mde)
    p_t = p_baseline * (1 + mde) if relative else p_baseline + mde
    check_param("mde", mde, 0 < p_t < 1, f"such that the treatment proportion is in (0, 1) "
                f"(it is {p_t!r})")
    h = _h(p_baseline, p_t)
    return _solve_n(lambda n: _normal_power(h, n, alpha, ratio, alternative), power, 1e-6)


def mde_proportions(p_baseline: float, n: float, *, relative: bool = False, alpha: float = 0.05,
                    power: float = 0.8, ratio: float = 1.0,
                    alternative: Alternative = "two-sided") -> float:
    """Smallest change of ``p_baseline`` detectable with ``power`` given ``n`` control users.

    Returns the absolute change (or relative to ``p_baseline``), positive (negative for
    ``alternative="smaller"``); NaN when no proportion in (0, 1) is far enough.
    """
    _check(alpha, power, ratio, alternative)
    validate_args(_PARAMS, "mde_proportions", p_baseline=p_baseline, n=n)
    s = _sign(alternative)
    h = _solve_d(lambda d: _normal_power(s * d, n, alpha, ratio, alternative), power)
    a = math.asin(math.sqrt(p_baseline)) + s * h / 2
    if not 0 < a < math.pi / 2:
        return math.nan
    change = math.sin(a) ** 2 - p_baseline
    return change / p_baseline if relative else change


def power_means(mde: float, sd: float, n: float, *, alpha: float = 0.05, ratio: float = 1.0,
                alternative: Alternative = "two-sided") -> float:
    """Power of the two-sample t-test for a difference ``mde`` of means with per-user ``sd``."""
    _check(alpha, None, ratio, alternative)
    validate_args(_PARAMS, "power_means", sd=sd)
    validate_params({"mde": [_FINITE]}, {"mde": mde}, "power_means")
    _check_t_users(n, ratio)
    return _t_power(mde / sd, n, alpha, ratio, alternative)


def sample_size_means(mde: float, sd: float, *, alpha: float = 0.05, power: float = 0.8,
                      ratio: float = 1.0, alternative: Alternative = "two-sided") -> float:
    """Control-arm users needed to detect a difference ``mde`` of means with per-user ``sd``.

    Examples
    --------
    >>> round(sample_size_means(0.5, 10.0), 1)
    6280.0
    """
    _check(alpha, power, ratio, alternative)
    validate_args(_PARAMS, "sample_size_means", sd=sd, mde=mde)
    d = mde / sd
    # at least one degree of freedom: below it the noncentral t tails make power meaningless
    lo = 3.0 / (1 + ratio)
    return _solve_n(lambda n: _t_power(d, n, alpha, ratio, alternative), power, lo)


def mde_means(sd: float, n: float, *, alpha: float = 0.05, power: float = 0.8,
              ratio: float = 1.0, alternative: Alternative = "two-sided") -> float:
    """Smallest difference of means detectable with ``power`` given ``n`` control users."""
    _check(alpha, power, ratio, alternative)
    validate_args(_PARAMS, "mde_means", sd=sd)
    _check_t_users(n, ratio)
    s = _sign(alternative)
    d = _solve_d(lambda d: _t_power(s * d, n, alpha, ratio, alternative), power)
    return s * d * sd

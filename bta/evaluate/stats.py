"""Mergeable summary statistics of experiment arms, and the estimators built on them.

An arm is summarized by the number of randomization units (users) and, over the units'
per-unit sums of the base metrics (impressions, clicks, spend, ...), their sums and the sums of
all their pairwise products. Those are plain sums, so summaries of partitions add up to the
summary of the whole (:class:`ArmStats` supports ``+``). Every estimate in bta's A/B report
(CTR, ROAS, revenue per user, their lifts, tests and intervals) is a function of these sums.

Merging is exact when the partitions hold disjoint sets of units (shard by a hash of the user,
as bta partitions everything). Summaries of days that share users still add their totals
exactly, but then count each user-day as a unit.

Integer base metrics (impressions, clicks, conversions and the 0/1 indicators) keep their
sums and products as Python ``int``, so merging never rounds them; the float ones (spend,
revenue, covariates) merge to within floating-point rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as _sps

from bta.errors import ConfigError, UnknownNameError, check_param

__all__ = [
    "BASE_METRICS",
    "INTEGER_METRICS",
    "STATUSES",
    "ArmStats",
    "Moments",
    "Metric",
    "METRICS",
    "merge",
    "compare",
    "intervals",
    "fieller",
    "estimate",
    "adjust_pvalues",
    "msprt_rho",
    "srm_test",
]

#: Per-unit base metrics in their canonical order. ``clicked``/``converted`` are 0/1
#: indicators of at least one click/conversion; covariates are named ``pre:<name>``.
BASE_METRICS = ("impressions", "clicks", "conversions", "clicked", "converted", "spend",
                "revenue")
#: Base metrics whose sums and products are kept as exact integers.
INTEGER_METRICS = frozenset({"impressions", "clicks", "conversions", "clicked", "converted"})

#: Status codes, in the order they are checked (the first that applies names the row).
STATUSES = {
    "ok": "every value in the row is defined",
    "not_measured": "the metric needs a column the input did not have (e.g. no cost)",
    "empty_arm": "an arm has no units",
    "zero_denominator": "the metric's denominator is 0 in an arm (e.g. no spend for ROAS)",
    "too_few_units": "an arm has a single unit, so no variance can be estimated",
    "zero_variance": "the estimate has zero variance, so no test or interval exists",
    "zero_control": "the control value is 0: the relative lift is undefined (absolute is given)",
}


# ----------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class ArmStats:
    """Summary statistics of one arm: unit count, sums and sums of cross products.

    Parameters
    ----------
    n : int
        Number of units (users).
    names : tuple of str, length K
        Names of the per-unit values (base metrics and ``pre:*`` covariates).
    sums : tuple of number, length K
        ``sum_u x_u[k]`` over units.
    cross : tuple of tuple of number, shape (K, K)
        ``sum_u x_u[i] * x_u[j]`` over units (symmetric; the diagonal holds the sums of
        squares).

    Notes
    -----
    ``a + b`` merges two summaries of disjoint units exactly; ``sum(parts)`` works too.

    Examples
    --------
    >>> import numpy as np
    >>> a = ArmStats.from_units(np.array([[10, 1], [5, 0]]), ("impressions", "clicks"))
    >>> b = ArmStats.from_units(np.array([[4, 2]]), ("impressions", "clicks"))
    >>> (a + b).n, (a + b).sums
    (3, (19, 3))
    """

    n: int
    names: tuple[str, ...]
    sums: tuple[Any, ...]
    cross: tuple[tuple[Any, ...], ...]

    def __post_init__(self) -> None:
        k = len(self.names)
        check_param("n", self.n, isinstance(self.n, (int, np.integer)) and self.n >= 0,
                    "a non-negative integer")
        check_param("names", self.names, len(set(self.names)) == k, "unique")
        check_param("sums", self.sums, len(self.sums) == k, f"of length {k} (one per name)")
        check_param("cross", self.cross,
                    len(self.cross) == k and all(len(r) == k for r in self.cross),
                    f"of shape ({k}, {k})")

    @classmethod
    def zero(cls, names: Sequence[str]) -> ArmStats:
        """The summary of no units (the neutral element of ``+``)."""
        names = tuple(names)
        isint = [nm in INTEGER_METRICS for nm in names]
        return cls(0, names, tuple(0 if i else 0.0 for i in isint),
                   tuple(tuple(0 if i and j else 0.0 for j in isint) for i in isint))

    @classmethod
    def from_units(cls, values: Any, names: Sequence[str]) -> ArmStats:
        """Summarize per-unit values.

        Parameters
        ----------
        values : array-like of shape (n_units, K)
            One row per unit; integer metrics (see :data:`INTEGER_METRICS`) must be integral.
        names : sequence of str, length K

        Returns
        -------
        ArmStats
        """
        names = tuple(names)
        x = np.asarray(values, dtype=np.float64).reshape(-1, len(names))
        is_int = np.array([nm in INTEGER_METRICS for nm in names], dtype=bool)
        # Integer block in int64: exact whatever the order of summation; float products
        # by BLAS (their merge equals the whole to rounding).
        xi = x[:, is_int].astype(np.int64)
        sums_f = x.sum(axis=0)
        cross_f = x.T @ x
        sums_i = xi.sum(axis=0)
        cross_i = xi.T @ xi
        pos = np.cumsum(is_int) - 1
        sums = tuple(int(sums_i[pos[i]]) if is_int[i] else float(sums_f[i])
                     for i in range(len(names)))
        cross = tuple(
            tuple(int(cross_i[pos[i], pos[j]]) if is_int[i] and is_int[j] else float(cross_f[i, j])
                  for j in range(len(names)))
            for i in range(len(names)))
        return cls(int(x.shape[0]), names, sums, cross)

    def __add__(self, other: Any) -> ArmStats:
        if isinstance(other, int) and other == 0:  # so that sum(parts) works
            return self
        if not isinstance(other, ArmStats):
            return NotImplemented
        if other.names != self.names:
            raise ConfigError(f"ArmStats to merge must have the same names, got {self.names} "
                              f"and {other.names}")
        return ArmStats(
            self.n + other.n, self.names,
            tuple(a + b for a, b in zip(self.sums, other.sums)),
            tuple(tuple(a + b for a, b in zip(ra, rb)) for ra, rb in zip(self.cross, other.cross)))

    __radd__ = __add__

    def mean(self, name: str) -> float:
        """Per-unit mean of ``name`` (NaN for an empty arm)."""
        i = _position(self.names, name)
        return float(self.sums[i]) / self.n if self.n else math.nan

    def moments(self) -> Moments:
        """The same statistics as float arrays (shape ``()`` leading dimensions)."""
        return Moments(np.float64(self.n), np.array(self.sums, dtype=np.float64),
                       np.array(self.cross, dtype=np.float64), self.names)


@dataclass(frozen=True)
class Moments:
    """Summary statistics as float arrays with any leading shape (many arms, days, experiments).

    Parameters
    ----------
    n : ndarray of shape (...)
    sums : ndarray of shape (..., K)
    cross : ndarray of shape (..., K, K)
    names : tuple of str, length K
    """

    n: np.ndarray
    sums: np.ndarray
    cross: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def stack(cls, parts: Sequence[ArmStats | Moments]) -> Moments:
        """Stack summaries along a new leading axis (all must have the same names)."""
        ms = [p.moments() if isinstance(p, ArmStats) else p for p in parts]
        names = ms[0].names
        for m in ms[1:]:
            if m.names != names:
                raise ConfigError(f"summaries to stack must have the same names, got {names} "
                                  f"and {m.names}")
        return cls(np.stack([m.n for m in ms]), np.stack([m.sums for m in ms]),
                   np.stack([m.cross for m in ms]), names)

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.sums + other.sums, self.cross + other.cross,
                       self.names)

    def augmented(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, means, covariance) over the basis ``[1, *names]`` (ddof = 1; NaN when n < 2)."""
        n = np.asarray(self.n, dtype=np.float64)
        s = np.concatenate([n[..., None], self.sums], axis=-1)
        top = np.concatenate([n[..., None, None], self.sums[..., None, :]], axis=-1)
        q = np.concatenate([top, np.concatenate([self.sums[..., :, None], self.cross], axis=-1)],
                           axis=-2)
        with np.errstate(all="ignore"):
            mu = s / n[..., None]
            cov = (q - n[..., None, None] * mu[..., :, None] * mu[..., None, :]) / (
                n - 1.0)[..., None, None]
        return n, mu, cov


def merge(*parts: Mapping[Any, ArmStats]) -> dict[Any, ArmStats]:
    """Merge per-arm summaries of disjoint partitions: ``{arm: sum of that arm's parts}``.

    An arm missing from a part contributes nothing there.

    Examples
    --------
    >>> import numpy as np
    >>> day1 = {"a": ArmStats.from_units(np.array([[1.0]]), ("revenue",))}
    >>> day2 = {"a": ArmStats.from_units(np.array([[2.0]]), ("revenue",)),
    ...         "b": ArmStats.from_units(np.array([[5.0]]), ("revenue",))}
    >>> {k: v.sums for k, v in merge(day1, day2).items()}
    {'a': (3.0,), 'b': (5.0,)}
    """
    out: dict[Any, ArmStats] = {}
    for part in parts:
        for arm, st in part.items():
            out[arm] = out[arm] + st if arm in out else st
    return out


def _position(names: Sequence[str], name: str) -> int:
    try:
        return list(names).index(name)
    except ValueError:
        raise UnknownNameError(f"no summary statistic named {name!r}; have {list(names)}") from None


# ----------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """A metric as a ratio of linear combinations of per-unit sums.

    ``value = sum_u (num . x_u) / sum_u (den . x_u)``; an empty ``den`` means per unit (a
    mean). ``kind`` picks the test: ``"ratio"`` (delta method, z), ``"mean"`` (Welch t) or
    ``"proportion"`` (a mean of a 0/1 indicator: two-proportion z-test).
    """

    name: str
    kind: Literal["ratio", "mean", "proportion"]
    num: tuple[tuple[str, float], ...]
    den: tuple[tuple[str, float], ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        check_param("kind", self.kind, self.kind in ("ratio", "mean", "proportion"),
                    "one of 'ratio', 'mean', 'proportion'")
        check_param("den", self.den, (self.kind == "ratio") == bool(self.den),
                    "non-empty exactly for ratio metrics")

    @property
    def requires(self) -> frozenset[str]:
        """Base metrics the metric is computed from."""
        return frozenset(n for n, _ in self.num + self.den)

    def vectors(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Coefficient vectors (num, den) over the augmented basis ``[1, *names]``."""
        pos = {nm: i + 1 for i, nm in enumerate(names)}
        a = np.zeros(len(names) + 1)
        b = np.zeros(len(names) + 1)
        for nm, c in self.num:
            a[pos[nm]] += c
        for nm, c in self.den:
            b[pos[nm]] += c
        if not self.den:
            b[0] = 1.0
        return a, b


def _m(name: str, kind: str, num: dict, den: dict | None = None, description: str = "") -> Metric:
    return Metric(name, kind, tuple(num.items()), tuple((den or {}).items()), description)


#: Every metric bta reports, by name. CVR is conversions per *click* (post-click conversion
#: rate); conversions per user are ``conversions_per_user`` and ``user_conversion_rate``.
METRICS: dict[str, Metric] = {m.name: m for m in [
    _m("ctr", "ratio", {"clicks": 1.0}, {"impressions": 1.0}, "clicks / impressions"),
    _m("cvr", "ratio", {"conversions": 1.0}, {"clicks": 1.0}, "conversions / clicks"),
    _m("cpc", "ratio", {"spend": 1.0}, {"clicks": 1.0}, "spend / clicks"),
    _m("cpa", "ratio", {"spend": 1.0}, {"conversions": 1.0}, "spend / conversions"),
    _m("cpm", "ratio", {"spend": 1000.0}, {"impressions": 1.0}, "1000 * spend / impressions"),
    _m("ecpm", "ratio", {"revenue": 1000.0}, {"impressions": 1.0},
       "1000 * revenue / impressions"),
    _m("roas", "ratio", {"revenue": 1.0}, {"spend": 1.0}, "revenue / spend ($ of sales per $1)"),
    _m("roi", "ratio", {"revenue": 1.0, "spend": -1.0}, {"spend": 1.0},
       "(revenue - spend) / spend"),
    _m("impressions_per_user", "mean", {"impressions": 1.0}, None, "impressions / users"),
    _m("clicks_per_user", "mean", {"clicks": 1.0}, None, "clicks / users"),
    _m("conversions_per_user", "mean", {"conversions": 1.0}, None, "conversions / users"),
    _m("revenue_per_user", "mean", {"revenue": 1.0}, None, "revenue / users"),
    _m("profit_per_user", "mean", {"revenue": 1.0, "spend": -1.0}, None,
       "(revenue - spend) / users"),
    _m("user_click_rate", "proportion", {"clicked": 1.0}, None, "share of users with a click"),
    _m("user_conversion_rate", "proportion", {"converted": 1.0}, None,
       "share of users with a conversion"),
]}


def _metric(metric: str | Metric) -> Metric:
    if isinstance(metric, Metric):
        return metric
    if metric not in METRICS:
        raise UnknownNameError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)}")
    return METRICS[metric]


# ----------------------------------------------------------------------------- estimation


def _quad(g: np.ndarray, cov: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...ij,...j->...", g, cov, g)


# A variance below this fraction of the magnitude of the terms it was computed from is
# rounding noise of the subtraction ``E[xx'] - mu mu'`` (float64 keeps ~16 digits; sums over
# millions of units lose a few more), so it is treated as exactly 0: a metric that is constant
# up to rounding (CPM under a fixed CPM price) must say "zero_variance", not p = 0.99999.
_VAR_RTOL = 1e-9


def _variance(g: np.ndarray, cov: np.ndarray, mu: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        v = _quad(g, cov)
        ag = np.abs(g)
        scale = _quad(ag, np.abs(cov)) + (ag * np.abs(mu)).sum(axis=-1) ** 2
        return np.where(np.abs(v) <= _VAR_RTOL * scale, 0.0, v)


def _linearize(mu: np.ndarray, a: np.ndarray, b: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # value R = (a.mu)/(b.mu); its influence per unit is g.x with g = (a - R b)/(b.mu)
    with np.errstate(all="ignore"):
        ma, mb = mu @ a, mu @ b
        r = ma / mb
        g = (a - r[..., None] * b) / mb[..., None]
    return r, mb, g


def estimate(stats: ArmStats | Moments, metric: str | Metric) -> dict[str, np.ndarray]:
    """Per-arm value of a metric and its delta-method standard error.

    Parameters
    ----------
    stats : ArmStats or Moments
        One arm, or many stacked (leading shape ``(...)``).
    metric : str or Metric
        A name from :data:`METRICS`.

    Returns
    -------
    dict of str to ndarray of shape (...)
        ``value``, ``std_error``, ``n``, ``denominator`` (per-unit mean of the denominator).

    Notes
    -----
    For ``R = mean(a.x) / mean(b.x)`` the delta method gives
    ``Var(R) = g' S g / n`` with ``g = (a - R b) / mean(b.x)`` and ``S`` the per-unit
    covariance matrix (ddof = 1). For a mean (``b = 1``) that is ``s^2 / n``; proportions use
    ``p (1 - p) / n``.
    """
    m = _metric(metric)
    mo = stats.moments() if isinstance(stats, ArmStats) else stats
    n, mu, cov = mo.augmented()
    a, b = m.vectors(mo.names)
    r, mb, g = _linearize(mu, a, b)
    var_unit = r * (1.0 - r) if m.kind == "proportion" else _variance(g, cov, mu)
    with np.errstate(all="ignore"):
        se = np.sqrt(var_unit / n)
    return {"value": r, "std_error": se, "n": n, "denominator": mb}


def msprt_rho(alpha: float, tuning: float) -> float:
    """Mixing scale of the mixture SPRT, tightest at ``tuning`` units in total.

    ``rho^2 = (-2 ln alpha + ln(1 - 2 ln alpha)) / tuning`` (Howard et al. 2021; GrowthBook's
    ``sequential_tuning_parameter``, default 5000).
    """
    check_param("alpha", alpha, 0.0 < alpha < 1.0, "in (0, 1)")
    check_param("tuning", tuning, tuning > 0 and math.isfinite(tuning), "a positive number")
    la = -2.0 * math.log(alpha)
    return math.sqrt((la + math.log(la + 1.0)) / tuning)


def compare(control: ArmStats | Moments, treatment: ArmStats | Moments, metric: str | Metric, *,
            alpha: Any = 0.05, covariates: Sequence[str] = (),
            sequential_rho: float | None = None) -> dict[str, np.ndarray]:
    """Absolute and relative lift of ``treatment`` over ``control``, with test and intervals.

    Parameters
    ----------
    control, treatment : ArmStats or Moments
        Summaries with the same names; stacked ``Moments`` (leading shape ``(...)``) give
        many comparisons at once.
    metric : str or Metric
    alpha : float or ndarray of shape (...)
        Two-sided level of the intervals is ``1 - alpha`` (may differ per comparison).
    covariates : sequence of str
        CUPED covariates (names in the summaries, e.g. ``"pre:revenue"``); empty for none.
    sequential_rho : float, optional
        If given, an always-valid mixture SPRT with this mixing scale (see :func:`msprt_rho`)
        replaces the fixed-horizon test: ``p_value`` and the intervals are always valid.

    Returns
    -------
    dict of str to ndarray of shape (...)
        ``control``, ``treatment`` (values, CUPED-adjusted if covariates), ``abs_lift``,
        ``abs_se``, ``abs_ci_low``, ``abs_ci_high``, ``rel_lift``, ``rel_se``,
        ``rel_ci_low``, ``rel_ci_high``, ``statistic``, ``df``, ``p_value``, ``n_control``,
        ``n_treatment``, ``var_control``, ``var_treatment`` (the variances of the two values),
        ``theta`` (CUPED coefficients, shape (..., C)), ``test`` (str) and
        ``status`` (see :data:`STATUSES`).

    Notes
    -----
    Let ``v_c = Var(R_c)``, ``v_t = Var(R_t)`` (delta method at the unit level, see
    :func:`estimate`). Then

    - absolute lift ``D = R_t - R_c``, ``Var(D) = v_t + v_c``;
    - relative lift ``L = R_t / R_c - 1``, ``Var(L) = v_t / R_c^2 + R_t^2 v_c / R_c^4``
      (delta method on the ratio of the two means, as in GrowthBook), reported as ``rel_se``;
      the relative interval is Fieller's (see :func:`fieller`), computed with the test's
      critical value, so it excludes 0 exactly when the absolute lift is significant;
    - ``"mean"`` metrics: Welch t-test, Welch-Satterthwaite degrees of freedom
      ``(v_t + v_c)^2 / (v_t^2/(n_t-1) + v_c^2/(n_c-1))``, t quantiles for both intervals;
    - ``"proportion"`` metrics: pooled two-proportion z-test (as ``statsmodels``'
      ``proportions_ztest``), unpooled Wald intervals;
    - ``"ratio"`` metrics: z-test on ``D / sqrt(Var(D))``, normal intervals.

    CUPED (regression adjustment): with covariates ``x`` and ``phi`` the metric's per-unit
    influence ``g.x``, ``theta = Cov(x)^-1 Cov(x, phi)`` computed on the two arms pooled
    (their merged summaries); each arm's value becomes ``R - theta.(mean_arm(x) -
    mean_pooled(x))`` with per-unit variance ``(g - theta)' S (g - theta)``. The test is then a
    Welch t (means) or z (others) on the adjusted values.

    Sequential (mixture SPRT, normal mixing distribution with scale ``rho``): with ``N =
    n_t + n_c`` and ``z = D / sqrt(Var(D))``, the always-valid p-value is
    ``min(1, sqrt(1 + N rho^2) exp(-z^2/2 * N rho^2 / (1 + N rho^2)))`` and the confidence
    sequence is ``D +- sqrt(Var(D)) sqrt(2 (1 + N rho^2) / (N rho^2) ln(sqrt(1 + N rho^2) /
    alpha))``; the relative lift's sequence is Fieller's set with that multiplier.
    """
    m = _metric(metric)
    mc = control.moments() if isinstance(control, ArmStats) else control
    mt = treatment.moments() if isinstance(treatment, ArmStats) else treatment
    if mc.names != mt.names:
        raise ConfigError(f"control and treatment summaries have different names: {mc.names} "
                          f"and {mt.names}")
    names = mc.names
    missing = sorted(m.requires.difference(names))
    nc, muc, covc = mc.augmented()
    nt, mut, covt = mt.augmented()
    shape = np.broadcast_shapes(nc.shape, nt.shape)
    if missing:
        return _undefined(shape, "not_measured", m, len(covariates))
    a, b = m.vectors(names)
    rc, mbc, gc = _linearize(muc, a, b)
    rt, mbt, gt = _linearize(mut, a, b)
    cols = [names.index(c) + 1 if c in names else -1 for c in covariates]
    if -1 in cols:
        raise UnknownNameError(f"covariates {list(covariates)} not all in the summaries "
                               f"({list(names)})")
    theta = np.zeros(shape + (len(cols),))
    if cols:
        npool, mup, covp = (mc + mt).augmented()
        _, _, gp = _linearize(mup, a, b)
        sxx = covp[..., cols, :][..., :, cols]
        sxg = np.einsum("...ij,...j->...i", covp[..., cols, :], gp)
        with np.errstate(all="ignore"):
            # pinv: a covariate without variance gets coefficient 0 instead of a crash
            theta = np.einsum("...ij,...j->...i",
                              np.linalg.pinv(np.nan_to_num(sxx)), np.nan_to_num(sxg))
        rc = rc - np.einsum("...i,...i->...", muc[..., cols] - mup[..., cols], theta)
        rt = rt - np.einsum("...i,...i->...", mut[..., cols] - mup[..., cols], theta)
        gc = gc.copy()
        gt = gt.copy()
        gc[..., cols] -= theta
        gt[..., cols] -= theta
    pooled_prop = m.kind == "proportion" and not cols
    with np.errstate(all="ignore"):
        if pooled_prop:
            vc, vt = rc * (1.0 - rc) / nc, rt * (1.0 - rt) / nt
        else:
            vc, vt = _variance(gc, covc, muc) / nc, _variance(gt, covt, mut) / nt
        d = rt - rc
        var_d = vt + vc
        rel = rt / rc - 1.0
        var_rel = vt / rc**2 + rt**2 * vc / rc**4
        ntot = nc + nt
        if sequential_rho is not None:
            test = "msprt"
            stat = d / np.sqrt(var_d)
            df = np.full(shape, np.nan)
            nr2 = ntot * sequential_rho**2
            p = np.minimum(1.0, np.sqrt(1.0 + nr2) * np.exp(-0.5 * stat**2 * nr2 / (1.0 + nr2)))
        elif m.kind == "mean" or (m.kind == "proportion" and cols):
            test = "welch_t" if m.kind == "mean" else "cuped_z"
            stat = d / np.sqrt(var_d)
            df = var_d**2 / (vt**2 / (nt - 1.0) + vc**2 / (nc - 1.0))
            if m.kind == "mean":
                p = 2.0 * _sps.t.sf(np.abs(stat), df)
            else:
                df = np.full(shape, np.nan)
                p = 2.0 * _sps.norm.sf(np.abs(stat))
        elif pooled_prop:
            test = "two_proportion_z"
            pp = (rc * nc + rt * nt) / ntot
            stat = d / np.sqrt(pp * (1.0 - pp) * (1.0 / nc + 1.0 / nt))
            df = np.full(shape, np.nan)
            p = 2.0 * _sps.norm.sf(np.abs(stat))
        else:
            test = "delta_z"
            stat = d / np.sqrt(var_d)
            df = np.full(shape, np.nan)
            p = 2.0 * _sps.norm.sf(np.abs(stat))
    out = {"control": rc, "treatment": rt, "abs_lift": d, "abs_se": np.sqrt(var_d),
           "rel_lift": rel, "rel_se": np.sqrt(var_rel), "var_control": vc,
           "var_treatment": vt, "statistic": stat, "df": df,
           "p_value": p, "n_control": nc, "n_treatment": nt, "theta": theta}
    out = {k: np.broadcast_to(np.asarray(v, dtype=np.float64), shape if k != "theta"
                              else shape + (len(cols),)).copy() for k, v in out.items()}
    out["test"] = np.full(shape, test, dtype=object)
    status = _status(nc, nt, mbc, mbt, var_d, rc, pooled_prop, stat, shape)
    _blank(out, status)
    out["status"] = status
    intervals(out, alpha, sequential_rho)
    return out


def _status(nc, nt, mbc, mbt, var_d, rc, pooled_prop, stat, shape) -> np.ndarray:
    nc, nt = np.broadcast_to(nc, shape), np.broadcast_to(nt, shape)
    zero_var = ~(var_d > 0) | (pooled_prop & ~np.isfinite(stat))
    return np.select(
        [(nc == 0) | (nt == 0), (mbc == 0) | (mbt == 0), (nc < 2) | (nt < 2), zero_var, rc == 0],
        ["empty_arm", "zero_denominator", "too_few_units", "zero_variance", "zero_control"],
        "ok").astype(object)


def _blank(out: dict[str, np.ndarray], status: np.ndarray) -> None:
    # Undefined results are NaN, named by the status: never a number computed from 0/0 or inf.
    # (a one-unit arm still has a value, only no variance)
    s = status
    for k in ("control", "treatment", "abs_lift", "rel_lift"):
        out[k][(s == "empty_arm") | (s == "zero_denominator")] = np.nan
    bad_test = np.isin(s, ["empty_arm", "zero_denominator", "too_few_units", "zero_variance"])
    for k in ("abs_se", "rel_se", "statistic", "df", "p_value"):
        out[k][bad_test] = np.nan
    for k in ("rel_lift", "rel_se"):
        out[k][s == "zero_control"] = np.nan
    out["theta"][bad_test] = np.nan


def _undefined(shape: tuple, status: str, m: Metric, n_cov: int) -> dict[str, np.ndarray]:
    keys = ("control", "treatment", "abs_lift", "abs_se", "rel_lift", "rel_se", "var_control",
            "var_treatment", "statistic",
            "df", "p_value", "n_control", "n_treatment", "abs_ci_low", "abs_ci_high",
            "rel_ci_low", "rel_ci_high")
    out = {k: np.full(shape, np.nan) for k in keys}
    out["theta"] = np.full(shape + (n_cov,), np.nan)
    out["test"] = np.full(shape, "-", dtype=object)
    out["status"] = np.full(shape, status, dtype=object)
    return out


def intervals(result: dict[str, np.ndarray], alpha: Any,
              sequential_rho: float | None = None) -> dict[str, np.ndarray]:
    """(Re)compute the intervals of a :func:`compare` result at level ``1 - alpha``.

    ``alpha`` may be an array (one level per comparison, e.g. after a multiplicity
    correction). Updates ``result`` in place and returns it.
    """
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), result["abs_lift"].shape)
    if np.any(~((alpha > 0) & (alpha < 1))):
        raise ConfigError(f"alpha must be in (0, 1), got {alpha.min()!r}")
    with np.errstate(all="ignore"):
        if sequential_rho is not None:
            nr2 = (result["n_control"] + result["n_treatment"]) * sequential_rho**2
            crit = np.sqrt(2.0 * (1.0 + nr2) / nr2 * np.log(np.sqrt(1.0 + nr2) / alpha))
        else:
            welch = result["test"] == "welch_t"
            crit = np.where(welch, _sps.t.isf(alpha / 2.0, result["df"]),
                            _sps.norm.isf(alpha / 2.0))
        est, se = result["abs_lift"], result["abs_se"]
        result["abs_ci_low"] = est - crit * se
        result["abs_ci_high"] = est + crit * se
        lo, hi = fieller(result["control"], result["treatment"], result["var_control"],
                         result["var_treatment"], crit)
        undefined = ~np.isfinite(result["rel_se"])
        result["rel_ci_low"] = np.where(undefined, np.nan, lo - 1.0)
        result["rel_ci_high"] = np.where(undefined, np.nan, hi - 1.0)
    return result


def fieller(rc: Any, rt: Any, vc: Any, vt: Any, crit: Any) -> tuple[np.ndarray, np.ndarray]:
    """Fieller confidence set for the ratio ``rt / rc`` of two independent estimates.

    The set is ``{r : (rt - r rc)^2 <= crit^2 (vt + r^2 vc)}``: the ratios ``r`` that a test of
    ``rt = r rc`` with the same critical value does not reject. At ``r = 1`` that test is the
    test of the absolute difference, so the interval excludes 1 exactly when the difference is
    significant (unlike the delta-method interval ``rel +- crit se``, which can disagree with
    the test when the control is noisy). When the control itself is not distinguishable from 0
    (``rc^2 <= crit^2 vc``) the set is unbounded: ``(-inf, inf)``.

    Returns
    -------
    (low, high) : ndarrays of ratios (subtract 1 for a relative lift)
    """
    rc, rt, vc, vt, crit = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64)
                                                 for x in (rc, rt, vc, vt, crit)))
    with np.errstate(all="ignore"):
        c2 = crit * crit
        a = rc * rc - c2 * vc
        b = rt * rc
        disc = b * b - a * (rt * rt - c2 * vt)
        root = np.sqrt(np.maximum(disc, 0.0))
        bounded = a > 0
        low = np.where(bounded, (b - root) / a, -np.inf)
        high = np.where(bounded, (b + root) / a, np.inf)
    nan = ~(np.isfinite(rc) & np.isfinite(rt) & np.isfinite(vc) & np.isfinite(vt)
            & np.isfinite(crit))
    low[nan] = np.nan
    high[nan] = np.nan
    return low, high


# ----------------------------------------------------------------------------- families, SRM


def adjust_pvalues(p: Any, method: Literal["holm", "bh"] | None) -> np.ndarray:
    """Holm (family-wise error) or Benjamini-Hochberg (false discovery rate) adjusted p-values.

    Parameters
    ----------
    p : array-like of shape (m,)
        Raw p-values of the whole family; NaN (a test that could not run) counts as a
        member of the family with p = 1 and stays NaN.
    method : {"holm", "bh", None}

    Returns
    -------
    ndarray of shape (m,)

    Notes
    -----
    Holm: ``p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j))`` over the sorted p-values.
    BH: ``p_(i) -> min_{j >= i} min(1, m p_(j) / j)``.
    """
    check_param("correction", method, method in ("holm", "bh", None), "'holm', 'bh' or None")
    p = np.asarray(p, dtype=np.float64)
    if method is None or p.size == 0:
        return p.copy()
    nan = np.isnan(p)
    q = np.where(nan, 1.0, p)
    m = q.size
    order = np.argsort(q, kind="stable")
    s = q[order]
    rank = np.arange(1, m + 1)
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - rank + 1) * s))
    else:
        adj = np.minimum.accumulate(np.minimum(1.0, m * s / rank)[::-1])[::-1]
    out = np.empty(m)
    out[order] = adj
    out[nan] = np.nan
    return out


def srm_test(users: Mapping[Any, int], expected_weights: Mapping[Any, float] | None = None
             ) -> tuple[float, float, dict[Any, float]]:
    """Sample-ratio-mismatch check: chi-square of unit counts against expected shares.

    Parameters
    ----------
    users : mapping of arm to int
        Units per arm.
    expected_weights : mapping of arm to float, optional
        Positive weights for exactly these arms (normalized); equal weights by default.

    Returns
    -------
    (chi2, p_value, shares)
        ``shares`` are the normalized expected shares. With no units the p-value is NaN.
    """
    arms = list(users)
    if expected_weights is None:
        weights = {a: 1.0 for a in arms}
    else:
        weights = dict(expected_weights)
        unknown = [a for a in arms if a not in weights]
        if unknown:
            raise ConfigError(f"expected_weights must give a weight to every arm; missing "
                              f"{unknown}")
        extra = [a for a in weights if a not in users]
        if extra:
            raise UnknownNameError(f"expected_weights names arms that are not in the data: "
                                   f"{extra}")
    for a, w in weights.items():
        check_param(f"expected_weights[{a!r}]", w,
                    isinstance(w, (int, float, np.number)) and math.isfinite(w) and w > 0,
                    "a positive number")
    total_w = float(sum(weights[a] for a in arms))
    shares = {a: weights[a] / total_w for a in arms}
    obs = np.array([users[a] for a in arms], dtype=np.float64)
    total = obs.sum()
    if total == 0 or len(arms) < 2:
        return math.nan, math.nan, shares
    exp = np.array([shares[a] for a in arms]) * total
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    return chi2, float(_sps.chi2.sf(chi2, len(arms) - 1)), shares

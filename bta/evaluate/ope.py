"""Off-policy evaluation: the value of a new policy estimated from a log written by another.

The log has, per row ``i``, the context ``x_i`` the logging policy ``pi_0`` saw, the action
``a_i`` it took, the reward ``r_i`` that followed and the probability ``pi_0(a_i | x_i)`` with
which it took that action (the decision log's ``propensity`` column, see :mod:`bta.schema`).
The estimators answer: what mean reward per row would the *target* policy ``pi`` have earned?

Inputs are plain arrays, one entry per logged row:

``reward``
    ``r_i``, the observed reward (click, conversion, revenue), finite.
``pscore``
    ``pi_0(a_i | x_i)``, in ``(0, 1]``: the probability that the logging policy took the
    action that was logged. A logging policy that never explores has ``pscore == 1``.
``target_prob``
    ``pi(a_i | x_i)``, in ``[0, 1]``: the probability that the evaluated policy takes that same
    logged action in that same context (1 or 0 for a deterministic target policy).
``q_logged``
    ``q(x_i, a_i)``, a reward model's prediction for the logged action (DR only).
``q_target``
    ``q(x_i, pi) = sum_a pi(a | x_i) q(x_i, a)``, the reward model's expected reward of the
    target policy in context ``x_i``: a sum over *all* actions, not only the logged one. With
    ``pi`` and ``q`` as ``(n, n_actions)`` arrays it is ``(pi * q).sum(axis=1)``.

The importance weight of row ``i`` is ``w_i = target_prob_i / pscore_i``.

What the log cannot show. A row with ``target_prob == 0`` is one where the target policy would
have acted differently; IPW gives it weight 0 and ``unsupported_share`` reports how many such
rows there are. The converse is worse and invisible row by row: where the target policy takes an
action the logging policy *never* takes (``pi_0(a | x) = 0``), no row of the log shows that
action, so IPW and SNIPW silently miss that part of the target's value (they estimate the value
on the logger's support only). What can be reported is ``mean_weight``: its expectation is
``E_x[sum_{a : pi_0(a|x) > 0} pi(a | x)]``, the share of the target policy's probability mass
that the logger covers. A ``mean_weight`` clearly below 1 means the target puts roughly
``1 - mean_weight`` of its mass on actions the log never shows; only DM and DR, through the
reward model's ``q_target``, say anything about those actions, and only as much as the model
can be trusted there.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from numbers import Integral, Real
from typing import Any, ClassVar, Literal

import numpy as np

from bta._params import Interval, Options, validate_args, validate_fields, validate_params
from bta.errors import ConfigError, SchemaError

__all__ = [
    "OPEResult",
    "ESTIMATORS",
    "STATUSES",
    "ipw",
    "clipped_ipw",
    "snipw",
    "dm",
    "dr",
]

Estimator = Literal["ipw", "clipped_ipw", "snipw", "dm", "dr", "clipped_dr"]
CIMethod = Literal["normal", "bootstrap"]
Status = Literal["ok", "too_few_rows", "no_overlap"]
ESTIMATORS: tuple[str, ...] = Estimator.__args__  # type: ignore[attr-defined]
#: ``ok``; ``too_few_rows``: one row, so no standard error or interval (NaN);
#: ``no_overlap``: every weight is 0, so the self-normalized estimate is 0/0 (NaN).
STATUSES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]
_CI_METHODS: tuple[str, ...] = CIMethod.__args__  # type: ignore[attr-defined]
_ALPHA = Interval(Real, 0, 1, closed="neither", desc="in (0, 1)")
_PARAMS: dict[str, list[Any]] = {
    "alpha": [_ALPHA],
    "ci": [Options.one_of(_CI_METHODS)],
    # fewer replicates leave two or three values in each 2.5% tail
    "n_bootstrap": [Interval(Integral, 100, None, closed="left")],
    "clip": [Interval(Real, 0, None, closed="neither")],
}
# Bootstrap replicates are drawn this many row indices at a time, so that memory stays around
# 64 MB whatever n and n_bootstrap are.
_BOOTSTRAP_CHUNK = 1 << 23


@dataclass(frozen=True)
class OPEResult:
    """One off-policy estimate with its interval and diagnostics of the importance weights.

    Parameters
    ----------
    estimator : {"ipw", "clipped_ipw", "snipw", "dm", "dr", "clipped_dr"}
    estimate : float
        Estimated mean reward per row under the target policy.
    std_error : float
        Analytic standard error (from the per-row contributions; delta method for SNIPW),
        whatever ``ci_method`` is. NaN when ``n == 1``.
    ci_low, ci_high : float
        Two-sided ``1 - alpha`` confidence interval.
    alpha : float
        1 minus the confidence level of the interval.
    ci_method : {"normal", "bootstrap"}
    n : int
        Number of logged rows.
    ess : float
        Kish effective sample size of the weights the estimator used,
        ``(sum w)^2 / sum w^2``; equals ``n`` when the target is the logging policy, 0 when
        every weight is 0. NaN for DM given no propensities.
    max_weight : float
        Largest weight used (after clipping, for the clipped estimators).
    mean_weight : float
        Mean weight used; near 1 when the logger covers the target policy (see the module
        notes: well below 1 means the target takes actions that the log never shows).
    unsupported_share : float
        Share of rows whose logged action the target policy never takes (``target_prob == 0``).
    status : {"ok", "too_few_rows", "no_overlap"}
        Why a field is NaN, if one is.
    """

    estimator: Estimator
    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    alpha: float
    ci_method: CIMethod
    n: int
    ess: float
    max_weight: float
    mean_weight: float
    unsupported_share: float
    status: Status = "ok"

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "estimator": [Options.one_of(ESTIMATORS)],
        "ci_method": [Options.one_of(_CI_METHODS)],
        "status": [Options.one_of(STATUSES)],
        "n": [Interval(Integral, 1, None, closed="left")],
        "alpha": [_ALPHA],
    }

    def __post_init__(self) -> None:
        validate_fields(self)


# -- estimators ---------------------------------------------------------------------------------

def ipw(reward: Any, pscore: Any, target_prob: Any, *, clip: float | None = None,
        alpha: float = 0.05, ci: CIMethod = "normal", n_bootstrap: int = 1000,
        random_state: int | np.random.Generator | None = None) -> OPEResult:
    """Inverse propensity weighting (IPW), optionally with clipped weights.

    Parameters
    ----------
    reward : array-like of float, shape (n,)
        Observed rewards ``r_i``.
    pscore : array-like of float, shape (n,)
        ``pi_0(a_i | x_i)`` in ``(0, 1]``.
    target_prob : array-like of float, shape (n,)
        ``pi(a_i | x_i)`` in ``[0, 1]``.
    clip : float, optional
        Upper bound ``lambda > 0`` on the weights; ``None`` keeps them as they are.
    alpha : float, default 0.05
        The interval has confidence ``1 - alpha``.
    ci : {"normal", "bootstrap"}, default "normal"
        Normal approximation, or percentile bootstrap over rows.
    n_bootstrap : int, default 1000
        Bootstrap replicates (``ci="bootstrap"`` only), at least 100.
    random_state : int or numpy.random.Generator, optional
        Seed of the bootstrap.

    Returns
    -------
    OPEResult

    Raises
    ------
    SchemaError
        An array is empty, not 1-d, not numeric, of a length other than ``reward``'s, or holds
        values outside its range (NaN included).
    ConfigError
        ``clip``, ``alpha``, ``ci`` or ``n_bootstrap`` is invalid.

    Notes
    -----
    With ``w_i = pi(a_i|x_i) / pi_0(a_i|x_i)``::

        V_IPW = (1/n) sum_i w_i r_i
        clipped: w_i -> min(w_i, lambda)

    Unbiased when ``pi_0 > 0`` wherever ``pi > 0``; its variance grows with the weights.
    Clipping trades a downward bias (for non-negative rewards) for lower variance. The standard
    error is ``sd(w_i r_i) / sqrt(n)``.

    Examples
    --------
    >>> res = ipw([1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.25, 0.25], [1.0, 0.0, 0.5, 0.5])
    >>> res.estimate
    1.0
    """
    r, p, t = _check_logged(reward, pscore, target_prob)
    w = _weights(p, t, clip)
    name = "ipw" if clip is None else "clipped_ipw"
    return _result(name, w * r, None, w, t, alpha, ci, n_bootstrap, random_state)


def clipped_ipw(reward: Any, pscore: Any, target_prob: Any, clip: float, *,
                alpha: float = 0.05, ci: CIMethod = "normal", n_bootstrap: int = 1000,
                random_state: int | np.random.Generator | None = None) -> OPEResult:
    """IPW with weights clipped at ``clip``: ``ipw(..., clip=clip)``.

    Parameters
    ----------
    reward, pscore, target_prob : array-like of float, shape (n,)
        As in :func:`ipw`.
    clip : float
        Upper bound ``lambda > 0`` on the weights.
    alpha, ci, n_bootstrap, random_state
        As in :func:`ipw`.

    Returns
    -------
    OPEResult

    Notes
    -----
    ::

        V_cIPW = (1/n) sum_i min(w_i, lambda) r_i
    """
    validate_args(_PARAMS, "clipped_ipw", clip=clip)
    return ipw(reward, pscore, target_prob, clip=clip, alpha=alpha, ci=ci,
               n_bootstrap=n_bootstrap, random_state=random_state)


def snipw(reward: Any, pscore: Any, target_prob: Any, *, alpha: float = 0.05,
          ci: CIMethod = "normal", n_bootstrap: int = 1000,
          random_state: int | np.random.Generator | None = None) -> OPEResult:
    """Self-normalized inverse propensity weighting (SNIPW).

    Parameters
    ----------
    reward, pscore, target_prob : array-like of float, shape (n,)
        As in :func:`ipw`.
    alpha, ci, n_bootstrap, random_state
        As in :func:`ipw`.

    Returns
    -------
    OPEResult
        ``estimate`` is NaN with ``status="no_overlap"`` when every weight is 0.

    Raises
    ------
    SchemaError, ConfigError
        As in :func:`ipw`.

    Notes
    -----
    ::

        V_SNIPW = sum_i w_i r_i / sum_i w_i

    Biased by O(1/n) but consistent, never outside the range of the rewards, and invariant to
    a constant factor on the weights. Standard error by the delta method:
    ``sd(psi_i) / sqrt(n)`` with ``psi_i = w_i (r_i - V_SNIPW) / mean(w)``.
    """
    r, p, t = _check_logged(reward, pscore, target_prob)
    w = _weights(p, t, None)
    return _result("snipw", w * r, w, w, t, alpha, ci, n_bootstrap, random_state)


def dm(q_target: Any, *, pscore: Any = None, target_prob: Any = None, alpha: float = 0.05,
       ci: CIMethod = "normal", n_bootstrap: int = 1000,
       random_state: int | np.random.Generator | None = None) -> OPEResult:
    """Direct method (DM): the reward model's prediction for the target policy, averaged.

    Parameters
    ----------
    q_target : array-like of float, shape (n,)
        ``q(x_i, pi) = sum_a pi(a | x_i) q(x_i, a)`` per logged context.
    pscore, target_prob : array-like of float, shape (n,), optional
        Given together, only to fill the weight diagnostics (``ess``, ``max_weight``,
        ``mean_weight``, ``unsupported_share``); NaN without them.
    alpha, ci, n_bootstrap, random_state
        As in :func:`ipw`.

    Returns
    -------
    OPEResult

    Raises
    ------
    SchemaError, ConfigError
        As in :func:`ipw`; ConfigError also when only one of ``pscore``, ``target_prob``
        is given.

    Notes
    -----
    ::

        V_DM = (1/n) sum_i q(x_i, pi)

    Low variance, but biased by exactly the reward model's error under the target policy. The
    interval covers only the sampling of contexts, not the model's error: it is too narrow,
    and misplaced, when the model is wrong.
    """
    q = _as_float_1d("q_target", q_target)
    _check_finite("q_target", q)
    if (pscore is None) != (target_prob is None):
        given = "pscore" if target_prob is None else "target_prob"
        raise ConfigError(f"pscore and target_prob must be given together, got only {given}")
    if pscore is None:
        w = t = None
    else:
        _, p, t = _check_logged(q, pscore, target_prob, first="q_target")
        w = _weights(p, t, None)
    return _result("dm", q, None, w, t, alpha, ci, n_bootstrap, random_state)


def dr(reward: Any, pscore: Any, target_prob: Any, q_logged: Any, q_target: Any, *,
       clip: float | None = None, alpha: float = 0.05, ci: CIMethod = "normal",
       n_bootstrap: int = 1000,
       random_state: int | np.random.Generator | None = None) -> OPEResult:
    """Doubly robust (DR): the direct method corrected by importance-weighted residuals.

    Parameters
    ----------
    reward, pscore, target_prob : array-like of float, shape (n,)
        As in :func:`ipw`.
    q_logged : array-like of float, shape (n,)
        ``q(x_i, a_i)``, the reward model's prediction for the logged action.
    q_target : array-like of float, shape (n,)
        ``q(x_i, pi) = sum_a pi(a | x_i) q(x_i, a)``.
    clip : float, optional
        Upper bound on the weights of the correction term (estimator ``"clipped_dr"``).
    alpha, ci, n_bootstrap, random_state
        As in :func:`ipw`.

    Returns
    -------
    OPEResult

    Raises
    ------
    SchemaError, ConfigError
        As in :func:`ipw`.

    Notes
    -----
    ::

        V_DR = (1/n) sum_i [ q(x_i, pi) + w_i (r_i - q(x_i, a_i)) ]

    Unbiased when the propensities are right (whatever the model) or when the model is right
    (whatever the weights); with a good model its variance is well below IPW's. Under support
    deficiency (module notes) the ``q(x_i, pi)`` term still covers the actions the log never
    shows, as well as the model does. Standard error ``sd(contribution_i) / sqrt(n)``.

    Examples
    --------
    >>> res = dr([1.0, 0.0], [0.5, 0.5], [1.0, 0.0], q_logged=[0.5, 0.5], q_target=[0.7, 0.2])
    >>> round(res.estimate, 6)
    0.95
    """
    r, p, t = _check_logged(reward, pscore, target_prob)
    ql = _as_float_1d("q_logged", q_logged)
    qt = _as_float_1d("q_target", q_target)
    for name, arr in (("q_logged", ql), ("q_target", qt)):
        _check_length(name, arr, r.shape[0])
        _check_finite(name, arr)
    w = _weights(p, t, clip)
    name = "dr" if clip is None else "clipped_dr"
    return _result(name, qt + w * (r - ql), None, w, t, alpha, ci, n_bootstrap, random_state)


# -- shared machinery ---------------------------------------------------------------------------

def _result(name: str, num: np.ndarray, den: np.ndarray | None, w: np.ndarray | None,
            t: np.ndarray | None, alpha: float, ci: str, n_bootstrap: int,
            random_state: Any) -> OPEResult:
    """Estimate ``sum num / sum den`` (``den`` None: the mean of ``num``) with interval."""
    validate_args(_PARAMS, name, alpha=alpha, ci=ci)
    if ci == "bootstrap":
        validate_args(_PARAMS, name, n_bootstrap=n_bootstrap)
    n = num.shape[0]
    status = "ok"
    if den is None:
        estimate = float(num.mean())
        contrib = num
    elif den.sum() > 0:
        mean_den = den.mean()
        estimate = float(num.sum() / den.sum())
        # influence function of a ratio of means (delta method)
        contrib = (num - estimate * den) / mean_den
    else:
        estimate, contrib, status = float("nan"), None, "no_overlap"
    if n < 2 and status == "ok":
        status = "too_few_rows"
    se = float(contrib.std(ddof=1) / np.sqrt(n)) if status == "ok" else float("nan")
    if status != "ok":
        lo = hi = float("nan")
    elif ci == "normal":
        z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
        lo, hi = estimate - z * se, estimate + z * se
    else:
        lo, hi = _bootstrap(num, den, alpha, int(n_bootstrap), random_state)
    if w is None:
        ess = max_w = mean_w = unsupported = float("nan")
    else:
        sq = float(np.dot(w, w))
        # all weights 0: no row speaks for the target policy, so no effective sample at all
        ess = float(w.sum()) ** 2 / sq if sq > 0 else 0.0
        max_w, mean_w = float(w.max()), float(w.mean())
        unsupported = float(np.count_nonzero(t == 0) / n)
    return OPEResult(estimator=name, estimate=estimate, std_error=se, ci_low=float(lo),
                     ci_high=float(hi), alpha=float(alpha), ci_method=ci, n=int(n), ess=ess,
                     max_weight=max_w, mean_weight=mean_w, unsupported_share=unsupported,
                     status=status)


def _bootstrap(num: np.ndarray, den: np.ndarray | None, alpha: float, n_boot: int,
               random_state: Any) -> tuple[float, float]:
    """Percentile interval of ``sum num* / sum den*`` over rows resampled with replacement."""
    rng = np.random.default_rng(random_state)
    n = num.shape[0]
    reps = np.empty(n_boot)
    per_chunk = max(1, _BOOTSTRAP_CHUNK // n)
    for start in range(0, n_boot, per_chunk):
        stop = min(n_boot, start + per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        top = num[idx].sum(axis=1)
        bottom = float(n) if den is None else den[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps[start:stop] = top / bottom
    # a SNIPW replicate whose resample holds only zero weights is 0/0; it has no estimate, so
    # it is left out of the percentiles rather than counted as any value
    lo, hi = np.nanquantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def _weights(p: np.ndarray, t: np.ndarray, clip: float | None) -> np.ndarray:
    validate_params({"clip": [*_PARAMS["clip"], None]}, {"clip": clip}, "ipw")
    w = t / p
    return w if clip is None else np.minimum(w, float(clip))


def _check_logged(reward: Any, pscore: Any, target_prob: Any,
                  first: str = "reward") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = _as_float_1d(first, reward)
    n = r.shape[0]
    _check_finite(first, r)
    p = _as_float_1d("pscore", pscore)
    _check_length("pscore", p, n, first)
    _check_no_nan("pscore", p)
    _check_range("pscore", p, (p > 0) & (p <= 1), "in (0, 1]")
    t = _as_float_1d("target_prob", target_prob)
    _check_length("target_prob", t, n, first)
    _check_no_nan("target_prob", t)
    _check_range("target_prob", t, (t >= 0) & (t <= 1), "in [0, 1]")
    return r, p, t


def _as_float_1d(name: str, x: Any) -> np.ndarray:
    """A 1-d, non-empty, contiguous float64 copy-or-view of ``x``; missing values become NaN."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise SchemaError(f"{name} must be an array of numbers, got "
                          f"{type(x).__name__} with dtype {getattr(x, 'dtype', None)}") from None
    if arr.ndim != 1:
        raise SchemaError(f"{name} must be 1-d, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise SchemaError(f"{name} must have at least one row, got 0 rows")
    return np.ascontiguousarray(arr)


def _check_length(name: str, arr: np.ndarray, n: int, first: str = "reward") -> None:
    if arr.shape[0] != n:
        raise SchemaError(f"{name} must have the same length as {first} ({n}), "
                          f"got {arr.shape[0]}")


def _rows(k: int) -> str:
    return f"{k} row" if k == 1 else f"{k} rows"


def _check_no_nan(name: str, arr: np.ndarray) -> None:
    bad = np.isnan(arr)
    if bad.any():
        raise SchemaError(f"{name} must not be NaN, got NaN in {_rows(int(bad.sum()))} "
                          f"(first at row {int(np.argmax(bad))})")


def _check_finite(name: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise SchemaError(f"{name} must be finite, got {float(arr[i])!r} at row {i} "
                          f"({_rows(int(bad.sum()))} not finite)")


def _check_range(name: str, arr: np.ndarray, ok: np.ndarray, expected: str) -> None:
    if not ok.all():
        bad = ~ok
        i = int(np.argmax(bad))
        raise SchemaError(f"{name} must be {expected}, got {float(arr[i])!r} at row {i} "
                          f"({_rows(int(bad.sum()))} out of range)")

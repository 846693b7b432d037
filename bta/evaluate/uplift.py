"""Uplift and Qini curves: does a targeting score rank first the users whom the ad moves most?

Inputs come from a randomized log: per row a targeting ``score``, whether the row was
``treated`` (saw the ad) and its ``outcome``. Rows are ranked by score, highest first; the curve
at ``k`` rows says how much the treatment adds among the top ``k``.

Definitions. Let the top ``k`` rows hold ``N_T(k)`` treated and ``N_C(k)`` control rows and let
``ybar_T(k)``, ``ybar_C(k)`` be their mean outcomes. With a ``propensity`` ``e_i`` (probability
that row ``i`` was treated) the means are weighted (Hajek): treated rows by ``1 / e_i``,
control rows by ``1 / (1 - e_i)``. Then::

    uplift curve  U(k) = (ybar_T(k) - ybar_C(k)) * k
    Qini curve    Q(k) = (ybar_T(k) - ybar_C(k)) * N_T(k)
                       = Y_T(k) - Y_C(k) * N_T(k) / N_C(k)      (no propensity)

where ``Y_T(k)``, ``Y_C(k)`` are the summed outcomes. ``U`` is the extra outcome had the top
``k`` all been treated; ``Q`` is the extra outcome among the treated rows of the top ``k``. Both
match scikit-uplift's ``uplift_curve`` and ``qini_curve`` and causalml's gain and Qini. A
constant propensity (a treatment share fixed by design) cancels from the within-group means, so
it gives the same curves as none: unequal group sizes need no correction here.

Where the top ``k`` holds no control (no treated) rows, ``ybar_C(k)`` (``ybar_T(k)``) is taken
as 0 — there is nothing to subtract yet, the same convention as scikit-uplift; ``n_one_sided``
counts the curve points that rest on it.

Ties. Scores within ``tie_tol`` of their neighbour in sorted order form one block that enters
the curve at once, so the curve does not depend on the order of tied rows. Between points the
curve is a straight line: across a tied block, that is the path the cumulative sums follow on
average when the block's rows come in random order.

Random baseline. A score that carries no information has, in expectation, the straight line
from ``(0, 0)`` to the overall value ``(1, V(n))``: its area is ``V(n) / 2``.

Areas are taken over the *fraction* of rows targeted, ``k / n`` in ``[0, 1]`` (trapezoids
between points, exact for the piecewise-linear curve), so they are in the curve's units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from numbers import Real
from typing import Any, ClassVar, Literal, Mapping

import numpy as np

from bta._params import Boolean, Interval, Options, validate_args, validate_fields
from bta.errors import ConfigError, SchemaError
from bta.evaluate.ope import _as_float_1d, _check_finite, _check_length, _check_range

__all__ = [
    "UpliftCurve",
    "uplift_curve",
    "qini_curve",
    "auuc",
    "qini_coefficient",
    "plot_uplift",
    "DEFAULT_TIE_TOL",
]

CurveKind = Literal["uplift", "qini"]
_KINDS: tuple[str, ...] = CurveKind.__args__  # type: ignore[attr-defined]
_PARAMS: dict[str, list[Any]] = {
    "continuous": [Boolean(desc="a bool")],
    "tie_tol": [Interval(Real, 0, None, closed="left", desc="a non-negative number")],
    "propensity": [Interval(Real, 0, 1, closed="neither", desc="in (0, 1)")],  # one for all rows
}
#: Scores closer than this are one tie. Recomputing the same float64 score by another path
#: (summation order, float32 storage widened) moves it by far less; scores that differ in any
#: sense a ranking should respect differ by far more.
DEFAULT_TIE_TOL = 1e-12


@dataclass(frozen=True, eq=False)
class UpliftCurve:
    """An uplift or Qini curve at the boundaries of the score's tie blocks.

    Parameters
    ----------
    kind : {"uplift", "qini"}
    n_targeted : ndarray of int64, shape (m + 1,)
        Rows targeted at each point: 0, then the end of each tie block, up to ``n``.
    value : ndarray of float, shape (m + 1,)
        Curve value at each point (module notes); ``value[0] == 0``.
    n_treated, n_control : int
        Treated and control rows in the log.
    n_one_sided : int
        Points whose top rows were all treated or all control (module notes).
    """

    kind: CurveKind
    n_targeted: np.ndarray
    value: np.ndarray
    n_treated: int
    n_control: int
    n_one_sided: int = 0

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {"kind": [Options.one_of(_KINDS)]}

    def __post_init__(self) -> None:
        validate_fields(self)
        k = np.asarray(self.n_targeted, dtype=np.int64)
        v = np.asarray(self.value, dtype=np.float64)
        if k.ndim != 1 or k.shape != v.shape or k.shape[0] < 2:
            raise ConfigError(f"n_targeted and value must be 1-d of one length >= 2, "
                              f"got shapes {k.shape} and {v.shape}")
        if k[0] != 0 or np.any(np.diff(k) <= 0):
            raise ConfigError("n_targeted must start at 0 and increase strictly, "
                              f"got {k[:5].tolist()}...")
        if k[-1] != self.n_treated + self.n_control:
            raise ConfigError(f"n_targeted must end at n_treated + n_control "
                              f"({self.n_treated + self.n_control}), got {int(k[-1])}")
        object.__setattr__(self, "n_targeted", k)
        object.__setattr__(self, "value", v)

    @property
    def n(self) -> int:
        """Rows in the log."""
        return int(self.n_targeted[-1])

    @property
    def fraction(self) -> np.ndarray:
        """Share of rows targeted at each point, shape (m + 1,)."""
        return self.n_targeted / self.n

    @property
    def overall(self) -> float:
        """Value with every row targeted, ``V(n)``."""
        return float(self.value[-1])

    @property
    def baseline(self) -> np.ndarray:
        """Random-targeting line at each point, ``V(n) * k / n``, shape (m + 1,)."""
        return self.overall * self.fraction

    @property
    def area(self) -> float:
        """Area under the curve over the fraction targeted (AUUC for the uplift curve)."""
        f = self.fraction
        return float(np.sum(np.diff(f) * (self.value[1:] + self.value[:-1])) / 2.0)

    @property
    def baseline_area(self) -> float:
        """Area under the random-targeting line, ``V(n) / 2``."""
        return self.overall / 2.0


def uplift_curve(score: Any, treated: Any, outcome: Any, *, propensity: Any = None,
                 continuous: bool = False, tie_tol: float = DEFAULT_TIE_TOL) -> UpliftCurve:
    """Uplift curve ``U(k) = (ybar_T(k) - ybar_C(k)) * k`` of a targeting score.

    Parameters
    ----------
    score : array-like of float, shape (n,)
        Targeting score; higher is targeted first. Finite.
    treated : array-like of bool or {0, 1}, shape (n,)
        Whether the row was treated. Both groups must be present.
    outcome : array-like of float, shape (n,)
        0/1 outcome (click, conversion), or any finite value with ``continuous=True``.
    propensity : float or array-like of float, shape (n,), optional
        Probability in ``(0, 1)`` that the row was treated; weights the group means (module
        notes). A single number has no effect on the curve.
    continuous : bool, default False
        Accept outcomes other than 0 and 1 (revenue).
    tie_tol : float, default ``DEFAULT_TIE_TOL``
        Scores this close to their neighbour are tied.

    Returns
    -------
    UpliftCurve

    Raises
    ------
    SchemaError
        An array is empty, not 1-d, of a length other than ``score``'s, or holds a value out of
        range; ``treated`` lacks treated or control rows.
    ConfigError
        ``tie_tol``, ``continuous`` or a scalar ``propensity`` is invalid.

    Examples
    --------
    >>> c = uplift_curve([0.9, 0.8, 0.2, 0.1], [1, 0, 1, 0], [1, 0, 0, 0])
    >>> c.n_targeted.tolist(), c.value.tolist()
    ([0, 1, 2, 3, 4], [0.0, 1.0, 2.0, 1.5, 2.0])
    """
    return _curve("uplift", score, treated, outcome, propensity, continuous, tie_tol)


def qini_curve(score: Any, treated: Any, outcome: Any, *, propensity: Any = None,
               continuous: bool = False, tie_tol: float = DEFAULT_TIE_TOL) -> UpliftCurve:
    """Qini curve ``Q(k) = Y_T(k) - Y_C(k) N_T(k) / N_C(k)`` of a targeting score.

    Parameters and errors as in :func:`uplift_curve`; with a ``propensity`` the curve is
    ``(ybar_T(k) - ybar_C(k)) * N_T(k)`` with weighted means.

    Returns
    -------
    UpliftCurve

    Examples
    --------
    >>> q = qini_curve([3, 3, 2, 1], [1, 0, 1, 0], [1, 1, 1, 0])
    >>> q.n_targeted.tolist(), q.value.tolist()
    ([0, 2, 3, 4], [0.0, 0.0, 0.0, 1.0])
    """
    return _curve("qini", score, treated, outcome, propensity, continuous, tie_tol)


def auuc(score: Any, treated: Any, outcome: Any, *, propensity: Any = None,
         continuous: bool = False, tie_tol: float = DEFAULT_TIE_TOL) -> float:
    """Area under the uplift curve over the fraction targeted.

    Parameters and errors as in :func:`uplift_curve`.

    Returns
    -------
    float
        ``integral_0^1 U(f n) df``; a score with no information has about
        ``U(n) / 2`` (``UpliftCurve.baseline_area``).
    """
    return uplift_curve(score, treated, outcome, propensity=propensity, continuous=continuous,
                        tie_tol=tie_tol).area


def qini_coefficient(score: Any, treated: Any, outcome: Any, *, propensity: Any = None,
                     continuous: bool = False, tie_tol: float = DEFAULT_TIE_TOL) -> float:
    """Qini coefficient: the score's area above random, relative to the perfect score's.

    Parameters and errors as in :func:`uplift_curve`.

    Returns
    -------
    float
        ``(A - A_random) / (A_perfect - A_random)`` with ``A`` the Qini curve's area; NaN when
        the perfect score is no better than random (no treated row responds).

    Notes
    -----
    The perfect score ranks treated rows by outcome, highest first, and control rows after
    them by outcome, lowest first (scikit-uplift's ``perfect_qini_curve``):
    ``score_perfect = y if treated else -y``. 0 is random targeting, 1 the perfect score.
    For 0/1 outcomes no score's curve rises above the perfect one until the control responders
    enter (there the perfect curve is ``min(k, number of treated responders)``, an upper bound
    of every Qini curve). After that point the ratio ``N_T(k) / N_C(k)`` can favour another
    order, so in small logs the coefficient can exceed 1; read it as a normalized area, not
    as a share of an attainable maximum.
    """
    curve = qini_curve(score, treated, outcome, propensity=propensity, continuous=continuous,
                       tie_tol=tie_tol)
    t = _as_float_1d("treated", treated) == 1.0
    y = _as_float_1d("outcome", outcome)
    perfect = qini_curve(np.where(t, y, -y), t, y, propensity=propensity, continuous=continuous,
                         tie_tol=tie_tol)
    room = perfect.area - perfect.baseline_area
    return float((curve.area - curve.baseline_area) / room) if room > 0 else float("nan")


def plot_uplift(curves: UpliftCurve | Mapping[str, UpliftCurve], path: str | Path, *,
                title: str | None = None) -> Path:
    """Save a PNG of one or more curves of one kind, each with its random baseline.

    Parameters
    ----------
    curves : UpliftCurve or mapping of str to UpliftCurve
        The curves, by legend label.
    path : str or Path
        Where to write the PNG.
    title : str, optional

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        No curve, or curves of both kinds.
    ImportError
        matplotlib is not installed (``pip install 'bta[plot]'``).
    """
    if isinstance(curves, UpliftCurve):
        named = {"score": curves}
    else:
        named = dict(curves) if isinstance(curves, Mapping) else {}
    if not named or not all(isinstance(c, UpliftCurve) for c in named.values()):
        raise ConfigError("curves must be an UpliftCurve or a non-empty mapping of names to "
                          f"UpliftCurve, got {type(curves).__name__}")
    kinds = sorted({c.kind for c in named.values()})
    if len(kinds) > 1:
        raise ConfigError(f"curves must all be of one kind, got {kinds}")
    from bta._plot import new_figure

    fig = new_figure(6.0, 4.5, "plot_uplift")
    ax = fig.add_subplot()
    for label, c in named.items():
        (line,) = ax.plot(c.fraction, c.value, label=f"{label} (area {c.area:.4g})")
        ax.plot([0.0, 1.0], [0.0, c.overall], linestyle="--", color=line.get_color(),
                linewidth=0.8, label=f"{label}: random")
    ax.set_xlabel("fraction of rows targeted (by score, highest first)")
    ax.set_ylabel("incremental outcome" + (" among the treated" if kinds[0] == "qini" else ""))
    ax.set_title(title if title is not None else f"{kinds[0].capitalize()} curve")
    ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, format="png", dpi=120)
    return path


# -- computation --------------------------------------------------------------------------------

def _curve(kind: str, score: Any, treated: Any, outcome: Any, propensity: Any,
           continuous: bool, tie_tol: float) -> UpliftCurve:
    validate_args(_PARAMS, kind, continuous=continuous, tie_tol=tie_tol)
    s, t, y, w = _check_inputs(score, treated, outcome, propensity, continuous)
    n = s.shape[0]
    # Sorting on every column (score descending first) makes the sorted arrays, and so every
    # cumulative sum, bit-identical for any permutation of the input rows.
    order = np.lexsort((w, y, t, -s))
    s, t, y, w = s[order], t[order], y[order], w[order]
    ends = np.append(np.flatnonzero(s[:-1] - s[1:] > tie_tol), n - 1)
    is_t = t == 1.0
    wt, wc = np.where(is_t, w, 0.0), np.where(is_t, 0.0, w)
    sum_t, sum_c = np.cumsum(wt * y)[ends], np.cumsum(wc * y)[ends]
    w_t, w_c = np.cumsum(wt)[ends], np.cumsum(wc)[ends]
    # an empty group's mean is taken as 0: there is nothing to subtract yet (module notes)
    mean_t = np.divide(sum_t, w_t, out=np.zeros_like(sum_t), where=w_t > 0)
    mean_c = np.divide(sum_c, w_c, out=np.zeros_like(sum_c), where=w_c > 0)
    k = ends.astype(np.int64) + 1
    scale = k.astype(np.float64) if kind == "uplift" else np.cumsum(is_t)[ends].astype(np.float64)
    value = (mean_t - mean_c) * scale
    n_treated = int(is_t.sum())
    return UpliftCurve(kind=kind, n_targeted=np.concatenate(([0], k)),
                       value=np.concatenate(([0.0], value)), n_treated=n_treated,
                       n_control=n - n_treated,
                       n_one_sided=int(np.count_nonzero((w_t == 0) | (w_c == 0))))


def _check_inputs(score: Any, treated: Any, outcome: Any, propensity: Any,
                  continuous: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    s = _as_float_1d("score", score)
    n = s.shape[0]
    _check_finite("score", s)
    t = _as_float_1d("treated", treated)
    _check_length("treated", t, n, "score")
    _check_range("treated", t, (t == 0) | (t == 1), "boolean or 0/1")
    y = _as_float_1d("outcome", outcome)
    _check_length("outcome", y, n, "score")
    if continuous:
        _check_finite("outcome", y)
    else:
        _check_range("outcome", y, (y == 0) | (y == 1),
                     "0 or 1 (pass continuous=True for other outcomes)")
    n_t = int(np.count_nonzero(t))
    if n_t == 0 or n_t == n:
        raise SchemaError(f"treated must hold both treated and control rows, got {n_t} treated "
                          f"and {n - n_t} control")
    if propensity is None:
        return s, t, y, np.ones(n)
    if np.ndim(propensity) == 0:
        validate_args(_PARAMS, "uplift", propensity=propensity)
        # a constant share cancels from the weighted means (module notes)
        return s, t, y, np.ones(n)
    e = _as_float_1d("propensity", propensity)
    _check_length("propensity", e, n, "score")
    _check_range("propensity", e, (e > 0) & (e < 1), "in (0, 1)")
    return s, t, y, np.where(t == 1, 1.0 / e, 1.0 / (1.0 - e))

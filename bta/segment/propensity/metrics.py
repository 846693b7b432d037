"""Ranking and calibration metrics of propensity scores (:func:`roc_auc`,
:func:`calibration_table`, :class:`PropensityReport`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bta.errors import SchemaError, check_param
from bta.segment.propensity.data import _labels

__all__ = ["PropensityReport", "calibration_table", "roc_auc"]


def _scores(s: Any, n: int, name: str = "y_score") -> np.ndarray:
    arr = np.asarray(s, dtype=np.float64)
    if arr.shape != (n,):
        raise SchemaError(f"{name} must have shape ({n},) like y_true, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise SchemaError(f"{name} must be finite, got {int((~np.isfinite(arr)).sum())} "
                          "NaN or infinite values")
    return arr


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve, ties counted as half (the Mann-Whitney statistic).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 or boolean labels.
    y_score : array-like of shape (n,)
        Finite scores; higher means more likely positive.

    Returns
    -------
    float
        NaN when ``y_true`` holds only one class (the AUC is undefined, not 0.5).

    Raises
    ------
    SchemaError
        If labels are not 0/1, or scores are not finite or not of the labels' shape.

    Notes
    -----
    With ``r_i`` the rank of ``y_score[i]`` among all scores (1 = lowest; tied scores get the
    mean of the ranks they span), ``n1`` positives and ``n0`` negatives:

    .. math:: \\mathrm{AUC} = \\frac{\\sum_{i: y_i = 1} r_i - n_1 (n_1 + 1) / 2}{n_1 n_0}

    which equals ``P(s+ > s-) + P(s+ = s-) / 2`` over positive/negative pairs.

    Examples
    --------
    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8])
    0.875
    """
    y = _labels(y_true, "y_true")
    s = _scores(y_score, y.shape[0])
    n1 = int(y.sum())
    n0 = y.shape[0] - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # tie groups: positions [first, last] share the mean rank (first + last) / 2 + 1
    new_group = np.empty(len(s), dtype=bool)
    new_group[0] = True
    np.not_equal(sorted_s[1:], sorted_s[:-1], out=new_group[1:])
    group = np.cumsum(new_group) - 1
    first = np.flatnonzero(new_group)
    last = np.append(first[1:] - 1, len(s) - 1)
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    u = float(ranks[y == 1].sum()) - n1 * (n1 + 1) / 2.0
    return u / (float(n1) * float(n0))


def calibration_table(y_true: Any, y_score: Any, n_bins: int = 10) -> pd.DataFrame:
    """Mean predicted probability against the observed rate, in equal-count score bins.

    Parameters
    ----------
    y_true : array-like of shape (n,)
    y_score : array-like of shape (n,)
    n_bins : int, default 10
        Deciles by default; fewer bins when there are fewer users than bins.

    Returns
    -------
    pandas.DataFrame
        One row per bin, lowest scores first: ``bin`` (1-based), ``n``, ``score_min``,
        ``score_max``, ``mean_predicted``, ``observed_rate``, ``positives``.

    Notes
    -----
    Users are sorted by score (stable, so ties keep input order) and split into ``n_bins``
    consecutive groups whose sizes differ by at most one; a run of tied scores may straddle two
    bins. A calibrated model has ``mean_predicted ~= observed_rate`` in every bin.
    """
    y = _labels(y_true, "y_true")
    s = _scores(y_score, y.shape[0])
    check_param("n_bins", n_bins, isinstance(n_bins, (int, np.integer)) and n_bins >= 1,
                "an integer >= 1")
    order = np.argsort(s, kind="mergesort")
    rows = []
    for b, idx in enumerate(np.array_split(order, min(int(n_bins), max(len(s), 1)))):
        if idx.size == 0:
            continue
        rows.append({"bin": b + 1, "n": int(idx.size), "score_min": float(s[idx].min()),
                     "score_max": float(s[idx].max()), "mean_predicted": float(s[idx].mean()),
                     "observed_rate": float(y[idx].mean()), "positives": int(y[idx].sum())})
    cols = ["bin", "n", "score_min", "score_max", "mean_predicted", "observed_rate", "positives"]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------ reports


@dataclass(frozen=True, eq=False)
class PropensityReport:
    """What :meth:`PropensityModel.fit` learned and how well it ranks held-out users.

    Attributes
    ----------
    auc : float
        ROC AUC on the validation users (NaN without validation).
    auc_train : float
        ROC AUC on the training users (in-sample; compare with ``auc`` for overfitting).
    n_train, n_valid : int
    positives_train, positives_valid : int
    base_rate : float
        Positive share among the training users.
    best_iteration : int
        Trees kept (the early-stopping optimum, or ``num_boost_round``).
    calibration : pandas.DataFrame
        :func:`calibration_table` (deciles) on the validation users (training users without
        validation).
    importance : pandas.Series
        Total split gain per feature, largest first.
    label : str or None
        The label's description, when given to ``fit``.
    """

    auc: float
    auc_train: float
    n_train: int
    n_valid: int
    positives_train: int
    positives_valid: int
    base_rate: float
    best_iteration: int
    calibration: pd.DataFrame = field(repr=False)
    importance: pd.Series = field(repr=False)
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (calibration as records, importance as a mapping)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("calibration", "importance")}
        for k in ("auc", "auc_train", "base_rate"):
            out[k] = None if math.isnan(out[k]) else out[k]
        out["calibration"] = self.calibration.to_dict(orient="records")
        out["importance"] = {str(k): float(v) for k, v in self.importance.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PropensityReport":
        kw = dict(d)
        for k in ("auc", "auc_train", "base_rate"):
            kw[k] = math.nan if kw[k] is None else float(kw[k])
        kw["calibration"] = pd.DataFrame(kw["calibration"])
        kw["importance"] = pd.Series(kw["importance"], dtype=np.float64, name="gain")
        return cls(**kw)

"""Propensity segments: point-in-time training sets and a LightGBM model that scores users.

:func:`training_set` builds features at ``as_of`` and labels from the window that follows it;
:class:`PropensityModel` learns ``P(label | features)`` with LightGBM, reports held-out AUC and a
calibration table, scores any :class:`~bta.features.FeatureMatrix` (aligned by feature name) and
cuts a :class:`~bta.segment.book.Segment` from the scores.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from bta.errors import ConfigError, NotFittedError, SchemaError, UnknownNameError, check_param
from bta.events import EventLog, to_epoch_ms, to_millis
from bta.features.batch import build_features
from bta.features.matrix import FeatureMatrix, layout_for
from bta.features.spec import FeatureSpec, duration_name
from bta.segment.book import Segment

__all__ = [
    "LabelReport",
    "TrainingSet",
    "training_set",
    "PropensityReport",
    "PropensityModel",
    "roc_auc",
    "calibration_table",
    "FORMAT_VERSION",
    "DEFAULT_PARAMS",
]

logger = logging.getLogger("bta")

#: Version of the JSON written by :meth:`PropensityModel.save`.
FORMAT_VERSION = 1

#: LightGBM parameters used unless ``params`` overrides them.
#:
#: Rare positives (a few percent or less) shape these choices:
#:
#: - no class reweighting (``is_unbalance`` / ``scale_pos_weight`` left off): reweighting barely
#:   changes the ranking of a boosted tree model but inflates every probability, and the
#:   calibration table, the ``threshold`` of :meth:`PropensityModel.segment` and expected-value
#:   bidding downstream all read scores as probabilities. ``boost_from_average`` (LightGBM's
#:   default) starts from the base-rate log-odds, so the first trees are not spent on the prior.
#:   Pass ``{"scale_pos_weight": w}`` when only the ranking matters;
#: - ``min_data_in_leaf=50`` and ``min_sum_hessian_in_leaf=1.0``: with p ~ 1% a leaf's hessian
#:   is about ``0.01 * n``, so a leaf needs ~100 users before it may split off, which keeps
#:   leaves from isolating a handful of positives;
#: - ``lambda_l2=1.0``, ``feature_fraction=0.8``, ``bagging_fraction=0.8``: mild regularization
#:   for wide (hundreds of columns), mostly-zero behavioral features;
#: - early stopping watches the validation log-loss, not AUC: AUC only sees the ranking and
#:   stalls while the probabilities are still far from the observed rates;
#: - ``deterministic`` with ``force_row_wise``: the same data, parameters and seed give the
#:   same model whatever the thread count (LightGBM otherwise picks row/column-wise histograms by
#:   timing, which differs between runs).
DEFAULT_PARAMS: Mapping[str, Any] = {
    "objective": "binary",
    "metric": "binary_logloss",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "min_sum_hessian_in_leaf": 1.0,
    "lambda_l2": 1.0,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}

# Parameters the model sets itself; LightGBM's aliases for them would silently override.
_RESERVED = {
    "num_iterations", "num_iteration", "n_iter", "num_tree", "num_trees", "num_round",
    "num_rounds", "nrounds", "num_boost_round", "n_estimators", "max_iter",
    "early_stopping_round", "early_stopping_rounds", "early_stopping", "n_iter_no_change",
    "seed", "random_seed", "random_state", "num_threads", "num_thread", "nthread", "nthreads",
    "n_jobs",
}
_OBJECTIVE_KEYS = ("objective", "objective_type", "app", "application", "loss")
# Rows scored per LightGBM call: the dense block is rows x features x 8 bytes, so 32768 rows of
# 500 features is 130 MB, small enough beside 2M users and large enough to amortize the call.
_CHUNK_ROWS = 32_768


# ---------------------------------------------------------------------------- training sets


@dataclass(frozen=True)
class LabelReport:
    """What a training set's label means and how often it is positive.

    Attributes
    ----------
    n_users : int
        Users in the set (rows of ``X``).
    positives : int
        Users with ``y == 1``.
    base_rate : float
        ``positives / n_users`` (NaN for an empty set).
    as_of, label_end : pandas.Timestamp
        The label window is ``(as_of, label_end]``.
    horizon : str
        ``label_end - as_of`` as a duration name ("7d").
    label_event : tuple of str
    label_category : tuple or None
    """

    n_users: int
    positives: int
    base_rate: float
    as_of: pd.Timestamp
    label_end: pd.Timestamp
    horizon: str
    label_event: tuple[str, ...]
    label_category: tuple[Any, ...] | None

    @property
    def description(self) -> str:
        """The label in words, e.g. ``ad_click|conversion in ['autos'] within 7d``."""
        cats = "" if self.label_category is None else f" in {list(self.label_category)}"
        return f"{'|'.join(self.label_event)}{cats} within {self.horizon}"


class TrainingSet(NamedTuple):
    """Features, labels and their report; unpacks as ``X, y, report = training_set(...)``."""

    X: FeatureMatrix
    y: np.ndarray
    report: LabelReport


def training_set(log: EventLog, spec: FeatureSpec | None, as_of: Any,
                 label_event: str | Sequence[str], label_category: Any = None,
                 horizon: Any = "7d") -> TrainingSet:
    """Point-in-time features at ``as_of`` and labels from the window after it.

    Parameters
    ----------
    log : EventLog
    spec : FeatureSpec or None
        Feature definition (``FeatureSpec()`` when None).
    as_of : datetime-like
        Features count only events at or before ``as_of``.
    label_event : str or sequence of str
        Event type(s) that make a positive, e.g. ``("ad_click", "conversion")``.
    label_category : category or sequence of categories, optional
        Only events in these categories count for the label (any category when None).
    horizon : duration, default "7d"
        Length of the label window.

    Returns
    -------
    TrainingSet
        ``X``: ``build_features(log, spec, as_of)`` less the columns of categories with no
        event at or before ``as_of`` (see Notes), a FeatureMatrix of shape
        (n_users, n_features); ``y``: ndarray of int8, shape (n_users,), aligned with
        ``X.users``; ``report``: a :class:`LabelReport`.

    Raises
    ------
    UnknownNameError
        If a label event type or category is not in the log.
    ConfigError
        If ``as_of`` or ``horizon`` is not a time / a positive duration.

    Warns
    -----
    UserWarning
        When the log's last event comes more than ``horizon / 10`` before the label window
        ends: labels are then censored (users look negative only because their future was not
        recorded yet).

    Notes
    -----
    With ``T = as_of`` and ``H = horizon``, user ``u`` of ``X`` has

    ``y_u = 1`` iff ``u`` has an event with type in ``label_event`` (and category in
    ``label_category`` when given) at a time ``t`` with ``T < t <= T + H``.

    The rows are exactly those of ``build_features``: users with at least one event at or before
    ``T``. Users whose first event comes after ``T`` are not in the set (they have no features
    to learn from; score them once they have history). The per-category columns are those of
    the categories with an event at or before ``T`` (the builder would also lay out empty
    columns for categories first seen later, making the column set depend on the future; the
    model aligns columns by name when scoring, so nothing is lost).

    Events after ``T`` never change ``X``, and events after ``T + H`` change neither ``X`` nor
    ``y``, with one caveat inherited from the log: bot flags (``spec.exclude_flagged``) are
    computed by the :class:`EventLog` over all of its events, so build the log with
    ``flag_bots=None`` (or from events up to ``T + H`` only) for a strictly point-in-time
    set.

    Examples
    --------
    >>> from bta.sim import simulate_clickstream
    >>> cs = simulate_clickstream(n_users=300, days=14, seed=3)
    >>> log = EventLog.from_pandas(cs.events)
    >>> X, y, rep = training_set(log, FeatureSpec(windows=("7d",)), "2026-01-08",
    ...                          ("ad_click", "conversion"))
    >>> y.shape == (X.n_users,) and rep.positives == int(y.sum())
    True
    """
    if not isinstance(log, EventLog):
        raise ConfigError(f"log must be an EventLog (see EventLog.from_pandas), got "
                          f"{type(log).__name__}")
    check_param("as_of", as_of, as_of is not None, "a time (the end of the feature window)")
    t0 = to_epoch_ms(as_of, "as_of")
    h = to_millis(horizon, "horizon")
    events = _as_names(label_event, "label_event")
    for e in events:
        if e not in log.event_types:
            raise UnknownNameError(f"label_event {e!r} is not an event type of the log"
                                   f"{_hint(e, log.event_types)}")
    ev_codes = np.array([log.event_code(e) for e in events], dtype=np.int64)
    cats: tuple[Any, ...] | None = None
    cat_codes = None
    if label_category is not None:
        cats = _as_names(label_category, "label_category", strings_only=False)
        cat_codes = np.asarray(log.category_code(list(cats)), dtype=np.int64)
        if (cat_codes < 0).any():
            bad = cats[int(np.flatnonzero(cat_codes < 0)[0])]
            raise UnknownNameError(f"label_category {bad!r} is not a category of the log"
                                   f"{_hint(str(bad), [str(c) for c in log.categories])}")

    X = _past_columns(build_features(log, spec, t0), log, t0)
    in_window = (log.ts > t0) & (log.ts <= t0 + h) & np.isin(log.event, ev_codes)
    if cat_codes is not None:
        in_window &= np.isin(log.category, cat_codes)
    positive_users = log.users[np.unique(log.user[in_window])]
    y = pd.Index(X.users).isin(positive_users).astype(np.int8)
    # The log's true end is unknown; its last event is a lower bound. A log that stops more than
    # a tenth of the horizon before the window ends almost surely was not recorded that far.
    if log.n_rows and int(log.ts.max()) < t0 + h - h // 10:
        warnings.warn(f"the label window ends at {pd.Timestamp(t0 + h, unit='ms', tz='UTC')}, "
                      f"after the last event of the log "
                      f"({pd.Timestamp(int(log.ts.max()), unit='ms', tz='UTC')}): labels are "
                      "censored", UserWarning, stacklevel=2)
    n, pos = int(y.shape[0]), int(y.sum())
    report = LabelReport(
        n_users=n, positives=pos, base_rate=pos / n if n else math.nan,
        as_of=pd.Timestamp(t0, unit="ms", tz="UTC"),
        label_end=pd.Timestamp(t0 + h, unit="ms", tz="UTC"), horizon=duration_name(h),
        label_event=events, label_category=cats)
    return TrainingSet(X, y, report)


def _past_columns(X: FeatureMatrix, log: EventLog, t0: int) -> FeatureMatrix:
    """``X`` without the per-category columns of categories with no event at or before ``t0``.

    The builder lays out one block of columns per category of the log's vocabulary, which
    includes categories first seen after ``t0``; their columns are empty at ``t0`` and would
    make the column set depend on the future.
    """
    layout = layout_for(X.spec, log.categories)
    if layout.feature_names != X.feature_names:  # pragma: no cover - the builder's own layout
        return X
    n_stats = len(X.spec.stats)
    n_cell = len(X.spec.events) * layout.n_cat * n_stats
    past = set(log.categories[np.unique(log.category[(log.ts <= t0) & (log.category >= 0)])]
               .tolist())
    seen = np.array([c in past for c in layout.column_categories], dtype=bool)
    # cell columns are ordered event, then category, then statistic
    keep = np.concatenate([np.tile(np.repeat(seen, n_stats), len(X.spec.events)),
                           np.ones(X.n_features - n_cell, dtype=bool)])
    if keep.all():
        return X
    idx = np.flatnonzero(keep)
    return FeatureMatrix(X=X.X[:, idx], feature_names=tuple(X.feature_names[i] for i in idx),
                         users=X.users, as_of=X.as_of, spec=X.spec, nan_absent=X.nan_absent[idx],
                         n_events=X.n_events, n_flagged_excluded=X.n_flagged_excluded)


def _hint(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


def _as_names(value: Any, name: str, strings_only: bool = True) -> tuple:
    vals = (value,) if isinstance(value, str) or np.ndim(value) == 0 else tuple(value)
    ok = len(vals) > 0 and (not strings_only or all(isinstance(v, str) for v in vals))
    check_param(name, value, ok, "a name or a non-empty sequence of names")
    return vals


# ---------------------------------------------------------------------------- metrics


def _labels(y: Any, name: str = "y") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise SchemaError(f"{name} must be 1-d, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int8)
    if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
        bad = arr[~np.isin(arr, (0, 1))][:3] if np.issubdtype(arr.dtype, np.number) else arr[:3]
        raise SchemaError(f"{name} must hold only 0 and 1 (or booleans), got values such as "
                          f"{bad.tolist()}")
    return arr.astype(np.int8)


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


# ---------------------------------------------------------------------------- the model


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


class PropensityModel:
    """LightGBM propensity model over a :class:`~bta.features.FeatureMatrix`.

    Parameters
    ----------
    params : mapping, optional
        LightGBM parameters merged over :data:`DEFAULT_PARAMS` (whose docstring explains the
        defaults for rare positives). The objective must stay ``"binary"``; the number of
        rounds, early stopping, seed and threads are set by the arguments below, not here.
    num_boost_round : int, default 500
        Maximum number of trees.
    early_stopping_rounds : int or None, default 50
        Stop when the validation log-loss has not improved for this many rounds (needs
        ``validation_fraction > 0`` or ``valid=``); None trains all rounds.
    validation_fraction : float, default 0.2
        Share of users held out, stratified by label, for early stopping, AUC and
        calibration. 0 trains on everyone and reports NaN AUC.
    random_state : int, default 0
        Seed of the split and of LightGBM's bagging and feature sampling.
    n_jobs : int, optional
        Threads for LightGBM (fit and predict); None lets LightGBM use its default (all cores).

    Attributes
    ----------
    booster_ : lightgbm.Booster
        The trees kept (exactly ``best_iteration`` of them); its features are
        ``Column_0 ...`` in the order of ``feature_names_``.
    feature_names_ : tuple of str
    nan_absent_ : ndarray of bool, shape (n_features,)
        Columns where an absent entry means "undefined" (NaN) rather than 0.
    report_ : PropensityReport
    model_file_ : str or None
        File name of the last :meth:`save` or :meth:`load`, quoted in segment definitions.

    Notes
    -----
    The model scores ``p(x) = sigmoid(sum_t f_t(x))``. Inputs are the FeatureMatrix made
    dense with NaN where a ``nan_absent`` feature is undefined (a recency of something that
    never happened), so LightGBM learns a separate branch for "missing" rather than reading it
    as 0 days.

    Examples
    --------
    >>> from bta.sim import simulate_clickstream
    >>> cs = simulate_clickstream(n_users=2000, days=21, seed=4, base_ctr=0.02)
    >>> log = EventLog.from_pandas(cs.events)
    >>> X, y, _ = training_set(log, FeatureSpec(windows=("7d",)), "2026-01-14", "ad_click")
    >>> model = PropensityModel(num_boost_round=50, n_jobs=1).fit(X, y)
    >>> seg = model.segment("clickers", X, top_fraction=0.1)
    >>> seg.kind, seg.scores.shape == (X.n_users,)
    ('propensity', True)
    """

    def __init__(self, params: Mapping[str, Any] | None = None, *, num_boost_round: int = 500,
                 early_stopping_rounds: int | None = 50, validation_fraction: float = 0.2,
                 random_state: int = 0, n_jobs: int | None = None) -> None:
        check_param("params", params, params is None or isinstance(params, Mapping),
                    "None or a mapping of LightGBM parameters")
        params = dict(params or {})
        reserved = sorted(set(params) & _RESERVED)
        if reserved:
            raise ConfigError(f"params must not set {reserved}: use the num_boost_round, "
                              "early_stopping_rounds, random_state and n_jobs arguments")
        for key in _OBJECTIVE_KEYS:
            if key in params:
                check_param(f"params[{key!r}]", params[key], params[key] == "binary",
                            "'binary' (a propensity is a probability of a 0/1 label)")
        try:
            json.dumps(params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"params must be JSON-serializable (they are saved with the "
                              f"model): {exc}") from None
        check_param("num_boost_round", num_boost_round, _is_int(num_boost_round)
                    and num_boost_round >= 1, "an integer >= 1")
        check_param("early_stopping_rounds", early_stopping_rounds, early_stopping_rounds is None
                    or (_is_int(early_stopping_rounds) and early_stopping_rounds >= 1),
                    "None or an integer >= 1")
        ok = (isinstance(validation_fraction, (int, float)) and not isinstance(
            validation_fraction, bool) and 0.0 <= validation_fraction < 1.0)
        check_param("validation_fraction", validation_fraction, ok, "a number in [0, 1)")
        check_param("random_state", random_state, _is_int(random_state) and random_state >= 0,
                    "a non-negative integer")
        check_param("n_jobs", n_jobs, n_jobs is None or (_is_int(n_jobs) and n_jobs >= 1),
                    "None or an integer >= 1")
        self.params = params
        self.num_boost_round = int(num_boost_round)
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = float(validation_fraction)
        self.random_state = int(random_state)
        self.n_jobs = n_jobs
        self.model_file_: str | None = None

    # ---- fitting -------------------------------------------------------------------------------
    def lightgbm_params(self) -> dict[str, Any]:
        """The full LightGBM parameter set ``fit`` uses."""
        p = {**DEFAULT_PARAMS, **self.params}
        p["seed"] = self.random_state
        p["num_threads"] = 0 if self.n_jobs is None else int(self.n_jobs)
        return p

    def fit(self, X: FeatureMatrix, y: Any, *, valid: tuple[FeatureMatrix, Any] | None = None,
            label: Any = None) -> "PropensityModel":
        """Train on the users of ``X``.

        Parameters
        ----------
        X : FeatureMatrix of shape (n_users, n_features)
            Its columns become the model's features.
        y : array-like of 0/1, shape (n_users,)
            Labels aligned with ``X.users``.
        valid : (FeatureMatrix, array-like), optional
            Explicit validation users (aligned by feature name) instead of a random
            ``validation_fraction`` split.
        label : LabelReport or str, optional
            What ``y`` means; kept in the report, the saved model and segment definitions.

        Returns
        -------
        self

        Notes
        -----
        LightGBM trains on a dense float64 copy of the training users
        (``n_users * n_features * 8`` bytes: 800 MB for 200,000 users of 500 features); sample
        users for larger sets, since scoring (:meth:`predict`) works block by block on any size.

        Raises
        ------
        ConfigError
            If ``y`` has no positives or no negatives (in training or validation users).
        SchemaError
            If ``y`` is not 0/1 or does not match ``X``.
        """
        import lightgbm as lgb

        fm = _check_fm(X, "X")
        yy = _labels(y)
        if yy.shape[0] != fm.n_users:
            raise SchemaError(f"y must have one label per user of X ({fm.n_users}), "
                              f"got {yy.shape[0]}")
        _check_both_classes(yy, "y")
        self.feature_names_ = tuple(fm.feature_names)
        self.nan_absent_ = np.asarray(fm.nan_absent, dtype=bool).copy()
        if valid is not None:
            if not (isinstance(valid, tuple) and len(valid) == 2):
                raise ConfigError(f"valid must be a (FeatureMatrix, labels) pair, got "
                                  f"{type(valid).__name__}")
            vfm = _check_fm(valid[0], "valid[0]")
            yv = _labels(valid[1], "valid[1]")
            if yv.shape[0] != vfm.n_users:
                raise SchemaError(f"valid[1] must have one label per user of valid[0] "
                                  f"({vfm.n_users}), got {yv.shape[0]}")
            _check_both_classes(yv, "valid[1]")
            xt, yt, xv = self._design(fm), yy, self._design(vfm)
        elif self.validation_fraction > 0:
            tr, va = _stratified_split(yy, self.validation_fraction, self.random_state)
            xt, yt, xv, yv = self._design(fm, tr), yy[tr], self._design(fm, va), yy[va]
        else:
            xt, yt, xv, yv = self._design(fm), yy, None, None

        params = self.lightgbm_params()
        train = lgb.Dataset(xt, label=yt, params={"verbosity": -1}, free_raw_data=True)
        callbacks = []
        valid_sets = []
        if xv is not None:
            valid_sets = [lgb.Dataset(xv, label=yv, reference=train)]
            if self.early_stopping_rounds is not None:
                callbacks.append(lgb.early_stopping(self.early_stopping_rounds,
                                                    first_metric_only=True, verbose=False))
        booster = lgb.train(params, train, num_boost_round=self.num_boost_round,
                            valid_sets=valid_sets, callbacks=callbacks)
        best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
        # keep exactly the trees used, so that booster_ (and anything flattened from it)
        # predicts like the model without a num_iteration argument
        self.booster_ = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
        self.best_iteration_ = int(best)
        self.model_file_ = None

        p_train = self.booster_.predict(xt, num_threads=params["num_threads"])
        if xv is not None:
            p_valid = self.booster_.predict(xv, num_threads=params["num_threads"])
            auc, calib = roc_auc(yv, p_valid), calibration_table(yv, p_valid)
        else:
            auc, calib = math.nan, calibration_table(yt, p_train)
        gain = self.booster_.feature_importance(importance_type="gain")
        importance = pd.Series(gain, index=list(self.feature_names_), name="gain",
                               dtype=np.float64).sort_values(ascending=False, kind="mergesort")
        if isinstance(label, LabelReport):
            label = label.description
        self.report_ = PropensityReport(
            auc=auc, auc_train=roc_auc(yt, p_train), n_train=int(yt.shape[0]),
            n_valid=0 if yv is None else int(yv.shape[0]), positives_train=int(yt.sum()),
            positives_valid=0 if yv is None else int(yv.sum()), base_rate=float(yt.mean()),
            best_iteration=int(best), calibration=calib, importance=importance,
            label=None if label is None else str(label))
        logger.info("propensity model: %d trees, validation AUC %.4f", best, auc)
        return self

    # ---- scoring -------------------------------------------------------------------------------
    def scorer(self) -> Any:
        """The fitted model as a compiled :class:`~bta.scoring.TreeScorer` over bta's feature
        names (what the serving Engine takes as a campaign model); cached."""
        self._check_fitted()
        cached = getattr(self, "_scorer", None)
        if cached is None or cached[0] is not self.booster_:
            from bta.scoring import TreeScorer

            state = TreeScorer.from_lightgbm(self.booster_, warmup=False).to_dict()
            state["feature_names"] = list(self.feature_names_)  # the booster says Column_i
            cached = (self.booster_, TreeScorer.from_dict(state))
            self._scorer = cached
        return cached[1]

    def predict(self, fm: FeatureMatrix, *, compiled: bool = True) -> np.ndarray:
        """Probability of the label for every user of ``fm``.

        Parameters
        ----------
        fm : FeatureMatrix of shape (n_users, any)
            Columns are matched to the model's features by name: extra columns are ignored,
            and a model feature missing from ``fm`` is treated as absent for every user (0, or
            NaN for a ``nan_absent`` feature), as it would be for a category nobody visited.
        compiled : bool, default True
            Score with the compiled :meth:`scorer` (same values as LightGBM to 1e-12, several
            times faster); False calls ``lightgbm.Booster.predict``.

        Returns
        -------
        ndarray of float64, shape (n_users,)
            Aligned with ``fm.users``.

        Raises
        ------
        NotFittedError
            Before ``fit`` or ``load``.
        SchemaError
            If ``fm`` shares no feature with the model (surely the wrong matrix).
        """
        self._check_fitted()
        fm = _check_fm(fm, "fm")
        out = np.empty(fm.n_users, dtype=np.float64)
        colmap, defaults = self._alignment(fm)
        nt = 0 if self.n_jobs is None else int(self.n_jobs)
        for r0 in range(0, fm.n_users, _CHUNK_ROWS):
            r1 = min(r0 + _CHUNK_ROWS, fm.n_users)
            block = _dense_block(fm, r0, r1, colmap, defaults)
            if compiled:
                out[r0:r1] = self.scorer().predict(block)
            else:
                out[r0:r1] = self.booster_.predict(block, num_threads=nt)
        return out

    def segment(self, name: str, fm: FeatureMatrix, threshold: float | None = None,
                top_fraction: float | None = None) -> Segment:
        """Users of ``fm`` whose propensity clears a threshold or ranks in the top fraction.

        Parameters
        ----------
        name : str
            Segment name.
        fm : FeatureMatrix
            Users to score (see :meth:`predict`).
        threshold : float in [0, 1], optional
            Members: ``score >= threshold``.
        top_fraction : float in (0, 1], optional
            Members: ``score >= s_k``, with ``s_k`` the ``k``-th highest score and
            ``k = ceil(top_fraction * n_users)``. Users tied with ``s_k`` are all members,
            so the segment can exceed ``k`` users (equal scores are treated alike).

        Returns
        -------
        Segment
            ``kind="propensity"``, members and scores aligned with ``fm.users``; the
            definition holds the model file (``None`` until the model is saved or loaded), the
            model's SHA-256, the label, ``threshold``/``top_fraction``, the score cut and
            ``as_of``.

        Raises
        ------
        ConfigError
            Unless exactly one of ``threshold`` and ``top_fraction`` is given, in range.
        """
        self._check_fitted()
        if (threshold is None) == (top_fraction is None):
            raise ConfigError(f"give exactly one of threshold and top_fraction, got "
                              f"threshold={threshold!r}, top_fraction={top_fraction!r}")
        if threshold is not None:
            check_param("threshold", threshold, _is_real(threshold) and 0 <= threshold <= 1,
                        "a number in [0, 1]")
        else:
            check_param("top_fraction", top_fraction, _is_real(top_fraction)
                        and 0 < top_fraction <= 1, "a number in (0, 1]")
        scores = self.predict(fm)
        if threshold is not None:
            cut = float(threshold)
        elif scores.size:
            k = math.ceil(float(top_fraction) * scores.size)
            cut = float(np.partition(scores, scores.size - k)[scores.size - k])
        else:
            cut = math.inf
        definition = {
            "model": self.model_file_, "model_sha256": self._sha256(),
            "label": self.report_.label, "threshold": threshold, "top_fraction": top_fraction,
            "cut_score": cut, "as_of": fm.as_of.isoformat(),
        }
        return Segment(name, "propensity", definition, scores >= cut, scores)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the LightGBM model text to ``path`` and its metadata to ``path + ".json"``.

        The JSON holds the feature names (the model's ``Column_i`` is ``feature_names[i]``),
        ``nan_absent`` flags, the parameters, the report and the SHA-256 of the model text,
        which :meth:`load` checks.

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        self._check_fitted()
        path = Path(path)
        text = self.booster_.model_to_string()
        path.write_text(text)
        import lightgbm as lgb

        meta = {
            "format_version": FORMAT_VERSION, "model_sha256": _sha256(text),
            "lightgbm_version": lgb.__version__,
            "feature_names": list(self.feature_names_),
            "nan_absent": [bool(v) for v in self.nan_absent_],
            "params": self.params, "num_boost_round": self.num_boost_round,
            "early_stopping_rounds": self.early_stopping_rounds,
            "validation_fraction": self.validation_fraction, "random_state": self.random_state,
            "n_jobs": self.n_jobs, "best_iteration": self.best_iteration_,
            "report": self.report_.to_dict(),
        }
        _meta_path(path).write_text(json.dumps(meta, indent=1))
        self.model_file_ = path.name
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PropensityModel":
        """Read a model written by :meth:`save`.

        Raises
        ------
        SchemaError
            If a file is missing, the format version is unknown, or the model text no longer
            matches the SHA-256 recorded at save time.
        """
        import lightgbm as lgb

        path = Path(path)
        meta_path = _meta_path(path)
        for p in (path, meta_path):
            if not p.exists():
                raise SchemaError(f"{p} not found: a saved PropensityModel is a LightGBM model "
                                  "file and its '.json' metadata beside it")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise SchemaError(f"PropensityModel format_version {meta.get('format_version')!r} "
                              f"is not supported (this bta reads {FORMAT_VERSION})")
        text = path.read_text()
        if _sha256(text) != meta["model_sha256"]:
            raise SchemaError(f"{path} does not match the SHA-256 recorded in {meta_path.name}: "
                              "the model file changed after it was saved")
        model = cls(meta["params"], num_boost_round=meta["num_boost_round"],
                    early_stopping_rounds=meta["early_stopping_rounds"],
                    validation_fraction=meta["validation_fraction"],
                    random_state=meta["random_state"], n_jobs=meta["n_jobs"])
        model.booster_ = lgb.Booster(model_str=text)
        model.feature_names_ = tuple(meta["feature_names"])
        model.nan_absent_ = np.asarray(meta["nan_absent"], dtype=bool)
        model.best_iteration_ = int(meta["best_iteration"])
        model.report_ = PropensityReport.from_dict(meta["report"])
        model.model_file_ = path.name
        return model

    # ---- internals -----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise NotFittedError("this PropensityModel is not fitted yet: call fit(X, y) or "
                                 "PropensityModel.load(path) first")

    def _sha256(self) -> str:
        return _sha256(self.booster_.model_to_string())

    def _alignment(self, fm: FeatureMatrix) -> tuple[np.ndarray, np.ndarray]:
        """Model column of each ``fm`` column (-1: unused) and each model column's default."""
        pos = {n: j for j, n in enumerate(self.feature_names_)}
        colmap = np.array([pos.get(n, -1) for n in fm.feature_names], dtype=np.int64)
        if not (colmap >= 0).any():
            raise SchemaError(f"fm shares no feature with the model (model features such as "
                              f"{list(self.feature_names_[:3])}, fm features such as "
                              f"{list(fm.feature_names[:3])})")
        nan_default = self.nan_absent_.copy()
        present = colmap >= 0
        # a present column is undefined when absent iff the matrix says so
        nan_default[colmap[present]] = np.asarray(fm.nan_absent, dtype=bool)[present]
        return colmap, np.where(nan_default, np.nan, 0.0)

    def _design(self, fm: FeatureMatrix, rows: np.ndarray | None = None) -> np.ndarray:
        """Dense model-ordered matrix of ``fm`` (only ``rows`` when given)."""
        colmap, defaults = self._alignment(fm)
        if rows is not None:
            fm = FeatureMatrix(fm.X[rows], fm.feature_names, fm.users[rows], fm.as_of, fm.spec,
                               fm.nan_absent)
        return _dense_block(fm, 0, fm.n_users, colmap, defaults)


def _dense_block(fm: FeatureMatrix, r0: int, r1: int, colmap: np.ndarray,
                 defaults: np.ndarray) -> np.ndarray:
    """Rows ``r0:r1`` of ``fm`` as a dense float64 block in model column order."""
    X = fm.X
    lo, hi = X.indptr[r0], X.indptr[r1]
    out = np.empty((r1 - r0, defaults.shape[0]), dtype=np.float64)
    out[:] = defaults
    rows = np.repeat(np.arange(r1 - r0), np.diff(X.indptr[r0:r1 + 1]))
    cols = colmap[X.indices[lo:hi]]
    keep = cols >= 0
    # stored entries overwrite the defaults, so a defined recency of 0 days stays 0, not NaN
    out[rows[keep], cols[keep]] = X.data[lo:hi][keep]
    return out


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row indices (sorted), ``fraction`` of each class held out."""
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        if idx.size < 2:
            raise ConfigError(f"y has {idx.size} user(s) with label {cls}: a validation split "
                              f"needs at least 2 of each class (or set validation_fraction=0)")
        # at least one user of each class on both sides, so both AUCs are defined
        n_valid = min(max(1, round(fraction * idx.size)), idx.size - 1)
        perm = rng.permutation(idx)
        valid.append(perm[:n_valid])
        train.append(perm[n_valid:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(valid))


def _check_both_classes(y: np.ndarray, name: str) -> None:
    pos = int(y.sum())
    if pos == 0 or pos == y.shape[0]:
        what = "no positives" if pos == 0 else "no negatives"
        raise ConfigError(f"{name} has {what} ({pos} of {y.shape[0]} users are 1): a propensity "
                          "model needs both classes; widen the label window or the label")


def _check_fm(fm: Any, name: str) -> FeatureMatrix:
    if not isinstance(fm, FeatureMatrix):
        raise ConfigError(f"{name} must be a FeatureMatrix (see build_features), got "
                          f"{type(fm).__name__}")
    return fm


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return (isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
            and math.isfinite(x))

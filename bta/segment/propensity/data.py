"""Training sets for :mod:`bta.segment.propensity`: features as of a cutoff, labels after it.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from bta.errors import ConfigError, SchemaError, UnknownNameError, check_param
from bta.events import EventLog, to_epoch_ms, to_millis
from bta.features.batch import build_features
from bta.features.matrix import FeatureMatrix, layout_for
from bta.features.spec import FeatureSpec, duration_name

__all__ = [
    "LabelReport",
    "TrainingSet",
    "_check_both_classes",
    "_check_fm",
    "_dense_block",
    "_is_int",
    "_is_real",
    "_labels",
    "_stratified_split",
    "training_set",
]


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


# ----------------------------------------------------------------------------- checks


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


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return (isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
            and math.isfinite(x))

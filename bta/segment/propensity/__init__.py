"""Propensity segments: point-in-time training sets and a LightGBM model that scores users.

:func:`training_set` builds features at ``as_of`` and labels from the window that follows it;
:class:`PropensityModel` learns ``P(label | features)`` with LightGBM, reports held-out AUC and a
calibration table, scores any :class:`~bta.features.FeatureMatrix` (aligned by feature name) and
cuts a :class:`~bta.segment.book.Segment` from the scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bta._params import InstanceOf, Interval, ParamsMixin, validate_params
from bta.errors import ConfigError, NotFittedError, SchemaError, check_param
from bta.features.matrix import FeatureMatrix
from bta.segment.propensity.data import (
    LabelReport,
    TrainingSet,
    _check_both_classes,
    _check_fm,
    _dense_block,
    _labels,
    _stratified_split,
    training_set,
)
from bta.segment.propensity.metrics import PropensityReport, calibration_table, roc_auc
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


# what segment() takes as the cut, one of the two
_CUT_CONSTRAINTS: dict[str, list[Any]] = {"threshold": [Interval(Real, 0, 1)],
                                          "top_fraction": [Interval(Real, 0, 1, closed="right")]}


class PropensityModel(ParamsMixin):
    """LightGBM propensity model over a :class:`~bta.features.FeatureMatrix`.

    A scikit-learn style estimator: the parameters are stored as given, checked at construction
    and by :meth:`fit`, and ``get_params`` / ``set_params`` let ``sklearn.base.clone`` copy it.

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
        File name of the last :meth:`save` or :meth:`load` (None after :meth:`fit` until a
        save), quoted in segment definitions. Like every attribute ending in ``_``, it exists
        only once the model is fitted or loaded.

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

    _parameter_constraints: dict[str, list[Any]] = {
        "params": [None, InstanceOf(Mapping, desc="a mapping of LightGBM parameters")],
        "num_boost_round": [Interval(Integral, 1, None, closed="left")],
        "early_stopping_rounds": [None, Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "random_state": [Interval(Integral, 0, None, closed="left",
                                  desc="a non-negative integer")],
        "n_jobs": [None, Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, params: Mapping[str, Any] | None = None, *, num_boost_round: int = 500,
                 early_stopping_rounds: int | None = 50, validation_fraction: float = 0.2,
                 random_state: int = 0, n_jobs: int | None = None) -> None:
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.n_jobs = n_jobs
        self._check_params()

    def _check_params(self) -> None:
        """Check the parameters as stored (at construction and again in :meth:`fit`).

        The declared constraints, then what LightGBM's ``params`` may hold.
        """
        self._validate_params()
        params = self._lightgbm_overrides()
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

    def _lightgbm_overrides(self) -> dict[str, Any]:
        """``params`` as a plain dict (empty for None): what is merged and saved."""
        return dict(self.params or {})

    def _num_threads(self) -> int:
        """LightGBM's ``num_threads`` for ``n_jobs`` (0: LightGBM's default)."""
        return 0 if self.n_jobs is None else int(self.n_jobs)

    # ---- fitting -------------------------------------------------------------------------------
    def lightgbm_params(self) -> dict[str, Any]:
        """The full LightGBM parameter set ``fit`` uses."""
        p = {**DEFAULT_PARAMS, **self._lightgbm_overrides()}
        p["seed"] = int(self.random_state)
        p["num_threads"] = self._num_threads()
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

        self._check_params()
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
            tr, va = _stratified_split(yy, float(self.validation_fraction),
                                       int(self.random_state))
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
                callbacks.append(lgb.early_stopping(int(self.early_stopping_rounds),
                                                    first_metric_only=True, verbose=False))
        booster = lgb.train(params, train, num_boost_round=int(self.num_boost_round),
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
        nt = self._num_threads()
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
        given = {"threshold": threshold} if threshold is not None else {"top_fraction":
                                                                        top_fraction}
        validate_params({name: _CUT_CONSTRAINTS[name] for name in given}, given,
                        "PropensityModel.segment")
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
            "params": self._lightgbm_overrides(), "num_boost_round": int(self.num_boost_round),
            "early_stopping_rounds": _int_or_none(self.early_stopping_rounds),
            "validation_fraction": float(self.validation_fraction),
            "random_state": int(self.random_state), "n_jobs": _int_or_none(self.n_jobs),
            "best_iteration": self.best_iteration_,
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


def _int_or_none(v: Any) -> int | None:
    """An int parameter as JSON takes it (a NumPy integer is not JSON)."""
    return None if v is None else int(v)


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()

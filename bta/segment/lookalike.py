"""Lookalike audiences: the users most like a seed list, in the interest-affinity geometry.

A seed (converters, a CRM upload) is scored against every other user of a FeatureMatrix by
cosine similarity of their TF-IDF category affinity
(:func:`~bta.segment.clusters.interest_affinity`), either to the seed's centroid or to its
nearest seed users, and cut to a requested reach.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from bta._params import Interval, Options, ParamsMixin, Predicate, validate_params
from bta.errors import ConfigError, NotFittedError, UnknownNameError, check_param
from bta.features.matrix import FeatureMatrix
from bta.segment import _kernels
from bta.segment.book import Segment
from bta.segment.clusters import AFFINITY_CONSTRAINTS, Affinity, interest_affinity

__all__ = ["Lookalike", "LookalikeReport", "LookalikeEvaluation"]

logger = logging.getLogger("bta")

_SHOWN_UNKNOWN = 5  # unknown seed ids quoted in an error message; the rest are counted


@dataclass(frozen=True)
class LookalikeReport:
    """How a lookalike expansion relates to its seed (see :meth:`Lookalike.report`).

    Attributes
    ----------
    n_seed_given : int
        Distinct ids in ``seed_users``.
    n_seed : int
        Seed users found in the FeatureMatrix.
    n_unknown : int
        Seed ids not in the FeatureMatrix (dropped with ``on_unknown="ignore"``).
    n_seed_no_affinity : int
        Seed users found but without affinity: they take no part in the scoring.
    n_candidates : int
        Non-seed users, the pool the expansion is drawn from.
    reach : int
        Users in the expansion.
    n_no_affinity_in_expansion : int
        Expansion users without affinity (score 0, taken only once all others are in).
    score_threshold : float
        Lowest score in the expansion.
    mean_score : float
        Mean score of the expansion.
    seed_overlap : float
        Share of the seed users (with affinity) whose leave-one-out score reaches
        ``score_threshold``: how much of the seed the expansion rule would itself have picked.
    """

    n_seed_given: int
    n_seed: int
    n_unknown: int
    n_seed_no_affinity: int
    n_candidates: int
    reach: int
    n_no_affinity_in_expansion: int
    score_threshold: float
    mean_score: float
    seed_overlap: float


@dataclass(frozen=True)
class LookalikeEvaluation:
    """Held-out seed recovery (see :meth:`Lookalike.evaluate`).

    Attributes
    ----------
    recall : float
        Share of the held-out seed users ranked within ``reach``.
    random_recall : float
        Expected recall of a random ranking, ``reach / n_candidates``.
    lift : float
        ``recall / random_recall``.
    reach, n_holdout, n_train, n_candidates : int
    """

    recall: float
    random_recall: float
    lift: float
    reach: int
    n_holdout: int
    n_train: int
    n_candidates: int


def centroid_scores(X: Any, S: np.ndarray, seed_rows: np.ndarray) -> np.ndarray:
    """Cosine of unit affinity rows ``X`` to the seed direction ``S`` (the sum of the seed's
    rows): ``x.S / |S|``, and for the seed's own rows the leave-one-out ``x.(S - x) / |S - x|``
    (``|x| = 1``; a seed of one user has nothing left to compare with and scores 0).

    Shared by :class:`Lookalike` and the partitioned scoring of :mod:`bta.dask`, which scores
    new users against a fitted ``S``.
    """
    raw = np.asarray(X @ S).ravel()
    norm = np.linalg.norm(S)
    scores = raw / norm
    loo_norm = np.sqrt(np.maximum(norm * norm - 2.0 * raw[seed_rows] + 1.0, 0.0))
    scores[seed_rows] = np.where(loo_norm > 1e-12,
                                 (raw[seed_rows] - 1.0) / np.maximum(loo_norm, 1e-12), 0.0)
    return scores


def _distinct(seed_users: Sequence[Any]) -> np.ndarray:
    """The distinct seed ids, in order of first appearance."""
    seed = seed_users if isinstance(seed_users, np.ndarray) else list(seed_users)
    return pd.unique(np.asarray(seed))


class Lookalike(ParamsMixin):
    """Users most similar to a seed, ranked and cut to a reach.

    A scikit-learn style estimator: the parameters (the seed list included) are stored as
    given, checked at construction and by :meth:`fit`, and ``get_params`` / ``set_params`` let
    ``sklearn.base.clone`` copy it.

    Parameters
    ----------
    seed_users : sequence of user ids
        The seed audience (duplicates are dropped).
    method : {"centroid", "knn"}, default "centroid"
        ``"centroid"``: cosine similarity to the seed's mean direction, :math:`O(nnz)`.
        ``"knn"``: mean cosine similarity to the ``k`` most similar seed users,
        :math:`O(nnz \\cdot n_{seed})`; follows a seed made of several distinct tastes.
    k : int, default 10
        Neighbours for ``"knn"`` (capped at the number of seed users with affinity).
    event, stat, idf
        The geometry, as in :func:`~bta.segment.clusters.interest_affinity`.
    on_unknown : {"raise", "ignore"}, default "raise"
        Seed ids not in the FeatureMatrix raise :class:`~bta.errors.UnknownNameError`, or are
        dropped and reported in ``unknown_seed_``.

    Attributes
    ----------
    seed_ids_ : ndarray
        The distinct ids of ``seed_users``, in order of first appearance.
    users_ : ndarray of shape (n_users,)
    scores_ : ndarray of float64, shape (n_users,)
        Similarity of every user to the seed, in [0, 1] for non-negative features. Seed users get
        their leave-one-out score (the seed without them); users without affinity get 0.
    is_seed_ : ndarray of bool, shape (n_users,)
    unknown_seed_ : ndarray
        Seed ids not found (empty unless ``on_unknown="ignore"``).
    n_seed_no_affinity_ : int
    affinity_ : Affinity

    Notes
    -----
    With unit affinity rows :math:`x_u` and the seed users with affinity :math:`S`:

    - centroid: :math:`s(u) = x_u \\cdot \\bar c / \\lVert \\bar c \\rVert`,
      :math:`\\bar c = \\sum_{v \\in S} x_v` (for :math:`u \\in S`, :math:`\\bar c` omits
      :math:`x_u`);
    - knn: :math:`s(u)` = mean of the :math:`k` largest :math:`x_u \\cdot x_v`,
      :math:`v \\in S \\setminus \\{u\\}`.

    Ranking orders non-seed users by (has affinity, score) descending, ties by row order, so a
    reach is always filled exactly and reproducibly.

    Examples
    --------
    >>> la = Lookalike(converters, method="centroid").fit(fm)    # doctest: +SKIP
    >>> seg = la.segment("lookalike:converters", reach=0.05)     # doctest: +SKIP
    >>> la.evaluate(holdout_fraction=0.2, random_state=0).lift    # doctest: +SKIP
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "seed_users": [Predicate(lambda v: not isinstance(v, (str, bytes)) and hasattr(v, "__len__"),
                                 "a sequence of user ids", show_type=True)],
        "method": [Options(("centroid", "knn"))],
        "k": [Interval(Integral, 1, None, closed="left")],
        **AFFINITY_CONSTRAINTS,
        "on_unknown": [Options(("raise", "ignore"))],
    }

    def __init__(self, seed_users: Sequence[Any], *,
                 method: Literal["centroid", "knn"] = "centroid", k: int = 10,
                 event: str = "page_view", stat: str = "decay", idf: bool = True,
                 on_unknown: Literal["raise", "ignore"] = "raise"):
        self.seed_users = seed_users
        self.method = method
        self.k = k
        self.event = event
        self.stat = stat
        self.idf = idf
        self.on_unknown = on_unknown
        self._check_params()

    def _check_params(self) -> None:
        """The declared constraints, then the one that depends on a valid type."""
        self._validate_params()
        n = len(self.seed_users)
        check_param("seed_users", self.seed_users, n > 0, "a non-empty sequence of user ids",
                    got=f"{n} users")

    # ---- fitting -------------------------------------------------------------------------------
    def fit(self, fm: FeatureMatrix) -> "Lookalike":
        """Score every user of ``fm`` against the seed; returns ``self``.

        Raises
        ------
        UnknownNameError
            Seed ids not in ``fm`` (the first few are listed), unless ``on_unknown="ignore"``.
        ConfigError
            No seed user is in ``fm`` or has any affinity.
        SchemaError
            From :func:`~bta.segment.clusters.interest_affinity`.
        """
        self._check_params()
        seed = _distinct(self.seed_users)
        aff = interest_affinity(fm, event=self.event, stat=self.stat, idf=bool(self.idf))
        pos = pd.Index(aff.users).get_indexer(seed)
        unknown = seed[pos < 0]
        if unknown.size and self.on_unknown == "raise":
            shown = ", ".join(repr(u) for u in unknown[:_SHOWN_UNKNOWN].tolist())
            more = (f" and {unknown.size - _SHOWN_UNKNOWN} more"
                    if unknown.size > _SHOWN_UNKNOWN else "")
            raise UnknownNameError(
                f"seed_users has {unknown.size} of {len(seed)} users not in the "
                f"FeatureMatrix: {shown}{more}; pass on_unknown='ignore' to drop them")
        rows = np.sort(pos[pos >= 0])
        if rows.size == 0:
            raise ConfigError(f"none of the {len(seed)} seed_users is in the FeatureMatrix")
        if unknown.size:
            logger.warning("Lookalike: %d of %d seed users are not in the FeatureMatrix and were "
                           "dropped", unknown.size, len(seed))
        self.seed_ids_ = seed
        self.affinity_ = aff
        self.users_ = aff.users
        self.unknown_seed_ = unknown
        self.seed_rows_ = rows
        self.is_seed_ = np.zeros(aff.n_users, dtype=bool)
        self.is_seed_[rows] = True
        self.n_seed_no_affinity_ = int((~aff.has_affinity[rows]).sum())
        self.scores_ = self._score(aff, rows)
        return self

    def _score(self, aff: Affinity, seed_rows: np.ndarray) -> np.ndarray:
        """Scores of all users against the seed rows (seed users: leave-one-out)."""
        active = seed_rows[aff.has_affinity[seed_rows]]
        if active.size == 0:
            raise ConfigError(f"none of the {seed_rows.size} seed users found has any "
                              f"{self.event!r} affinity: there is nothing to look alike")
        X = aff.X
        if self.method == "centroid":
            scores = centroid_scores(X, np.asarray(X[active].sum(axis=0)).ravel(), active)
        else:
            seeds_t = np.ascontiguousarray(X[active].toarray().T)
            self_col = np.full(X.shape[0], -1, dtype=np.int64)
            self_col[active] = np.arange(active.size)
            k = min(int(self.k), active.size)
            scores = _kernels.knn_scores(X.indptr.astype(np.int64), X.indices.astype(np.int64),
                                         X.data, seeds_t, self_col, np.int64(k))
        # affinity rows are non-negative unit vectors: cosines lie in [0, 1] up to rounding
        scores = np.clip(scores, 0.0, 1.0)
        scores[~aff.has_affinity] = 0.0
        return scores

    def _check_fitted(self) -> None:
        if not hasattr(self, "scores_"):
            raise NotFittedError("Lookalike is not fitted yet: call fit(fm) first")

    # ---- ranking and cutting -------------------------------------------------------------------
    def _order(self, scores: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        """Rows not in ``exclude``, best first: with affinity first, then by score, then row."""
        rows = np.flatnonzero(~exclude)
        has = self.affinity_.has_affinity[rows]
        return rows[np.lexsort((rows, -scores[rows], ~has))]

    def rank(self) -> pd.DataFrame:
        """Non-seed users, most similar first.

        Returns
        -------
        pandas.DataFrame
            Columns ``user_id``, ``score``, ``has_affinity``; row ``i`` is rank ``i``.
        """
        self._check_fitted()
        order = self._order(self.scores_, self.is_seed_)
        return pd.DataFrame({"user_id": self.users_[order], "score": self.scores_[order],
                             "has_affinity": self.affinity_.has_affinity[order]})

    def _reach(self, reach: Any, n_candidates: int) -> int:
        # an int is a number of users, a float a fraction of them (1 and 1.0 differ)
        validate_params({"reach": [
            Interval(Integral, 1, n_candidates,
                     desc=f"a number of users between 1 and {n_candidates} (the non-seed users)"),
            Predicate(lambda v: isinstance(v, (float, np.floating)) and 0.0 < v <= 1.0,
                      "a fraction in (0, 1]")]}, {"reach": reach}, "Lookalike")
        if isinstance(reach, Integral):
            return int(reach)
        return max(1, int(round(float(reach) * n_candidates)))

    def report(self, reach: int | float = 0.05) -> LookalikeReport:
        """Seed and expansion statistics at ``reach`` (see :class:`LookalikeReport`)."""
        self._check_fitted()
        order = self._order(self.scores_, self.is_seed_)
        n = self._reach(reach, order.size)
        top = order[:n]
        threshold = float(self.scores_[top].min())
        has = self.affinity_.has_affinity
        seed_active = self.seed_rows_[has[self.seed_rows_]]
        overlap = float((self.scores_[seed_active] >= threshold).mean())
        return LookalikeReport(
            n_seed_given=len(self.seed_ids_), n_seed=int(self.seed_rows_.size),
            n_unknown=int(self.unknown_seed_.size), n_seed_no_affinity=self.n_seed_no_affinity_,
            n_candidates=int(order.size), reach=n,
            n_no_affinity_in_expansion=int((~has[top]).sum()), score_threshold=threshold,
            mean_score=float(self.scores_[top].mean()), seed_overlap=overlap)

    def segment(self, name: str = "lookalike", reach: int | float = 0.05, *,
                include_seed: bool = False) -> Segment:
        """The expansion as a ``kind="lookalike"`` Segment over the fitted users.

        Parameters
        ----------
        name : str, default "lookalike"
        reach : int or float, default 0.05
            Number of non-seed users to add (int), or that fraction of the non-seed users
            (float in (0, 1]).
        include_seed : bool, default False
            Also make the seed users (found in the FeatureMatrix) members.

        Returns
        -------
        Segment
            ``scores`` are ``scores_``; the definition holds the method, parameters and the
            :meth:`report` figures (never the seed ids).
        """
        validate_params({"include_seed": ["boolean"]}, {"include_seed": include_seed},
                        "Lookalike.segment")
        rep = self.report(reach)
        members = np.zeros(self.users_.shape[0], dtype=bool)
        members[self._order(self.scores_, self.is_seed_)[:rep.reach]] = True
        if include_seed:
            members |= self.is_seed_
        definition = {"maker": "Lookalike", "method": self.method, "k": int(self.k),
                      "event": self.event, "stat": self.stat, "idf": bool(self.idf),
                      "include_seed": include_seed,
                      **asdict(rep)}
        return Segment(name=name, kind="lookalike", definition=definition, members=members,
                       scores=self.scores_)

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, holdout_fraction: float = 0.2, *, reach: int | float = 0.05,
                 random_state: Any = None) -> LookalikeEvaluation:
        """Recall of held-out seed users: hide some, score from the rest, count those found.

        Parameters
        ----------
        holdout_fraction : float, default 0.2
            Share of the seed users (found in the FeatureMatrix) held out, in (0, 1).
        reach : int or float, default 0.05
            Cut of the ranking of the non-training users (as in :meth:`segment`).
        random_state : int, numpy.random.Generator or None

        Returns
        -------
        LookalikeEvaluation

        Raises
        ------
        ConfigError
            The split leaves no held-out or no training user, or ``reach`` is out of range.

        Notes
        -----
        :math:`recall = |H \\cap top_r| / |H|` with :math:`H` the held-out users and
        :math:`top_r` the first ``reach`` users of the ranking of everyone but the training
        seed; a random ranking has expected recall :math:`r / n_{candidates}`.
        """
        self._check_fitted()
        validate_params({"holdout_fraction": [Interval(Real, 0, 1, closed="neither",
                                                        desc="a fraction in (0, 1)")]},
                        {"holdout_fraction": holdout_fraction}, "Lookalike.evaluate")
        rng = np.random.default_rng(random_state)
        seed = self.seed_rows_
        n_hold = int(round(holdout_fraction * seed.size))
        if n_hold < 1 or n_hold >= seed.size:
            raise ConfigError(f"holdout_fraction={holdout_fraction!r} of {seed.size} seed users "
                              f"leaves {n_hold} held out and {seed.size - n_hold} for training; "
                              f"both must be at least 1")
        hold = np.zeros(seed.size, dtype=bool)
        hold[rng.choice(seed.size, n_hold, replace=False)] = True
        train_rows, hold_rows = seed[~hold], seed[hold]
        scores = self._score(self.affinity_, train_rows)
        is_train = np.zeros(self.users_.shape[0], dtype=bool)
        is_train[train_rows] = True
        order = self._order(scores, is_train)
        r = self._reach(reach, order.size)
        found = int(np.isin(hold_rows, order[:r]).sum())
        recall = found / n_hold
        random_recall = r / order.size
        return LookalikeEvaluation(recall=recall, random_recall=random_recall,
                                   lift=recall / random_recall, reach=r, n_holdout=n_hold,
                                   n_train=int(train_rows.size), n_candidates=int(order.size))

    def __repr__(self) -> str:
        return (f"Lookalike({len(_distinct(self.seed_users))} seed users, "
                f"method={self.method!r}, k={self.k!r}, event={self.event!r}, "
                f"stat={self.stat!r})")

"""Interest clusters: spherical k-means over users' TF-IDF category affinity.

- :func:`interest_affinity` is the cosine geometry shared with the lookalikes: one unit-norm
  row of category weights per user (a zero row for a user without any affinity).
- :func:`kmeans_plusplus` and :func:`kmeans` are the algorithm on a CSR matrix (cosine or
  Euclidean), run by the numba kernels of :mod:`bta.segment._kernels`.
- :class:`InterestClusters` is the estimator: ``fit(fm)``, ``predict(fm)``, ``segments()``,
  ``to_dict()`` / ``from_dict()``.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Literal, Mapping

import numpy as np
import scipy.sparse as sp

from bta._params import InstanceOf, Interval, Options, ParamsMixin, Predicate, validate_params
from bta.errors import ConfigError, NotFittedError, SchemaError, UnknownNameError
from bta.features.matrix import FeatureMatrix
from bta.segment import _kernels
from bta.segment.book import Segment
from bta.segment.yan import SimilarityRatio, similarity_ratio

__all__ = ["Affinity", "interest_affinity", "kmeans_plusplus", "kmeans", "KMeansResult",
           "InterestClusters"]

logger = logging.getLogger("bta")

FORMAT = "bta.segment.InterestClusters"
FORMAT_VERSION = 1
_STAT = re.compile(r"^(decay|count:[^:]+)$")
#: The affinity geometry's parameters, shared by :class:`InterestClusters` and ``Lookalike``.
AFFINITY_CONSTRAINTS: dict[str, list[Any]] = {
    "event": [Predicate(lambda v: isinstance(v, str) and v != "", "a non-empty event name")],
    "stat": [Predicate(lambda v: isinstance(v, str) and bool(_STAT.match(v)),
                       "'decay' or 'count:<window>' (e.g. 'count:7d')")],
    "idf": ["boolean"],
}
_METRIC = {"metric": [Options(("cosine", "euclidean"))]}
# Squared distances below this share of the largest squared row norm are rounding noise of
# |x|^2 + |c|^2 - 2 x.c: such rows duplicate a chosen center and must not be drawn again.
_DUPLICATE_RTOL = 1e-12


# ---- geometry ----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Affinity:
    """Users' normalized category affinity (the cosine geometry of clusters and lookalikes).

    Attributes
    ----------
    X : scipy.sparse.csr_matrix of shape (n_users, n_categories)
        TF-IDF weights, each row of unit L2 norm, or all zero for a user without affinity.
    users : ndarray of shape (n_users,)
        User ids, one per row (the FeatureMatrix's order).
    categories : tuple of str, length n_categories
    idf : ndarray of shape (n_categories,)
        Column weights applied (all ones when ``idf=False``).
    has_affinity : ndarray of bool, shape (n_users,)
        False for the zero rows: users with no counted event of ``event`` in any category.
    event, stat : str
        The feature columns the affinity was read from.
    """

    X: sp.csr_matrix
    users: np.ndarray
    categories: tuple[str, ...]
    idf: np.ndarray
    has_affinity: np.ndarray
    event: str
    stat: str

    @property
    def n_users(self) -> int:
        return self.X.shape[0]

    @property
    def n_categories(self) -> int:
        return self.X.shape[1]

    @property
    def n_no_affinity(self) -> int:
        """Users with a zero row."""
        return int((~self.has_affinity).sum())


def interest_affinity(fm: FeatureMatrix, *, event: str = "page_view", stat: str = "decay",
                      idf: bool | np.ndarray = True,
                      categories: tuple[str, ...] | list[str] | None = None) -> Affinity:
    """Users' TF-IDF category affinity, rows L2-normalized (cosine geometry).

    Parameters
    ----------
    fm : FeatureMatrix of shape (n_users, n_features)
        Needs the per-category columns ``decay:{event}:{c}`` (``stat="decay"``) or
        ``count:{event}:{c}:{window}`` (``stat="count:{window}"``).
    event : str, default "page_view"
        Event type whose per-category features measure interest.
    stat : {"decay", "count:<window>"}, default "decay"
        Which per-category statistic is the term frequency.
    idf : bool or array-like of shape (n_categories,), default True
        True: weight columns by the IDF computed over ``fm``'s users; False: no weighting; an
        array: these weights (the ones learned at fit time, to place new users in the same space).
    categories : sequence of str, optional
        Columns of the result, in order. Categories ``fm`` lacks give zero columns; ``fm``'s
        other categories are left out. Default: every category ``fm`` has, in ``fm``'s order.

    Returns
    -------
    Affinity
        ``X`` of shape (n_users, n_categories) with unit or zero rows.

    Raises
    ------
    ConfigError
        ``fm`` is not a FeatureMatrix, ``stat`` is not a valid statistic, ``idf`` has the wrong
        length.
    SchemaError
        ``fm`` has no users, a value is negative or not finite, or ``fm`` has none of the
        requested ``categories``.
    UnknownNameError
        No feature of ``fm`` matches ``event`` and ``stat`` (close names are suggested).

    Notes
    -----
    With :math:`a_{u,c}` the statistic of user :math:`u` in category :math:`c`, :math:`n` the
    number of users of ``fm`` and :math:`df_c` the number of them with :math:`a_{u,c} > 0`:

    .. math:: idf_c = \\ln\\frac{1 + n}{1 + df_c} + 1, \\qquad
              w_{u,c} = a_{u,c} \\, idf_c, \\qquad x_u = w_u / \\lVert w_u \\rVert_2

    (the smoothed IDF: never zero, so a category every user visits still counts). A user with
    :math:`w_u = 0` keeps a zero row and ``has_affinity`` False: its cosine similarity to
    anything is undefined, and the estimators leave it out explicitly instead of producing NaN.

    Examples
    --------
    >>> aff = interest_affinity(fm)                              # doctest: +SKIP
    >>> aff.X.shape, aff.n_no_affinity                           # doctest: +SKIP
    ((939, 20), 0)
    """
    validate_params({"fm": [InstanceOf(FeatureMatrix, desc="a FeatureMatrix (see build_features)",
                                       show_type=True)],
                     "event": AFFINITY_CONSTRAINTS["event"], "stat": AFFINITY_CONSTRAINTS["stat"]},
                    {"fm": fm, "event": event, "stat": stat}, "interest_affinity")
    if fm.n_users == 0:
        raise SchemaError("fm has no users: interest affinity needs a FeatureMatrix with at "
                          "least one user")
    cols, cats = _category_columns(fm, event, stat)
    n = fm.n_users
    if categories is None:
        target = cats
        src = np.asarray(cols, dtype=np.int64)
    else:
        target = [str(c) for c in categories]
        pos = dict(zip(cats, cols))
        src = np.array([pos.get(c, -1) for c in target], dtype=np.int64)
        if target and not (src >= 0).any():
            raise SchemaError(f"fm has none of the {len(target)} requested categories as "
                              f"{_pattern(event, stat)!r} columns (first: {target[:3]})")
    found = np.flatnonzero(src >= 0)
    sub = sp.csr_matrix(fm.X[:, src[found]], dtype=np.float64).tocoo()
    bad = ~np.isfinite(sub.data) | (sub.data < 0)
    if bad.any():
        p = int(np.flatnonzero(bad)[0])
        name = fm.feature_names[int(src[found][sub.col[p]])]
        raise SchemaError(f"feature {name!r} must be finite and >= 0 to measure interest, got "
                          f"{float(sub.data[p])!r} for user {_py(fm.users[sub.row[p]])!r}")
    d = len(target)
    X = sp.csr_matrix((sub.data, (sub.row, found[sub.col])), shape=(n, d), dtype=np.float64)
    X.eliminate_zeros()
    X.sort_indices()

    if isinstance(idf, (bool, np.bool_)):
        if idf:
            df = np.bincount(X.indices, minlength=d)
            weights = np.log((1.0 + n) / (1.0 + df)) + 1.0
        else:
            weights = np.ones(d)
    else:
        weights = np.asarray(idf, dtype=np.float64)
        if weights.shape != (d,) or not np.all(np.isfinite(weights)) or (weights < 0).any():
            raise ConfigError(f"idf must be True, False or {d} finite weights >= 0 (one per "
                              f"category), got an array of shape {weights.shape}")
    X.data *= weights[X.indices]
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    has = norms > 0
    inv = np.zeros(n)
    inv[has] = 1.0 / norms[has]
    X.data *= np.repeat(inv, np.diff(X.indptr))
    X.eliminate_zeros()
    if not has.all():
        logger.info("interest_affinity: %d of %d users have no %s affinity (zero rows)",
                    int((~has).sum()), n, _pattern(event, stat))
    return Affinity(X=X, users=np.asarray(fm.users), categories=tuple(target),
                    idf=weights, has_affinity=has, event=event, stat=stat)


def _py(v: Any) -> Any:
    """NumPy scalar as the Python value, so messages read ``1`` and not ``np.int64(1)``."""
    return v.item() if isinstance(v, np.generic) else v


def _pattern(event: str, stat: str) -> str:
    if stat == "decay":
        return f"decay:{event}:{{category}}"
    return f"count:{event}:{{category}}:{stat[6:]}"


def _category_columns(fm: FeatureMatrix, event: str, stat: str) -> tuple[list[int], list[str]]:
    """Columns of ``fm`` holding ``stat`` of ``event`` and their categories."""
    if stat == "decay":
        prefix, suffix = f"decay:{event}:", ""
    else:
        prefix, suffix = f"count:{event}:", f":{stat[6:]}"
    cols, cats = [], []
    for j, name in enumerate(fm.feature_names):
        if (name.startswith(prefix) and name.endswith(suffix)
                and len(name) > len(prefix) + len(suffix)):
            cols.append(j)
            cats.append(name[len(prefix):len(name) - len(suffix)])
    if cols:
        return cols, cats
    # Nothing matched: say which (stat, event) pairs the matrix does have.
    avail: dict[str, set[str]] = {}
    for name in fm.feature_names:
        parts = name.split(":")
        if parts[0] == "decay" and len(parts) >= 3:
            avail.setdefault(parts[1], set()).add("decay")
        elif parts[0] == "count" and len(parts) >= 4:
            avail.setdefault(parts[1], set()).add(f"count:{parts[-1]}")
    msg = f"no feature matches {_pattern(event, stat)!r} in this FeatureMatrix"
    if event not in avail:
        close = difflib.get_close_matches(event, sorted(avail), n=3, cutoff=0.6)
        if close:
            msg += f"; did you mean event={close[0]!r}?"
        elif avail:
            msg += f"; events with per-category features: {sorted(avail)}"
        else:
            msg += "; it has no per-category features at all"
    else:
        msg += f"; stats available for event {event!r}: {sorted(avail[event])}"
    raise UnknownNameError(msg)


# ---- the algorithm -----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class KMeansResult:
    """Outcome of :func:`kmeans`.

    Attributes
    ----------
    centers : ndarray of shape (n_clusters, n_features)
    labels : ndarray of int64, shape (n_rows,)
        Nearest center of each row after the last update; -1 for zero rows (cosine only).
    inertia : float
        Sum over labelled rows of ``1 - cos(x, c)`` (cosine) or ``|x - c|^2`` (Euclidean).
    n_iter : int
        Center updates made.
    converged : bool
        Whether the labels stopped changing or the center shift fell to ``tol``.
    """

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    converged: bool


def _as_csr(X: Any, name: str = "X") -> sp.csr_matrix:
    if isinstance(X, Affinity):
        X = X.X
    M = sp.csr_matrix(X, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] == 0 or M.shape[1] == 0:
        raise SchemaError(f"{name} must be a non-empty 2-d matrix, got shape {M.shape}")
    if not np.all(np.isfinite(M.data)):
        raise SchemaError(f"{name} must be finite, got NaN or infinite values")
    M.sort_indices()
    return M


def _row_sqnorm(X: sp.csr_matrix) -> np.ndarray:
    return np.asarray(X.multiply(X).sum(axis=1), dtype=np.float64).ravel()


def kmeans_plusplus(X: Any, n_clusters: int, *, random_state: Any = None,
                    metric: Literal["cosine", "euclidean"] = "cosine") -> np.ndarray:
    """Rows chosen as initial centers by k-means++ (D² sampling).

    Parameters
    ----------
    X : sparse matrix or ndarray of shape (n_rows, n_features)
        For ``metric="cosine"``, rows of unit norm or zero (as from :func:`interest_affinity`).
    n_clusters : int
    random_state : int, numpy.random.Generator or None
    metric : {"cosine", "euclidean"}

    Returns
    -------
    ndarray of int64, shape (n_clusters,)
        Row indices; their rows are the initial centers.

    Raises
    ------
    ConfigError
        ``n_clusters`` exceeds the number of usable rows (non-zero rows for cosine) or of
        distinct rows.

    Notes
    -----
    The first center is a uniformly drawn usable row; each next one is row :math:`i` with
    probability :math:`D(i)^2 / \\sum_j D(j)^2`, :math:`D(i)` the distance from row :math:`i`
    to its closest chosen center (Arthur and Vassilvitskii, 2007). For unit rows
    :math:`D^2 = 2 (1 - \\cos)`, so the cosine and Euclidean versions draw alike.
    """
    X = _as_csr(X)
    validate_params(_METRIC, {"metric": metric}, "kmeans_plusplus")
    rng = np.random.default_rng(random_state)
    sq = _row_sqnorm(X)
    usable = sq > 0 if metric == "cosine" else np.ones(X.shape[0], dtype=bool)
    n_usable = int(usable.sum())
    validate_params({"n_clusters": [Interval(
        Integral, 1, n_usable, desc=f"an integer between 1 and the number of usable rows "
                                    f"({n_usable})")]}, {"n_clusters": n_clusters},
        "kmeans_plusplus")
    tiny = _DUPLICATE_RTOL * max(1.0, float(sq.max()))
    chosen = np.empty(n_clusters, dtype=np.int64)
    chosen[0] = rng.choice(np.flatnonzero(usable))
    d2 = np.full(X.shape[0], np.inf)
    for i in range(1, n_clusters):
        c = X.getrow(int(chosen[i - 1])).toarray().ravel()
        d2 = np.minimum(d2, np.maximum(sq + c @ c - 2.0 * (X @ c), 0.0))
        w = np.where(usable & (d2 > tiny), d2, 0.0)
        cum = np.cumsum(w)
        if cum[-1] <= 0:
            raise ConfigError(f"n_clusters must be at most the number of distinct rows ({i}), "
                              f"got {n_clusters}")
        chosen[i] = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")),
                        X.shape[0] - 1)
    return chosen


def kmeans(X: Any, init: np.ndarray, *, metric: Literal["cosine", "euclidean"] = "cosine",
           max_iter: int = 100, tol: float = 1e-6) -> KMeansResult:
    """Lloyd's k-means from given initial centers (spherical when ``metric="cosine"``).

    Parameters
    ----------
    X : sparse matrix or ndarray of shape (n_rows, n_features)
        For cosine, rows of unit norm or zero; zero rows get label -1 and take no part.
    init : array-like of shape (n_clusters, n_features)
        Initial centers (normalized to unit length for cosine).
    metric : {"cosine", "euclidean"}
    max_iter : int, default 100
        Most center updates.
    tol : float, default 1e-6
        Stop when :math:`\\sum_j \\lVert c_j^{new} - c_j \\rVert^2 \\le tol` (or when no label
        changes). 0 stops only when the labels stop changing.

    Returns
    -------
    KMeansResult

    Notes
    -----
    One iteration assigns every row to its nearest center (ties to the lowest index) and moves
    each center to the mean of its rows; for cosine the mean is rescaled to unit length, which
    maximizes :math:`\\sum_{x \\in j} \\cos(x, c_j)` (spherical k-means, Dhillon and Modha, 2001).
    A cluster left empty is re-seeded with the row farthest from its center (taken from its old
    cluster), so every center keeps members. With the same ``init`` and no empty cluster, the
    Euclidean version makes the same steps as ``scipy.cluster.vq.kmeans2(X, init,
    iter=max_iter, minit="matrix")``.
    """
    X = _as_csr(X)
    validate_params({**_METRIC, **{k: InterestClusters._parameter_constraints[k]
                                   for k in ("max_iter", "tol")}},
                    {"metric": metric, "max_iter": max_iter, "tol": tol}, "kmeans")
    C = np.array(init, dtype=np.float64)
    n, d = X.shape
    if C.ndim != 2 or C.shape[1] != d or C.shape[0] < 1 or not np.all(np.isfinite(C)):
        raise ConfigError(f"init must be a finite array of shape (n_clusters, {d}), got shape "
                          f"{C.shape}")
    k = C.shape[0]
    spherical = metric == "cosine"
    sq = _row_sqnorm(X)
    zero = sq == 0 if spherical else np.zeros(n, dtype=bool)
    if spherical:
        cn = np.linalg.norm(C, axis=1)
        if (cn == 0).any():
            raise ConfigError("init must not contain an all-zero center for metric='cosine'")
        C /= cn[:, None]
    n_usable = int((~zero).sum())
    if k > n_usable:
        raise ConfigError(f"init must have at most as many centers as usable rows ({n_usable}), "
                          f"got {k}")
    ip, ix, dx = X.indptr.astype(np.int64), X.indices.astype(np.int64), X.data

    def assign(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lab, dist = _kernels.assign_nearest(ip, ix, dx, sq, np.ascontiguousarray(C.T),
                                            np.einsum("ij,ij->i", C, C))
        lab[zero] = -1
        dist[zero] = 0.0
        return lab, dist

    labels, dist = assign(C)
    n_iter, converged, relocated = 0, False, False
    for _ in range(max_iter):
        sums, counts = _kernels.cluster_sums(ip, ix, dx, labels, np.int64(k), np.int64(d))
        relocated = _relocate_empty(X, labels, dist, sums, counts)
        if spherical:
            norm = np.linalg.norm(sums, axis=1)
            # A sum can only cancel to zero with signed data; keep the old center then.
            C_new = np.where(norm[:, None] > 0, sums / np.maximum(norm, 1e-300)[:, None], C)
        else:
            C_new = sums / counts[:, None]
        shift = float(((C_new - C) ** 2).sum())
        C = C_new
        n_iter += 1
        new_labels, dist = assign(C)
        same = np.array_equal(new_labels, labels)
        labels = new_labels
        if (same and not relocated) or shift <= tol:
            converged = True
            break
    inertia = float(dist.sum()) / (2.0 if spherical else 1.0)
    return KMeansResult(centers=C, labels=labels, inertia=inertia, n_iter=n_iter,
                        converged=converged)


def _relocate_empty(X: sp.csr_matrix, labels: np.ndarray, dist: np.ndarray, sums: np.ndarray,
                    counts: np.ndarray) -> bool:
    """Give each empty cluster the farthest row of a cluster that can spare one (in place)."""
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return False
    order = np.argsort(-dist, kind="stable")
    taken = 0
    for e in empty:
        while taken < order.size:
            r = int(order[taken])
            taken += 1
            old = labels[r]
            if old >= 0 and counts[old] > 1:
                row = X.getrow(r).toarray().ravel()
                sums[old] -= row
                counts[old] -= 1
                sums[e] = row
                counts[e] = 1
                labels[r] = e
                break
    return True


# ---- the estimator -----------------------------------------------------------------------------
class InterestClusters(ParamsMixin):
    """Interest segments by spherical k-means over users' TF-IDF category affinity.

    A scikit-learn style estimator: the parameters are stored as given, checked at construction
    and by :meth:`fit`, and ``get_params`` / ``set_params`` let ``sklearn.base.clone`` copy it.

    Parameters
    ----------
    n_clusters : int, default 8
    event : str, default "page_view"
        Event type whose per-category features measure interest.
    stat : {"decay", "count:<window>"}, default "decay"
        Per-category statistic used as term frequency (see :func:`interest_affinity`).
    idf : bool, default True
        Weight categories by inverse document frequency.
    max_iter : int, default 100
        Most Lloyd iterations per run.
    tol : float, default 1e-6
        Center-shift tolerance (see :func:`kmeans`).
    n_init : int, default 3
        Runs from different k-means++ starts; the one with the lowest inertia is kept.
    n_top : int, default 5
        Categories listed per cluster in ``top_categories_``.
    random_state : int, numpy.random.Generator or None
        Source of the k-means++ draws; an int gives reproducible clusters.

    Attributes
    ----------
    centroids_ : ndarray of shape (n_clusters, n_categories)
        Unit-norm centers in the TF-IDF space.
    categories_ : tuple of str
    idf_ : ndarray of shape (n_categories,)
    labels_ : ndarray of int64, shape (n_users,)
        Cluster of every fitted user; -1 for users without affinity.
    users_ : ndarray of shape (n_users,)
    n_no_affinity_ : int
        Fitted users with no affinity (in no cluster).
    inertia_ : float
        :math:`\\sum_u (1 - \\cos(x_u, c_{label(u)}))` over users with affinity.
    n_iter_ : int
    cluster_sizes_ : ndarray of int64, shape (n_clusters,)
    top_categories_ : list of list of str
        Each cluster's ``n_top`` heaviest categories (positive weight only), heaviest first.
    similarity_ratio_ : SimilarityRatio
        Yan et al. within/between-cluster cosine similarity of the fitted users
        (see :func:`bta.segment.yan.similarity_ratio`).

    Examples
    --------
    >>> ic = InterestClusters(6, random_state=0).fit(fm)        # doctest: +SKIP
    >>> book = SegmentBook.from_segments(fm.users, ic.segments())  # doctest: +SKIP
    >>> restored = InterestClusters.from_dict(ic.to_dict())      # doctest: +SKIP
    >>> labels = restored.predict(new_fm)                         # doctest: +SKIP
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        **AFFINITY_CONSTRAINTS,
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "n_top": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, n_clusters: int = 8, *, event: str = "page_view", stat: str = "decay",
                 idf: bool = True, max_iter: int = 100, tol: float = 1e-6, n_init: int = 3,
                 n_top: int = 5, random_state: Any = None):
        self.n_clusters = n_clusters
        self.event = event
        self.stat = stat
        self.idf = idf
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.n_top = n_top
        self.random_state = random_state
        self._validate_params()

    def _json_params(self) -> dict[str, Any]:
        p = self.get_params(deep=False)
        rs = p["random_state"]
        # A Generator has no JSON form; the fitted centroids, not the seed, define the model.
        p["random_state"] = int(rs) if isinstance(rs, (int, np.integer)) else None
        p["idf"] = bool(p["idf"])
        return p

    # ---- fitting -------------------------------------------------------------------------------
    def fit(self, fm: FeatureMatrix) -> "InterestClusters":
        """Cluster the users of ``fm``; returns ``self``.

        Raises
        ------
        ConfigError
            ``n_clusters`` exceeds the users with affinity (or their distinct rows).
        SchemaError, UnknownNameError
            From :func:`interest_affinity`.
        """
        self._validate_params()
        aff = interest_affinity(fm, event=self.event, stat=self.stat, idf=bool(self.idf))
        n_active = int(aff.has_affinity.sum())
        if self.n_clusters > n_active:
            raise ConfigError(f"n_clusters must be at most the number of users with interest "
                              f"affinity ({n_active} of {aff.n_users}), got {self.n_clusters}")
        rng = np.random.default_rng(self.random_state)
        runs = []
        for _ in range(self.n_init):
            rows = kmeans_plusplus(aff.X, self.n_clusters, random_state=rng)
            runs.append(kmeans(aff.X, aff.X[rows].toarray(), metric="cosine",
                               max_iter=self.max_iter, tol=self.tol))
        best = min(runs, key=lambda r: r.inertia)  # first of equals: runs are in draw order
        self.affinity_ = aff
        self.categories_ = aff.categories
        self.idf_ = aff.idf
        self.centroids_ = best.centers
        self.labels_ = best.labels
        self.users_ = aff.users
        self.n_no_affinity_ = aff.n_no_affinity
        self.inertia_ = best.inertia
        self.n_iter_ = best.n_iter
        self.converged_ = best.converged
        self.cluster_sizes_ = np.bincount(best.labels[best.labels >= 0],
                                          minlength=self.n_clusters).astype(np.int64)
        self._describe()
        self.similarity_ratio_: SimilarityRatio = similarity_ratio(aff.X, best.labels)
        return self

    def _describe(self) -> None:
        tops = []
        for c in self.centroids_:
            order = np.argsort(-c, kind="stable")[: self.n_top]
            tops.append([self.categories_[j] for j in order if c[j] > 0])
        self.top_categories_ = tops

    def _check_fitted(self) -> None:
        if not hasattr(self, "centroids_"):
            raise NotFittedError("InterestClusters is not fitted yet: call fit(fm) or "
                                 "InterestClusters.from_dict(...) first")

    # ---- using the centroids -------------------------------------------------------------------
    def _affinity_of(self, fm: FeatureMatrix) -> Affinity:
        return interest_affinity(fm, event=self.event, stat=self.stat, idf=self.idf_,
                                 categories=self.categories_)

    def transform(self, fm: FeatureMatrix) -> np.ndarray:
        """Cosine similarity of every user of ``fm`` to every centroid.

        Returns
        -------
        ndarray of shape (n_users, n_clusters)
            0 for users without affinity.
        """
        self._check_fitted()
        return np.asarray(self._affinity_of(fm).X @ self.centroids_.T)

    def predict(self, fm: FeatureMatrix) -> np.ndarray:
        """Cluster of every user of ``fm`` (its nearest centroid by cosine).

        Returns
        -------
        ndarray of int64, shape (n_users,)
            -1 for users without affinity in the fitted categories.
        """
        self._check_fitted()
        aff = self._affinity_of(fm)
        return self._assign(aff)[0]

    def _assign(self, aff: Affinity) -> tuple[np.ndarray, np.ndarray]:
        X = aff.X
        sq = aff.has_affinity.astype(np.float64)
        C = self.centroids_
        labels, _ = _kernels.assign_nearest(
            X.indptr.astype(np.int64), X.indices.astype(np.int64), X.data, sq,
            np.ascontiguousarray(C.T), np.einsum("ij,ij->i", C, C))
        labels[~aff.has_affinity] = -1
        return labels, np.asarray(X @ C.T)

    def fit_predict(self, fm: FeatureMatrix) -> np.ndarray:
        """``fit(fm).labels_``."""
        return self.fit(fm).labels_

    def segments(self, prefix: str = "interest", fm: FeatureMatrix | None = None
                 ) -> list[Segment]:
        """One ``kind="cluster"`` Segment per cluster, named ``{prefix}:{j}``.

        Parameters
        ----------
        prefix : str, default "interest"
        fm : FeatureMatrix, optional
            Users to place (by :meth:`predict`); default the fitted users.

        Returns
        -------
        list of Segment
            Members aligned with ``fm.users`` (or ``users_``); ``scores`` is the cosine
            similarity to the centroid. The definition holds the centroid index, the top
            categories with their centroid weights and the parameters.
        """
        self._check_fitted()
        if fm is None:
            if not hasattr(self, "labels_"):
                raise ConfigError("segments() of a model loaded with from_dict needs fm: the "
                                  "users to place")
            labels = self.labels_
            sims = np.asarray(self.affinity_.X @ self.centroids_.T)
        else:
            labels, sims = self._assign(self._affinity_of(fm))
        params = self._json_params()
        out = []
        for j, c in enumerate(self.centroids_):
            top = self.top_categories_[j]
            weights = [round(float(c[self.categories_.index(t)]), 6) for t in top]
            definition = {"maker": "InterestClusters", "centroid_index": j,
                          "top_categories": list(top), "top_weights": weights,
                          "params": params}
            out.append(Segment(name=f"{prefix}:{j}", kind="cluster", definition=definition,
                               members=labels == j, scores=sims[:, j]))
        return out

    # ---- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable state that :meth:`from_dict` restores for ``predict``/``segments``."""
        self._check_fitted()
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "params": self._json_params(), "categories": list(self.categories_),
                "idf": [float(v) for v in self.idf_],
                "centroids": [[float(v) for v in row] for row in self.centroids_]}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "InterestClusters":
        """Model restored from :meth:`to_dict` (ready for ``predict`` and ``segments(fm=...)``).

        Raises
        ------
        SchemaError
            ``state`` is not a saved InterestClusters of a supported format version.
        """
        got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
        if got != FORMAT:
            raise SchemaError(f"state is not a saved InterestClusters: expected format "
                              f"{FORMAT!r}, got {got!r}")
        if state.get("format_version") != FORMAT_VERSION:
            raise SchemaError(f"InterestClusters format_version {state.get('format_version')!r} "
                              f"is not supported (this bta reads {FORMAT_VERSION})")
        try:
            model = cls(**state["params"])
            cats = tuple(str(c) for c in state["categories"])
            idf = np.asarray(state["idf"], dtype=np.float64)
            C = np.asarray(state["centroids"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"state is not a valid saved InterestClusters: {exc}") from None
        if C.shape != (model.n_clusters, len(cats)) or idf.shape != (len(cats),):
            raise SchemaError(f"state centroids must have shape (n_clusters, n_categories) = "
                              f"{(model.n_clusters, len(cats))} and idf {len(cats)} values, got "
                              f"{C.shape} and {idf.shape}")
        model.categories_, model.idf_, model.centroids_ = cats, idf, C
        model._describe()
        return model

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"InterestClusters({args})"

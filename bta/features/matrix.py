"""FeatureMatrix: sparse users x features with names, and the column layout of a spec."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bta.errors import UnknownNameError
from bta.features.families import USER_FEATURES, USER_NAN_ABSENT, cells
from bta.features.spec import FeatureSpec
from bta.ids import IdIndex

__all__ = ["FeatureMatrix", "Layout", "layout_for"]


@dataclass(frozen=True)
class Layout:
    """Column layout for a spec over a category vocabulary (shared by batch and online)."""

    cat_slot: np.ndarray          # int64 per category code: column slot, -1 no column, -2 excluded
    column_categories: tuple      # categories with columns, in slot order
    feature_names: tuple[str, ...]
    nan_absent: np.ndarray        # bool per column
    pv_slot: int                  # event slot of page_view, -1 when not in spec.events

    @property
    def n_cat(self) -> int:
        return len(self.column_categories)


def layout_for(spec: FeatureSpec, categories: Sequence[Any]) -> Layout:
    """Column layout of ``spec`` given the category vocabulary (code -> category).

    Read off the feature families' declarations (:mod:`bta.features.families`): the
    per-category block (``cells``: ``spec.stats`` per (event, category), NaN when absent for
    ``cells.NAN_ABSENT_STATS``), then the user-level families' columns in their order. Features
    whose absence means "undefined" rather than zero (recency of something that never happened
    is not 0 days) are NaN when absent in every dense view.
    """
    cats = list(categories)
    deny = set(spec.deny_categories)
    allow = None if spec.categories is None else set(spec.categories)
    cat_slot = np.full(len(cats), -1, dtype=np.int64)
    # columns follow sorted category order, so that any vocabulary order gives the same layout
    order = sorted(range(len(cats)), key=lambda i: _sort_key(cats[i]))
    column_categories = []
    for i in order:
        c = cats[i]
        if c in deny:
            cat_slot[i] = -2
        elif allow is None or c in allow:
            cat_slot[i] = len(column_categories)
            column_categories.append(c)
    names = [spec.cell_feature_name(e, c, s)
             for e in spec.events for c in column_categories for s in spec.stats]
    nan_absent = [s in cells.NAN_ABSENT_STATS for _e in spec.events for _c in column_categories
                  for s in spec.stats]
    if spec.user_features:
        names.extend(USER_FEATURES)
        nan_absent.extend(f in USER_NAN_ABSENT for f in USER_FEATURES)
    pv_slot = spec.events.index("page_view") if "page_view" in spec.events else -1
    return Layout(cat_slot, tuple(column_categories), tuple(names),
                  np.asarray(nan_absent, dtype=bool), pv_slot)


def _sort_key(c: Any) -> tuple:
    # mixed int/str vocabularies sort numbers first, then text
    return (0, c, "") if isinstance(c, (int, np.integer)) else (1, 0, str(c))


@dataclass(frozen=True, eq=False)
class FeatureMatrix:
    """Behavioral features of users at one point in time.

    Attributes
    ----------
    X : scipy.sparse.csr_matrix of shape (n_users, n_features)
        Values. Absent entries mean 0, except in the columns flagged by ``nan_absent``
        (recency-like features), where absent means "never happened" and dense views give NaN.
        Those columns store an explicit entry whenever the value is defined, even when it is 0.
    feature_names : tuple of str, length n_features
    users : ndarray of shape (n_users,)
        Original user ids, one per row.
    as_of : pandas.Timestamp
        Only events at or before this time were counted.
    spec : FeatureSpec
    nan_absent : ndarray of bool, shape (n_features,)
    n_events : int
        Events that entered the features.
    n_flagged_excluded : int
        Events left out because their user was flagged as a bot.
    """

    X: sp.csr_matrix
    feature_names: tuple[str, ...]
    users: np.ndarray
    as_of: pd.Timestamp
    spec: FeatureSpec
    nan_absent: np.ndarray
    n_events: int = 0
    n_flagged_excluded: int = 0
    _index: dict = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.feature_names)})

    # ---- shape ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.X.shape

    @property
    def n_users(self) -> int:
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def __repr__(self) -> str:
        return (f"FeatureMatrix({self.n_users} users x {self.n_features} features, "
                f"nnz={self.X.nnz}, as_of={self.as_of})")

    # ---- lookup --------------------------------------------------------------------------------
    def feature_index(self, name: str) -> int:
        """Column of ``name``; unknown names raise with the closest names suggested."""
        try:
            return self._index[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.feature_names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(f"unknown feature {name!r}{hint}") from None

    def column(self, name: str) -> np.ndarray:
        """Dense values of one feature for every user (NaN where undefined)."""
        j = self.feature_index(name)
        return self._dense(self.X[:, [j]], np.array([self.nan_absent[j]]))[:, 0]

    def to_pandas(self, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """Dense DataFrame indexed by user id (NaN where a recency-like feature is undefined).

        ``columns`` selects features; the full matrix can be large (n_users x n_features).
        """
        if columns is None:
            idx = np.arange(self.n_features)
        else:
            idx = np.array([self.feature_index(c) for c in columns], dtype=np.int64)
        dense = self._dense(self.X[:, idx], self.nan_absent[idx])
        names = [self.feature_names[i] for i in idx]
        return pd.DataFrame(dense, index=pd.Index(self.users, name="user_id"), columns=names)

    def to_long(self) -> pd.DataFrame:
        """Stored entries as a tidy frame (user_id, feature, value)."""
        coo = self.X.tocoo()
        return pd.DataFrame({
            "user_id": self.users[coo.row],
            "feature": np.asarray(self.feature_names, dtype=object)[coo.col],
            "value": coo.data,
        })

    def user_rows(self, user_ids: Any) -> np.ndarray:
        """Rows of ``user_ids`` (a scalar or an array; -1 where unknown), found by canonical
        id (:mod:`bta.ids`: on integer ids ``"923"`` finds user 923)."""
        index = self.__dict__.get("_user_rows")
        if index is None:
            index = self.__dict__["_user_rows"] = IdIndex(self.users)
        return index.get_indexer(np.atleast_1d(np.asarray(user_ids, dtype=object)).ravel())

    def row(self, user_id: Any) -> dict[str, float]:
        """The defined features of one user as a dict (stored entries only)."""
        hit = int(self.user_rows(np.array([user_id], dtype=object))[0])
        if hit < 0:
            raise UnknownNameError(f"unknown user {user_id!r}: not in this FeatureMatrix")
        r = self.X.getrow(hit)
        return {self.feature_names[j]: float(v) for j, v in zip(r.indices, r.data)}

    def erase(self, user_ids: Any) -> "FeatureMatrix":
        """A new matrix without the rows of ``user_ids`` (a scalar or a list, compared in
        canonical form; unknown ids ignored). Returns ``self`` when none is held.

        For :func:`bta.privacy.erase`, which puts the new matrix in ``receipt.results``.
        """
        rows = self.user_rows(user_ids)
        keep = np.ones(self.n_users, dtype=bool)
        keep[rows[rows >= 0]] = False
        if keep.all():
            return self
        return replace(self, X=sp.csr_matrix(self.X[keep]), users=self.users[keep])

    def _dense(self, sub: sp.spmatrix, nan_absent: np.ndarray) -> np.ndarray:
        sub = sp.csc_matrix(sub)
        out = sub.toarray().astype(np.float64, copy=False)
        for j in np.flatnonzero(nan_absent):
            col = np.full(out.shape[0], np.nan)
            lo, hi = sub.indptr[j], sub.indptr[j + 1]
            col[sub.indices[lo:hi]] = sub.data[lo:hi]
            out[:, j] = col
        return out

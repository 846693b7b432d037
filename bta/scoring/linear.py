"""LinearScorer: a generalized linear model (logistic, Poisson or identity link) scored by
numba kernels, on dense rows, CSR matrices and the sparse profile vectors of the serving path.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np

from bta._params import Options, Predicate, validate_args
from bta.errors import ConfigError, SchemaError, check_param
from bta.scoring import _kernels as K

__all__ = ["LinearScorer", "Link"]

Link = Literal["logistic", "poisson", "identity"]
_LINKS = {"logistic": K.LINK_SIGMOID, "poisson": K.LINK_EXP, "identity": K.LINK_IDENTITY}
_PARAMS: dict[str, list[Any]] = {
    # anything float() reads (a NumPy scalar, a 1-element array), as the kernel takes a float
    "intercept": [Predicate(lambda v: math.isfinite(float(v)), "a finite number")],
    "link": [Options(tuple(_LINKS), desc=f"one of {tuple(_LINKS)}")],
}


def _row_array(a: Any, dtype: Any, what: str) -> np.ndarray:
    """1-d contiguous writable array of ``dtype`` (read-only inputs are copied: numba types
    them apart and would compile again on a request)."""
    try:
        arr = np.require(a, dtype=dtype, requirements=["C", "A", "W"])
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{what} must be numbers, got {type(a).__name__}") from exc
    if arr.ndim != 1:
        raise SchemaError(f"{what} must be 1-d, got shape {arr.shape}")
    return arr


class LinearScorer:
    """``link(intercept + x @ coef)`` for dense rows, CSR matrices and sparse rows.

    Parameters
    ----------
    coef : array-like of shape (n_features,)
        Coefficients, finite.
    intercept : float, default 0.0
    link : {"logistic", "poisson", "identity"}, default "logistic"
        Inverse link applied to the linear predictor ``eta``: logistic
        ``1 / (1 + exp(-eta))`` (a click or conversion probability), poisson ``exp(eta)``
        (an expected count), identity ``eta``.
    feature_names : sequence of str, optional
        Names of the columns, checked against a DataFrame's columns in :meth:`predict`.
    warmup : bool, default True
        Compile (or load from numba's cache) every kernel now, see :meth:`warmup`.

    Raises
    ------
    ConfigError
        Non-finite or non-1-d ``coef``, non-finite ``intercept``, unknown ``link``, or
        ``feature_names`` of the wrong length.

    Notes
    -----
    The same scores as statsmodels' ``GLMResults.predict`` for a GLM fitted with the matching
    family and its canonical link (``Binomial``, ``Poisson``, ``Gaussian``), or scikit-learn's
    ``LogisticRegression.predict_proba(X)[:, 1]``, given their coefficients and intercept; the
    library needs neither. Scores are computed in float64; the dot product's summation order
    differs from BLAS, so agreement is to rounding (about 1e-15 relative), not bit for bit.

    Examples
    --------
    >>> s = LinearScorer([0.5, -1.0], intercept=0.25, link="identity")
    >>> float(s.predict_sparse_row([1], [2.0]))
    -1.75
    """

    def __init__(self, coef: Any, intercept: float = 0.0, link: Link = "logistic",
                 feature_names: Sequence[str] | None = None, *, warmup: bool = True) -> None:
        try:
            c = np.array(coef, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"coef must be an array of numbers, got {type(coef).__name__}"
                              ) from exc
        check_param("coef", c.shape, c.ndim == 1 and c.size > 0,
                    "a non-empty 1-d array (one coefficient per feature)")
        if not np.all(np.isfinite(c)):
            bad = int(np.flatnonzero(~np.isfinite(c))[0])
            raise ConfigError(f"coef must be finite numbers, got {c[bad]} at index {bad}")
        validate_args(_PARAMS, "LinearScorer", intercept=intercept, link=link)
        b = float(intercept)
        names = None if feature_names is None else tuple(str(f) for f in feature_names)
        if names is not None and len(names) != c.size:
            raise ConfigError(f"feature_names must have {c.size} names (one per coefficient), "
                              f"got {len(names)}")
        self._coef = c
        self._intercept = b
        self._link_name = link
        self._link = _LINKS[link]
        self._feature_names = names
        if warmup:
            self.warmup()

    @property
    def coef(self) -> np.ndarray:
        """Coefficients (a read-only view)."""
        v = self._coef.view()
        v.flags.writeable = False
        return v

    @property
    def intercept(self) -> float:
        return self._intercept

    @property
    def link(self) -> str:
        return self._link_name

    @property
    def n_features(self) -> int:
        return int(self._coef.shape[0])

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        return self._feature_names

    def __repr__(self) -> str:
        return f"LinearScorer(n_features={self.n_features}, link={self._link_name!r})"

    def predict(self, X: Any) -> np.ndarray:
        """Score a matrix of rows.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features), or a scipy sparse matrix
            Sparse input (any format) is scored as CSR without densifying.

        Returns
        -------
        ndarray of float64, shape (n_rows,)

        Raises
        ------
        SchemaError
            Wrong width, not numbers, or DataFrame columns other than ``feature_names``.
        """
        n = self.n_features
        if hasattr(X, "tocsr") and hasattr(X, "nnz"):  # scipy.sparse, without importing it
            X = X.tocsr()
            if X.ndim != 2 or X.shape[1] != n:
                raise SchemaError(f"X must have {n} columns (one per coefficient), got shape "
                                  f"{X.shape}")
            itype = X.indices.dtype if X.indices.dtype in (np.int32, np.int64) else np.int64
            indptr = _row_array(X.indptr, itype, "X.indptr")
            indices = _row_array(X.indices, itype, "X.indices")
            data = _row_array(X.data, np.float64, "X.data")
            # The kernel does not check bounds: a malformed matrix must not read out of bounds.
            nnz = indices.shape[0]
            if indptr.shape[0] != X.shape[0] + 1 or data.shape[0] != nnz or (nnz and (
                    indices.min() < 0 or indices.max() >= n)) or np.any(np.diff(indptr) < 0) \
                    or (indptr.size and (indptr[0] < 0 or indptr[-1] > nnz)):
                raise SchemaError(f"X must be a well-formed CSR matrix (indptr of n_rows + 1 "
                                  f"rising offsets, indices in [0, {n})), got a malformed one")
            out = np.empty(X.shape[0], dtype=np.float64)
            K.linear_csr(indptr, indices, data, self._coef, self._intercept, self._link, out)
            return out
        columns = getattr(X, "columns", None)
        if columns is not None and self._feature_names is not None:
            got = [str(c) for c in columns]
            if got != list(self._feature_names):
                bad = next((i for i, (g, e) in enumerate(zip(got, self._feature_names))
                            if g != e), min(len(got), n))
                raise SchemaError(f"X.columns must be the feature names {n} long; at position "
                                  f"{bad} expected "
                                  f"{self._feature_names[bad] if bad < n else None!r}, got "
                                  f"{got[bad] if bad < len(got) else None!r}")
        try:
            # The one array type the kernel is compiled for; anything else is copied once.
            arr = np.require(X, dtype=np.float64, requirements=["C", "A", "W"])
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"X must be numbers, got {type(X).__name__}") from exc
        if arr.ndim != 2 or arr.shape[1] != n:
            raise SchemaError(f"X must be a 2-d array with {n} columns (one per coefficient), "
                              f"got shape {arr.shape}")
        out = np.empty(arr.shape[0], dtype=np.float64)
        K.linear_dense(arr, self._coef, self._intercept, self._link, out)
        return out

    def predict_one(self, x: Any) -> float:
        """Score one dense row ``x`` of shape (n_features,)."""
        if not (type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 1
                and (fl := x.flags).c_contiguous and fl.aligned and fl.writeable):
            x = _row_array(x, np.float64, "x")
        if x.shape[0] != self.n_features:
            raise SchemaError(f"x must have {self.n_features} features (one per coefficient), "
                              f"got {x.shape[0]}")
        out = np.empty(1, dtype=np.float64)
        K.linear_dense(x.reshape(1, -1), self._coef, self._intercept, self._link, out)
        return float(out[0])

    def predict_sparse_row(self, indices: Any, values: Any) -> float:
        """Score one sparse row: ``values[p]`` is feature ``indices[p]``; other features are 0.

        Parameters
        ----------
        indices : array-like of int, shape (nnz,)
            Feature indices in ``[0, n_features)``, any order; repeated indices add up.
        values : array-like of float, shape (nnz,)

        Returns
        -------
        float

        Raises
        ------
        SchemaError
            Lengths differ, or an index is out of range.
        """
        if not (type(indices) is np.ndarray and indices.dtype in (np.int32, np.int64)
                and indices.ndim == 1 and (fl := indices.flags).c_contiguous and fl.aligned
                and fl.writeable):
            indices = _row_array(indices, np.int64, "indices")
        if not (type(values) is np.ndarray and values.dtype == np.float64 and values.ndim == 1
                and (fl := values.flags).c_contiguous and fl.aligned and fl.writeable):
            values = _row_array(values, np.float64, "values")
        if indices.shape[0] != values.shape[0]:
            raise SchemaError(f"values must have as many entries as indices ({indices.shape[0]}),"
                              f" got {values.shape[0]}")
        score, bad = K.linear_sparse_row(indices, values, self._coef, self._intercept,
                                         self._link)
        if bad >= 0:
            raise SchemaError(f"indices must lie in [0, {self.n_features}), got "
                              f"{int(indices[bad])} at position {bad}")
        return float(score)

    def warmup(self) -> None:
        """Compile every kernel this scorer calls (int32 and int64 sparse indices), or load it
        from numba's cache; the constructor calls it unless ``warmup=False``."""
        X = np.zeros((1, self.n_features), dtype=np.float64)
        out = np.empty(1, dtype=np.float64)
        K.linear_dense(X, self._coef, self._intercept, self._link, out)
        for itype in (np.int32, np.int64):
            idx = np.zeros(1, dtype=itype)
            K.linear_csr(np.array([0, 1], dtype=itype), idx, np.zeros(1), self._coef,
                         self._intercept, self._link, out)
            K.linear_sparse_row(idx, np.zeros(1), self._coef, self._intercept, self._link)

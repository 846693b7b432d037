"""Input columns of :func:`~bta.evaluate.ab.ab_report`: roles, sources and their readers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from bta.errors import ConfigError, SchemaError, UnknownNameError, check_param

__all__ = [
    "ROLES",
    "_DAY_MS",
    "_OUTCOME_ROLES",
    "CostModel",
    "_Source",
    "_codes",
    "_numbers",
    "_resolve",
    "_times_ms",
]


#: bta's column roles and their default column names.
ROLES = {"arm": "arm", "user": "user_id", "impressions": "impressions", "clicks": "clicks",
         "conversions": "conversions", "revenue": "revenue", "cost": "cost", "price": "price",
         "ts": "ts", "request_id": "request_id"}
_OUTCOME_ROLES = ("clicks", "conversions", "revenue")
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class CostModel:
    """Spend from a pricing model: exactly one of a CPM, CPC or CPA price.

    ``spend = cpm * impressions / 1000``, ``cpc * clicks`` or ``cpa * conversions``.

    Examples
    --------
    >>> CostModel(cpm=2.5)
    CostModel(cpm=2.5, cpc=None, cpa=None)
    """

    cpm: float | None = None
    cpc: float | None = None
    cpa: float | None = None

    def __post_init__(self) -> None:
        given = {k: v for k, v in (("cpm", self.cpm), ("cpc", self.cpc), ("cpa", self.cpa))
                 if v is not None}
        if len(given) != 1:
            raise ConfigError(f"CostModel needs exactly one of cpm, cpc, cpa, got cpm="
                              f"{self.cpm!r}, cpc={self.cpc!r}, cpa={self.cpa!r}")
        (k, v), = given.items()
        check_param(k, v, isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                    and math.isfinite(v) and v >= 0, "a non-negative finite number")

    def spend(self, impressions: np.ndarray, clicks: np.ndarray | None,
              conversions: np.ndarray | None) -> np.ndarray:
        """Spend per row (array of shape (n_rows,))."""
        if self.cpm is not None:
            return self.cpm * impressions / 1000.0
        basis, name = (clicks, "clicks") if self.cpc is not None else (conversions, "conversions")
        if basis is None:
            raise ConfigError(f"CostModel({'cpc' if self.cpc is not None else 'cpa'}=...) needs "
                              f"the {name} column, which the input does not have")
        return (self.cpc if self.cpc is not None else self.cpa) * basis


# ----------------------------------------------------------------------------- reading


class _Source:
    """A table of columns (DataFrame, Arrow, Parquet, polars, mapping of arrays)."""

    def __init__(self, data: Any, what: str):
        self.what = what
        self._data = data
        if isinstance(data, pd.DataFrame):
            self.names = [str(c) for c in data.columns]
            self._kind = "pandas"
        elif _is_arrow(data):
            self.names = list(data.schema.names)
            self._kind = "arrow"
        elif isinstance(data, (str, os.PathLike)):
            import pyarrow.parquet as pq

            try:
                self._data = pq.ParquetDataset(data)
            except (OSError, ValueError) as exc:
                raise SchemaError(f"{what} path {str(data)!r} is not readable Parquet: "
                                  f"{exc}") from exc
            self.names = list(self._data.schema.names)
            self._kind = "parquet"
        elif callable(getattr(data, "to_arrow", None)) or callable(getattr(data, "to_table",
                                                                             None)):
            # polars (to_arrow), bta's DecisionLog (to_table), ...
            self._data = data.to_arrow() if hasattr(data, "to_arrow") else data.to_table()
            self.names = list(self._data.schema.names)
            self._kind = "arrow"
        elif isinstance(data, Mapping):
            lengths = {str(k): len(v) for k, v in data.items()}
            if len(set(lengths.values())) > 1:
                got = ", ".join(f"{k!r}: {v}" for k, v in lengths.items())
                raise SchemaError(f"{what} columns must all have the same length, got {got}")
            self._data = {str(k): v for k, v in data.items()}
            self.names = list(self._data)
            self._kind = "mapping"
        else:
            raise SchemaError(f"{what} must be a pandas DataFrame, a pyarrow Table, a Parquet "
                              f"path or a mapping of column arrays, got {type(data).__name__}")

    def load(self, cols: Sequence[str]) -> dict[str, pd.Series]:
        cols = list(dict.fromkeys(cols))
        if self._kind == "pandas":
            return {c: self._data[c] for c in cols}
        if self._kind == "mapping":
            return {c: pd.Series(np.asarray(self._data[c]) if not isinstance(
                self._data[c], pd.Series) else self._data[c].to_numpy()) for c in cols}
        table = (self._data.read(columns=cols) if self._kind == "parquet"
                 else self._data.select(cols))
        return {c: table.column(c).to_pandas() for c in cols}


def _is_arrow(data: Any) -> bool:
    import pyarrow as pa

    return isinstance(data, (pa.Table, pa.RecordBatch))


def _first_bad(mask: np.ndarray, values: Any) -> str:
    i = int(np.flatnonzero(mask)[0])
    v = values[i]
    return f"row {i}: {v.item() if isinstance(v, np.generic) else v!r}"


def _numbers(s: pd.Series, name: str, what: str, kind: Literal["count", "nonneg", "real"]
             ) -> np.ndarray:
    if not (pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)):
        raise SchemaError(f"{what} column {name!r} must be numeric, got dtype {s.dtype}")
    x = s.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(x)
    if kind != "real":
        bad |= x < 0
    if kind == "count":
        bad |= x != np.floor(x)
    if bad.any():
        expected = {"count": "non-negative integers", "nonneg": "non-negative finite numbers",
                    "real": "finite numbers"}[kind]
        raise SchemaError(f"{what} column {name!r} must hold {expected}; {int(bad.sum())} of "
                          f"{x.size} rows do not (first: {_first_bad(bad, x)})")
    return x


def _codes(s: pd.Series, name: str, what: str, allow_null: bool = False
           ) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.int64)
    if not allow_null and (codes < 0).any():
        bad = codes < 0
        raise SchemaError(f"{what} column {name!r} must not be null; {int(bad.sum())} of "
                          f"{codes.size} rows are (first: row {int(np.flatnonzero(bad)[0])})")
    return codes, np.asarray(uniques, dtype=object)


def _times_ms(s: pd.Series, name: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        # epoch milliseconds (pandas would read bare floats as nanoseconds)
        ms = _numbers(s, name, "log", "real")
        return np.floor(ms).astype(np.int64)
    try:
        t = pd.to_datetime(s, utc=True)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"log column {name!r} must hold times (datetimes or epoch "
                          f"milliseconds), got dtype {s.dtype}: {exc}") from exc
    if t.isna().any():
        bad = t.isna().to_numpy()
        raise SchemaError(f"log column {name!r} must not be null; {int(bad.sum())} of "
                          f"{bad.size} rows are (first: row {int(np.flatnonzero(bad)[0])})")
    return t.dt.as_unit("ms").astype("int64").to_numpy()


def _resolve(columns: Mapping[str, Any] | None) -> tuple[dict[str, str], set[str]]:
    columns = dict(columns or {})
    unknown = [k for k in columns if k not in ROLES]
    if unknown:
        raise UnknownNameError(f"columns has unknown key {unknown[0]!r}; expected some of "
                               f"{list(ROLES)}")
    return {r: str(columns.get(r, d)) for r, d in ROLES.items()}, set(columns)

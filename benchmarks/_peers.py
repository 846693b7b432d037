"""The per-(user, category) aggregation done by bta and by its peers, and one way to compare them.

Every implementation computes, per (user, category) over the events with ``ts <= as_of``:

- ``c1``, ``c7``, ``c30``: events with ``as_of - W < ts <= as_of`` for W = 1, 7, 30 days;
- ``decay``: ``sum 0.5 ** ((as_of - ts) / 7 days)``;
- ``last``: ``max ts`` (bta gives recency in days, ``(as_of - last) / 1 day``, converted back).

Each result is brought to one common form, :class:`Cells` (arrays sorted by user, category), and
checked against :func:`reference_cells` (NumPy: one sort, then ``reduceat``) with
:func:`assert_same_cells`. The peers (pandas, polars, DuckDB) are imported lazily: they are
benchmark dependencies, not bta's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from _data import DAY_MS, HALF_LIFE_MS, WINDOWS_MS, Events, LogEvents

__all__ = ["Cells", "DECAY_RTOL", "assert_same_cells", "reference_cells", "cells_from_columns",
           "cells_from_feature_matrix", "bta_spec", "bta_event_log", "bta_features",
           "bta_end_to_end", "bta_log_features", "pandas_features", "polars_features",
           "polars_log_features", "duckdb_features", "duckdb_connect", "page_view_events",
           "to_cells", "log_cells"]

_D1, _D7, _D30 = WINDOWS_MS
# Decayed sums are computed in different orders (bta folds incrementally, the peers sum terms
# in hash-group order, pow comes from different math libraries): a few ulps per term, so 1e-9
# relative is far above rounding and far below any real difference (one event weighs >= 0.05).
DECAY_RTOL = 1e-9


@dataclass(frozen=True)
class Cells:
    """Per-(user, category) results in one form, sorted by (user, category).

    Attributes
    ----------
    user, category : ndarray of int64, shape (n_cells,)
    c1, c7, c30 : ndarray of int64, shape (n_cells,)
        Event counts in the 1, 7 and 30 day windows.
    decay : ndarray of float64, shape (n_cells,)
    last : ndarray of int64, shape (n_cells,)
        Time of the last event (epoch ms).
    """

    user: np.ndarray
    category: np.ndarray
    c1: np.ndarray
    c7: np.ndarray
    c30: np.ndarray
    decay: np.ndarray
    last: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.user.shape[0])


def cells_from_columns(user: Any, category: Any, c1: Any, c7: Any, c30: Any, decay: Any,
                       last: Any) -> Cells:
    """Cells from unsorted columns (any order of rows), with the common dtypes."""
    user = np.asarray(user, dtype=np.int64)
    category = np.asarray(category, dtype=np.int64)
    order = np.lexsort((category, user))
    return Cells(user=user[order], category=category[order],
                 c1=np.asarray(c1, dtype=np.int64)[order],
                 c7=np.asarray(c7, dtype=np.int64)[order],
                 c30=np.asarray(c30, dtype=np.int64)[order],
                 decay=np.asarray(decay, dtype=np.float64)[order],
                 last=np.asarray(last, dtype=np.int64)[order])


def _first_mismatch(name: str, col: str, got: Cells, want: Cells, bad: np.ndarray) -> str:
    i = int(np.flatnonzero(bad)[0])
    return (f"{name}: {int(bad.sum())} of {want.n_cells} cells differ in {col}; first at "
            f"user={want.user[i]}, category={want.category[i]}: got "
            f"{getattr(got, col)[i].item()!r}, expected {getattr(want, col)[i].item()!r}")


def assert_same_cells(got: Cells, want: Cells, name: str) -> None:
    """Raise AssertionError unless ``got`` equals ``want``: keys and counts and last exactly,
    decay to ``DECAY_RTOL`` relative."""
    if got.n_cells != want.n_cells:
        raise AssertionError(f"{name}: {got.n_cells} (user, category) cells, expected "
                             f"{want.n_cells}")
    for col in ("user", "category", "c1", "c7", "c30", "last"):
        bad = getattr(got, col) != getattr(want, col)
        if bad.any():
            raise AssertionError(_first_mismatch(name, col, got, want, bad))
    bad = ~(np.abs(got.decay - want.decay) <= DECAY_RTOL * np.abs(want.decay))
    if bad.any():
        raise AssertionError(_first_mismatch(name, "decay", got, want, bad))


# ------------------------------------------------------------------------------ reference


def reference_cells(ev: Events) -> Cells:
    """NumPy reference, straight from the definitions: group by one stable sort of the cell key,
    then sum or take the extreme per group."""
    age = ev.as_of - ev.ts
    keep = age >= 0
    key = ev.user[keep] * ev.n_categories + ev.category[keep]
    order = np.argsort(key, kind="stable")
    key = key[order]
    age = age[keep][order]
    if key.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Cells(empty, empty, empty, empty, empty, np.zeros(0), empty)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    counts = [np.add.reduceat((age < w).astype(np.int64), starts) for w in WINDOWS_MS]
    return Cells(user=key[starts] // ev.n_categories, category=key[starts] % ev.n_categories,
                 c1=counts[0], c7=counts[1], c30=counts[2],
                 decay=np.add.reduceat(0.5 ** (age / HALF_LIFE_MS), starts),
                 last=ev.as_of - np.minimum.reduceat(age, starts))


# ------------------------------------------------------------------------------------- bta


def bta_spec():
    """The bta FeatureSpec of the benchmark: page views only, per-category cells only."""
    from bta.features import FeatureSpec

    return FeatureSpec(events=("page_view",), windows=("1d", "7d", "30d"), half_life="7d",
                       user_features=False, exclude_flagged=False)


def page_view_events(n: int):
    """The ``event`` column bta gets: ``n`` page views as a pandas Categorical."""
    import pandas as pd

    return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), categories=["page_view"])


def bta_event_log(ev: Events, event: Any = None):
    """EventLog from the arrays (``event``: :func:`page_view_events`, made here when None)."""
    from bta.events import BotRule, EventLog

    if event is None:
        event = page_view_events(ev.n_events)
    # Bot flagging is a population statistic that the peers do not compute; it is off so that
    # both sides do the same work (and every user's events count).
    return EventLog.from_arrays(user_id=ev.user, ts=ev.ts, event=event, category=ev.category,
                                ts_unit="ms", flag_bots=BotRule(enabled=False))


def bta_features(log: Any, as_of: int, spec: Any = None):
    """build_features on a prepared log."""
    from bta.features import build_features

    return build_features(log, bta_spec() if spec is None else spec, as_of=as_of)


def bta_end_to_end(ev: Events, event: Any = None, spec: Any = None):
    """EventLog from the arrays, then build_features."""
    return bta_features(bta_event_log(ev, event), ev.as_of, spec)


def bta_log_features(data: Any, as_of: int):
    """A user's path on a log: ``EventLog.from_arrow`` / ``from_pandas`` / ``from_parquet`` by
    what ``data`` is, default arguments (validation, privacy screening, bot flagging), then
    build_features."""
    from bta.events import EventLog

    if isinstance(data, (str, os.PathLike)):
        log = EventLog.from_parquet(data)
    elif type(data).__module__.split(".")[0] == "pandas":
        log = EventLog.from_pandas(data)
    else:
        log = EventLog.from_arrow(data)
    return bta_features(log, as_of)


_STATS = {"1d": "c1", "7d": "c7", "30d": "c30"}


def cells_from_feature_matrix(fm: Any, as_of: int, category_code: Any = int,
                              user_code: Any = None) -> Cells:
    """Cells from bta's FeatureMatrix (columns ``count:page_view:{cat}:{1d|7d|30d}``,
    ``decay:page_view:{cat}``, ``recency:page_view:{cat}``).

    Counts are stored only when non-zero (absent means 0); recency is stored whenever the cell
    has an event, so the recency entries give the set of cells. ``category_code`` maps a
    category's name to its integer (default: the name is the integer); ``user_code`` maps the
    array of user ids to integers (default: they are integers).
    """
    n_cols = len(fm.feature_names)
    stat = np.empty(n_cols, dtype=object)
    cat = np.empty(n_cols, dtype=np.int64)
    for j, name in enumerate(fm.feature_names):
        parts = name.split(":")
        if parts[0] == "count" and len(parts) == 4 and parts[3] in _STATS:
            stat[j] = _STATS[parts[3]]
        elif parts[0] in ("decay", "recency") and len(parts) == 3:
            stat[j] = parts[0]
        else:
            raise AssertionError(f"bta: unexpected feature column {name!r}")
        if parts[1] != "page_view":
            raise AssertionError(f"bta: unexpected event in feature column {name!r}")
        cat[j] = category_code(parts[2])
    coo = fm.X.tocoo()
    users = np.asarray(fm.users if user_code is None else user_code(fm.users), dtype=np.int64)
    n_cat = int(cat.max()) + 1 if n_cols else 1
    key = users[coo.row] * n_cat + cat[coo.col]
    col_stat = stat[coo.col]

    is_rec = col_stat == "recency"
    order = np.argsort(key[is_rec], kind="stable")
    cell_key = key[is_rec][order]
    recency = coo.data[is_rec][order]
    out: dict[str, np.ndarray] = {}
    for name in ("c1", "c7", "c30", "decay"):
        sel = col_stat == name
        keys = key[sel]
        pos = np.searchsorted(cell_key, keys)
        found = pos < cell_key.shape[0]
        found[found] = cell_key[pos[found]] == keys[found]
        if not found.all():
            raise AssertionError(f"bta: {name} entries for cells without a recency entry")
        vals = np.zeros(cell_key.shape[0], dtype=np.float64)
        vals[pos] = coo.data[sel]
        out[name] = vals
    for name in ("c1", "c7", "c30"):
        if not np.array_equal(out[name], np.rint(out[name])):
            raise AssertionError(f"bta: non-integral counts in {name}")
    # recency = (as_of - last) / day is exact to far below 1 ms for 30 days of ages (< 2**32
    # ms in a 53-bit mantissa), so rounding recovers the integer last time exactly.
    last = as_of - np.rint(recency * DAY_MS).astype(np.int64)
    return Cells(user=cell_key // n_cat, category=cell_key % n_cat,
                 c1=out["c1"].astype(np.int64), c7=out["c7"].astype(np.int64),
                 c30=out["c30"].astype(np.int64), decay=out["decay"], last=last)


# ------------------------------------------------------------------------------------ peers


def pandas_features(ev: Events):
    """pandas: filter, derive the per-event terms, ``groupby(...).agg``."""
    import pandas as pd

    df = pd.DataFrame({"user": ev.user, "category": ev.category, "ts": ev.ts})
    df = df[df["ts"] <= ev.as_of]
    age = ev.as_of - df["ts"]
    df = df.assign(c1=age < _D1, c7=age < _D7, c30=age < _D30, decay=0.5 ** (age / HALF_LIFE_MS))
    return df.groupby(["user", "category"], sort=False).agg(
        c1=("c1", "sum"), c7=("c7", "sum"), c30=("c30", "sum"), decay=("decay", "sum"),
        last=("ts", "max"))


def _polars_cells(frame: Any, ts_ms: Any, as_of: int, user: str, keep: Any = None):
    """The aggregation in polars, on a LazyFrame whose times (epoch ms) are ``ts_ms``."""
    import polars as pl

    age = as_of - ts_ms
    keep = ts_ms <= as_of if keep is None else (keep & (ts_ms <= as_of))
    return (
        frame.filter(keep)
        .group_by(user, "category")
        .agg((age < _D1).sum().alias("c1"), (age < _D7).sum().alias("c7"),
             (age < _D30).sum().alias("c30"),
             pl.lit(0.5).pow(age / HALF_LIFE_MS).sum().alias("decay"),
             ts_ms.max().alias("last"))
        .collect()
    )


def polars_features(ev: Events):
    """polars (lazy, all threads): ``group_by(...).agg``."""
    import polars as pl

    frame = pl.LazyFrame({"user": ev.user, "category": ev.category, "ts": ev.ts})
    return _polars_cells(frame, pl.col("ts"), ev.as_of, "user")


def polars_log_features(data: Any, as_of: int):
    """polars on a log (:func:`_data.log_table` and its other forms): the page views'
    aggregation from an Arrow table, a pandas frame or a Parquet path (``scan_parquet``)."""
    import polars as pl

    if isinstance(data, (str, os.PathLike)):
        frame = pl.scan_parquet(data)
    elif type(data).__module__.split(".")[0] == "pandas":
        frame = pl.from_pandas(data).lazy()
    else:
        frame = pl.from_arrow(data).lazy()
    ts_ms = pl.col("ts").dt.epoch("ms")
    return _polars_cells(frame, ts_ms, as_of, "user_id", keep=pl.col("event") == "page_view")


_DUCKDB_SQL = """
SELECT "user", category,
       count(*) FILTER (WHERE {as_of} - ts < {d1}) AS c1,
       count(*) FILTER (WHERE {as_of} - ts < {d7}) AS c7,
       count(*) FILTER (WHERE {as_of} - ts < {d30}) AS c30,
       sum(pow(0.5, ({as_of} - ts)::DOUBLE / {half_life})) AS decay,
       max(ts) AS last
FROM events
WHERE ts <= {as_of}
GROUP BY "user", category
"""


def duckdb_connect():
    """In-memory DuckDB connection using every core."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    return con


def duckdb_features(ev: Events, con: Any = None):
    """DuckDB (all threads): SQL GROUP BY over the arrays registered as an Arrow table."""
    import pyarrow as pa

    if con is None:
        con = duckdb_connect()
    # as_of is an int of ours, so formatting it into the text is safe; a literal also lets
    # DuckDB fold the constant expressions.
    sql = _DUCKDB_SQL.format(as_of=int(ev.as_of), d1=_D1, d7=_D7, d30=_D30,
                             half_life=HALF_LIFE_MS)
    con.register("events", pa.table({"user": ev.user, "category": ev.category, "ts": ev.ts}))
    try:
        rel = con.sql(sql)
        # DuckDB 1.4 renamed the Arrow fetch of a relation; accept both spellings.
        fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
        return fetch()
    finally:
        con.unregister("events")


def log_cells(result: Any, lg: LogEvents) -> Cells:
    """Cells of a result on a log (bta's FeatureMatrix or polars' frame), with the log's integer
    users and categories (the reference's keys) in place of the ids and names."""
    from bta.features import FeatureMatrix

    vocab = lg.user_ids.view(f"S{lg.user_ids.shape[1]}").ravel()  # sorted

    def user_code(ids: Any) -> np.ndarray:
        text = np.asarray(ids, dtype=object).astype(vocab.dtype)
        pos = np.searchsorted(vocab, text)
        if not (pos < len(vocab)).all() or not (vocab[np.minimum(pos, len(vocab) - 1)]
                                                == text).all():
            raise AssertionError("result holds user ids that are not the log's")
        return pos

    if isinstance(result, FeatureMatrix):
        return cells_from_feature_matrix(result, lg.as_of, lg.category_names.index, user_code)
    import pandas as pd

    cols = {c: result[c].to_numpy() for c in ("c1", "c7", "c30", "decay", "last")}
    category = pd.Index(lg.category_names).get_indexer(result["category"].to_numpy())
    if (category < 0).any():
        raise AssertionError("result holds categories that are not the log's")
    return cells_from_columns(user_code(result["user_id"].to_numpy()), category, **cols)


def to_cells(result: Any, as_of: int) -> Cells:
    """Cells from any implementation's result (FeatureMatrix, pandas, polars or Arrow)."""
    from bta.features import FeatureMatrix

    if isinstance(result, FeatureMatrix):
        return cells_from_feature_matrix(result, as_of)
    if isinstance(result, Cells):
        return result
    mod = type(result).__module__.split(".")[0]
    if mod == "pandas":
        result = result.reset_index()
        col = lambda c: result[c].to_numpy()  # noqa: E731
    elif mod in ("polars", "pyarrow"):
        col = lambda c: result[c].to_numpy()  # noqa: E731
    else:
        raise TypeError(f"no conversion to Cells for {type(result).__name__}")
    return cells_from_columns(*(col(c) for c in ("user", "category", "c1", "c7", "c30", "decay",
                                                 "last")))


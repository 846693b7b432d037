"""DecisionLog: the Engine's decisions, collected and written as Parquet in the log schema.

Every decision is evaluable (design principle 5): the log keeps, per request, the arm, the
creative, whether it was targeted, the propensity of the choice, the eligible-set size, the
policy version and the reason, in :data:`bta.schema.DECISION_SCHEMA`. :func:`join_outcomes`
attaches clicks, conversions and revenue (:data:`bta.schema.OUTCOME_SCHEMA`) by request id, which
is what the evaluator reads.

Appending is thread-safe and cheap (a list append under a lock); Arrow conversion happens only
when a buffer is written. With a ``directory`` the buffer is bounded: every ``flush_rows`` rows it
is written as one Parquet file (atomically: a reader never sees half a file). Without one the
log stays in memory up to ``max_rows`` rows; rows beyond are counted in :attr:`n_dropped` with a
warning, never lost silently.

Erasure: :meth:`DecisionLog.erase` drops a user's rows from the buffer and rewrites the files
the log wrote (so :func:`bta.privacy.erase` can be given a log); :func:`erase_parquet` rewrites
any other Parquet file (an older log, a copy) without the user.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bta.errors import SchemaError, check_param
from bta.schema import DECISION_SCHEMA, OUTCOME_SCHEMA, Decision, user_text

__all__ = ["DecisionLog", "decisions_table", "erase_parquet", "join_outcomes"]

logger = logging.getLogger("bta")
_FIELDS = tuple(DECISION_SCHEMA.names)


def decisions_table(decisions: Iterable[Decision]) -> pa.Table:
    """Decisions as an Arrow table with :data:`~bta.schema.DECISION_SCHEMA`.

    Parameters
    ----------
    decisions : iterable of Decision

    Returns
    -------
    pyarrow.Table with n_decisions rows

    Raises
    ------
    SchemaError
        If an item is not a :class:`~bta.serve.engine.Decision`.
    """
    rows = list(decisions)
    for d in rows:
        if not isinstance(d, Decision):
            raise SchemaError(f"decisions must be bta Decision objects, got "
                              f"{type(d).__name__}")
    cols = {
        "ts": pa.array([d.ts for d in rows], type=pa.int64()).cast(
            DECISION_SCHEMA.field("ts").type),
        "user_id": pa.array([user_text(d.user_id) for d in rows], type=pa.string()),
    }
    for f in DECISION_SCHEMA:
        if f.name not in cols:
            cols[f.name] = pa.array([getattr(d, f.name) for d in rows], type=f.type)
    return pa.table([cols[n] for n in _FIELDS], schema=DECISION_SCHEMA)


class DecisionLog:
    """Thread-safe collector of decisions, flushed to Parquet files in the decision schema.

    Parameters
    ----------
    directory : path, optional
        Where Parquet files go (created if needed). ``None``: keep the log in memory.
    flush_rows : int, default 10_000
        With a directory, rows per file: the buffer is written when it holds this many.
    max_rows : int, default 1_000_000
        Without a directory, the most rows kept in memory; further rows are dropped and
        counted in :attr:`n_dropped` (with one warning) rather than exhausting memory.
    prefix : str, default "decisions"
        File names are ``{prefix}-{sequence:06d}-{log id}.parquet``; the random log id keeps
        several processes writing into one directory from overwriting each other.

    Examples
    --------
    >>> log = DecisionLog("logs/2026-03-04", flush_rows=50_000)      # doctest: +SKIP
    >>> log.append(engine.decide(request))                           # doctest: +SKIP
    >>> log.close()                                                  # doctest: +SKIP
    >>> df = join_outcomes(log.to_frame(), outcomes)                  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, flush_rows: int = 10_000,
                 max_rows: int = 1_000_000, prefix: str = "decisions"):
        check_param("flush_rows", flush_rows, isinstance(flush_rows, int)
                    and not isinstance(flush_rows, bool) and flush_rows >= 1, "an integer >= 1")
        check_param("max_rows", max_rows, isinstance(max_rows, int)
                    and not isinstance(max_rows, bool) and max_rows >= 1, "an integer >= 1")
        check_param("prefix", prefix, isinstance(prefix, str) and prefix != ""
                    and all(ch.isalnum() or ch in "_-." for ch in prefix),
                    "a non-empty string of letters, digits, '_', '-', '.'")
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_rows = flush_rows
        self.max_rows = max_rows
        self.prefix = prefix
        self._id = uuid.uuid4().hex[:8]
        self._lock = threading.Lock()     # buffer and counters
        self._io_lock = threading.Lock()  # file writes, taken after _lock when both are held
        self._buf: list[Decision] = []
        # rows of a write that failed, written first by the next one; guarded by _io_lock
        # alone, so the failing writer never needs _lock (an appender may hold it while it
        # waits for _io_lock)
        self._failed: list[Decision] = []
        self._files: list[Path] = []
        self._n_written = 0
        self._seq = 0
        self._n_dropped = 0

    # ---- collecting ----------------------------------------------------------------------------
    def append(self, decision: Decision) -> None:
        """Add one decision (from :meth:`Engine.decide`).

        Raises
        ------
        SchemaError
            If ``decision`` is not a Decision.
        OSError
            If a full buffer cannot be written; its rows stay in the buffer.
        """
        if not isinstance(decision, Decision):
            raise SchemaError(f"decision must be a bta Decision, got {type(decision).__name__}")
        self._lock.acquire()
        if self.directory is None:
            try:
                if len(self._buf) >= self.max_rows:
                    self._drop(1)
                else:
                    self._buf.append(decision)
            finally:
                self._lock.release()
            return
        self._buf.append(decision)
        if len(self._buf) < self.flush_rows:
            self._lock.release()
            return
        self._write_locked()

    def extend(self, decisions: Iterable[Decision]) -> None:
        """Add many decisions in order."""
        for d in decisions:
            self.append(d)

    def _drop(self, n: int) -> None:
        if self._n_dropped == 0:
            msg = (f"DecisionLog is full ({self.max_rows} rows in memory); further decisions are "
                   f"dropped and counted in n_dropped. Give a directory to write Parquet files.")
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        self._n_dropped += n

    def _write_locked(self) -> Path | None:
        """Write the buffer; called holding ``_lock``, which it releases."""
        try:
            self._io_lock.acquire()
        except BaseException:
            self._lock.release()
            raise
        rows, self._buf, self._failed = self._failed + self._buf, [], []
        seq = self._seq
        self._seq += 1
        # appenders may go on while the file is written; _io_lock keeps readers consistent
        self._lock.release()
        try:
            if not rows:
                return None
            path = self.directory / f"{self.prefix}-{seq:06d}-{self._id}.parquet"
            tmp = path.with_name(path.name + ".tmp")
            try:
                pq.write_table(decisions_table(rows), tmp)
                os.replace(tmp, path)
            except BaseException:
                self._failed = rows  # keep the rows: a failed write must not lose them
                tmp.unlink(missing_ok=True)
                raise
            self._files.append(path)
            self._n_written += len(rows)
            return path
        finally:
            self._io_lock.release()

    def flush(self) -> Path | None:
        """Write the buffered rows to a new file now (with a directory); returns its path."""
        if self.directory is None:
            return None
        self._lock.acquire()
        return self._write_locked()

    def close(self) -> None:
        """Flush what is buffered."""
        self.flush()

    def __enter__(self) -> "DecisionLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- privacy -------------------------------------------------------------------------------
    def erase(self, user_id: Any) -> bool:
        """Drop every row of ``user_id``: from the buffer and from the files this log wrote.

        Rows are matched on the id as the log writes it (text: ``5`` and ``"5"`` are one
        user). Each file of :attr:`files` holding the user is rewritten without the user's
        rows (atomically, as it was written); a file left with no rows stays, empty. Used by
        :func:`bta.privacy.erase`.

        Returns whether any row was dropped. ``None`` (requests without a usable id) is no
        user: nothing is dropped.

        Notes
        -----
        Only what this object holds is erased. Copies are the caller's to rewrite: the file
        of :meth:`write_parquet`, files other processes (other log ids) wrote into the same
        directory, or logs of earlier runs; :func:`erase_parquet` rewrites one such file.

        Raises
        ------
        OSError
            If a file cannot be rewritten (the files before it are already rewritten; the
            call can be repeated).
        """
        key = user_text(user_id)
        if key is None:
            return False
        self._lock.acquire()
        try:
            self._io_lock.acquire()  # no write in flight: its rows are in a file or the buffer
        except BaseException:
            self._lock.release()
            raise
        try:
            try:
                n_buf = len(self._failed) + len(self._buf)
                self._failed = [d for d in self._failed if user_text(d.user_id) != key]
                self._buf = [d for d in self._buf if user_text(d.user_id) != key]
                n_buf -= len(self._failed) + len(self._buf)
            finally:
                self._lock.release()  # appenders may go on while the files are rewritten
            n_files = 0
            for path in self._files:
                n = erase_parquet(path, key)
                self._n_written -= n
                n_files += n
        finally:
            self._io_lock.release()
        return bool(n_buf or n_files)

    # ---- reading -------------------------------------------------------------------------------
    @property
    def files(self) -> tuple[Path, ...]:
        """Parquet files this log has written, in order."""
        with self._io_lock:
            return tuple(self._files)

    @property
    def n_dropped(self) -> int:
        """Decisions refused because the in-memory log was full."""
        return self._n_dropped

    def __len__(self) -> int:
        with self._lock, self._io_lock:
            return self._n_written + len(self._failed) + len(self._buf)

    def to_table(self) -> pa.Table:
        """Every row (written files, then the buffer) as one Arrow table, in append order."""
        with self._lock, self._io_lock:
            files = list(self._files)
            buf = self._failed + self._buf
        parts = [pq.read_table(f, schema=DECISION_SCHEMA) for f in files]
        parts.append(decisions_table(buf))
        return pa.concat_tables(parts)

    def to_frame(self) -> pd.DataFrame:
        """Every row as a DataFrame with the decision schema's columns and types."""
        return self.to_table().to_pandas()

    def write_parquet(self, path: str | os.PathLike) -> Path:
        """Write every row into one Parquet file at ``path``; returns the path."""
        path = Path(path)
        pq.write_table(self.to_table(), path)
        return path

    def __repr__(self) -> str:
        where = "memory" if self.directory is None else str(self.directory)
        return f"DecisionLog({len(self)} rows, {where})"


def erase_parquet(path: str | os.PathLike, user_id: Any, *, column: str = "user_id") -> int:
    """Rewrite a Parquet file without the rows of ``user_id``; returns how many were dropped.

    For decision logs (or any table with a user column) written outside a live
    :class:`DecisionLog`. Ids are compared as text, as the decision log writes them. The file
    is replaced atomically (written beside it, then renamed) and only when it held the user;
    its schema and metadata are kept, its row-group layout is not.

    Parameters
    ----------
    path : path
        The Parquet file.
    user_id : object
        The user whose rows go (``None`` drops nothing).
    column : str, default "user_id"
        The column holding user ids.

    Returns
    -------
    int
        Rows dropped (0: the file was left untouched).

    Raises
    ------
    SchemaError
        If the file has no such column.
    OSError
        If the file cannot be read or replaced.
    """
    key = user_text(user_id)
    path = Path(path)
    table = pq.read_table(path)
    if column not in table.column_names:
        raise SchemaError(f"{path.name}: no column {column!r} to erase a user from; got "
                          f"columns {table.column_names}")
    if key is None or table.num_rows == 0:
        return 0
    ids = table[column]
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        ids = pc.cast(ids, pa.string())
    # rows without an id (null) belong to no user: they stay
    drop = pc.fill_null(pc.equal(ids, pa.scalar(key, type=ids.type)), False)
    n = int(pc.sum(drop).as_py() or 0)
    if n == 0:
        return 0
    tmp = path.with_name(path.name + f".{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table.filter(pc.invert(drop)), tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _as_frame(data: Any, what: str) -> pd.DataFrame:
    if isinstance(data, DecisionLog):
        return data.to_frame()
    if isinstance(data, pa.Table):
        return data.to_pandas()
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, (str, os.PathLike)):
        return pq.read_table(data).to_pandas()
    raise SchemaError(f"{what} must be a DataFrame, an Arrow table, a Parquet path or a "
                      f"DecisionLog, got {type(data).__name__}")


def _py(x: Any) -> Any:
    # NumPy scalars print as np.float64(nan) since NumPy 2; messages show plain values
    return x.item() if isinstance(x, np.generic) else x


def _counts(s: pd.Series, name: str) -> np.ndarray:
    v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(v) | (v < 0) | (v != np.floor(v))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SchemaError(f"outcomes: column {name!r} must hold integers >= 0, got "
                          f"{_py(s.iloc[i])!r} at row {i}")
    if v.size and v.max() > np.iinfo(np.int32).max:
        raise SchemaError(f"outcomes: column {name!r} must fit in int32, got {v.max():.0f}")
    return v.astype(np.int32)


def join_outcomes(decisions: Any, outcomes: Any) -> pd.DataFrame:
    """Decisions with their outcomes attached by ``request_id``.

    Parameters
    ----------
    decisions : DataFrame, Arrow table, Parquet path or DecisionLog
        Rows in the decision schema (at least ``request_id``), one per request.
    outcomes : DataFrame, Arrow table or Parquet path
        ``request_id``, ``clicks``, ``conversions``, ``revenue``
        (:data:`bta.schema.OUTCOME_SCHEMA`), at most one row per request.

    Returns
    -------
    DataFrame
        The decisions in their order, plus ``clicks`` and ``conversions`` (int32) and
        ``revenue`` (float64); a decision without an outcome row gets zeros (no click was
        reported). ``attrs["n_unmatched_outcomes"]`` counts outcome rows whose request id is not
        among the decisions (left out: they belong to another log or shard).

    Raises
    ------
    SchemaError
        If a column is missing, a count is not a non-negative integer, a revenue is not
        finite, or a request id repeats in the outcomes or in the decisions.
    """
    dec = _as_frame(decisions, "decisions")
    out = _as_frame(outcomes, "outcomes")
    if "request_id" not in dec.columns:
        raise SchemaError(f"decisions: missing column 'request_id'; got columns "
                          f"{list(dec.columns)}")
    missing = [c for c in OUTCOME_SCHEMA.names if c not in out.columns]
    if missing:
        raise SchemaError(f"outcomes: missing columns {missing}; expected "
                          f"{OUTCOME_SCHEMA.names}, got {list(out.columns)}")
    for what, frame in (("decisions", dec), ("outcomes", out)):
        rid = frame["request_id"]
        if rid.isna().any():
            i = int(np.flatnonzero(rid.isna().to_numpy())[0])
            raise SchemaError(f"{what}: request_id must not be null, got null at row {i}")
        dup = rid[rid.duplicated(keep=False)]
        if len(dup):
            first = list(dict.fromkeys(dup.astype(str).tolist()))[:3]
            raise SchemaError(f"{what}: request_id must be unique, got "
                              f"{dup.nunique()} duplicated ids, e.g. {first}")
    clicks = _counts(out["clicks"], "clicks")
    conversions = _counts(out["conversions"], "conversions")
    revenue = pd.to_numeric(out["revenue"], errors="coerce").to_numpy(dtype=np.float64,
                                                                       na_value=np.nan)
    if not np.isfinite(revenue).all():
        i = int(np.flatnonzero(~np.isfinite(revenue))[0])
        raise SchemaError(f"outcomes: column 'revenue' must be finite, got "
                          f"{_py(out['revenue'].iloc[i])!r} at row {i}")
    keys = pd.Index(out["request_id"].astype(str))
    pos = keys.get_indexer(dec["request_id"].astype(str))
    hit = pos >= 0
    p = np.maximum(pos, 0)
    res = dec.copy()
    res["clicks"] = np.where(hit, clicks[p] if clicks.size else 0, 0).astype(np.int32)
    res["conversions"] = np.where(hit, conversions[p] if clicks.size else 0, 0).astype(np.int32)
    res["revenue"] = np.where(hit, revenue[p] if clicks.size else 0.0, 0.0).astype(np.float64)
    res.attrs["n_unmatched_outcomes"] = int(len(out) - np.unique(pos[hit]).size)
    return res

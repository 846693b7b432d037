"""build_features over a Dask DataFrame partitioned by user: one FeatureMatrix per partition,
global columns, equal to the single-machine :func:`bta.features.build_features`."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Hashable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bta.dask._compute import compute, persist
from bta.dask.io import partition_by_user
from bta.errors import ConfigError, SchemaError, check_param
from bta.events import BotRule, EventLog, to_epoch_ms
from bta.features import build_features as _build_features
from bta.features.matrix import FeatureMatrix, layout_for
from bta.features.spec import FeatureSpec

__all__ = ["build_features", "PartitionedFeatures", "read_features", "FeatureInfo"]

#: Metadata file of a features dataset, written last: its presence means the dataset is whole.
META_FILE = "_bta_features.json"
FORMAT = "bta.dask.features"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """What every partition shares: the global columns and the point in time.

    Attributes
    ----------
    categories : tuple
        The global category vocabulary (sorted as the columns are).
    feature_names : tuple of str
    nan_absent : tuple of bool
    as_of_ms : int
        Epoch milliseconds (UTC).
    """

    categories: tuple
    feature_names: tuple[str, ...]
    nan_absent: tuple[bool, ...]
    as_of_ms: int

    @property
    def as_of(self) -> pd.Timestamp:
        return pd.Timestamp(self.as_of_ms, unit="ms", tz="UTC")


@dataclasses.dataclass(frozen=True, eq=False)
class PartitionedFeatures:
    """Features of users partitioned by user: one :class:`~bta.features.FeatureMatrix` per
    partition, all with the same columns (``info.feature_names``).

    Lazy until computed: ``partitions`` are Dask objects (delayed, or persisted futures).

    Attributes
    ----------
    partitions : tuple of dask.delayed.Delayed
        FeatureMatrix of each partition; a partition without users gives 0 rows.
    info : FeatureInfo or Delayed
        Global columns and ``as_of`` (a concrete value once computed or read from disk).
    spec : FeatureSpec
    """

    partitions: tuple
    info: Any
    spec: FeatureSpec

    @property
    def npartitions(self) -> int:
        return len(self.partitions)

    def persist(self, client: Any = None) -> PartitionedFeatures:
        """Compute the partitions and keep them in the cluster's memory (lazy info computed)."""
        out = persist(*self.partitions, self.info, client=client)
        return PartitionedFeatures(tuple(out[:-1]), out[-1], self.spec)

    def compute(self, client: Any = None) -> FeatureMatrix:
        """Collect every partition into one FeatureMatrix, rows sorted by user id (the
        single-machine order)."""
        out = compute(*self.partitions, self.info, client=client)
        return concat_features(list(out[:-1]), out[-1], self.spec)

    def to_parquet(self, path: str | os.PathLike, client: Any = None) -> Path:
        """Write a Parquet dataset: one file per partition, then the metadata file.

        Each file ``part.NNNNN.parquet`` has one row per user: ``user_id``, ``indices`` (the
        columns of its stored entries, ``list<int32>``) and ``values`` (``list<float>``), i.e.
        the CSR rows, so absent and undefined (NaN) values keep their meaning.
        ``_bta_features.json`` holds the feature names, ``nan_absent``, ``as_of`` and the spec.

        Parameters
        ----------
        path : str or path
            Directory (created; must hold no other bta features dataset).
        client : distributed.Client, optional
            Scheduler (default: the current one). Workers must see ``path`` (a shared file
            system on a cluster).

        Returns
        -------
        pathlib.Path
        """
        import dask

        root = Path(path)
        if (root / META_FILE).exists():
            raise ConfigError(f"path {str(root)!r} already holds a bta features dataset")
        root.mkdir(parents=True, exist_ok=True)
        writes = [dask.delayed(_write_part)(fm, str(root / f"part.{i:05d}.parquet"))
                  for i, fm in enumerate(self.partitions)]
        out = compute(*writes, self.info, client=client)
        totals = np.array(out[:-1], dtype=np.int64).reshape(-1, 3).sum(axis=0)
        info = out[-1]
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "npartitions": len(writes), "feature_names": list(info.feature_names),
                "nan_absent": list(info.nan_absent), "as_of_ms": info.as_of_ms,
                "categories": [_py(c) for c in info.categories], "spec": _spec_to_json(self.spec),
                "n_users": int(totals[0]), "n_events": int(totals[1]),
                "n_flagged_excluded": int(totals[2])}
        (root / META_FILE).write_text(json.dumps(meta, indent=1))
        return root


def read_features(path: str | os.PathLike) -> PartitionedFeatures:
    """A features dataset written by :meth:`PartitionedFeatures.to_parquet`, lazily.

    Raises
    ------
    SchemaError
        ``path`` holds no (complete) bta features dataset, or another format version.
    """
    import dask

    root = Path(path)
    meta_path = root / META_FILE
    if not meta_path.exists():
        raise SchemaError(f"{str(root)!r} holds no complete bta features dataset (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise SchemaError(f"{str(meta_path)!r} is not a {FORMAT} version {FORMAT_VERSION} file")
    spec = _spec_from_json(meta["spec"])
    info = FeatureInfo(tuple(meta["categories"]), tuple(meta["feature_names"]),
                       tuple(bool(b) for b in meta["nan_absent"]), int(meta["as_of_ms"]))
    parts = tuple(dask.delayed(_read_part)(str(root / f"part.{i:05d}.parquet"), info, spec)
                  for i in range(int(meta["npartitions"])))
    return PartitionedFeatures(parts, info, spec)


def build_features(ddf: Any, spec: FeatureSpec | None = None, as_of: Any = None, *,
                   categories: Sequence[Any] | None = None,
                   columns: Mapping[str, Hashable] | None = None, partitioned: bool = False,
                   npartitions: int | None = None, **log_options: Any) -> PartitionedFeatures:
    """Behavioral features of every user of a Dask DataFrame of events, per partition.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        Events with the columns :meth:`bta.events.EventLog.from_pandas` reads.
    spec : FeatureSpec, optional
        ``FeatureSpec()`` by default.
    as_of : datetime-like, optional
        Point in time; default the time of the last event counted (as the single-machine
        builder: the last event of users not excluded as bots).
    categories : sequence, optional
        The global category vocabulary: every partition gets a column block for each of them.
        Default: the categories of all accepted events, computed in the same graph. An event
        category outside a given vocabulary raises :class:`~bta.errors.SchemaError`.
    columns : mapping, optional
        bta column name -> your column name, as in :meth:`EventLog.from_pandas`.
    partitioned : bool, default False
        True when ``ddf`` already holds every user in a single partition (e.g. the output of
        :func:`partition_by_user`); otherwise it is partitioned by user first.
    npartitions : int, optional
        Partitions of the shuffle (default: as many as ``ddf`` has).
    **log_options
        Ingestion options of :meth:`EventLog.from_pandas` (``errors``, ``time_range``,
        ``event_types``, ``strict_events``, ``ts_unit``, ``flag_bots``).

    Returns
    -------
    PartitionedFeatures
        Lazy; ``compute()`` gives one FeatureMatrix equal to
        ``bta.features.build_features(EventLog.from_pandas(ddf.compute()), spec, as_of)``:
        counts exactly, decayed sums, recencies and session means bit for bit (the same kernels
        run on the same events of each user; only the order of users differs before sorting).

    Raises
    ------
    ConfigError
        Invalid arguments; numeric epoch times with ``ts_unit="auto"`` (a per-partition
        decision could differ between partitions: pass ``ts_unit="s"`` or ``"ms"``).
    SchemaError
        From ingestion (bad rows with ``errors="raise"``), in the worker that read them.

    Notes
    -----
    Users are never split across partitions, so every per-user feature is computed exactly as
    on one machine. Three things are global and computed once from small per-partition
    summaries: the category vocabulary (union of the partitions'), the bot rule's median and
    MAD of per-user log event rates (exact: every user's rate is gathered, 8 bytes per user,
    only when bots are flagged and excluded) and the default ``as_of``. With ``categories`` and
    ``as_of`` given and bot exclusion off (``flag_bots=None`` or
    ``FeatureSpec(exclude_flagged=False)``) the partitions are fully independent.

    Examples
    --------
    >>> events = read_events("events/*.parquet")                    # doctest: +SKIP
    >>> pf = build_features(events, FeatureSpec(), "2026-02-01")     # doctest: +SKIP
    >>> pf.to_parquet("features/")                                   # doctest: +SKIP
    """
    import dask
    import dask.dataframe as dd

    if not isinstance(ddf, dd.DataFrame):
        raise ConfigError(f"ddf must be a dask DataFrame (see read_events), got "
                          f"{type(ddf).__name__}")
    if spec is None:
        spec = FeatureSpec()
    if not isinstance(spec, FeatureSpec):
        raise ConfigError(f"spec must be a FeatureSpec, got {type(spec).__name__}")
    check_param("partitioned", partitioned, isinstance(partitioned, bool), "True or False")
    as_of_ms = None if as_of is None else to_epoch_ms(as_of, "as_of")
    rule = log_options.pop("flag_bots", BotRule())
    rule = BotRule(enabled=False) if rule is None else rule
    check_param("flag_bots", rule, isinstance(rule, BotRule), "a BotRule or None")
    # fail on bad options here rather than in every worker
    EventLog.from_pandas(pd.DataFrame({"user_id": pd.Series([], dtype=np.int64),
                                       "ts": pd.Series([], dtype="datetime64[ms, UTC]"),
                                       "event": pd.Series([], dtype=object)}),
                         flag_bots=None, **log_options)
    cols = dict(columns or {})
    ts_col = cols.get("ts", "ts")
    if ts_col in ddf.columns and log_options.get("ts_unit", "auto") == "auto" and (
            pd.api.types.is_numeric_dtype(ddf.dtypes[ts_col])):
        raise ConfigError(f"ts_unit='auto' with numeric times in column {ts_col!r} would be "
                          f"decided per partition; pass ts_unit='s' or ts_unit='ms'")
    vocab = None
    if categories is not None:
        check_param("categories", categories, not isinstance(categories, (str, bytes))
                    and isinstance(categories, Sequence | np.ndarray), "a sequence or None")
        vocab = tuple(_py(c) for c in pd.unique(np.asarray(categories, dtype=object)))
    if not partitioned:
        ddf = partition_by_user(ddf, npartitions, user=str(cols.get("user_id", "user_id")))
    bots = rule.enabled and spec.exclude_flagged
    ingest = dask.delayed(_ingest, pure=True)
    logs = [ingest(p, cols, log_options) for p in ddf.to_delayed()]
    if vocab is not None and as_of_ms is not None and not bots:
        info: Any = _info(spec, vocab, as_of_ms)
        summaries = [None] * len(logs)
        glob: Any = _Global(info, 0.0, 1.0, False)
    else:
        summaries = [dask.delayed(_summary, pure=True)(log, rule, bots) for log in logs]
        glob = dask.delayed(_combine, pure=True)(summaries, spec, rule, bots, vocab, as_of_ms)
        info = dask.delayed(_global_info, pure=True)(glob)
    build = dask.delayed(_partition_features, pure=True)
    parts = tuple(build(log, s, glob, spec, rule, bots, vocab is not None)
                  for log, s in zip(logs, summaries))
    return PartitionedFeatures(parts, info, spec)


# ---------------------------------------------------------------------- partition tasks


@dataclasses.dataclass(frozen=True)
class _Global:
    info: FeatureInfo
    med: float          # median of per-user log event rates (bot rule)
    scale: float        # robust scale of the same
    any_impressions: bool


def _global_info(g: _Global) -> FeatureInfo:
    return g.info


def _ingest(df: pd.DataFrame, columns: dict, options: dict) -> EventLog:
    return EventLog.from_pandas(df, columns or None, flag_bots=None, **options)


def _summary(log: EventLog, rule: BotRule, bots: bool) -> dict[str, Any]:
    """What the global pass needs of one partition: its vocabulary and per-user statistics."""
    out: dict[str, Any] = {"categories": log.categories}
    last = log.ts[log.user_offsets[1:] - 1] if log.n_users else np.empty(0, np.int64)
    out["last_ts"] = last
    if bots:
        st = log.bot_stats(rule)
        out["bot"] = {k: st[k].to_numpy() for k in ("n_events", "rate", "clicks", "impressions",
                                                     "ctr")}
    return out


def _flags(bot: Mapping[str, np.ndarray], g: _Global, rule: BotRule) -> np.ndarray:
    """The :class:`~bta.events.BotRule` flags with the global median and scale (its formula,
    applied to per-user statistics of one partition)."""
    codes, _, _ = rule.flag_codes(bot["n_events"], bot["rate"], bot["clicks"],
                                  bot["impressions"], g.med, g.scale, g.any_impressions)
    return codes > 0


def _info(spec: FeatureSpec, vocab: Sequence[Any], as_of_ms: int) -> FeatureInfo:
    layout = layout_for(spec, list(vocab))
    return FeatureInfo(tuple(sorted(vocab, key=_sort_key)), layout.feature_names,
                       tuple(bool(b) for b in layout.nan_absent), int(as_of_ms))


def _combine(summaries: list[dict], spec: FeatureSpec, rule: BotRule, bots: bool,
             vocab: tuple | None, as_of_ms: int | None) -> _Global:
    if vocab is None:
        seen: dict[Any, None] = {}
        for s in summaries:
            for c in s["categories"].tolist():
                seen.setdefault(c, None)
        vocab = tuple(seen)
    med, scale, any_imps = 0.0, 1.0, False
    if bots:
        rates = np.concatenate([s["bot"]["rate"] for s in summaries])
        if rates.size:
            # BotRule's statistics over all users of the log (np.median sorts: order-free)
            med, scale = rule.reference(rates)
            any_imps = bool(sum(int(s["bot"]["impressions"].sum()) for s in summaries) > 0)
    g = _Global(_info(spec, vocab, 0), med, scale, any_imps)
    if as_of_ms is None:
        as_of_ms = 0  # the single-machine default for a log without events
        for s in summaries:
            last = s["last_ts"]
            if bots and last.size:
                last = last[~_flags(s["bot"], g, rule)]
            if last.size:
                as_of_ms = max(as_of_ms, int(last.max()))
    return dataclasses.replace(g, info=dataclasses.replace(g.info, as_of_ms=int(as_of_ms)))


def _partition_features(log: EventLog, summary: dict | None, g: _Global, spec: FeatureSpec,
                        rule: BotRule, bots: bool, check_vocab: bool) -> FeatureMatrix:
    info = g.info
    if check_vocab and log.categories.size:
        known = set(info.categories)
        extra = [c for c in log.categories.tolist() if c not in known]
        if extra:
            raise SchemaError(f"events have categories not in categories: {extra[:5]}"
                              f"{' ...' if len(extra) > 5 else ''}; add them or pass "
                              f"categories=None to compute the vocabulary")
    n_excluded = 0
    if bots and summary is not None and log.n_users:
        flagged = _flags(summary["bot"], g, rule)
        if flagged.any():
            n_excluded = int(summary["bot"]["n_events"][flagged].sum())
            log = log.select_users(~flagged)
    fm = _build_features(log, spec, info.as_of_ms)
    return _to_global(fm, info, n_excluded)


def _to_global(fm: FeatureMatrix, info: FeatureInfo, n_flagged_excluded: int) -> FeatureMatrix:
    """Re-index a partition's columns into the global columns (same order: a monotone map)."""
    pos = {n: i for i, n in enumerate(info.feature_names)}
    colmap = np.array([pos[n] for n in fm.feature_names], dtype=np.int32)
    X = fm.X
    Xg = sp.csr_matrix((X.data, colmap[X.indices] if X.nnz else X.indices.astype(np.int32),
                        X.indptr), shape=(X.shape[0], len(info.feature_names)))
    Xg.has_sorted_indices = True
    return FeatureMatrix(X=Xg, feature_names=info.feature_names, users=fm.users,
                         as_of=info.as_of, spec=fm.spec,
                         nan_absent=np.asarray(info.nan_absent, dtype=bool),
                         n_events=fm.n_events, n_flagged_excluded=n_flagged_excluded)


def concat_features(parts: Sequence[FeatureMatrix], info: FeatureInfo, spec: FeatureSpec
                    ) -> FeatureMatrix:
    """One FeatureMatrix from partitions with the same columns, rows sorted by user id."""
    n_cols = len(info.feature_names)
    users = np.concatenate([p.users for p in parts]) if parts else np.empty(0)
    X = sp.vstack([p.X for p in parts], format="csr") if parts else sp.csr_matrix((0, n_cols))
    order = np.argsort(users, kind="stable")
    X = sp.csr_matrix(X[order], shape=(users.shape[0], n_cols))
    dtype = np.float32 if spec.dtype == "float32" else np.float64
    X.data = X.data.astype(dtype, copy=False)
    X.sort_indices()
    return FeatureMatrix(X=X, feature_names=info.feature_names, users=users[order],
                         as_of=info.as_of, spec=spec,
                         nan_absent=np.asarray(info.nan_absent, dtype=bool),
                         n_events=sum(p.n_events for p in parts),
                         n_flagged_excluded=sum(p.n_flagged_excluded for p in parts))


# ---------------------------------------------------------------------- Parquet I/O


def _write_part(fm: FeatureMatrix, path: str) -> tuple[int, int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = fm.X
    offsets = pa.array(X.indptr.astype(np.int64), pa.int64())
    table = pa.table({
        "user_id": pa.array(fm.users),
        "indices": pa.LargeListArray.from_arrays(offsets, pa.array(X.indices.astype(np.int32))),
        "values": pa.LargeListArray.from_arrays(offsets, pa.array(X.data)),
    })
    meta = {b"bta.n_events": str(fm.n_events).encode(),
            b"bta.n_flagged_excluded": str(fm.n_flagged_excluded).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return fm.n_users, fm.n_events, fm.n_flagged_excluded


def _read_part(path: str, info: FeatureInfo, spec: FeatureSpec) -> FeatureMatrix:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    idx = table.column("indices").combine_chunks()
    val = table.column("values").combine_chunks()
    indptr = idx.offsets.to_numpy().astype(np.int64)
    indptr = indptr - indptr[0] if indptr.size else np.zeros(1, np.int64)
    X = sp.csr_matrix((val.flatten().to_numpy(zero_copy_only=False),
                       idx.flatten().to_numpy(zero_copy_only=False).astype(np.int32), indptr),
                      shape=(table.num_rows, len(info.feature_names)))
    X.has_sorted_indices = True
    return FeatureMatrix(X=X, feature_names=info.feature_names,
                         users=table.column("user_id").to_numpy(zero_copy_only=False),
                         as_of=info.as_of, spec=spec,
                         nan_absent=np.asarray(info.nan_absent, dtype=bool),
                         n_events=int(meta.get(b"bta.n_events", b"0")),
                         n_flagged_excluded=int(meta.get(b"bta.n_flagged_excluded", b"0")))


def _spec_to_json(spec: FeatureSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        v = getattr(spec, f.name)
        if isinstance(v, Mapping):
            v = {str(k): float(w) for k, w in v.items()}
        elif isinstance(v, tuple):
            v = [_py(x) for x in v]
        out[f.name] = v
    return out


def _spec_from_json(d: Mapping[str, Any]) -> FeatureSpec:
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return FeatureSpec(**kw)


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _sort_key(c: Any) -> tuple:
    # the column order of bta.features.matrix.layout_for: numbers first, then text
    return (0, c, "") if isinstance(c, (int, np.integer)) else (1, 0, str(c))

"""Events into Dask: read Parquet datasets, partition by a stable hash of the user id."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bta.errors import ConfigError, SchemaError, check_param, check_paths

__all__ = ["read_events", "partition_by_user", "user_bucket", "BUCKET"]

#: Name of the index ``partition_by_user`` leaves on the frame: the user's hash bucket, which
#: is also the number of the partition holding the user.
BUCKET = "_bta_bucket"


def user_bucket(user_ids: Any, n_buckets: int) -> np.ndarray:
    """Stable hash bucket of every user id: the same id gives the same bucket on every machine,
    in every process and run (unlike Python's salted ``hash``).

    Parameters
    ----------
    user_ids : array-like of shape (n,)
        Integer or string ids (NumPy, pandas, categorical or Arrow-backed).
    n_buckets : int
        Number of buckets (>= 1).

    Returns
    -------
    ndarray of int64, shape (n,)
        Buckets in ``[0, n_buckets)``.

    Notes
    -----
    ``bucket = h(id) mod n_buckets`` with ``h`` pandas' 64-bit SipHash-based
    ``hash_pandas_object`` under its fixed key. Ids are normalized first so that the bucket
    depends on the id, not on how a file stored it: integers of any width as int64,
    categoricals as their values, every string dtype as Python strings.

    Examples
    --------
    >>> user_bucket([1, 2, 3], 4).tolist() == user_bucket(np.array([1, 2, 3], np.int32), 4).tolist()
    True
    """
    check_param("n_buckets", n_buckets, isinstance(n_buckets, (int, np.integer))
                and not isinstance(n_buckets, bool) and n_buckets >= 1, "an integer >= 1")
    s = user_ids if isinstance(user_ids, pd.Series) else pd.Series(user_ids)
    s = s.reset_index(drop=True)
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(s.cat.categories.dtype)
    if s.dtype.kind in "iub" and not isinstance(s.dtype, pd.api.extensions.ExtensionDtype):
        s = s.astype(np.int64)
    elif pd.api.types.is_integer_dtype(s.dtype):  # nullable / Arrow integers
        s = s.astype("Int64")
        if s.isna().any():
            raise SchemaError(f"user ids must not be null; {int(s.isna().sum())} are")
        s = s.astype(np.int64)
    elif pd.api.types.is_string_dtype(s.dtype) or s.dtype == object:
        s = s.astype(object)
    h = pd.util.hash_pandas_object(s, index=False).to_numpy()
    return (h % np.uint64(n_buckets)).astype(np.int64)


def read_events(path_or_glob: str | os.PathLike | Sequence[str | os.PathLike],
                columns: Sequence[str] | None = None, **kwargs: Any) -> Any:
    """Parquet dataset(s) of events as a Dask DataFrame (one partition per file or row group).

    Parameters
    ----------
    path_or_glob : str, path, or list of them
        A file, a directory dataset, a glob (``"events/*.parquet"``) or a list; any
        fsspec URL Dask reads (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``).
    columns : sequence of str, optional
        Columns to read (all by default).
    **kwargs
        Passed to :func:`dask.dataframe.read_parquet` (``filters``, ``storage_options``,
        ``split_row_groups``, ...).

    Returns
    -------
    dask.dataframe.DataFrame
        Not partitioned by user yet: see :func:`partition_by_user`.

    Raises
    ------
    ConfigError
        ``path_or_glob`` or ``columns`` is not valid.
    """
    import dask.dataframe as dd

    source = check_paths("path_or_glob", path_or_glob,
                         "a path, a glob or a non-empty list of paths")
    if columns is not None:
        check_param("columns", columns, not isinstance(columns, str)
                    and isinstance(columns, Sequence) and len(columns) > 0
                    and all(isinstance(c, str) for c in columns),
                    "None or a non-empty sequence of column names")
        columns = list(columns)
    return dd.read_parquet(source, columns=columns, **kwargs)


def partition_by_user(ddf: Any, npartitions: int | None = None, *, user: str = "user_id",
                      shuffle_method: str | None = None) -> Any:
    """Repartition events so that every user's rows are in one partition, chosen by a stable
    hash: partition ``k`` holds exactly the users with ``user_bucket(id, npartitions) == k``.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        Events (any partitioning), e.g. from :func:`read_events`.
    npartitions : int, optional
        Number of output partitions (default: as many as ``ddf`` has).
    user : str, default "user_id"
        The user id column.
    shuffle_method : {"tasks", "p2p", "disk"}, optional
        Dask's shuffle algorithm (default: Dask's choice for the scheduler).

    Returns
    -------
    dask.dataframe.DataFrame
        Same columns, indexed by the bucket (index name ``_bta_bucket``) with known
        divisions ``0, 1, ..., npartitions - 1``. Partitions of buckets nobody hashes to are
        empty. Rows of a partition keep no particular order (bta sorts by (user, time) when it
        reads them).

    Raises
    ------
    SchemaError
        ``user`` is not a column of ``ddf``.
    ConfigError
        ``npartitions`` is not an integer >= 1.

    Notes
    -----
    The shuffle is skipped when there is nothing to move: a single output partition from a
    single input partition, or a frame this function already partitioned into the same
    number of partitions (recognized by its bucket index and divisions).
    """
    import dask.dataframe as dd

    if not isinstance(ddf, dd.DataFrame):
        raise ConfigError(f"ddf must be a dask DataFrame, got {type(ddf).__name__}")
    if npartitions is None:
        npartitions = ddf.npartitions
    check_param("npartitions", npartitions, isinstance(npartitions, (int, np.integer))
                and not isinstance(npartitions, bool) and npartitions >= 1, "an integer >= 1")
    n = int(npartitions)
    divisions = tuple(range(n)) + (n - 1,)
    if ddf.index.name == BUCKET and ddf.known_divisions and tuple(ddf.divisions) == divisions:
        return ddf
    if user not in ddf.columns:
        raise SchemaError(f"ddf is missing column {user!r} (the user column; name yours with "
                          f"user=...)")
    if ddf.npartitions == 1 and n == 1:
        return ddf.map_partitions(_with_bucket, user, 1).set_index(
            BUCKET, sorted=True, divisions=divisions)
    with_bucket = ddf.map_partitions(_with_bucket, user, n)
    return with_bucket.set_index(BUCKET, divisions=divisions, shuffle_method=shuffle_method)


def _with_bucket(df: pd.DataFrame, user: str, n: int) -> pd.DataFrame:
    out = df.reset_index(drop=True)
    out[BUCKET] = user_bucket(out[user], n)
    return out

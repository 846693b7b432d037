"""A/B reports over a partitioned decision log: per-partition summaries, merged exactly."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import pandas as pd

from bta.dask._compute import compute
from bta.dask.io import partition_by_user
from bta.errors import ConfigError, SchemaError, check_param
from bta.evaluate import ABReport, ArmStats, merge
from bta.evaluate import ab_report as _ab_report
from bta.evaluate import summarize as _summarize
from bta.evaluate.ab import ROLES

__all__ = ["summarize", "ab_report"]


def summarize(ddf: Any, outcomes: Any = None, *, columns: Mapping[str, Any] | None = None,
              cost: Any = None, cuped: Any = None, exclude_multi_arm_users: bool = True,
              partitioned: bool = False, npartitions: int | None = None,
              client: Any = None) -> dict[Any, ArmStats]:
    """Per-arm summary statistics of a Dask decision log: :func:`bta.evaluate.summarize` on
    each partition of users, merged with :func:`bta.evaluate.merge`.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        The decision log (columns as :func:`bta.evaluate.ab_report` reads them).
    outcomes : pandas or dask DataFrame, optional
        Outcomes by ``request_id``; they are joined to the log's users and partitioned the
        same way. Outcome rows matching no decision are dropped with a warning.
    columns, cost, exclude_multi_arm_users
        As in :func:`bta.evaluate.ab_report`.
    cuped : None, str, sequence of str, pandas or dask DataFrame
        Covariate columns of the log, or a table of the user column and covariates (a pandas
        table is sent to every partition; a dask one is partitioned by user alike).
    partitioned : bool, default False
        True when ``ddf`` already holds every user in a single partition (the output of
        :func:`partition_by_user` with the same ``npartitions`` when outcomes or a CUPED table
        must be aligned with it).
    npartitions : int, optional
        Partitions of the shuffle (default: as many as ``ddf`` has).
    client : distributed.Client, optional
        Scheduler (default: the current one).

    Returns
    -------
    dict of arm label to ArmStats

    Notes
    -----
    Every user's rows are in one partition, so per-user sums, the multi-arm exclusion and the
    unit count are exactly those of one machine. Integer statistics (units, impressions,
    clicks, conversions and their products) merge exactly; float sums (spend, revenue) equal
    the single-machine ones to rounding (relative 1e-12 in the tests): addition in another
    order.
    """
    import dask
    import dask.dataframe as dd

    if not isinstance(ddf, dd.DataFrame):
        raise ConfigError(f"ddf must be a dask DataFrame, got {type(ddf).__name__}")
    check_param("partitioned", partitioned, isinstance(partitioned, bool), "True or False")
    cols = {**ROLES, **dict(columns or {})}
    user, rid = str(cols["user"]), str(cols["request_id"])
    if user not in ddf.columns:
        raise SchemaError(f"log is missing column {user!r} (the user column; name yours with "
                          f"columns={{'user': ...}})")
    n = ddf.npartitions if npartitions is None else npartitions
    log = ddf if partitioned else partition_by_user(ddf, n, user=user)
    n = log.npartitions
    out_parts: list[Any] = [None] * n
    n_outcomes: Any = 0
    if isinstance(outcomes, pd.DataFrame):
        # in memory already: one copy per worker, each partition takes its requests' rows
        if rid not in outcomes.columns:
            raise SchemaError(f"outcomes is missing column {rid!r} (the request_id column)")
        out_parts = [dask.delayed(_OutcomeSlice(outcomes, rid), pure=True, traverse=False)] * n
        n_outcomes: Any = len(outcomes)
    elif outcomes is not None:
        if not isinstance(outcomes, dd.DataFrame):
            raise ConfigError(f"outcomes must be a pandas or dask DataFrame, got "
                              f"{type(outcomes).__name__}")
        if rid not in outcomes.columns:
            raise SchemaError(f"outcomes is missing column {rid!r} (the request_id column)")
        if rid not in log.columns:
            raise SchemaError(f"log is missing column {rid!r} (the request_id column, needed "
                              f"to join outcomes)")
        if user in outcomes.columns:
            outcomes = outcomes.drop(columns=[user])
        # each outcome row goes to the partition of its request's user
        keys = log[[rid, user]].reset_index(drop=True)
        joined = outcomes.merge(keys, on=rid, how="inner")
        joined = joined.astype({user: ddf.dtypes[user]})
        out_parts = [dask.delayed(_OutcomeSlice, pure=True)(p, rid)
                     for p in partition_by_user(joined, n, user=user).to_delayed()]
        n_outcomes = outcomes.shape[0].to_delayed()
    cuped_parts: list[Any] = [cuped] * n
    if isinstance(cuped, dd.DataFrame):
        cuped_parts = partition_by_user(cuped, n, user=user).to_delayed()
    elif isinstance(cuped, pd.DataFrame):
        cuped_parts = [dask.delayed(cuped, pure=True)] * n
    task = dask.delayed(_partition_summary, pure=True)
    parts = [task(p, o, c, dict(columns or {}), cost, exclude_multi_arm_users)
             for p, o, c in zip(log.to_delayed(), out_parts, cuped_parts)]
    *results, n_out = compute(*parts, n_outcomes, client=client)
    stats = [r[0] for r in results]
    k = int(n_out) - sum(r[1] for r in results)
    if outcomes is not None and k:
        warnings.warn(f"{k} outcome rows match no decision in the log by {rid!r} and were "
                      f"dropped", RuntimeWarning, stacklevel=2)
    merged = merge(*stats)
    if not merged:
        raise SchemaError("the log has no rows with a user and an arm: nothing to summarize")
    return merged


class _OutcomeSlice:
    """Outcomes, of which a partition takes the rows of its own requests."""

    def __init__(self, outcomes: pd.DataFrame, rid: str):
        self.outcomes, self.rid = outcomes, rid

    def take(self, request_ids: pd.Series) -> pd.DataFrame:
        rows = self.outcomes[self.rid].isin(request_ids).to_numpy()
        return self.outcomes.loc[rows].reset_index(drop=True)


def _partition_summary(df: pd.DataFrame, outcomes: _OutcomeSlice | None, cuped: Any,
                       columns: dict, cost: Any, exclude: bool
                       ) -> tuple[dict[Any, ArmStats], int]:
    """Summaries of one partition, and how many outcome rows joined its requests."""
    if len(df) == 0:
        return {}, 0
    df = df.reset_index(drop=True)
    out = None
    if outcomes is not None:
        rid = outcomes.rid
        if rid not in df.columns:
            raise SchemaError(f"log is missing column {rid!r} (the request_id column, needed "
                              f"to join outcomes)")
        out = outcomes.take(df[rid])
    stats = _summarize(df, out, columns=columns or None, cost=cost, cuped=cuped,
                       exclude_multi_arm_users=exclude)
    return stats, 0 if out is None else len(out)


def ab_report(ddf: Any, outcomes: Any = None, *, columns: Mapping[str, Any] | None = None,
              cost: Any = None, cuped: Any = None, exclude_multi_arm_users: bool = True,
              partitioned: bool = False, npartitions: int | None = None, client: Any = None,
              **report_kw: Any) -> ABReport:
    """:func:`bta.evaluate.ab_report` over a Dask decision log.

    Parameters
    ----------
    ddf, outcomes, columns, cost, cuped, exclude_multi_arm_users, partitioned, npartitions, client
        As in :func:`summarize`.
    **report_kw
        ``control``, ``alpha``, ``correction``, ``family``, ``expected_weights``,
        ``srm_alpha``, ``sequential``, ``sequential_tuning`` of :func:`bta.evaluate.ab_report`.

    Returns
    -------
    ABReport
        The report of the merged summaries: per-arm table, lifts, tests and SRM equal to the
        single-machine report (floats to rounding, see :func:`summarize`). Built from
        summaries, it has no per-day table, no bootstrap and no row counts.

    Examples
    --------
    >>> log = dd.read_parquet("decisions/")                          # doctest: +SKIP
    >>> rep = ab_report(log, outcomes, control="control")           # doctest: +SKIP
    """
    for bad in ("bootstrap", "random_state"):
        if bad in report_kw:
            raise ConfigError(f"{bad} is not available over partitions (the bootstrap "
                              f"resamples users of one in-memory log)")
    stats = summarize(ddf, outcomes, columns=columns, cost=cost, cuped=cuped,
                      exclude_multi_arm_users=exclude_multi_arm_users, partitioned=partitioned,
                      npartitions=npartitions, client=client)
    return _ab_report(stats, cuped=True if cuped is not None else None, **report_kw)

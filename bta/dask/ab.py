"""A/B reports over a partitioned decision log: per-partition summaries, merged exactly."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from bta.dask._compute import compute
from bta.dask.io import partition_by_user
from bta.errors import ConfigError, SchemaError, check_param
from bta.evaluate import ABReport, ArmStats, merge
from bta.evaluate import ab_report as _ab_report
from bta.evaluate.ab.tables import bootstrap_seeds, bootstrap_sums
from bta.evaluate.ab.prepare import (
    _arm_stats,
    _first_ids,
    _multi_note,
    _no_user_note,
    _prepare,
    _Summary,
    _Units,
)
from bta.evaluate.ab import ROLES
from bta.evaluate.stats import Moments

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
    parts, _ = _summaries(ddf, outcomes, columns, cost, cuped, exclude_multi_arm_users,
                          partitioned, npartitions, client, daily=False, seeds=None)
    return merge(*(p.stats for p in parts))


def _summaries(ddf: Any, outcomes: Any, columns: Mapping[str, Any] | None, cost: Any,
               cuped: Any, exclude_multi_arm_users: bool, partitioned: bool,
               npartitions: int | None, client: Any, daily: bool, seeds: np.ndarray | None
               ) -> tuple[list["_Part"], str | None]:
    """Each partition's summary (see :func:`summarize`), computed on the cluster, and the
    note on outcome rows that joined no request (None when all joined)."""
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
    parts = [task(p, o, c, dict(columns or {}), cost, exclude_multi_arm_users, daily, seeds)
             for p, o, c in zip(log.to_delayed(), out_parts, cuped_parts)]
    *results, n_out = compute(*parts, n_outcomes, client=client)
    k = int(n_out) - sum(r.n_joined for r in results)
    note = None
    if outcomes is not None and k:
        note = f"{k} outcome rows match no decision in the log by {rid!r} and were dropped"
        warnings.warn(note, RuntimeWarning, stacklevel=3)
    if not any(r.stats for r in results):
        raise SchemaError("the log has no rows with a user and an arm: nothing to summarize")
    # partitions with rows count in the report's row counts and notes, even without units
    return [r for r in results if r.stats or r.units is not None], note


class _OutcomeSlice:
    """Outcomes, of which a partition takes the rows of its own requests."""

    def __init__(self, outcomes: pd.DataFrame, rid: str):
        self.outcomes, self.rid = outcomes, rid

    def take(self, request_ids: pd.Series) -> pd.DataFrame:
        rows = self.outcomes[self.rid].isin(request_ids).to_numpy()
        return self.outcomes.loc[rows].reset_index(drop=True)


class _Part(NamedTuple):
    """One partition's summary: small, whatever the partition's size."""

    stats: dict[Any, ArmStats]
    n_joined: int  # outcome rows joined to its requests
    units: _Units | None  # without per-unit rows; with the per-day moments when asked


def _partition_summary(df: pd.DataFrame, outcomes: _OutcomeSlice | None, cuped: Any,
                       columns: dict, cost: Any, exclude: bool, daily: bool,
                       seeds: np.ndarray | None) -> _Part:
    """Summaries of one partition, and how many outcome rows joined its requests; with
    ``seeds``, its units' bootstrap sums too (the same weights as on one machine)."""
    if len(df) == 0:
        return _Part({}, 0, None)
    df = df.reset_index(drop=True)
    out = None
    if outcomes is not None:
        rid = outcomes.rid
        if rid not in df.columns:
            raise SchemaError(f"log is missing column {rid!r} (the request_id column, needed "
                              f"to join outcomes)")
        out = outcomes.take(df[rid])
    units = _prepare(df, out, columns or None, cost, cuped, exclude, daily=daily)
    stats = _arm_stats(units)
    if seeds is not None:
        units.boot_sums = bootstrap_sums(units, seeds, threads=False)  # a Dask task already
    units.x = units.x[:0]  # the per-unit rows stay on the worker
    units.offsets = np.zeros_like(units.offsets)
    units.key_parts = None
    return _Part(stats, 0 if out is None else len(out), units if daily else None)


def _merge_units(parts: Sequence[_Part], stats: dict[Any, ArmStats], exclude: bool) -> _Units:
    """The partitions' row counts, notes and per-day moments, merged (no per-unit rows)."""
    units = [p.units for p in parts]
    names = next(iter(stats.values())).names
    arms = list(stats)
    rows = sum(u.rows for u in units)
    no_user = sum(u.no_user_rows for u in units)
    multi = sum(u.multi_arm_users for u in units)
    multi_rows = sum(u.multi_rows for u in units)
    sample = _first_ids([v for u in units for v in u.multi_sample])
    notes: list[str] = []
    for u in units:  # the notes that do not count rows are the same in every partition
        counted = {_no_user_note(u.no_user_rows), _multi_note(
            u.multi_arm_users, u.multi_rows, u.multi_sample, exclude)}
        notes += [n for n in u.notes if n not in counted and n not in notes]
    if no_user:
        notes.append(_no_user_note(no_user))
    if multi:
        notes.append(_multi_note(multi, multi_rows, sample, exclude))
    merged = _Units(arms, names, np.zeros((0, len(names))), np.zeros(len(arms) + 1, np.int64),
                    multi, notes, rows, sum(u.rows_used for u in units), no_user_rows=no_user,
                    multi_rows=multi_rows, multi_sample=sample)
    with_days = [u for u in units if u.daily is not None]
    if with_days and len(with_days) == len(units):
        merged.daily = _merge_daily(with_days, arms, names)
    if units[0].boot_sums is not None:  # per resample and arm: sums over the partitions
        b = units[0].boot_sums
        merged.boot_sums = np.zeros((b.shape[0], len(arms), b.shape[2]))
        for u in units:
            merged.boot_sums[:, [arms.index(a) for a in u.arms]] += u.boot_sums
    return merged


def _merge_daily(units: Sequence[_Units], arms: list[Any], names: tuple[str, ...]
                 ) -> tuple[np.ndarray, Moments, Moments]:
    """Per (arm, day) moments summed over partitions. A day's moments add up over users, so
    over partitions; a partition without rows on a day adds nothing to that day, and its
    cumulative moments carry over from its last earlier day."""
    days = np.unique(np.concatenate([u.daily[0] for u in units]))
    k = len(names)

    def zeros() -> Moments:
        a, d = len(arms), days.size
        return Moments(np.zeros((a, d)), np.zeros((a, d, k)), np.zeros((a, d, k, k)), names)

    day_m, cum_m = zeros(), zeros()
    for u in units:
        p_days, p_day, p_cum = u.daily
        if not p_days.size:  # a partition without usable rows
            continue
        rows = np.array([arms.index(a) for a in u.arms], dtype=np.int64)[:, None]
        cols = np.searchsorted(days, p_days)[None, :]
        # the partition's last day on or before each day of the merged table (-1: none yet)
        last = np.searchsorted(p_days, days, side="right") - 1
        seen = (last >= 0)[None, :]
        for total, part, carry in ((day_m, p_day, False), (cum_m, p_cum, True)):
            for field in ("n", "sums", "cross"):
                src, dst = getattr(part, field), getattr(total, field)
                if carry:
                    vals = src[:, np.maximum(last, 0)]
                    mask = seen.reshape(seen.shape + (1,) * (vals.ndim - 2))
                    dst[rows[:, 0]] += np.where(mask, vals, 0.0)
                else:
                    dst[rows, cols] += src
    return days, day_m, cum_m


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
        ``srm_alpha``, ``sequential``, ``sequential_tuning``, ``bootstrap``, ``random_state``
        of :func:`bta.evaluate.ab_report`.

    Returns
    -------
    ABReport
        The report of the merged summaries: per-arm table, lifts, tests and SRM equal to the
        single-machine report (floats to rounding, see :func:`summarize`), and so are its
        per-day table (each day's moments and the cumulative ones, summed over partitions),
        row counts and notes, and with ``bootstrap=`` its percentile intervals: a unit's
        weight in a resample depends on the seed and the unit only, so each partition sums
        its own units' weighted values and the sums add up.

    Examples
    --------
    >>> log = dd.read_parquet("decisions/")                          # doctest: +SKIP
    >>> rep = ab_report(log, outcomes, control="control")           # doctest: +SKIP
    """
    n_boot = report_kw.get("bootstrap", 0)
    check_param("bootstrap", n_boot, isinstance(n_boot, (int, np.integer))
                and not isinstance(n_boot, bool) and n_boot >= 0,
                "0 or a positive number of resamples")
    seeds = bootstrap_seeds(n_boot, report_kw.pop("random_state", None)) if n_boot else None
    parts, note = _summaries(ddf, outcomes, columns, cost, cuped, exclude_multi_arm_users,
                             partitioned, npartitions, client, daily=True, seeds=seeds)
    stats = merge(*(p.stats for p in parts))
    summary = _Summary(stats, _merge_units(parts, stats, exclude_multi_arm_users))
    if note:
        summary.units.notes.append(note)
    return _ab_report(summary, cuped=True if cuped is not None else None, **report_kw)

"""A/B evaluation of ad targeting: CPM, CTR, CVR, ROAS and ROI per arm, lifts, tests, checks.

``ab_report(log, outcomes)`` reads a decision log (bta's Engine schema, see :mod:`bta.schema`,
or any table through a column mapping), joins outcomes by ``request_id``, sums everything per
randomization unit (the user), summarizes each arm by mergeable statistics
(:class:`~bta.evaluate.stats.ArmStats`) and computes from those:

- per arm: users, impressions, clicks, conversions, spend, revenue and every metric of
  :data:`~bta.evaluate.stats.METRICS` with a delta-method interval;
- against the control arm: absolute and relative lifts with intervals and p-values (delta
  method at the user level for ratios, Welch t for per-user means, two-proportion z for shares
  of users), a multiplicity correction over a stated family, optional CUPED, an optional
  always-valid sequential test and an optional user-level bootstrap;
- a sample-ratio-mismatch check, users seen in several arms, and lifts per day.

Input columns (bta name: meaning; ``columns={bta_name: your_name}`` maps them):

================ ==========================================================================
``arm``          experiment arm (required)
``user``         randomization unit, default column ``user_id`` (required)
``impressions``  impressions of the row (default: 1 per row, the Engine's one row per decision)
``clicks``       clicks (log or outcomes)
``conversions``  conversions (log or outcomes)
``revenue``      revenue of the conversions (log or outcomes)
``cost``         spend of the row in currency
``price``        price paid per 1,000 impressions (CPM), the Engine's ``price``
``ts``           time (datetime, or epoch milliseconds): enables the per-day table
``request_id``   joins ``outcomes`` to the log
================ ==========================================================================

A column that is absent under its default name is *not measured*: its metrics are NaN with
status ``"not_measured"``. A column named explicitly in ``columns`` must exist.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from bta.errors import ConfigError, UnknownNameError, check_param
from bta.evaluate.ab.inputs import ROLES, CostModel
from bta.evaluate.ab.prepare import _arm_stats, _prepare, _Summary, _Units
from bta.evaluate.ab.tables import (
    _TOTALS,
    _arms_frame,
    _bootstrap,
    _daily_frame,
    _lifts,
    _markdown_table,
    _Settings,
    _srm_frame,
)
from bta.evaluate.stats import METRICS, ArmStats, Moments, msprt_rho

__all__ = ["ROLES", "CostModel", "summarize", "ab_report", "ABReport"]

_DEFAULT_FAMILY = ("ctr", "cvr", "roas")


# ----------------------------------------------------------------------------- summarize


def summarize(log: Any, outcomes: Any = None, *, columns: Mapping[str, Any] | None = None,
              cost: None | str | CostModel = None, cuped: Any = None,
              exclude_multi_arm_users: bool = True) -> dict[Any, ArmStats]:
    """Mergeable summary statistics per arm of a decision log (and its outcomes).

    Parameters
    ----------
    log, outcomes, columns, cost, cuped, exclude_multi_arm_users
        As in :func:`ab_report`.

    Returns
    -------
    dict of arm label to ArmStats
        Units are users (or (user, arm) pairs when users seen in several arms are kept);
        names are the measured :data:`~bta.evaluate.stats.BASE_METRICS` then the
        covariates ``pre:<column>``.

    Examples
    --------
    >>> import pandas as pd
    >>> log = pd.DataFrame({"arm": ["a", "a", "b"], "user_id": [1, 1, 2],
    ...                     "clicks": [1, 0, 0]})
    >>> st = summarize(log)
    >>> st["a"].n, st["a"].sums[:2]
    (1, (2, 1))
    """
    u = _prepare(log, outcomes, columns, cost, cuped, exclude_multi_arm_users, daily=False)
    return _arm_stats(u)


def ab_report(log: Any, outcomes: Any = None, *, columns: Mapping[str, Any] | None = None,
              control: Any = "control", cost: None | str | CostModel = None,
              alpha: float = 0.05, correction: Literal["holm", "bh"] | None = "holm",
              family: Sequence[str] = _DEFAULT_FAMILY, exclude_multi_arm_users: bool = True,
              expected_weights: Mapping[Any, float] | None = None, srm_alpha: float = 0.001,
              cuped: Any = None, sequential: bool = False, sequential_tuning: float = 5000.0,
              bootstrap: int = 0, random_state: Any = None) -> ABReport:
    """CPM/CTR/ROAS/ROI per arm and lifts against the control arm, with tests and checks.

    Parameters
    ----------
    log : DataFrame, pyarrow Table, Parquet path, mapping of arrays, or mapping of ArmStats
        The decision log (one row per impression, bta's Engine schema) or any table of the
        columns in this module's docstring. A mapping ``{arm: ArmStats}`` (e.g. merged
        :func:`summarize` results of shards) gives the report from summaries alone
        (no per-day table, no bootstrap).
    outcomes : table, optional
        ``request_id``, ``clicks``, ``conversions``, ``revenue``; summed per request and joined
        to the log; decisions without outcomes have none (0).
    columns : mapping of str to str, optional
        ``{bta role: your column}``; roles in :data:`ROLES`.
    control : label
        The control arm.
    cost : None, str or CostModel
        Spend: ``None`` takes the ``cost`` column (currency) or else the ``price`` column (per
        1,000 impressions); a string names the log column holding the price per 1,000
        impressions; a :class:`CostModel` prices impressions, clicks or conversions.
    alpha : float
        Significance level (two-sided).
    correction : {"holm", "bh", None}
        Multiplicity correction over the family (see Notes).
    family : sequence of str
        The metrics whose lifts form the family of tests, across all non-control arms.
    exclude_multi_arm_users : bool
        Drop users seen in more than one arm (reported in ``notes``). If False, each (user,
        arm) pair is a unit.
    expected_weights : mapping of arm to float, optional
        Planned traffic split for the SRM check (default: equal).
    srm_alpha : float
        The SRM alarm goes off at ``p < srm_alpha``.
    cuped : None, str, sequence of str, table, or True
        CUPED covariates: log column(s) holding a per-user pre-period value, or a table with
        the user column and covariate columns (users missing from it get 0); ``True`` with
        summary statistics uses their ``pre:*`` columns.
    sequential : bool
        Always-valid mixture-SPRT p-values and confidence sequences instead of fixed-horizon
        ones (see :func:`bta.evaluate.stats.compare`).
    sequential_tuning : float
        Total number of users at which the confidence sequence is tightest (GrowthBook's
        default, 5000).
    bootstrap : int
        Number of user-level Poisson bootstrap resamples (0: none); adds percentile intervals.
        A unit's weight in a resample is drawn from the resample's seed and a hash of the
        unit's user and arm, so the intervals do not depend on the order of the log's rows
        (nor, in :func:`bta.dask.ab_report`, on the partitioning).
    random_state : None, int or numpy Generator
        Seed of the bootstrap.

    Returns
    -------
    ABReport

    Raises
    ------
    SchemaError
        Missing columns, negative impressions/clicks/costs, non-integer counts, nulls,
        mismatched column lengths.
    UnknownNameError
        Unknown control arm, metric or column role.
    ConfigError
        Invalid parameters.

    Notes
    -----
    Family and intervals: the family is every (non-control arm, metric in ``family``) lift;
    ``m`` counts all of them (a test that could not run counts, with p = 1). With
    ``correction="holm"`` family intervals are Bonferroni intervals at level
    ``1 - alpha/m``: whenever such an interval excludes 0, Holm rejects too. With ``"bh"`` they
    are Benjamini-Yekutieli false-coverage-rate intervals at level ``1 - R alpha/m``, ``R`` the
    number of BH rejections (at least 1): exactly the rejected lifts' intervals exclude 0
    (up to the pooled/unpooled variance of the proportion test). Lifts outside the family
    are unadjusted (``p_adjusted == p_value``, level ``1 - alpha``). ``ci_level`` states the
    level of each row. The per-day table and the per-arm intervals are unadjusted.

    Bootstrap: each user gets an independent Poisson(1) weight per resample, in every arm; the
    percentile intervals (at each row's ``ci_level``) are NaN when a resample leaves the
    metric undefined. With CUPED, ``theta`` and the pooled covariate means are held at their
    full-sample values.
    """
    family = (family,) if isinstance(family, str) else tuple(family)
    st = _Settings(control, alpha, correction, family, srm_alpha, sequential,
                   float(sequential_tuning), bootstrap)
    units = None
    if isinstance(log, Mapping) and log and all(isinstance(v, ArmStats) for v in log.values()):
        for nm, v in (("outcomes", outcomes), ("columns", columns), ("cost", cost)):
            if v is not None:
                raise ConfigError(f"{nm} must be None when log is summary statistics, got "
                                  f"{type(v).__name__}")
        check_param("bootstrap", bootstrap, bootstrap == 0,
                    "0 with summary statistics (it resamples users of a log)")
        check_param("cuped", cuped, cuped in (None, True),
                    "None or True with summary statistics")
        stats = dict(log)
        notes: list[str] = []
        multi = 0
        n_rows = n_used = None
    else:
        if isinstance(log, _Summary):  # merged partition summaries (bta.dask.ab_report)
            units, stats = log.units, dict(log.stats)
            have = 0 if units.boot_sums is None else units.boot_sums.shape[0]
            check_param("bootstrap", bootstrap, bootstrap == have,
                        f"{have}: the resamples summed in the partitions")
        else:
            units = _prepare(log, outcomes, columns, cost, cuped, exclude_multi_arm_users,
                             daily=True)
            stats = _arm_stats(units)
        notes, multi = list(units.notes), units.multi_arm_users
        n_rows, n_used = units.rows, units.rows_used
    return _report(stats, units, notes, multi, n_rows, n_used, st, cuped=cuped,
                   expected_weights=expected_weights, random_state=random_state)


def _report(stats: dict[Any, ArmStats], units: _Units | None, notes: list[str], multi: int,
            n_rows: int | None, n_used: int | None, st: _Settings, *, cuped: Any,
            expected_weights: Mapping[Any, float] | None, random_state: Any) -> ABReport:
    """The report of per-arm summaries; ``units`` (when known) gives the per-day table and
    the bootstrap (from the per-unit rows ``units.x``, or the sums ``units.boot_sums``)."""
    control, alpha, srm_alpha = st.control, st.alpha, st.srm_alpha
    bootstrap, correction, sequential = st.bootstrap, st.correction, st.sequential
    names = next(iter(stats.values())).names
    if expected_weights is not None:
        for a in expected_weights:
            if a not in stats:  # a planned arm that got no traffic
                stats[a] = ArmStats.zero(names)
    if control not in stats:
        raise UnknownNameError(f"control arm {control!r} is not in the data; arms are "
                               f"{list(stats)}")
    arms = [control] + sorted((a for a in stats if a != control), key=str)
    covariates = tuple(n for n in names if n.startswith("pre:")) if cuped is not None else ()
    if cuped is True and not covariates:
        raise ConfigError("cuped=True needs summary statistics with covariates (pre:* names), "
                          f"got names {list(names)}")
    srm = _srm_frame({a: stats[a].n for a in arms}, expected_weights, srm_alpha)
    if srm["alarm"].iloc[0]:
        notes.append(f"sample ratio mismatch: p = {srm['p_value'].iloc[0]:.3g} < {srm_alpha} "
                     f"(check the assignment before trusting any lift)")
    rho = msprt_rho(alpha, st.sequential_tuning) if sequential else None
    moments = Moments.stack([stats[a] for a in arms])
    lifts, results = _lifts(moments, arms, st, covariates, rho)
    if bootstrap and units is not None and len(arms) > 1:
        _bootstrap(lifts, results, units, stats, arms, covariates, bootstrap, random_state)
    daily = _daily_frame(units, arms, st, covariates, rho)
    return ABReport(
        arms=_arms_frame(moments, arms, alpha), lifts=lifts, srm=srm, daily=daily,
        stats={a: stats[a] for a in arms}, control=control, family=st.family,
        correction=correction, alpha=alpha, sequential=sequential, cuped=covariates,
        bootstrap=int(bootstrap), multi_arm_users=multi, rows=n_rows, rows_used=n_used,
        notes=tuple(notes))


@dataclass(frozen=True)
class ABReport:
    """Result of :func:`ab_report`.

    Attributes
    ----------
    arms : DataFrame
        Long: one row per (arm, metric): ``value``, ``std_error``, ``ci_low``, ``ci_high``
        (delta method, unadjusted level ``1 - alpha``; totals have no interval), ``status``.
    lifts : DataFrame
        One row per (non-control arm, metric); see :func:`bta.evaluate.stats.compare` for the
        columns, plus ``in_family``, ``p_adjusted``, ``ci_level``, ``significant`` and, with a
        bootstrap, ``boot_abs_ci_low`` ... ``boot_rel_ci_high``.
    srm : DataFrame
        Per arm: users, expected and observed shares; the chi-square, its p-value and the
        alarm (repeated on every row).
    daily : DataFrame
        Per day, arm and family metric, lifts of that day's activity (``scope="day"``) and of
        everything up to the end of that day (``scope="cumulative"``), unadjusted.
    stats : mapping of arm to ArmStats
        The summaries everything was computed from (merge them with other shards' ones).
    rows, rows_used : int or None
        Log rows read, and used (the rest belonged to users seen in several arms); None when
        the report was computed from summaries.
    notes : tuple of str
        What was not measured, excluded or dropped, and check failures, in words.
    """

    arms: pd.DataFrame
    lifts: pd.DataFrame
    srm: pd.DataFrame
    daily: pd.DataFrame
    stats: Mapping[Any, ArmStats]
    control: Any
    family: tuple[str, ...]
    correction: str | None
    alpha: float
    sequential: bool = False
    cuped: tuple[str, ...] = ()
    bootstrap: int = 0
    multi_arm_users: int = 0
    rows: int | None = None
    rows_used: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def srm_alarm(self) -> bool:
        """Whether the sample-ratio-mismatch check failed."""
        return bool(self.srm["alarm"].iloc[0]) if len(self.srm) else False

    def arm_table(self) -> pd.DataFrame:
        """Per-arm values, wide: one row per arm, one column per total or metric."""
        t = self.arms.pivot(index="arm", columns="metric", values="value")
        order = list(_TOTALS) + list(METRICS)
        return t.reindex(index=pd.Index(list(self.stats), dtype=object), columns=order)

    def family_statement(self) -> str:
        """The family of tests and how its p-values and intervals are adjusted, in words."""
        m = int(self.lifts["in_family"].sum()) if len(self.lifts) else 0
        lv = self.lifts.loc[self.lifts["in_family"], "ci_level"] if m else pd.Series([])
        how = {"holm": "Holm step-down p-values; Bonferroni intervals",
               "bh": "Benjamini-Hochberg p-values; Benjamini-Yekutieli FCR intervals",
               None: "no correction"}[self.correction]
        level = f" at {100 * lv.iloc[0]:.4g}%" if m and self.correction else ""
        return (f"family: {', '.join(self.family)} x {max(len(self.stats) - 1, 0)} arm(s) vs "
                f"{self.control!r} = {m} tests; {how}{level}; alpha = {self.alpha}")

    def to_markdown(self) -> str:
        """The report as Markdown: checks, per-arm table, lifts (family first), notes."""
        lines = ["# A/B report", ""]
        srm = self.srm
        lines.append(f"- control: `{self.control}`; arms: "
                     + ", ".join(f"`{a}` ({n:,} users)" for a, n in zip(srm["arm"], srm["users"])))
        lines.append(f"- {self.family_statement()}")
        test = "always-valid mixture SPRT" if self.sequential else "fixed-horizon tests"
        lines.append(f"- {test}" + (f"; CUPED with {', '.join(self.cuped)}" if self.cuped
                                    else "") + (f"; bootstrap {self.bootstrap} resamples"
                                                if self.bootstrap else ""))
        lines.append(f"- sample ratio check: chi2 = {srm['chi2'].iloc[0]:.4g}, p = "
                     f"{srm['p_value'].iloc[0]:.4g}: "
                     + ("**MISMATCH**" if self.srm_alarm else "ok"))
        lines.append(f"- users in more than one arm: {self.multi_arm_users}"
                     + (f"; log rows read: {self.rows:,}, used: {self.rows_used:,}"
                        if self.rows is not None else ""))
        lines += ["", "## Arms", ""]
        wide = self.arm_table().reset_index(names="arm")
        lines.append(_markdown_table(wide))
        lines += ["", "## Lifts against the control", ""]
        if len(self.lifts):
            lf = self.lifts.sort_values("in_family", ascending=False, kind="stable")
            keep = ["arm", "metric", "control", "treatment", "abs_lift", "abs_ci_low",
                    "abs_ci_high", "rel_lift", "rel_ci_low", "rel_ci_high", "p_value",
                    "p_adjusted", "in_family", "significant", "test", "status"]
            lines.append(_markdown_table(lf[keep]))
        else:
            lines.append("(no arm besides the control)")
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def plot(self, path_dir: str | os.PathLike) -> list[Path]:
        """Save the figures as PNG in ``path_dir`` (created if needed); needs ``bta[plot]``.

        Returns the paths: ``arms.png`` (ROAS and CTR per arm with intervals) and, when the log
        had times, ``cumulative_lift.png`` (cumulative relative lift of the family metrics).
        """
        from bta.evaluate.plots import plot_arms, plot_cumulative_lift

        d = Path(path_dir)
        d.mkdir(parents=True, exist_ok=True)
        paths = [plot_arms(self, d / "arms.png")]
        if len(self.daily):
            paths.append(plot_cumulative_lift(self, d / "cumulative_lift.png"))
        return paths

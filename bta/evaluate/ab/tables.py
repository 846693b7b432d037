"""Tables of an :class:`~bta.evaluate.ab.ABReport`: settings, lifts, arms, SRM, daily, markdown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bta.errors import UnknownNameError, check_param
from bta.evaluate.ab.inputs import _DAY_MS
from bta.evaluate.ab.prepare import _Units
from bta.evaluate.stats import (
    METRICS,
    Moments,
    adjust_pvalues,
    compare,
    estimate,
    intervals,
    srm_test,
)

__all__ = [
    "_TOTALS",
    "_Settings",
    "_arms_frame",
    "_bootstrap",
    "_daily_frame",
    "_lifts",
    "_markdown_table",
    "_srm_frame",
]


#: Totals reported per arm besides the metrics.
_TOTALS = ("users", "impressions", "clicks", "conversions", "spend", "revenue")


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class _Settings:
    control: Any
    alpha: float
    correction: str | None
    family: tuple[str, ...]
    srm_alpha: float
    sequential: bool
    sequential_tuning: float
    bootstrap: int

    def __post_init__(self) -> None:
        check_param("alpha", self.alpha, _prob(self.alpha), "in (0, 1)")
        check_param("srm_alpha", self.srm_alpha, _prob(self.srm_alpha), "in (0, 1)")
        check_param("correction", self.correction, self.correction in ("holm", "bh", None),
                    "'holm', 'bh' or None")
        check_param("family", self.family, len(self.family) > 0 and all(
            isinstance(m, str) for m in self.family), "a non-empty sequence of metric names")
        unknown = [m for m in self.family if m not in METRICS]
        if unknown:
            raise UnknownNameError(f"family has unknown metric {unknown[0]!r}; expected some "
                                   f"of {list(METRICS)}")
        check_param("family", self.family, len(set(self.family)) == len(self.family),
                    "free of duplicates")
        check_param("sequential", self.sequential, isinstance(self.sequential, bool),
                    "True or False")
        check_param("sequential_tuning", self.sequential_tuning,
                    isinstance(self.sequential_tuning, (int, float)) and self.sequential_tuning > 0
                    and math.isfinite(self.sequential_tuning), "a positive number of users")
        check_param("bootstrap", self.bootstrap, isinstance(self.bootstrap, (int, np.integer))
                    and not isinstance(self.bootstrap, bool) and self.bootstrap >= 0,
                    "0 or a positive number of resamples")


def _prob(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating)) and not isinstance(x, bool) and 0 < x < 1


_LIFT_COLUMNS = ["arm", "metric", "kind", "test", "control", "treatment", "abs_lift", "abs_se",
                 "abs_ci_low", "abs_ci_high", "rel_lift", "rel_se", "rel_ci_low", "rel_ci_high",
                 "statistic", "df", "p_value", "in_family", "p_adjusted", "ci_level",
                 "significant", "n_control", "n_treatment", "status"]


def _lifts(moments: Moments, arms: list[Any], st: _Settings, covariates: tuple[str, ...],
           rho: float | None) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    n_t = len(arms) - 1
    if n_t == 0:
        return pd.DataFrame(columns=_LIFT_COLUMNS), {}
    ctrl = Moments(np.repeat(moments.n[:1], n_t), np.repeat(moments.sums[:1], n_t, axis=0),
                   np.repeat(moments.cross[:1], n_t, axis=0), moments.names)
    treat = Moments(moments.n[1:], moments.sums[1:], moments.cross[1:], moments.names)
    results = {m: compare(ctrl, treat, m, alpha=st.alpha, covariates=covariates,
                          sequential_rho=rho) for m in METRICS}
    cols: dict[str, Any] = {
        "arm": np.array(arms[1:] * len(METRICS), dtype=object),
        "metric": np.repeat(np.array(list(METRICS), dtype=object), n_t),
        "kind": np.repeat(np.array([m.kind for m in METRICS.values()], dtype=object), n_t)}
    for k in _LIFT_COLUMNS[3:]:
        if k in results["ctr"]:
            cols[k] = np.concatenate([r[k] for r in results.values()])
    in_family = np.isin(cols["metric"], st.family)
    p = cols["p_value"]
    p_adj = p.copy()
    level_alpha = np.full(p.size, st.alpha)
    m_fam = int(in_family.sum())
    p_adj[in_family] = adjust_pvalues(p[in_family], st.correction)
    if st.correction == "holm":
        level_alpha[in_family] = st.alpha / m_fam
    elif st.correction == "bh":
        rejected = int(np.nansum(p_adj[in_family] <= st.alpha))
        level_alpha[in_family] = st.alpha * max(rejected, 1) / m_fam
    cols["in_family"] = in_family
    cols["p_adjusted"] = p_adj
    cols["ci_level"] = 1.0 - level_alpha
    cols["significant"] = np.nan_to_num(p_adj, nan=1.0) <= st.alpha
    for i, r in enumerate(results.values()):
        intervals(r, level_alpha[i * n_t:(i + 1) * n_t], rho)
    for k in ("abs_ci_low", "abs_ci_high", "rel_ci_low", "rel_ci_high"):
        cols[k] = np.concatenate([r[k] for r in results.values()])
    df = pd.DataFrame(cols)
    return df[_LIFT_COLUMNS], results


def _arms_frame(moments: Moments, arms: list[Any], alpha: float) -> pd.DataFrame:
    from scipy.stats import norm

    z = norm.isf(alpha / 2.0)
    names = moments.names
    out = []
    n = moments.n
    for t in _TOTALS:
        if t == "users":
            val, status = n, np.full(n.shape, "ok")
        elif t in names:
            val, status = moments.sums[:, names.index(t)], np.full(n.shape, "ok")
        else:
            val, status = np.full(n.shape, np.nan), np.full(n.shape, "not_measured")
        out.append(pd.DataFrame({"arm": pd.Series(arms, dtype=object), "metric": t,
                                 "value": val, "std_error": np.nan, "ci_low": np.nan,
                                 "ci_high": np.nan, "status": status}))
    for m, metric in METRICS.items():
        if not metric.requires <= set(names):
            val = se = np.full(n.shape, np.nan)
            status = np.full(n.shape, "not_measured")
        else:
            e = estimate(moments, m)
            val, se = e["value"].copy(), e["std_error"].copy()
            status = np.select([n == 0, e["denominator"] == 0, n < 2], ["empty_arm",
                               "zero_denominator", "too_few_units"], "ok")
            val[status == "empty_arm"] = np.nan
            val[status == "zero_denominator"] = np.nan
            se[status != "ok"] = np.nan
        out.append(pd.DataFrame({"arm": pd.Series(arms, dtype=object), "metric": m,
                                 "value": val, "std_error": se, "ci_low": val - z * se,
                                 "ci_high": val + z * se, "status": status}))
    df = pd.concat(out, ignore_index=True)
    df["status"] = df["status"].astype(object)
    return df


def _srm_frame(users: dict[Any, int], expected_weights: Mapping[Any, float] | None,
               srm_alpha: float) -> pd.DataFrame:
    chi2, p, shares = srm_test(users, expected_weights)
    total = sum(users.values())
    return pd.DataFrame({
        "arm": pd.Series(list(users), dtype=object),
        "users": list(users.values()),
        "expected_share": [shares[a] for a in users],
        "observed_share": [u / total if total else math.nan for u in users.values()],
        "expected_users": [shares[a] * total for a in users],
        "chi2": chi2, "p_value": p, "alarm": bool(p < srm_alpha) if p == p else False,
    })


def bootstrap_seeds(n_boot: int, random_state: Any) -> np.ndarray:
    """The resamples' seeds (uint64), drawn from ``random_state``."""
    rng = np.random.default_rng(random_state)
    return rng.integers(0, np.iinfo(np.uint64).max, size=n_boot, dtype=np.uint64,
                        endpoint=True)


def bootstrap_sums(units: _Units, seeds: np.ndarray, threads: bool = True) -> np.ndarray:
    """Per resample and arm of ``units.arms``, the weighted sums of [1, x] over its units:
    shape (B, arms, 1 + K). ``threads=False`` for a caller in a thread pool (a Dask task)."""
    from bta.evaluate.ab.kernels import poisson_bootstrap_sums

    group = np.repeat(np.arange(len(units.arms)), np.diff(units.offsets))
    x = np.concatenate([np.ones((units.x.shape[0], 1)), units.x], axis=1)
    return poisson_bootstrap_sums(x, group, len(units.arms), seeds, units.unit_keys(),
                                  threads=threads)


def _bootstrap(lifts: pd.DataFrame, results: dict[str, dict[str, np.ndarray]], units: _Units,
               stats: Mapping[Any, Any], arms: list[Any], covariates: tuple[str, ...],
               n_boot: int, random_state: Any) -> None:
    sums = units.boot_sums
    if sums is None:
        sums = bootstrap_sums(units, bootstrap_seeds(n_boot, random_state))
    pos = [units.arms.index(a) if a in units.arms else -1 for a in arms]
    # arms without units (planned, no traffic) have all-zero sums
    s = np.stack([sums[:, p] if p >= 0 else np.zeros_like(sums[:, 0]) for p in pos], axis=1)
    # the full sample's [n, sums] per arm
    full = np.array([[float(stats[a].n), *map(float, stats[a].sums)] for a in arms])
    cols = [units.names.index(c) + 1 for c in covariates]
    n_t = len(arms) - 1
    for c in ("boot_abs_ci_low", "boot_abs_ci_high", "boot_rel_ci_low", "boot_rel_ci_high"):
        lifts[c] = np.nan
    for i, m in enumerate(METRICS):
        used = {nm for nm, _ in METRICS[m].num + METRICS[m].den}
        if not used <= set(units.names):
            continue  # a metric the log does not measure: no interval
        a, b = METRICS[m].vectors(units.names)
        with np.errstate(all="ignore"):
            r = (s @ a) / (s @ b)  # (B, arms)
            if cols:
                theta = results[m]["theta"]  # (n_t, C), one per comparison
                pooled = (full[0] + full[1:])  # (n_t, 1 + K)
                mu_pool = pooled[:, cols] / pooled[:, :1]
                mu_b = s[:, :, cols] / s[:, :, :1]  # (B, arms, C)
                rc = r[:, :1] - np.einsum("btc,tc->bt", mu_b[:, :1] - mu_pool, theta)
                rt = r[:, 1:] - np.einsum("btc,tc->bt", mu_b[:, 1:] - mu_pool, theta)
            else:
                rc, rt = r[:, :1], r[:, 1:]
            d = rt - rc
            rel = rt / rc - 1.0
        sl = slice(i * n_t, (i + 1) * n_t)
        lv = lifts["ci_level"].to_numpy()[sl]
        for name, v in (("abs", d), ("rel", rel)):
            lo, hi = np.full(n_t, np.nan), np.full(n_t, np.nan)
            for j in range(n_t):
                col = v[:, j]
                if np.isfinite(col).all():
                    q = (1.0 - lv[j]) / 2.0
                    lo[j], hi[j] = np.quantile(col, [q, 1.0 - q])
            lifts.loc[lifts.index[sl], f"boot_{name}_ci_low"] = lo
            lifts.loc[lifts.index[sl], f"boot_{name}_ci_high"] = hi


_DAILY_COLUMNS = ["date", "scope", "arm", "metric", "control", "treatment", "abs_lift",
                  "abs_ci_low", "abs_ci_high", "rel_lift", "rel_ci_low", "rel_ci_high", "p_value",
                  "test", "n_control", "n_treatment", "status"]


def _daily_frame(units: _Units | None, arms: list[Any], st: _Settings,
                 covariates: tuple[str, ...], rho: float | None) -> pd.DataFrame:
    if units is None or units.daily is None or len(arms) < 2:
        return pd.DataFrame(columns=_DAILY_COLUMNS)
    days, day_m, cum_m = units.daily
    names = day_m.names
    k = len(names)
    date = (days * _DAY_MS).astype("datetime64[ms]")

    def arm_slice(m: Moments, a: Any) -> Moments:
        if a in units.arms:
            i = units.arms.index(a)
            return Moments(m.n[i], m.sums[i], m.cross[i], names)
        d = m.n.shape[1]
        return Moments(np.zeros(d), np.zeros((d, k)), np.zeros((d, k, k)), names)

    parts: dict[str, list[Any]] = {c: [] for c in _DAILY_COLUMNS}
    for scope, m, r in (("day", day_m, None), ("cumulative", cum_m, rho)):
        ctrl = arm_slice(m, arms[0])
        for a in arms[1:]:
            treat = arm_slice(m, a)
            for metric in st.family:
                res = compare(ctrl, treat, metric, alpha=st.alpha, covariates=covariates,
                              sequential_rho=r)
                for c in _DAILY_COLUMNS[4:]:
                    parts[c].append(res[c])
                parts["date"].append(date)
                parts["scope"].append(np.full(days.size, scope, dtype=object))
                parts["arm"].append(np.array([a] * days.size, dtype=object))
                parts["metric"].append(np.full(days.size, metric, dtype=object))
    cols = {c: (pd.DatetimeIndex(np.concatenate(v)).tz_localize("UTC") if c == "date"
                else np.concatenate(v)) for c, v in parts.items()}
    return pd.DataFrame(cols)[_DAILY_COLUMNS]


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "NaN"
        if float(v).is_integer() and abs(v) < 1e15:  # counts stored as float
            return f"{int(v):,}"
        return f"{v:,.0f}" if abs(v) >= 1e5 else f"{v:.4g}"
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def _markdown_table(df: pd.DataFrame) -> str:
    def right(c: Any) -> bool:
        dt = df[c].dtype
        return pd.api.types.is_numeric_dtype(dt) and not pd.api.types.is_bool_dtype(dt)

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if right(c) else "---" for c in df.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |"
            for row in df.itertuples(index=False, name=None)]
    return "\n".join([head, rule] + body)

"""Per-unit data of an A/B test: validation, outcome joins, covariates and daily splits.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bta.errors import ConfigError, SchemaError
from bta.evaluate.ab import kernels as _k
from bta.evaluate.ab.inputs import (
    _DAY_MS,
    _OUTCOME_ROLES,
    CostModel,
    _codes,
    _numbers,
    _resolve,
    _Source,
    _times_ms,
)
from bta.evaluate.stats import BASE_METRICS, ArmStats, Moments

__all__ = ["_Summary", "_Units", "_arm_stats", "_first_ids", "_multi_note", "_no_user_note",
           "_prepare"]


@dataclass
class _Units:
    """Per-unit sums, sorted by arm; what the statistics and the bootstrap are computed from."""

    arms: list[Any]
    names: tuple[str, ...]
    x: np.ndarray  # (n_units, K)
    offsets: np.ndarray  # (n_arms + 1,) slice of each arm in x
    multi_arm_users: int
    notes: list[str]
    rows: int
    rows_used: int
    daily: tuple[np.ndarray, Moments, Moments] | None = None  # days, per day, cumulative
    no_user_rows: int = 0  # rows without a user id (excluded)
    multi_rows: int = 0  # rows of users in several arms, when excluded
    multi_sample: tuple = ()  # up to 5 of those users' ids, for the note
    # (user labels, each unit's user, each unit's arm): what unit_keys() hashes
    key_parts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    boot_sums: np.ndarray | None = None  # (B, arms, 1 + K), given instead of the rows x

    def unit_keys(self) -> np.ndarray:
        """A stable 64-bit key of each unit, from its user's and arm's labels (the bootstrap
        draws a unit's weights from it): the same in every process and however the log's
        rows are ordered or its users split."""
        labels, unit_user, unit_arm = self.key_parts
        user_h = _label_hash(labels)
        arm_h = _label_hash(np.asarray(self.arms, dtype=object))
        return user_h[unit_user] ^ (arm_h[unit_arm] * np.uint64(0x9E3779B97F4A7C15))


def _label_hash(labels: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash of each label (the same in every process, and whatever else is in
    the column): integers by value, text by its UTF-8 bytes (compiled, over the Arrow
    buffers), anything else by pandas' SipHash of its type and text; 1 and "1" differ."""
    labels = np.asarray(labels, dtype=object)
    kind = pd.api.types.infer_dtype(labels, skipna=False)
    if kind == "string":
        try:
            return _hash_text(labels)
        except UnicodeEncodeError:  # a lone surrogate: each label by its own kind, below
            pass
    if kind == "integer":
        ints = _as_int64(labels)
        if ints is not None:
            return _k.hash_ints(ints)
    if kind == "floating":
        return _hash_floats(labels)
    # a mixed column: each label by its own kind, as in a column of that kind alone
    labels = np.array([v.item() if isinstance(v, np.generic) else v for v in labels]
                      + [None], dtype=object)[:-1]  # NumPy scalars as their Python kind
    out = np.empty(labels.size, dtype=np.uint64)
    is_str = np.fromiter((isinstance(v, str) and _utf8(v) for v in labels), bool, labels.size)
    is_int = np.fromiter((isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                          and _INT64_MIN <= v <= _INT64_MAX for v in labels), bool, labels.size)
    if is_str.any():
        out[is_str] = _hash_text(labels[is_str])
    if is_int.any():
        out[is_int] = _k.hash_ints(_as_int64(labels[is_int]))
    is_float = np.fromiter((isinstance(v, float) for v in labels), bool, labels.size)
    if is_float.any():
        out[is_float] = _hash_floats(labels[is_float])
    rest = ~(is_str | is_int | is_float)  # beyond int64 too: hashed as text, as other labels
    if rest.any():
        text = pd.Series([f"{type(v).__name__}:{v!r}" for v in labels[rest]], dtype=object)
        out[rest] = pd.util.hash_pandas_object(text, index=False).to_numpy(dtype=np.uint64) \
            ^ np.uint64(0x2545F4914F6CDD1D)
    return out


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _utf8(v: str) -> bool:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_int64(labels: np.ndarray) -> np.ndarray | None:
    try:
        return np.asarray(labels.tolist(), dtype=np.int64)
    except OverflowError:  # beyond int64: each label by its own kind
        return None


def _hash_floats(labels: np.ndarray) -> np.ndarray:
    v = np.asarray(labels.tolist(), dtype=np.float64) + 0.0  # -0.0 + 0.0 is 0.0: one label
    return _k.hash_ints(v.view(np.int64)) ^ np.uint64(0x6A09E667F3BCC909)


def _hash_text(labels: np.ndarray) -> np.ndarray:
    import pyarrow as pa

    arr = pa.array(labels.tolist(), type=pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return _k.hash_strings(offsets, raw) ^ np.uint64(0x5851F42D4C957F2D)


@dataclass
class _Summary:
    """Per-arm summaries with what a report needs beyond them (the per-day table, row counts,
    notes and the bootstrap's sums) but no per-unit rows: what :func:`bta.dask.ab_report`
    merges from partitions. :func:`~bta.evaluate.ab_report` reads it as it reads a log
    (``units.x`` is empty; ``units.boot_sums`` stands in for it in the bootstrap)."""

    stats: dict[Any, ArmStats]
    units: _Units


def _first_ids(ids: Sequence[Any], k: int = 5) -> tuple:
    """The ``k`` smallest ids (by type name, then value): the same examples however the log is
    split (:func:`bta.dask.ab_report` merges the partitions' examples with this too)."""
    return tuple(sorted(ids, key=lambda v: (type(v).__name__, v))[:k])


def _no_user_note(n_rows: int) -> str:
    return f"{n_rows} rows without a user id were excluded (no randomization unit)"


def _multi_note(n_users: int, n_rows: int, sample: Sequence[Any], excluded: bool) -> str:
    shown = ", ".join(repr(v) for v in list(sample)[:5])
    if excluded:
        return (f"{n_users} users seen in more than one arm were excluded ({n_rows} rows; "
                f"e.g. {shown})")
    return (f"{n_users} users seen in more than one arm were kept: each of their (user, arm) "
            f"pairs counts as a unit (e.g. {shown})")


_INDICATOR_OF = {"clicked": "clicks", "converted": "conversions"}


def _dense_unique(key: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True)`` for keys in ``0 .. size - 1``.

    A presence table is O(n + size) where sorting is O(n log n): 5x faster on 10M keys. Used
    when the table is at most a few times the input (else it would cost more memory than the
    sort).
    """
    if size > max(4 * key.size, 1 << 20):
        uniq, inv = np.unique(key, return_inverse=True)
        return uniq, inv.reshape(-1)
    present = np.zeros(size, dtype=bool)
    present[key] = True
    uniq = np.flatnonzero(present)
    rank = np.cumsum(present, dtype=np.int64) - 1
    return uniq, rank[key]


def _unit_matrix(base: Mapping[str, np.ndarray], cov: Mapping[str, np.ndarray],
                 names: Sequence[str]) -> np.ndarray:
    cols = [(base[_INDICATOR_OF[nm]] > 0).astype(np.float64) if nm in _INDICATOR_OF
            else base[nm] if nm in base else cov[nm] for nm in names]
    return np.stack(cols, axis=1)


def _prepare(log: Any, outcomes: Any, columns: Mapping[str, Any] | None, cost: Any,
             cuped: Any, exclude_multi_arm_users: bool, daily: bool) -> _Units:
    cols, explicit = _resolve(columns)
    src = _Source(log, "log")
    for role in ("arm", "user"):
        if cols[role] not in src.names:
            raise SchemaError(f"log is missing column {cols[role]!r} (the {role} column; name "
                              f"yours with columns={{{role!r}: ...}})")
    out_src = _Source(outcomes, "outcomes") if outcomes is not None else None
    notes: list[str] = []

    # ---- which role comes from where
    where: dict[str, str] = {}
    for role in ("impressions",) + _OUTCOME_ROLES:
        name = cols[role]
        in_log = name in src.names
        in_out = out_src is not None and name in out_src.names
        if in_log and in_out:
            raise SchemaError(f"column {name!r} ({role}) is in both log and outcomes; keep it "
                              f"in one")
        if in_log or in_out:
            where[role] = "log" if in_log else "outcomes"
        elif role in explicit:
            raise SchemaError(f"log is missing column {name!r} (the {role} column named in "
                              f"columns)")
        elif role != "impressions":
            notes.append(f"{role} not measured: no column {name!r} in the log"
                         + (" or outcomes" if out_src is not None else ""))
    if isinstance(cost, str):
        if cost not in src.names:
            raise SchemaError(f"log is missing column {cost!r} (the price per 1,000 "
                              f"impressions named by cost)")
        where["price"] = "log"
        price_name = cost
    elif cost is None:
        price_name = cols["price"]
        for role in ("cost", "price"):
            if role in explicit and cols[role] not in src.names:
                raise SchemaError(f"log is missing column {cols[role]!r} (the {role} column "
                                  f"named in columns)")
        if cols["cost"] in src.names:
            where["cost"] = "log"
        elif cols["price"] in src.names:
            where["price"] = "log"
        else:
            notes.append(f"spend not measured: no column {cols['cost']!r} or "
                         f"{cols['price']!r} in the log and no cost= given")
    elif not isinstance(cost, CostModel):
        raise ConfigError(f"cost must be None, a column name or a CostModel, got "
                          f"{type(cost).__name__}")
    ts_name = cols["ts"]
    if "ts" in explicit and ts_name not in src.names:
        raise SchemaError(f"log is missing column {ts_name!r} (the ts column named in columns)")
    use_ts = daily and ts_name in src.names
    cuped_cols: list[str] = []
    if isinstance(cuped, str):
        cuped_cols = [cuped]
    elif isinstance(cuped, Sequence) and not isinstance(cuped, (str, bytes)) and all(
            isinstance(c, str) for c in cuped):
        cuped_cols = list(cuped)
    for c in cuped_cols:
        if c not in src.names:
            raise SchemaError(f"log is missing column {c!r} (the covariate named by cuped)")

    need = [cols["arm"], cols["user"]] + [cols[r] for r, w in where.items()
                                          if w == "log" and r != "price"]
    if where.get("price") == "log":
        need.append(price_name)
    if out_src is not None:
        if cols["request_id"] not in src.names:
            raise SchemaError(f"log is missing column {cols['request_id']!r} (the request_id "
                              f"column, needed to join outcomes)")
        need.append(cols["request_id"])
    if use_ts:
        need.append(ts_name)
    data = src.load(need + cuped_cols)
    arm_code, arm_labels = _codes(data[cols["arm"]], cols["arm"], "log")
    # the Engine logs requests without a usable user id with a null id: no unit, left out
    user_code, user_labels = _codes(data[cols["user"]], cols["user"], "log", allow_null=True)
    no_user = user_code < 0
    n_no_user = int(no_user.sum())
    if n_no_user:
        notes.append(_no_user_note(n_no_user))
    n_rows = arm_code.size

    # ---- per-row base values
    rows: dict[str, np.ndarray] = {}
    for role in ("impressions",) + _OUTCOME_ROLES:
        kind = "real" if role == "revenue" else "count"
        if where.get(role) == "log":
            rows[role] = _numbers(data[cols[role]], cols[role], "log", kind)
    if out_src is not None:
        rows.update(_join_outcomes(data[cols["request_id"]], cols, out_src,
                                   [r for r in _OUTCOME_ROLES if where.get(r) == "outcomes"],
                                   notes))
    if "impressions" not in rows:
        rows["impressions"] = np.ones(n_rows)
    if isinstance(cost, CostModel):
        rows["spend"] = cost.spend(rows["impressions"], rows.get("clicks"),
                                   rows.get("conversions"))
    elif where.get("cost") == "log":
        rows["spend"] = _numbers(data[cols["cost"]], cols["cost"], "log", "nonneg")
    elif where.get("price") == "log":
        price = _numbers(data[price_name], price_name, "log", "nonneg")
        rows["spend"] = price * rows["impressions"] / 1000.0

    # ---- units: users, or (user, arm) pairs when users in several arms are kept
    n_users, n_arms = user_labels.size, arm_labels.size
    amin = np.full(n_users, n_arms, dtype=np.int64)
    amax = np.zeros(n_users, dtype=np.int64)
    has_user = ~no_user
    np.minimum.at(amin, user_code[has_user], arm_code[has_user])
    np.maximum.at(amax, user_code[has_user], arm_code[has_user])
    multi = amin != amax
    n_multi = int(multi.sum())
    keep = has_user if n_no_user else None
    multi_rows, sample = 0, ()
    if n_multi:
        sample = _first_ids(user_labels[multi].tolist())
        if exclude_multi_arm_users:
            in_multi = has_user & multi[np.maximum(user_code, 0)]
            keep = has_user & ~in_multi
            multi_rows = int(in_multi.sum())
        notes.append(_multi_note(n_multi, multi_rows, sample, exclude_multi_arm_users))
    if keep is not None:
        arm_code, user_code = arm_code[keep], user_code[keep]
        rows = {k: v[keep] for k, v in rows.items()}
    # arms in a stable, readable order (sorted labels), wherever their first row was
    order = sorted(range(n_arms), key=lambda i: (str(type(arm_labels[i])), str(arm_labels[i])))
    rank = np.empty(n_arms, dtype=np.int64)
    rank[order] = np.arange(n_arms)
    arm_code = rank[arm_code]
    arms = [arm_labels[i].item() if isinstance(arm_labels[i], np.generic) else arm_labels[i]
            for i in order]
    # units sorted by (arm, user): each arm is one slice
    sort_key = arm_code * n_users + user_code
    uniq, unit = _dense_unique(sort_key, n_arms * n_users)
    unit_arm = uniq // n_users
    unit_user = uniq % n_users
    n_units = uniq.size
    base = {k: np.bincount(unit, weights=v, minlength=n_units) for k, v in rows.items()}
    names = tuple(nm for nm in BASE_METRICS if nm in base or (
        nm == "clicked" and "clicks" in base) or (nm == "converted" and "conversions" in base))
    covs = _covariates(cuped, cuped_cols, data, keep, unit, n_units, unit_user, user_labels,
                       cols)
    names = names + tuple(covs)
    x = _unit_matrix(base, covs, names)
    offsets = np.searchsorted(unit_arm, np.arange(n_arms + 1))
    units = _Units(arms, names, np.ascontiguousarray(x), offsets, n_multi, notes, n_rows,
                   int(arm_code.size), no_user_rows=n_no_user, multi_rows=multi_rows,
                   multi_sample=sample, key_parts=(user_labels, unit_user, unit_arm))
    if use_ts:
        ms = _times_ms(data[ts_name], ts_name)
        if keep is not None:
            ms = ms[keep]
        units.daily = _daily(ms // _DAY_MS, unit, unit_arm, n_arms, rows, covs, names)
    return units


def _join_outcomes(request_ids: pd.Series, cols: dict[str, str], out_src: _Source,
                   roles: list[str], notes: list[str]) -> dict[str, np.ndarray]:
    rid = cols["request_id"]
    if rid not in out_src.names:
        raise SchemaError(f"outcomes is missing column {rid!r} (the request_id column)")
    data = out_src.load([rid] + [cols[r] for r in roles])
    index = pd.Index(request_ids)
    if index.hasnans:
        raise SchemaError(f"log column {rid!r} must not be null to join outcomes; "
                          f"{int(index.isna().sum())} rows are")
    if not index.is_unique:
        dup = index[index.duplicated()]
        raise SchemaError(f"log column {rid!r} must be unique to join outcomes; "
                          f"{dup.size} rows repeat an id (first: {dup[0]!r})")
    out_ids = data[rid]
    if out_ids.isna().any():
        raise SchemaError(f"outcomes column {rid!r} must not be null; {int(out_ids.isna().sum())}"
                          f" rows are")
    pos = index.get_indexer(pd.Index(out_ids))
    matched = pos >= 0
    if not matched.all():
        k = int((~matched).sum())
        msg = (f"{k} outcome rows match no decision in the log by {rid!r} and were dropped "
               f"(e.g. {out_ids[~matched].iloc[0]!r})")
        notes.append(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
    out = {}
    for r in roles:
        v = _numbers(data[cols[r]], cols[r], "outcomes", "real" if r == "revenue" else "count")
        out[r] = np.bincount(pos[matched], weights=v[matched], minlength=index.size)
    return out


def _covariates(cuped: Any, cuped_cols: list[str], data: dict[str, pd.Series],
                keep: np.ndarray | None, unit: np.ndarray, n_units: int, unit_user: np.ndarray,
                user_labels: np.ndarray, cols: dict[str, str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if cuped is None:
        return out
    if cuped is True:
        raise ConfigError("cuped=True is for summary statistics that already hold covariates; "
                          "with a log, name the covariate column(s) or pass a frame")
    if cuped_cols:
        for c in cuped_cols:
            v = _numbers(data[c], c, "log", "real")
            if keep is not None:
                v = v[keep]
            lo = np.full(n_units, np.inf)
            hi = np.full(n_units, -np.inf)
            np.minimum.at(lo, unit, v)
            np.maximum.at(hi, unit, v)
            if (lo != hi).any():
                raise SchemaError(f"cuped column {c!r} must be constant per user (a pre-period "
                                  f"value); {int((lo != hi).sum())} users have several values")
            out[f"pre:{c}"] = lo
        return out
    src = _Source(cuped, "cuped")
    uname = cols["user"]
    if uname not in src.names:
        raise SchemaError(f"cuped is missing column {uname!r} (the user column)")
    others = [c for c in src.names if c != uname]
    if not others:
        raise SchemaError(f"cuped must have at least one covariate column besides {uname!r}")
    data_c = src.load([uname] + others)
    ids = pd.Index(data_c[uname])
    if not ids.is_unique:
        raise SchemaError(f"cuped column {uname!r} must be unique (one row per user); "
                          f"{int(ids.duplicated().sum())} rows repeat a user")
    # users absent from the frame had no pre-period activity: covariate 0
    pos = ids.get_indexer(pd.Index(user_labels))[unit_user]
    for c in others:
        v = _numbers(data_c[c], c, "cuped", "real")
        out[f"pre:{c}"] = np.where(pos >= 0, v[np.maximum(pos, 0)], 0.0)
    return out


# ----------------------------------------------------------------------------- per day


def _daily(day: np.ndarray, unit: np.ndarray, unit_arm: np.ndarray, n_arms: int,
           rows: dict[str, np.ndarray], covs: dict[str, np.ndarray], names: tuple[str, ...]
           ) -> tuple[np.ndarray, Moments, Moments]:
    """Per (arm, day) summaries: of that day's activity, and cumulative up to that day.

    The cumulative summary of day d equals the summary of all rows up to the end of day d:
    each unit's running totals change on the days it is active, and each such change
    replaces the unit's old contribution (outer product) by the new one.
    """
    first_day = int(day.min()) if day.size else 0
    days, day_idx = _dense_unique(day - first_day, int(day.max()) - first_day + 1
                                  if day.size else 0)
    days = days + first_day
    n_days = days.size
    key = unit.astype(np.int64) * n_days + day_idx
    ud, inv = _dense_unique(key, unit_arm.size * n_days)
    ud_unit, ud_day = ud // n_days, ud % n_days
    base = list(rows)
    vals = np.empty((len(base), ud.size))
    for i, b in enumerate(base):
        vals[i] = np.bincount(inv, weights=rows[b], minlength=ud.size)
    cov_names = list(covs)
    cov = (np.stack([covs[c] for c in cov_names], axis=1) if cov_names
           else np.zeros((unit_arm.size, 0)))
    kind = np.array([_k.COVARIATE if nm in covs else _k.INDICATOR if nm in _INDICATOR_OF
                     else _k.BASE for nm in names], dtype=np.int64)
    src = np.array([cov_names.index(nm) if nm in covs else base.index(_INDICATOR_OF.get(nm, nm))
                    for nm in names], dtype=np.int64)
    n_groups = n_arms * n_days
    group = unit_arm[ud_unit] * n_days + ud_day
    out = _k.daily_moments(vals, ud_unit, group, kind, src, np.ascontiguousarray(cov), n_groups)
    per_day, inc = out[:3], out[3:]
    shape = (n_arms, n_days)
    day_m = Moments(per_day[0].reshape(shape), per_day[1].reshape(shape + (len(names),)),
                    per_day[2].reshape(shape + (len(names),) * 2), names)
    cum_m = Moments(np.cumsum(inc[0].reshape(shape), axis=1),
                    np.cumsum(inc[1].reshape(shape + (len(names),)), axis=1),
                    np.cumsum(inc[2].reshape(shape + (len(names),) * 2), axis=1), names)
    return days, day_m, cum_m


def _arm_stats(u: _Units) -> dict[Any, ArmStats]:
    return {a: ArmStats.from_units(u.x[u.offsets[i]:u.offsets[i + 1]], u.names)
            for i, a in enumerate(u.arms)}

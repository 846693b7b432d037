"""Value segments from conversions: RFM scores and segments, Pareto value tiers, CRM indicators.

A *customer* is a user with at least one ``conversion`` event; the *value* of a conversion is its
``value`` (revenue). Other events (views, clicks) never make anyone a customer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bta._params import InstanceOf, Predicate, validate_args
from bta.errors import ConfigError, SchemaError, UnknownNameError
from bta.events import EventLog, to_epoch_ms
from bta.features.matrix import FeatureMatrix
from bta.segment.book import Segment

__all__ = [
    "RFM_SEGMENT_RULES",
    "TIERS",
    "rfm_table",
    "rfm_segments",
    "pareto_tiers",
    "pareto_segments",
    "CrmIndicators",
    "crm_indicators",
]

_DAY_MS = 86_400_000

#: Value tiers from best to worst; ``"none"`` is for users without a conversion.
TIERS = ("top", "middle", "low", "none")

_Range = tuple[int, int]

#: RFM segments: ``(name, rule, R range, F range, M range)``, ranges inclusive. A customer joins
#: the first segment whose ranges hold its scores, so every customer is in exactly one;
#: ``"promising"`` takes every customer the others leave. Users without a conversion (scores 0)
#: form ``"prospects"``.
RFM_SEGMENT_RULES: tuple[tuple[str, str, _Range, _Range, _Range], ...] = (
    ("champions", "R >= 4 and F >= 4 and M >= 4", (4, 5), (4, 5), (4, 5)),
    ("loyal", "R >= 3 and F >= 4", (3, 5), (4, 5), (1, 5)),
    ("new", "R >= 4 and F <= 2", (4, 5), (1, 2), (1, 5)),
    ("at_risk", "R <= 2 and F >= 3", (1, 2), (3, 5), (1, 5)),
    ("lost", "R <= 2 and F <= 2", (1, 2), (1, 2), (1, 5)),
    ("promising", "any other customer", (1, 5), (1, 5), (1, 5)),
)
_PROSPECTS_RULE = "no conversion at or before as_of (R = F = M = 0)"


# ---------------------------------------------------------------------------- RFM


def _is_shares(shares: Any) -> bool:
    return (isinstance(shares, (tuple, list)) and len(shares) == 2
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in shares)
            and 0 < shares[0] < shares[1] <= 1)


_PARAMS: dict[str, list[Any]] = {
    "data": [InstanceOf(EventLog, FeatureMatrix, show_type=True)],
    "log": [InstanceOf(EventLog, show_type=True)],
    "exclude_flagged": ["boolean"],
    "prefix": [InstanceOf(str, desc="a string")],
    "shares": [Predicate(_is_shares, "a pair (top, middle) with 0 < top < middle <= 1")],
}


def rfm_table(data: EventLog | FeatureMatrix, as_of: Any = None, *,
              exclude_flagged: bool = True) -> pd.DataFrame:
    """Recency, frequency and monetary value of every user, scored 1-5 by quintiles.

    Parameters
    ----------
    data : EventLog or FeatureMatrix
        A FeatureMatrix must hold the ``rfm:*`` features (``FeatureSpec(user_features=True)``).
        From an EventLog the rows are the users with an event at or before ``as_of`` (as in
        :func:`~bta.features.build_features`), all categories counted.
    as_of : datetime-like, optional
        Only conversions at or before it count. Default: the last event of the log, or the
        FeatureMatrix's own ``as_of`` (another value is an error for a FeatureMatrix).
    exclude_flagged : bool, default True
        EventLog only: leave out users the log flagged as bots.

    Returns
    -------
    pandas.DataFrame of shape (n_users, 8)
        Indexed by ``user_id``: ``recency_days`` (days since the last conversion, NaN without
        one), ``frequency`` (conversions, int64), ``monetary`` (their total value), ``R``,
        ``F``, ``M`` (int8 scores, 1-5 for customers, 0 for users without a conversion),
        ``rfm`` (the three scores as text, e.g. ``"545"``; ``"000"`` without a conversion),
        ``customer`` (bool).

    Raises
    ------
    ConfigError
        If ``data`` is neither, or ``as_of`` contradicts a FeatureMatrix.
    UnknownNameError
        If a FeatureMatrix lacks the ``rfm:*`` features.

    Notes
    -----
    Scores are computed among customers only, so users without a conversion never shift the
    quintiles (they get 0, outside the scale). For a customer whose value ``v`` (the time of
    the last conversion for R, so that recent = 5; the count for F; the total for M) has
    ``p`` customers with a strictly smaller value among ``n`` customers:

    .. math:: \\mathrm{score} = \\max\\bigl(1, \\lceil 5 p / (n - 1) \\rceil\\bigr)

    which is the ``pandas.qcut(values.rank(method="first"), 5)`` quintile of the *first* of
    the customers tied at ``v``: tied customers share the lowest score of their run (rank
    method ``"min"``), so equal behaviour gets an equal score and 80% of customers with one
    conversion all get ``F = 1``. A single customer, or customers all tied, score 1.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "event": ["conversion"] * 3 +
    ...                    ["page_view"], "value": [10.0, 5.0, 40.0, 0.0],
    ...                    "ts": pd.to_datetime(["2026-01-01", "2026-01-09", "2026-01-05",
    ...                                          "2026-01-10"])})
    >>> rfm_table(EventLog.from_pandas(df), as_of="2026-01-10")[["frequency", "R", "F", "M"]]
             frequency  R  F  M
    user_id
    a                2  5  5  1
    b                1  1  1  5
    c                0  0  0  0
    """
    users, recency, freq, monetary = _rfm_inputs(data, as_of, exclude_flagged)
    cust = freq > 0
    scores = {}
    # -recency orders like the last conversion time: more recent is larger, scores higher
    for name, v in (("R", -recency), ("F", freq.astype(np.float64)), ("M", monetary)):
        s = np.zeros(users.shape[0], dtype=np.int8)
        s[cust] = _quintile_scores(v[cust])
        scores[name] = s
    rfm = pd.Series(scores["R"]).astype(str) + pd.Series(scores["F"]).astype(str) + pd.Series(
        scores["M"]).astype(str)
    return pd.DataFrame({
        "recency_days": np.where(cust, recency, np.nan), "frequency": freq, "monetary": monetary,
        "R": scores["R"], "F": scores["F"], "M": scores["M"], "rfm": rfm.to_numpy(),
        "customer": cust,
    }, index=pd.Index(users, name="user_id"))


def _quintile_scores(v: np.ndarray) -> np.ndarray:
    """1-5 scores of ``v`` (customers only); see :func:`rfm_table` Notes."""
    n = v.shape[0]
    if n <= 1:
        return np.ones(n, dtype=np.int8)
    below = np.searchsorted(np.sort(v, kind="mergesort"), v, side="left").astype(np.int64)
    # integer ceil(5p / (n - 1)): exact for any n, no float rounding at the bin edges
    return np.maximum(1, (5 * below + n - 2) // (n - 1)).astype(np.int8)


def _rfm_inputs(data: Any, as_of: Any, exclude_flagged: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """users, recency_days (NaN: none), frequency (int64) and monetary of ``data``."""
    validate_args(_PARAMS, "rfm_table", exclude_flagged=exclude_flagged, data=data)
    if isinstance(data, FeatureMatrix):
        if as_of is not None and to_epoch_ms(as_of, "as_of") != data.as_of.value // 1_000_000:
            raise ConfigError(f"as_of must be None or the FeatureMatrix's as_of "
                              f"({data.as_of}) when data is a FeatureMatrix, got {as_of!r}")
        try:
            cols = [data.column(n) for n in ("rfm:recency_days", "rfm:frequency",
                                             "rfm:monetary")]
        except UnknownNameError as exc:
            raise UnknownNameError(f"{exc}; RFM needs the rfm:* features: build the "
                                   "FeatureMatrix with FeatureSpec(user_features=True)") from None
        freq = np.rint(cols[1]).astype(np.int64)
        return np.asarray(data.users), cols[0], freq, np.asarray(cols[2], dtype=np.float64)
    if as_of is None:
        t = int(data.ts.max()) if data.n_rows else 0
    else:
        t = to_epoch_ms(as_of, "as_of")
    seen = data.ts <= t
    if exclude_flagged:
        seen &= ~data.flagged[data.user]
    conv = seen & (data.event == data.event_code("conversion"))
    n = data.n_users
    freq = np.bincount(data.user[conv], minlength=n).astype(np.int64)
    monetary = np.bincount(data.user[conv], weights=data.value[conv], minlength=n)
    last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, data.user[conv], data.ts[conv])
    recency = np.where(freq > 0, (t - last) / _DAY_MS, np.nan)
    rows = np.bincount(data.user[seen], minlength=n) > 0
    return data.users[rows], recency[rows], freq[rows], monetary[rows]


def _rfm_of(data: Any, as_of: Any, exclude_flagged: bool) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        missing = [c for c in ("R", "F", "M", "frequency", "monetary") if c not in data.columns]
        if missing:
            raise SchemaError(f"data must be an rfm_table (columns R, F, M, frequency, "
                              f"monetary), an EventLog or a FeatureMatrix; the DataFrame lacks "
                              f"{missing}")
        return data
    return rfm_table(data, as_of, exclude_flagged=exclude_flagged)


def rfm_segments(data: Any, as_of: Any = None, *, prefix: str = "rfm:",
                 exclude_flagged: bool = True) -> list[Segment]:
    """One value segment per RFM rule, plus ``prospects``, over the users of ``data``.

    Parameters
    ----------
    data : EventLog, FeatureMatrix or DataFrame
        Anything :func:`rfm_table` takes, or its result.
    as_of : datetime-like, optional
        As :func:`rfm_table` (ignored for a DataFrame).
    prefix : str, default "rfm:"
        Prepended to the segment names (``"rfm:champions"``).

    Returns
    -------
    list of Segment
        ``kind="value"``, members aligned with the rows of ``rfm_table(data)``, in the order
        of :data:`RFM_SEGMENT_RULES` then ``prospects``; together they partition the users.

    Notes
    -----
    First match wins, in this order (scores from :func:`rfm_table`):

    =========== ===============================
    champions   R >= 4 and F >= 4 and M >= 4
    loyal       R >= 3 and F >= 4
    new         R >= 4 and F <= 2
    at_risk     R <= 2 and F >= 3
    lost        R <= 2 and F <= 2
    promising   any other customer
    prospects   no conversion (R = F = M = 0)
    =========== ===============================
    """
    validate_args(_PARAMS, "rfm_segments", prefix=prefix)
    table = _rfm_of(data, as_of, exclude_flagged)
    r, f, m = (table[c].to_numpy() for c in ("R", "F", "M"))
    left = table["frequency"].to_numpy() > 0
    stamp = _as_of_text(data, as_of)
    out = []
    for priority, (name, rule, rr, fr, mr) in enumerate(RFM_SEGMENT_RULES):
        hit = (left & (rr[0] <= r) & (r <= rr[1]) & (fr[0] <= f) & (f <= fr[1])
               & (mr[0] <= m) & (m <= mr[1]))
        left &= ~hit
        out.append(Segment(prefix + name, "value", {"scheme": "rfm", "rule": rule,
                                                    "priority": priority, "as_of": stamp}, hit))
    prospects = table["frequency"].to_numpy() == 0
    out.append(Segment(prefix + "prospects", "value",
                       {"scheme": "rfm", "rule": _PROSPECTS_RULE,
                        "priority": len(RFM_SEGMENT_RULES), "as_of": stamp}, prospects))
    return out


def _as_of_text(data: Any, as_of: Any) -> str | None:
    if isinstance(data, FeatureMatrix):
        return data.as_of.isoformat()
    if as_of is not None:
        return _utc(to_epoch_ms(as_of, "as_of")).isoformat()
    if isinstance(data, EventLog) and data.n_rows:
        return _utc(int(data.ts.max())).isoformat()
    return None


def _utc(ms: int) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC")


# ---------------------------------------------------------------------------- Pareto tiers


def _check_shares(shares: Any) -> tuple[float, float]:
    validate_args(_PARAMS, "pareto_tiers", shares=shares)
    return float(shares[0]), float(shares[1])


def _tiers(values: np.ndarray, customer: np.ndarray, shares: tuple[float, float]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Tier codes (0 top, 1 middle, 2 low, 3 none) and the value share above each user."""
    total = float(values[customer].sum())
    v = values[customer]
    sorted_v = np.sort(v)
    # value of the customers strictly richer than each: total minus the cumulative sum up to
    # and including the last customer tied with it
    cum = np.concatenate([[0.0], np.cumsum(sorted_v)])
    upto = np.searchsorted(sorted_v, v, side="right")
    above = np.maximum(total - cum[upto], 0.0)  # cancellation can leave -1e-12
    share = np.full(values.shape[0], np.nan)
    code = np.full(values.shape[0], 3, dtype=np.int8)
    if total > 0:
        share[customer] = above / total
        code[customer] = np.where(share[customer] < shares[0], 0,
                                  np.where(share[customer] < shares[1], 1, 2))
    else:
        code[customer] = 2
    return code, share


def pareto_tiers(data: Any, as_of: Any = None, *, shares: tuple[float, float] = (0.8, 0.95),
                 exclude_flagged: bool = True) -> pd.DataFrame:
    """Value tiers: the few customers who bring most of the value, the middle and the rest.

    Parameters
    ----------
    data : EventLog, FeatureMatrix or DataFrame
        Anything :func:`rfm_table` takes, or its result (``monetary`` is the value).
    as_of : datetime-like, optional
        As :func:`rfm_table`.
    shares : (float, float), default (0.8, 0.95)
        Cumulative value shares closing the ``top`` and ``middle`` tiers.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``user_id``: ``monetary``, ``share_above`` (share of all value brought by
        strictly more valuable customers; NaN for non-customers) and ``tier`` (categorical
        over :data:`TIERS`).

    Notes
    -----
    With ``V`` the total value of all customers and ``A(v)`` the value of the customers worth
    strictly more than ``v``, a customer worth ``v`` is

    - ``top`` if ``A(v) / V < shares[0]``: the customers who, from the most valuable down,
      make up 80% of the value, including the one who crosses 80%;
    - ``middle`` if ``shares[0] <= A(v) / V < shares[1]``;
    - ``low`` otherwise (customers with zero value included);

    and users without a conversion are ``none``. Tied customers have the same ``A(v)`` and so
    always share a tier. When ``V = 0`` every customer is ``low``.
    """
    top, mid = _check_shares(shares)
    table = _rfm_of(data, as_of, exclude_flagged)
    values = table["monetary"].to_numpy(dtype=np.float64)
    code, share = _tiers(values, table["frequency"].to_numpy() > 0, (top, mid))
    return pd.DataFrame({
        "monetary": values, "share_above": share,
        "tier": pd.Categorical.from_codes(code, categories=list(TIERS)),
    }, index=table.index)


def pareto_segments(data: Any, as_of: Any = None, *, shares: tuple[float, float] = (0.8, 0.95),
                    prefix: str = "value:", exclude_flagged: bool = True) -> list[Segment]:
    """Segments ``{prefix}top``, ``{prefix}middle``, ``{prefix}low`` of :func:`pareto_tiers`.

    Members are aligned with the rows of :func:`rfm_table` of ``data``; ``kind="value"``.
    """
    validate_args(_PARAMS, "pareto_segments", prefix=prefix)
    tiers = pareto_tiers(data, as_of, shares=shares, exclude_flagged=exclude_flagged)
    stamp = _as_of_text(data, as_of)
    top, mid = _check_shares(shares)
    rules = {"top": f"share of value above < {top}",
             "middle": f"{top} <= share of value above < {mid}",
             "low": f"customer with share of value above >= {mid}"}
    t = tiers["tier"].to_numpy()
    return [Segment(prefix + name, "value", {"scheme": "pareto", "rule": rule,
                                             "shares": [top, mid], "as_of": stamp},
                    np.asarray(t == name, dtype=bool))
            for name, rule in rules.items()]


# ---------------------------------------------------------------------------- CRM indicators


@dataclass(frozen=True, eq=False)
class CrmIndicators:
    """Customer counts and value of one period against the previous period of equal length.

    Attributes
    ----------
    start, end : pandas.Timestamp
        The period ``[start, end)``.
    previous_start : pandas.Timestamp
        The previous period is ``[previous_start, start)``, with ``start - previous_start =
        end - start``.
    n_customers, n_previous_customers : int
        Users with a conversion in the period / in the previous period.
    n_new : int
        Customers of the period with no conversion before ``start`` (first conversion ever,
        as far as the log goes back).
    n_retained : int
        Customers of both periods.
    n_reactivated : int
        Customers of the period, not of the previous one, with a conversion before
        ``previous_start``. ``n_customers = n_new + n_retained + n_reactivated``.
    n_churned : int
        Customers of the previous period with no conversion in the period.
    n_upgraded, n_downgraded : int
        Retained customers whose Pareto tier (:func:`pareto_tiers` over each period's own
        customers and values) went up (``low -> middle -> top``) or down.
    revenue, previous_revenue : float
        Total conversion value in each period.
    avg_value_per_customer, previous_avg_value_per_customer : float
        ``revenue / n_customers``; NaN when there is no customer.
    churn_rate : float
        ``n_churned / n_previous_customers``; NaN when the previous period had no customer.
    table : pandas.DataFrame
        One row per customer of either period, indexed by ``user_id``: ``status`` (one of
        ``new``, ``retained``, ``reactivated``, ``churned``), ``value_previous``,
        ``value_current``, ``tier_previous``, ``tier_current`` (``none`` outside the period).
    """

    start: pd.Timestamp
    end: pd.Timestamp
    previous_start: pd.Timestamp
    n_customers: int
    n_previous_customers: int
    n_new: int
    n_retained: int
    n_reactivated: int
    n_churned: int
    n_upgraded: int
    n_downgraded: int
    revenue: float
    previous_revenue: float
    avg_value_per_customer: float
    previous_avg_value_per_customer: float
    churn_rate: float
    table: pd.DataFrame = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The indicators (not the table) as a flat dict."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "table"}


_STATUS = ("new", "retained", "reactivated", "churned")


def crm_indicators(log: EventLog, start: Any, end: Any, *,
                   shares: tuple[float, float] = (0.8, 0.95),
                   exclude_flagged: bool = True) -> CrmIndicators:
    """New, retained, reactivated, churned and upgraded customers of ``[start, end)``.

    Parameters
    ----------
    log : EventLog
    start, end : datetime-like
        The period ``[start, end)``; the previous period is ``[2 start - end, start)``.
    shares : (float, float), default (0.8, 0.95)
        Pareto tier cuts (see :func:`pareto_tiers`) for upgrades and downgrades.
    exclude_flagged : bool, default True
        Leave out users the log flagged as bots.

    Returns
    -------
    CrmIndicators

    Raises
    ------
    ConfigError
        If ``log`` is not an EventLog or ``start >= end``.

    Notes
    -----
    A user is a customer of a period when they have at least one ``conversion`` in it; see
    :class:`CrmIndicators` for each indicator's definition.
    """
    validate_args(_PARAMS, "crm_indicators", log=log)
    t0, t1 = to_epoch_ms(start, "start"), to_epoch_ms(end, "end")
    if t0 >= t1:
        raise ConfigError(f"end must be after start, got start={start!r}, end={end!r}")
    validate_args(_PARAMS, "crm_indicators", exclude_flagged=exclude_flagged)
    top, mid = _check_shares(shares)
    tp = t0 - (t1 - t0)
    conv = log.event == log.event_code("conversion")
    if exclude_flagged:
        conv &= ~log.flagged[log.user]
    n = log.n_users

    def per_user(lo: int | None, hi: int) -> tuple[np.ndarray, np.ndarray]:
        m = conv & (log.ts < hi) if lo is None else conv & (log.ts >= lo) & (log.ts < hi)
        return (np.bincount(log.user[m], minlength=n) > 0,
                np.bincount(log.user[m], weights=log.value[m], minlength=n))

    cur, v_cur = per_user(t0, t1)
    prev, v_prev = per_user(tp, t0)
    before_prev, _ = per_user(None, tp)
    before = before_prev | prev
    tier_cur, _ = _tiers(v_cur, cur, (top, mid))
    tier_prev, _ = _tiers(v_prev, prev, (top, mid))
    new = cur & ~before
    retained = cur & prev
    reactivated = cur & ~prev & before_prev
    churned = prev & ~cur
    n_cur, n_prev = int(cur.sum()), int(prev.sum())
    revenue, previous_revenue = float(v_cur[cur].sum()), float(v_prev[prev].sum())

    rows = np.flatnonzero(cur | prev)
    status = np.select([new[rows], retained[rows], reactivated[rows]], [0, 1, 2], 3)
    table = pd.DataFrame({
        "status": pd.Categorical.from_codes(status, categories=list(_STATUS)),
        "value_previous": v_prev[rows], "value_current": v_cur[rows],
        "tier_previous": pd.Categorical.from_codes(tier_prev[rows], categories=list(TIERS)),
        "tier_current": pd.Categorical.from_codes(tier_cur[rows], categories=list(TIERS)),
    }, index=pd.Index(log.users[rows], name="user_id"))
    return CrmIndicators(
        start=_utc(t0), end=_utc(t1), previous_start=_utc(tp), n_customers=n_cur,
        n_previous_customers=n_prev, n_new=int(new.sum()), n_retained=int(retained.sum()),
        n_reactivated=int(reactivated.sum()), n_churned=int(churned.sum()),
        # lower code = better tier
        n_upgraded=int((retained & (tier_cur < tier_prev)).sum()),
        n_downgraded=int((retained & (tier_cur > tier_prev)).sum()),
        revenue=revenue, previous_revenue=previous_revenue,
        avg_value_per_customer=revenue / n_cur if n_cur else float("nan"),
        previous_avg_value_per_customer=(previous_revenue / n_prev if n_prev
                                         else float("nan")),
        churn_rate=int(churned.sum()) / n_prev if n_prev else float("nan"), table=table)

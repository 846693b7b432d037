"""Slow, obviously correct references for bta.events (one Python loop per row or user)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bta.events import REASONS, STANDARD_EVENTS

MISSING = object()  # stands for any null in a duplicate key


def _is_null(x):
    return x is None or x is pd.NA or x is pd.NaT or (isinstance(x, float) and math.isnan(x))


def to_ms(t, unit="ms"):
    """One input time -> epoch ms, or None when null/unparseable."""
    if _is_null(t):
        return None
    if isinstance(t, (int, np.integer)):
        return int(t) * (1000 if unit == "s" else 1)
    if isinstance(t, (float, np.floating)):
        return None if not math.isfinite(t) else round(t * (1000 if unit == "s" else 1))
    try:
        stamp = pd.Timestamp(t)
    except (ValueError, TypeError):
        return None
    if stamp is pd.NaT:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp.value // 1_000_000


def ingest(rows, event_types=(), strict=True, lo=0, hi=None, unit="ms", dedupe="event_id",
           max_future_ms=86_400_000, now_ms=None):
    """Reasons and accepted rows, by the rules of the bta.events docstring.

    Parameters
    ----------
    rows : list of dict
        Keys among user_id, ts, event, category, value, session_id, item_id, event_id.
    lo, hi : int or None
        The time range in epoch ms (both None: no range, no epoch-zero check).
    max_future_ms, now_ms : int or None
        Rows later than ``now_ms + max_future_ms`` are future (None: no check; ``now_ms``
        defaults to the clock).

    Returns
    -------
    reasons : list of str or None
        Per input row; None = accepted.
    accepted : list of tuple
        ``(user_id, ts_ms, event, category or None, value (0.0 if null), input row)``,
        sorted by (user_id, ts_ms, input row).
    event_vocab : list of str
    """
    if now_ms is None:
        now_ms = pd.Timestamp.now(tz="UTC").value // 1_000_000
    known = list(STANDARD_EVENTS) + [e for e in event_types if e not in STANDARD_EVENTS]
    if not strict:
        seen = {r["event"] for r in rows if not _is_null(r.get("event"))}
        known += sorted(seen - set(known))
    ranged = lo is not None or hi is not None
    reasons, accepted, keys, event_ids = [], [], set(), set()
    for i, r in enumerate(rows):
        u, t, e = r["user_id"], to_ms(r["ts"], unit), r["event"]
        v = r.get("value")
        eid = r.get("event_id")
        if _is_null(u) or u == "":
            reasons.append("missing_user")
        elif t is None:
            reasons.append("bad_time")
        elif ranged and t == 0 and (lo is None or lo <= 0) and (hi is None or hi > 0):
            reasons.append("epoch_zero")
        elif (lo is not None and t < lo) or (hi is not None and t >= hi):
            reasons.append("time_out_of_range")
        elif max_future_ms is not None and t > now_ms + max_future_ms:
            reasons.append("future_time")
        elif _is_null(e) or e not in known:
            reasons.append("unknown_event")
        elif not _is_null(v) and (v < 0 or math.isinf(v)):
            reasons.append("bad_value")
        elif dedupe == "event_id" and not _is_null(eid) and eid != "" and eid in event_ids:
            reasons.append("duplicate_event_id")
        else:
            c = r.get("category")
            key = (u, t, e) + tuple(MISSING if _is_null(r.get(k)) else r.get(k) for k in (
                "category", "value", "session_id", "item_id")) + (
                MISSING if _is_null(eid) or eid == "" else eid,)  # an empty id is no id
            if dedupe == "exact" and key in keys:
                reasons.append("duplicate")
                continue
            keys.add(key)
            if not _is_null(eid) and eid != "":
                event_ids.add(eid)
            reasons.append(None)
            accepted.append((u, t, e, None if _is_null(c) else c,
                             0.0 if _is_null(v) else float(v), i))
    assert set(reasons) <= set(REASONS) | {None}
    accepted.sort(key=lambda a: (a[0], a[1], a[5]))
    return reasons, accepted, known


def sessions(user, ts, gap_ms, max_ms=0):
    """Session code per event of rows sorted by (user, ts)."""
    out, code = [], -1
    start = last = None
    prev_user = None
    for u, t in zip(user.tolist(), ts.tolist()):
        if (u != prev_user or t - last > gap_ms
                or (max_ms > 0 and t - start > max_ms)):
            code += 1
            start = t
        last, prev_user = t, u
        out.append(code)
    return np.array(out, dtype=np.int64)


def bot_flags(user_events, rate_z=6.0, min_events=50, min_scale=0.5, min_clicks=10,
              max_ctr=0.5):
    """Flags per user from ``{user: [(ts_ms, event_name), ...]}``, as BotRule documents."""
    users = sorted(user_events)
    log_rates, n_events, clicks, imps = [], [], [], []
    for u in users:
        evs = user_events[u]
        hours = {t // 3_600_000 for t, _ in evs}
        n_events.append(len(evs))
        log_rates.append(math.log(len(evs) / len(hours)))
        clicks.append(sum(e == "ad_click" for _, e in evs))
        imps.append(sum(e == "ad_impression" for _, e in evs))
    med = float(np.median(log_rates))
    scale = max(1.4826 * float(np.median([abs(x - med) for x in log_rates])), min_scale)
    any_imps = sum(imps) > 0
    flags = {}
    for u, lr, n, c, k in zip(users, log_rates, n_events, clicks, imps):
        high = (lr - med) / scale > rate_z and n >= min_events
        clicky = any_imps and c >= min_clicks and (k == 0 or c / k > max_ctr)
        flags[u] = (high, clicky)
    return flags

"""Slow, obviously correct reference implementations that the kernels are checked against.

Written straight from the documented definitions, one user and one event at a time, with no
shared code with bta's kernels (decay is summed directly, not incrementally).
"""

from __future__ import annotations

import math
from collections import defaultdict

import pandas as pd

DAY = 86_400_000


def naive_features(df: pd.DataFrame, spec, as_of: int) -> dict:
    """{(user_id, feature_name): value} for the entries a FeatureMatrix stores.

    ``df`` has columns user_id, ts (epoch ms int), event (str), category (value or None),
    value (float, 0 when none): the accepted events, any order.
    """
    windows = [(name, int(ms)) for name, ms in zip(spec.windows, spec.windows_ms)]
    bucket = spec.bucket_ms
    half = spec.half_life_ms
    deny = set(spec.deny_categories)
    allow = None if spec.categories is None else set(spec.categories)
    gap, mx = spec.session_gap_ms, spec.max_session_ms
    a, b = spec.ctr_prior
    out = {}
    for user, g in df.groupby("user_id", sort=False):
        rows = [r for r in g.itertuples(index=False)
                if r.ts <= as_of and not (_has_cat(r.category) and r.category in deny)]
        if not rows:
            continue
        rows.sort(key=lambda r: r.ts)
        cells = defaultdict(list)
        for r in rows:
            if r.event in spec.events and _has_cat(r.category) and (
                    allow is None or r.category in allow):
                cells[(r.event, r.category)].append(r.ts)
        for (e, c), times in cells.items():
            for wname, wms in windows:
                if bucket:
                    n = sum(1 for t in times if as_of // bucket - t // bucket < wms // bucket)
                else:
                    n = sum(1 for t in times if as_of - wms < t)
                if n:
                    out[(user, f"count:{e}:{c}:{wname}")] = float(n)
            w = spec.weights[e]
            out[(user, f"decay:{e}:{c}")] = sum(w * 0.5 ** ((as_of - t) / half) for t in times)
            out[(user, f"recency:{e}:{c}")] = (as_of - max(times)) / DAY
        if not spec.user_features:
            continue
        conv = [r for r in rows if r.event == "conversion"]
        if conv:
            out[(user, "rfm:recency_days")] = (as_of - max(r.ts for r in conv)) / DAY
            out[(user, "rfm:frequency")] = float(len(conv))
            out[(user, "rfm:monetary")] = float(sum(r.value for r in conv))
        sessions = []  # [start, last, n]
        for r in rows:
            if not sessions or r.ts - sessions[-1][1] > gap or (mx and r.ts - sessions[-1][0] > mx):
                sessions.append([r.ts, r.ts, 1])
            else:
                sessions[-1][1] = r.ts
                sessions[-1][2] += 1
        out[(user, "sessions:count")] = float(len(sessions))
        out[(user, "sessions:mean_events")] = sum(s[2] for s in sessions) / len(sessions)
        out[(user, "sessions:mean_duration_s")] = (
            sum(s[1] - s[0] for s in sessions) / 1000.0 / len(sessions))
        if "page_view" in spec.events:
            pv = defaultdict(int)
            for (e, c), times in cells.items():
                if e == "page_view":
                    pv[c] += len(times)
            total = sum(pv.values())
            if total:
                out[(user, "diversity:entropy")] = -sum(
                    n / total * math.log(n / total) for n in pv.values())
        clicks = sum(1 for r in rows if r.event == "ad_click")
        impr = sum(1 for r in rows if r.event == "ad_impression")
        out[(user, "ctr:smoothed")] = (clicks + a) / (impr + a + b)
    return out


def _has_cat(c) -> bool:
    return c is not None and not (isinstance(c, float) and math.isnan(c))


def matrix_entries(fm) -> dict:
    """{(user_id, feature_name): value} of the entries stored in a FeatureMatrix."""
    coo = fm.X.tocoo()
    return {(fm.users[r], fm.feature_names[c]): float(v)
            for r, c, v in zip(coo.row, coo.col, coo.data)}


# ---- privacy screening -----------------------------------------------------------------------
def naive_category_key(c: str) -> str:
    """The documented category normalization (bta.privacy.category_key), step by step:
    NFKC, case fold, drop format characters, every run of separators one "_"."""
    import unicodedata

    s = unicodedata.normalize("NFKC", c).casefold()
    s = "".join(ch for ch in s if unicodedata.category(ch) != "Cf")
    out, sep = [], False
    for ch in s:
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Pd") or ch in "-_/\\\u2212":
            sep = True
            continue
        if sep and out:
            out.append("_")
        sep = False
        out.append(ch)
    return "".join(out)


def _naive_id(u) -> str:
    """The canonical id of bta.ids for the ids tests use: integers and text."""
    import numpy as np

    if isinstance(u, (int, np.integer)) and not isinstance(u, bool):
        return str(int(u))
    if isinstance(u, float) and u.is_integer():
        return str(int(u))
    return str(u)


def naive_screen_reason(policy, u, c, opt_outs=None, minors=None):
    """Why one event is screened ("opt_out", "under_age", "sensitive"), or None, read from
    the rules' wording. ``opt_outs``/``minors`` default to the policy's registries."""
    opt = {_naive_id(x) for x in (policy.opt_outs.snapshot() if opt_outs is None else opt_outs)}
    kids = {_naive_id(x) for x in (policy.minors.snapshot() if minors is None else minors)}
    if _naive_id(u) in opt:
        return "opt_out"
    if _naive_id(u) in kids:
        return "under_age"
    if c is None or (isinstance(c, float) and c != c):
        return None
    key = naive_category_key(str(c))
    if key in {naive_category_key(x) for x in policy.sensitive_categories}:
        allowed = {naive_category_key(x) for x in policy.allowed_sensitive}
        if not (key in allowed and key in policy.sensitive_opt_ins.categories(u)):
            return "sensitive"
    return None


def naive_screen(policy, users, categories, opt_outs=None, minors=None):
    """:meth:`PrivacyPolicy.screen_events` codes, one row at a time."""
    import numpy as np

    from bta.privacy import SCREEN_REASONS

    code = {None: 0, **{r: i for i, r in enumerate(SCREEN_REASONS) if i}}
    return np.array([code[naive_screen_reason(policy, u, c, opt_outs, minors)]
                     for u, c in zip(users, categories)], dtype=np.int8)

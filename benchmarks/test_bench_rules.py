"""Rule segments: 100 rules over ``2,000,000 * BTA_BENCH_SCALE`` users, bta against pandas.

Data: a synthetic FeatureMatrix in the layout :func:`bta.features.layout_for` gives for 4 event
types x 20 categories (counts over 1d/7d/30d, decay, recency) plus the 8 per-user features
(408 columns). Each user has 1 + Poisson(2) active (event, category) cells, so ~20 stored
entries per row, as real profiles are sparse; recency is stored whenever defined (NaN-absent).

Rules: 100 rules drawn (seeded) from a dozen templates over 4 "hot" categories: thresholds on
counts, recency with its missing-value semantics (``<``, ``not``, ``!=``, ``defined``), decay
arithmetic, ``min``/``max``/``abs``, ``total("count:page_view:*:7d")`` and references to
earlier rules with ``segment(...)``. Each template also builds the same rule as a plain pandas
expression over ``fm.to_pandas()`` columns.

Every benchmark first checks that bta's memberships equal the pandas evaluation for all 100
rules, then times:

- ``evaluate_rules`` (parse, compile, densify the referenced columns block by block, evaluate);
- the pandas evaluation (densify the referenced columns with ``to_pandas``, evaluate);
- ``CompiledRule.evaluate_row`` on single users (the serving path), checked against the batch
  result on a sample of users first.

Run: ``python -m pytest benchmarks/test_bench_rules.py --benchmark-enable``; full size with
``BTA_BENCH_SCALE=1.0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bta.features import FeatureSpec
from bta.features.matrix import FeatureMatrix, layout_for
from bta.segment.rules import RuleSegment, evaluate_rules
from _data import bench_scale

N_USERS_FULL = 2_000_000
N_RULES = 100
EVENTS = ("page_view", "search", "ad_impression", "ad_click")
CATEGORIES = tuple(f"cat{k:02d}" for k in range(20))
HOT = CATEGORIES[:4]  # the categories rules are about (a campaign targets a few)



# ---- data -------------------------------------------------------------------------------------
def make_feature_matrix(n_users: int, seed: int = 0) -> FeatureMatrix:
    """Synthetic FeatureMatrix with the real layout, built straight as CSR arrays."""
    spec = FeatureSpec(events=EVENTS, windows=("1d", "7d", "30d"))
    layout = layout_for(spec, list(CATEGORIES))
    n_cells, n_stats = len(EVENTS) * len(CATEGORIES), len(spec.stats)  # stats: c1 c7 c30 dec rec
    n_feat = len(layout.feature_names)
    rng = np.random.default_rng(seed)

    # active cells, unique per user, sorted by (user, cell)
    k = 1 + rng.poisson(2.0, n_users)
    key = np.unique(np.repeat(np.arange(n_users, dtype=np.int64), k) * n_cells
                    + rng.integers(0, n_cells, int(k.sum())))
    cu, cell = key // n_cells, key % n_cells
    m = cu.size
    c30 = 1 + rng.poisson(3.0, m)
    c7 = rng.binomial(c30, 0.4)
    c1 = rng.binomial(c7, 0.3)
    recency = np.round(rng.random(m) * 30, 2)  # days, 0.0 included: a stored, defined zero
    decay = np.round(c30 * 0.5 ** (recency / 7), 3)
    vals = np.column_stack([c1, c7, c30, decay, recency]).astype(np.float64)
    cols = cell[:, None] * n_stats + np.arange(n_stats)
    keep = (vals != 0) | (np.arange(n_stats) == n_stats - 1)  # counts absent at 0, recency kept
    cell_user, cell_col, cell_val = np.broadcast_to(cu[:, None], vals.shape)[keep], \
        cols[keep], vals[keep]

    # per-user block: rfm:recency_days, frequency, monetary, sessions:count, mean_events,
    # mean_duration_s, diversity:entropy, ctr:smoothed (monetary absent when 0)
    first_user = n_cells * n_stats
    uvals = np.column_stack([
        np.round(rng.random(n_users) * 30, 2), rng.poisson(0.3, n_users),
        np.where(rng.random(n_users) < 0.2, np.round(rng.lognormal(3, 1, n_users), 2), 0.0),
        1 + rng.poisson(3, n_users), np.round(1 + rng.random(n_users) * 9, 2),
        np.round(rng.random(n_users) * 900, 1), np.round(rng.random(n_users) * 3, 3),
        np.round((rng.poisson(0.2, n_users) + 1) / (rng.poisson(30, n_users) + 100), 5),
    ]).astype(np.float64)
    ukeep = uvals != 0
    ukeep[:, 0] = True  # rfm:recency_days is defined for every user here
    user_user = np.broadcast_to(np.arange(n_users)[:, None], uvals.shape)[ukeep]
    user_col = np.broadcast_to(first_user + np.arange(uvals.shape[1]), uvals.shape)[ukeep]
    user_val = uvals[ukeep]

    # CSR rows: the user's cell entries (sorted), then its per-user entries (higher columns)
    cnt_c = np.bincount(cell_user, minlength=n_users)
    cnt_u = np.bincount(user_user, minlength=n_users)
    indptr = np.concatenate([[0], np.cumsum(cnt_c + cnt_u)]).astype(np.int64)
    start_c = np.concatenate([[0], np.cumsum(cnt_c)[:-1]])
    start_u = np.concatenate([[0], np.cumsum(cnt_u)[:-1]])
    pos_c = indptr[cell_user] + np.arange(cell_user.size) - start_c[cell_user]
    pos_u = indptr[user_user] + cnt_c[user_user] + np.arange(user_user.size) - start_u[user_user]
    indices = np.empty(indptr[-1], dtype=np.int32)
    data = np.empty(indptr[-1], dtype=np.float64)
    indices[pos_c], data[pos_c] = cell_col, cell_val
    indices[pos_u], data[pos_u] = user_col, user_val
    X = sp.csr_matrix((data, indices, indptr), shape=(n_users, n_feat))
    return FeatureMatrix(X=X, feature_names=layout.feature_names,
                         users=np.arange(n_users, dtype=np.int64),
                         as_of=pd.Timestamp("2026-01-31", tz="UTC"), spec=spec,
                         nan_absent=layout.nan_absent)


# ---- rules, each with its pandas twin ---------------------------------------------------------
Ref = Callable[[pd.DataFrame, dict], pd.Series]


def _ne(s: pd.Series, v: float) -> pd.Series:
    return (s != v) & s.notna()  # undefined compares false, '!=' included


def make_rules(seed: int = 1) -> list[tuple[str, str, Ref, tuple[str, ...]]]:
    """(name, rule text, pandas evaluation, columns it reads) for N_RULES rules."""
    rng = np.random.default_rng(seed)
    pv7 = tuple(f"count:page_view:{c}:7d" for c in CATEGORIES)
    out: list[tuple[str, str, Ref, tuple[str, ...]]] = []
    for i in range(N_RULES):
        e, e2 = rng.choice(EVENTS, 2, replace=False)
        c, c2 = rng.choice(HOT, 2, replace=False)
        w = rng.choice(["1d", "7d", "30d"])
        k = int(rng.integers(1, 4))
        d = float(rng.choice([1, 3, 7, 14]))
        x = float(rng.choice([0.5, 1.0, 2.5]))
        cnt, cnt2 = f"count:{e}:{c}:{w}", f"count:{e2}:{c}:{w}"
        rec, rec2 = f"recency:{e}:{c}", f"recency:{e}:{c2}"
        dec, dec2 = f"decay:{e}:{c}", f"decay:{e}:{c2}"
        t = i % 12 if i >= 12 else i  # every template at least once, then in turn
        if t == 0:
            text, ref, used = f"{cnt} >= {k}", (lambda df, r, a=cnt, k=k: df[a] >= k), (cnt,)
        elif t == 1:
            text = f"{cnt} >= {k} and {rec} < {d}"
            ref, used = (lambda df, r, a=cnt, b=rec, k=k, d=d: (df[a] >= k) & (df[b] < d)), \
                (cnt, rec)
        elif t == 2:
            text = f"not ({rec} < {d}) and {dec} > {x}"
            ref, used = (lambda df, r, a=rec, b=dec, d=d, x=x: ~(df[a] < d) & (df[b] > x)), \
                (rec, dec)
        elif t == 3:
            text = f"({dec} + {dec2}) / 2 > {x} or rfm:frequency >= {k}"
            ref = (lambda df, r, a=dec, b=dec2, k=k, x=x:
                   ((df[a] + df[b]) / 2 > x) | (df["rfm:frequency"] >= k))
            used = (dec, dec2, "rfm:frequency")
        elif t == 4:
            text = f"min({rec}, {rec2}) < {d}"
            ref, used = (lambda df, r, a=rec, b=rec2, d=d: df[[a, b]].min(axis=1) < d), \
                (rec, rec2)
        elif t == 5:
            text = f"defined(recency:ad_click:{c}) and ctr:smoothed > 0.005"
            ref = (lambda df, r, a=f"recency:ad_click:{c}":
                   df[a].notna() & (df["ctr:smoothed"] > 0.005))
            used = (f"recency:ad_click:{c}", "ctr:smoothed")
        elif t == 6:
            text = f"max({cnt}, {cnt2}) >= {k} or rfm:monetary > 50"
            ref = (lambda df, r, a=cnt, b=cnt2, k=k:
                   (df[[a, b]].max(axis=1) >= k) | (df["rfm:monetary"] > 50))
            used = (cnt, cnt2, "rfm:monetary")
        elif t == 7:
            text = f"{rec} != {d} and count:{e}:{c}:30d != 0"
            ref = (lambda df, r, a=rec, b=f"count:{e}:{c}:30d", d=d:
                   _ne(df[a], d) & _ne(df[b], 0))
            used = (rec, f"count:{e}:{c}:30d")
        elif t == 8:
            text = f"abs({dec} - {dec2}) < {x} and defined({rec})"
            ref = (lambda df, r, a=dec, b=dec2, c_=rec, x=x:
                   ((df[a] - df[b]).abs() < x) & df[c_].notna())
            used = (dec, dec2, rec)
        elif t == 9:
            text = f'total("count:page_view:*:7d") >= {3 * k}'
            ref, used = (lambda df, r, k=k: df[list(pv7)].sum(axis=1) >= 3 * k), pv7
        elif t == 10:
            j = int(rng.integers(0, i))
            text = f'segment("rule_{j:03d}") and not segment("rule_{i - 1:03d}") or {cnt} > {k}'
            ref = (lambda df, r, j=j, i=i, a=cnt, k=k:
                   (r[f"rule_{j:03d}"] & ~r[f"rule_{i - 1:03d}"]) | (df[a] > k))
            used = (cnt,)
        else:
            text = (f"{cnt} * 2 + count:{e}:{c2}:{w} >= {2 * k} and sessions:count > 2 "
                    f"or rfm:recency_days <= {d} and not segment(\"rule_{i - 1:03d}\")")
            ref = (lambda df, r, a=cnt, b=f"count:{e}:{c2}:{w}", k=k, d=d, i=i:
                   ((df[a] * 2 + df[b] >= 2 * k) & (df["sessions:count"] > 2))
                   | ((df["rfm:recency_days"] <= d) & ~r[f"rule_{i - 1:03d}"]))
            used = (cnt, f"count:{e}:{c2}:{w}", "sessions:count", "rfm:recency_days")
        out.append((f"rule_{i:03d}", text, ref, used))
    return out


def pandas_rules(fm: FeatureMatrix, rules) -> dict[str, np.ndarray]:
    """The straightforward evaluation: dense columns from ``to_pandas``, one pandas expression
    per rule, in order (segment references point at earlier rules)."""
    cols = sorted({c for *_, used in rules for c in used})
    df = fm.to_pandas(columns=cols)
    res: dict[str, pd.Series] = {}
    for name, _text, ref, _used in rules:
        res[name] = ref(df, res).astype(bool)
    return {n: s.to_numpy() for n, s in res.items()}


@dataclass(frozen=True)
class Case:
    fm: FeatureMatrix
    rules: list
    segments: list[RuleSegment]


@pytest.fixture(scope="module")
def case() -> Case:
    n = max(1000, int(round(N_USERS_FULL * bench_scale())))
    rules = make_rules()
    return Case(make_feature_matrix(n), rules, [RuleSegment(n_, t) for n_, t, *_ in rules])


@pytest.fixture(scope="module")
def reference(case: Case) -> dict[str, np.ndarray]:
    return pandas_rules(case.fm, case.rules)


def _rounds(case: Case) -> dict:
    return {"rounds": 3 if case.fm.n_users > 200_000 else 5, "iterations": 1,
            "warmup_rounds": 0}


def _info(benchmark, case: Case, **extra) -> None:
    benchmark.extra_info.update(n_users=case.fm.n_users, n_features=case.fm.n_features,
                                nnz=int(case.fm.X.nnz), n_rules=len(case.rules), **extra)


def test_reference_is_not_degenerate(reference):
    # the check below would prove little if most rules were empty or everyone
    shares = np.array([m.mean() for m in reference.values()])
    assert ((shares > 0.001) & (shares < 0.999)).mean() >= 0.9


def test_evaluate_rules_checked_then_timed(benchmark, case, reference):
    segs = evaluate_rules(case.segments, case.fm)
    for seg in segs:
        np.testing.assert_array_equal(seg.members, reference[seg.name], err_msg=seg.definition)
    out = benchmark.pedantic(lambda: evaluate_rules(case.segments, case.fm), **_rounds(case))
    _info(benchmark, case, total_members=int(sum(s.size for s in out)))


def test_pandas_rules_timed(benchmark, case, reference):
    out = benchmark.pedantic(lambda: pandas_rules(case.fm, case.rules), **_rounds(case))
    for name, m in out.items():
        np.testing.assert_array_equal(m, reference[name])
    _info(benchmark, case)


def test_evaluate_row_checked_then_timed(benchmark, case, reference):
    # the serving path: one user's CSR row at a time, for a rule with recency, decay and 'not'
    fm, X = case.fm, case.fm.X
    compiled = [s.compile(fm) for s in case.segments]
    for c in compiled:
        c.warmup()
    rng = np.random.default_rng(2)
    sample = rng.choice(fm.n_users, size=min(300, fm.n_users), replace=False)
    for i in sample:
        row = slice(X.indptr[i], X.indptr[i + 1])
        mine = {n for n, m in reference.items() if m[i]}
        for c in compiled:
            assert c.evaluate_row(X.indices[row], X.data[row], mine) == reference[c.name][i]
    rule = compiled[2]  # "not (recency < d) and decay > x"
    rows = [(X.indices[X.indptr[i]:X.indptr[i + 1]], X.data[X.indptr[i]:X.indptr[i + 1]])
            for i in sample[:100]]

    def run() -> int:
        return sum(rule.evaluate_row(ind, val) for ind, val in rows)

    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=1)
    _info(benchmark, case, rows_per_round=len(rows), rule=rule.expr)

"""The request path's compiled steps (``eligible_one``, ``score_choose``, ``scatter_row``), which
the replay's kernel runs too, against
NumPy references written the way the Engine computed them before they were compiled: flight,
context, budget and even pacing, caps and targeting hits as boolean arrays over all campaigns;
eCPM as ``base + ctr * per_ctr``; the choice by the policies' own Python ``choose``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.serve import _kernels as K
from bta.serve.policy import EpsilonGreedy, Greedy, Softmax, Uniform

T = 1_700_000_000_000


def _campaigns(rng: np.random.Generator, n: int, n_rules: int, n_scorers: int) -> dict:
    start = T + rng.integers(-5, 5, n) * 3_600_000
    end = start + rng.integers(1, 10, n) * 3_600_000
    open_ended = rng.random(n) < 0.3
    start[open_ended] = np.iinfo(np.int64).min
    end[open_ended] = np.iinfo(np.int64).max
    has_budget = (rng.random(n) < 0.5) & ~open_ended
    budget = np.where(has_budget, rng.uniform(1.0, 10.0, n), np.inf)
    targeted = rng.random(n) < 0.6
    return dict(
        start=start, end=end, budget=budget, even=has_budget & (rng.random(n) < 0.6),
        slack=rng.uniform(0.0, 0.2, n), spend=rng.uniform(0.0, 8.0, n + 3),
        slot=rng.permutation(n + 3)[:n].astype(np.int64), targeted=targeted,
        rule=np.where(targeted, rng.integers(0, n_rules, n), -1).astype(np.int64),
        scorer=np.where(rng.random(n) < 0.4, rng.integers(0, n_scorers, n), -1
                        ).astype(np.int64),
        prior=rng.uniform(0.001, 0.05, n), base=np.where(rng.random(n) < 0.5,
                                                         rng.uniform(0.2, 5.0, n), 0.0),
        per_ctr=rng.uniform(0.0, 2000.0, n))


def _table(c: dict) -> K.CampaignTable:
    """The campaigns as the kernels take them."""
    return K.CampaignTable(
        start=c["start"], end=c["end"], any_budget=bool(np.isfinite(c["budget"]).any()),
        budget=c["budget"], even=c["even"], slack=c["slack"], slot=c["slot"],
        targeted=c["targeted"], rule=c["rule"], scorer=c["scorer"], prior=c["prior"],
        base=c["base"], per_ctr=c["per_ctr"])


def _reference_ok(c: dict, t: int, path: int, ctx_ok, capped, hits) -> np.ndarray:
    """Eligibility over all campaigns with array operations (the Engine's former code)."""
    ok = (c["start"] <= t) & (t < c["end"])
    if ctx_ok is not None:
        ok &= ctx_ok
    if np.isfinite(c["budget"]).any():
        spend = c["spend"][c["slot"]]
        allowed = c["budget"].copy()
        even = c["even"]
        if even.any():
            span = (c["end"][even] - c["start"][even]).astype(np.float64)
            frac = np.clip((t - c["start"][even]) / span, 0.0, 1.0)
            allowed[even] = np.minimum(c["budget"][even],
                                       c["budget"][even] * (frac + c["slack"][even]))
        ok &= spend < allowed
    if capped is not None:
        ok &= ~capped
    if path == 0:
        ok[c["targeted"]] &= hits[c["rule"][c["targeted"]]]
    else:
        ok &= ~c["targeted"]
    return ok


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 60), path=st.sampled_from([0, 1]),
       hour=st.integers(-6, 12), edge=st.sampled_from(["none", "start", "end"]),
       with_ctx=st.booleans(), with_caps=st.booleans())
def test_eligible_one_equals_the_array_reference(seed, n, path, hour, edge, with_ctx,
                                                 with_caps):
    rng = np.random.default_rng(seed)
    n_rules, n_scorers = 7, 3
    c = _campaigns(rng, n, n_rules, n_scorers)
    t = T + hour * 3_600_000 + int(rng.integers(0, 3_600_000))
    if edge != "none":  # exactly at a campaign's first or first excluded millisecond
        t = int(c[edge][int(rng.integers(0, n))])
        if abs(t) > 2**62:  # an open-ended flight has no edge to sit on
            t = T
    hits = rng.random(n_rules) < 0.5
    ctx_ok = rng.random(n) < 0.7 if with_ctx else None
    capped = rng.random(n) < 0.2 if with_caps else None
    need = np.ones(n_scorers, dtype=bool)  # the kernel must clear it
    cand = np.full(n, -7, dtype=np.int64)
    got = K.eligible_one(t, path, np.zeros(0, bool) if ctx_ok is None else ctx_ok,
                         np.zeros(0, bool) if capped is None else capped, _table(c),
                         c["spend"], hits, need, cand)
    want = np.flatnonzero(_reference_ok(c, t, path, ctx_ok, capped, hits))
    assert got == want.size
    assert np.array_equal(cand[:got], want)
    used = c["scorer"][want]
    want_need = np.zeros(n_scorers, dtype=bool)
    if path == 0:
        want_need[used[used >= 0]] = True
    assert np.array_equal(need, want_need)


_POLICIES = [Greedy(), EpsilonGreedy(0.2), Softmax(0.7), Uniform()]


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), path=st.sampled_from([0, 1]),
       policy=st.sampled_from(_POLICIES), u=st.floats(0.0, 1.0, exclude_max=True))
def test_score_choose_equals_python_scores_and_policy(seed, n, path, policy, u):
    rng = np.random.default_rng(seed)
    n_c = n + 5
    c = _campaigns(rng, n_c, 3, 2)
    cand = np.sort(rng.choice(n_c, n, replace=False)).astype(np.int64)
    ctr = rng.uniform(0.0, 0.1, 2)
    sc = np.empty(n_c)
    p_buf = np.empty(n_c)
    i, p = K.score_choose(cand, n, path, _table(c), ctr, policy.kind, policy.param, u, sc,
                          p_buf)
    s = c["scorer"][cand]
    click = c["prior"][cand] if path else np.where(s >= 0, ctr[np.maximum(s, 0)],
                                                   c["prior"][cand])
    want_sc = c["base"][cand] + click * c["per_ctr"][cand]
    assert np.array_equal(sc[:n], want_sc)  # bit for bit: the same two operations
    want_i, want_p = policy.choose(want_sc, u)
    assert (i, p) == (want_i, want_p)
    # kind -1 only scores (a policy of the caller's own chooses in Python)
    sc2 = np.empty(n_c)
    assert K.score_choose(cand, n, path, _table(c), ctr, -1, 0.0, u, sc2, p_buf) == (-1, 0.0)
    assert np.array_equal(sc2[:n], want_sc)


@pytest.mark.parametrize("n_entries", [0, 1, 9])
def test_scatter_row_places_the_mapped_entries_over_the_defaults(n_entries):
    rng = np.random.default_rng(n_entries)
    n_store, n_model = 20, 8
    fmap = np.full(n_store, -1, dtype=np.int64)
    fmap[rng.choice(n_store, n_model, replace=False)] = np.arange(n_model)
    default = np.where(rng.random(n_model) < 0.5, np.nan, 0.0)
    idx = np.sort(rng.choice(n_store, n_entries, replace=False)).astype(np.int32)
    val = rng.normal(size=n_entries)
    x = np.full(n_model, 123.0)
    K.scatter_row(default, fmap, idx, val, x)
    want = default.copy()
    j = fmap[idx]
    want[j[j >= 0]] = val[j >= 0]
    np.testing.assert_array_equal(x, want)


def test_csr_row_flags_marks_the_rows_columns():
    import scipy.sparse as sp

    M = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=bool))
    for r in range(3):
        out = np.zeros(4, dtype=bool)
        K.csr_row_flags(M.indptr, M.indices, r, out)
        np.testing.assert_array_equal(out, M.toarray()[r])


def test_policy_kinds_are_the_kernels_named_kinds():
    # the compiled choice (K._policy) branches on K.POLICY_*; each built-in policy carries its
    # kind, and decide_batch passes it on, so the two must name the same numbers
    assert Greedy().kind == K.POLICY_GREEDY
    assert EpsilonGreedy(0.1).kind == K.POLICY_EPSILON_GREEDY
    assert Softmax().kind == K.POLICY_SOFTMAX
    assert Uniform().kind == K.POLICY_UNIFORM

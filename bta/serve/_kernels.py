"""Serving kernels: targeting rules for one user or many, BLAKE2b hashing (one key or many),
experiment arms, the choice policies, and the decision's steps, each written once for its two
callers: a request (``Engine.decide``: :func:`capped_one`, :func:`eligible_one`,
:func:`score_choose`, :func:`creatives_ok`) and the sequential pass of a replay
(:func:`replay`, n >= 1 requests), which runs the same :func:`_open`, :func:`_apply_caps`,
:func:`_candidates`, :func:`_score`, :func:`_policy` and :func:`creatives_ok`."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from bta._jit import exact_jit, serving_jit
from bta.segment.rules.kernels import run_code

__all__ = ["CampaignTable", "CapTable", "HistoryLists", "ReplayOut", "MODE_TARGETED",
           "MODE_UNTARGETED", "MODE_UNRECORDED", "PATH_TARGETED", "PATH_UNTARGETED",
           "POLICY_GREEDY", "POLICY_EPSILON_GREEDY", "POLICY_SOFTMAX", "POLICY_UNIFORM",
           "capped_one", "creatives_ok", "eval_rules", "eval_rules_batch", "eligible_one",
           "scatter_row", "score_choose", "hash_key", "hash_units", "arm_code", "arm_codes",
           "softmax_choose", "replay", "all_finite", "finite_rows"]


class CampaignTable(NamedTuple):
    """A configuration's campaigns as the arrays the decision's steps read (all IN; one entry
    per campaign). A new campaign constraint adds its array here and its test in
    :func:`_open`: a request and a replay then both apply it."""

    start: np.ndarray     #: int64: flight start (ms), inclusive
    end: np.ndarray       #: int64: flight end (ms), exclusive
    any_budget: bool      #: some campaign has a budget
    budget: np.ndarray    #: float64 (inf: none)
    even: np.ndarray      #: bool: paced evenly over the flight
    slack: np.ndarray     #: float64: pacing slack
    slot: np.ndarray      #: int64: the campaign's slot in the spend array
    targeted: np.ndarray  #: bool: has a (behavioural) targeting rule
    rule: np.ndarray      #: int64: its rule (-1: none)
    scorer: np.ndarray    #: int64: its click model (-1: the prior)
    prior: np.ndarray     #: float64: prior click probability
    base: np.ndarray      #: float64: eCPM without clicks (CPM bid)
    per_ctr: np.ndarray   #: float64: eCPM per unit of click probability


class CapTable(NamedTuple):
    """A configuration's creatives and frequency caps as flat arrays (all IN)."""

    cre_off: np.ndarray   #: int64 (n_campaigns + 1,): campaign c's creatives are codes
    #: cre_off[c] .. cre_off[c+1]-1
    cap_off: np.ndarray   #: int64 (n_campaigns + 1,): campaign c's caps cap_off[c]..
    window: np.ndarray    #: int64 (n_caps,): the cap's window (ms)
    max_imps: np.ndarray  #: int64 (n_caps,): impressions allowed within the window
    creative: np.ndarray  #: bool (n_caps,): creative scope (else campaign scope)
    has_caps: np.ndarray  #: bool (n_campaigns,)


class ReplayOut(NamedTuple):
    """A replay's decisions, one entry per request (all OUT)."""

    camp: np.ndarray        #: int64: campaign index, -1 the house ad
    k: np.ndarray           #: int64: creative of the campaign (of the house ad when -1)
    targeted: np.ndarray    #: bool
    prop: np.ndarray        #: float64: propensity
    n_eligible: np.ndarray  #: int64
    score: np.ndarray       #: float64: eCPM (the house ad's is filled by the caller)
    reason: np.ndarray      #: int64: reason code (position in REASONS)
    price: np.ndarray       #: float64 (the house ad's is filled by the caller)
    record: np.ndarray      #: bool: counted against spend and caps (or held pending)


#: request modes of :func:`replay`
MODE_TARGETED = 0    # the targeted path, with a profile row
MODE_UNTARGETED = 1  # the untargeted choice for the request's reason (counted)
MODE_UNRECORDED = 2  # the untargeted choice, not counted (a malformed request)


class HistoryLists(NamedTuple):
    """Frequency-cap history as linked lists of impressions, one list per user (a head
    index, ``next[e]`` the following impression, -1 at the end): IN to the cap checks, IN
    and OUT to a replay's bookkeeping."""

    t: np.ndarray     #: int64: impression time (ms)
    camp: np.ndarray  #: int64: campaign index (-1: none of this configuration)
    cre: np.ndarray   #: int64: creative code (CapTable.cre_off; others never match)
    next: np.ndarray  #: int64: next impression of the same user, -1 at the last


@serving_jit()
def eval_rules(rules, user_segments, indices, values, n_features, out):
    """OUT ``out[r]``: whether rule ``r`` of ``rules`` (IN,
    :class:`~bta.segment.rules.kernels.PackedRules`) holds for the user (one kernel call for
    every rule).

    IN: the user's stored entries ``(indices, values)``, its segment flags ``user_segments``
    (which ``rules.segment_index`` points into; -1: a segment unknown to the store, read as
    not a member) and the store's ``n_features``. The user's entries are scattered once into
    a dense row, so each rule reads its columns directly (hundreds of rules per request: no
    per-rule search through the profile).
    """
    n_rules = out.shape[0]
    column_offsets = rules.column_offsets
    dense = np.zeros(n_features)
    present = np.zeros(n_features, dtype=np.bool_)
    for k in range(indices.shape[0]):
        j = indices[k]
        if 0 <= j < n_features:
            dense[j] = values[k]
            present[j] = True
    max_slots = 1
    max_stack = 1
    for r in range(n_rules):
        max_slots = max(max_slots, column_offsets[r + 1] - column_offsets[r])
        max_stack = max(max_stack, rules.stack_sizes[r])
    local = np.empty(max_slots)
    stack = np.empty(max_stack)
    # every rule's segment slots at once; rule r reads its own from segment_offsets[r]
    segment_index = rules.segment_index
    slot_flags = np.zeros(max(segment_index.shape[0], 1), dtype=np.bool_)
    for k in range(segment_index.shape[0]):
        pos = segment_index[k]
        slot_flags[k] = pos >= 0 and user_segments[pos]
    for r in range(n_rules):
        first_slot = column_offsets[r]
        n_slots = column_offsets[r + 1] - first_slot
        for s in range(n_slots):
            j = rules.columns[first_slot + s]
            if present[j]:
                local[s] = dense[j]
            elif rules.nan_absent[first_slot + s]:
                local[s] = np.nan
            else:
                local[s] = 0.0
        out[r] = run_code(rules.code, rules.code_offsets[r], rules.code_offsets[r + 1],
                          rules.consts, rules.const_offsets[r], local, slot_flags,
                          rules.segment_offsets[r], stack)


@serving_jit()
def eval_rules_batch(rules, segments, indptr, indices, values, n_features, out):
    """:func:`eval_rules` for many profiles: OUT ``out[p, r]`` = rule ``r`` of ``rules``
    (IN, :class:`~bta.segment.rules.kernels.PackedRules`) on profile ``p``.

    IN: profile ``p`` owns ``indices[indptr[p]:indptr[p+1]]`` (and the same ``values``) and
    segment flags ``segments[p]``. Each row goes through :func:`eval_rules` itself, so a
    replay evaluates targeting exactly as a request does.
    """
    for p in range(out.shape[0]):
        start = indptr[p]
        end = indptr[p + 1]
        eval_rules(rules, segments[p], indices[start:end], values[start:end], n_features, out[p])


# ---- BLAKE2b-64: hash_unit for many keys at once ----------------------------------------------
_IV = np.array([0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B,
                0xA54FF53A5F1D36F1, 0x510E527FADE682D1, 0x9B05688C2B3E6C1F,
                0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179], dtype=np.uint64)
_SIGMA = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
], dtype=np.int64)
#: parameter block of an unkeyed BLAKE2b with an 8-byte digest: 0x0101kknn, nn = 8, kk = 0
_P0 = np.uint64(0x01010008)


@exact_jit()
def _g(a, b, c, d, x, y):
    """The BLAKE2b mixing function G (RFC 7693, 3.1): rotations 32, 24, 16, 63."""
    a = a + b + x
    d ^= a
    d = (d >> np.uint64(32)) | (d << np.uint64(32))
    c = c + d
    b ^= c
    b = (b >> np.uint64(24)) | (b << np.uint64(40))
    a = a + b + y
    d ^= a
    d = (d >> np.uint64(16)) | (d << np.uint64(48))
    c = c + d
    b ^= c
    b = (b >> np.uint64(63)) | (b << np.uint64(1))
    return a, b, c, d


@exact_jit()
def _compress(h, block, t, last, m):
    for i in range(16):
        w = np.uint64(0)
        for b in range(8):
            w |= np.uint64(block[8 * i + b]) << np.uint64(8 * b)
        m[i] = w
    # the working vector in sixteen locals, so that the rounds run in registers
    v0, v1, v2, v3, v4, v5, v6, v7 = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
    v8, v9, v10, v11 = _IV[0], _IV[1], _IV[2], _IV[3]
    v12 = _IV[4] ^ np.uint64(t)  # messages here are far below 2**64 bytes: high counter 0
    v13 = _IV[5]
    v14 = ~_IV[6] if last else _IV[6]
    v15 = _IV[7]
    for r in range(12):
        s = _SIGMA[r % 10]
        v0, v4, v8, v12 = _g(v0, v4, v8, v12, m[s[0]], m[s[1]])
        v1, v5, v9, v13 = _g(v1, v5, v9, v13, m[s[2]], m[s[3]])
        v2, v6, v10, v14 = _g(v2, v6, v10, v14, m[s[4]], m[s[5]])
        v3, v7, v11, v15 = _g(v3, v7, v11, v15, m[s[6]], m[s[7]])
        v0, v5, v10, v15 = _g(v0, v5, v10, v15, m[s[8]], m[s[9]])
        v1, v6, v11, v12 = _g(v1, v6, v11, v12, m[s[10]], m[s[11]])
        v2, v7, v8, v13 = _g(v2, v7, v8, v13, m[s[12]], m[s[13]])
        v3, v4, v9, v14 = _g(v3, v4, v9, v14, m[s[14]], m[s[15]])
    h[0] ^= v0 ^ v8
    h[1] ^= v1 ^ v9
    h[2] ^= v2 ^ v10
    h[3] ^= v3 ^ v11
    h[4] ^= v4 ^ v12
    h[5] ^= v5 ^ v13
    h[6] ^= v6 ^ v14
    h[7] ^= v7 ^ v15


@exact_jit()
def _hash_one(prefix, data, a, b, h, m, block):
    """hash_unit(prefix + data[a:b]); ``h``, ``m``, ``block`` are scratch arrays."""
    n_pre = prefix.shape[0]
    n = n_pre + (b - a)
    h[:] = _IV
    h[0] ^= _P0
    done = 0
    fill = 0
    # every full block but the last is compressed as soon as the next byte arrives
    for j in range(n):
        if fill == 128:
            done += 128
            _compress(h, block, done, False, m)
            fill = 0
        block[fill] = prefix[j] if j < n_pre else data[a + j - n_pre]
        fill += 1
    block[fill:] = 0
    _compress(h, block, done + fill, True, m)
    return np.float64(h[0]) / 18446744073709551616.0  # / 2**64


@exact_jit()
def hash_key(key):
    """``hash_unit`` of one key's UTF-8 bytes (:func:`bta.serve.experiment.hash_unit`)."""
    h = np.empty(8, dtype=np.uint64)
    m = np.empty(16, dtype=np.uint64)
    block = np.zeros(128, dtype=np.uint8)
    return _hash_one(key, key[:0], 0, 0, h, m, block)


@exact_jit()
def hash_units(prefix, data, offsets, out):
    """``out[i] = hash_unit(prefix + data[offsets[i]:offsets[i+1]])`` (UTF-8 bytes).

    The same BLAKE2b (RFC 7693, 8-byte digest, no key) as :func:`bta.serve.experiment.hash_unit`,
    and the same map to [0, 1): the digest read little-endian, divided by 2**64.
    """
    h = np.empty(8, dtype=np.uint64)
    m = np.empty(16, dtype=np.uint64)
    block = np.zeros(128, dtype=np.uint8)
    for i in range(out.shape[0]):
        out[i] = _hash_one(prefix, data, offsets[i], offsets[i + 1], h, m, block)


# ---- experiment arms ----------------------------------------------------------------------------
@exact_jit()
def arm_code(u, holdout, cum):
    """The arm of a user's hash ``u`` (:meth:`bta.serve.experiment.Experiment.assign`):
    ``len(cum)`` (the holdout) when ``u < holdout``, else the first arm whose cumulative
    share ``cum[j]`` exceeds ``v = (u - holdout) / (1 - holdout)`` (the last one when ``v``
    is within rounding of 1)."""
    n = cum.shape[0]
    if u < holdout:
        return n
    v = (u - holdout) / (1.0 - holdout)
    for j in range(n):
        if v < cum[j]:
            return j
    return n - 1


@exact_jit()
def arm_codes(units, holdout, cum, out):
    """:func:`arm_code` of each hash: ``out[i]`` (IN ``units``, ``cum``; OUT ``out``)."""
    for i in range(units.shape[0]):
        out[i] = arm_code(units[i], holdout, cum)


# ---- choice policies ---------------------------------------------------------------------------
# One compiled softmax for both paths: Engine.decide calls it through Softmax.choose and the
# replay kernel inlines it, so a replay's propensities are bit-identical to decide's.
@exact_jit()
def softmax_p(scores, temperature, p):
    """``p = exp((s - max s) / T) / sum(...)``, summed left to right."""
    mx = scores[0]
    for i in range(1, scores.shape[0]):
        if scores[i] > mx:
            mx = scores[i]
    tot = 0.0
    for i in range(scores.shape[0]):
        p[i] = math.exp((scores[i] - mx) / temperature)
        tot += p[i]
    for i in range(scores.shape[0]):
        p[i] = p[i] / tot


@exact_jit()
def softmax_choose(scores, temperature, u, p):
    """(index, probability): the first index whose cumulative probability exceeds ``u``."""
    softmax_p(scores, temperature, p)
    n = scores.shape[0]
    acc = 0.0
    for i in range(n):
        acc += p[i]
        if acc > u:
            return i, p[i]
    return n - 1, p[n - 1]


@exact_jit()
def _argmax(x, n):
    best = 0
    for i in range(1, n):
        if x[i] > x[best]:
            best = i
    return best


#: policy kinds of the compiled choice (:func:`_policy`): each built-in policy of
#: :mod:`bta.serve.policy` carries its own as ``kind``
POLICY_GREEDY = 0
POLICY_EPSILON_GREEDY = 1
POLICY_SOFTMAX = 2
POLICY_UNIFORM = 3


@exact_jit()
def _policy(kind, param, scores, n, u, p):
    """The choice of :mod:`bta.serve.policy` (:data:`POLICY_GREEDY`,
    :data:`POLICY_EPSILON_GREEDY`, :data:`POLICY_SOFTMAX`, :data:`POLICY_UNIFORM`) among
    ``scores[:n]`` (IN), written with the same operations in the same order; ``p`` is
    scratch. Returns (position, probability)."""
    if kind == POLICY_GREEDY:
        return _argmax(scores, n), 1.0
    if kind == POLICY_EPSILON_GREEDY:
        best = _argmax(scores, n)
        a = best
        if u < param:
            a = min(int(u / param * n), n - 1)
        return a, param / n + (1.0 - param) * (1.0 if a == best else 0.0)
    if kind == POLICY_SOFTMAX:
        return softmax_choose(scores[:n], param, u, p[:n])
    return min(int(u * n), n - 1), 1.0 / n  # POLICY_UNIFORM


# ---- one request (Engine.decide) ----------------------------------------------------------------
@serving_jit()
def csr_row_flags(indptr, indices, r, out):
    """``out[j] = True`` for the columns of row ``r`` of a CSR matrix (a user's segments)."""
    for k in range(indptr[r], indptr[r + 1]):
        out[indices[k]] = True


@exact_jit()
def _campaign_ok(t, start, end, any_budget, budget, even, slack, spent):
    """Whether a campaign may serve at ``t``: in flight (``start <= t < end``), and with
    ``spent`` under its budget (paced evenly over the flight when ``even``). Shared by a
    request and a replay; scalar arguments, since it runs once per campaign."""
    if not (start <= t and t < end):
        return False
    if any_budget:
        allowed = budget
        if even:
            frac = (t - start) / np.float64(end - start)
            frac = min(max(frac, 0.0), 1.0)
            allowed = min(budget, budget * (frac + slack))
        return spent < allowed
    return True


#: the two choices of a request: with the profile, or without it
PATH_TARGETED = 0
PATH_UNTARGETED = 1


@exact_jit()
def _open(t, ctx_ok, camps, spend, ok):
    """OUT ``ok[c]``: campaign ``c`` may serve the request at ``t`` as far as its context
    targeting (IN ``ctx_ok[c]``), flight and budget (:func:`_campaign_ok`) go; the caps come
    after (:func:`_apply_caps`, :func:`capped_one`)."""
    for c in range(ok.shape[0]):
        ok[c] = ctx_ok[c] and _campaign_ok(t, camps.start[c], camps.end[c], camps.any_budget,
                                           camps.budget[c], camps.even[c], camps.slack[c],
                                           spend[camps.slot[c]])


@exact_jit()
def _candidates(path, ok, targeted, rule, hits, cand):
    """Of the campaigns open to a request (``ok[c]``: in flight, under budget, context met,
    not capped), the candidates of ``path`` in campaign order: OUT ``cand[:n]``, returns
    ``n``. :data:`PATH_TARGETED`: every campaign whose targeting rule holds
    (``hits[rule[c]]``) or that has none; :data:`PATH_UNTARGETED`: only campaigns without
    targeting. One rule for a request (:func:`eligible_one`) and a replay (:func:`replay`)."""
    n = 0
    for c in range(ok.shape[0]):
        if ok[c] and (not targeted[c] or (path == PATH_TARGETED and hits[rule[c]])):
            cand[n] = c
            n += 1
    return n


@exact_jit()
def _score(cand, n, path, camps, ctr, sc):
    """OUT ``sc[:n]``: the eCPM of each candidate (:func:`_ecpm_of`) with the click
    probability of its scorer ``ctr[s]`` on the targeted path, else the campaign's prior."""
    for i in range(n):
        c = cand[i]
        s = camps.scorer[c]
        sc[i] = _ecpm_of(camps.base[c], camps.prior[c] if path != PATH_TARGETED or s < 0
                         else ctr[s], camps.per_ctr[c])


@exact_jit()
def eligible_one(t, path, ctx_ok, capped, camps, spend, hits, need, cand):
    """The eligible campaigns of one request, in campaign order (OUT ``cand``); returns how
    many.

    Open to the request: in flight and under budget (:func:`_campaign_ok`), context met
    (``ctx_ok[c]``; empty: no context targeting) and not frequency-capped for the user
    (``capped[c]``; empty: nothing capped); then the candidates of ``path``
    (:func:`_candidates`). OUT ``need[s]``: set for each scorer ``s`` a candidate of the
    targeted path prices with.
    """
    need[:] = False
    n_c = camps.start.shape[0]
    ok = np.empty(n_c, dtype=np.bool_)
    _open(t, ctx_ok if ctx_ok.shape[0] > 0 else np.ones(n_c, dtype=np.bool_), camps, spend, ok)
    if capped.shape[0] > 0:
        for c in range(n_c):
            ok[c] = ok[c] and not capped[c]
    n = _candidates(path, ok, camps.targeted, camps.rule, hits, cand)
    if path == PATH_TARGETED:
        for i in range(n):
            if camps.scorer[cand[i]] >= 0:
                need[camps.scorer[cand[i]]] = True
    return n


@exact_jit()
def scatter_row(default, fmap, indices, values, x):
    """A scorer's dense feature row from a sparse profile: ``x = default``, then each entry
    whose store column the scorer reads (``fmap[column] >= 0``) in its place."""
    x[:] = default
    for k in range(indices.shape[0]):
        j = fmap[indices[k]]
        if j >= 0:
            x[j] = values[k]


@exact_jit()
def all_finite(values):
    """Whether every value of a profile is a finite number: a profile with a NaN or an
    infinite feature (carried by the request or stored) is ``fallback:bad_profile``."""
    for k in range(values.shape[0]):
        if not math.isfinite(values[k]):
            return False
    return True


@exact_jit()
def finite_rows(indptr, values, out):
    """:func:`all_finite` of each row of a CSR block of profiles (``out[r]``; a replay)."""
    for r in range(out.shape[0]):
        out[r] = all_finite(values[indptr[r]:indptr[r + 1]])


@exact_jit()
def _ecpm_of(base, ctr, per_ctr):
    """Expected value of 1,000 impressions: ``base + ctr * per_ctr``.

    CPM campaigns have ``base = bid, per_ctr = 0``; CPC ``base = 0, per_ctr = 1000 * bid``;
    CPA ``base = 0, per_ctr = 1000 * cvr * bid`` (the Engine's ``ecpm_base``/``ecpm_per_ctr``).
    """
    return base + ctr * per_ctr


@exact_jit()
def score_choose(cand, n, path, camps, ctr, kind, param, u, sc, p):
    """Scores ``sc[:n]`` of the candidates ``cand[:n]`` (:func:`_score`) and the policy's
    choice (:func:`_policy`) as (position, probability); ``kind < 0`` only scores (the
    caller's own policy chooses) and returns (-1, 0.0)."""
    _score(cand, n, path, camps, ctr, sc)
    if kind < 0:
        return -1, 0.0
    return _policy(kind, param, sc, n, u, p)


# ---- the sequential part of a replay -------------------------------------------------------------
@exact_jit()
def _hist_count(head, ev_t, ev_key, ev_next, key, t, window, horizon):
    """Impressions of ``key`` in a user's list that count at ``t`` against a cap of
    ``window``: within the window, and after the history's horizon (older ones never count
    again, whatever the request's time: see ``_CapHistory``)."""
    cnt = 0
    e = head
    while e >= 0:
        if ev_key[e] == key and t - ev_t[e] < window and ev_t[e] > horizon:
            cnt += 1
        e = ev_next[e]
    return cnt


@exact_jit()
def creatives_ok(c, t, head, caps, hist, horizon, ks):
    """Creatives of campaign ``c`` under their creative-scope caps for the user whose
    impressions start at ``head`` (-1: none): OUT ``ks[:n]``, returns ``n``."""
    n = 0
    for k in range(caps.cre_off[c + 1] - caps.cre_off[c]):
        ok = True
        if head >= 0:
            for j in range(caps.cap_off[c], caps.cap_off[c + 1]):
                if caps.creative[j] and _hist_count(head, hist.t, hist.cre, hist.next,
                                                    caps.cre_off[c] + k, t, caps.window[j],
                                                    horizon) >= caps.max_imps[j]:
                    ok = False
                    break
        if ok:
            ks[n] = k
            n += 1
    return n


@exact_jit()
def _reached_cap(c, t, head, caps, hist, horizon, ks):
    """Whether the user reached a cap of campaign ``c``: a campaign-scope cap, or the
    creative-scope caps of every creative (the campaign cannot serve)."""
    for j in range(caps.cap_off[c], caps.cap_off[c + 1]):
        if not caps.creative[j] and _hist_count(head, hist.t, hist.camp, hist.next, c, t,
                                                caps.window[j], horizon) >= caps.max_imps[j]:
            return True
    return creatives_ok(c, t, head, caps, hist, horizon, ks) == 0


@exact_jit()
def _apply_caps(t, head, caps, hist, horizon, ok, seen, stamp, ks):
    """``ok[c] = False`` for each campaign the user (list at ``head``) is capped on; only
    campaigns in the user's (short) list can be, each checked once (``seen[c] == stamp``)."""
    e = head
    while e >= 0:
        c = hist.camp[e]
        if c >= 0 and seen[c] != stamp:
            seen[c] = stamp
            if ok[c] and caps.has_caps[c] and _reached_cap(c, t, head, caps, hist, horizon, ks):
                ok[c] = False
        e = hist.next[e]


@exact_jit()
def capped_one(t, caps, hist, horizon, capped, ks):
    """One request (``Engine.decide``): OUT ``capped[c]``, whether the user whose
    impressions are all of ``hist`` (one list from 0) is capped on campaign ``c``."""
    n_c = capped.shape[0]
    ok = np.ones(n_c, dtype=np.bool_)
    seen = np.full(n_c, -1, dtype=np.int64)
    _apply_caps(t, 0 if hist.t.shape[0] > 0 else -1, caps, hist, horizon, ok, seen, 0, ks)
    for c in range(n_c):
        capped[c] = not ok[c]


@exact_jit()
def replay(mode, reason, ts, user_index, context_row, profile_row, rid_data, rid_off,
           choose_prefix, creative_prefix, n_house, ctx_ok, hits, ctr, camps, is_cpm, bid, caps,
           any_caps, max_window, policy_kind, policy_param, count, to_no_fill,
           reason_no_eligible, reason_no_fill, spend, head, tail, hist, ev_lab, n_ev, horizon,
           now_ms, out):
    """Budgets, pacing, caps and the choice for each request in order (the Engine's state).

    IN, per request: ``mode`` (:data:`MODE_TARGETED`: profile row ``profile_row``;
    :data:`MODE_UNTARGETED`: untargeted for ``reason``; :data:`MODE_UNRECORDED`: untargeted
    and not counted, a malformed request), ``ts``, ``user_index`` (the user's history list:
    its entry of ``head`` and ``tail``), ``context_row`` (row of ``ctx_ok``), the request ids
    (``rid_data[rid_off[i]:rid_off[i+1]]``, UTF-8, hashed with ``choose_prefix`` /
    ``creative_prefix`` only where a choice reads them). IN, per profile row: ``hits`` (rule
    hits), ``ctr`` (scorer click probabilities). IN, per campaign: the flight, budget,
    targeting and price arrays, ``caps`` (:class:`CapTable`); ``policy_kind`` /
    ``policy_param``: policy kind (``POLICY_*``) and parameter for [targeted, untargeted]
    choices. IN and OUT, updated as :meth:`Delivery.record` would: ``spend``, the users'
    lists (``head``, ``tail``, ``hist``: :class:`HistoryLists`; ``ev_lab`` the (campaign,
    creative) label of each impression, ``n_ev[0]`` the entries used) and the history's
    horizon (``horizon[0]``; ``now_ms`` the wall clock it never passes). OUT: ``out``
    (:class:`ReplayOut`); ``out.camp[i] = -1`` is the house ad (creative
    ``out.k[i]`` of ``n_house``).
    """
    hash_state = np.empty(8, dtype=np.uint64)
    hash_words = np.empty(16, dtype=np.uint64)
    hash_block = np.zeros(128, dtype=np.uint8)
    n_c = camps.start.shape[0]
    ok = np.zeros(n_c, dtype=np.bool_)
    cand = np.empty(n_c, dtype=np.int64)
    sc = np.empty(n_c)
    p_scratch = np.empty(n_c)
    seen = np.full(n_c, -1, dtype=np.int64)
    no_hits = np.zeros(1, dtype=np.bool_)  # the untargeted path reads no profile
    no_ctr = np.zeros(1)
    max_k = 1
    for c in range(n_c):
        max_k = max(max_k, caps.cre_off[c + 1] - caps.cre_off[c])
    ks = np.empty(max_k, dtype=np.int64)
    for i in range(mode.shape[0]):
        t = ts[i]
        u = user_index[i] if mode[i] != MODE_UNRECORDED else -1
        _open(t, ctx_ok[context_row[i]], camps, spend, ok)
        user_head = head[u] if u >= 0 else -1
        if any_caps and user_head >= 0:
            _apply_caps(t, user_head, caps, hist, horizon[0], ok, seen, i, ks)
        reason_code = reason[i]
        path = PATH_UNTARGETED
        n = 0
        if mode[i] == MODE_TARGETED:
            row = profile_row[i]
            n = _candidates(PATH_TARGETED, ok, camps.targeted, camps.rule, hits[row], cand)
            if n > 0:
                path = PATH_TARGETED
                _score(cand, n, path, camps, ctr[row], sc)
            else:
                reason_code = reason_no_eligible
        if path == PATH_UNTARGETED:
            n = _candidates(path, ok, camps.targeted, camps.rule, no_hits, cand)
            _score(cand, n, path, camps, no_ctr, sc)
        out.targeted[i] = path == PATH_TARGETED
        out.camp[i] = -1
        out.record[i] = False
        out.n_eligible[i] = 0
        if n > 0:
            u_choose = 0.0
            # greedy never reads it; one candidate needs none
            if policy_kind[path] != POLICY_GREEDY and n > 1:
                u_choose = _hash_one(choose_prefix, rid_data, rid_off[i], rid_off[i + 1],
                                     hash_state, hash_words, hash_block)
            a, p = _policy(policy_kind[path], policy_param[path], sc, n, u_choose, p_scratch)
            c = cand[a]
            if mode[i] == MODE_UNRECORDED:
                n_creatives = caps.cre_off[c + 1] - caps.cre_off[c]
                for k in range(n_creatives):
                    ks[k] = k
            else:
                n_creatives = creatives_ok(c, t, user_head if any_caps else -1, caps, hist,
                                           horizon[0], ks)
            out.n_eligible[i] = n
            if n_creatives > 0:
                k = ks[0]
                if n_creatives > 1:
                    v = _hash_one(creative_prefix, rid_data, rid_off[i], rid_off[i + 1],
                                  hash_state, hash_words, hash_block)
                    k = ks[min(int(v * n_creatives), n_creatives - 1)]
                price = bid[c] if is_cpm[c] else sc[a]
                out.camp[i] = c
                out.k[i] = k
                out.prop[i] = p / n_creatives
                out.score[i] = sc[a]
                out.price[i] = price
                out.reason[i] = reason_code
                if mode[i] != MODE_UNRECORDED:
                    out.record[i] = True
                    if count:
                        spend[camps.slot[c]] += price / 1000.0
                        if max_window > 0 and u >= 0 and caps.has_caps[c]:
                            e = n_ev[0]
                            n_ev[0] += 1
                            hist.t[e] = t
                            hist.camp[e] = c
                            hist.cre[e] = caps.cre_off[c] + k
                            ev_lab[e] = caps.cre_off[c] + k
                            hist.next[e] = -1
                            if head[u] < 0:
                                head[u] = e
                            else:
                                hist.next[tail[u]] = e
                            tail[u] = e
                            # the horizon: the latest impression (never ahead of the wall
                            # clock) less the longest cap window; older ones never count
                            horizon[0] = max(horizon[0], min(t, now_ms) - max_window)
                            while head[u] >= 0 and hist.t[head[u]] <= horizon[0]:
                                head[u] = hist.next[head[u]]
                            if head[u] < 0:
                                tail[u] = -1
        if out.camp[i] < 0:  # the house ad; its price and score are filled by the caller
            out.reason[i] = reason_no_fill if to_no_fill[reason_code] else reason_code
            out.targeted[i] = False
            out.k[i] = 0
            if n_house > 1:
                v = _hash_one(creative_prefix, rid_data, rid_off[i], rid_off[i + 1], hash_state,
                              hash_words, hash_block)
                out.k[i] = min(int(v * n_house), n_house - 1)

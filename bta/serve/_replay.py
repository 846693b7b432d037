"""The vectorized replay behind :meth:`bta.serve.engine.Engine.decide_batch`.

Per chunk of requests: parsing (:func:`_frame_columns`, :func:`_request_columns`), arm
hashing, the privacy gate, profile reads and scoring (:class:`_ProfileTable`) run vectorized;
budgets, pacing, caps and the choice (sequential state) run in one compiled pass
(:func:`bta.serve._kernels.replay`) over the frequency-cap history (:class:`_History`). The
result equals a loop of :meth:`~bta.serve.engine.Engine.decide` over the same requests.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bta.privacy import GATE_OK
from bta.serve import _kernels as K
from bta.serve.campaigns import CONTEXT_FIELDS
from bta.serve._request import (
    MAX_REQUEST_ID_CHARS,
    _CTX_FIELD_INDEX, _TS_MAX_MS, _TS_MIN_MS, NO_CONTEXT, _absent, _check_consent, _ctx_values,
    _now_ms, _parse, _request_id_ok, _safe_request_id, _user_key, request_profile,
)
from bta.serve._snapshot import _PRICING, REASONS, _segments_for, _Snapshot, ctx_mask
from bta.schema import decision_columns_frame, decisions_frame
from bta.serve.delivery import _SWEEP, Delivery
from bta.serve.store import Profile, ProfileBlock, ProfileStore

__all__ = ["decide_batch"]


class Engine(Protocol):
    """What the replay reads of its :class:`~bta.serve.engine.Engine` (the facade that calls
    it): the configuration, the delivery state, the store, and ``decide`` for policies of
    the caller's own."""

    snapshot: _Snapshot
    delivery: Delivery
    store: ProfileStore | None
    count_on: str

    def decide(self, request: Any) -> Any: ...

_REASON_CODE = {r: i for i, r in enumerate(REASONS)}
_TO_NO_FILL = np.array([r in ("targeted", "control", "holdout") for r in REASONS])
_SCORE_BLOCK = 4_096  # rows per scorer call: bounds the dense feature block's memory


def _gate_code(gate: str) -> int:
    """The reason code of a privacy gate's verdict (``"ok"``: targeted)."""
    return _REASON_CODE["targeted" if gate == GATE_OK else f"fallback:{gate}"]


def decide_batch(engine: Engine, requests: Any, chunk: int) -> pd.DataFrame:
    """The decisions of :meth:`Engine.decide_batch` (``chunk`` already validated)."""
    snap = engine.snapshot  # one configuration for the whole replay
    if min(snap.pol_kind) < 0:
        # a policy of the caller's own: only its Python choose() knows what it does
        it = requests.to_dict("records") if isinstance(requests, pd.DataFrame) else requests
        return decisions_frame([engine.decide(r).as_dict() for r in it])
    plan = _Plan(snap)
    # distinct profiles kept scored: a bounded table (at least one chunk's worth)
    row_bytes = max(snap.n_rules, 1) + 8 * max(len(snap.scorers), 1) + _PROFILE_ROW_OVERHEAD
    table = _ProfileTable(engine, snap, max(chunk, min(_PROFILE_TABLE_MAX,
                                                       _PROFILE_TABLE_BYTES // row_bytes)))
    hist = _History(engine, snap, plan)  # the frequency-cap lists, kept across chunks
    parts = []
    if isinstance(requests, pd.DataFrame):
        for a in range(0, len(requests), chunk):
            cols = _frame_columns(requests.iloc[a:a + chunk])
            parts.append(_run_chunk(engine, snap, plan, table, hist, cols))
    else:
        it = iter(requests)
        while True:
            batch = list(itertools.islice(it, chunk))
            if not batch:
                break
            parts.append(_run_chunk(engine, snap, plan, table, hist, _request_columns(batch)))
    if not parts:
        return decisions_frame([])
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


class _Plan:
    """A snapshot's campaigns as the flat arrays the replay kernel reads."""

    def __init__(self, snap: _Snapshot):
        cs = snap.campaigns
        self.cre_off = snap.caps.cre_off
        self.is_cpm = snap.pricing == _PRICING["cpm"]
        self.pol = np.array(snap.pol_kind, dtype=np.int64)
        self.pol_param = np.array(snap.pol_param, dtype=np.float64)
        f = snap.fallback
        self.creative_ids = np.array([cr.id for c in cs for cr in c.creatives]
                                     + [cr.id for cr in f.creatives], dtype=object)
        self.campaign_ids = np.array([c.id for c in cs] + [f.id], dtype=object)
        self.n_house = len(f.creatives)
        self.any_caps = snap.any_caps
        # creative ids -> codes (the creative caps compare ids, across campaigns and swaps)
        self.cre_code = snap.cre_code
        self.labels = [(c.id, cr.id) for c in cs for cr in c.creatives]
        # (campaign id, creative id) of a history entry -> (campaign, creative code, label)
        self.pair_meta = {(c.id, cr.id): (i, int(self.cre_off[i]) + k, int(self.cre_off[i]) + k)
                          for i, c in enumerate(cs) for k, cr in enumerate(c.creatives)}


class _Columns:
    """One chunk of requests, parsed into columns (see :func:`_parse` for the rules)."""

    __slots__ = ("n", "bad", "user", "ukey", "ts", "rid", "consent", "ctx", "ctx_keys",
                 "profile")


def _request_columns(batch: list) -> _Columns:
    n = len(batch)
    cols = _Columns()
    cols.n = n
    bad = np.zeros(n, dtype=bool)
    user = np.empty(n, dtype=object)
    ts = np.empty(n, dtype=np.int64)
    rid = np.empty(n, dtype=object)
    consent: list = [None] * n
    profile: list = [None] * n
    ukey = np.empty(n, dtype=object)
    ctx = np.empty(n, dtype=np.int64)
    keys: dict = {}
    for i, r in enumerate(batch):
        try:
            u, uk, t, q, c, k, p = _parse(r)
        except Exception:  # noqa: BLE001 - as decide: a malformed request falls back
            bad[i] = True
            u, uk, t, q, c, k, p = (None, None, _now_ms(), _safe_request_id(r), None, NO_CONTEXT,
                                    None)
        user[i], ukey[i], ts[i], rid[i], consent[i], profile[i] = u, uk, t, q, c, p
        ctx[i] = keys.setdefault(k, len(keys))
    cols.bad, cols.user, cols.ukey, cols.ts, cols.rid, cols.ctx = bad, user, ukey, ts, rid, ctx
    cols.ctx_keys = list(keys)
    cols.consent = consent if any(c is not None for c in consent) else None
    cols.profile = profile if any(p is not None for p in profile) else None
    return cols


def _frame_columns(df: pd.DataFrame) -> _Columns:
    """Columns of a DataFrame chunk, vectorized where the dtypes allow; equal to parsing
    ``df.to_dict("records")`` row by row."""
    n = len(df)
    names = set(df.columns)
    ts_col = df["ts"] if "ts" in names else None
    uid = df["user_id"] if "user_id" in names else None
    fast = uid is not None and (
        ts_col is None or ts_col.dtype.kind in "iuM") and "context" not in names
    if not fast:
        return _request_columns(df.to_dict("records"))
    cols = _Columns()
    cols.n = n
    bad = np.zeros(n, dtype=bool)
    if uid.dtype.kind in "iu":
        user = uid.to_numpy()
        ukey = pa.array(user.astype(np.int64) if uid.dtype.kind == "i" else user).cast(
            pa.string()).to_numpy(zero_copy_only=False).astype(object)
    else:  # the request path's rule per id (_user_key), as parsing the rows would
        user = uid.to_numpy(dtype=object)
        keys = [_user_key(u) for u in user.tolist()]
        ukey = np.empty(n, dtype=object)
        ukey[:] = keys
        bad |= np.fromiter((k is None for k in keys), dtype=bool, count=n)
    if ts_col is None:
        ts = np.full(n, _now_ms(), dtype=np.int64)
    elif ts_col.dtype.kind in "iu":
        raw = ts_col.to_numpy()
        # compared before the cast: a uint64 above the int64 range must not wrap around
        bad |= (raw > _TS_MAX_MS) | (raw < _TS_MIN_MS if raw.dtype.kind == "i" else False)
        ts = raw.astype(np.int64)
    else:
        s = ts_col
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        raw = s.to_numpy()  # in the column's own unit: a coarse one holds far-off years
        unit, step = np.datetime_data(raw.dtype)
        ticks = raw.view(np.int64)
        nat = ticks == np.iinfo(np.int64).min
        per_ms = {"ns": 1_000_000, "us": 1_000, "ms": 1}.get(unit)
        if per_ms is None or step != 1:  # seconds or coarser: exact in milliseconds, if in range
            ms_per = int(np.timedelta64(step, unit) // np.timedelta64(1, "ms"))
            big = np.abs(ticks) > _TS_MAX_MS // ms_per
            ts = np.where(big, 0, ticks) * ms_per
            bad |= big
        else:
            ts = ticks // per_ms  # floor, as to_epoch_ms
        bad |= nat | (ts < _TS_MIN_MS) | (ts > _TS_MAX_MS)
    if "request_id" in names:
        rid = df["request_id"].to_numpy(dtype=object).copy()
        try:  # text columns: the checks in Arrow
            arr = pa.array(rid, type=pa.string(), from_pandas=True)
            length = pc.fill_null(pc.utf8_length(arr), 0).to_numpy(zero_copy_only=False)
            fix = np.flatnonzero((length < 1) | (length > MAX_REQUEST_ID_CHARS))
        except (pa.ArrowException, UnicodeError):
            fix = np.arange(n)
        for i in fix.tolist():
            q = rid[i]
            if _request_id_ok(q):
                continue
            if not _absent(q):
                bad[i] = True
            rid[i] = uuid.uuid4().hex
    else:
        rid = np.array([uuid.uuid4().hex for _ in range(n)], dtype=object)
    consent = None
    if "consent" in names:
        consent = df["consent"].to_numpy(dtype=object).tolist()
        for i, c in enumerate(consent):
            try:
                consent[i] = _check_consent(c)
            except ValueError:  # not a mapping, or over the bounds: as parsing the row
                bad[i] = True
                consent[i] = None
        if not any(c is not None for c in consent):
            consent = None
    profile = None
    if "profile" in names:
        profile = [None if _absent(p) else p for p in df["profile"].to_numpy(dtype=object)]
        if not any(p is not None for p in profile):
            profile = None
    # context: factorize each field column, then the combinations
    fields = [f for f in CONTEXT_FIELDS if f in names]
    if fields:
        # rows -> distinct contexts, one field at a time (codes stay below n * (n + 1))
        ctx = np.zeros(n, dtype=np.int64)
        keys = [NO_CONTEXT]
        for f in fields:
            fi = _CTX_FIELD_INDEX[f]
            try:
                fc, uniq = pd.factorize(df[f], use_na_sentinel=True)
                uniq = uniq.tolist()
                if not all(type(v) is str for v in uniq):
                    raise TypeError  # factorize equates 1, 1.0 and True; _ctx_values does not
                vals = [_ctx_or_bad(v) for v in uniq]
            except TypeError:  # lists or mixed types: normalize row by row
                seen: dict = {}
                fc = np.array([-1 if _absent(v) else seen.setdefault(_ctx_or_bad(v), len(seen))
                               for v in df[f].to_numpy(dtype=object).tolist()], dtype=np.int64)
                vals = list(seen)
            # values over the bounds: the rows are bad requests, as parsing them would say
            over = [j for j, v in enumerate(vals) if v is _OVER]
            if over:
                bad |= np.isin(fc, over)
                vals = [None if v is _OVER else v for v in vals]
            width = len(vals) + 1
            ctx, combos = pd.factorize(ctx * width + (fc.astype(np.int64) + 1))
            new_keys = []
            for code in combos.tolist():
                key = keys[code // width]
                j = code % width - 1
                if j >= 0:
                    key = key[:fi] + (vals[j],) + key[fi + 1:]
                new_keys.append(key)
            keys = new_keys
        ctx = ctx.astype(np.int64)
    else:
        ctx = np.zeros(n, dtype=np.int64)
        keys = [NO_CONTEXT]
    if bad.any():
        keys.append(NO_CONTEXT)
        ctx[bad] = len(keys) - 1
        ts = ts.copy()
        ts[bad] = _now_ms()
        ukey = ukey.copy()
        ukey[bad] = None
        user = user.astype(object)
        user[bad] = None
    cols.bad, cols.user, cols.ukey, cols.ts, cols.rid = bad, user, ukey, ts, rid
    cols.ctx, cols.ctx_keys, cols.consent, cols.profile = ctx, keys, consent, profile
    return cols



_OVER = object()  # a context value over the request bounds (see _ctx_or_bad)


def _ctx_or_bad(v: Any) -> Any:
    """:func:`_ctx_values`, with a value over the bounds as the marker ``_OVER``."""
    try:
        return _ctx_values(v)
    except ValueError:
        return _OVER


def _utf8(strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one UTF-8 byte buffer and offsets (``surrogatepass``, as :func:`hash_unit`)."""
    try:
        arr = pa.array(strings, type=pa.string())
    except (pa.ArrowException, UnicodeError):  # lone surrogates: encode them as hash_unit does
        parts = [s.encode("utf-8", "surrogatepass") for s in strings.tolist()]
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in parts])]).astype(np.int64)
        return np.frombuffer(b"".join(parts), dtype=np.uint8), offsets
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=len(arr) + 1,
                            offset=arr.offset * 4).astype(np.int64)
    # read-only either way: the kernels are compiled for one array type
    data = np.frombuffer(bufs[2] if bufs[2] is not None else b"", dtype=np.uint8)
    return data, offsets


def _bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)


def _hash_many(prefix: str, strings: np.ndarray) -> np.ndarray:
    """``hash_unit(prefix + s)`` for each string, in one kernel call."""
    out = np.empty(len(strings))
    if len(strings):
        data, offsets = _utf8(strings)
        K.hash_units(_bytes(prefix), data, offsets, out)
    return out


def _run_chunk(engine: Engine, snap: _Snapshot, plan: _Plan, table: "_ProfileTable",
               hist: "_History", cols: _Columns) -> pd.DataFrame:
    n = cols.n
    exp = snap.experiment
    ok_rows = ~cols.bad
    # arms: the experiment's hash of (salt, user id), vectorized
    arm_names = exp.arm_names
    arm = np.full(n, arm_names.index(exp.control), dtype=np.int64)
    idx = np.flatnonzero(ok_rows)
    ucodes, ukeys = pd.factorize(cols.ukey[idx])  # a user's arm is hashed once per chunk
    arm[idx] = exp.arm_codes(_hash_many(f"{exp.salt}:", np.asarray(ukeys, dtype=object)))[ucodes]
    targeted_arm = np.array([exp.is_targeted(x) for x in arm_names])[arm] & ok_rows
    reason = np.where(arm == len(arm_names) - 1, _REASON_CODE["holdout"],
                      _REASON_CODE["control"]).astype(np.int64)
    reason[cols.bad] = _REASON_CODE["fallback:bad_request"]
    # the privacy gate: the policy's own serving_gate, once per distinct user for the rows
    # without consent signals (the user's registries decide then), per row with them
    privacy = snap.privacy
    t_rows = np.flatnonzero(targeted_arm)
    users, ukeys = cols.user, cols.ukey
    own = np.zeros(n, dtype=bool)
    if cols.consent is not None:
        own[[i for i in t_rows.tolist() if cols.consent[i] is not None]] = True
    plain = t_rows[~own[t_rows]]
    if plain.size:
        codes, uniq = pd.factorize(ukeys[plain])
        verdict = np.array([_gate_code(privacy.serving_gate(k, None)) for k in uniq.tolist()],
                           dtype=np.int64)
        reason[plain] = verdict[codes]
    for i in np.flatnonzero(own).tolist():
        reason[i] = _gate_code(privacy.serving_gate(users[i], cols.consent[i]))
    # profiles: the request's own, else the store's (each distinct (user, ts) read once)
    need = np.flatnonzero(reason == _REASON_CODE["targeted"])
    profile_row = np.full(n, -1, dtype=np.int64)
    table.begin(n)
    if cols.profile is not None:
        own = [i for i in need.tolist() if cols.profile[i] is not None]
        for i in own:
            try:
                p = request_profile(cols.profile[i], engine.store, snap.store_segments)
            except Exception:  # noqa: BLE001 - as decide: a malformed profile falls back
                reason[i] = _REASON_CODE["fallback:bad_profile"]
                continue
            profile_row[i] = table.add_own(p)
        need = np.array([i for i in need.tolist() if cols.profile[i] is None], dtype=np.int64)
    if len(need):
        got = table.lookup(users[need], cols.ts[need])
        profile_row[need] = np.maximum(got, -1)
        reason[need[got == _NO_PROFILE]] = _REASON_CODE["fallback:no_profile"]
        reason[need[got == _FAILED]] = _REASON_CODE["fallback:store_error"]
    table.score()
    # a profile with a NaN or infinite value (carried or stored): as decide, the one rule
    # (K.all_finite) applied in the table
    has = np.flatnonzero(profile_row >= 0)
    nonfinite = has[~table.finite[profile_row[has]]]
    reason[nonfinite] = _REASON_CODE["fallback:bad_profile"]
    profile_row[nonfinite] = -1
    hits, ctr = table.hits, table.ctr
    mode = np.where(cols.bad, K.MODE_UNRECORDED, K.MODE_UNTARGETED).astype(np.int8)
    mode[profile_row >= 0] = K.MODE_TARGETED
    # context table and hashes of the request ids
    n_c = len(snap.campaigns)
    if snap.has_context:
        ctx_ok = np.array([ctx_mask(snap, k) for k in cols.ctx_keys], dtype=bool)
    else:
        ctx_ok = np.ones((len(cols.ctx_keys), n_c), dtype=bool)
    rid_data, rid_off = _utf8(cols.rid)
    # the sequential pass, under the lock that guards spend and caps
    out = K.ReplayOut(camp=np.empty(n, dtype=np.int64), k=np.zeros(n, dtype=np.int64),
                      targeted=np.empty(n, dtype=bool), prop=np.zeros(n),
                      n_eligible=np.empty(n, dtype=np.int64), score=np.zeros(n),
                      reason=np.empty(n, dtype=np.int64), price=np.zeros(n),
                      record=np.empty(n, dtype=bool))
    count = engine.count_on == "decision"
    horizon = np.zeros(1, dtype=np.int64)
    with engine.delivery.lock:
        hist.begin(cols, n)
        horizon[0] = engine.delivery.history.horizon
        K.replay(mode, reason, cols.ts, hist.ucode, cols.ctx, profile_row, rid_data, rid_off,
                 _bytes(f"{snap.version}:choose:"), _bytes(f"{snap.version}:creative:"),
                 np.int64(plan.n_house), ctx_ok,
                 hits, ctr, snap.camps, plan.is_cpm, snap.bid, snap.caps, plan.any_caps,
                 np.int64(snap.max_cap_window), plan.pol, plan.pol_param, count, _TO_NO_FILL,
                 np.int64(_REASON_CODE["fallback:no_eligible"]),
                 np.int64(_REASON_CODE["fallback:no_fill"]), engine.delivery.spend_arr,
                 hist.head, hist.tail, hist.lists(), hist.ev_lab, hist.n_ev, horizon,
                 np.int64(_now_ms()), out)
        if count and plan.any_caps:
            engine.delivery.history.horizon = int(horizon[0])
            hist.write_back(out.record & (out.camp >= 0)
                            & snap.has_caps[np.maximum(out.camp, 0)] & (hist.ucode >= 0))
    # the house ad where nothing (else) served
    house = out.camp < 0
    n_cur = int(plan.cre_off[-1])
    cre = np.where(house, n_cur + out.k, plan.cre_off[np.maximum(out.camp, 0)] + out.k)
    out.prop[house] = 1.0 / plan.n_house
    out.score[house] = snap.house_score
    out.price[house] = snap.house_price
    if not count:
        rec = np.flatnonzero(out.record & ~house)[-engine.delivery.max_pending:]
        for i in rec.tolist():
            c = snap.campaigns[out.camp[i]]
            engine.delivery.hold(cols.rid[i], ukeys[i], int(cols.ts[i]), c,
                                 plan.creative_ids[cre[i]], float(out.price[i]),
                                 snap.max_cap_window)
    text = (cols.rid,
            _take(arm_names, arm), _take(plan.creative_ids, cre),
            _take(plan.campaign_ids, np.where(house, n_c, out.camp)),
            _take([snap.version], np.zeros(n, dtype=np.int64)), _take(REASONS, out.reason))
    rid, arm_t, creative, campaign, version, reason_t = text
    return decision_columns_frame({
        "ts": cols.ts, "request_id": rid, "user_id": cols.ukey, "arm": arm_t,
        "creative_id": creative, "campaign_id": campaign, "targeted": out.targeted,
        "propensity": out.prop, "n_eligible": out.n_eligible, "score": out.score,
        "price": out.price,
        "policy_version": version, "reason": reason_t})


_PROFILE_TABLE_MAX = 131_072  # distinct profiles a replay keeps scored at once (memory bound)
_PROFILE_TABLE_BYTES = 64 << 20  # ... and the memory their hits and scores may take
_PROFILE_ROW_OVERHEAD = 200  # bytes of the (user, ts) -> row entry of the index dict
_NO_PROFILE = -2
_FAILED = -3


class _ProfileTable:
    """Targeting-rule hits and model click probabilities per distinct (user, ts) profile of a
    replay, kept across its chunks (a user's requests at one time read and score the profile
    once) and bounded: when a chunk might overflow ``max_rows`` the table starts afresh."""

    def __init__(self, engine: Engine, snap: _Snapshot, max_rows: int):
        self.engine, self.snap, self.max_rows = engine, snap, max_rows
        self.n_rules = max(snap.n_rules, 1)
        self.n_sc = max(len(snap.scorers), 1)
        self._reset()

    def _reset(self) -> None:
        # (user, time) -> row: users and times get codes, a pair the key code << 32 | code,
        # and keys are looked up a chunk at a time in a hash index (no Python loop per pair)
        self.user_code: dict = {}
        self.time_code: dict = {}
        self.keys = np.zeros(0, dtype=np.int64)
        self.key_rows = np.zeros(0, dtype=np.int64)  # a row, or _NO_PROFILE
        self.key_index: pd.Index | None = None
        self.hits = np.zeros((0, self.n_rules), dtype=bool)
        self.ctr = np.zeros((0, self.n_sc))
        self.finite = np.zeros(0, dtype=bool)  # per row: every value finite (K.all_finite)
        self.n = 0
        # profiles added since the last score(): (lengths, indices, values, segment flags
        # aligned with the snapshot's store_segments), one part per request profile or read
        self.pending: list = []

    def begin(self, n_rows: int) -> None:
        """Make room for a chunk of ``n_rows`` requests (each adds at most one profile)."""
        # the keys of pairs without a profile count too: they are not bounded by the rows
        if self.n + n_rows > self.max_rows or self.keys.shape[0] + n_rows > 2 * self.max_rows:
            self._reset()

    def add_own(self, profile: Profile) -> int:
        names = self.snap.store_segments
        self.pending.append((np.array([profile.indices.shape[0]], dtype=np.int64),
                             profile.indices, profile.values,
                             _segments_for(profile, names)[None, :]))
        self.n += 1
        return self.n - 1

    def _add_block(self, block: ProfileBlock) -> np.ndarray:
        """Add a block's present profiles; their table rows (``_NO_PROFILE`` for the rest)."""
        present = block.present
        rows = np.full(present.shape[0], _NO_PROFILE, dtype=np.int64)
        if block.failed is not None:
            rows[block.failed] = _FAILED
        keep = np.flatnonzero(present)
        if not keep.size:
            return rows
        rows[keep] = self.n + np.arange(keep.size)
        self.n += keep.size
        lo, hi = block.indptr[keep], block.indptr[keep + 1]
        lengths = (hi - lo).astype(np.int64)
        if keep.size == present.shape[0]:
            sel = slice(block.indptr[0], block.indptr[-1])
            indices, values = block.indices[sel], block.values[sel]
        else:  # the entries of the kept rows only
            pos = np.repeat(lo - np.cumsum(lengths) + lengths, lengths) + np.arange(
                int(lengths.sum()))
            indices, values = block.indices[pos], block.values[pos]
        names = self.snap.store_segments
        have = block.segment_names
        segs = block.segments[keep]
        if not (have is names or have == names):
            # the store's book changed since the last swap(): match by name, as _segments_for
            pos_of = {x: i for i, x in enumerate(have)}
            out = np.zeros((keep.size, len(names)), dtype=bool)
            for j, x in enumerate(names):
                i = pos_of.get(x)
                if i is not None and i < segs.shape[1]:
                    out[:, j] = segs[:, i]
            segs = out
        self.pending.append((lengths, indices, values, segs))
        return rows

    def lookup(self, users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Table rows of the (user, ts) profiles: read from the store those not yet in it
        (one ``get_block`` call with a time per user); ``_NO_PROFILE`` / ``_FAILED`` where
        there is none or the read failed (failures are not kept: a later chunk reads
        again). Users a block marks ``failed`` fail; a ``get_block`` that raises is read
        again user by user (a shard that is down fails its users' reads only)."""
        ucode, uniq_u = pd.factorize(users)
        tcode, uniq_t = pd.factorize(ts)
        uniq_u, uniq_t = uniq_u.tolist(), uniq_t.tolist()
        key = (_codes(self.user_code, uniq_u)[ucode] << 32) | _codes(self.time_code,
                                                                     uniq_t)[tcode]
        pairs, first, inv = np.unique(key, return_index=True, return_inverse=True)
        if self.key_index is None:
            self.key_index = pd.Index(self.keys)
        pos = self.key_index.get_indexer(pairs)
        res = np.where(pos >= 0, self.key_rows[np.maximum(pos, 0)] if len(self.keys) else 0,
                       _FAILED)
        todo = np.flatnonzero(pos < 0)
        if not todo.size:
            return res[inv.ravel()]
        at = first[todo]  # a request of each pair to read
        us = [uniq_u[i] for i in ucode[at].tolist()]
        tt = [uniq_t[i] for i in tcode[at].tolist()]
        store = self.engine.store
        try:
            block = store.get_block(us, np.array(tt, dtype=np.int64))
        except Exception:  # noqa: BLE001 - read user by user: a failure fails one read
            block = None
        if block is not None:
            got = self._add_block(block)
        else:
            got = np.array([self._read_one(store, u, t) for u, t in zip(us, tt)],
                           dtype=np.int64)
        res[todo] = got
        keep = got != _FAILED
        self.keys = np.concatenate([self.keys, pairs[todo][keep]])
        self.key_rows = np.concatenate([self.key_rows, got[keep]])
        self.key_index = None
        return res[inv.ravel()]

    def _read_one(self, store: Any, user: Any, t: int) -> int:
        try:
            p = store.get(user, int(t))
        except Exception:  # noqa: BLE001 - an outage fails this read only
            return _FAILED
        return _NO_PROFILE if p is None else self.add_own(p)

    def score(self) -> None:
        """Rule hits (one kernel call) and model scores (block-wise) of the profiles added
        since the last call."""
        new = self.pending
        self.pending = []
        n_old = self.hits.shape[0]
        if not new:
            return
        snap = self.snap
        cap = max(self.n, 2 * n_old)  # grow geometrically: appends stay amortized O(1)
        hits = np.zeros((cap, self.n_rules), dtype=bool)
        ctr = np.zeros((cap, self.n_sc))
        finite = np.zeros(cap, dtype=bool)
        hits[:n_old] = self.hits
        ctr[:n_old] = self.ctr
        finite[:n_old] = self.finite
        self.hits, self.ctr, self.finite = hits[: self.n], ctr[: self.n], finite[: self.n]
        lengths = np.concatenate([part[0] for part in new])
        n_p = lengths.shape[0]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.concatenate([np.asarray(part[1]) for part in new]).astype(np.int32)
        values = np.concatenate([np.asarray(part[2]) for part in new]).astype(np.float64)
        K.finite_rows(indptr, values, self.finite[n_old:])
        if snap.n_rules:
            segs = np.concatenate([part[3] for part in new]) if len(new) > 1 else new[0][3]
            segs = np.ascontiguousarray(segs, dtype=bool)
            K.eval_rules_batch(snap.rules, segs, indptr, indices, values,
                               np.int64(len(self.engine.store.feature_names)),
                               self.hits[n_old:])
        for s, sc in enumerate(snap.scorers):
            if not (snap.scorer_of == s).any():
                continue
            fmap, default = snap.scorer_maps[s], snap.scorer_defaults[s]
            for a in range(0, n_p, _SCORE_BLOCK):
                b = min(n_p, a + _SCORE_BLOCK)
                X = np.empty((b - a, default.shape[0]))
                X[:] = default
                lo, hi = indptr[a], indptr[b]
                rows = np.repeat(np.arange(b - a), lengths[a:b])
                j = fmap[indices[lo:hi]]
                m = j >= 0
                X[rows[m], j[m]] = values[lo:hi][m]
                if hasattr(sc, "predict"):
                    p = np.asarray(sc.predict(X), dtype=np.float64).reshape(b - a, -1)[:, 0]
                else:
                    p = np.array([float(np.ravel(sc.predict_one(x))[0]) for x in X])
                # as decide: a non-finite probability counts as 0
                self.ctr[n_old + a:n_old + b, s] = np.where(np.isfinite(p), p, 0.0)


_FOREIGN = 1 << 40  # creative codes of ids no current campaign has start here


_HISTORY_MAX_EVENTS = 1 << 20  # history entries kept across chunks (40 MiB) before a rebuild
_HISTORY_MAX_USERS = 1 << 19   # ... and users (their index dict is the larger cost)
_I64 = np.int64


class _History:
    """The frequency-cap history of a replay's users as linked lists for the replay kernel.

    Kept across the chunks of a replay: a chunk loads from the engine only the users new to
    the replay, and :meth:`write_back` keeps the engine's history equal to the lists. The
    lists are rebuilt from the engine when something else changed its history between two
    chunks (a ``decide``, a win notice or an erasure moved ``engine.delivery.version``), when
    the engine's size bound forgot a user at a write-back, and when they outgrow their bounds
    (entries of impressions past the horizon stay in the arrays until then; the kernel never
    counts them). Users are the canonical ids of the requests (``_Columns.ukey``)."""

    def __init__(self, engine: Engine, snap: _Snapshot, plan: _Plan):
        self.engine, self.snap, self.plan = engine, snap, plan
        self.ucode = np.zeros(0, dtype=_I64)
        self._reset()

    def _reset(self) -> None:
        self.version: int | None = None
        self.code: dict = {}  # user -> code (row of head / tail)
        self.users: list = []
        self.head = np.full(1, -1, dtype=_I64)
        self.tail = np.full(1, -1, dtype=_I64)
        self.labels = list(self.plan.labels)
        self.meta = self.plan.pair_meta  # copied before a foreign pair is added
        self.foreign: dict = {}
        self.ev_t = np.zeros(1, dtype=_I64)
        self.ev_camp = np.full(1, -1, dtype=_I64)
        self.ev_cre = np.full(1, -1, dtype=_I64)
        self.ev_lab = np.full(1, -1, dtype=_I64)
        self.ev_next = np.full(1, -1, dtype=_I64)
        self.n_ev = np.zeros(1, dtype=_I64)

    def begin(self, cols: _Columns, n: int) -> None:
        """Codes of a chunk's users (``ucode``, -1 for malformed requests) and room for ``n``
        new entries; called holding the engine's runtime lock."""
        self.ucode = ucode = np.full(n, -1, dtype=_I64)
        plan, engine = self.plan, self.engine
        ok = np.flatnonzero(~cols.bad)
        if not (len(ok) and plan.any_caps):  # without caps no history is read or written
            return
        if (self.version != engine.delivery.version
                or int(self.n_ev[0]) + n + 1 > max(_HISTORY_MAX_EVENTS, 2 * n)
                or len(self.users) + n > max(_HISTORY_MAX_USERS, 2 * n)):
            self._reset()
        codes, uniq = pd.factorize(cols.ukey[ok])
        uniq_l = uniq.tolist()
        first = len(self.users)
        ucodes = _codes(self.code, uniq_l)
        new = np.flatnonzero(ucodes >= first)  # codes given in order from ``first`` on
        if new.size:
            new_users = [uniq_l[j] for j in new.tolist()]
            self.users.extend(new_users)
            if len(self.users) > self.head.shape[0]:
                size = max(len(self.users), 2 * self.head.shape[0])
                self.head = _grown(self.head, size)
                self.tail = _grown(self.tail, size)
            self._load(new_users, first, n)
        else:
            self._room(n)
        ucode[ok] = ucodes[codes]
        self.version = engine.delivery.version

    def lists(self) -> K.HistoryLists:
        """The lists' arrays as the kernels read them (the arrays themselves: written in
        place)."""
        return K.HistoryLists(self.ev_t, self.ev_camp, self.ev_cre, self.ev_next)

    def _room(self, n: int) -> None:
        need = int(self.n_ev[0]) + n + 1
        if need > self.ev_t.shape[0]:
            size = max(need, 2 * self.ev_t.shape[0])
            self.ev_t = _grown(self.ev_t, size, 0)
            self.ev_camp, self.ev_cre, self.ev_lab, self.ev_next = (
                _grown(a, size) for a in (self.ev_camp, self.ev_cre, self.ev_lab, self.ev_next))

    def _load(self, users: list, first: int, n: int) -> None:
        """Append the engine's history of ``users`` (codes from ``first`` on), with room for
        ``n`` more entries."""
        old = []
        history = self.engine.delivery.history
        held = history.users
        if held:
            if len(held) < len(users):  # look the (few) users with a history up
                keys = list(held)
                pos = pd.Index(users, dtype=object).get_indexer(pd.Index(keys, dtype=object))
                found = sorted((j, keys[k]) for k, j in enumerate(pos.tolist()) if j >= 0)
            else:
                found = [(j, u) for j, u in enumerate(users) if u in held]
            old = [(first + j, e) for j, u in found if (e := history.entries(u))]
        # entries as flat lists (numpy scalar stores are slow), one dict lookup per entry
        meta = self.meta
        cre_code = self.plan.cre_code
        index_of = self.snap.index_of
        t_list, m_list, lens, js = [], [], [], []
        for j, entries in old:
            js.append(j)
            lens.append(len(entries))
            for t, cid, crid in entries:
                t_list.append(t)
                m = meta.get((cid, crid))
                if m is None:  # a campaign or creative of an earlier configuration
                    code = cre_code.get(crid)
                    if code is None:  # creative caps match ids: one code per foreign id
                        code = _FOREIGN + self.foreign.setdefault(crid, len(self.foreign))
                    m = (index_of.get(cid, -1), code, len(self.labels))
                    self.labels.append((cid, crid))
                    if meta is self.plan.pair_meta:
                        meta = self.meta = dict(meta)
                    meta[(cid, crid)] = m
                m_list.append(m)
        n_new = len(t_list)
        self._room(n_new + n)
        if not n_new:
            return
        e0 = int(self.n_ev[0])
        e1 = e0 + n_new
        self.ev_t[e0:e1] = t_list
        m_arr = np.array(m_list, dtype=_I64).reshape(n_new, 3)
        self.ev_camp[e0:e1], self.ev_cre[e0:e1], self.ev_lab[e0:e1] = m_arr.T
        # each user's entries are consecutive: next = the following entry, -1 at its last
        self.ev_next[e0:e1] = np.arange(e0 + 1, e1 + 1)
        ends = e0 + np.cumsum(lens) - 1
        self.ev_next[ends] = -1
        self.head[js] = ends - np.array(lens) + 1
        self.tail[js] = ends
        self.n_ev[0] = e1

    def write_back(self, appended: np.ndarray) -> None:
        """Rebuild the engine's history of every user the chunk recorded an impression for,
        in the order of their last impression (as a loop of ``decide`` leaves it), then apply
        the history's bounds; called holding the engine's runtime lock."""
        engine = self.engine
        history = engine.delivery.history
        codes = self.ucode[appended]
        if not codes.size:
            return
        # each user once, ordered by its last impression in the chunk
        uniq, first_rev = np.unique(codes[::-1], return_index=True)
        js = uniq[np.argsort(-first_rev, kind="stable")]
        n = int(self.n_ev[0])
        ev_t, ev_lab, ev_next = (a[:n].tolist() for a in (self.ev_t, self.ev_lab, self.ev_next))
        head, labels, users = self.head, self.labels, self.users
        h = history.horizon
        for j in js.tolist():
            e = int(head[j])
            entries = []
            while e >= 0:
                if ev_t[e] > h:
                    entries.append((ev_t[e],) + labels[ev_lab[e]])
                e = ev_next[e]
            if entries:
                history.put(users[j], tuple(entries))
            else:  # impressions timed before the horizon: none counts
                history.pop(users[j])
        forgot = history.sweep(_SWEEP * int(codes.size))
        # the lists are the engine's history again: the next chunk keeps them, unless the
        # size bound forgot users they still hold
        engine.delivery.version += 1
        self.version = None if forgot else engine.delivery.version


def _codes(codes: dict, items: list) -> np.ndarray:
    """Codes of ``items`` in ``codes`` (item -> code, by Python equality), adding new ones."""
    get = codes.get
    out = np.fromiter((get(x, -1) for x in items), dtype=np.int64, count=len(items))
    new = np.flatnonzero(out < 0)
    if new.size:
        first = len(codes)
        out[new] = np.arange(first, first + new.size)
        codes.update(zip((items[j] for j in new.tolist()), range(first, first + new.size)))
    return out


def _grown(a: np.ndarray, size: int, fill: int = -1) -> np.ndarray:
    out = np.full(size, fill, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


def _take(names: Sequence[str], codes: np.ndarray) -> pa.Array:
    """``names[codes]`` as an Arrow text array (a few names, many rows: no Python strings)."""
    return pa.array(list(names), type=pa.string()).take(pa.array(codes, type=pa.int64()))

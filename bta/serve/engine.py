"""The decision Engine: per ad request, the creative to show, targeted or untargeted.

``Engine.decide(request)`` never raises on request data. Its steps:

1. parse the request (user id, time, request id, context, consent); malformed -> fallback;
2. experiment arm from a hash of (salt, user id): the control arm and the holdout get the
   untargeted choice;
3. privacy gate (opt-out, consent purposes, age) -> untargeted when it says no;
4. profile from the store; a missing profile, a store error or a blown time budget -> untargeted;
5. eligible campaigns: targeting rule on the profile, flight dates, budget and pacing,
   frequency caps;
6. score: expected eCPM = pCTR (the campaign's compiled model on the profile, or its prior)
   times the value of a click (CPC), of a conversion (CPA: pCTR x CVR x value), or the CPM bid;
7. choose with the policy (greedy, epsilon-greedy, softmax), recording the probability of the
   choice (the propensity), and count the impression against caps and budget.

The untargeted choice uses only campaigns without targeting, scored without the profile
(``prior_ctr``), with ``untargeted_policy`` (uniform rotation by default); when none is
eligible the ``fallback`` campaign (a house ad, always eligible) serves.

Configuration (campaigns, scorers, segment book, version) lives in one immutable snapshot;
:meth:`Engine.swap` replaces it with a single reference assignment, so a request sees either
the old or the new configuration, never half of each.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from bta.errors import ConfigError, UnknownNameError
from bta.events import to_epoch_ms
from bta.privacy import GATE_OK, PrivacyPolicy
from bta.segment.rules import RuleSegment
from bta.serve import _kernels as K
from bta.serve.campaigns import Campaign
from bta.serve.experiment import Experiment, hash_unit
from bta.serve.policy import Greedy, Policy, Uniform
from bta.serve.store import Profile, ProfileStore

__all__ = ["Engine", "Decision", "Request", "REASONS"]

#: reason codes a Decision can carry
REASONS = (
    "targeted", "control", "holdout", "fallback:bad_request", "fallback:opt_out",
    "fallback:no_consent", "fallback:under_age", "fallback:bad_consent", "fallback:no_profile",
    "fallback:store_error", "fallback:timeout", "fallback:no_eligible", "fallback:no_fill",
    "fallback:error",
)
_PRICING = {"cpm": 0, "cpc": 1, "cpa": 2}
_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Request:
    """An ad request. Mappings with the same keys are accepted by :meth:`Engine.decide`."""

    user_id: Any
    ts: Any = None
    request_id: str | None = None
    context: Mapping[str, Any] | None = None
    consent: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision, in the decision-log schema (:mod:`bta.schema`)."""

    ts: int
    request_id: str
    user_id: Any
    arm: str
    creative_id: str
    campaign_id: str
    targeted: bool
    propensity: float
    n_eligible: int
    score: float
    price: float
    policy_version: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


@dataclass(frozen=True, eq=False)
class _Snapshot:
    campaigns: tuple[Campaign, ...]
    fallback: Campaign
    version: str
    experiment: Experiment
    policy: Any
    untargeted_policy: Any
    privacy: PrivacyPolicy
    # per campaign
    targeted: np.ndarray
    rule_of: np.ndarray
    pricing: np.ndarray
    bid: np.ndarray
    prior_ctr: np.ndarray
    cvr: np.ndarray
    budget: np.ndarray
    pacing_even: np.ndarray
    slack: np.ndarray
    start: np.ndarray
    end: np.ndarray
    scorer_of: np.ndarray
    has_caps: np.ndarray
    # packed rules
    rules: tuple
    n_rules: int
    # scorers
    scorers: tuple
    scorer_maps: tuple  # per scorer: store column -> scorer feature (-1 unused)
    scorer_defaults: tuple  # per scorer: the feature vector of an empty profile
    max_cap_window: int
    store_segments: tuple[str, ...]
    slot_of: np.ndarray  # campaign -> slot in the engine's spend array
    targeted_idx: np.ndarray  # campaigns with a targeting rule
    targeted_rule: np.ndarray  # their rule index
    ecpm_base: np.ndarray
    ecpm_per_ctr: np.ndarray
    index_of: dict  # campaign id -> index


class Engine:
    """Chooses a creative per ad request; see the module docstring for the steps.

    Parameters
    ----------
    campaigns : sequence of Campaign
    fallback : Campaign
        House ad served when nothing else is eligible: untargeted, no budget, no caps.
    store : ProfileStore
        Where profiles come from (``MemoryProfileStore`` or ``RedisProfileStore``).
    scorers : mapping of str to scorer, optional
        Named compiled models (``TreeScorer``/``LinearScorer``: anything with
        ``feature_names`` and ``predict_one(x)`` returning a click probability).
    experiment : Experiment, optional
        Arms; default 50/50 control vs targeted.
    policy : Greedy | EpsilonGreedy | Softmax | Uniform
        Choice among eligible campaigns for targeted requests (default greedy on eCPM).
    untargeted_policy : policy
        Choice among untargeted campaigns (default uniform rotation).
    privacy : PrivacyPolicy, optional
    time_budget_ms : float, default 5.0
        A request whose profile lookup and scoring exceed this falls back (reason
        ``fallback:timeout``).
    version : str
        Policy version recorded in every decision.

    Raises
    ------
    ConfigError
        At construction for misconfiguration: no fallback, duplicate ids, a targeting rule
        over unknown features or segments, a segment below the minimum audience, an unknown
        scorer name, scorer features the store lacks.
    """

    def __init__(self, campaigns: Sequence[Campaign], *, fallback: Campaign, store: ProfileStore,
                 scorers: Mapping[str, Any] | None = None, experiment: Experiment | None = None,
                 policy: Policy | None = None, untargeted_policy: Policy | None = None,
                 privacy: PrivacyPolicy | None = None, time_budget_ms: float = 5.0,
                 version: str = "v1"):
        if not (isinstance(time_budget_ms, (int, float)) and math.isfinite(time_budget_ms)
                and time_budget_ms > 0):
            raise ConfigError(f"time_budget_ms must be a finite number > 0, got "
                              f"{time_budget_ms!r}")
        self.store = store
        self.time_budget_s = float(time_budget_ms) / 1000.0
        self._runtime_lock = threading.Lock()
        # spend per campaign lives in one array indexed by a slot per campaign id that
        # survives swaps; a snapshot maps its campaigns to slots (slot_of)
        self._slot: dict[str, int] = {}
        self._spend_arr = np.zeros(0, dtype=np.float64)
        self._history: dict[Any, deque] = {}
        self._snap = self._build(campaigns, fallback, scorers or {}, experiment or Experiment(),
                                 policy or Greedy(), untargeted_policy or Uniform(),
                                 privacy or PrivacyPolicy(), version)

    # ---- configuration -------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self._snap.version

    @property
    def experiment(self) -> Experiment:
        return self._snap.experiment

    @property
    def campaigns(self) -> tuple[Campaign, ...]:
        return self._snap.campaigns

    def swap(self, *, campaigns: Sequence[Campaign] | None = None,
             fallback: Campaign | None = None, scorers: Mapping[str, Any] | None = None,
             experiment: Experiment | None = None, policy: Policy | None = None,
             untargeted_policy: Policy | None = None, privacy: PrivacyPolicy | None = None,
             version: str | None = None) -> None:
        """Replace parts of the configuration atomically (validated before anything changes).

        Swap a segment book through the store (``MemoryProfileStore.set_book``) and then call
        ``swap()`` so targeting rules are re-checked against its segments.
        """
        s = self._snap
        new = self._build(
            s.campaigns if campaigns is None else campaigns,
            s.fallback if fallback is None else fallback,
            dict(zip(self._scorer_names, s.scorers)) if scorers is None else scorers,
            s.experiment if experiment is None else experiment,
            s.policy if policy is None else policy,
            s.untargeted_policy if untargeted_policy is None else untargeted_policy,
            s.privacy if privacy is None else privacy,
            s.version if version is None else version)
        self._snap = new  # one reference assignment: requests see old or new, never a mix

    def _build(self, campaigns, fallback, scorers, experiment, policy, untargeted_policy,
               privacy, version) -> _Snapshot:
        campaigns = tuple(campaigns)
        for c in campaigns:
            if not isinstance(c, Campaign):
                raise ConfigError(f"campaigns must be Campaign objects, got {c!r}")
        if not isinstance(fallback, Campaign):
            raise ConfigError("fallback must be a Campaign (an untargeted house ad); got "
                              f"{type(fallback).__name__}")
        if fallback.targeting is not None or fallback.budget is not None or fallback.caps:
            raise ConfigError("fallback campaign must be untargeted, without budget and caps, so "
                              "that it is always eligible")
        ids = [c.id for c in campaigns] + [fallback.id]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(f"campaign ids must be unique, got duplicates {dup}")
        cre = [cr.id for c in campaigns + (fallback,) for cr in c.creatives]
        dup = sorted({i for i in cre if cre.count(i) > 1})
        if dup:
            raise ConfigError(f"creative ids must be unique, got duplicates {dup}")
        if not isinstance(experiment, Experiment):
            raise ConfigError(f"experiment must be an Experiment, got {type(experiment).__name__}")
        if not isinstance(privacy, PrivacyPolicy):
            raise ConfigError(f"privacy must be a PrivacyPolicy, got {type(privacy).__name__}")
        for name, p in (("policy", policy), ("untargeted_policy", untargeted_policy)):
            if not hasattr(p, "choose"):
                raise ConfigError(f"{name} must be a policy (Greedy, EpsilonGreedy, Softmax, "
                                  f"Uniform), got {p!r}")
        store = self.store
        names = tuple(store.feature_names)
        book = getattr(store, "book", None)
        seg_names = tuple(store.segment_names)

        # scorers: map store columns to each scorer's features once
        scorer_names = tuple(scorers)
        scorer_list, maps, defaults = [], [], []
        col_of = {n: i for i, n in enumerate(names)}
        for sname in scorer_names:
            sc = scorers[sname]
            if not (hasattr(sc, "feature_names") and hasattr(sc, "predict_one")):
                raise ConfigError(f"scorer {sname!r} must have feature_names and predict_one()")
            if getattr(sc, "n_classes", 1) != 1:
                raise ConfigError(f"scorer {sname!r} must predict one click probability; it has "
                                  f"{sc.n_classes} classes")
            missing = [f for f in sc.feature_names if f not in col_of]
            if missing:
                raise ConfigError(f"scorer {sname!r} needs features the store does not have: "
                                  f"{missing[:5]}")
            m = np.full(len(names), -1, dtype=np.int64)
            d = np.zeros(len(sc.feature_names))
            for j, f in enumerate(sc.feature_names):
                m[col_of[f]] = j
                if store.nan_absent[col_of[f]]:
                    d[j] = np.nan
            scorer_list.append(sc)
            maps.append(m)
            defaults.append(d)
        self._scorer_names = scorer_names

        # targeting rules, packed for one kernel call per request
        compiled = []
        rule_of = np.full(len(campaigns), -1, dtype=np.int64)
        by_expr: dict[str, int] = {}
        for i, c in enumerate(campaigns):
            if c.targeting is None:
                continue
            if c.targeting in by_expr:
                rule_of[i] = by_expr[c.targeting]
                continue
            try:
                rule = RuleSegment(f"campaign.{c.id}", c.targeting)
                cr = rule.compile(store)
            except (UnknownNameError, ConfigError) as exc:
                raise ConfigError(f"campaign {c.id!r}: targeting {c.targeting!r}: {exc}") from None
            for sname in cr.segments:
                if sname not in seg_names:
                    raise ConfigError(f"campaign {c.id!r}: targeting references segment "
                                      f"{sname!r}, which the store's segment book does not have")
                if book is not None and not book.is_activatable(sname):
                    raise ConfigError(
                        f"campaign {c.id!r}: segment {sname!r} has {int(book.sizes[sname])} "
                        f"members, below the minimum audience of {book.min_audience}; it cannot "
                        f"be targeted")
            by_expr[c.targeting] = len(compiled)
            rule_of[i] = len(compiled)
            compiled.append(cr)
        rules = _pack(compiled, seg_names)

        scorer_of = np.full(len(campaigns), -1, dtype=np.int64)
        for i, c in enumerate(campaigns):
            if c.model is not None:
                if c.model not in scorers:
                    raise ConfigError(f"campaign {c.id!r}: model {c.model!r} is not one of the "
                                      f"scorers {list(scorer_names)}")
                scorer_of[i] = scorer_names.index(c.model)
        caps_w = [cap.window_ms for c in campaigns for cap in c.caps]
        with self._runtime_lock:
            for c in campaigns:  # the house ad is free and never spends
                self._slot.setdefault(c.id, len(self._slot))
            if self._spend_arr.shape[0] < len(self._slot):
                grown = np.zeros(len(self._slot), dtype=np.float64)
                grown[: self._spend_arr.shape[0]] = self._spend_arr
                self._spend_arr = grown
        slot_of = np.array([self._slot[c.id] for c in campaigns], dtype=np.int64)
        return _Snapshot(
            campaigns=campaigns, fallback=fallback, version=str(version), experiment=experiment,
            policy=policy, untargeted_policy=untargeted_policy, privacy=privacy,
            targeted=np.array([c.targeting is not None for c in campaigns], dtype=bool),
            rule_of=rule_of,
            pricing=np.array([_PRICING[c.pricing] for c in campaigns], dtype=np.int64),
            bid=np.array([c.bid for c in campaigns], dtype=np.float64),
            prior_ctr=np.array([c.prior_ctr for c in campaigns], dtype=np.float64),
            cvr=np.array([c.cvr for c in campaigns], dtype=np.float64),
            budget=np.array([np.inf if c.budget is None else c.budget for c in campaigns]),
            pacing_even=np.array([c.pacing == "even" and c.budget is not None
                                  for c in campaigns], dtype=bool),
            slack=np.array([c.pacing_slack for c in campaigns], dtype=np.float64),
            start=np.array([_INT64_MIN if c.start_ms is None else c.start_ms
                            for c in campaigns], dtype=np.int64),
            end=np.array([_INT64_MAX if c.end_ms is None else c.end_ms for c in campaigns],
                         dtype=np.int64),
            scorer_of=scorer_of,
            has_caps=np.array([bool(c.caps) for c in campaigns], dtype=bool),
            rules=rules, n_rules=len(compiled), scorers=tuple(scorer_list),
            scorer_maps=tuple(maps), scorer_defaults=tuple(defaults),
            max_cap_window=max(caps_w, default=0), store_segments=seg_names, slot_of=slot_of,
            targeted_idx=np.flatnonzero(rule_of >= 0), targeted_rule=rule_of[rule_of >= 0],
            ecpm_base=np.array([c.bid if c.pricing == "cpm" else 0.0 for c in campaigns]),
            ecpm_per_ctr=np.array([0.0 if c.pricing == "cpm" else
                                   1000.0 * c.bid * (c.cvr if c.pricing == "cpa" else 1.0)
                                   for c in campaigns]),
            index_of={c.id: i for i, c in enumerate(campaigns)})

    # ---- deciding ------------------------------------------------------------------------------
    def decide(self, request: Request | Mapping[str, Any]) -> Decision:
        """The decision for one request; never raises on request data (see module docs)."""
        t0 = time.perf_counter()
        snap = self._snap  # one snapshot for the whole request
        try:
            user_id, ts, request_id, consent = _parse(request)
        except Exception:  # noqa: BLE001 - malformed requests fall back, never raise
            rid = _safe_request_id(request)
            return self._untargeted(snap, None, _now_ms(), rid, snap.experiment.control,
                                    "fallback:bad_request", record=False)
        arm = snap.experiment.control
        try:
            arm = snap.experiment.assign(user_id)
            if not snap.experiment.is_targeted(arm):
                return self._untargeted(snap, user_id, ts, request_id, arm,
                                        "holdout" if arm == "holdout" else "control")
            gate = snap.privacy.serving_gate(user_id, consent)
            if gate != GATE_OK:
                return self._untargeted(snap, user_id, ts, request_id, arm, f"fallback:{gate}")
            try:
                profile = self.store.get(user_id, ts)
            except Exception:  # noqa: BLE001 - a store outage must not reach the ad server
                return self._untargeted(snap, user_id, ts, request_id, arm,
                                        "fallback:store_error")
            if profile is None:
                return self._untargeted(snap, user_id, ts, request_id, arm,
                                        "fallback:no_profile")
            if time.perf_counter() - t0 > self.time_budget_s:
                return self._untargeted(snap, user_id, ts, request_id, arm, "fallback:timeout")
            return self._targeted(snap, profile, user_id, ts, request_id, arm, t0)
        except Exception:  # noqa: BLE001 - last line of defence: log and serve the house ad
            import logging

            logging.getLogger("bta").exception("decide failed; serving the fallback")
            return self._house(snap, user_id, ts, request_id, arm, "fallback:error", 0)

    def decide_batch(self, requests: Iterable[Request | Mapping[str, Any]] | pd.DataFrame
                     ) -> pd.DataFrame:
        """Decisions for many requests in order (offline replay), as a decision-log frame.

        Requests are processed in the given order with the same code as :meth:`decide`
        (caps and budgets are sequential state), so a replay equals a loop of ``decide``.
        """
        if isinstance(requests, pd.DataFrame):
            requests = requests.to_dict("records")
        rows = [self.decide(r).as_dict() for r in requests]
        return decisions_frame(rows)

    # ---- internals -----------------------------------------------------------------------------
    def _eligible_base(self, snap: _Snapshot, user_id: Any, ts: int) -> np.ndarray:
        """Flight, budget/pacing and frequency caps for every campaign."""
        ok = (snap.start <= ts) & (ts < snap.end)
        if np.isfinite(snap.budget).any():
            spend = self._spend_arr[snap.slot_of]
            allowed = snap.budget.copy()
            even = snap.pacing_even
            if even.any():
                span = (snap.end[even] - snap.start[even]).astype(np.float64)
                frac = np.clip((ts - snap.start[even]) / span, 0.0, 1.0)
                allowed[even] = np.minimum(snap.budget[even],
                                           snap.budget[even] * (frac + snap.slack[even]))
            ok &= spend < allowed
        if snap.has_caps.any() and user_id is not None:
            hist = self._history.get(user_id)
            if hist:
                # only campaigns in the user's (short) history can have reached a cap
                seen: dict[str, list[int]] = {}
                for t, cid, _crid in hist:
                    seen.setdefault(cid, []).append(t)
                for cid, times in seen.items():
                    i = snap.index_of.get(cid)
                    if i is None or not ok[i] or not snap.has_caps[i]:
                        continue
                    c = snap.campaigns[i]
                    for cap in c.caps:
                        if cap.scope == "campaign" and sum(
                                1 for t in times if ts - t < cap.window_ms) >= cap.max_impressions:
                            ok[i] = False
                            break
                    if ok[i] and not self._creative_ok(c, user_id, ts):
                        ok[i] = False  # every creative capped: the campaign cannot serve
        return ok

    def _creative_ok(self, c: Campaign, user_id: Any, ts: int) -> list[int]:
        caps = [cap for cap in c.caps if cap.scope == "creative"]
        if not caps or user_id is None:
            return list(range(len(c.creatives)))
        hist = self._history.get(user_id) or ()
        out = []
        for k, cr in enumerate(c.creatives):
            if all(sum(1 for (t, _c, crid) in hist if crid == cr.id and ts - t < cap.window_ms)
                   < cap.max_impressions for cap in caps):
                out.append(k)
        return out

    def _targeted(self, snap: _Snapshot, profile: Profile, user_id: Any, ts: int,
                  request_id: str, arm: str, t0: float) -> Decision:
        ok = self._eligible_base(snap, user_id, ts)
        if snap.n_rules:
            hit = np.zeros(snap.n_rules, dtype=np.bool_)
            R = snap.rules
            segs = _segments_for(profile, snap.store_segments)
            K.eval_rules(R[0], R[1], R[2], R[3], R[4], R[5], R[6], R[7], R[8], R[9], segs,
                         np.ascontiguousarray(profile.indices, dtype=np.int32),
                         np.ascontiguousarray(profile.values, dtype=np.float64),
                         np.int64(len(self.store.feature_names)), hit)
            ok[snap.targeted_idx] &= hit[snap.targeted_rule]
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            return self._untargeted(snap, user_id, ts, request_id, arm, "fallback:no_eligible")
        ctr = snap.prior_ctr[cand]
        sc = snap.scorer_of[cand]
        for s in range(len(snap.scorers)):
            used = sc == s
            if not used.any():
                continue
            x = snap.scorer_defaults[s].copy()
            j = snap.scorer_maps[s][profile.indices]
            m = j >= 0
            x[j[m]] = profile.values[m]
            # scorers return the positive-class probability, as a scalar or shape (1,)
            p = float(np.ravel(snap.scorers[s].predict_one(x))[0])
            ctr = np.where(used, p if math.isfinite(p) else 0.0, ctr)
        ecpm = _ecpm(snap, cand, ctr)
        if time.perf_counter() - t0 > self.time_budget_s:
            return self._untargeted(snap, user_id, ts, request_id, arm, "fallback:timeout")
        return self._choose(snap, cand, ecpm, snap.policy, user_id, ts, request_id, arm,
                            targeted=True, reason="targeted")

    def _untargeted(self, snap: _Snapshot, user_id: Any, ts: int, request_id: str, arm: str,
                    reason: str, record: bool = True) -> Decision:
        ok = self._eligible_base(snap, user_id if record else None, ts) & ~snap.targeted
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            return self._house(snap, user_id, ts, request_id, arm, reason, 0)
        ecpm = _ecpm(snap, cand, snap.prior_ctr[cand])
        return self._choose(snap, cand, ecpm, snap.untargeted_policy, user_id, ts, request_id,
                            arm, targeted=False, reason=reason, record=record)

    def _choose(self, snap, cand, ecpm, policy, user_id, ts, request_id, arm, targeted, reason,
                record=True) -> Decision:
        u = hash_unit(f"{snap.version}:choose:{request_id}")
        i, p = policy.choose(ecpm, u)
        c = snap.campaigns[int(cand[i])]
        ks = self._creative_ok(c, user_id, ts) if record else list(range(len(c.creatives)))
        if not ks:  # every creative of the campaign is capped for this user
            return self._house(snap, user_id, ts, request_id, arm, reason, int(cand.size))
        v = hash_unit(f"{snap.version}:creative:{request_id}")
        k = ks[min(int(v * len(ks)), len(ks) - 1)]
        price = float(c.bid) if c.pricing == "cpm" else float(ecpm[i])
        if record:
            self._record(user_id, ts, c, c.creatives[k].id, price, snap.max_cap_window)
        return Decision(ts=ts, request_id=request_id, user_id=user_id, arm=arm,
                        creative_id=c.creatives[k].id, campaign_id=c.id, targeted=targeted,
                        propensity=float(p) / len(ks), n_eligible=int(cand.size),
                        score=float(ecpm[i]), price=price, policy_version=snap.version,
                        reason=reason)

    def _house(self, snap, user_id, ts, request_id, arm, reason, n_eligible) -> Decision:
        f = snap.fallback
        v = hash_unit(f"{snap.version}:creative:{request_id}")
        k = min(int(v * len(f.creatives)), len(f.creatives) - 1)
        ecpm = f.bid if f.pricing == "cpm" else f.bid * f.prior_ctr * 1000.0
        if reason in ("targeted", "control", "holdout"):
            reason = "fallback:no_fill"
        return Decision(ts=ts, request_id=request_id, user_id=user_id, arm=arm,
                        creative_id=f.creatives[k].id, campaign_id=f.id, targeted=False,
                        propensity=1.0 / len(f.creatives), n_eligible=int(n_eligible),
                        score=float(ecpm), price=float(f.bid if f.pricing == "cpm" else ecpm),
                        policy_version=snap.version, reason=reason)

    def _record(self, user_id, ts, campaign, creative_id, price, max_window) -> None:
        with self._runtime_lock:
            self._spend_arr[self._slot[campaign.id]] += price / 1000.0
            if max_window and user_id is not None and campaign.caps:
                hist = self._history.setdefault(user_id, deque())
                hist.append((ts, campaign.id, creative_id))
                while hist and ts - hist[0][0] >= max_window:
                    hist.popleft()

    def spend(self) -> dict[str, float]:
        """Spend so far per campaign id (currency); campaigns that have not spent are left out."""
        with self._runtime_lock:
            return {cid: float(self._spend_arr[i]) for cid, i in self._slot.items()
                    if self._spend_arr[i] != 0.0}

    def erase(self, user_id: Any) -> None:
        """Forget the user's frequency-cap history in this engine."""
        with self._runtime_lock:
            self._history.pop(user_id, None)

    def warmup(self) -> "Engine":
        """Compile every kernel the request path uses (call before serving)."""
        snap = self._snap
        if snap.n_rules:
            R = snap.rules
            hit = np.zeros(snap.n_rules, dtype=np.bool_)
            for itype in (np.int32, np.int64):
                K.eval_rules(R[0], R[1], R[2], R[3], R[4], R[5], R[6], R[7], R[8], R[9],
                             np.zeros(len(snap.store_segments), dtype=bool),
                             np.zeros(0, dtype=itype), np.zeros(0),
                             np.int64(len(self.store.feature_names)), hit)
        for sc, d in zip(snap.scorers, snap.scorer_defaults):
            if hasattr(sc, "warmup"):
                sc.warmup()
            sc.predict_one(d.copy())
        profiles = getattr(self.store, "profiles", None)
        if profiles is not None and hasattr(profiles, "warmup"):
            profiles.warmup()
        return self


def _segments_for(profile: Profile, names: tuple[str, ...]) -> np.ndarray:
    """The profile's segment flags in the order the snapshot's rules were packed against."""
    have = profile.segment_names
    if have is None or have is names or have == names:
        if profile.segments.shape[0] == len(names):
            return profile.segments
        return np.zeros(len(names), dtype=bool)
    # the store's book changed since the last swap(): match by name, unknown names are False
    pos = {n: i for i, n in enumerate(have)}
    out = np.zeros(len(names), dtype=bool)
    for j, n in enumerate(names):
        i = pos.get(n)
        if i is not None and i < profile.segments.shape[0]:
            out[j] = profile.segments[i]
    return out


def _ecpm(snap: _Snapshot, cand: np.ndarray, ctr: np.ndarray) -> np.ndarray:
    """Expected value of 1,000 impressions per candidate campaign.

    ``ecpm = base + ctr * per_ctr``: CPM campaigns have ``base = bid, per_ctr = 0``; CPC
    ``base = 0, per_ctr = 1000 * bid``; CPA ``base = 0, per_ctr = 1000 * cvr * bid``.
    """
    return snap.ecpm_base[cand] + ctr * snap.ecpm_per_ctr[cand]


def _pack(compiled: list, seg_names: tuple[str, ...]) -> tuple:
    """Concatenate compiled rules' arrays with offsets for :func:`K.eval_rules`."""
    def offsets(parts):
        return np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    codes = [r.code for r in compiled]
    consts = [r.consts for r in compiled]
    cols = [r.columns for r in compiled]
    nan_abs = [r.nan_absent for r in compiled]
    segs = [np.array([seg_names.index(s) if s in seg_names else -1 for s in r.segments],
                     dtype=np.int64) for r in compiled]
    cat = (lambda parts, dt, shape=(0,): np.ascontiguousarray(np.concatenate(parts))
           if parts else np.zeros(shape, dtype=dt))
    return (cat(codes, np.int64, (0, 2)).astype(np.int64), offsets(codes),
            cat(consts, np.float64).astype(np.float64), offsets(consts),
            cat(cols, np.int64).astype(np.int64), offsets(cols),
            cat(nan_abs, bool).astype(np.bool_),
            cat(segs, np.int64).astype(np.int64), offsets(segs),
            np.array([r.stack_size for r in compiled], dtype=np.int64))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _safe_request_id(request: Any) -> str:
    try:
        rid = request.get("request_id") if isinstance(request, Mapping) else \
            getattr(request, "request_id", None)
        if isinstance(rid, str) and 0 < len(rid) <= 256:
            return rid
    except Exception:  # noqa: BLE001
        pass
    return uuid.uuid4().hex


def _parse(request: Any) -> tuple[Any, int, str, Mapping | None]:
    if isinstance(request, Request):
        user_id, ts, rid, consent = (request.user_id, request.ts, request.request_id,
                                     request.consent)
    elif isinstance(request, Mapping):
        user_id = request.get("user_id")
        ts = request.get("ts")
        rid = request.get("request_id")
        consent = request.get("consent")
    else:
        raise TypeError("request must be a Request or a mapping")
    if user_id is None or isinstance(user_id, (bool, float)) or not isinstance(user_id, (str, int, np.integer)):
        raise ValueError("user_id must be a str or int")
    if isinstance(user_id, str) and not (0 < len(user_id) <= 256):
        raise ValueError("user_id length")
    if ts is None:
        ts = _now_ms()
    else:
        ts = to_epoch_ms(ts, "ts")
    if rid is None:
        rid = uuid.uuid4().hex
    elif not isinstance(rid, str) or not (0 < len(rid) <= 256):
        raise ValueError("request_id must be a non-empty str")
    if consent is not None and not isinstance(consent, Mapping):
        raise ValueError("consent must be a mapping")
    return user_id, int(ts), rid, consent


def decisions_frame(rows: list[dict]) -> pd.DataFrame:
    """Decision dicts as a frame in the decision-log schema's column order and types."""
    cols = list(Decision.__slots__)
    df = pd.DataFrame(rows, columns=cols)
    df["ts"] = pd.to_datetime(df["ts"].astype("int64"), unit="ms", utc=True).astype(
        "datetime64[ms, UTC]")
    # from the dicts, not the frame: pandas would already have turned int ids + None into floats
    df["user_id"] = pd.Series([None if r["user_id"] is None else str(r["user_id"]) for r in rows],
                              dtype=object, index=df.index)
    df["targeted"] = df["targeted"].astype(bool)
    df["n_eligible"] = df["n_eligible"].astype("int32")
    return df

"""The decision Engine: per ad request, the creative to show, targeted or untargeted.

``Engine.decide(request)`` never raises on request data. Its steps:

1. parse the request (user id, time, request id, context, consent, optional profile; see
   :mod:`bta.serve._request`), every field bounded before it is read; malformed or over a
   bound -> ``fallback:bad_request``;
2. experiment arm from a hash of (salt, user id): the control arm and the holdout get the
   untargeted choice;
3. privacy gate (opt-out, consent purposes, age) -> untargeted when it says no;
4. profile: the one the request carries (``Request(profile=...)``, e.g. sent by the client or
   looked up upstream; malformed -> ``fallback:bad_profile``), else the store's; a missing
   profile, a store error or a blown time budget -> untargeted; a profile (carried or
   stored) with a NaN or infinite value -> ``fallback:bad_profile``;
5. eligible campaigns: targeting rule on the profile, context targeting on the request's
   context, flight dates, budget and pacing, frequency caps;
6. score: expected eCPM = pCTR (the campaign's compiled model on the profile, or its prior)
   times the value of a click (CPC), of a conversion (CPA: pCTR x CVR x value), or the CPM bid;
7. choose with the policy (greedy, epsilon-greedy, softmax), recording the probability of the
   choice (the propensity), and count the impression against caps and budget.

Steps 5-7 run compiled (:mod:`bta.serve._kernels`): the packed targeting rules in one call,
the eligibility of every campaign in one pass (``eligible_one``), the scores and the policy's
choice in another (``score_choose``), on work arrays kept per thread; the same flight, budget,
eCPM and policy code runs in the replay. Python is left with parsing, the profile read, the
frequency-cap history and the bookkeeping of the chosen impression.

The untargeted choice uses only campaigns without (behavioural) targeting, scored without the
profile (``prior_ctr``), with ``untargeted_policy`` (uniform rotation by default); contextual
campaigns (``Campaign(context=...)``) take part when the request's context matches, since
context is not personal data. When none is eligible the ``fallback`` campaign (a house ad,
always eligible) serves.

Counting impressions: with ``count_on="decision"`` (default) spend and frequency caps count
every decision. In an OpenRTB auction most bids lose, so ``count_on="win"`` holds each decision
as *pending* and counts it only on :meth:`Engine.notify_win` (at the clearing price when
known); :meth:`Engine.notify_loss` or ``pending_ttl_s`` without a notice drops it. At most
``max_pending`` decisions are held (the oldest are dropped first, counted in
:attr:`Engine.n_expired`), so memory stays bounded whatever the exchange sends back.

Frequency caps: the history of impressions per user (:class:`_CapHistory`) is keyed by the
canonical user id (:func:`bta.ids.canonical_id`), so ``923`` and ``"923"`` share their caps.
It is bounded by age (impressions older than the longest cap window at the latest recorded
impression never count again and are dropped, users with none left too, in an amortized sweep)
and by size (``max_history_entries``; beyond it the users served least recently are
forgotten first). The context cache is bounded by entries and bytes (:class:`_ContextMasks`).
Memory does not grow with the number of distinct users or contexts a server ever sees.

Replay: :meth:`Engine.decide_batch` gives the decisions a loop of ``decide`` would, for
millions of requests (implemented in :mod:`bta.serve._replay`): parsing, arm hashing, the
privacy gate, profile fetches, rule evaluation and model scoring run vectorized per chunk;
budgets, pacing, caps and the choice (sequential state) run in one compiled pass
(:func:`bta.serve._kernels.replay`).

Configuration (campaigns, scorers, segment book, version) lives in one immutable snapshot;
:meth:`Engine.swap` replaces it with a single reference assignment, so a request sees either
the old or the new configuration, never half of each.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from bta.errors import ConfigError, UnknownNameError
from bta.ids import canonical_id
from bta.privacy import GATE_OK, PrivacyPolicy
from bta.schema import Decision, decisions_frame
from bta.segment.rules import RuleSegment
from bta.segment.rules.kernels import pack_rules
from bta.serve import _kernels as K
from bta.serve._replay import decide_batch
from bta.serve._request import (
    NO_CONTEXT, Request, _now_ms, _parse, _safe_request_id, request_profile,
)
from bta.serve._snapshot import (
    _NO_MASK, _NONE_CAPPED, _PRICING, BUILTIN_POLICIES, REASONS, _ContextMasks,
    _Scratch, _segments_for, _Snapshot, ctx_mask,
)
from bta.serve.campaigns import Campaign
from bta.serve.delivery import MAX_HISTORY_ENTRIES, Delivery, _CapHistory
from bta.serve.experiment import Experiment, hash_unit
from bta.serve.policy import Greedy, Policy, Uniform
from bta.serve.store import Profile, ProfileStore

__all__ = ["Engine", "Decision", "Request", "REASONS", "decisions_frame"]

_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max


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
    count_on : {"decision", "win"}, default "decision"
        When an impression counts against budgets and frequency caps: at the decision, or
        only once :meth:`notify_win` reports that the bid won (OpenRTB auctions).
    pending_ttl_s : float, default 300.0
        With ``count_on="win"``: how long a decision waits for its win notice before it is
        dropped as lost.
    max_pending : int, default 100_000
        With ``count_on="win"``: the most decisions held; beyond it the oldest are dropped
        (counted in :attr:`n_expired`).
    max_history_entries : int, default 1_000_000
        The most impressions the frequency-cap history keeps (about 250 bytes each with their
        user). Beyond it whole users are forgotten, the least recently served first (their
        caps start afresh). Impressions older than the longest cap window are dropped as
        time moves on, whatever this bound; see "Frequency caps" in the module docstring.

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
                 version: str = "v1", count_on: Literal["decision", "win"] = "decision",
                 pending_ttl_s: float = 300.0, max_pending: int = 100_000,
                 max_history_entries: int = MAX_HISTORY_ENTRIES):
        if not (isinstance(time_budget_ms, (int, float)) and math.isfinite(time_budget_ms)
                and time_budget_ms > 0):
            raise ConfigError(f"time_budget_ms must be a finite number > 0, got "
                              f"{time_budget_ms!r}")
        if count_on not in ("decision", "win"):
            raise ConfigError(f"count_on must be 'decision' or 'win', got {count_on!r}")
        if not (isinstance(pending_ttl_s, (int, float)) and not isinstance(pending_ttl_s, bool)
                and math.isfinite(pending_ttl_s) and pending_ttl_s > 0):
            raise ConfigError(f"pending_ttl_s must be a finite number > 0, got "
                              f"{pending_ttl_s!r}")
        if not (isinstance(max_pending, (int, np.integer)) and not isinstance(max_pending, bool)
                and max_pending >= 1):
            raise ConfigError(f"max_pending must be an integer >= 1, got {max_pending!r}")
        if not (isinstance(max_history_entries, (int, np.integer))
                and not isinstance(max_history_entries, bool) and max_history_entries >= 1):
            raise ConfigError(f"max_history_entries must be an integer >= 1, got "
                              f"{max_history_entries!r}")
        self.store = store
        self.time_budget_s = float(time_budget_ms) / 1000.0
        self.count_on = count_on
        self._tls = threading.local()  # per thread: work arrays of the request path
        self.delivery = Delivery(int(max_history_entries), pending_ttl_s, max_pending)
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

    @property
    def snapshot(self) -> _Snapshot:
        """The configuration now in force: one immutable object (see :meth:`swap`)."""
        return self._snap

    @property
    def fallback(self) -> Campaign:
        """The house campaign served when nothing else is eligible."""
        return self._snap.fallback

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
        book = store.book
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
                rule = RuleSegment(f"campaign.{c.id}", c.targeting, privacy=privacy)
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
        rules = pack_rules(compiled, seg_names)

        scorer_of = np.full(len(campaigns), -1, dtype=np.int64)
        for i, c in enumerate(campaigns):
            if c.model is not None:
                if c.model not in scorers:
                    raise ConfigError(f"campaign {c.id!r}: model {c.model!r} is not one of the "
                                      f"scorers {list(scorer_names)}")
                scorer_of[i] = scorer_names.index(c.model)
        caps_w = [cap.window_ms for c in campaigns for cap in c.caps]
        slot_of = self.delivery.slots([c.id for c in campaigns])  # the house ad never spends
        caps = [cap for c in campaigns for cap in c.caps]
        has_caps = np.array([bool(c.caps) for c in campaigns], dtype=bool)
        cre_off = np.concatenate([[0], np.cumsum([len(c.creatives) for c in campaigns])]
                                 ).astype(np.int64)
        house = float(fallback.bid if fallback.pricing == "cpm" else
                      fallback.bid * fallback.prior_ctr * 1000.0)
        targeted = np.array([c.targeting is not None for c in campaigns], dtype=bool)
        prior = np.array([c.prior_ctr for c in campaigns], dtype=np.float64)
        budget = np.array([np.inf if c.budget is None else c.budget for c in campaigns])
        even = np.array([c.pacing == "even" and c.budget is not None for c in campaigns],
                        dtype=bool)
        slack = np.array([c.pacing_slack for c in campaigns], dtype=np.float64)
        start = np.array([_INT64_MIN if c.start_ms is None else c.start_ms for c in campaigns],
                         dtype=np.int64)
        end = np.array([_INT64_MAX if c.end_ms is None else c.end_ms for c in campaigns],
                       dtype=np.int64)
        ecpm_base = np.array([c.bid if c.pricing == "cpm" else 0.0 for c in campaigns])
        ecpm_per_ctr = np.array([0.0 if c.pricing == "cpm" else
                                 1000.0 * c.bid * (c.cvr if c.pricing == "cpa" else 1.0)
                                 for c in campaigns])
        return _Snapshot(
            house_score=house, house_price=house, camps=K.CampaignTable(
                start=start, end=end, any_budget=any(c.budget is not None for c in campaigns),
                budget=budget, even=even, slack=slack, slot=slot_of, targeted=targeted,
                rule=rule_of, scorer=scorer_of, prior=prior, base=ecpm_base,
                per_ctr=ecpm_per_ctr),
            campaigns=campaigns, fallback=fallback, version=str(version), experiment=experiment,
            policy=policy, untargeted_policy=untargeted_policy, privacy=privacy,
            targeted=targeted,
            rule_of=rule_of,
            pricing=np.array([_PRICING[c.pricing] for c in campaigns], dtype=np.int64),
            bid=np.array([c.bid for c in campaigns], dtype=np.float64),
            prior_ctr=prior,
            cvr=np.array([c.cvr for c in campaigns], dtype=np.float64),
            budget=budget, pacing_even=even, slack=slack, start=start, end=end,
            scorer_of=scorer_of,
            has_caps=has_caps, caps=K.CapTable(
                cre_off=cre_off,
                cap_off=np.concatenate([[0], np.cumsum([len(c.caps) for c in campaigns])]
                                       ).astype(np.int64),
                window=np.array([cap.window_ms for cap in caps], dtype=np.int64),
                max_imps=np.array([cap.max_impressions for cap in caps], dtype=np.int64),
                creative=np.array([cap.scope == "creative" for cap in caps], dtype=bool),
                has_caps=has_caps),
            cre_code={cr.id: int(cre_off[i]) + k for i, c in enumerate(campaigns)
                      for k, cr in enumerate(c.creatives)},
            rules=rules, n_rules=len(compiled), scorers=tuple(scorer_list),
            scorer_maps=tuple(maps), scorer_defaults=tuple(defaults),
            max_cap_window=max(caps_w, default=0), store_segments=seg_names, slot_of=slot_of,
            ecpm_base=ecpm_base, ecpm_per_ctr=ecpm_per_ctr,
            index_of={c.id: i for i, c in enumerate(campaigns)},
            contexts=tuple(c.context for c in campaigns),
            has_context=any(c.context is not None for c in campaigns), ctx_cache=_ContextMasks(),
            any_budget=any(c.budget is not None for c in campaigns),
            any_caps=any(bool(c.caps) for c in campaigns),
            pol_kind=tuple(int(p.kind) if type(p) in BUILTIN_POLICIES else -1
                           for p in (policy, untargeted_policy)),
            pol_param=tuple(float(p.param) if type(p) in BUILTIN_POLICIES else 0.0
                            for p in (policy, untargeted_policy)),
            n_features=len(names),
            serving=tuple((c, float(c.bid) if c.pricing == "cpm" else None,
                           tuple(cr.id for cr in c.creatives),
                           any(cap.scope == "creative" for cap in c.caps)) for c in campaigns))

    # ---- deciding ------------------------------------------------------------------------------
    def decide(self, request: Request | Mapping[str, Any]) -> Decision:
        """The decision for one request; never raises on request data (see module docs)."""
        t0 = time.perf_counter()
        snap = self._snap  # one snapshot for the whole request
        try:
            user_id, ukey, ts, request_id, consent, ctx, raw_profile = _parse(request)
        except Exception:  # noqa: BLE001 - malformed requests fall back, never raise
            rid = _safe_request_id(request)
            return self._untargeted(snap, None, None, _now_ms(), rid, snap.experiment.control,
                                    "fallback:bad_request", ctx_mask(snap, NO_CONTEXT),
                                    record=False)
        arm = snap.experiment.control
        try:
            mask = ctx_mask(snap, ctx)
            arm = snap.experiment.assign(user_id)
            if not snap.experiment.is_targeted(arm):
                return self._untargeted(snap, user_id, ukey, ts, request_id, arm,
                                        "holdout" if arm == "holdout" else "control", mask)
            gate = snap.privacy.serving_gate(user_id, consent)
            if gate != GATE_OK:
                return self._untargeted(snap, user_id, ukey, ts, request_id, arm,
                                        f"fallback:{gate}", mask)
            if raw_profile is not None:
                try:
                    profile = request_profile(raw_profile, self.store, snap.store_segments)
                except Exception:  # noqa: BLE001 - a malformed profile is request data
                    return self._untargeted(snap, user_id, ukey, ts, request_id, arm,
                                            "fallback:bad_profile", mask)
            else:
                try:
                    profile = self.store.get(user_id, ts)
                except Exception:  # noqa: BLE001 - a store outage must not reach the ad server
                    return self._untargeted(snap, user_id, ukey, ts, request_id, arm,
                                            "fallback:store_error", mask)
            if profile is None:
                return self._untargeted(snap, user_id, ukey, ts, request_id, arm,
                                        "fallback:no_profile", mask)
            if time.perf_counter() - t0 > self.time_budget_s:
                return self._untargeted(snap, user_id, ukey, ts, request_id, arm,
                                        "fallback:timeout", mask)
            return self._targeted(snap, profile, user_id, ukey, ts, request_id, arm, t0, mask)
        except Exception:  # noqa: BLE001 - last line of defence: log and serve the house ad
            import logging

            logging.getLogger("bta").exception("decide failed; serving the fallback")
            return self._house(snap, user_id, ts, request_id, arm, "fallback:error", 0)

    def decide_batch(self, requests: Iterable[Request | Mapping[str, Any]] | pd.DataFrame, *,
                     chunk_size: int = 65_536) -> pd.DataFrame:
        """Decisions for many requests in order (offline replay), as a decision-log frame.

        The result equals a loop of :meth:`decide` over the same requests (same arms,
        creatives, propensities, reasons, spend and caps), computed vectorized (see "Replay"
        in the module docstring).

        Parameters
        ----------
        requests : DataFrame or iterable of Request or mapping
            A DataFrame has a row per request with columns ``user_id`` and optionally ``ts``,
            ``request_id``, context fields (:data:`~bta.serve.campaigns.CONTEXT_FIELDS`, e.g.
            ``page_category``, ``slot``), ``context``, ``consent`` and ``profile``.
        chunk_size : int, default 65_536
            Requests processed at once; memory stays proportional to it, not to the replay.

        Returns
        -------
        DataFrame
            One row per request in order, in the decision-log schema
            (:data:`bta.schema.DECISION_SCHEMA` columns, as :func:`decisions_frame`).

        Notes
        -----
        A replay has no time budget (``fallback:timeout`` never occurs): it is offline.
        Profiles are read once per distinct (user, time) of the replay (kept in a bounded
        table across chunks): with one ``get_block`` call per chunk (a time per user; see
        :class:`~bta.serve.store.ProfileStore`), so a store updated while the replay runs
        may be seen later than a loop would see it. Users whose read fails get
        ``fallback:store_error``: those a block marks ``failed`` (a stored value that is not
        a profile) and, when ``get_block`` raises, the users whose read fails again one
        by one (only the users of a shard that is down). The frequency-cap history is kept
        across chunks too, and read again from the engine when something else (a
        ``decide``, a win notice, an erasure) changed it in between. Memory is
        proportional to ``chunk_size`` times the number of campaigns, plus the bounded
        profile table (at most about 64 MiB) and history lists (about 40 MiB), plus the
        returned frame. The history's size bound (``max_history_entries``) is applied at the
        end of each chunk, where a loop of ``decide`` applies it at each impression: the two
        agree while the bound is not reached within a chunk (with ``chunk_size=1``, always);
        its age bound is the same in both. With
        ``count_on="win"`` the decisions are held pending, as ``decide`` holds them. A policy
        other than the four of :mod:`bta.serve.policy` is run by a loop of ``decide``.
        """
        if not (isinstance(chunk_size, (int, np.integer)) and not isinstance(chunk_size, bool)
                and chunk_size >= 1):
            raise ConfigError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")

        return decide_batch(self, requests, int(chunk_size))

    # ---- win notices ---------------------------------------------------------------------------
    def notify_win(self, request_id: str, price: float | None = None) -> bool:
        """Count a pending decision whose bid won (``count_on="win"``).

        Parameters
        ----------
        request_id : str
            The decision's request id.
        price : float, optional
            Clearing price (CPM, the Engine's currency) to charge; default the decision's
            price. A price that is not a finite number >= 0 is ignored (with a warning in the
            ``bta`` log): a win notice is exchange data and never raises.

        Returns
        -------
        bool
            Whether a pending decision was found (False: unknown, already notified, expired).
        """
        entry = self.delivery.take(request_id)
        if entry is None:
            return False
        _deadline, ukey, ts, campaign, creative_id, dec_price, max_window = entry
        charge = dec_price
        if price is not None:
            ok = isinstance(price, (int, float, np.integer, np.floating)) \
                and not isinstance(price, bool) and math.isfinite(float(price)) and price >= 0
            if ok:
                charge = float(price)
            else:
                import logging

                logging.getLogger("bta").warning(
                    "notify_win(%r): price %r is not a finite number >= 0; charging the "
                    "decision's price %r", request_id, price, dec_price)
        self.delivery.record(ukey, ts, campaign, creative_id, charge, max_window)
        return True

    def notify_loss(self, request_id: str) -> bool:
        """Drop a pending decision whose bid lost; returns whether one was pending."""
        return self.delivery.drop(request_id)

    @property
    def n_pending(self) -> int:
        """Decisions waiting for a win or loss notice (after dropping the expired ones)."""
        return self.delivery.n_pending

    @property
    def n_expired(self) -> int:
        """Pending decisions dropped without a notice (TTL passed, or ``max_pending`` full)."""
        return self.delivery.n_expired

    @property
    def max_pending(self) -> int:
        return self.delivery.max_pending

    @property
    def pending_ttl_s(self) -> float:
        return self.delivery.pending_ttl_s

    # the delivery state's history, for inspection (tests)
    @property
    def _history(self) -> _CapHistory:
        return self.delivery.history

    @property
    def _history_version(self) -> int:
        return self.delivery.version

    # ---- internals -----------------------------------------------------------------------------
    def _capped(self, snap: _Snapshot, work: _Scratch, ukey: str | None,
                ts: int) -> np.ndarray:
        """Per campaign: whether the user (canonical id ``ukey``) reached one of its frequency
        caps (:func:`K.capped_one`, the replay's rule); empty when nothing can be capped. The
        user's impressions are left in ``work.lists`` for the choice of a creative."""
        work.lists = None
        if not snap.any_caps or ukey is None:
            return _NONE_CAPPED
        hist = self.delivery.history.entries(ukey)  # immutable: another thread may record meanwhile
        if not hist:
            return _NONE_CAPPED
        n = len(hist)
        index_of, cre_code = snap.index_of, snap.cre_code
        nxt = np.arange(1, n + 1, dtype=np.int64)
        nxt[-1] = -1
        # one list from 0, as the replay's lists; ids of earlier configurations never match
        work.lists = lists = K.HistoryLists(
            np.fromiter((e[0] for e in hist), dtype=np.int64, count=n),
            np.fromiter((index_of.get(e[1], -1) for e in hist), dtype=np.int64, count=n),
            np.fromiter((cre_code.get(e[2], -1) for e in hist), dtype=np.int64, count=n), nxt)
        work.horizon = self.delivery.history.horizon
        capped = np.zeros(len(snap.campaigns), dtype=bool)
        K.capped_one(ts, snap.caps, lists, work.horizon, capped, work.ks)
        return capped

    def _scratch(self, snap: _Snapshot) -> _Scratch:
        """This thread's work arrays for requests under ``snap`` (no allocation per request)."""
        sc = getattr(self._tls, "scratch", None)
        if sc is None or sc.snap is not snap:
            sc = self._tls.scratch = _Scratch(snap)
        return sc

    def _eligible(self, snap: _Snapshot, work: _Scratch, path: int, ts: int,
                  mask: np.ndarray | None, capped: np.ndarray) -> int:
        """Eligible campaigns into ``work.cand`` (see :func:`K.eligible_one`); how many."""
        return K.eligible_one(ts, path, _NO_MASK if mask is None else mask, capped, snap.camps,
                              self.delivery.spend_arr, work.hits, work.need, work.cand)

    def _targeted(self, snap: _Snapshot, profile: Profile, user_id: Any, ukey: str, ts: int,
                  request_id: str, arm: str, t0: float, mask: np.ndarray | None) -> Decision:
        idx = profile.indices
        if idx.dtype != np.int32 or not idx.flags.c_contiguous:
            idx = np.ascontiguousarray(idx, dtype=np.int32)
        val = profile.values
        if val.dtype != np.float64 or not val.flags.c_contiguous:
            val = np.ascontiguousarray(val, dtype=np.float64)
        if not K.all_finite(val):  # carried or stored: the one rule, as in a replay
            return self._untargeted(snap, user_id, ukey, ts, request_id, arm,
                                    "fallback:bad_profile", mask)
        work = self._scratch(snap)
        capped = self._capped(snap, work, ukey, ts)
        if snap.n_rules:
            K.eval_rules(snap.rules, _segments_for(profile, snap.store_segments), idx, val,
                         snap.n_features, work.hits)
        n = self._eligible(snap, work, K.PATH_TARGETED, ts, mask, capped)
        if n == 0:
            return self._untargeted(snap, user_id, ukey, ts, request_id, arm,
                                    "fallback:no_eligible", mask, capped=capped)
        need = work.need
        for s in range(need.shape[0]):
            if not need[s]:
                continue
            x = work.x[s]
            K.scatter_row(snap.scorer_defaults[s], snap.scorer_maps[s], idx, val, x)
            # scorers return the positive-class probability, as a scalar or shape (1,)
            p = snap.scorers[s].predict_one(x)
            if type(p) is not float:
                p = float(np.ravel(p)[0])
            work.ctr[s] = p if math.isfinite(p) else 0.0
        if time.perf_counter() - t0 > self.time_budget_s:
            return self._untargeted(snap, user_id, ukey, ts, request_id, arm,
                                    "fallback:timeout", mask, capped=capped)
        return self._choose(snap, work, n, K.PATH_TARGETED, user_id, ukey, ts, request_id,
                            arm, "targeted")

    def _untargeted(self, snap: _Snapshot, user_id: Any, ukey: str | None, ts: int,
                    request_id: str, arm: str, reason: str, mask: np.ndarray | None,
                    record: bool = True, capped: np.ndarray | None = None) -> Decision:
        work = self._scratch(snap)
        if capped is None:
            capped = self._capped(snap, work, ukey if record else None, ts)
        n = self._eligible(snap, work, K.PATH_UNTARGETED, ts, mask, capped)
        if n == 0:
            return self._house(snap, user_id, ts, request_id, arm, reason, 0)
        return self._choose(snap, work, n, K.PATH_UNTARGETED, user_id, ukey, ts, request_id,
                            arm, reason, record=record)

    def _choose(self, snap: _Snapshot, work: _Scratch, n: int, path: int, user_id: Any,
                ukey: str | None, ts: int, request_id: str, arm: str, reason: str,
                record: bool = True) -> Decision:
        """Score the ``n`` candidates in ``work.cand``, choose with the path's policy (0
        targeted, 1 untargeted) and a creative of the chosen campaign, and count it."""
        kind = snap.pol_kind[path]
        u = 0.0
        # greedy never reads u, nor does a built-in policy with one candidate
        if kind != 0 and (n > 1 or kind < 0):
            u = hash_unit(f"{snap.version}:choose:{request_id}")
        i, p = K.score_choose(work.cand, n, path, snap.camps, work.ctr, kind,
                              snap.pol_param[path], u, work.sc, work.p)
        if kind < 0:  # a policy of the caller's own
            policy = snap.policy if path == K.PATH_TARGETED else snap.untargeted_policy
            i, p = policy.choose(work.sc[:n].copy(), u)
        score = float(work.sc[i])
        ci = int(work.cand[i])
        c, cpm_price, creative_ids, creative_caps = snap.serving[ci]
        ks = range(len(creative_ids))
        if record and creative_caps and work.lists is not None:
            ks = work.ks[:K.creatives_ok(ci, ts, 0, snap.caps, work.lists, work.horizon,
                                         work.ks)].tolist()
        if not ks:  # every creative of the campaign is capped for this user
            return self._house(snap, user_id, ts, request_id, arm, reason, n)
        k = ks[0]
        if len(ks) > 1:
            v = hash_unit(f"{snap.version}:creative:{request_id}")
            k = ks[min(int(v * len(ks)), len(ks) - 1)]
        price = score if cpm_price is None else cpm_price
        creative_id = creative_ids[k]
        if record:
            if self.count_on == "decision":
                self.delivery.record(ukey, ts, c, creative_id, price, snap.max_cap_window)
            else:
                self.delivery.hold(request_id, ukey, ts, c, creative_id, price, snap.max_cap_window)
        return Decision(ts=ts, request_id=request_id, user_id=user_id, arm=arm,
                        creative_id=creative_id, campaign_id=c.id, targeted=path == K.PATH_TARGETED,
                        propensity=float(p) / len(ks), n_eligible=n, score=score, price=price,
                        policy_version=snap.version, reason=reason)

    def _house(self, snap, user_id, ts, request_id, arm, reason, n_eligible) -> Decision:
        f = snap.fallback
        k = 0
        if len(f.creatives) > 1:
            v = hash_unit(f"{snap.version}:creative:{request_id}")
            k = min(int(v * len(f.creatives)), len(f.creatives) - 1)
        if reason in ("targeted", "control", "holdout"):
            reason = "fallback:no_fill"
        return Decision(ts=ts, request_id=request_id, user_id=user_id, arm=arm,
                        creative_id=f.creatives[k].id, campaign_id=f.id, targeted=False,
                        propensity=1.0 / len(f.creatives), n_eligible=int(n_eligible),
                        score=snap.house_score, price=snap.house_price,
                        policy_version=snap.version, reason=reason)

    def spend(self) -> dict[str, float]:
        """Spend so far per campaign id (currency); campaigns that have not spent are left out."""
        return self.delivery.spend()

    def erase(self, user_id: Any) -> None:
        """Forget the user in this engine: frequency-cap history and decisions pending a win
        notice (a later notice for them is ignored, so the history cannot come back). The id
        is compared in canonical form (:func:`bta.ids.canonical_id`): ``erase("923")``
        forgets user ``923``."""
        key = canonical_id(user_id)
        if key is None:
            return
        self.delivery.erase(key)

    def warmup(self) -> "Engine":
        """Compile every kernel the request path uses (call before serving)."""
        snap = self._snap
        for sc, d, m in zip(snap.scorers, snap.scorer_defaults, snap.scorer_maps):
            if hasattr(sc, "warmup"):
                sc.warmup()
            sc.predict_one(d.copy())
            K.scatter_row(d, m, np.zeros(0, dtype=np.int32), np.zeros(0), d.copy())
        work = _Scratch(snap)
        snap.experiment.assign("warmup")  # the arm rule and the hash (hash_unit)
        none = np.full(1, -1, dtype=np.int64)  # one impression of no campaign
        lists = K.HistoryLists(np.zeros(1, dtype=np.int64), none, none, none)
        K.capped_one(0, snap.caps, lists, 0, np.zeros(len(snap.campaigns), dtype=bool), work.ks)
        if snap.campaigns:
            K.creatives_ok(0, 0, 0, snap.caps, lists, 0, work.ks)
        K.all_finite(np.zeros(0))
        if snap.n_rules:
            K.eval_rules(snap.rules, np.zeros(len(snap.store_segments), dtype=bool),
                         np.zeros(0, dtype=np.int32), np.zeros(0), snap.n_features, work.hits)
        for path in (K.PATH_TARGETED, K.PATH_UNTARGETED):
            n = self._eligible(snap, work, path, 0, None, _NONE_CAPPED)
            for kind in (0, -1):
                K.score_choose(work.cand, n, path, snap.camps, work.ctr, kind, 0.0, 0.0, work.sc,
                               work.p)
        self.store.warmup()
        return self



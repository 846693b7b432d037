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
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from bta.errors import ConfigError, UnknownNameError
from bta.ids import canonical_id
from bta.privacy import GATE_OK, PrivacyPolicy
from bta.schema import Decision, decisions_frame
from bta.segment.rules import RuleSegment
from bta.serve import _kernels as K
from bta.serve._request import (
    NO_CONTEXT, Request, _now_ms, _parse, _safe_request_id, context_key_chars, context_mask,
    request_profile,
)
from bta.serve.campaigns import Campaign
from bta.serve.experiment import Experiment, hash_unit
from bta.serve.policy import EpsilonGreedy, Greedy, Policy, Softmax, Uniform
from bta.serve.store import Profile, ProfileStore

__all__ = ["Engine", "Decision", "Request", "REASONS", "decisions_frame"]

#: reason codes a Decision can carry
REASONS = (
    "targeted", "control", "holdout", "fallback:bad_request", "fallback:opt_out",
    "fallback:no_consent", "fallback:under_age", "fallback:bad_consent", "fallback:no_profile",
    "fallback:store_error", "fallback:timeout", "fallback:no_eligible", "fallback:no_fill",
    "fallback:error", "fallback:bad_profile",
)
_PRICING = {"cpm": 0, "cpc": 1, "cpa": 2}
_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max


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
    camps: K.CampaignTable  # what the decision's steps read per campaign
    caps: K.CapTable  # creatives and frequency caps as flat arrays
    cre_code: dict  # creative id -> its code in caps (what the creative caps compare)
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
    ecpm_base: np.ndarray
    ecpm_per_ctr: np.ndarray
    index_of: dict  # campaign id -> index
    contexts: tuple  # per campaign: its normalized context targeting, or None
    has_context: bool
    ctx_cache: "_ContextMasks"  # request context key -> eligible-by-context mask (bounded)
    any_budget: bool  # some campaign has a budget
    any_caps: bool  # some campaign has frequency caps
    pol_kind: tuple  # [targeted, untargeted] policy kind for the compiled choice; -1: own
    pol_param: tuple  # ... and its parameter
    n_features: int  # columns of the store's feature layout
    # per campaign, what the choice reads: (campaign, price if CPM else None, creative ids,
    # whether it has creative-scope caps)
    serving: tuple
    house_score: float  # the house ad's eCPM: its CPM bid, else bid x prior CTR x 1000
    house_price: float  # ... and its price (the same)


class _Scratch:
    """One thread's work arrays for the requests of one snapshot."""

    __slots__ = ("snap", "hits", "need", "cand", "sc", "p", "ctr", "x", "ks", "lists",
                 "horizon")

    def __init__(self, snap: _Snapshot):
        n = len(snap.campaigns)
        self.snap = snap
        self.hits = np.zeros(max(snap.n_rules, 1), dtype=np.bool_)
        self.need = np.zeros(max(len(snap.scorers), 1), dtype=np.bool_)
        self.cand = np.zeros(max(n, 1), dtype=np.int64)
        self.sc = np.zeros(max(n, 1))
        self.p = np.zeros(max(n, 1))
        self.ctr = np.zeros(max(len(snap.scorers), 1))
        self.x = [np.zeros(d.shape[0]) for d in snap.scorer_defaults]
        self.ks = np.zeros(max([len(c.creatives) for c in snap.campaigns], default=1),
                           dtype=np.int64)  # creatives under their caps (K.creatives_ok)
        self.lists = None  # the request's user's impressions (K.HistoryLists), or None
        self.horizon = 0  # ... and the history's horizon they were read at


#: the built-in policies, which the compiled choice (and a replay) runs by their ``kind``
BUILTIN_POLICIES = (Greedy, EpsilonGreedy, Softmax, Uniform)
_NONE_CAPPED = np.zeros(0, dtype=np.bool_)  # read-only markers for "nothing" (empty arrays)
_NO_MASK = np.zeros(0, dtype=np.bool_)
#: Distinct request contexts whose masks are kept (real traffic has few: pages x slots)...
_CTX_CACHE_MAX = 65_536
#: ... and the memory they may take. A key holds at most 7 fields x 64 values x 256
#: characters (the request bounds), about 460 KB at 4 bytes a character: the entry bound
#: alone would allow 30 GB, so this bound is the one that holds for hostile traffic.
_CTX_CACHE_BYTES = 32 << 20
_CTX_ENTRY_BYTES = 1_024  # a key's tuple, sets, a mask and the dict slot, beyond the text
_CTX_TEXT_BYTES = 84  # per value: a str object's header, its set slot, 4 bytes a character
#: The most impressions the frequency-cap history keeps by default (see _CapHistory).
MAX_HISTORY_ENTRIES = 1_000_000
_SWEEP = 2  # users the history's age sweep may drop per recorded impression


class _ContextMasks:
    """Eligible-by-context masks per distinct request context key, bounded by entries
    (:data:`_CTX_CACHE_MAX`) and by bytes (:data:`_CTX_CACHE_BYTES`, the keys' text
    counted at 4 bytes a character plus a fixed cost per entry and per value): when a new
    key would pass either bound the cache starts afresh. At most about 32 MiB plus one
    entry, whatever the requests."""

    __slots__ = ("masks", "nbytes", "lock")

    def __init__(self):
        self.masks: dict[tuple, np.ndarray] = {}
        self.nbytes = 0
        self.lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        return self.masks.get(key)

    def put(self, key: tuple, mask: np.ndarray) -> None:
        n_values = sum(len(v) for v in key if v is not None)
        cost = (_CTX_ENTRY_BYTES + mask.nbytes + _CTX_TEXT_BYTES * n_values
                + 4 * context_key_chars(key))
        with self.lock:  # a miss only: the count must not drift between threads
            if len(self.masks) >= _CTX_CACHE_MAX or self.nbytes + cost > _CTX_CACHE_BYTES:
                self.masks.clear()
                self.nbytes = 0
            self.masks[key] = mask
            self.nbytes += cost

    def __len__(self) -> int:
        return len(self.masks)


class _CapHistory:
    """The frequency-cap history: per user (canonical id, :func:`bta.ids.canonical_id`), the
    impressions that may still count against a cap, ``(time ms, campaign id, creative id)``
    in the order they were recorded. ``decide`` and the replay read and write this one object.

    Bounded by age and by size, whatever the requests:

    - **Age.** The *horizon* is the time of the latest recorded impression, never ahead of
      the wall clock (a request with a far-future time cannot expire everyone's history),
      less the longest cap window of the configuration that recorded it. An impression at or
      before the horizon never counts again, for any request: entries older than the longest
      window are useless. They are dropped from a user's entries when the user gets a new
      impression, and users whose entries are all past the horizon are dropped from the
      front of the queue of users (least recently recorded first), at most ``_SWEEP`` per
      recorded impression: an amortized O(1) sweep; the history holds about the users seen
      within the longest window.
    - **Size.** At most ``max_entries`` impressions: beyond, whole users are forgotten,
      least recently recorded first (their caps start afresh). One impression with its user
      takes about 250 bytes (1M users with one each: 250 MB), so the default of
      :data:`MAX_HISTORY_ENTRIES` bounds the history at about 250 MB.

    The mapping methods (``==``, ``in``, ``len``, iteration) are views of the impressions that
    still count, for inspection and tests: O(users).
    """

    __slots__ = ("users", "horizon", "n_entries", "max_entries")

    def __init__(self, max_entries: int):
        # user -> entries, in the order of the users' latest impression (oldest first)
        self.users: OrderedDict[str, tuple] = OrderedDict()
        self.horizon = _INT64_MIN
        self.n_entries = 0
        self.max_entries = max_entries

    def entries(self, key: str | None) -> tuple:
        """The user's impressions that still count (an immutable tuple: no lock to read)."""
        v = self.users.get(key) if key is not None else None
        if not v:
            return ()
        h = self.horizon
        return v if min(v)[0] > h else tuple(e for e in v if e[0] > h)

    def record(self, key: str, entry: tuple, max_window: int, now_ms: int) -> bool:
        """Add one impression (under the engine's runtime lock); returns whether a user whose
        impressions still counted was forgotten (the size bound)."""
        h = min(entry[0], now_ms) - max_window
        if h > self.horizon:
            self.horizon = h
        users = self.users
        old = users.get(key)
        if old is None:
            new = (entry,)
        else:
            self.n_entries -= len(old)
            if min(old)[0] <= self.horizon:
                old = tuple(e for e in old if e[0] > self.horizon)
            new = old + (entry,)
        users[key] = new
        users.move_to_end(key)
        self.n_entries += len(new)
        return self.sweep(_SWEEP)

    def put(self, key: str, entries: tuple) -> None:
        """Set a user's impressions as the most recently recorded (a replay's write-back)."""
        users = self.users
        old = users.get(key)
        if old is not None:
            self.n_entries -= len(old)
        users[key] = entries
        users.move_to_end(key)
        self.n_entries += len(entries)

    def sweep(self, k: int) -> bool:
        """Drop up to ``k`` users at the front whose impressions are all past the horizon,
        then forget users from the front while over ``max_entries``; returns whether a user
        whose impressions still counted was forgotten."""
        users, h = self.users, self.horizon
        for _ in range(k):
            if not users:
                break
            key = next(iter(users))
            v = users[key]
            if max(v)[0] > h:
                break
            del users[key]
            self.n_entries -= len(v)
        forgot = False
        while self.n_entries > self.max_entries and users:
            _key, v = users.popitem(last=False)
            self.n_entries -= len(v)
            forgot = forgot or max(v)[0] > h
        return forgot

    def pop(self, key: str | None) -> None:
        v = self.users.pop(key, None) if key is not None else None
        if v is not None:
            self.n_entries -= len(v)

    # views of the impressions that still count (inspection and tests)
    def live(self) -> dict[str, tuple]:
        return {k: v for k in self.users if (v := self.entries(k))}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _CapHistory):
            return self.live() == other.live()
        if isinstance(other, Mapping):
            return self.live() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __contains__(self, user: object) -> bool:
        return bool(self.entries(canonical_id(user)))

    def __iter__(self) -> Iterator[str]:
        return iter(self.live())

    def __len__(self) -> int:
        return len(self.live())

    def __repr__(self) -> str:
        return (f"_CapHistory({len(self.users)} users, {self.n_entries} impressions, "
                f"horizon {self.horizon})")

#: The clock of pending decisions' time to live (a module name, so tests can drive it).
_monotonic = time.monotonic


class Delivery:
    """An Engine's delivery state, in one object with one representation: spend per campaign
    (one array, a slot per campaign id that survives swaps), the frequency-cap history
    (:class:`_CapHistory`) and the decisions pending a win notice (``count_on="win"``).

    Its interface is what ``decide``, the replay and the win notices use, and what a shared
    (fleet) implementation must provide:

    - ``slots(campaign_ids)``: each campaign's slot in ``spend_arr`` (new ids get one);
    - ``record(ukey, ts, campaign, creative_id, price, max_window)``: count an impression;
    - ``hold(request_id, ...)`` / ``take(request_id)`` / ``drop(request_id)``: a decision
      pending its win notice, the win, the loss; ``n_pending``, ``n_expired``;
    - ``spend()``, ``erase(ukey)``;
    - for a replay's sequential pass: ``lock`` (held while it reads and writes), ``spend_arr``,
      ``history`` and ``version`` (bumped under ``lock`` at every change of the history, so
      a replay keeps its copy across chunks only while no one else changed it).
    """

    def __init__(self, max_history_entries: int, pending_ttl_s: float, max_pending: int):
        self.lock = threading.Lock()
        self.slot: dict[str, int] = {}
        self.spend_arr = np.zeros(0, dtype=np.float64)
        self.history = _CapHistory(int(max_history_entries))
        self.version = 0
        self.pending_ttl_s = float(pending_ttl_s)
        self.max_pending = int(max_pending)
        # request id -> (deadline, user key, ts, campaign, creative id, price, max cap window);
        # insertion order is deadline order (one TTL), so expiry pops from the front
        self._pending: OrderedDict[str, tuple] = OrderedDict()
        self._pending_lock = threading.Lock()
        self.n_expired = 0

    def slots(self, campaign_ids: Sequence[str]) -> np.ndarray:
        with self.lock:
            for cid in campaign_ids:
                self.slot.setdefault(cid, len(self.slot))
            if self.spend_arr.shape[0] < len(self.slot):
                grown = np.zeros(len(self.slot), dtype=np.float64)
                grown[: self.spend_arr.shape[0]] = self.spend_arr
                self.spend_arr = grown
        return np.array([self.slot[c] for c in campaign_ids], dtype=np.int64)

    def record(self, ukey, ts, campaign, creative_id, price, max_window) -> None:
        with self.lock:
            self.spend_arr[self.slot[campaign.id]] += price / 1000.0
            if max_window and ukey is not None and campaign.caps:
                self.history.record(ukey, (ts, campaign.id, creative_id), max_window,
                                    _now_ms())
                self.version += 1

    def spend(self) -> dict[str, float]:
        with self.lock:
            return {cid: float(self.spend_arr[i]) for cid, i in self.slot.items()
                    if self.spend_arr[i] != 0.0}

    def erase(self, key: str) -> None:
        with self.lock:
            self.history.pop(key)
            self.version += 1
        with self._pending_lock:
            gone = [rid for rid, entry in self._pending.items() if entry[1] == key]
            for rid in gone:
                del self._pending[rid]

    def hold(self, request_id, ukey, ts, campaign, creative_id, price, max_window) -> None:
        with self._pending_lock:
            self._expire_locked()
            self._pending.pop(request_id, None)  # a repeated id: the latest decision counts
            self._pending[request_id] = (_monotonic() + self.pending_ttl_s, ukey, ts,
                                         campaign, creative_id, price, max_window)
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
                self.n_expired += 1

    def take(self, request_id: Any) -> tuple | None:
        """The pending decision of ``request_id`` (removed), or None."""
        with self._pending_lock:
            self._expire_locked()
            return self._pending.pop(request_id, None) if isinstance(request_id, str) else None

    def drop(self, request_id: Any) -> bool:
        return self.take(request_id) is not None

    @property
    def n_pending(self) -> int:
        with self._pending_lock:
            self._expire_locked()
            return len(self._pending)

    def _expire_locked(self) -> None:
        now = _monotonic()
        pending = self._pending
        while pending:
            rid = next(iter(pending))
            if pending[rid][0] > now:
                break
            del pending[rid]
            self.n_expired += 1



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
        rules = _pack(compiled, seg_names)

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
        from bta.serve._replay import decide_batch  # the replay needs this module's names

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
    def _history(self) -> "_CapHistory":
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
            R = snap.rules
            K.eval_rules(R[0], R[1], R[2], R[3], R[4], R[5], R[6], R[7], R[8], R[9],
                         _segments_for(profile, snap.store_segments), idx, val,
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
            R = snap.rules
            K.eval_rules(R[0], R[1], R[2], R[3], R[4], R[5], R[6], R[7], R[8], R[9],
                         np.zeros(len(snap.store_segments), dtype=bool),
                         np.zeros(0, dtype=np.int32), np.zeros(0), snap.n_features, work.hits)
        for path in (K.PATH_TARGETED, K.PATH_UNTARGETED):
            n = self._eligible(snap, work, path, 0, None, _NONE_CAPPED)
            for kind in (0, -1):
                K.score_choose(work.cand, n, path, snap.camps, work.ctr, kind, 0.0, 0.0, work.sc,
                               work.p)
        self.store.warmup()
        return self


def ctx_mask(snap: _Snapshot, ctx: tuple) -> np.ndarray | None:
    """Campaigns whose context targeting the request's context meets (None: all), cached
    per distinct context in the snapshot (a request and a replay)."""
    if not snap.has_context:
        return None
    mask = snap.ctx_cache.get(ctx)
    if mask is None:
        mask = context_mask(snap.contexts, ctx)
        snap.ctx_cache.put(ctx, mask)
    return mask


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

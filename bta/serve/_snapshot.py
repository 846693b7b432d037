"""The compiled configuration one decision reads: an Engine's snapshot and its caches.

:class:`~bta.serve.engine.Engine` builds a :class:`_Snapshot` at construction and at every
``swap()``; ``decide`` and the replay (``decide_batch``) read the same one, so a decision
rule reads one compiled form whichever entry calls it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from bta.privacy import PrivacyPolicy
from bta.segment.rules.kernels import PackedRules
from bta.serve import _kernels as K
from bta.serve._request import context_key_chars, context_mask
from bta.serve.campaigns import Campaign
from bta.serve.experiment import Experiment
from bta.serve.policy import EpsilonGreedy, Greedy, Softmax, Uniform
from bta.serve.store import Profile

__all__ = ["REASONS", "BUILTIN_POLICIES", "ctx_mask"]

#: reason codes a Decision can carry
REASONS = (
    "targeted", "control", "holdout", "fallback:bad_request", "fallback:opt_out",
    "fallback:no_consent", "fallback:under_age", "fallback:bad_consent", "fallback:no_profile",
    "fallback:store_error", "fallback:timeout", "fallback:no_eligible", "fallback:no_fill",
    "fallback:error", "fallback:bad_profile",
)
_PRICING = {"cpm": 0, "cpc": 1, "cpa": 2}


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
    rules: PackedRules  # the distinct targeting rules (campaign c: rule_of[c]), K.eval_rules
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

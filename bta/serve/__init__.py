"""Serving: per ad request, the creative to show, targeted or untargeted, fast and never failing.

- :class:`Engine` — campaigns, experiments, privacy gate, eligibility, scoring, choice with
  propensities; ``decide`` / ``decide_batch`` (a vectorized replay equal to a loop of
  ``decide``) / ``swap`` / ``warmup``; ``count_on="win"`` with ``notify_win`` /
  ``notify_loss`` for auctions, where spend and caps count only won impressions.
- :class:`Request` — user id, time, request id, context (:data:`CONTEXT_FIELDS`), consent, and
  optionally the user's profile.
- :class:`Campaign`, :class:`Creative`, :class:`FrequencyCap` — what can be shown and how,
  including behavioural (``targeting``) and contextual (``context``) targeting.
- :class:`Experiment` and the policies :class:`Greedy`, :class:`EpsilonGreedy`,
  :class:`Softmax`, :class:`Uniform`.
- Profile stores: :class:`MemoryProfileStore` (in-process) and :class:`RedisProfileStore`
  (a fleet; needs ``bta[redis]``).
- :func:`decide_openrtb` for OpenRTB 2.6 bid requests; :class:`DecisionLog` writes the log the
  evaluator reads. :class:`TreeScorer` and :class:`LinearScorer` are re-exported from
  :mod:`bta.scoring`.
"""

from bta.scoring import LinearScorer, TreeScorer
from bta.serve.campaigns import CONTEXT_FIELDS, Campaign, Creative, FrequencyCap
from bta.serve.engine import REASONS, Decision, Engine, Request
from bta.serve.experiment import Experiment
from bta.serve.log import DecisionLog, erase_parquet, join_outcomes
from bta.serve.openrtb import decide_openrtb, user_data
from bta.serve.policy import EpsilonGreedy, Greedy, Softmax, Uniform
from bta.serve.redis_store import RedisProfileStore
from bta.serve.store import MemoryProfileStore, Profile, ProfileBlock, ProfileStore

__all__ = [
    "Engine", "Request", "Decision", "REASONS",
    "Campaign", "Creative", "FrequencyCap", "CONTEXT_FIELDS", "Experiment",
    "Greedy", "EpsilonGreedy", "Softmax", "Uniform",
    "Profile", "ProfileBlock", "ProfileStore", "MemoryProfileStore", "RedisProfileStore",
    "decide_openrtb", "user_data", "DecisionLog", "join_outcomes", "erase_parquet",
    "TreeScorer", "LinearScorer",
]

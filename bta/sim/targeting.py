r"""The targeting pipeline of a simulated world: history -> features -> segments -> Engine.

:func:`build_targeting` runs, on the training days of an :class:`~bta.sim.world.AdWorld`, the
steps a real deployment runs on its own logs:

1. the training days' events -> :class:`~bta.events.EventLog` (bots flagged by the default
   :class:`~bta.events.BotRule`);
2. :func:`~bta.features.build_features` at the end of training (flagged users left out);
3. one rule segment per category with a campaign, *affinity to c*: the user's decayed page views
   in :math:`c` are at least ``affinity_share`` of all their decayed page views, with at least
   ``min_views`` page views of :math:`c` in 30 days; a :class:`~bta.segment.SegmentBook` with
   the minimum audience (segments below it are kept but no campaign targets them);
4. a campaign per targeted :class:`~bta.sim.world.CampaignSpec` whose segment is activatable,
   targeting the same rule (evaluated by the Engine on the live profile, so a user who develops
   an interest during the experiment enters the audience), with the segment's measured click
   rate as its click propensity (``prior_ctr``): clicks over impressions of the category's ads
   among the segment's members in the history, shrunk towards the overall rate by a Beta prior
   worth ``prior_strength`` impressions;
5. the run-of-network campaigns (untargeted) and the house ad as fallback;
6. :class:`~bta.features.OnlineProfiles` with a fixed layout, fed the whole history, in a
   :class:`~bta.serve.MemoryProfileStore` with the book, and an :class:`~bta.serve.Engine` with a
   50/50 :class:`~bta.serve.Experiment` (control: untargeted), warmed up.

Pricing follows each campaign: the Engine ranks by expected eCPM (CPM bid; CPC: propensity x
value per click; CPA: propensity x conversion rate x value per conversion).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bta.errors import check_param
from bta.events import EventLog
from bta.features import FeatureMatrix, FeatureSpec, OnlineProfiles, build_features
from bta.privacy import DEFAULT_SENSITIVE_CATEGORIES
from bta.segment import SegmentBook
from bta.segment.rules import evaluate_rules
from bta.serve import Campaign, Creative, Engine, Experiment, MemoryProfileStore
from bta.sim.world import HOUSE_CAMPAIGN, AdWorld

__all__ = ["Targeting", "build_targeting", "affinity_rule", "FEATURE_SPEC"]

#: Features of the world's pipeline: page views, searches and ad events per category over one
#: day, a week and a month, decayed with a one-week half-life.
FEATURE_SPEC = FeatureSpec(windows=("1d", "7d", "30d"), half_life="7d")


_NO_DEADLINE_MS = 3_600_000.0


def affinity_rule(category: str, share: float, min_views: int) -> str:
    """The rule of the affinity segment of ``category`` (see the module docstring)."""
    def name(feature: str) -> str:
        # names of letters, digits, '_' and ':' are written bare, any other in backticks
        return feature if feature.replace("_", "").replace(":", "").isalnum() else f"`{feature}`"

    return (f'{name(f"decay:page_view:{category}")} >= {share!r} * total("decay:page_view:*") '
            f"and {name(f'count:page_view:{category}:30d')} >= {int(min_views)}")


@dataclass(frozen=True, eq=False)
class Targeting:
    """What :func:`build_targeting` built.

    Attributes
    ----------
    engine : Engine
        Warmed up; its store holds the online profiles and the book.
    book : SegmentBook
        Affinity segments over the users with features at the end of training.
    profiles : OnlineProfiles
        Online profiles (fixed layout) fed the training history; the experiment keeps
        updating them.
    store : MemoryProfileStore
    history : EventLog
        The training days' events (bots flagged).
    features : FeatureMatrix
        Features at the end of training.
    campaigns : tuple of Campaign
        The Engine's campaigns (targeted ones first), without the fallback.
    segment_ctr : dict of str to float
        Measured click propensity of each targeted campaign's segment.
    train_days : int
    """

    engine: Engine
    book: SegmentBook
    profiles: OnlineProfiles
    store: MemoryProfileStore
    history: EventLog
    features: FeatureMatrix
    campaigns: tuple[Campaign, ...]
    segment_ctr: dict = field(default_factory=dict)
    train_days: int = 0


def _segment_ctr(log: EventLog, members: dict[str, np.ndarray], cat_of: dict[str, str],
                 prior_strength: float) -> dict[str, float]:
    """Smoothed CTR of each segment's members on ads of the segment's category."""
    ev = log.event_types
    imp, clk = ev.index("ad_impression"), ev.index("ad_click")
    is_imp, is_clk = log.event == imp, log.event == clk
    # overall CTR of the history's humans: the prior mean
    human = ~log.flagged[log.user]
    n_imp, n_clk = int((is_imp & human).sum()), int((is_clk & human).sum())
    p0 = (n_clk + 1.0) / (n_imp + 100.0)
    cats = {c: i for i, c in enumerate(log.categories.tolist())}
    out = {}
    for name, is_member in members.items():
        code = cats.get(cat_of[name], -2)
        row_member = is_member[log.user] & human & (log.category == code)
        i, c = int((row_member & is_imp).sum()), int((row_member & is_clk).sum())
        out[name] = (c + prior_strength * p0) / (i + prior_strength)
    return out


def build_targeting(world: AdWorld, train_days: int = 14, *, affinity_share: float | None = None,
                    min_views: int = 2, min_audience: int = 100, prior_strength: float = 2000.0,
                    spec: FeatureSpec | None = None) -> Targeting:
    """Build segments, campaigns, profiles and a warmed-up Engine from the training days.

    Parameters
    ----------
    world : AdWorld
    train_days : int, default 14
        Days ``[0, train_days)`` are the history; the experiment may use the rest.
    affinity_share : float, optional
        Share of decayed page views that puts a user in a category's segment; default
        ``2 / n_categories`` (twice the share of a user without preferences).
    min_views : int, default 2
        Page views of the category in 30 days a member needs at least.
    min_audience : int, default 100
        Segments with fewer members are not activated.
    prior_strength : float, default 2000.0
        Impressions the prior of a segment's measured CTR is worth (shrinkage).
    spec : FeatureSpec, optional
        Default :data:`FEATURE_SPEC`.

    Returns
    -------
    Targeting

    Raises
    ------
    ConfigError
        If a parameter is out of range (the message names it).
    """
    check_param("world", world, isinstance(world, AdWorld), "an AdWorld from make_world()")
    cfg = world.config
    check_param("train_days", train_days,
                isinstance(train_days, int) and not isinstance(train_days, bool)
                and 1 <= train_days < cfg.days, f"an integer in [1, {cfg.days - 1}]")
    k = cfg.n_categories
    share = 2.0 / k if affinity_share is None else affinity_share
    check_param("affinity_share", share,
                isinstance(share, (int, float)) and not isinstance(share, bool) and 0 < share <= 1,
                "a number in (0, 1]")
    check_param("min_views", min_views, isinstance(min_views, int) and min_views >= 1,
                "an integer >= 1")
    check_param("prior_strength", prior_strength,
                isinstance(prior_strength, (int, float)) and prior_strength > 0,
                "a positive number")
    spec = FEATURE_SPEC if spec is None else spec

    events = world.events(0, train_days)
    history = EventLog.from_pandas(events, time_range=None)
    as_of = world.day_start_ms(train_days) - 1
    fm = build_features(history, spec, as_of=as_of)

    targeted = [c for c in world.campaigns if c.targeted]
    seg_of = {c.category: f"affinity_{c.category}" for c in targeted}
    rules = {name: affinity_rule(cat, share, min_views) for cat, name in seg_of.items()}
    segs = evaluate_rules(rules, fm)
    book = SegmentBook.from_segments(fm.users, segs, min_audience=min_audience)
    members = {s.name: _members_by_code(history, fm, s.members) for s in segs}
    ctr = _segment_ctr(history, members, {n: c for c, n in seg_of.items()}, prior_strength)

    campaigns = []
    for c in targeted:
        seg = seg_of[c.category]
        if not book.is_activatable(seg):
            continue
        campaigns.append(_campaign(c, world, rules[seg], ctr[seg]))
    for c in world.campaigns:
        if not c.targeted:
            campaigns.append(_campaign(c, world, None, world.house_ctr))
    fallback = Campaign(HOUSE_CAMPAIGN, (Creative("house-1"), Creative("house-2")),
                        pricing="cpm", bid=0.01, prior_ctr=world.house_ctr)

    # sensitive categories never enter profiles (the ingestion's privacy screen removes their
    # events), so the fixed layout has no columns for them
    open_cats = [c for c in world.categories if c.lower() not in DEFAULT_SENSITIVE_CATEGORIES]
    profiles = OnlineProfiles(spec, categories=open_cats, grow_categories=False)
    profiles.update_log(history)
    store = MemoryProfileStore(profiles, book)
    engine = Engine(campaigns, fallback=fallback, store=store,
                    experiment=Experiment(salt=f"world-{cfg.seed}"),
                    version=f"world-{cfg.seed}-t{train_days}",
                    # the world measures targeting, not latency: a wall-clock deadline would
                    # make decisions depend on how busy the machine is
                    time_budget_ms=_NO_DEADLINE_MS)
    engine.warmup()
    return Targeting(engine=engine, book=book, profiles=profiles, store=store, history=history,
                     features=fm, campaigns=tuple(campaigns),
                     segment_ctr={seg_of[c.category]: ctr[seg_of[c.category]] for c in targeted},
                     train_days=train_days)


def _members_by_code(log: EventLog, fm: FeatureMatrix, members: np.ndarray) -> np.ndarray:
    """Membership flags indexed by the log's user codes (users without features: False)."""
    pos = np.searchsorted(log.users, fm.users)
    out = np.zeros(len(log.users), dtype=bool)
    out[pos[members]] = True
    return out


def _campaign(c: Any, world: AdWorld, targeting: str | None, prior_ctr: float) -> Campaign:
    start = world.start
    end = start + np.timedelta64(world.config.days, "D")
    return Campaign(c.id, tuple(Creative(cr, cat) for cr, cat in c.creatives),
                    targeting=targeting, pricing=c.pricing, bid=c.bid,
                    prior_ctr=float(min(max(prior_ctr, 1e-6), 1.0)),
                    cvr=world.config.conversion_rate, budget=c.budget, pacing="asap",
                    start=start, end=end)

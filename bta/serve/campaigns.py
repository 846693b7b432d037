"""Campaigns, creatives and their delivery rules (targeting, bids, caps, budgets, flights)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Mapping

from bta.errors import ConfigError, check_param
from bta.events import to_epoch_ms, to_millis

__all__ = ["Creative", "FrequencyCap", "Campaign", "CONTEXT_FIELDS"]

#: Request context fields a campaign can target (``Campaign(context=...)``), and that a
#: request carries in ``Request.context`` (or, for mappings and DataFrame rows, as top-level
#: keys/columns of these names). Contextual signals describe the page or app, not the user.
CONTEXT_FIELDS = ("page_category", "slot", "site", "app", "device_type", "country", "language")

Pricing = Literal["cpm", "cpc", "cpa"]


def _finite_pos(v: Any, allow_zero: bool = False) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return math.isfinite(f) and (f >= 0 if allow_zero else f > 0)


@dataclass(frozen=True)
class Creative:
    """One ad creative.

    Parameters
    ----------
    id : str
        Unique across the engine.
    category : str, optional
        Content category of the ad (used by the simulator and reports).
    """

    id: str
    category: Any = None

    def __post_init__(self) -> None:
        check_param("Creative.id", self.id, isinstance(self.id, str) and self.id != "",
                    "a non-empty string")


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``max_impressions`` per user within ``window``, per creative or per campaign."""

    max_impressions: int
    window: Any = "1d"
    scope: Literal["creative", "campaign"] = "campaign"

    def __post_init__(self) -> None:
        check_param("FrequencyCap.max_impressions", self.max_impressions,
                    isinstance(self.max_impressions, int) and self.max_impressions >= 1,
                    "an integer >= 1")
        to_millis(self.window, "FrequencyCap.window")
        check_param("FrequencyCap.scope", self.scope, self.scope in ("creative", "campaign"),
                    "'creative' or 'campaign'")

    @cached_property
    def window_ms(self) -> int:
        # cached: the request path reads it for every capped campaign
        return to_millis(self.window, "FrequencyCap.window")


@dataclass(frozen=True)
class Campaign:
    """An advertiser's campaign: what it shows, to whom, at what price, how much and when.

    Parameters
    ----------
    id : str
    creatives : tuple of Creative
    targeting : str, optional
        Rule expression (:mod:`bta.segment.rules` syntax) over profile features and
        ``segment("name")`` references, e.g. ``segment("auto_intenders") and
        ctr:smoothed > 0.005``. ``None``: untargeted (run of network) — eligible for every
        request, including the control arm and users who may not be profiled.
    pricing : {"cpm", "cpc", "cpa"}
        How the campaign values an impression: a CPM bid, a value per click, or a value per
        conversion.
    bid : float
        CPM bid (currency per 1,000 impressions), or value per click / per action.
    model : str, optional
        Name of the scorer (in ``Engine(scorers=...)``) predicting this campaign's click
        probability from the user's features; ``None`` uses ``prior_ctr``.
    prior_ctr : float, default 0.002
        Click probability used without a model, and by untargeted choices.
    cvr : float, default 0.02
        Conversion probability per click, for CPA pricing.
    budget : float, optional
        Total spend allowed (currency); ``None`` for unlimited.
    pacing : {"even", "asap"}
        ``even``: spend at most ``budget * elapsed / flight`` (+ ``pacing_slack``) by each time;
        ``asap``: spend until the budget is gone.
    start, end : datetime-like, optional
        Flight dates (UTC); required for even pacing with a budget.
    caps : tuple of FrequencyCap
    context : mapping of str to str or iterable of str, optional
        Contextual targeting: field (one of :data:`CONTEXT_FIELDS`) -> accepted values, e.g.
        ``{"page_category": ["IAB2", "IAB2-1"], "slot": "top-banner"}``. The campaign is
        eligible only for requests whose context has, for every field given, at least one of
        the accepted values; a request without that field does not match. Context uses no
        personal data, so a campaign with ``context`` but no ``targeting`` is *untargeted*
        behaviourally: it competes in the untargeted choice (control arm, holdout, users who
        may not be profiled) as well as in the targeted one (IAB TCF purpose 2, basic ads).
        Stored normalized as a sorted tuple of ``(field, frozenset of values)``.

    Notes
    -----
    ``targeting`` (behavioural) and ``context`` combine with *and*: a campaign with both
    serves only on matching context to users whose profile matches.
    """

    id: str
    creatives: tuple[Creative, ...]
    targeting: str | None = None
    pricing: Pricing = "cpm"
    bid: float = 1.0
    model: str | None = None
    prior_ctr: float = 0.002
    cvr: float = 0.02
    budget: float | None = None
    pacing: Literal["even", "asap"] = "asap"
    pacing_slack: float = 0.05
    start: Any = None
    end: Any = None
    caps: tuple[FrequencyCap, ...] = field(default_factory=tuple)
    context: Any = None

    def __post_init__(self) -> None:
        check_param("Campaign.id", self.id, isinstance(self.id, str) and self.id != "",
                    "a non-empty string")
        creatives = tuple(self.creatives)
        if not creatives or not all(isinstance(c, Creative) for c in creatives):
            raise ConfigError(f"campaign {self.id!r}: creatives must be a non-empty sequence of "
                              f"Creative, got {self.creatives!r}")
        object.__setattr__(self, "creatives", creatives)
        where = f"campaign {self.id!r}:"
        if self.targeting is not None and not (isinstance(self.targeting, str)
                                               and self.targeting.strip()):
            raise ConfigError(f"{where} targeting must be None or a rule expression, got "
                              f"{self.targeting!r}")
        if self.pricing not in ("cpm", "cpc", "cpa"):
            raise ConfigError(f"{where} pricing must be 'cpm', 'cpc' or 'cpa', got "
                              f"{self.pricing!r}")
        if not _finite_pos(self.bid):
            raise ConfigError(f"{where} bid must be a finite number > 0, got {self.bid!r}")
        for name in ("prior_ctr", "cvr"):
            v = getattr(self, name)
            if not (_finite_pos(v) and float(v) <= 1):
                raise ConfigError(f"{where} {name} must be a probability in (0, 1], got {v!r}")
        if self.budget is not None and not _finite_pos(self.budget):
            raise ConfigError(f"{where} budget must be None or a finite number > 0, got "
                              f"{self.budget!r}")
        if self.pacing not in ("even", "asap"):
            raise ConfigError(f"{where} pacing must be 'even' or 'asap', got {self.pacing!r}")
        if not _finite_pos(self.pacing_slack, allow_zero=True):
            raise ConfigError(f"{where} pacing_slack must be a finite number >= 0, got "
                              f"{self.pacing_slack!r}")
        s = None if self.start is None else to_epoch_ms(self.start, "Campaign.start")
        e = None if self.end is None else to_epoch_ms(self.end, "Campaign.end")
        if s is not None and e is not None and e <= s:
            raise ConfigError(f"{where} end must be after start")
        if self.pacing == "even" and self.budget is not None and (s is None or e is None):
            raise ConfigError(f"{where} even pacing with a budget needs start and end dates")
        object.__setattr__(self, "context", _normalize_context(self.context, where))
        object.__setattr__(self, "caps", tuple(self.caps))
        for cap in self.caps:
            if not isinstance(cap, FrequencyCap):
                raise ConfigError(f"{where} caps must be FrequencyCap objects, got {cap!r}")

    @cached_property
    def start_ms(self) -> int | None:
        return None if self.start is None else to_epoch_ms(self.start, "Campaign.start")

    @cached_property
    def end_ms(self) -> int | None:
        return None if self.end is None else to_epoch_ms(self.end, "Campaign.end")

    @property
    def context_targets(self) -> dict[str, frozenset[str]]:
        """Contextual targeting as a dict (empty: no contextual condition)."""
        return dict(self.context or ())


def _normalize_context(ctx: Any, where: str) -> tuple | None:
    if ctx is None:
        return None
    if isinstance(ctx, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in ctx):
        ctx = dict(ctx)  # already normalized (dataclasses.replace passes it back in)
    if not isinstance(ctx, Mapping) or not ctx:
        raise ConfigError(f"{where} context must be None or a non-empty mapping of context "
                          f"field to accepted values, got {ctx!r}")
    out = []
    for name, values in ctx.items():
        if name not in CONTEXT_FIELDS:
            raise ConfigError(f"{where} context field {name!r} is not one of "
                              f"{list(CONTEXT_FIELDS)}")
        vals = (values,) if isinstance(values, str) else values
        try:
            vals = frozenset(vals)
        except TypeError:
            vals = None
        if not vals or not all(isinstance(v, str) and v != "" for v in vals):
            raise ConfigError(f"{where} context[{name!r}] must be a non-empty string or a "
                              f"non-empty collection of non-empty strings, got {values!r}")
        out.append((name, vals))
    return tuple(sorted(out))

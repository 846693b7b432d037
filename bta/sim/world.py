r"""A closed-loop ad world with ground truth: users browse, an ad server decides, users respond.

:func:`make_world` builds an :class:`AdWorld` on the clickstream simulator
(:mod:`bta.sim.clickstream`): users with latent interests over categories, planted interest
groups, a daily cycle and bots. On top of it come advertisers with campaigns, creatives in
categories, bids and budgets, and a response model whose probabilities are known exactly.

The response model
------------------
Let :math:`\theta_u` be user :math:`u`'s latent interests over :math:`K` categories (the
simulator's ground truth), :math:`b` = ``base_ctr`` and :math:`\eta` = ``interest_effect``.
A human shown a creative of category :math:`c` clicks with probability

.. math:: p_{u,c} = \min\bigl(1,\; b\,(K\theta_{u,c})^{\eta}\bigr)

(:meth:`Clickstream.click_probability`, the simulator's own click model), converts after a
click with probability ``conversion_rate`` and then brings revenue
:math:`\mathrm{LogNormal}(\ln R - \tau^2/2, \tau)` with mean :math:`R` = ``revenue_mean``.
A house ad (the fallback) is clicked with probability :math:`\bar p` (below) and never converts.

In the **null world** (``informative=False``) the same users browse the same way, but response
carries no information about behaviour: every human clicks every creative with the constant
:math:`\bar p`, the mean of :math:`p_{u,c}` over humans and categories of the informative world
with the same seed, so the marginal click rate is the same. The simulator's own (organic) ad
clicks in the history follow the same constant, so nothing in the data can predict response.

The market and the cost model
-----------------------------
Every ad request is an impression the network buys on the open market. Its clearing price per
1,000 impressions is :math:`m \sim \mathrm{LogNormal}(\ln M - s^2/2, s)` (mean
:math:`M` = ``market_cpm``, :math:`s` = ``market_sigma``) times the hour's relative traffic
(busy hours cost more; normalized so the traffic-weighted mean stays :math:`M`): the highest
competing bid, which the winning advertiser pays (second price). The ``cost`` of an impression
in the experiment log is :math:`m / 1000`, the same draw whichever arm or campaign wins it, so
spend per impression is equal in expectation across arms and ROAS differs only through what
the ads earn. The Engine's own ``price`` column (the bid, or the expected eCPM for CPC/CPA
campaigns) is kept in the log but is not the spend.

Advertisers and campaigns
-------------------------
``n_campaigns - n_run_of_network`` targeted campaigns each advertise in one category (spread
over the categories, never a sensitive one: those never enter profiles), priced CPC, CPA or CPM
in turn, with two creatives. Bids are a quarter to a half of what an ad is worth to the
advertiser (value per click :math:`\kappa R`, per conversion :math:`R`, or 0.8-1.6 times the
market CPM). The ``n_run_of_network`` untargeted campaigns are broad-appeal advertisers whose
creatives together cover every category once (CPM). Budgets rarely bind. The house ad is the
fallback.

Traffic
-------
Every human page view is an ad request with one slot (``"top"``), whose context is the page's
category. Bots browse too, but the exchange's general invalid-traffic filter (``ivt_filter``)
drops their requests before they reach the ad server; with ``ivt_filter=False`` they are served,
click with ``bot_ctr`` and never convert. ``request_share`` below 1 keeps a seeded random share
of the page views as requests, which bounds the run time of very large worlds.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from bta.errors import check_param
from bta.privacy import DEFAULT_SENSITIVE_CATEGORIES
from bta.sim.clickstream import _HOURLY_PROFILE, Clickstream, SimConfig, _draw_users, simulate

__all__ = ["WorldConfig", "AdWorld", "CampaignSpec", "make_world", "HOUSE_CAMPAIGN"]

#: Campaign id of the house ad (the Engine's fallback) in every world.
HOUSE_CAMPAIGN = "house"
_DAY_MS = 86_400_000
_PRICINGS = ("cpc", "cpa", "cpm")


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of :func:`make_world`, validated on construction.

    Parameters
    ----------
    n_users : int, default 50_000
    days : int, default 30
        Whole days simulated; training and experiment days are cut from them.
    n_campaigns : int, default 24
        Campaigns besides the house ad, ``n_run_of_network`` of them untargeted.
    seed : int, default 0
        One seed gives one world (browsing, campaigns, bids, responses).
    informative : bool, default True
        False gives the null world (see the module docstring).
    n_categories : int, default 20
    n_run_of_network : int, default 4
        Untargeted campaigns (run of network): the control arm's choices.
    events_per_user_day : float, default 1.2
        Browsing intensity of the simulator (events per user per day, bots included). About
        0.75 page views per user and day: the default world has about 560,000 ad requests in
        16 experiment days, which the Engine serves in well under a minute.
    base_ctr : float, default 0.0085
        Click probability :math:`b` of a user with uniform interests; the mean click rate
        :math:`\\bar p` of a random ad shown to a random user is then about 0.5%.
    interest_effect : float, default 0.3
        Exponent :math:`\\eta` of the interest lift. It sets how much behaviour predicts
        response, a property of the world and not of the pipeline: with 0.3 a user's
        best-matching category is clicked about three times as often as a random one, and the
        targeted arm of the default demo earns between two and three times the untargeted
        arm's ROAS, the order of published case studies.
    conversion_rate : float, default 0.05
        Probability that a human click converts.
    revenue_mean, revenue_sigma : float, default 30.0, 1.0
        Mean and log-scale sigma of the lognormal revenue per conversion.
    market_cpm, market_sigma : float, default 5.0, 0.3
        Mean and log-scale sigma of the clearing price per 1,000 impressions. With the
        defaults an untargeted impression earns 1000 x 0.5% x 5% x 30 = $7.5 per thousand, a
        ROAS of about 1.5.
    bot_fraction : float, default 0.002
    bot_ctr : float, default 0.6
        Click probability of a bot on any ad (click spam; the history's bots show it).
    ivt_filter : bool, default True
        Drop bots' ad requests before the ad server (general invalid-traffic filtering).
    request_share : float, default 1.0
        Share of page views that are ad requests, in (0, 1].
    start : str or pandas.Timestamp, default "2026-01-01"
    """

    n_users: int = 50_000
    days: int = 30
    n_campaigns: int = 24
    seed: int = 0
    informative: bool = True
    n_categories: int = 20
    n_run_of_network: int = 4
    events_per_user_day: float = 1.2
    base_ctr: float = 0.0085
    interest_effect: float = 0.3
    conversion_rate: float = 0.05
    revenue_mean: float = 30.0
    revenue_sigma: float = 1.0
    market_cpm: float = 5.0
    market_sigma: float = 0.3
    bot_fraction: float = 0.002
    bot_ctr: float = 0.6
    ivt_filter: bool = True
    request_share: float = 1.0
    start: Any = "2026-01-01"

    def __post_init__(self) -> None:
        for name, lo in (("n_users", 10), ("days", 2), ("n_categories", 2), ("seed", 0),
                         ("n_run_of_network", 1)):
            v = getattr(self, name)
            check_param(name, v, _is_int(v) and v >= lo, f"an integer >= {lo}")
            check_param("n_run_of_network", self.n_run_of_network,
                    self.n_run_of_network <= self.n_categories, "at most n_categories")
        check_param("n_campaigns", self.n_campaigns,
                    _is_int(self.n_campaigns) and self.n_campaigns > self.n_run_of_network,
                    f"an integer > n_run_of_network ({self.n_run_of_network})")
        check_param("informative", self.informative, isinstance(self.informative, bool),
                    "True or False")
        check_param("ivt_filter", self.ivt_filter, isinstance(self.ivt_filter, bool),
                    "True or False")
        for name in ("events_per_user_day", "revenue_mean", "market_cpm"):
            v = getattr(self, name)
            check_param(name, v, _is_real(v) and v > 0, "a positive number")
        for name in ("interest_effect", "revenue_sigma", "market_sigma"):
            v = getattr(self, name)
            check_param(name, v, _is_real(v) and v >= 0, "a non-negative number")
        for name in ("base_ctr", "conversion_rate", "bot_ctr", "request_share"):
            v = getattr(self, name)
            check_param(name, v, _is_real(v) and 0 < v <= 1, "a probability in (0, 1]")
        check_param("bot_fraction", self.bot_fraction,
                    _is_real(self.bot_fraction) and 0 <= self.bot_fraction < 1,
                    "a number in [0, 1)")

    def sim_config(self, base_ctr: float | None = None, interest_effect: float | None = None
                   ) -> SimConfig:
        """The clickstream simulator's configuration for this world."""
        return SimConfig(
            n_users=self.n_users, days=self.days, n_categories=self.n_categories,
            seed=self.seed, start=self.start, events_per_user_day=self.events_per_user_day,
            base_ctr=self.base_ctr if base_ctr is None else base_ctr,
            interest_effect=self.interest_effect if interest_effect is None else interest_effect,
            conversion_rate=self.conversion_rate, revenue_mean=self.revenue_mean,
            revenue_sigma=self.revenue_sigma, bot_fraction=self.bot_fraction,
            bot_ctr=self.bot_ctr)


@dataclass(frozen=True)
class CampaignSpec:
    """An advertiser's campaign in the world (the ground truth the Engine's Campaign mirrors).

    ``bid`` is the CPM bid, or the value per click (CPC) or per conversion (CPA);
    ``budget`` is the total spend allowed over the whole period (currency); ``creatives``
    are ``(creative id, category)`` pairs. Targeted campaigns advertise in one category;
    run-of-network ones (``category="run_of_network"``) rotate creatives over several.
    """

    id: str
    advertiser: str
    category: str
    targeted: bool
    pricing: str
    bid: float
    budget: float
    creatives: tuple[tuple[str, str], ...]


@dataclass(frozen=True, eq=False)
class AdWorld:
    """A simulated world of users, advertisers and their responses; see the module docstring.

    Attributes
    ----------
    config : WorldConfig
    clickstream : Clickstream
        Browsing with ground truth (its organic ad events form the training history).
    campaigns : tuple of CampaignSpec
    click_prob : ndarray of shape (n_users, n_categories)
        Ground-truth click probability of each user on a creative of each category.
    house_ctr : float
        :math:`\\bar p`, the click probability of the house ad (and of everything in the
        null world).
    """

    config: WorldConfig
    clickstream: Clickstream = field(repr=False)
    campaigns: tuple[CampaignSpec, ...] = field(repr=False)
    click_prob: np.ndarray = field(repr=False)
    house_ctr: float
    _creative_cat: dict = field(repr=False)
    _event_ms: np.ndarray = field(repr=False)  # event times in epoch ms, sorted

    @property
    def categories(self) -> tuple[str, ...]:
        return self.clickstream.categories

    @property
    def start(self) -> pd.Timestamp:
        return self.clickstream.start

    @property
    def is_bot(self) -> np.ndarray:
        """Ground truth: which users are bots, shape (n_users,)."""
        return self.clickstream.users["is_bot"].to_numpy()

    def day_start_ms(self, day: int) -> int:
        """Epoch milliseconds at the start of day ``day`` (0-based)."""
        return int(self.start.value // 1_000_000) + int(day) * _DAY_MS

    def creative_category(self, creative_ids: Any) -> np.ndarray:
        """Category code of each creative id (-1 for the house ad and unknown ids)."""
        get = self._creative_cat.get
        return np.fromiter((get(c, -1) for c in creative_ids), dtype=np.int64,
                           count=len(creative_ids))

    def events(self, day_from: int, day_to: int) -> pd.DataFrame:
        """The simulator's events in days ``[day_from, day_to)``, organic ads included."""
        ev = self.clickstream.events
        ts = self._event_ms
        lo, hi = self.day_start_ms(day_from), self.day_start_ms(day_to)
        a, b = np.searchsorted(ts, [lo, hi])  # events are sorted by time
        return ev.iloc[a:b]

    def requests(self, day: int) -> tuple[pd.DataFrame, np.ndarray]:
        """The ad requests of day ``day`` and their users' indices.

        Returns
        -------
        frame : DataFrame
            ``user_id``, ``ts`` (datetime64[ms, UTC]), ``request_id`` (``"d014-0000042"``),
            ``page_category`` (str), ``slot`` (``"top"``), in time order.
        user_index : ndarray of shape (n_requests,)
            Row of each request's user in the ground-truth arrays.
        """
        ev = self.events(day, day + 1)
        pv = ev[ev["event"].to_numpy() == "page_view"]
        users = pv["user_id"].to_numpy()
        idx = _user_index(self.clickstream, users)
        keep = np.ones(len(pv), dtype=bool)
        if self.config.ivt_filter:
            keep &= ~self.is_bot[idx]
        if self.config.request_share < 1.0:
            rng = np.random.default_rng([self.config.seed, int(day), 11])
            keep &= rng.random(len(pv)) < self.config.request_share
        pv, idx = pv[keep], idx[keep]
        n = len(pv)
        rid = np.char.add(f"d{day:03d}-", np.char.zfill(np.arange(n).astype(np.str_), 7))
        frame = pd.DataFrame({
            "user_id": pv["user_id"].to_numpy(),
            "ts": pv["ts"].array,  # stays datetime64[ms, UTC]
            "request_id": rid.astype(object),
            "page_category": pv["category"].astype(str).to_numpy(),
            "slot": np.full(n, "top", dtype=object),
        })
        return frame, idx

    def market_price(self, ts_ms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Clearing price per 1,000 impressions of impressions at ``ts_ms`` (epoch ms)."""
        cfg = self.config
        s = cfg.market_sigma
        hour = (np.asarray(ts_ms, dtype=np.int64) // 3_600_000) % 24
        # busy hours cost more; normalized so the traffic-weighted mean price is market_cpm
        w = _HOURLY_PROFILE / (_HOURLY_PROFILE @ _HOURLY_PROFILE / _HOURLY_PROFILE.sum())
        base = rng.lognormal(math.log(cfg.market_cpm) - 0.5 * s * s, s, len(hour))
        return base * w[hour]

    def respond(self, user_index: np.ndarray, category: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw the response to impressions of creatives in ``category`` (-1: house ad).

        Returns
        -------
        clicks, conversions : ndarray of int32, shape (n,)
        revenue : ndarray of float64, shape (n,)
        """
        p = self.click_probability(user_index, category)
        clicks = rng.random(len(p)) < p
        cfg = self.config
        can_convert = (category >= 0) & ~self.is_bot[user_index]
        conv = clicks & can_convert & (rng.random(len(p)) < cfg.conversion_rate)
        tau = cfg.revenue_sigma
        rev = rng.lognormal(math.log(cfg.revenue_mean) - 0.5 * tau * tau, tau, len(p))
        return clicks.astype(np.int32), conv.astype(np.int32), np.where(conv, rev, 0.0)

    def click_probability(self, user_index: np.ndarray, category: np.ndarray) -> np.ndarray:
        """Ground-truth click probability per impression (-1 category: the house ad)."""
        user_index = np.asarray(user_index, dtype=np.int64)
        category = np.asarray(category, dtype=np.int64)
        p = np.full(len(user_index), self.house_ctr)
        ad = category >= 0
        p[ad] = self.click_prob[user_index[ad], category[ad]]
        p[self.is_bot[user_index]] = self.config.bot_ctr
        return p


def _epoch_ms(ts: pd.Series) -> np.ndarray:
    """Epoch milliseconds of a ``datetime64[ms, UTC]`` column."""
    return ts.dt.tz_convert(None).to_numpy().astype("datetime64[ms]").view("int64")


def _user_index(cs: Clickstream, users: np.ndarray) -> np.ndarray:
    if cs.config.user_ids == "int":
        return np.asarray(users, dtype=np.int64)
    return pd.Index(cs.users["user_id"]).get_indexer(users)


def _campaigns(cfg: WorldConfig, categories: tuple[str, ...], rng: np.random.Generator,
               n_requests: float) -> tuple[CampaignSpec, ...]:
    """Advertisers and their campaigns: targeted ones spread over the categories, then the
    run-of-network ones. Bids are drawn around what an impression is worth to the advertiser."""
    k = len(categories)
    n_t = cfg.n_campaigns - cfg.n_run_of_network
    # behavioural campaigns stay out of sensitive categories, which never enter profiles
    open_cats = np.array([i for i, c in enumerate(categories)
                          if c.lower() not in DEFAULT_SENSITIVE_CATEGORIES])
    order = np.concatenate([rng.permutation(open_cats)
                            for _ in range(-(-n_t // len(open_cats)))])[:n_t]
    # run-of-network advertisers (broad-appeal retailers) rotate a creative per category:
    # together their creatives cover every category once
    ron_cats = np.array_split(rng.permutation(k), cfg.n_run_of_network)
    value_click = cfg.conversion_rate * cfg.revenue_mean  # revenue of a click, on average
    out = []
    # budgets rarely bind: twice the market cost of three times an equal share of the requests
    budget = 3.0 / cfg.n_campaigns * n_requests * cfg.market_cpm * 2.0 / 1000.0
    for i in range(cfg.n_campaigns):
        targeted = i < n_t
        pricing = _PRICINGS[i % 3] if targeted else "cpm"
        # advertisers bid a quarter to a half of what they expect to earn (ROAS 2-4)
        margin = rng.uniform(0.25, 0.5)
        if pricing == "cpc":
            bid = value_click * margin
        elif pricing == "cpa":
            bid = cfg.revenue_mean * margin
        else:
            bid = cfg.market_cpm * rng.uniform(0.8, 1.6)
        if targeted:
            cat = categories[int(order[i])]
            cid = f"c{i:02d}-{cat}"
            creatives = ((f"{cid}-a", cat), (f"{cid}-b", cat))
        else:
            j = i - n_t
            cat = "run_of_network"
            cid = f"ron{j:02d}"
            creatives = tuple((f"{cid}-{categories[c]}", categories[c]) for c in ron_cats[j])
        out.append(CampaignSpec(id=cid, advertiser=f"adv{i // 2:02d}", category=cat,
                                targeted=targeted, pricing=pricing, bid=float(round(bid, 4)),
                                budget=float(round(budget, 2)), creatives=creatives))
    return tuple(out)


def make_world(config: WorldConfig | None = None, **overrides: Any) -> AdWorld:
    """Build an :class:`AdWorld`: browsing, campaigns and the ground-truth response model.

    Parameters
    ----------
    config : WorldConfig, optional
        Default ``WorldConfig()`` (50,000 users, 30 days, 24 campaigns).
    **overrides
        Fields of :class:`WorldConfig` replacing those of ``config``.

    Returns
    -------
    AdWorld

    Raises
    ------
    ConfigError
        If a parameter is out of range (the message names it).

    Examples
    --------
    >>> w = make_world(WorldConfig(n_users=500, days=4, n_campaigns=6, seed=1))
    >>> w.click_prob.shape
    (500, 20)
    """
    cfg = WorldConfig() if config is None else config
    check_param("config", cfg, isinstance(cfg, WorldConfig), "a WorldConfig")
    if overrides:
        cfg = replace(cfg, **overrides)
    base = cfg.sim_config()
    # interests come first in the simulator's random stream, so this draw is the world's own
    _, _, interests, _, is_bot = _draw_users(np.random.default_rng(cfg.seed), base)
    k = cfg.n_categories
    p_inf = np.minimum(1.0, cfg.base_ctr * np.power(k * interests, cfg.interest_effect))
    house_ctr = float(p_inf[~is_bot].mean()) if (~is_bot).any() else cfg.base_ctr
    if cfg.informative:
        cs = simulate(base)
        click_prob = p_inf
    else:
        # the same browsing, clicks blind to interests at the same mean rate
        cs = simulate(cfg.sim_config(base_ctr=house_ctr, interest_effect=0.0))
        click_prob = np.full_like(p_inf, house_ctr)
    click_prob.setflags(write=False)
    rng = np.random.default_rng([cfg.seed, 3])
    n_pv = float((cs.events["event"].to_numpy() == "page_view").sum())
    campaigns = _campaigns(cfg, cs.categories, rng, n_pv)
    code = {c: i for i, c in enumerate(cs.categories)}
    creative_cat = {cr: code[cat] for c in campaigns for cr, cat in c.creatives}
    return AdWorld(config=cfg, clickstream=cs, campaigns=campaigns, click_prob=click_prob,
                   house_ctr=house_ctr, _creative_cat=creative_cat,
                   _event_ms=_epoch_ms(cs.events["ts"]))

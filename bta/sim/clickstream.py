r"""A clickstream world with ground truth: users with latent interests browse, see ads, respond.

The simulator is fully vectorized NumPy (no per-user or per-event Python loop): a world of
2M users over 30 days at the default rate (~20M events) takes seconds, not minutes.

The model
---------
Let :math:`K` be ``n_categories``, :math:`G` ``n_groups`` and :math:`T` the period
``[start, start + days)``. Every random draw comes from ``np.random.default_rng(seed)``, in a
fixed order, so one seed gives one frame.

**Users and interests.** Each group :math:`g` has ``n_favorites`` favourite categories
:math:`F_g` (drawn without replacement) and the planted profile

.. math:: \pi_{g,c} = \phi \, \frac{[c \in F_g]}{|F_g|} + \frac{1 - \phi}{K},

with :math:`\phi` = ``group_focus``. User :math:`u` gets a uniform group :math:`g_u` and
interests :math:`\theta_u \sim \mathrm{Dirichlet}(\alpha \, \pi_{g_u})` with
:math:`\alpha` = ``interest_concentration``, so :math:`E[\theta_u] = \pi_{g_u}`.

**Activity.** A human's activity is :math:`a_u \sim \mathrm{LogNormal}(-\sigma^2/2, \sigma)`
(mean 1, heavy right tail like real traffic; :math:`\sigma` = ``activity_sigma``); a bot's is
``bot_activity``. Exactly ``round(bot_fraction * n_users)`` users are bots. User :math:`u`
starts visits as a Poisson process of rate :math:`\lambda_u = s \, a_u` per day
(:math:`s` = ``sessions_per_day``) modulated by a fixed daily cycle in UTC (trough around
04:00, peak around 20:00-21:00): the number of visits is :math:`\mathrm{Poisson}(\lambda_u
\cdot days)` and their start times are i.i.d. from the cycle-weighted period.

**Within a visit.** :math:`P \sim \mathrm{Geometric}(1/m)` page views (:math:`m` =
``pages_per_session``, support :math:`\{1, 2, \dots\}`), consecutive pages
:math:`\mathrm{LogNormal}(\ln 45\,\mathrm{s}, 1)` apart, clipped to [1 s, 25 min] so that one
visit never contains a 30-minute gap. Each page's category is drawn from :math:`\theta_u`.
After a page: a search in the page's category with probability ``search_rate`` (a few seconds
later); an ad impression with probability ``ad_rate`` (1 for bots), 0.5-3 s later, whose
category is the page's with probability ``ad_match`` and uniform otherwise.

**Clicks** follow an impression of category :math:`c` with probability

.. math:: p_{u,c} = \min\bigl(1, \; b \, (K \theta_{u,c})^{\eta}\bigr)

for humans (:math:`b` = ``base_ctr``: the CTR of a user with uniform interests;
:math:`\eta` = ``interest_effect``) and ``bot_ctr`` for bots (click spam, blind to
interests), a few seconds after the impression. :meth:`Clickstream.click_probability` returns
:math:`p`. With the defaults the human CTR is about 0.6%.

**Conversions** follow a human click with probability ``conversion_rate``, in the clicked
ad's category (so ``category`` is never null), half of them minutes later in the same visit
(LogNormal, median 3 min, at most 25 min) and half later (Exponential, mean 1 day, at most
7 days, a common attribution window). Revenue is :math:`\mathrm{LogNormal}(\ln R - \tau^2/2,
\tau)` with mean :math:`R` = ``revenue_mean``, :math:`\tau` = ``revenue_sigma``. Bots never
convert.

**Size.** The expected number of events per visit is
:math:`m\,(1 + q + r\,(1 + \bar p_u (1 + \kappa)))` for a human (:math:`q` search rate,
:math:`r` ad rate, :math:`\bar p_u` the user's expected CTR, :math:`\kappa` conversion rate)
and :math:`m\,(2 + q + b_{bot})` for a bot. Given ``events_per_user_day`` (default 0.33 when
neither it nor ``sessions_per_day`` is given), :math:`s` is solved so that the mean over the
drawn users of :math:`\lambda_u \times` events per visit equals it: 2M users over 30 days then
give about :math:`0.33 \times 30 \times 2\mathrm{M} \approx 20\mathrm{M}` events. Events that
would fall at or after the end of the period are dropped (censoring), which trims the total a
little.

**Sessions.** ``session_id`` is the 30-minute sessionization of each user's events: a new
session starts at a user's first event and after every gap of more than 30 minutes. Visits
closer than that merge; a late conversion opens its own session.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from bta.errors import ConfigError, check_param
from bta.events import STANDARD_EVENTS

__all__ = [
    "CATEGORY_NAMES",
    "DEFAULT_EVENTS_PER_USER_DAY",
    "SimConfig",
    "Clickstream",
    "simulate_clickstream",
    "simulate",
]

#: Readable, IAB-like names of the first categories; further ones are ``cat_021``, ...
CATEGORY_NAMES = (
    "autos", "travel", "finance", "sports", "news", "technology", "health", "food",
    "fashion", "home", "entertainment", "education", "real_estate", "pets", "gaming", "music",
    "business", "science", "parenting", "beauty",
)  # fmt: skip

#: Default target size when neither ``sessions_per_day`` nor ``events_per_user_day`` is given.
DEFAULT_EVENTS_PER_USER_DAY = 0.33

_PAGE_VIEW, _SEARCH, _IMPRESSION, _CLICK, _CONVERSION = (
    STANDARD_EVENTS.index(name)
    for name in ("page_view", "search", "ad_impression", "ad_click", "conversion")
)

_SECOND = 1_000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_SESSION_GAP = 30 * _MINUTE
# Within-visit delays stay below the 30-minute session gap with room to spare, so that a
# generated visit is never split by the sessionization.
_MAX_IN_VISIT_GAP = 25 * _MINUTE
_MAX_CONVERSION_DELAY = 7 * _DAY  # a common post-click attribution window

# Relative traffic per UTC hour: night trough, working-day plateau, evening peak, the usual
# shape of consumer web traffic. Only ratios matter.
_HOURLY_PROFILE = np.array(
    [0.55, 0.40, 0.30, 0.25, 0.22, 0.25, 0.35, 0.50, 0.70, 0.85, 0.90, 0.95,
     1.00, 1.00, 0.95, 0.95, 1.00, 1.10, 1.25, 1.45, 1.65, 1.70, 1.45, 0.95]
)  # fmt: skip


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check_unit(name: str, x: object, upper_open: bool = False) -> None:
    if upper_open:
        check_param(name, x, _is_real(x) and 0 <= x < 1, "a number in [0, 1)")
    else:
        check_param(name, x, _is_real(x) and 0 <= x <= 1, "a number in [0, 1]")


@dataclass(frozen=True)
class SimConfig:
    """Parameters of :func:`simulate_clickstream`, validated on construction.

    The fields are the keyword arguments of :func:`simulate_clickstream`, where each is
    documented; the module docstring gives the model they parametrize. After validation
    ``start`` is a UTC ``pd.Timestamp`` (a naive ``start`` is read as UTC).

    Raises
    ------
    ConfigError
        If a field is out of range, naming the field, what was expected and what was got.
    """

    n_users: int = 10_000
    days: float = 30
    n_categories: int = 20
    seed: int = 0
    start: str | pd.Timestamp = "2026-01-01"
    n_groups: int | None = None
    sessions_per_day: float | None = None
    events_per_user_day: float | None = None
    pages_per_session: float = 3.0
    search_rate: float = 0.1
    ad_rate: float = 0.5
    ad_match: float = 0.5
    base_ctr: float = 0.002
    interest_effect: float = 1.0
    conversion_rate: float = 0.03
    revenue_mean: float = 50.0
    revenue_sigma: float = 1.0
    bot_fraction: float = 0.005
    bot_activity: float = 20.0
    bot_ctr: float = 0.6
    activity_sigma: float = 1.0
    interest_concentration: float = 20.0
    group_focus: float = 0.8
    n_favorites: int = 3
    user_ids: Literal["int", "str"] = "int"

    def __post_init__(self) -> None:
        check_param("n_users", self.n_users, _is_int(self.n_users) and self.n_users >= 1,
                    "an integer >= 1")  # fmt: skip
        check_param("days", self.days, _is_real(self.days) and self.days * _DAY >= 1,
                    "a positive number of days")  # fmt: skip
        check_param("n_categories", self.n_categories,
                    _is_int(self.n_categories) and self.n_categories >= 1, "an integer >= 1")
        check_param("seed", self.seed, _is_int(self.seed) and self.seed >= 0,
                    "a non-negative integer")  # fmt: skip
        try:
            start = pd.Timestamp(self.start)
        except (TypeError, ValueError):
            start = pd.NaT
        check_param("start", self.start, start is not pd.NaT,
                    "a date or timestamp such as '2026-01-01'")  # fmt: skip
        start = start.tz_localize("UTC") if start.tz is None else start.tz_convert("UTC")
        object.__setattr__(self, "start", start.as_unit("ms").floor("ms"))
        check_param("n_groups", self.n_groups,
                    self.n_groups is None or (_is_int(self.n_groups) and self.n_groups >= 1),
                    "None or an integer >= 1")  # fmt: skip
        for name in ("sessions_per_day", "events_per_user_day"):
            x = getattr(self, name)
            check_param(name, x, x is None or (_is_real(x) and x > 0), "None or a positive number")
        if self.sessions_per_day is not None and self.events_per_user_day is not None:
            raise ConfigError(
                "give at most one of sessions_per_day and events_per_user_day, got "
                f"sessions_per_day={self.sessions_per_day!r} and "
                f"events_per_user_day={self.events_per_user_day!r}"
            )
        check_param("pages_per_session", self.pages_per_session,
                    _is_real(self.pages_per_session) and self.pages_per_session >= 1,
                    "a number >= 1")  # fmt: skip
        for name in ("search_rate", "ad_rate", "ad_match", "base_ctr", "conversion_rate",
                     "bot_ctr", "group_focus"):  # fmt: skip
            _check_unit(name, getattr(self, name))
        _check_unit("bot_fraction", self.bot_fraction, upper_open=True)
        for name in ("interest_effect", "revenue_sigma", "activity_sigma"):
            x = getattr(self, name)
            check_param(name, x, _is_real(x) and x >= 0, "a non-negative number")
        for name in ("revenue_mean", "bot_activity", "interest_concentration"):
            x = getattr(self, name)
            check_param(name, x, _is_real(x) and x > 0, "a positive number")
        check_param("n_favorites", self.n_favorites,
                    _is_int(self.n_favorites) and self.n_favorites >= 1, "an integer >= 1")
        check_param("user_ids", self.user_ids, self.user_ids in ("int", "str"),
                    "one of 'int', 'str'")  # fmt: skip

    @property
    def resolved_n_groups(self) -> int:
        """``n_groups``, or ``max(2, n_categories // 3)`` when it is None."""
        return self.n_groups if self.n_groups is not None else max(2, self.n_categories // 3)


@dataclass(frozen=True, eq=False)
class Clickstream:
    """A simulated clickstream and the ground truth that generated it.

    Attributes
    ----------
    events : pandas.DataFrame
        One row per event, sorted by ``ts`` (ties in generation order). Columns: ``user_id``
        (int64, or ``str`` such as ``"u0000042"`` with ``user_ids="str"``), ``ts``
        (``datetime64[ms, UTC]`` in ``[start, end)``), ``event`` (categorical over
        ``STANDARD_EVENTS``), ``category`` (categorical over ``categories``, never null:
        conversions carry the clicked ad's category), ``value`` (float64, revenue for
        conversions, NaN elsewhere), ``session_id`` (int64, global; 30-minute sessionization
        of each user's events).
    users : pandas.DataFrame
        One row per user, in user order: ``user_id``, ``group`` (int64), ``is_bot`` (bool),
        ``activity`` (float64, the rate multiplier :math:`a_u`), ``sessions_per_day``
        (float64, the visit rate :math:`\\lambda_u`), ``n_events`` (int64, realized).
    interests : ndarray of shape (n_users, n_categories)
        Latent interests :math:`\\theta`, each row a probability vector (float64).
    groups : ndarray of shape (n_users,)
        Planted interest group of each user (int64).
    group_profiles : ndarray of shape (n_groups, n_categories)
        Planted profiles :math:`\\pi_g` (rows sum to 1).
    categories : tuple of str
        Category names, code order.
    start, end : pandas.Timestamp
        The period ``[start, end)`` in UTC.
    seed : int
        The seed used.
    config : SimConfig
        All parameters used.
    sessions_per_day : float
        The visit rate :math:`s` of an average human (given or solved from
        ``events_per_user_day``).
    expected_events_per_user_day : float
        Model expectation of events per user per day before censoring at ``end``.
    """

    # The data stay out of repr(), which shows the parameters instead of 20M rows.
    events: pd.DataFrame = field(repr=False)
    users: pd.DataFrame = field(repr=False)
    interests: np.ndarray = field(repr=False)
    groups: np.ndarray = field(repr=False)
    group_profiles: np.ndarray = field(repr=False)
    categories: tuple[str, ...]
    start: pd.Timestamp
    end: pd.Timestamp
    seed: int
    config: SimConfig
    sessions_per_day: float
    expected_events_per_user_day: float

    def click_probability(self) -> np.ndarray:
        """Ground-truth probability that each user clicks an ad of each category.

        Returns
        -------
        ndarray of shape (n_users, n_categories)
            :math:`\\min(1, b (K\\theta_{u,c})^\\eta)` for humans, ``bot_ctr`` for bots.
        """
        p = _click_prob(self.interests, self.interests.shape[1], self.config)
        p[self.users["is_bot"].to_numpy()] = self.config.bot_ctr
        return p


def _click_prob(theta: np.ndarray, k: int, cfg: SimConfig) -> np.ndarray:
    """Human click probability for interest values ``theta`` among ``k`` categories."""
    return np.minimum(1.0, cfg.base_ctr * np.power(k * theta, cfg.interest_effect))


def _category_names(k: int) -> tuple[str, ...]:
    extra = tuple(f"cat_{i:03d}" for i in range(len(CATEGORY_NAMES) + 1, k + 1))
    return (CATEGORY_NAMES + extra)[:k]


def _lognormal_ms(rng: np.random.Generator, median_ms: float, sigma: float, n: int,
                  lo: int, hi: int) -> np.ndarray:  # fmt: skip
    return np.clip(rng.lognormal(math.log(median_ms), sigma, n), lo, hi).astype(np.int64)


def _segment_ids(counts: np.ndarray, dtype: type) -> np.ndarray:
    """``[0]*counts[0] + [1]*counts[1] + ...``."""
    return np.repeat(np.arange(len(counts), dtype=dtype), counts)


def _draw_users(rng: np.random.Generator, cfg: SimConfig):
    n, k, g = cfg.n_users, cfg.n_categories, cfg.resolved_n_groups
    n_fav = min(cfg.n_favorites, k)
    favorites = np.argsort(rng.random((g, k)), axis=1)[:, :n_fav]
    profiles = np.full((g, k), (1.0 - cfg.group_focus) / k)
    profiles[np.arange(g)[:, None], favorites] += cfg.group_focus / n_fav
    groups = rng.integers(0, g, n)
    # Dirichlet by normalized gammas: NumPy's Generator.dirichlet takes one alpha vector,
    # and here every user has the alpha of its group.
    gam = rng.standard_gamma(cfg.interest_concentration * profiles[groups])
    total = gam.sum(axis=1, keepdims=True)
    # Tiny shapes can underflow a whole row to 0; such a user falls back to its group profile.
    empty = total[:, 0] <= 0
    gam[empty] = profiles[groups[empty]]
    total[empty] = 1.0
    interests = gam / total
    sigma = cfg.activity_sigma
    activity = rng.lognormal(-0.5 * sigma * sigma, sigma, n)
    is_bot = np.zeros(n, dtype=bool)
    is_bot[rng.choice(n, round(cfg.bot_fraction * n), replace=False)] = True
    activity[is_bot] = cfg.bot_activity
    return profiles, groups, interests, activity, is_bot


def _events_per_visit(interests: np.ndarray, is_bot: np.ndarray, cfg: SimConfig) -> np.ndarray:
    p = _click_prob(interests, interests.shape[1], cfg)
    ctr = cfg.ad_match * np.einsum("uc,uc->u", interests, p) + (1 - cfg.ad_match) * p.mean(axis=1)
    human = 1 + cfg.search_rate + cfg.ad_rate * (1 + ctr * (1 + cfg.conversion_rate))
    bot = 2 + cfg.search_rate + cfg.bot_ctr
    return cfg.pages_per_session * np.where(is_bot, bot, human)


def _visit_starts(rng: np.random.Generator, start_ms: int, period_ms: int, n: int) -> np.ndarray:
    """``n`` times in ``[0, period_ms)`` (ms after start) drawn from the daily cycle."""
    h0 = start_ms // _HOUR
    n_bins = -(-(start_ms + period_ms) // _HOUR) - h0
    lo = np.maximum((h0 + np.arange(n_bins)) * _HOUR, start_ms)
    hi = np.minimum((h0 + np.arange(1, n_bins + 1)) * _HOUR, start_ms + period_ms)
    weights = _HOURLY_PROFILE[(h0 + np.arange(n_bins)) % 24] * (hi - lo)
    cdf = np.cumsum(weights)
    b = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), n_bins - 1)
    within = (rng.random(n) * (hi - lo)[b]).astype(np.int64)
    return lo[b] - start_ms + within


def _draw_categories(rng: np.random.Generator, interests: np.ndarray, users: np.ndarray):
    """One category per entry of ``users`` drawn from that user's interests.

    Rows of the cumulative interests are offset by the user index, which makes one sorted
    array over all users: a single ``searchsorted`` then samples every row at once.
    """
    n, k = interests.shape
    cum = np.cumsum(interests, axis=1)
    cum[:, -1] = 1.0  # so that row u ends exactly at u + 1 despite rounding
    cum += np.arange(n)[:, None]
    q = users + (1.0 - rng.random(len(users)))  # in (u, u + 1]
    idx = np.searchsorted(cum.ravel(), q, side="left") - users.astype(np.int64) * k
    # For large u, u + tiny rounds to u, which is the end of row u - 1: such a draw sits
    # at the very start of row u, i.e. its first category.
    return np.maximum(idx, 0).astype(np.int32)


def _draw_events(rng: np.random.Generator, cfg: SimConfig, interests: np.ndarray,
                 is_bot: np.ndarray, rate: np.ndarray, start_ms: int, period_ms: int):  # fmt: skip
    """All events in generation order, censored at the end of the period.

    Returns ``user`` (int32), ``ts`` (int64 ms after start), ``ev`` (int8 codes), ``cat``
    (int32 codes) and ``revenue`` for the conversions, which come last.
    """
    k = cfg.n_categories
    # Visits, sorted by (user, start) so that the events come out roughly in time order
    # within a user.
    n_visits = rng.poisson(rate * cfg.days)
    v_user = _segment_ids(n_visits, np.int32 if cfg.n_users < 2**31 else np.int64)
    v_start = _visit_starts(rng, start_ms, period_ms, len(v_user))
    v_start = v_start[np.argsort(v_user.astype(np.int64) * period_ms + v_start, kind="stable")]

    # Page views: a geometric number per visit, at cumulative gaps from the visit's start.
    n_pages = rng.geometric(1.0 / cfg.pages_per_session, len(v_user))
    p_visit = _segment_ids(n_pages, np.int64)
    p_ts = _lognormal_ms(rng, 45 * _SECOND, 1.0, len(p_visit), _SECOND, _MAX_IN_VISIT_GAP)
    first = np.cumsum(n_pages) - n_pages
    p_ts[first] = 0
    np.cumsum(p_ts, out=p_ts)
    p_ts += (v_start - p_ts[first])[p_visit]
    p_user = v_user[p_visit]
    del p_visit, v_start, v_user, first
    p_cat = _draw_categories(rng, interests, p_user)

    # Searches and impressions hang off page views.
    s_idx = np.flatnonzero(rng.random(len(p_user)) < cfg.search_rate)
    s_ts = p_ts[s_idx] + _lognormal_ms(rng, 5 * _SECOND, 0.7, len(s_idx), _SECOND, 2 * _MINUTE)
    ad_prob = np.where(is_bot[p_user], 1.0, cfg.ad_rate)
    i_idx = np.flatnonzero(rng.random(len(p_user)) < ad_prob)
    del ad_prob
    i_user = p_user[i_idx]
    i_ts = p_ts[i_idx] + rng.integers(_SECOND // 2, 3 * _SECOND, len(i_idx))
    i_cat = np.where(rng.random(len(i_idx)) < cfg.ad_match, p_cat[i_idx],
                     rng.integers(0, k, len(i_idx), dtype=np.int32))  # fmt: skip

    # Clicks: interest-driven for humans, blind spam for bots.
    i_bot = is_bot[i_user]
    click_p = np.where(i_bot, cfg.bot_ctr, _click_prob(interests[i_user, i_cat], k, cfg))
    c_idx = np.flatnonzero(rng.random(len(i_idx)) < click_p)
    del click_p
    c_user, c_cat = i_user[c_idx], i_cat[c_idx]
    c_ts = i_ts[c_idx] + _lognormal_ms(rng, 8 * _SECOND, 0.8, len(c_idx), _SECOND, 5 * _MINUTE)

    # Conversions: humans only, minutes or days after the click.
    conv_p = np.where(i_bot[c_idx], 0.0, cfg.conversion_rate)
    v_idx = np.flatnonzero(rng.random(len(c_idx)) < conv_p)
    short = _lognormal_ms(rng, 3 * _MINUTE, 1.0, len(v_idx), _SECOND, _MAX_IN_VISIT_GAP)
    long = np.clip(rng.exponential(_DAY, len(v_idx)), _SECOND, _MAX_CONVERSION_DELAY)
    delay = np.where(rng.random(len(v_idx)) < 0.5, short, long.astype(np.int64))
    tau = cfg.revenue_sigma
    revenue = rng.lognormal(math.log(cfg.revenue_mean) - 0.5 * tau * tau, tau, len(v_idx))
    v_ts = c_ts[v_idx] + delay
    revenue = revenue[v_ts < period_ms]

    sizes = [len(p_ts), len(s_ts), len(i_ts), len(c_ts), len(v_ts)]
    codes = np.array([_PAGE_VIEW, _SEARCH, _IMPRESSION, _CLICK, _CONVERSION], dtype=np.int8)
    ts = np.concatenate([p_ts, s_ts, i_ts, c_ts, v_ts])
    keep = ts < period_ms  # censor at the end of the period
    ts = ts[keep]
    user = np.concatenate([p_user, p_user[s_idx], i_user, c_user, c_user[v_idx]])[keep]
    cat = np.concatenate([p_cat, p_cat[s_idx], i_cat, c_cat, c_cat[v_idx]])[keep]
    ev = np.repeat(codes, sizes)[keep]
    return user, ts, ev, cat, revenue


def _sessionize(user: np.ndarray, ts: np.ndarray, period_ms: int) -> np.ndarray:
    """Global session ids (int64): a new one at each user's first event and after > 30 min.

    Ids are numbered in (user, time) order and returned aligned with the input rows.
    """
    # With this stride a change of user always moves the key by more than the session gap,
    # so one test on consecutive keys finds both kinds of session start. The key fits int64
    # for any world that fits in memory (2M users x 30 days ~ 5e15 < 9e18); lexsort is the
    # exact fallback beyond.
    stride = period_ms + _SESSION_GAP + 1
    if len(user) and int(user.max()) * stride < 2**62:
        key = user.astype(np.int64) * stride + ts
        by_user = np.argsort(key, kind="stable")
        key = key[by_user]
        new = np.diff(key, prepend=np.int64(-_SESSION_GAP - 1)) > _SESSION_GAP
        del key
    else:
        by_user = np.lexsort((ts, user))
        u, t = user[by_user], ts[by_user]
        new = np.ones(len(u), dtype=bool)
        new[1:] = (u[1:] != u[:-1]) | (t[1:] - t[:-1] > _SESSION_GAP)
    session = np.empty(len(user), dtype=np.int64)
    session[by_user] = np.cumsum(new, dtype=np.int64) - 1
    return session


def simulate(config: SimConfig) -> Clickstream:
    """Run the simulation described by ``config``; see :func:`simulate_clickstream`."""
    cfg = config
    rng = np.random.default_rng(cfg.seed)
    n, k = cfg.n_users, cfg.n_categories
    start_ms = cfg.start.value // 1_000_000
    period_ms = int(round(cfg.days * _DAY))
    profiles, groups, interests, activity, is_bot = _draw_users(rng, cfg)

    mean_per_day = float(np.mean(activity * _events_per_visit(interests, is_bot, cfg)))
    if cfg.sessions_per_day is not None:
        base_rate = float(cfg.sessions_per_day)
    else:
        base_rate = (cfg.events_per_user_day or DEFAULT_EVENTS_PER_USER_DAY) / mean_per_day
    rate = base_rate * activity

    user, ts, ev, cat, revenue = _draw_events(rng, cfg, interests, is_bot, rate, start_ms,
                                              period_ms)  # fmt: skip
    session = _sessionize(user, ts, period_ms)
    n_events = np.bincount(user, minlength=n).astype(np.int64)
    # Output sorted by time; ties keep generation order (page view before its search, ...).
    by_time = np.argsort(ts, kind="stable")
    ts_col = _ts_column(start_ms + ts[by_time])
    del ts
    value = np.full(len(by_time), np.nan)
    # Conversions are the last len(revenue) rows of the generation order.
    is_conv = by_time >= len(by_time) - len(revenue)
    value[is_conv] = revenue[by_time[is_conv] - (len(by_time) - len(revenue))]
    del is_conv
    categories = _category_names(k)
    events = pd.DataFrame(
        {
            "user_id": _user_column(cfg, user[by_time]),
            "ts": ts_col,
            "event": pd.Categorical.from_codes(
                ev[by_time], categories=list(STANDARD_EVENTS), validate=False
            ),
            "category": pd.Categorical.from_codes(
                cat[by_time], categories=list(categories), validate=False
            ),
            "value": value,
            "session_id": session[by_time],
        },
        copy=False,
    )
    users = pd.DataFrame(
        {
            "user_id": _user_column(cfg, np.arange(n)),
            "group": groups,
            "is_bot": is_bot,
            "activity": activity,
            "sessions_per_day": rate,
            "n_events": n_events,
        }
    )
    for arr in (interests, groups, profiles):
        arr.setflags(write=False)
    return Clickstream(
        events=events,
        users=users,
        interests=interests,
        groups=groups,
        group_profiles=profiles,
        categories=categories,
        start=cfg.start,
        end=cfg.start + pd.Timedelta(milliseconds=period_ms),
        seed=cfg.seed,
        config=cfg,
        sessions_per_day=base_rate,
        expected_events_per_user_day=base_rate * mean_per_day,
    )


def _ts_column(ms: np.ndarray) -> pd.Series:
    return pd.Series(ms.view("datetime64[ms]"), copy=False).dt.tz_localize("UTC")


def _user_column(cfg: SimConfig, codes: np.ndarray) -> np.ndarray | pd.Series:
    """User ids for user indices ``codes``: the index itself, or ``"u0000042"`` strings."""
    if cfg.user_ids == "int":
        return codes.astype(np.int64)
    width = max(7, len(str(cfg.n_users - 1)))
    ids = np.arange(cfg.n_users).astype(np.str_)
    names = np.char.add("u", np.char.zfill(ids, width))  # np.char: numpy 1.x has no np.strings
    # Build the strings once per user and gather them in Arrow: no Python object per event.
    col = pa.array(names).take(pa.array(codes))
    return pd.Series(col, dtype=pd.StringDtype("pyarrow", na_value=np.nan))


def simulate_clickstream(
    n_users: int = 10_000,
    days: float = 30,
    n_categories: int = 20,
    seed: int = 0,
    *,
    start: str | pd.Timestamp = "2026-01-01",
    n_groups: int | None = None,
    sessions_per_day: float | None = None,
    events_per_user_day: float | None = None,
    pages_per_session: float = 3.0,
    search_rate: float = 0.1,
    ad_rate: float = 0.5,
    ad_match: float = 0.5,
    base_ctr: float = 0.002,
    interest_effect: float = 1.0,
    conversion_rate: float = 0.03,
    revenue_mean: float = 50.0,
    revenue_sigma: float = 1.0,
    bot_fraction: float = 0.005,
    bot_activity: float = 20.0,
    bot_ctr: float = 0.6,
    activity_sigma: float = 1.0,
    interest_concentration: float = 20.0,
    group_focus: float = 0.8,
    n_favorites: int = 3,
    user_ids: Literal["int", "str"] = "int",
) -> Clickstream:
    """Simulate users with planted interest groups browsing, seeing ads and responding.

    The model and its formulas are in the docstring of :mod:`bta.sim.clickstream`.

    Parameters
    ----------
    n_users : int, default 10_000
        Number of users (>= 1).
    days : float, default 30
        Length of the period in days (> 0; fractions allowed).
    n_categories : int, default 20
        Number of content/ad categories :math:`K` (>= 1).
    seed : int, default 0
        Seed of ``np.random.default_rng``; one seed gives one world.
    start : str or pandas.Timestamp, default "2026-01-01"
        Start of the period; naive times are UTC.
    n_groups : int, optional
        Planted interest groups; default ``max(2, n_categories // 3)``.
    sessions_per_day : float, optional
        Visits per day of an average human (activity 1).
    events_per_user_day : float, optional
        Target mean events per user per day (bots included); ``sessions_per_day`` is solved
        from it. Give at most one of the two; with neither, the target is 0.33.
    pages_per_session : float, default 3.0
        Mean page views per visit (geometric, >= 1).
    search_rate : float, default 0.1
        Probability of a search after a page view.
    ad_rate : float, default 0.5
        Probability of an ad impression after a human's page view (bots: always).
    ad_match : float, default 0.5
        Probability that an impression is in the page's category (else uniform).
    base_ctr : float, default 0.002
        Click probability of a user with uniform interests, :math:`b`.
    interest_effect : float, default 1.0
        Exponent :math:`\\eta` of the interest lift :math:`(K\\theta)^\\eta` (0: no targeting
        signal).
    conversion_rate : float, default 0.03
        Probability that a human click converts.
    revenue_mean, revenue_sigma : float, default 50.0, 1.0
        Mean and log-scale sigma of the lognormal revenue per conversion.
    bot_fraction : float, default 0.005
        Fraction of users that are bots, in [0, 1).
    bot_activity : float, default 20.0
        Visit-rate multiplier of bots.
    bot_ctr : float, default 0.6
        Click probability of a bot on any impression.
    activity_sigma : float, default 1.0
        Log-scale sigma of human activity (heavier tail when larger).
    interest_concentration : float, default 20.0
        Dirichlet concentration :math:`\\alpha` of users around their group profile.
    group_focus : float, default 0.8
        Share :math:`\\phi` of a group profile on its favourite categories.
    n_favorites : int, default 3
        Favourite categories per group (capped at ``n_categories``).
    user_ids : {"int", "str"}, default "int"
        ``user_id`` as int64 user indices or strings ``"u0000042"``.

    Returns
    -------
    Clickstream
        Events, users and ground truth.

    Raises
    ------
    ConfigError
        If a parameter is out of range (the message names it).

    Notes
    -----
    Fully vectorized: time and memory are linear in the number of events (about 20M for
    2M users over 30 days at the default rate).

    Examples
    --------
    >>> cs = simulate_clickstream(n_users=200, days=7, seed=1)
    >>> list(cs.events.columns)
    ['user_id', 'ts', 'event', 'category', 'value', 'session_id']
    >>> cs.interests.shape
    (200, 20)
    """
    params = {name: value for name, value in locals().items() if name in _CONFIG_FIELDS}
    return simulate(SimConfig(**params))


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(SimConfig))

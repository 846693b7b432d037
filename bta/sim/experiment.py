r"""Run a randomized ad experiment in a simulated world, closing the loop through an Engine.

:func:`run_experiment` walks the experiment days one by one:

1. the day's ad requests (:meth:`AdWorld.requests`: every human page view, context = page
   category and slot) go through ``engine.decide_batch``;
2. the world draws each impression's clicks, conversions and revenue from the ground truth
   (:meth:`AdWorld.respond`) and its clearing price (:meth:`AdWorld.market_price`);
3. the day's browsing (page views and searches) and the ad events the Engine caused
   (impression one second after the request, click seconds later, conversion minutes later)
   are folded into the Engine's online profiles, so targeting learns from the experiment.

Profiles are updated once a day, as a nightly batch would: a request sees the events up to the
end of the previous day (its features are evaluated at the request's time). Outcomes are
attributed to the impression that caused them (a post-click window), so each
request's outcome is final when its day is processed. The simulator's organic ad events of the
experiment days are left out: during the experiment every ad comes from the Engine.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from bta.errors import BtaError, ConfigError, check_param
from bta.sim.world import AdWorld, _epoch_ms

__all__ = ["ExperimentResult", "run_experiment", "OUTCOME_LOG_COLUMNS"]

#: Columns :func:`run_experiment` adds to the decision log.
OUTCOME_LOG_COLUMNS = {
    "clicks": "clicks on the impression (0 or 1), int32",
    "conversions": "conversions after the click (0 or 1), int32",
    "revenue": "revenue of the conversion (currency), float64",
    "cost": "what the impression cost: the market clearing price / 1000 (currency), float64",
    "page_category": "category of the page the ad was shown on",
    "ad_category": "category of the creative shown (None for the house ad)",
}

_CLICK_DELAY_MS = 8_000
_CONVERSION_DELAY_MS = 180_000


@dataclass(frozen=True, eq=False)
class ExperimentResult:
    """The experiment's decision log with outcomes, and how it was run.

    Attributes
    ----------
    log : DataFrame
        One row per ad request, in time order: the decision-log columns
        (:data:`bta.schema.DECISION_COLUMNS`) then :data:`OUTCOME_LOG_COLUMNS`.
    control : str
        The Engine's control arm.
    expected_weights : dict of str to float
        The planned split (for the sample-ratio check).
    days : tuple of int
        Experiment days (0-based days of the world).
    n_filtered : int
        Page views of the experiment days that were not served: bot traffic dropped by the
        invalid-traffic filter, and page views left out by ``request_share``.
    seconds : dict of str to float
        Wall time of the decisions, the responses and the profile updates.
    """

    log: pd.DataFrame = field(repr=False)
    control: str
    expected_weights: dict
    days: tuple[int, ...]
    n_filtered: int = 0
    seconds: dict = field(default_factory=dict)

    def report(self, **kwargs: Any):
        """:func:`bta.evaluate.ab_report` of the log (spend: the ``cost`` column).

        Keyword arguments go to ``ab_report`` (``alpha``, ``correction``, ``bootstrap``, ...).
        """
        from bta.evaluate import ab_report

        kwargs.setdefault("control", self.control)
        kwargs.setdefault("expected_weights", self.expected_weights)
        kwargs.setdefault("cost", None)  # None: the log's ``cost`` column is the spend
        return ab_report(self.log, **kwargs)


def _creative_codes(world: AdWorld, engine: Any, creative_ids: np.ndarray) -> np.ndarray:
    """World category code of each shown creative: the world's own campaigns first, then the
    ``category`` of the Engine's creatives (so an Engine with campaigns of its own is answered
    by the same ground truth); -1 (house ad) for a creative without a known category."""
    code = {c: i for i, c in enumerate(world.categories)}
    own: dict[str, int] = {}
    for camp in getattr(engine, "campaigns", ()):
        for cr in camp.creatives:
            if cr.category is not None and cr.category in code:
                own[cr.id] = code[cr.category]
    cat = world.creative_category(creative_ids)
    unknown = np.flatnonzero(cat < 0)
    if own and unknown.size:
        cat[unknown] = [own.get(c, -1) for c in creative_ids[unknown]]
    return cat


def run_experiment(world: AdWorld, engine: Any, days: int | None = None, *,
                   start_day: int | None = None,
                   progress: Callable[[int, int], Any] | None = None) -> ExperimentResult:
    """Serve the world's ad requests through ``engine`` for ``days`` days and record outcomes.

    Parameters
    ----------
    world : AdWorld
    engine : bta.serve.Engine
        Typically ``build_targeting(world).engine``. Its profile store is updated in place
        (``store.profiles.update_log``, or ``store.update`` for other stores), and its budget
        and cap state advance: use a fresh Engine per run.
    days : int, optional
        Number of experiment days; default all days from ``start_day`` to the end.
    start_day : int, optional
        First experiment day (0-based); default ``world.config.days - days``, the last days.
        It must not be earlier than the end of the Engine's training history: the profiles
        already hold those days' events. Give ``days``, ``start_day`` or both.
    progress : callable, optional
        Called as ``progress(done, total)`` after each day.

    Returns
    -------
    ExperimentResult

    Raises
    ------
    ConfigError
        If the days fall outside the world, neither ``days`` nor ``start_day`` is given, or
        ``engine`` is not an Engine.

    Notes
    -----
    Deterministic for a world and an Engine state: the response draws use
    ``np.random.default_rng([seed, day, 5])`` and the Engine's choices hash request ids.
    """
    check_param("world", world, isinstance(world, AdWorld), "an AdWorld from make_world()")
    check_param("engine", engine, hasattr(engine, "decide_batch") and hasattr(engine, "store")
                and hasattr(engine, "experiment"), "an Engine (bta.serve.Engine)")
    store = engine.store
    check_param("engine.store", type(store).__name__,
                hasattr(getattr(store, "profiles", None), "update") or hasattr(store, "update"),
                "a store whose profiles the experiment can update (MemoryProfileStore)")
    n_days = world.config.days
    if days is None and start_day is None:
        raise ConfigError("give days, start_day or both: run_experiment(world, engine, days=16)")
    if days is None:
        check_param("start_day", start_day, _is_int(start_day) and 0 <= start_day < n_days,
                    f"an integer in [0, {n_days - 1}]")
        days = n_days - start_day
    check_param("days", days, _is_int(days) and 1 <= days <= n_days,
                f"an integer in [1, {n_days}] (the world's days)")
    if start_day is None:
        start_day = n_days - days
    check_param("start_day", start_day,
                _is_int(start_day) and 0 <= start_day and start_day + days <= n_days,
                f"an integer with start_day + days <= {n_days} (the world's days)")
    check_param("progress", progress, progress is None or callable(progress), "None or a callable")

    parts: list[pd.DataFrame] = []
    filtered = 0
    secs = {"decide": 0.0, "respond": 0.0, "update": 0.0}
    cats = np.asarray(world.categories, dtype=object)
    for i, day in enumerate(range(start_day, start_day + days)):
        t0 = time.perf_counter()
        req, uidx = world.requests(day)
        filtered += _n_page_views(world, day) - len(req)
        dec = engine.decide_batch(req) if len(req) else _empty_decisions()
        t1 = time.perf_counter()
        dec = _align(dec, req)
        rng = np.random.default_rng([world.config.seed, day, 5])
        cat = _creative_codes(world, engine, dec["creative_id"].to_numpy())
        clicks, conv, revenue = world.respond(uidx, cat, rng)
        ts_ms = _epoch_ms(req["ts"])
        cost = world.market_price(ts_ms, rng) / 1000.0
        out = dec.reset_index(drop=True)
        out["clicks"] = clicks
        out["conversions"] = conv
        out["revenue"] = revenue
        out["cost"] = cost
        out["page_category"] = req["page_category"].to_numpy()
        out["ad_category"] = np.where(cat >= 0, cats[np.maximum(cat, 0)], None)
        parts.append(out)
        t2 = time.perf_counter()
        _update_profiles(engine, world, day, req, cat, clicks, conv, revenue, ts_ms)
        t3 = time.perf_counter()
        secs["decide"] += t1 - t0
        secs["respond"] += t2 - t1
        secs["update"] += t3 - t2
        if progress is not None:
            progress(i + 1, days)
    log = pd.concat(parts, ignore_index=True)
    exp = engine.experiment
    return ExperimentResult(log=log, control=exp.control, expected_weights=dict(exp.weights),
                            days=tuple(range(start_day, start_day + days)), n_filtered=filtered,
                            seconds=secs)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _n_page_views(world: AdWorld, day: int) -> int:
    ev = world.events(day, day + 1)
    return int((ev["event"].to_numpy() == "page_view").sum())


def _align(dec: pd.DataFrame, req: pd.DataFrame) -> pd.DataFrame:
    """The decisions in request order (joined by ``request_id``), every request present."""
    rid = req["request_id"].to_numpy()
    if len(dec) == len(req) and (dec["request_id"].to_numpy() == rid).all():
        return dec
    pos = pd.Index(dec["request_id"]).get_indexer(req["request_id"])
    if (pos < 0).any():
        raise BtaError(f"the engine returned no decision for {(pos < 0).sum()} requests")
    return dec.iloc[pos]


def _empty_decisions() -> pd.DataFrame:
    from bta.serve.engine import decisions_frame

    return decisions_frame([])


def _update_profiles(engine: Any, world: AdWorld, day: int, req: pd.DataFrame, cat: np.ndarray,
                     clicks: np.ndarray, conv: np.ndarray, revenue: np.ndarray,
                     ts_ms: np.ndarray) -> None:
    """Fold the day's browsing and the ad events the Engine caused into its profiles."""
    ev = world.events(day, day + 1)
    organic = ev[ev["event"].isin(["page_view", "search"]).to_numpy()]
    shown = cat >= 0  # house ads carry no category: their events do not enter profiles
    names = np.asarray(world.categories, dtype=object)
    users = req["user_id"].to_numpy()
    c_, v_ = shown & (clicks > 0), shown & (conv > 0)
    parts_user = [organic["user_id"].to_numpy(), users[shown], users[c_], users[v_]]
    parts_ts = [_epoch_ms(organic["ts"]), ts_ms[shown] + 1_000,
                ts_ms[c_] + _CLICK_DELAY_MS, ts_ms[v_] + _CONVERSION_DELAY_MS]
    parts_ev = [organic["event"].astype(str).to_numpy(),
                np.full(shown.sum(), "ad_impression", dtype=object),
                np.full(c_.sum(), "ad_click", dtype=object),
                np.full(v_.sum(), "conversion", dtype=object)]
    parts_cat = [organic["category"].astype(str).to_numpy(), names[cat[shown]], names[cat[c_]],
                 names[cat[v_]]]
    parts_val = [np.full(len(organic), np.nan), np.full(shown.sum(), np.nan),
                 np.full(c_.sum(), np.nan), revenue[v_]]
    frame = pd.DataFrame({
        "user_id": np.concatenate(parts_user),
        "ts": np.concatenate(parts_ts),
        "event": np.concatenate(parts_ev),
        "category": np.concatenate(parts_cat),
        "value": np.concatenate(parts_val),
    })
    store = engine.store
    profiles = getattr(store, "profiles", None)
    if hasattr(profiles, "update"):
        profiles.update(frame, ts_unit="ms", time_range=None)
    else:
        store.update(frame, ts_unit="ms", time_range=None)


"""FeatureSpec: what the behavioral features are (windows, decay, events, categories)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from numbers import Real
from typing import Any, ClassVar, Iterable, Literal, Mapping

import numpy as np

from bta._params import InstanceOf, Interval, Options, Predicate, validate_fields, validate_params
from bta.errors import ConfigError, check_param
from bta.events import STANDARD_EVENTS, to_millis
from bta.features.families import cells

__all__ = ["FeatureSpec", "duration_name"]

_UNITS = ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1_000, "s"), (1, "ms"))


def duration_name(ms: int) -> str:
    """Compact name of a duration in feature names: 86400000 -> '1d', 5400000 -> '90min'."""
    for unit, suffix in _UNITS:
        if ms % unit == 0:
            return f"{ms // unit}{suffix}"
    raise AssertionError("unreachable: every integer is a multiple of 1 ms")  # pragma: no cover


@dataclass(frozen=True)
class FeatureSpec:
    """Definition of the behavioral features built by :func:`build_features` and
    :class:`OnlineProfiles`.

    Parameters
    ----------
    windows : sequence of durations, default ("1d", "7d", "30d")
        Count windows. Durations are pandas-style strings, ``timedelta``/``pd.Timedelta`` or
        seconds. Stored normalized as names ("1d", "12h", "90min").
    half_life : duration, default "7d"
        Half-life of the decayed counts.
    events : sequence of str, default all standard events
        Event types that get per-category features.
    weights : mapping of str to float, optional
        Weight of one event of each type in the decayed count (default 1.0).
    categories : sequence, optional
        Allow list: only these categories get per-category columns (events in other
        categories still count in the per-user features). ``None`` means all.
    deny_categories : sequence, default ()
        Deny list: events in these categories are excluded from every feature, per-user ones
        included (this is how sensitive categories are kept out of profiles).
    session_gap : duration, default "30min"
        Inactivity gap that closes a session.
    max_session : duration, optional
        Maximum session length; ``None`` for no maximum.
    ctr_prior : (float, float), default (1.0, 99.0)
        Beta prior ``(a, b)`` of ``ctr:smoothed = (clicks + a) / (impressions + a + b)``: a prior
        mean of 1% worth 100 impressions.
    window_bucket : duration, optional
        ``None`` (default): exact windows, ``as_of - window < ts <= as_of``. A duration ``B``:
        bucketed windows, ``floor(as_of / B) - floor(ts / B) < window / B`` (every window must
        be a multiple of ``B``). Online profiles then keep at most one buffer entry per bucket and
        cell, so their memory is bounded; the batch builder applies the same rule.
    dtype : {"float64", "float32"}, default "float64"
        Value type of the feature matrix.
    exclude_flagged : bool, default True
        Leave out the events of users the :class:`~bta.events.EventLog` flagged as bots.
    user_features : bool, default True
        Build the per-user block (``rfm:*``, ``sessions:*``, ``diversity:entropy``,
        ``ctr:smoothed``) after the per-category columns.
    """

    # Durations are checked where they are converted (``to_millis``, the same template); the
    # normalized sequences (windows, events, categories) after their conversion, below.
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "weights": [InstanceOf(Mapping, desc="a mapping of event name to weight")],
        "ctr_prior": [Predicate(
            lambda p: isinstance(p, (tuple, list)) and len(p) == 2
            and all(_finite(v) and float(v) > 0 for v in p), "a pair (a, b) of positive numbers")],
        "dtype": [Options(("float64", "float32"))],
        "exclude_flagged": ["boolean"],
        "user_features": ["boolean"],
    }

    windows: tuple[Any, ...] = ("1d", "7d", "30d")
    half_life: Any = "7d"
    events: tuple[str, ...] = STANDARD_EVENTS
    weights: Mapping[str, float] = field(default_factory=dict)
    categories: tuple[Any, ...] | None = None
    deny_categories: tuple[Any, ...] = ()
    session_gap: Any = "30min"
    max_session: Any = None
    ctr_prior: tuple[float, float] = (1.0, 99.0)
    window_bucket: Any = None
    dtype: Literal["float64", "float32"] = "float64"
    exclude_flagged: bool = True
    user_features: bool = True

    def __post_init__(self) -> None:
        validate_fields(self)
        windows = _as_tuple(self.windows, "windows")
        check_param("windows", self.windows, len(windows) > 0, "a non-empty sequence of durations")
        ms = [to_millis(w, "windows") for w in windows]  # to_millis refuses durations <= 0
        check_param("windows", self.windows, len(set(ms)) == len(ms), "distinct durations")
        object.__setattr__(self, "windows", tuple(duration_name(m) for m in sorted(ms)))
        hl = to_millis(self.half_life, "half_life")
        object.__setattr__(self, "half_life", duration_name(hl))

        events = _as_tuple(self.events, "events")
        check_param("events", self.events, len(events) > 0, "a non-empty sequence of event names")
        for e in events:
            check_param("events", self.events, isinstance(e, str), "a sequence of event names (str)")
        check_param("events", self.events, len(set(events)) == len(events), "without repeats")
        object.__setattr__(self, "events", events)

        for name, w in self.weights.items():
            if name not in events:
                raise ConfigError(f"weights names event {name!r}, which is not in events {events}")
            key = f"weights[{name!r}]"
            validate_params({key: [Interval(Real, 0, None, closed="left")]}, {key: w},
                            "FeatureSpec")
        object.__setattr__(self, "weights",
                           MappingProxyType({e: float(self.weights.get(e, 1.0)) for e in events}))

        if self.categories is not None:
            cats = _as_tuple(self.categories, "categories")
            check_param("categories", self.categories, len(cats) > 0,
                        "None (all categories) or a non-empty sequence")
            object.__setattr__(self, "categories", cats)
        object.__setattr__(self, "deny_categories", _as_tuple(self.deny_categories,
                                                              "deny_categories"))

        gap = to_millis(self.session_gap, "session_gap")
        object.__setattr__(self, "session_gap", duration_name(gap))
        if self.max_session is not None:
            mx = to_millis(self.max_session, "max_session")
            object.__setattr__(self, "max_session", duration_name(mx))

        prior = self.ctr_prior
        object.__setattr__(self, "ctr_prior", (float(prior[0]), float(prior[1])))

        if self.window_bucket is not None:
            b = to_millis(self.window_bucket, "window_bucket")
            bad = [w for w in self.windows_ms if w % b]
            if bad:
                raise ConfigError(
                    f"window_bucket must divide every window; {duration_name(b)} does not divide "
                    f"{[duration_name(w) for w in bad]}")
            object.__setattr__(self, "window_bucket", duration_name(b))

    # ---- derived values (milliseconds) -------------------------------------------------------
    @cached_property
    def windows_ms(self) -> np.ndarray:
        """Windows in milliseconds, ascending (int64)."""
        return np.array([to_millis(w, "windows") for w in self.windows], dtype=np.int64)

    @cached_property
    def half_life_ms(self) -> float:
        return float(to_millis(self.half_life, "half_life"))

    @cached_property
    def session_gap_ms(self) -> int:
        return to_millis(self.session_gap, "session_gap")

    @cached_property
    def max_session_ms(self) -> int:
        """Maximum session length in ms; 0 means none."""
        return 0 if self.max_session is None else to_millis(self.max_session, "max_session")

    @cached_property
    def bucket_ms(self) -> int:
        """Window bucket in ms; 0 means exact windows."""
        return 0 if self.window_bucket is None else to_millis(self.window_bucket, "window_bucket")

    @property
    def stats(self) -> tuple[str, ...]:
        """Per-cell statistics in column order: one count per window, decay, recency (declared
        by :mod:`bta.features.families.cells`)."""
        return cells.stats(self.windows)

    def cell_feature_name(self, event: str, category: Any, stat: str) -> str:
        """Name of a per-category feature, e.g. ``count:page_view:autos:7d``."""
        return cells.feature_name(event, category, stat)


def _finite(v: Any) -> bool:
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (str, bytes)):
        return (value,)
    if isinstance(value, Iterable):
        return tuple(value)
    raise ConfigError(f"{name} must be a sequence, got {value!r}")

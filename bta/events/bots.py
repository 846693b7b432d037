"""Bot and anomaly flagging of an :class:`~bta.events.EventLog` (:class:`BotRule`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bta.events import kernels as _k
from bta.events.vocabulary import _CLICK, _IMPRESSION, _threads
from bta._jit import num_threads
from bta.errors import check_param

__all__ = ["_FLAG_REASONS", "BotRule", "_bot_stats"]


# ------------------------------------------------------------------------ configuration


@dataclasses.dataclass(frozen=True)
class BotRule:
    """Which users to flag as bots or anomalies. Flagging never drops rows.

    Parameters
    ----------
    enabled : bool, default True
        ``BotRule(enabled=False)`` flags nobody.
    rate_z : float, default 6.0
        Flag users whose robust z-score of log event rate exceeds this.
    min_events : int, default 50
        ... and who have at least this many events (a short burst of a light user is not
        evidence of automation).
    min_scale : float, default 0.5
        Floor of the robust scale (natural-log units). Most users have one event per
        active hour, which can make the MAD zero; the floor keeps z finite, and with the
        defaults means a rate ``exp(6 * 0.5) ≈ 20`` times the median at the very least.
    min_clicks : int, default 10
        Click rule: users with at least this many clicks ...
    max_ctr : float, default 0.5
        ... and a click-through rate (clicks / impressions) above this, or clicks with no
        impression at all. Real CTRs are a few percent; above 50% is click fraud or a
        logging fault.

    Notes
    -----
    For user ``u`` with ``n_u`` events spread over ``h_u`` distinct UTC clock hours:

    .. math::

        r_u = \\log(n_u / h_u), \\quad
        z_u = \\frac{r_u - \\operatorname{median}(r)}
                    {\\max(1.4826 \\cdot \\operatorname{MAD}(r),\\ \\text{min\\_scale})}

    where median and MAD are over all users of the log. ``u`` is flagged ``high_rate`` if
    ``z_u > rate_z`` and ``n_u >= min_events``; ``click_pattern`` if ``clicks_u >=
    min_clicks`` and (``impressions_u == 0`` or ``clicks_u / impressions_u > max_ctr``).
    The click rule only applies when the log holds any ``ad_impression`` at all (a log
    without impressions says nothing about click-through).
    """

    enabled: bool = True
    rate_z: float = 6.0
    min_events: int = 50
    min_scale: float = 0.5
    min_clicks: int = 10
    max_ctr: float = 0.5

    def __post_init__(self) -> None:
        check_param("enabled", self.enabled, isinstance(self.enabled, bool), "True or False")
        for name in ("rate_z", "min_scale", "max_ctr"):
            v = getattr(self, name)
            check_param(name, v, isinstance(v, (int, float)) and not isinstance(v, bool)
                        and np.isfinite(v) and v > 0, "a positive finite number")
        for name in ("min_events", "min_clicks"):
            v = getattr(self, name)
            check_param(name, v, isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                        and v >= 1, "an integer >= 1")

    def reference(self, rate: np.ndarray) -> tuple[float, float]:
        """Median and robust scale (1.4826 MAD, at least ``min_scale``) of ``log(rate)`` over a
        population of users: what each user's rate is compared with."""
        log_rate = np.log(rate)
        med = float(np.median(log_rate))
        return med, max(1.4826 * float(np.median(np.abs(log_rate - med))), self.min_scale)

    def flag_codes(self, n_events: np.ndarray, rate: np.ndarray, clicks: np.ndarray,
                   impressions: np.ndarray, median: float, scale: float,
                   any_impressions: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flag codes (index into the flag reasons: 1 high rate, 2 click pattern, 3 both), the
        robust z of the rate and the CTR, per user, against a population's ``reference``.

        The click pattern is only looked for when the population saw any impression at all.
        """
        z = (np.log(rate) - median) / scale
        with np.errstate(divide="ignore", invalid="ignore"):
            ctr = clicks / impressions  # NaN for 0/0, inf for clicks without impressions
        flag = np.zeros(len(rate), np.int8)
        if self.enabled:
            flag[(z > self.rate_z) & (n_events >= self.min_events)] = 1
            if any_impressions:
                with np.errstate(invalid="ignore"):
                    clicky = (clicks >= self.min_clicks) & (
                        (impressions == 0) | (ctr > self.max_ctr))
                flag[clicky] += 2
        return flag, z, ctr


# ------------------------------------------------------------------------------ flagging

_FLAG_REASONS = ("", "high_rate", "click_pattern", "high_rate+click_pattern")


def _bot_stats(user_offsets: np.ndarray, ts: np.ndarray, event: np.ndarray,
               rule: BotRule) -> dict[str, np.ndarray]:
    """Per-user rate, robust z, CTR and flag code (see :class:`BotRule` for the formula)."""
    starts = user_offsets[:-1]
    n_users = len(starts)
    n_events = np.diff(user_offsets)
    if n_users == 0:
        empty = np.empty(0, np.float64)
        return {"n_events": n_events, "active_hours": n_events.copy(), "rate": empty,
                "rate_z": empty, "clicks": n_events.copy(), "impressions": n_events.copy(),
                "ctr": empty, "flag": np.empty(0, np.int8)}
    with num_threads(_threads(len(ts))):
        hours, clicks, imps = _k.user_activity(user_offsets, ts, event, _CLICK, _IMPRESSION)
    rate = n_events / hours
    med, scale = rule.reference(rate)
    flag, z, ctr = rule.flag_codes(n_events, rate, clicks, imps, med, scale, imps.sum() > 0)
    return {"n_events": n_events, "active_hours": hours, "rate": rate, "rate_z": z,
            "clicks": clicks, "impressions": imps, "ctr": ctr, "flag": flag}

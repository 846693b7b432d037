"""Sessions of an :class:`~bta.events.EventLog` (:meth:`~bta.events.EventLog.sessionize`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

__all__ = ["Sessions", "_utc"]


@dataclasses.dataclass(frozen=True, eq=False)
class Sessions:
    """Sessions of an :class:`EventLog` (from :meth:`EventLog.sessionize`).

    Attributes
    ----------
    session : ndarray of shape (n_rows,), int64
        Session code of each event of the log, 0, 1, ... increasing in the log's order.
    table : pandas.DataFrame
        One row per session: ``user_id``, ``session``, ``start``, ``end`` (UTC datetimes),
        ``n_events`` and ``duration_s`` (``end - start`` in seconds).
    gap_ms, max_ms : int
        The rule used; ``max_ms`` 0 means no maximum length.
    count : int
        Number of sessions.
    mean_events, mean_duration_s : float
        Mean events and mean duration per session (NaN when there are no sessions).
    """

    session: np.ndarray
    table: pd.DataFrame
    gap_ms: int
    max_ms: int
    count: int
    mean_events: float
    mean_duration_s: float

    def summary(self) -> dict[str, float]:
        """``count``, ``mean_events`` and ``mean_duration_s`` as a dict."""
        return {"count": self.count, "mean_events": self.mean_events,
                "mean_duration_s": self.mean_duration_s}


def _utc(ms: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.asarray(ms, dtype=np.int64).view("datetime64[ms]")
                            ).tz_localize("UTC")

"""Behavioral features: what a user did, counted over windows, decayed, and summarized.

- :class:`FeatureSpec` defines the features (windows, half-life, events, categories).
- :func:`build_features` computes them for every user of an :class:`~bta.events.EventLog`
  at a point in time (batch).
- :class:`OnlineProfiles` keeps the same features up to date event by event (serving).
- :class:`FeatureMatrix` holds the result: sparse users x features with names.
"""

from bta.features.batch import build_features
from bta.features.matrix import FeatureMatrix
from bta.features.online import OnlineProfiles, UpdateResult
from bta.features.spec import FeatureSpec

__all__ = ["FeatureSpec", "FeatureMatrix", "build_features", "OnlineProfiles", "UpdateResult",
           "warmup"]


def warmup() -> None:
    """Compile the feature kernels (batch and online) ahead of use."""
    import pandas as pd

    from bta.events import EventLog

    t0 = 1_700_000_000_000
    df = pd.DataFrame({"user_id": [0, 0, 1], "ts": [t0, t0 + 1000, t0],
                       "event": ["page_view", "conversion", "ad_click"],
                       "category": ["a", "a", "b"], "value": [0.0, 1.0, 0.0]})
    log = EventLog.from_pandas(df, ts_unit="ms")
    build_features(log, FeatureSpec())
    OnlineProfiles(FeatureSpec()).warmup()

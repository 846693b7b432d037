"""bta: behavioral ad targeting.

Clickstream events -> behavioral features -> segments -> serving decisions -> CPM/ROI evaluation.
See the README for a tour; the pipeline's types are :class:`EventLog` (validated events),
:class:`~bta.features.FeatureMatrix` (per-user features), and what later stages build on them.
"""

from bta.events import STANDARD_EVENTS, BotRule, EventLog
from bta.features import FeatureMatrix, FeatureSpec, OnlineProfiles, build_features

__version__ = "0.1.0"

__all__ = ["EventLog", "BotRule", "STANDARD_EVENTS", "FeatureSpec", "FeatureMatrix",
           "build_features", "OnlineProfiles", "warmup", "__version__"]


def warmup() -> None:
    """Compile every numba kernel bta's pipeline uses, so no request waits for a compile."""
    from bta.features import warmup as _features_warmup

    _features_warmup()

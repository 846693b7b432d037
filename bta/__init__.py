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
    """Compile the batch kernels of features, segments and evaluation ahead of use.

    Objects that serve requests compile their own kernels when built or in their ``warmup()``
    (``Engine.warmup()``, ``TreeScorer``, ``CompiledRule.warmup()``). With numba's on-disk
    cache a warm start takes about a second; a cold one tens of seconds.
    """
    from bta.evaluate.ab import kernels as _ab_kernels
    from bta.features import warmup as _features_warmup
    from bta.segment import _kernels as _segment_kernels

    _features_warmup()
    _segment_kernels.warmup()
    _ab_kernels.warmup()

"""Segments: who belongs to which audience, and how each audience was made.

Every maker produces :class:`Segment` objects; :class:`SegmentBook` collects them with the
minimum-audience rule, overlaps, OpenRTB export and persistence.

- Rules over named features: :class:`RuleSegment`, :func:`evaluate_rules` (:mod:`.rules`).
- Interest clusters (spherical k-means on TF-IDF category affinity): :class:`InterestClusters`.
- Propensity (LightGBM, point-in-time labels): :func:`training_set`, :class:`PropensityModel`.
- Lookalikes from a seed list: :class:`Lookalike`.
- Value tiers (CRM): :func:`rfm_table`, :func:`rfm_segments`, :func:`pareto_tiers`,
  :func:`crm_indicators`.
- Evaluation: :func:`yan_analysis` (segment CTR lift per ad), :func:`similarity_ratio`.
"""

from bta.segment.book import DEFAULT_MIN_AUDIENCE, Segment, SegmentBook
from bta.segment.clusters import (
    Affinity, InterestClusters, KMeansResult, interest_affinity, kmeans, kmeans_plusplus,
)
from bta.segment.lookalike import Lookalike, LookalikeEvaluation, LookalikeReport
from bta.segment.propensity import (
    LabelReport, PropensityModel, PropensityReport, TrainingSet, calibration_table, roc_auc,
    training_set,
)
from bta.segment.rules import CompiledRule, RuleSegment, evaluate_rules, parse_rule
from bta.segment.value import (
    CrmIndicators, crm_indicators, pareto_segments, pareto_tiers, rfm_segments, rfm_table,
)
from bta.segment.yan import SimilarityRatio, plot_yan, similarity_ratio, yan_analysis, yan_best

__all__ = [
    "Segment", "SegmentBook", "DEFAULT_MIN_AUDIENCE",
    "RuleSegment", "CompiledRule", "evaluate_rules", "parse_rule",
    "InterestClusters", "interest_affinity", "Affinity", "kmeans", "kmeans_plusplus",
    "KMeansResult",
    "Lookalike", "LookalikeReport", "LookalikeEvaluation",
    "training_set", "TrainingSet", "LabelReport", "PropensityModel", "PropensityReport",
    "roc_auc", "calibration_table",
    "rfm_table", "rfm_segments", "pareto_tiers", "pareto_segments", "crm_indicators",
    "CrmIndicators",
    "yan_analysis", "yan_best", "plot_yan", "similarity_ratio", "SimilarityRatio",
]

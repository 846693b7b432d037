"""A world with ground truth, for tests, benchmarks and the demo.

- :func:`simulate_clickstream`: users with latent interests browse, see ads and respond.
- :func:`make_world`, :func:`build_targeting`, :func:`run_experiment`: the closed loop of
  advertisers, an Engine deciding per request and users responding, for A/B experiments.

Nothing in the library imports this package; it sits on top of the pipeline.
"""

from bta.sim.clickstream import (
    CATEGORY_NAMES,
    DEFAULT_EVENTS_PER_USER_DAY,
    Clickstream,
    SimConfig,
    simulate,
    simulate_clickstream,
)
from bta.sim.experiment import OUTCOME_LOG_COLUMNS, ExperimentResult, run_experiment
from bta.sim.targeting import FEATURE_SPEC, Targeting, affinity_rule, build_targeting
from bta.sim.world import HOUSE_CAMPAIGN, AdWorld, CampaignSpec, WorldConfig, make_world

__all__ = [
    "CATEGORY_NAMES",
    "DEFAULT_EVENTS_PER_USER_DAY",
    "Clickstream",
    "SimConfig",
    "simulate",
    "simulate_clickstream",
    "WorldConfig",
    "AdWorld",
    "CampaignSpec",
    "HOUSE_CAMPAIGN",
    "make_world",
    "Targeting",
    "FEATURE_SPEC",
    "affinity_rule",
    "build_targeting",
    "ExperimentResult",
    "OUTCOME_LOG_COLUMNS",
    "run_experiment",
]

"""A clickstream world with ground truth, for tests, benchmarks and the demo.

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

__all__ = [
    "CATEGORY_NAMES",
    "DEFAULT_EVENTS_PER_USER_DAY",
    "Clickstream",
    "SimConfig",
    "simulate",
    "simulate_clickstream",
]

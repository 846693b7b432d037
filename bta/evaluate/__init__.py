"""Did targeting pay? A/B reports over mergeable statistics, off-policy estimates, uplift.

- :func:`ab_report` — per-arm CTR, CVR, CPC, CPA, CPM, eCPM, ROAS and ROI, lifts against control
  with delta-method intervals at the user level, corrections, SRM, CUPED, sequential tests.
- :func:`summarize` / :class:`ArmStats` — the addable summaries a day, shard or partition
  reduces to; ``merge`` them and report on the total.
- :mod:`bta.evaluate.power` — sample size and minimum detectable effect.
- :mod:`bta.evaluate.ope` — IPW, clipped IPW, SNIPW, DM and DR over logged propensities.
- :mod:`bta.evaluate.uplift` — uplift and Qini curves, AUUC.

Nothing here imports the serving engine: any log with the decision-log meanings works.
"""

from bta.evaluate import ope, power, uplift
from bta.evaluate.ab import ABReport, CostModel, ab_report, summarize
from bta.evaluate.ope import OPEResult, clipped_ipw, dm, dr, ipw, snipw
from bta.evaluate.stats import METRICS, ArmStats, compare, estimate, merge
from bta.evaluate.uplift import auuc, qini_coefficient, qini_curve, uplift_curve

__all__ = [
    "ab_report", "ABReport", "CostModel", "summarize",
    "ArmStats", "METRICS", "merge", "compare", "estimate",
    "ipw", "clipped_ipw", "snipw", "dm", "dr", "OPEResult",
    "uplift_curve", "qini_curve", "auuc", "qini_coefficient",
    "ope", "power", "uplift",
]

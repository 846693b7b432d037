"""The decision-log schema: what the serving Engine writes and the evaluator reads.

One row per decision. Outcomes (clicks, conversions, revenue) join to it by ``request_id``.
The evaluator accepts any table with these meanings through a column mapping, so logs from other
ad servers can be evaluated too.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["DECISION_COLUMNS", "OUTCOME_COLUMNS", "DECISION_SCHEMA", "OUTCOME_SCHEMA"]

#: column -> meaning
DECISION_COLUMNS = {
    "ts": "decision time (UTC timestamp, ms)",
    "request_id": "unique id of the ad request (joins outcomes)",
    "user_id": "user id (the randomization unit)",
    "arm": "experiment arm the user is assigned to (e.g. 'control', 'targeted')",
    "creative_id": "creative shown",
    "campaign_id": "campaign of the creative",
    "targeted": "whether the creative was chosen using the user's profile",
    "propensity": "probability with which the logging policy chose this creative, in (0, 1]",
    "n_eligible": "number of eligible creatives",
    "score": "score of the chosen creative (expected eCPM)",
    "price": "price paid for the impression, in currency per 1,000 impressions (CPM)",
    "policy_version": "version of the models, campaigns and segments that decided",
    "reason": "reason code (e.g. 'targeted', 'fallback:no_profile', 'control')",
}
#: column -> meaning
OUTCOME_COLUMNS = {
    "request_id": "id of the decision the outcome belongs to",
    "clicks": "clicks on the impression (0 or more)",
    "conversions": "conversions attributed to the impression",
    "revenue": "revenue of those conversions (currency)",
}

DECISION_SCHEMA = pa.schema([
    ("ts", pa.timestamp("ms", tz="UTC")),
    ("request_id", pa.string()),
    ("user_id", pa.string()),
    ("arm", pa.string()),
    ("creative_id", pa.string()),
    ("campaign_id", pa.string()),
    ("targeted", pa.bool_()),
    ("propensity", pa.float64()),
    ("n_eligible", pa.int32()),
    ("score", pa.float64()),
    ("price", pa.float64()),
    ("policy_version", pa.string()),
    ("reason", pa.string()),
])
OUTCOME_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("clicks", pa.int32()),
    ("conversions", pa.int32()),
    ("revenue", pa.float64()),
])

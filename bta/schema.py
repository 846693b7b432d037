"""The decision-log schema: what the serving Engine writes and the evaluator reads.

One row per decision. Outcomes (clicks, conversions, revenue) join to it by ``request_id``.
The evaluator accepts any table with these meanings through a column mapping, so logs from other
ad servers can be evaluated too.

The decision columns are declared once, in :data:`_DECISION` (name, Arrow type, meaning): the
meanings (:data:`DECISION_COLUMNS`), the Arrow schema (:data:`DECISION_SCHEMA`), the fields of
:class:`Decision` and the pandas form of a log (:func:`decisions_frame`,
:func:`decision_columns_frame`) are all read off it.
"""

from __future__ import annotations

from dataclasses import make_dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = ["DECISION_COLUMNS", "OUTCOME_COLUMNS", "DECISION_SCHEMA", "OUTCOME_SCHEMA",
           "Decision", "decisions_frame", "decision_columns_frame", "user_text"]

#: (column, Arrow type, meaning): the one declaration of the decision log
_DECISION = (
    ("ts", pa.timestamp("ms", tz="UTC"), "decision time (UTC timestamp, ms)"),
    ("request_id", pa.string(), "unique id of the ad request (joins outcomes)"),
    ("user_id", pa.string(), "user id (the randomization unit)"),
    ("arm", pa.string(), "experiment arm the user is assigned to (e.g. 'control', 'targeted')"),
    ("creative_id", pa.string(), "creative shown"),
    ("campaign_id", pa.string(), "campaign of the creative"),
    ("targeted", pa.bool_(), "whether the creative was chosen using the user's profile"),
    ("propensity", pa.float64(),
     "probability with which the logging policy chose this creative, in (0, 1]"),
    ("n_eligible", pa.int32(), "number of eligible creatives"),
    ("score", pa.float64(), "score of the chosen creative (expected eCPM)"),
    ("price", pa.float64(),
     "price paid for the impression, in currency per 1,000 impressions (CPM)"),
    ("policy_version", pa.string(), "version of the models, campaigns and segments that decided"),
    ("reason", pa.string(), "reason code (e.g. 'targeted', 'fallback:no_profile', 'control')"),
)

#: column -> meaning
DECISION_COLUMNS = {name: meaning for name, _t, meaning in _DECISION}
#: column -> meaning
OUTCOME_COLUMNS = {
    "request_id": "id of the decision the outcome belongs to",
    "clicks": "clicks on the impression (0 or more)",
    "conversions": "conversions attributed to the impression",
    "revenue": "revenue of those conversions (currency)",
}

DECISION_SCHEMA = pa.schema([(name, t) for name, t, _m in _DECISION])
OUTCOME_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("clicks", pa.int32()),
    ("conversions", pa.int32()),
    ("revenue", pa.float64()),
])


def _py_type(t: pa.DataType) -> Any:
    if pa.types.is_timestamp(t):
        return int  # epoch milliseconds in a Decision
    if pa.types.is_boolean(t):
        return bool
    if pa.types.is_integer(t):
        return int
    if pa.types.is_floating(t):
        return float
    return str


def _as_dict(self) -> dict[str, Any]:
    return {f: getattr(self, f) for f in self.__slots__}


#: One decision, a row of the decision log (fields: :data:`DECISION_SCHEMA`'s columns, ``ts``
#: in epoch milliseconds, ``user_id`` as the request gave it).
Decision = make_dataclass(
    "Decision",
    [(name, Any if name == "user_id" else _py_type(t)) for name, t, _m in _DECISION],
    frozen=True, slots=True, namespace={"as_dict": _as_dict, "__module__": __name__,
                                        "__doc__": "One decision, in the decision-log schema "
                                                   "(:data:`DECISION_SCHEMA`)."})

# the dtype pandas gives text columns built from Python strings (str from pandas 3 on)
_TEXT = pd.DataFrame({"x": ["a"]})["x"].dtype


def decision_columns_frame(columns: Mapping[str, Any]) -> pd.DataFrame:
    """Decision-log columns (one array-like per column of :data:`DECISION_SCHEMA`: ``ts`` in
    epoch milliseconds, ``user_id`` text or None) as a frame in the schema's order, with the
    pandas dtype of each Arrow type: the one place a log's pandas types are decided."""
    out = {}
    for name, t, _m in _DECISION:
        v = columns[name]
        if pa.types.is_timestamp(t):
            v = pd.to_datetime(np.asarray(v, dtype=np.int64), unit="ms", utc=True).astype(
                "datetime64[ms, UTC]")
        elif name == "user_id":  # ids stay Python objects: None is null, not "None"
            v = pd.Series(v, dtype=object)
        elif pa.types.is_string(t):
            v = pd.array(v, dtype=_TEXT)
        else:
            v = np.asarray(v, dtype=t.to_pandas_dtype())
        out[name] = v
    return pd.DataFrame(out)


def user_text(u: Any) -> str | None:
    """A user id as the log writes it: text, ``None`` (a request without a usable id) null."""
    if u is None:
        return None
    if isinstance(u, (int, np.integer)) and not isinstance(u, bool):
        return str(int(u))
    return str(u)


def decisions_frame(rows: list[dict]) -> pd.DataFrame:
    """Decision dicts (``Decision.as_dict()``) as a frame in the decision-log schema's column
    order and types (:func:`decision_columns_frame`)."""
    cols: dict[str, list] = {name: [r[name] for r in rows] for name, _t, _m in _DECISION}
    # from the dicts: pandas would already have turned int ids + None into floats
    cols["user_id"] = [user_text(u) for u in cols["user_id"]]
    return decision_columns_frame(cols)

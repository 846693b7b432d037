"""build_features: point-in-time behavioral features of every user of an EventLog."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp

from bta.errors import ConfigError
from bta.events import EventLog, to_epoch_ms
from bta.features import _kernels
from bta.features.families import RowOut, row_params, step_params
from bta.features.matrix import FeatureMatrix, layout_for
from bta.features.spec import FeatureSpec

__all__ = ["build_features", "event_slots", "PARALLEL_MIN_ROWS"]

#: Logs smaller than this are built by the single-threaded kernels (_kernels.*_csr_serial).
PARALLEL_MIN_ROWS = 200_000


def event_slots(spec: FeatureSpec, event_types: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Map event-type codes to spec event slots (-1: no per-category features) and weights."""
    ev_slot = np.full(len(event_types), -1, dtype=np.int64)
    for code, name in enumerate(event_types):
        if name in spec.events:
            ev_slot[code] = spec.events.index(name)
    weights = np.array([spec.weights[e] for e in spec.events], dtype=np.float64)
    return ev_slot, weights


def build_features(log: EventLog, spec: FeatureSpec | None = None, as_of: Any = None,
                   ) -> FeatureMatrix:
    """Behavioral features of every user, counting only events at or before ``as_of``.

    Parameters
    ----------
    log : EventLog
        Validated events, sorted by (user, time).
    spec : FeatureSpec, optional
        Feature definition; ``FeatureSpec()`` by default.
    as_of : datetime-like, optional
        Point in time (UTC). Defaults to the time of the last event in ``log``.

    Returns
    -------
    FeatureMatrix
        One row per user with at least one counted event at or before ``as_of`` (users flagged as
        bots are left out when ``spec.exclude_flagged``; their events are counted in
        ``n_flagged_excluded``).

    Notes
    -----
    For an event type ``e`` in ``spec.events``, a category ``c`` and a window ``w``, with ``t`` the
    event times of the user and ``T = as_of`` (all times in ms; days are 86,400,000 ms):

    - ``count:{e}:{c}:{w}`` = #{events with ``T - w < t <= T``} (bucketed windows: see
      :class:`FeatureSpec`);
    - ``decay:{e}:{c}`` = sum over events with ``t <= T`` of ``weight[e] * 0.5 ** ((T - t) / half_life)``;
    - ``recency:{e}:{c}`` = ``(T - max t) / 1 day``, absent (NaN) when there is no such event.

    Per user, over all events at or before ``T`` outside denied categories:

    - ``rfm:recency_days`` = days since the last conversion (absent when none),
      ``rfm:frequency`` = number of conversions, ``rfm:monetary`` = sum of their values;
    - sessions: a new session starts at the first event and whenever the gap to the previous
      event exceeds ``session_gap`` (or the session would exceed ``max_session``);
      ``sessions:count``, ``sessions:mean_events`` (events / sessions) and
      ``sessions:mean_duration_s`` (mean of last - first event time per session, in seconds);
    - ``diversity:entropy`` = ``-sum p_c ln p_c`` over the share ``p_c`` of the user's page views in
      each category with columns (absent when the user has none; needs "page_view" in
      ``spec.events``);
    - ``ctr:smoothed`` = ``(clicks + a) / (impressions + a + b)`` with ``(a, b) = spec.ctr_prior``.

    The decayed sum is kept incrementally (``D <- D * 2 ** (-(t - t_ref) / half_life) + weight``)
    by the same kernel :class:`OnlineProfiles` uses, so both give bit-identical values.

    Examples
    --------
    >>> from bta.sim import simulate_clickstream
    >>> from bta.events import EventLog
    >>> cs = simulate_clickstream(n_users=200, days=7, seed=1)
    >>> fm = build_features(EventLog.from_pandas(cs.events), FeatureSpec(windows=("1d", "7d")))
    >>> fm.column("ctr:smoothed").shape == (fm.n_users,)
    True
    """
    if spec is None:
        spec = FeatureSpec()
    if not isinstance(spec, FeatureSpec):
        raise ConfigError(f"spec must be a FeatureSpec, got {type(spec).__name__}")
    if not isinstance(log, EventLog):
        raise ConfigError(f"log must be an EventLog (see EventLog.from_pandas), got "
                          f"{type(log).__name__}")
    n_flagged_excluded = 0
    if spec.exclude_flagged and log.flagged.any():
        flagged_rows = log.flagged[log.user]
        n_flagged_excluded = int(flagged_rows.sum())
        log = log.exclude_flagged()
    if as_of is None:
        as_of_ms = int(log.ts.max()) if log.n_rows else 0
    else:
        as_of_ms = to_epoch_ms(as_of, "as_of")

    layout = layout_for(spec, log.categories)
    ev_slot, weights = event_slots(spec, log.event_types)
    n_chunks = max(1, min(log.n_users, 64 * numba.get_num_threads()))
    threaded = log.n_rows >= PARALLEL_MIN_ROWS and numba.get_num_threads() > 1
    size = _kernels.size_csr if threaded else _kernels.size_csr_serial
    fill = _kernels.fill_csr if threaded else _kernels.fill_csr_serial
    as_of_ = np.int64(as_of_ms)
    events = _kernels.EventArrays(log.user_offsets, log.ts, log.event, log.category, log.value)
    slots = _kernels.EventSlots(ev_slot, weights, layout.cat_slot)
    row = row_params(spec, layout)
    step = step_params(spec)
    row_len, counted = size(events, slots, as_of_, row, step, np.int64(n_chunks))
    kept = np.flatnonzero(counted > 0)
    indptr = np.zeros(kept.shape[0] + 1, dtype=np.int64)
    np.cumsum(row_len[kept], out=indptr[1:])
    row_start = np.zeros(log.n_users, dtype=np.int64)
    row_start[kept] = indptr[:-1]
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    data = np.empty(int(indptr[-1]), dtype=np.float64)
    fill(events, slots, as_of_, row, step, np.int64(n_chunks), counted, row_start,
         RowOut(indices, data))
    n_events = int(counted.sum())
    if spec.dtype == "float32":
        data = data.astype(np.float32)
    X = sp.csr_matrix((data, indices, indptr), shape=(kept.shape[0], len(layout.feature_names)))
    X.has_sorted_indices = True
    return FeatureMatrix(
        X=X, feature_names=layout.feature_names, users=log.users[kept],
        as_of=pd.Timestamp(as_of_ms, unit="ms", tz="UTC"), spec=spec,
        nan_absent=layout.nan_absent, n_events=int(n_events),
        n_flagged_excluded=n_flagged_excluded)

"""Sessions: a new session starts at a user's first event and whenever the gap to the
previous event exceeds ``session_gap`` (or the session would exceed ``max_session``).

- ``sessions:count``; ``sessions:mean_events`` (events / sessions);
- ``sessions:mean_duration_s``: mean of (last - first event time) per session, in seconds.

Always stored. A late event (before the open session's last one) joins the open session
without moving its end back.
"""

from __future__ import annotations

from bta._jit import exact_jit
from bta.events.kernels import is_new_session
from bta.features.families._base import UserFamily, positions

__all__ = ["FAMILY"]

FAMILY = UserFamily(
    name="sessions",
    columns=("sessions:count", "sessions:mean_events", "sessions:mean_duration_s"),
    # closed: sessions closed so far, their events and summed duration (ms); open: the open
    # session's first and last event times and its events (0 before the user's first event)
    ints=("closed", "closed_events", "closed_duration", "open_start", "open_last",
          "open_events"),
    naive="tests/naive.py::naive_features (sessions: entries)",
)
CLOSED, CLOSED_EVENTS, CLOSED_DURATION, OPEN_START, OPEN_LAST, OPEN_EVENTS = positions(
    FAMILY.ints)
COUNT, MEAN_EVENTS, MEAN_DURATION_S = positions(FAMILY.columns)
N_COLUMNS = len(FAMILY.columns)


@exact_jit(inline=True)
def step(user, i0, f0, t, ev, value, params):
    """Fold one event at ``t`` into the family's state (``user`` a ``UserState``, IN/OUT;
    ``params`` a ``StepParams``)."""
    s = user.ints
    if s[i0 + OPEN_EVENTS] == 0:
        s[i0 + OPEN_START] = t
        s[i0 + OPEN_LAST] = t
        s[i0 + OPEN_EVENTS] = 1
    elif is_new_session(t, s[i0 + OPEN_START], s[i0 + OPEN_LAST], params.gap_ms,
                        params.max_ms):
        s[i0 + CLOSED] += 1
        s[i0 + CLOSED_EVENTS] += s[i0 + OPEN_EVENTS]
        s[i0 + CLOSED_DURATION] += s[i0 + OPEN_LAST] - s[i0 + OPEN_START]
        s[i0 + OPEN_START] = t
        s[i0 + OPEN_LAST] = t
        s[i0 + OPEN_EVENTS] = 1
    else:
        if t > s[i0 + OPEN_LAST]:
            s[i0 + OPEN_LAST] = t
        s[i0 + OPEN_EVENTS] += 1


@exact_jit(inline=True)
def n_entries(user, i0):
    """Entries :func:`emit` writes: all columns, always."""
    return N_COLUMNS


@exact_jit(inline=True)
def emit(user, i0, f0, as_of, params, col0, out, pos):
    """Write the family's entries at columns ``col0 + ...`` into ``out`` (OUT, a ``RowOut``)
    from ``pos``; returns the new position."""
    s = user.ints
    n_sess = s[i0 + CLOSED] + 1
    n_ev = s[i0 + CLOSED_EVENTS] + s[i0 + OPEN_EVENTS]
    dur = s[i0 + CLOSED_DURATION] + (s[i0 + OPEN_LAST] - s[i0 + OPEN_START])
    out.indices[pos] = col0 + COUNT
    out.data[pos] = n_sess
    out.indices[pos + 1] = col0 + MEAN_EVENTS
    out.data[pos + 1] = n_ev / n_sess
    out.indices[pos + 2] = col0 + MEAN_DURATION_S
    out.data[pos + 2] = dur / 1000.0 / n_sess
    return pos + 3

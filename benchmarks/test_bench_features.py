"""Per-(user, category) aggregation: bta against pandas, polars and DuckDB.

Every benchmark first checks its result against the NumPy reference (counts and last time
exactly, decay to 1e-9 relative), which also compiles bta's kernels, and only then times.
Data generation and the EventLog of the "prepared log" benchmark stay outside the timed part.

Run (smoke size): ``python -m pytest benchmarks -q``; full size: see ``RESULTS.md``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _data import DAY_MS, HALF_LIFE_MS, T0_MS, Events, make_events
from _peers import (Cells, assert_same_cells, bta_event_log, bta_features, cells_from_columns,
                    duckdb_connect, duckdb_features, page_view_events, pandas_features,
                    polars_features, reference_cells, to_cells)

_HERE = Path(__file__).resolve().parent


def _threads() -> dict:
    import numba
    import polars as pl

    return {"numba_threads": numba.get_num_threads(), "polars_threads": pl.thread_pool_size(),
            "cpu_count": os.cpu_count()}


# ------------------------------------------------------------------- the checks themselves


def _brute_force(user, ts, category, as_of) -> dict:
    """One event at a time into a dict: the definitions, with nothing vectorized."""
    out: dict = {}
    for u, t, c in zip(user.tolist(), ts.tolist(), category.tolist()):
        if t > as_of:
            continue
        cell = out.setdefault((u, c), [0, 0, 0, 0.0, None])
        for k, w in enumerate((DAY_MS, 7 * DAY_MS, 30 * DAY_MS)):
            cell[k] += as_of - w < t
        cell[3] += 0.5 ** ((as_of - t) / HALF_LIFE_MS)
        cell[4] = t if cell[4] is None else max(cell[4], t)
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(-2 * DAY_MS, 40 * DAY_MS),
                          st.integers(0, 3)), max_size=60),
       st.integers(0, 35 * DAY_MS))
def test_reference_matches_brute_force(rows, as_of_offset):
    # Times straddle every window edge and as_of itself (future events must not count).
    user = np.array([r[0] for r in rows], dtype=np.int64)
    ts = np.array([T0_MS + r[1] for r in rows], dtype=np.int64)
    category = np.array([r[2] for r in rows], dtype=np.int32)
    as_of = T0_MS + as_of_offset
    ev = Events(user=user, ts=ts, category=category, as_of=as_of, n_users=5, n_categories=4,
                days=30)
    want = _brute_force(user, ts, category, as_of)
    got = reference_cells(ev)
    assert got.n_cells == len(want)
    for i in range(got.n_cells):
        c1, c7, c30, decay, last = want[(int(got.user[i]), int(got.category[i]))]
        assert (got.c1[i], got.c7[i], got.c30[i], got.last[i]) == (c1, c7, c30, last)
        assert got.decay[i] == pytest.approx(decay, rel=1e-12)


def _cells(**change) -> Cells:
    base = dict(user=[0, 0, 1], category=[2, 5, 2], c1=[0, 1, 0], c7=[1, 1, 0], c30=[1, 2, 3],
                decay=[0.5, 1.5, 0.25], last=[10, 20, 30])
    base.update(change)
    return cells_from_columns(*base.values())


@pytest.mark.parametrize("change, message", [
    (dict(c7=[1, 2, 0]), "1 of 3 cells differ in c7; first at user=0, category=5: got 2, "
                         "expected 1"),
    (dict(decay=[0.5, 1.5 * (1 + 1e-8), 0.25]), "differ in decay"),
    (dict(last=[10, 20, 31]), "differ in last; first at user=1, category=2"),
    (dict(category=[2, 6, 2]), "differ in category"),
    (dict(user=[0, 0], category=[2, 5], c1=[0, 1], c7=[1, 1], c30=[1, 2], decay=[0.5, 1.5],
          last=[10, 20]), "2 (user, category) cells, expected 3"),
])
def test_comparison_catches_differences(change, message):
    assert_same_cells(_cells(), _cells(), "same")
    # decay within the tolerance passes
    assert_same_cells(_cells(decay=[0.5, 1.5 * (1 + 1e-12), 0.25]), _cells(), "close")
    with pytest.raises(AssertionError, match=re.escape(message)):
        assert_same_cells(_cells(**change), _cells(), "peer")


def test_every_implementation_agrees_on_small_data():
    # A second, tiny data set with a few events after as_of and on the window edges, so that the
    # point-in-time filter and the strict/inclusive bounds are exercised in every implementation.
    ev = make_events(3_000, 300, n_categories=7, seed=3)
    edges = ev.as_of - np.array([0, DAY_MS, 7 * DAY_MS, 30 * DAY_MS, -1, -DAY_MS], dtype=np.int64)
    ts = ev.ts.copy()
    ts[: edges.shape[0]] = edges
    ev = Events(user=ev.user, ts=ts, category=ev.category, as_of=ev.as_of, n_users=ev.n_users,
                n_categories=ev.n_categories, days=ev.days)
    want = reference_cells(ev)
    assert want.n_cells > 0
    fm = bta_features(bta_event_log(ev), ev.as_of)
    assert_same_cells(to_cells(fm, ev.as_of), want, "bta")
    for name, fn in (("pandas", pandas_features), ("polars", polars_features),
                     ("duckdb", duckdb_features)):
        assert_same_cells(to_cells(fn(ev), ev.as_of), want, name)


# --------------------------------------------------------------------------- the benchmarks


@pytest.fixture(scope="module")
def page_views(bench_events):
    """bta's ``event`` input, made once outside the timed part (it is part of the input)."""
    return page_view_events(bench_events.n_events)


@pytest.mark.benchmark(group="features")
def test_bta_end_to_end(benchmark, bench_events, reference, page_views, rounds, record_rate):
    ev = bench_events

    def run():
        return bta_features(bta_event_log(ev, page_views), ev.as_of)

    assert_same_cells(to_cells(run(), ev.as_of), reference, "bta end to end")
    n_rounds, n_warm = rounds
    benchmark.pedantic(run, rounds=n_rounds, iterations=1, warmup_rounds=n_warm)
    record_rate(benchmark, ev.n_events, **_threads())


@pytest.mark.benchmark(group="features")
def test_bta_prepared_log(benchmark, bench_events, reference, page_views, rounds, record_rate):
    ev = bench_events
    log = bta_event_log(ev, page_views)
    run = partial(bta_features, log, ev.as_of)
    assert_same_cells(to_cells(run(), ev.as_of), reference, "bta on a prepared log")
    n_rounds, n_warm = rounds
    benchmark.pedantic(run, rounds=n_rounds, iterations=1, warmup_rounds=n_warm)
    record_rate(benchmark, ev.n_events, **_threads())


@pytest.mark.benchmark(group="features")
@pytest.mark.parametrize("peer", ["pandas", "polars", "duckdb"])
def test_peer(benchmark, peer, bench_events, reference, rounds, record_rate):
    ev = bench_events
    if peer == "duckdb":
        run = partial(duckdb_features, ev, duckdb_connect())
    else:
        run = partial({"pandas": pandas_features, "polars": polars_features}[peer], ev)
    assert_same_cells(to_cells(run(), ev.as_of), reference, peer)
    n_rounds, n_warm = rounds
    benchmark.pedantic(run, rounds=n_rounds, iterations=1, warmup_rounds=n_warm)
    record_rate(benchmark, ev.n_events, **_threads())


# ------------------------------------------------------------------- peak memory, smoke size


def test_peak_memory_script_runs():
    env = dict(os.environ)
    env.pop("BTA_BENCH_EVENTS", None)
    proc = subprocess.run(
        [sys.executable, str(_HERE / "peak_memory.py"), "--events", "20000", "--users", "2000"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [[c.strip() for c in line.split("|")[1:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert header[:3] == ["implementation", "cells", "peak above baseline (MiB)"]
    table = {r[0]: dict(zip(header, r)) for r in body}
    assert set(table) == {"bta", "bta (prepared log)", "pandas", "polars", "duckdb"}
    # every implementation produced the same number of (user, category) cells as the reference
    want = reference_cells(make_events(20_000, 2_000)).n_cells
    assert {int(r["cells"].replace(",", "")) for r in table.values()} == {want}
    for name, r in table.items():
        assert float(r["peak above baseline (MiB)"]) >= 0.0, (name, r)
        assert float(r["peak (MiB)"]) >= float(r["baseline (MiB)"]) > 0.0, (name, r)

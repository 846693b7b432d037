"""Shared fixtures of the benchmarks: the data (sized by ``BTA_BENCH_EVENTS``), its reference
result, and the events/s bookkeeping that ends a run with a summary table.

CI runs these at the default small size as a smoke test, so that they never rot; the full-size
run is documented in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import Events, bench_rounds, bench_size, make_events  # noqa: E402
from _peers import Cells, reference_cells  # noqa: E402

_RATES = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def bench_events() -> Events:
    """The benchmark clickstream (random row order)."""
    n_events, n_users = bench_size()
    return make_events(n_events, n_users)


@pytest.fixture(scope="session")
def reference(bench_events: Events) -> Cells:
    """NumPy reference result for :func:`bench_events`."""
    return reference_cells(bench_events)


@pytest.fixture(scope="session")
def rounds(bench_events: Events) -> tuple[int, int]:
    """(rounds, warmup_rounds) of the batch benchmarks."""
    return bench_rounds(bench_events.n_events)


@pytest.fixture(scope="session")
def online_rounds(bench_events: Events) -> tuple[int, int]:
    """(rounds, warmup_rounds) of the online benchmarks."""
    return bench_rounds(bench_events.n_events, online=True)


@pytest.fixture
def record_rate(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``record_rate(benchmark, n_events, **info)``: put events/s (from the median and the best
    round) and ``info`` into ``benchmark.extra_info``, and keep them for the summary table."""

    def record(benchmark: Any, n_events: int, **info: Any) -> None:
        benchmark.extra_info.update(info)
        benchmark.extra_info["n_events"] = int(n_events)
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: ran once, untimed
            return
        median, best = float(stats.stats.median), float(stats.stats.min)
        rate = n_events / median
        benchmark.extra_info["events_per_s_median"] = rate
        benchmark.extra_info["events_per_s_best"] = n_events / best
        group = benchmark.group or "-"
        request.config.stash.setdefault(_RATES, {})[(group, benchmark.name)] = (
            median, rate, n_events)

    return record


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config
                            ) -> None:
    """Events/s per implementation (median round), and the ratio to polars in its group."""
    rates = config.stash.get(_RATES, None)
    if not rates:
        return
    tr = terminalreporter
    tr.section("bta benchmarks: events/s (median round)")
    tr.write_line("| group | benchmark | events | median s | events/s | ratio to polars |")
    tr.write_line("|---|---|---:|---:|---:|---:|")
    for (group, name), (median, rate, n) in sorted(rates.items()):
        peer = [r for (g, nm), (_m, r, _n) in rates.items() if g == group and "polars" in nm]
        ratio = f"{rate / peer[0]:.2f}" if peer else "-"
        tr.write_line(f"| {group} | {name} | {n:,} | {median:.4f} | {rate:,.0f} | {ratio} |")

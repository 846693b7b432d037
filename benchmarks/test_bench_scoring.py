"""TreeScorer against LightGBM's own ``Booster.predict``, one thread each.

Model: binary, ``200 * BTA_BENCH_SCALE`` trees (at least 10) of up to 63 leaves over 50
features, trained on ``20,000 * scale`` rows (at least 5,000). Scored data: ``1,000,000 *
scale`` rows (at least 10,000) of fresh draws from the training distribution, without NaN (a
serving profile usually has every feature). The default scale 0.01 is the smoke run CI does;
the full run is ``BTA_BENCH_SCALE=1.0``.

Every benchmark first checks bta against LightGBM (raw scores equal bit for bit, probabilities
to 1e-12), which also compiles bta's kernels, and only then times. LightGBM runs with
``num_threads=1`` and bta inside ``bta._jit.num_threads(1)``; both are timed in the same run,
so that their ratio holds on a noisy machine. Measures:

- single-row latency: ``TreeScorer.predict_one(x, out=buf)`` against ``Booster.predict`` on a
  (1, 50) array, cycling through distinct rows (one row scored again and again would let the
  branch predictor learn its paths);
- batch throughput on all rows (targets: 8x LightGBM for a single row, 6x for the batch);
- throughput by batch size: 1, 8, 64, 512 and 4096 rows per call, distinct blocks per call.

A table of the rates and ratios ends the run. Run:
``python -m pytest benchmarks/test_bench_scoring.py --benchmark-enable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from bta._jit import num_threads
from _data import bench_scale

N_TREES_FULL = 200
N_ROWS_FULL = 1_000_000
N_TRAIN_FULL = 20_000
N_FEATURES = 50
N_LEAVES = 63
BATCH_SIZES = (1, 8, 64, 512, 4096)
# Distinct rows cycled through by the latency benchmarks: enough that the paths are not
# learned by the branch predictor, few enough that LightGBM's round stays short.
N_LATENCY_ROWS = 2_000

# measure -> {"bta" | "lightgbm": (median seconds per round, rows per round)}
_RESULTS: dict[str, dict[str, tuple[float, int]]] = {}



@dataclass(frozen=True)
class Setup:
    booster: Any
    scorer: Any
    X: np.ndarray  # (n_rows, 50), the scored rows

    @property
    def n_rows(self) -> int:
        return self.X.shape[0]


def _draw(rng: np.random.Generator, n: int) -> np.ndarray:
    X = rng.normal(size=(n, N_FEATURES))
    X[:, :10] = np.round(X[:, :10] * 3)  # a few count-like features with ties
    return X


@pytest.fixture(scope="module")
def setup() -> Setup:
    import lightgbm as lgb

    from bta.scoring import TreeScorer

    scale = bench_scale()
    rng = np.random.default_rng(0)
    n_train = max(5_000, int(N_TRAIN_FULL * scale))
    X = _draw(rng, n_train)
    w = rng.normal(size=N_FEATURES)
    logit = X @ w / 6 + np.sin(2 * X[:, 0]) + (X[:, 1] > 0.5) * X[:, 2]
    y = (rng.random(n_train) < 1 / (1 + np.exp(-logit))).astype(float)
    booster = lgb.train({"objective": "binary", "num_leaves": N_LEAVES, "learning_rate": 0.05,
                         "min_data_in_leaf": 20, "num_threads": 1, "verbose": -1, "seed": 1},
                        lgb.Dataset(X, y), num_boost_round=max(10, int(N_TREES_FULL * scale)))
    scorer = TreeScorer.from_lightgbm(booster)  # compiles (or loads) the kernels
    return Setup(booster, scorer, _draw(rng, max(10_000, int(N_ROWS_FULL * scale))))


def _record(benchmark: Any, key: str, who: str, n_rows: int, calls: int = 1) -> None:
    """Keep rows/s and us per call (median round) for the closing table."""
    stats = getattr(benchmark, "stats", None)
    benchmark.extra_info.update(n_rows=n_rows, calls=calls)
    if stats is None:  # --benchmark-disable: ran once, untimed
        return
    median = float(stats.stats.median)
    _RESULTS.setdefault(key, {})[who] = (median, n_rows)
    benchmark.extra_info.update(rows_per_s=n_rows / median, us_per_call=1e6 * median / calls)


def _rounds(seconds_per_round: float) -> dict:
    return {"rounds": 1 if seconds_per_round > 5 else 5, "iterations": 1, "warmup_rounds": 0}


# ------------------------------------------------------------------------- parity first

def test_parity_with_lightgbm(setup):
    X = setup.X[:20_000]
    np.testing.assert_array_equal(setup.scorer.predict(X, raw_score=True),
                                  setup.booster.predict(X, raw_score=True, num_threads=1))
    np.testing.assert_allclose(setup.scorer.predict(X), setup.booster.predict(X, num_threads=1),
                               rtol=1e-12, atol=1e-12)
    want = setup.booster.predict(X[:500], num_threads=1)
    got = np.array([setup.scorer.predict_one(x) for x in X[:500]])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------- single row

@pytest.fixture(scope="module")
def latency_rows(setup) -> list[np.ndarray]:
    return [np.ascontiguousarray(x) for x in setup.X[:N_LATENCY_ROWS]]


@pytest.mark.benchmark(group="single-row latency")
def test_latency_bta_predict_one(benchmark, setup, latency_rows):
    out = np.empty(1)
    predict_one = setup.scorer.predict_one

    def run():
        for x in latency_rows:
            predict_one(x, out=out)

    with num_threads(1):
        benchmark.pedantic(run, **_rounds(0.1))
    _record(benchmark, "single row", "bta", len(latency_rows), len(latency_rows))


@pytest.mark.benchmark(group="single-row latency")
def test_latency_lightgbm_predict(benchmark, setup, latency_rows):
    rows = [x[None, :] for x in latency_rows]
    predict = setup.booster.predict

    def run():
        for x in rows:
            predict(x, num_threads=1)

    benchmark.pedantic(run, **_rounds(0.1))
    _record(benchmark, "single row", "lightgbm", len(rows), len(rows))


# ------------------------------------------------------------------------- whole batch

@pytest.mark.benchmark(group="batch throughput")
def test_batch_bta(benchmark, setup):
    with num_threads(1):
        benchmark.pedantic(lambda: setup.scorer.predict(setup.X), **_rounds(setup.n_rows / 4e5))
    _record(benchmark, "batch (all rows)", "bta", setup.n_rows)


@pytest.mark.benchmark(group="batch throughput")
def test_batch_lightgbm(benchmark, setup):
    benchmark.pedantic(lambda: setup.booster.predict(setup.X, num_threads=1),
                       **_rounds(setup.n_rows / 5e4))
    _record(benchmark, "batch (all rows)", "lightgbm", setup.n_rows)


# ------------------------------------------------------------------------- batch sizes

def _blocks(setup: Setup, size: int) -> list[np.ndarray]:
    # Distinct blocks, about 20,000 rows in all per round (4 blocks at least).
    n_blocks = max(4, min(setup.n_rows // size, 20_000 // size))
    return [np.ascontiguousarray(setup.X[i * size:(i + 1) * size]) for i in range(n_blocks)]


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_batch_size_bta(benchmark, setup, size):
    benchmark.group = f"batch of {size}"
    blocks = _blocks(setup, size)

    def run():
        for b in blocks:
            setup.scorer.predict(b)

    with num_threads(1):
        benchmark.pedantic(run, **_rounds(0.1))
    _record(benchmark, f"batch of {size}", "bta", size * len(blocks), len(blocks))


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_batch_size_lightgbm(benchmark, setup, size):
    benchmark.group = f"batch of {size}"
    blocks = _blocks(setup, size)

    def run():
        for b in blocks:
            setup.booster.predict(b, num_threads=1)

    benchmark.pedantic(run, **_rounds(0.1))
    _record(benchmark, f"batch of {size}", "lightgbm", size * len(blocks), len(blocks))


# ------------------------------------------------------------------------- closing table

class _Summary:
    """Writes the rates table at the end of the run (a test module cannot define the hook
    itself; output written during a test or fixture would be captured)."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        rows = [(key, per) for key, per in _RESULTS.items() if set(per) == {"bta", "lightgbm"}]
        if not rows:
            return
        tr = terminalreporter
        tr.section("bta scoring: TreeScorer vs LightGBM, one thread each (median round)")
        tr.write_line("| measure | bta us/row | LightGBM us/row | speed-up |")
        tr.write_line("|---|---:|---:|---:|")
        for key, per in rows:
            bta_us, lgb_us = (1e6 * per[who][0] / per[who][1] for who in ("bta", "lightgbm"))
            tr.write_line(f"| {key} | {bta_us:.3f} | {lgb_us:.3f} | {lgb_us / bta_us:.1f}x |")


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    name = "bta-scoring-summary"
    if request.config.pluginmanager.get_plugin(name) is None:
        request.config.pluginmanager.register(_Summary(), name)
    yield

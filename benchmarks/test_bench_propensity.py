"""Propensity scoring: a trained LightGBM model over ``2,000,000 * BTA_BENCH_SCALE`` users.

Data: the simulator (``bta.sim``, ``2,000,000 * BTA_BENCH_SCALE`` users, 28 days, default
rates, 20 categories) and the default :class:`~bta.features.FeatureSpec` (~500 columns, recency
NaN-absent). The model is :class:`~bta.segment.propensity.PropensityModel` trained (outside the
timing) on at most 200,000 users for "ad_click or conversion within 7 days" after day 21. The
users scored are the features at the end of the period (day 28), as a daily scoring job would
see them; since only ~65% of simulated users have any event by then, rows are drawn again from
them until there are as many rows as simulated users (2,000,000 at full size).

Every benchmark first checks its scores against the reference, ``Booster.predict`` on the
dense ``FeatureMatrix.to_pandas()`` matrix (NaN where undefined), on all users at small scale
and on a 50,000-user sample at full scale (the dense matrix of 2M users is 8 GB), then times:

- ``PropensityModel.predict(fm)``: name alignment, densifying block by block and LightGBM;
- ``Booster.predict`` alone on an already dense block (at most 200,000 users): what LightGBM
  costs without the FeatureMatrix conversion, the baseline for a compiled scorer.

Rows (users) per second go into ``benchmark.extra_info``.

Run: ``python -m pytest benchmarks/test_bench_propensity.py --benchmark-enable``; full size with
``BTA_BENCH_SCALE=1.0``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bta.events import EventLog
from bta.features import FeatureMatrix, FeatureSpec, build_features
from bta.segment.propensity import PropensityModel, training_set
from _data import bench_scale

N_USERS_FULL = 2_000_000
# Training cost is not what is measured; 200k users are plenty for a model of realistic size.
MAX_TRAIN = 200_000
# Above this many users the dense reference matrix no longer fits comfortably in memory.
MAX_CHECK = 50_000
MAX_DENSE = 200_000



def rounds() -> tuple[int, int]:
    raw = os.environ.get("BTA_BENCH_ROUNDS", "").strip()
    return (max(1, int(raw)), 1) if raw else (5, 1)


@dataclass(frozen=True)
class World:
    fm: FeatureMatrix
    model: PropensityModel


def subset(fm: FeatureMatrix, rows: np.ndarray) -> FeatureMatrix:
    return FeatureMatrix(fm.X[rows], fm.feature_names, fm.users[rows], fm.as_of, fm.spec,
                         fm.nan_absent)


@pytest.fixture(scope="module")
def world() -> World:
    from bta.sim import simulate_clickstream

    n_users = max(2_000, int(round(N_USERS_FULL * bench_scale())))
    cs = simulate_clickstream(n_users=n_users, days=28, seed=11)
    log = EventLog.from_pandas(cs.events)
    X, y, _ = training_set(log, FeatureSpec(), cs.start + pd.Timedelta(days=21),
                           ("ad_click", "conversion"), horizon="7d")
    rng = np.random.default_rng(0)
    train = np.sort(rng.choice(X.n_users, size=min(MAX_TRAIN, X.n_users), replace=False))
    model = PropensityModel(random_state=0).fit(subset(X, train), y[train])
    today = build_features(log, FeatureSpec(), cs.end)
    extra = rng.choice(today.n_users, size=max(0, n_users - today.n_users))
    scored = FeatureMatrix(sp.vstack([today.X, today.X[extra]], format="csr"),
                           today.feature_names, np.arange(today.n_users + extra.size),
                           today.as_of, today.spec, today.nan_absent)
    return World(scored, model)


def reference_check(world: World, scores: np.ndarray) -> None:
    fm = world.fm
    rows = np.arange(fm.n_users)
    if fm.n_users > MAX_CHECK:
        rows = np.sort(np.random.default_rng(1).choice(fm.n_users, MAX_CHECK, replace=False))
    dense = subset(fm, rows).to_pandas()[list(world.model.feature_names_)].to_numpy()
    np.testing.assert_array_equal(scores[rows], world.model.booster_.predict(dense))


def _info(benchmark, n_rows: int, **info) -> None:
    benchmark.extra_info.update(info, n_rows=int(n_rows))
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable: ran once, untimed
        benchmark.extra_info["rows_per_s_median"] = n_rows / float(stats.stats.median)


@pytest.mark.benchmark(group="propensity")
def test_bta_predict(benchmark, world):
    scores = world.model.predict(world.fm)
    reference_check(world, scores)
    r, w = rounds()
    out = benchmark.pedantic(world.model.predict, args=(world.fm,), rounds=r, iterations=1,
                             warmup_rounds=w)
    np.testing.assert_array_equal(out, scores)
    _info(benchmark, world.fm.n_users, n_features=world.fm.n_features,
          n_trees=world.model.best_iteration_)


@pytest.mark.benchmark(group="propensity")
def test_lightgbm_dense_predict(benchmark, world):
    n = min(world.fm.n_users, MAX_DENSE)
    # C order, as PropensityModel.predict hands blocks to LightGBM (to_numpy gives F order)
    dense = np.ascontiguousarray(subset(world.fm, np.arange(n)).to_pandas()[
        list(world.model.feature_names_)].to_numpy())
    booster = world.model.booster_
    np.testing.assert_array_equal(booster.predict(dense), world.model.predict(
        subset(world.fm, np.arange(n))))
    r, w = rounds()
    benchmark.pedantic(booster.predict, args=(dense,), rounds=r, iterations=1, warmup_rounds=w)
    _info(benchmark, n, n_features=dense.shape[1], n_trees=booster.num_trees())

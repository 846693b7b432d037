"""Scale-out: ``bta.dask.build_features`` on a LocalCluster of 1 and of 2 worker processes (one
thread each) against the in-process ``build_features``, on the same Parquet files.

Data: ``benchmarks/_data.make_events`` with ``20,000,000 * BTA_BENCH_SCALE`` events (default
scale 0.01: 200,000 events, the CI smoke run; at least 100,000), one user per 10 events, 200
categories, 30 days, written as 8 Parquet files of rows in random order (every user's events are
spread over the files, so the shuffle by user does real work). Every implementation reads the
files: the in-process one with ``EventLog.from_parquet``.

Before timing, each Dask run's result is collected and checked equal (bit for bit) to the
in-process FeatureMatrix. The timed part is the whole job up to features held by the workers
(each partition's FeatureMatrix built in a worker, only its row count sent back): read, shuffle
by user, ingest, the global pass (vocabulary, bot-rule median, ``as_of``) and the features of
every partition; that is where a cluster job hands over to ``to_parquet`` or to segments.
Collecting everything into the client is a single-machine step (transfer, concatenation, sort
by user) and is not part of the scale-out; cluster start-up and the first compilation are
outside the timing too.

    BTA_BENCH_SCALE=0.5 python -m pytest benchmarks/test_bench_dask.py --benchmark-enable -s
"""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

from _data import bench_rounds, bench_scale, make_events

distributed = pytest.importorskip("distributed")

import bta.dask as bd  # noqa: E402
from bta.events import EventLog  # noqa: E402
from bta.features import FeatureSpec, build_features  # noqa: E402

SPEC = FeatureSpec(windows=("1d", "7d", "30d"), half_life="7d")
N_FILES = 8
#: Partitions of the shuffle: a few per worker, so that two workers share the load evenly.
N_PARTITIONS = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    n_events = max(100_000, int(20_000_000 * bench_scale()))
    ev = make_events(n_events, max(1, n_events // 10))
    root = tmp_path_factory.mktemp("dask_events")
    frame = pd.DataFrame({"user_id": ev.user, "ts": ev.ts,
                          "event": pd.Categorical(["page_view"] * ev.n_events),
                          "category": ev.category})
    for i, rows in enumerate(np.array_split(np.arange(ev.n_events), N_FILES)):
        frame.iloc[rows].to_parquet(root / f"part{i}.parquet", index=False)
    return root, ev


@pytest.fixture(scope="module")
def in_process(dataset):
    root, ev = dataset
    return build_features(EventLog.from_parquet(str(root), ts_unit="ms"), SPEC, ev.as_of)


def _dask_features(root, as_of):
    ddf = bd.read_events(str(root / "*.parquet"))
    return bd.build_features(ddf, SPEC, as_of, npartitions=N_PARTITIONS, ts_unit="ms")


def _n_users(fm):
    return fm.n_users


def _dask_job(root, as_of, client):
    # every partition's features are built in a worker and released after: nothing is cached
    # from one round to the next
    counts = [dask.delayed(_n_users)(fm) for fm in _dask_features(root, as_of).partitions]
    return sum(client.gather(client.compute(counts)))


def _check(got, ref):
    assert got.feature_names == ref.feature_names
    assert np.array_equal(got.users, ref.users)
    assert (got.n_events, got.n_flagged_excluded) == (ref.n_events, ref.n_flagged_excluded)
    assert np.array_equal(got.X.indptr, ref.X.indptr)
    assert np.array_equal(got.X.indices, ref.X.indices)
    assert np.array_equal(got.X.data, ref.X.data)


def test_in_process_build_features(benchmark, dataset, in_process, record_rate):
    root, ev = dataset
    benchmark.group = "dask-features"

    def job():
        return build_features(EventLog.from_parquet(str(root), ts_unit="ms"), SPEC, ev.as_of)

    rounds, warmup = bench_rounds(ev.n_events)
    _check(job(), in_process)
    benchmark.pedantic(job, rounds=rounds, warmup_rounds=warmup)
    record_rate(benchmark, ev.n_events, workers=0)


@pytest.mark.parametrize("n_workers", [1, 2])
def test_dask_build_features(benchmark, dataset, in_process, record_rate, n_workers):
    root, ev = dataset
    benchmark.group = "dask-features"
    # one single-threaded process per worker; numba kernels single-threaded too, so that the
    # workers are the only parallelism measured
    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40,
                                  env={"NUMBA_NUM_THREADS": "1"}) as cluster:
        with distributed.Client(cluster) as client:
            # also warms the workers (imports, numba cache)
            _check(_dask_features(root, ev.as_of).compute(client), in_process)
            rounds, _ = bench_rounds(ev.n_events)
            benchmark.pedantic(_dask_job, args=(root, ev.as_of, client), rounds=rounds,
                               warmup_rounds=0)
    record_rate(benchmark, ev.n_events, workers=n_workers, partitions=N_PARTITIONS)

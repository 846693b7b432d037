"""A real-looking log to features, end to end: bta against polars on the same input.

The log is shaped like real ones (:func:`_data.make_log`): 16-hex-character cookie ids,
category and event names as text, second-resolution times with ties, identical rows, rows in
time order; handed over as an Arrow table, a pandas frame with NumPy (object) or Arrow dtypes,
and a Parquet file. bta runs the user's path with default arguments (validation, privacy
screening, bot flagging, then ``build_features``); polars aggregates the page views. Both
results are checked against the NumPy reference before anything is timed.

Run (smoke size): ``python -m pytest benchmarks/test_bench_ingest.py -q``; full size: see
``RESULTS.md``.
"""

from __future__ import annotations

import pytest

from _data import bench_size, log_frame, log_table, make_log
from _peers import assert_same_cells, bta_log_features, log_cells, polars_log_features, \
    reference_cells

FORMS = ("arrow", "pandas_numpy", "pandas_arrow", "parquet")


@pytest.fixture(scope="module")
def real_log():
    n_events, n_users = bench_size()
    return make_log(n_events, n_users)


@pytest.fixture(scope="module")
def real_reference(real_log):
    return reference_cells(real_log.page_views())


@pytest.fixture(scope="module")
def inputs(real_log, tmp_path_factory):
    import pyarrow.parquet as pq

    table = log_table(real_log)
    path = tmp_path_factory.mktemp("ingest") / "log.parquet"
    pq.write_table(table, path)
    return {"arrow": table, "pandas_numpy": log_frame(real_log, "numpy"),
            "pandas_arrow": log_frame(real_log, "pyarrow"), "parquet": str(path)}


def _run(benchmark, fn, data, lg, reference, record_rate, name):
    assert_same_cells(log_cells(fn(data, lg.as_of), lg), reference, name)
    benchmark.pedantic(fn, args=(data, lg.as_of), rounds=3, iterations=1, warmup_rounds=0)
    record_rate(benchmark, lg.n_events)


@pytest.mark.parametrize("form", FORMS)
def test_bta_log_to_features(benchmark, form, inputs, real_log, real_reference, record_rate):
    benchmark.group = f"log to features: {form}"
    _run(benchmark, bta_log_features, inputs[form], real_log, real_reference, record_rate,
         f"bta on {form}")


@pytest.mark.parametrize("form", FORMS)
def test_polars_log_to_features(benchmark, form, inputs, real_log, real_reference,
                                record_rate):
    benchmark.group = f"log to features: {form}"
    _run(benchmark, polars_log_features, inputs[form], real_log, real_reference, record_rate,
         f"polars on {form}")

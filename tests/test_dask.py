"""bta.dask on a two-worker LocalCluster: features, segments, scores and A/B reports equal the
single-machine results on simulated data spread over many Parquet files (users split across
files, empty files and empty partitions), and a job survives a worker killed mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import dask.dataframe as dd  # noqa: E402

import bta.dask as bd  # noqa: E402
from bta.dask.io import BUCKET  # noqa: E402
from bta.errors import ConfigError, SchemaError, UnknownNameError  # noqa: E402
from bta.evaluate import ab_report, summarize  # noqa: E402
from bta.events import EventLog  # noqa: E402
from bta.features import FeatureSpec, build_features  # noqa: E402
from bta.scoring import LinearScorer  # noqa: E402
from bta.segment import (  # noqa: E402
    InterestClusters, Lookalike, PropensityModel, Segment, SegmentBook, evaluate_rules,
)
from test_ab import assert_same_stats  # noqa: E402

SPEC = FeatureSpec(windows=("1d", "7d"), half_life="3d")
N_FILES = 9


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    # processes=True with nannies: killing a worker process is then a real failure that the
    # nanny recovers from; one thread per worker keeps the two workers on the two CI cores.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """Simulated events written as N_FILES shuffled Parquet files (plus an empty one)."""
    from bta.sim import simulate_clickstream

    ev = simulate_clickstream(n_users=1200, days=14, n_categories=8, seed=5,
                              bot_fraction=0.02).events
    root = tmp_path_factory.mktemp("events")
    shuffled = ev.sample(frac=1.0, random_state=1).reset_index(drop=True)
    for i, rows in enumerate(np.array_split(np.arange(len(shuffled)), N_FILES)):
        shuffled.iloc[rows].to_parquet(root / f"f{i}.parquet", index=False)
    shuffled.iloc[:0].to_parquet(root / "f_empty.parquet", index=False)
    files = {u: set() for u in ev["user_id"].unique()}
    for i, rows in enumerate(np.array_split(np.arange(len(shuffled)), N_FILES)):
        for u in shuffled["user_id"].iloc[rows].unique():
            files[u].add(i)
    assert max(len(f) for f in files.values()) >= 3  # some user spans several input files
    return ev, root


@pytest.fixture(scope="module")
def reference(events):
    ev, _ = events
    log = EventLog.from_pandas(ev)
    assert log.flagged.any()  # bots are flagged: their exclusion must match too
    return build_features(log, SPEC)


@pytest.fixture(scope="module")
def held(client, events):
    """Features of the events held by the workers (built once for several tests)."""
    _, root = events
    return bd.build_features(bd.read_events(str(root)), SPEC, npartitions=5).persist(client)


def assert_same_features(got, ref):
    assert got.feature_names == ref.feature_names
    assert np.array_equal(got.users, ref.users)
    assert np.array_equal(got.nan_absent, ref.nan_absent)
    assert got.as_of == ref.as_of
    assert (got.n_events, got.n_flagged_excluded) == (ref.n_events, ref.n_flagged_excluded)
    # same kernels on the same events of each user: bit-identical values and sparsity
    assert np.array_equal(got.X.indptr, ref.X.indptr)
    assert np.array_equal(got.X.indices, ref.X.indices)
    assert np.array_equal(got.X.data, ref.X.data, equal_nan=True)


# ---- hashing and partitioning ------------------------------------------------------------------


def test_user_bucket_is_stable_across_processes_and_dtypes():
    ids = [0, 1, 2, 3, 12345678901]
    code = ("from bta.dask import user_bucket; "
            "print(user_bucket([0, 1, 2, 3, 12345678901], 16).tolist(), "
            "user_bucket(['u0', 'u1', 'alice', 'bob'], 16).tolist())")
    # another process, with another string-hash salt than this one
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True).stdout
    here = (f"{bd.user_bucket(ids, 16).tolist()} "
            f"{bd.user_bucket(['u0', 'u1', 'alice', 'bob'], 16).tolist()}\n")
    assert other == here
    # Golden values: data partitioned by an earlier run must keep its buckets; a change of
    # hash would silently mis-route users, so it must show up here.
    assert bd.user_bucket(ids, 16).tolist() == [0, 5, 10, 0, 8]
    assert bd.user_bucket(["u0", "u1", "alice", "bob"], 16).tolist() == [7, 13, 4, 2]
    for same in (np.array(ids, np.int64), np.array(ids, np.uint64), pd.array(ids, "Int64"),
                 pd.Series(ids).astype("category"), pd.array(ids, "int64[pyarrow]")):
        assert bd.user_bucket(same, 16).tolist() == [0, 5, 10, 0, 8]
    for same in (pd.array(["u0", "u1", "alice", "bob"], "string[pyarrow]"),
                 pd.Categorical(["u0", "u1", "alice", "bob"])):
        assert bd.user_bucket(same, 16).tolist() == [7, 13, 4, 2]


@settings(max_examples=25, deadline=None)
@given(ids=st.lists(st.one_of(st.integers(-2**62, 2**62), st.text(max_size=6)), max_size=40),
       n=st.integers(1, 9))
def test_user_bucket_range_and_determinism(ids, n):
    b = bd.user_bucket(pd.Series(ids, dtype=object), n)
    assert b.shape == (len(ids),) and ((b >= 0) & (b < n)).all()
    perm = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(bd.user_bucket(pd.Series([ids[i] for i in perm], dtype=object), n),
                          b[perm])


def test_partition_by_user_routes_each_user_to_its_bucket(client):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user_id": rng.integers(0, 15, 300), "x": np.arange(300)})
    p = bd.partition_by_user(dd.from_pandas(df, npartitions=4), 11)
    assert p.npartitions == 11
    parts = client.gather(client.compute(p.to_delayed()))
    assert any(len(q) == 0 for q in parts)  # 15 users in 11 buckets: some are empty
    for k, q in enumerate(parts):
        assert (bd.user_bucket(q["user_id"], 11) == k).all()
    allrows = pd.concat(parts).sort_values("x").reset_index(drop=True)
    pd.testing.assert_frame_equal(allrows, df, check_dtype=False)
    assert bd.partition_by_user(p, 11) is p  # already partitioned: no second shuffle


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: bd.partition_by_user(pd.DataFrame({"user_id": [1]})), ConfigError,
     "ddf must be a dask DataFrame, got DataFrame"),
    (lambda: bd.partition_by_user(dd.from_pandas(pd.DataFrame({"u": [1]}), npartitions=1), 2),
     SchemaError, "ddf is missing column 'user_id' (the user column; name yours with user=...)"),
    (lambda: bd.partition_by_user(dd.from_pandas(pd.DataFrame({"user_id": [1]}),
                                                 npartitions=1), 0),
     ConfigError, "npartitions must be an integer >= 1, got 0"),
    (lambda: bd.read_events(42), ConfigError,
     "path_or_glob must be a path, a glob or a non-empty list of paths, got 42"),
    (lambda: bd.build_features(pd.DataFrame()), ConfigError,
     "ddf must be a dask DataFrame (see read_events), got DataFrame"),
    (lambda: bd.build_features(dd.from_pandas(pd.DataFrame(
        {"user_id": [1], "ts": [1.7e12], "event": ["page_view"]}), npartitions=1)),
     ConfigError, "ts_unit='auto' with numeric times in column 'ts' would be decided per "
     "partition; pass ts_unit='s' or ts_unit='ms'"),
    (lambda: bd.build_features(dd.from_pandas(pd.DataFrame({"user_id": [1]}), npartitions=1),
                               spec="x"), ConfigError, "spec must be a FeatureSpec, got str"),
    (lambda: bd.score("x", None), ConfigError,
     "features must be PartitionedFeatures (see bta.dask.build_features), got str"),
    (lambda: bd.ab_report(dd.from_pandas(pd.DataFrame({"arm": ["a"]}), npartitions=1)),
     SchemaError, "log is missing column 'user_id' (the user column; name yours with "
     "columns={'user': ...})"),
    (lambda: bd.ab_report(dd.from_pandas(pd.DataFrame({"arm": ["a"], "user_id": [1]}),
                                         npartitions=1), bootstrap=-1), ConfigError,
     "bootstrap must be 0 or a positive number of resamples, got -1"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc) as info:
        call()
    assert str(info.value) == msg


# ---- features ----------------------------------------------------------------------------------


def test_features_equal_single_machine(client, events, reference):
    _, root = events
    ddf = bd.read_events(str(root / "*.parquet"))
    assert ddf.npartitions == N_FILES + 1
    pf = bd.build_features(ddf, SPEC, npartitions=7)
    with distributed.get_task_stream(client) as ts:
        got = pf.compute()  # no client= given: the current one runs it
    assert len(ts.data) > 0
    assert_same_features(got, reference)


def test_features_with_given_vocabulary_and_as_of_many_empty_partitions(client, events):
    ev, root = events
    as_of = pd.Timestamp("2026-01-10 12:00", tz="UTC")
    few = ev[ev["user_id"] % 100 == 0]
    log = EventLog.from_pandas(few, flag_bots=None)
    cats = log.categories.tolist() + ["zz_unseen"]
    spec = FeatureSpec(windows=("1d", "7d"), dtype="float32", deny_categories=(cats[0],))
    ref = build_features(log, spec, as_of)
    ddf = bd.read_events([root / f"f{i}.parquet" for i in range(N_FILES)])
    # 24 partitions for ~10 users: many are empty, and they must change nothing
    pf = bd.build_features(ddf[ddf["user_id"] % 100 == 0], spec, as_of, categories=cats,
                           npartitions=24, flag_bots=None)
    parts = client.gather(client.compute(list(pf.partitions)))
    assert sum(p.n_users == 0 for p in parts) > 5
    got = pf.compute(client)
    # the unseen category gets its columns (all absent) exactly where its position puts them
    extra = [n for n in got.feature_names if "zz_unseen" in n]
    assert extra and got.X[:, [got.feature_index(n) for n in extra]].nnz == 0
    keep = [got.feature_index(n) for n in ref.feature_names]
    assert len(keep) + len(extra) == got.n_features
    assert np.array_equal(got.users, ref.users) and got.X.dtype == np.float32
    assert (abs(got.X[:, keep] - ref.X) > 0).nnz == 0
    assert got.n_events == ref.n_events


def test_category_outside_given_vocabulary_raises(client, events):
    _, root = events
    pf = bd.build_features(bd.read_events(str(root / "f0.parquet")), SPEC, "2026-01-10",
                           categories=["nope"], flag_bots=None, npartitions=2)
    with pytest.raises(SchemaError, match="events have categories not in categories"):
        pf.compute(client)


def test_features_parquet_round_trip(client, held, reference, tmp_path):
    pf = held
    out = pf.to_parquet(tmp_path / "features", client=client)
    assert sorted(p.name for p in out.iterdir())[-1] == "part.00004.parquet"
    back = bd.read_features(out)
    assert back.spec == SPEC and back.npartitions == 5
    assert_same_features(back.compute(client), reference)
    with pytest.raises(ConfigError, match="already holds a bta features dataset"):
        pf.to_parquet(out)
    with pytest.raises(SchemaError, match="holds no complete bta features dataset"):
        bd.read_features(tmp_path)


# ---- segments and scores -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(reference):
    fm = reference
    clusters = InterestClusters(n_clusters=3, random_state=0).fit(fm)
    cat = fm.feature_names[0].split(":")[2]
    y = (fm.column(f"count:page_view:{cat}:7d") > 0).astype(int)
    prop = PropensityModel(num_boost_round=15, early_stopping_rounds=None,
                           validation_fraction=0.0, n_jobs=1).fit(fm, y)
    seed = fm.users[clusters.labels_ == 0][::3]
    like = Lookalike(seed, method="centroid").fit(fm)
    return clusters, prop, like


def test_segments_equal_single_machine(client, held, reference, models, tmp_path):
    clusters, prop, like = models
    rules = {"active": "sessions:count >= 3",
             "engaged": "segment('interest:1') and ctr:smoothed > 0.0105"}
    ps = bd.segment(held, rules=rules, clusters={"interest": clusters},
                    propensity={"buyer": (prop, 0.4)}, lookalike={"like": (like, 0.6)},
                    min_audience=5)
    got = ps.compute(client)
    segs = clusters.segments("interest", reference) + [prop.segment("buyer", reference,
                                                                    threshold=0.4)]
    # the lookalike cut on a threshold: non-seed users whose fitted score reaches it
    segs.append(Segment("like", "lookalike", got.definitions[got.index("like")],
                        (like.scores_ >= 0.6) & ~like.is_seed_))
    segs += evaluate_rules(rules, reference, SegmentBook.from_segments(reference.users, segs))
    ref = SegmentBook.from_segments(reference.users, segs, min_audience=5)
    assert got.names == ref.names and got.kinds == ref.kinds
    assert got.definitions == ref.definitions
    assert np.array_equal(got.users, ref.users)
    assert (got.membership != ref.membership).nnz == 0
    assert (ref.sizes > 0).all() and (ref.sizes < ref.n_users).all()  # not trivial segments
    ps.to_parquet(tmp_path / "segs", client=client)
    table = pd.read_parquet(tmp_path / "segs").sort_values("user_id")
    assert np.array_equal(table["user_id"].to_numpy(), ref.users)
    assert np.array_equal(table[list(ref.names)].to_numpy(), ref.membership.toarray())


def test_scores_equal_single_machine(client, held, reference, models):
    _, prop, like = models
    pf = held
    tree = prop.scorer()
    got = bd.score(pf, tree).compute().sort_index()
    dense = reference.to_pandas(tree.feature_names).to_numpy()
    assert np.array_equal(got.index.to_numpy(), reference.users)
    assert np.array_equal(got.to_numpy(), tree.predict(dense))
    assert np.array_equal(bd.score(pf, prop).compute().sort_index().to_numpy(),
                          prop.predict(reference))
    got = bd.score(pf, like).compute().sort_index()
    assert (like.scores_ > 0).mean() > 0.5 and like.is_seed_.sum() > 10
    np.testing.assert_allclose(got.to_numpy(), like.scores_, rtol=0, atol=1e-12)
    names = ["ctr:smoothed", "sessions:count", "rfm:recency_days"]  # NaN when undefined
    lin = LinearScorer(np.array([2.0, 0.1, -0.01]), -1.0, link="logistic")
    got = bd.score(pf, lin, feature_names=names).compute().sort_index()
    ref = lin.predict(reference.to_pandas(names).to_numpy())
    assert np.isnan(ref).any()
    np.testing.assert_array_equal(got.to_numpy(), ref)
    with pytest.raises(ConfigError, match="carries no feature_names"):
        bd.score(pf, lin)
    with pytest.raises(UnknownNameError, match="unknown feature 'ctr:smothed'"):
        bd.score(pf, lin, feature_names=["ctr:smothed", "a", "b"]).compute()


# ---- A/B report --------------------------------------------------------------------------------


def decision_log(seed=0, n_users=900, arms=("control", "a", "b")):
    """An Engine-style decision log (users spread over rows in random order) and outcomes."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(n_users), rng.poisson(5, n_users) + 1)
    arm_of = rng.integers(0, len(arms), n_users)
    a = arm_of[user]
    a[rng.random(user.size) < 0.01] = 1  # a few users are seen in two arms
    n = user.size
    log = pd.DataFrame({
        "ts": pd.Timestamp("2026-03-02", tz="UTC") + pd.to_timedelta(
            rng.integers(0, 5 * 86_400_000, n), unit="ms"),
        "request_id": [f"r{i}" for i in range(n)], "user_id": [f"u{u}" for u in user],
        "arm": np.array(arms, dtype=object)[a], "price": rng.uniform(1.0, 3.0, n) * 1e3,
        "pre_spend": (user % 7).astype(float)})
    clicks = rng.binomial(1, np.array([0.03, 0.06, 0.03])[a])
    conv = rng.binomial(clicks, 0.3)
    out = pd.DataFrame({"request_id": log["request_id"], "clicks": clicks, "conversions": conv,
                        "revenue": conv * rng.gamma(2.0, 15.0, n)})
    out = out[out["clicks"] > 0]
    stray = pd.DataFrame({"request_id": ["nowhere"], "clicks": [1], "conversions": [0],
                          "revenue": [0.0]})
    return log.sample(frac=1.0, random_state=seed).reset_index(drop=True), pd.concat([out, stray])


@pytest.mark.parametrize("outcomes_kind", ["pandas", "dask"])
def test_ab_report_equal_single_machine(client, outcomes_kind):
    log, out = decision_log(3)
    ddf = dd.from_pandas(log, npartitions=6)  # row chunks: users spread over partitions
    outs = out if outcomes_kind == "pandas" else dd.from_pandas(out, npartitions=3)
    with pytest.warns(RuntimeWarning, match="1 outcome rows match no decision"):
        ref_rep = ab_report(log, out, control="control", cuped="pre_spend")
    with pytest.warns(RuntimeWarning, match="1 outcome rows match no decision"):
        got = bd.summarize(ddf, outs, cuped="pre_spend", npartitions=5, client=client)
    with pytest.warns(RuntimeWarning):
        ref = summarize(log, out, cuped="pre_spend")
    assert ref_rep.multi_arm_users > 0  # the exclusion is exercised
    assert_same_stats(got, ref)
    with pytest.warns(RuntimeWarning):
        rep = bd.ab_report(ddf, outs, cuped="pre_spend", npartitions=5, control="control")
    num = ["control", "treatment", "abs_lift", "abs_ci_low", "rel_lift", "p_value",
           "p_adjusted"]
    if outcomes_kind == "pandas":  # the bootstrap: the same resamples, however split
        with pytest.warns(RuntimeWarning):
            ref_boot = ab_report(log, out, control="control", cuped="pre_spend", bootstrap=60,
                                 random_state=11)
        with pytest.warns(RuntimeWarning):
            boot = bd.ab_report(ddf, outs, cuped="pre_spend", npartitions=5, control="control",
                                bootstrap=60, random_state=11)
        cols = [c for c in ref_boot.lifts.columns if c.startswith("boot_")]
        assert len(cols) == 4 and ref_boot.lifts[cols].notna().to_numpy().any()
        np.testing.assert_allclose(boot.lifts[cols].to_numpy(float),
                                   ref_boot.lifts[cols].to_numpy(float), rtol=1e-9,
                                   equal_nan=True)
        # and on one machine, the order of the log's rows does not matter either
        with pytest.warns(RuntimeWarning):
            shuffled = ab_report(log.sample(frac=1.0, random_state=1), out, control="control",
                                 cuped="pre_spend", bootstrap=60, random_state=11)
        np.testing.assert_allclose(shuffled.lifts[cols].to_numpy(float),
                                   ref_boot.lifts[cols].to_numpy(float), rtol=1e-9,
                                   equal_nan=True)
    np.testing.assert_allclose(rep.lifts[num].to_numpy(float), ref_rep.lifts[num].to_numpy(float),
                               rtol=1e-9, equal_nan=True)
    assert (rep.lifts["status"].to_numpy() == ref_rep.lifts["status"].to_numpy()).all()
    pd.testing.assert_frame_equal(rep.srm, ref_rep.srm)
    pd.testing.assert_frame_equal(rep.arms, ref_rep.arms, rtol=1e-9)
    assert_same_report_extras(rep, ref_rep)


def _note(n: str) -> str:
    # the single-machine note on unjoined outcomes also shows an example id
    return n.split(" (e.g. ")[0] if "outcome rows match no decision" in n else n


def assert_same_report_extras(rep, ref):
    """Per-day table, row counts and notes of a report over partitions equal the
    single-machine ones (floats to rounding)."""
    assert len(ref.daily) > 0 and len(rep.daily) == len(ref.daily)
    num = ["control", "treatment", "abs_lift", "abs_ci_low", "abs_ci_high", "rel_lift",
           "p_value", "n_control", "n_treatment"]
    pd.testing.assert_frame_equal(rep.daily.drop(columns=num), ref.daily.drop(columns=num))
    np.testing.assert_allclose(rep.daily[num].to_numpy(float), ref.daily[num].to_numpy(float),
                               rtol=1e-9, atol=1e-12, equal_nan=True)
    assert (rep.rows, rep.rows_used, rep.multi_arm_users) == \
        (ref.rows, ref.rows_used, ref.multi_arm_users)
    assert sorted(map(_note, rep.notes)) == sorted(map(_note, ref.notes))


def test_ab_report_with_null_users_and_unmeasured_outcomes(client):
    """Rows without a user id (the Engine logs them) all land in one partition, which then
    has rows but no units; a log without conversions or revenue has no intervals for the
    metrics built on them. Both reports still equal the single-machine ones."""
    log, _ = decision_log(5, n_users=40)
    log["clicks"] = (np.arange(len(log)) % 7 == 0).astype(int)
    log.loc[log.index[::9], "user_id"] = None
    ddf = dd.from_pandas(log, npartitions=3)
    kw = dict(control="control", bootstrap=40, random_state=3)
    ref = ab_report(log, **kw)
    n = 64  # more partitions than users: the null ids' partition holds no user
    part = bd.partition_by_user(ddf, n).compute()
    ids = part.reset_index().groupby(BUCKET)["user_id"]
    assert (ids.count() == 0).any(), "the test needs a partition of null ids alone"
    rep = bd.ab_report(ddf, npartitions=n, **kw)
    assert any("rows without a user id were excluded" in n for n in ref.notes)
    assert_same_report_extras(rep, ref)
    cols = [c for c in ref.lifts.columns if c.startswith("boot_")]
    lifts = ref.lifts.set_index("metric")
    assert lifts.loc[["ctr"], cols].notna().to_numpy().all()
    assert lifts.loc[["cvr"], cols].isna().to_numpy().all()
    np.testing.assert_allclose(rep.lifts[cols].to_numpy(float), ref.lifts[cols].to_numpy(float),
                               rtol=1e-9, equal_nan=True)


_THREADED_BOOTSTRAP = """
import dask, numpy as np, dask.dataframe as dd
import bta.dask as bd
from test_dask import decision_log
log, out = decision_log(6, n_users=300)
with dask.config.set(scheduler="threads", num_workers=2):
    rep = bd.ab_report(dd.from_pandas(log, npartitions=4), out, control="control",
                       bootstrap=200, random_state=0)
print(int(rep.lifts["boot_abs_ci_low"].notna().sum()))
"""


def test_bootstrap_in_threaded_partitions_never_enters_numba_pool_concurrently():
    """Partition tasks run in a thread pool: each sums its bootstrap with the serial kernel.
    Numba's workqueue threading layer aborts the process if a threaded kernel is entered
    from two threads at once."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    out = subprocess.run([sys.executable, "-c", _THREADED_BOOTSTRAP], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) > 0


def test_ab_report_cuped_table_and_empty_partitions(client):
    log, out = decision_log(4, n_users=12)
    pre = pd.DataFrame({"user_id": log["user_id"].unique()})
    pre["pre_rev"] = np.arange(len(pre), dtype=float)
    ddf = dd.from_pandas(log.drop(columns=["pre_spend"]), npartitions=3)
    with pytest.warns(RuntimeWarning):
        ref = summarize(log.drop(columns=["pre_spend"]), out, cuped=pre)
    for cuped in (pre, dd.from_pandas(pre, npartitions=2)):
        with pytest.warns(RuntimeWarning):
            got = bd.summarize(ddf, out, cuped=cuped, npartitions=16, client=client)
        assert_same_stats(got, ref)
    # 16 partitions of 12 users: most days are missing from most partitions
    with pytest.warns(RuntimeWarning):
        ref_rep = ab_report(log.drop(columns=["pre_spend"]), out, cuped=pre, control="control")
    with pytest.warns(RuntimeWarning):
        rep = bd.ab_report(ddf, out, cuped=pre, npartitions=16, control="control",
                           sequential=True)
    with pytest.warns(RuntimeWarning):
        ref_seq = ab_report(log.drop(columns=["pre_spend"]), out, cuped=pre, control="control",
                            sequential=True)
    assert_same_report_extras(rep, ref_seq)
    assert rep.daily["scope"].eq("cumulative").any() and len(ref_rep.daily) == len(rep.daily)


# ---- failure -----------------------------------------------------------------------------------


def test_worker_killed_mid_computation_gives_same_result(client, events, reference):
    _, root = events
    import dask

    part = bd.partition_by_user(bd.read_events(str(root)), 8, shuffle_method="tasks")
    pf = bd.build_features(part, SPEC, partitioned=True)
    # a slow last step per partition (after the global pass, which waits for every partition),
    # so that the kill lands while partitions are still in flight on both workers
    slow = [dask.delayed(lambda fm: (time.sleep(0.5), fm)[1])(p) for p in pf.partitions]
    before = client.run(os.getpid)
    futures = client.compute(slow)
    next(distributed.as_completed(futures))
    victim = [addr for addr in before if addr in client.scheduler_info()["workers"]][0]
    assert sum(f.done() for f in futures) < len(futures)  # mid-computation
    os.kill(before[victim], signal.SIGKILL)  # a worker process this test's cluster started
    parts = client.gather(futures)
    from bta.dask.features import concat_features

    info = client.compute(pf.info).result()
    assert_same_features(concat_features(parts, info, SPEC), reference)
    assert before[victim] not in client.run(os.getpid).values()  # that process is gone

"""A/B evaluation throughput: ``ab_report`` over a decision log, and the user-level bootstrap.

Sizes scale with ``BTA_BENCH_SCALE`` (default 0.01, the CI smoke run): the full run
(``BTA_BENCH_SCALE=1``) is 10,000,000 logged impressions of 1,000,000 users in 4 arms over 14
days, and 1,000 Poisson bootstrap resamples over 1,000,000 users.

Before timing, bta's per-arm summaries are checked against pandas and polars computing the same
statistics (users, per-user sums, their sums of squares and cross products per arm), and the
bootstrap intervals against the delta-method intervals. The peers are timed in the same run,
so that the ratios hold on a noisy machine.

    BTA_BENCH_SCALE=1 python -m pytest benchmarks/test_bench_ab.py --benchmark-enable
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from _data import bench_rounds


ARMS = np.array(["control", "targeted", "lookalike", "rules"], dtype=object)
DAYS = 14
VALUES = ("impressions", "clicks", "conversions", "spend", "revenue")


def _scale() -> float:
    raw = os.environ.get("BTA_BENCH_SCALE", "").strip()
    return float(raw) if raw else 0.01


def make_log(n_rows: int, n_users: int, seed: int = 0) -> pd.DataFrame:
    """One row per impression (the Engine's schema, outcomes joined): string user ids."""
    rng = np.random.default_rng(seed)
    # one row per user when the sizes match (the bootstrap's 1M distinct users)
    user = rng.permutation(n_users) if n_rows == n_users else rng.integers(0, n_users, n_rows)
    arm = (user * 2654435761 % 2**32) % ARMS.size  # assignment by a hash of the user
    ctr = np.array([0.020, 0.028, 0.025, 0.022])[arm]
    clicks = rng.binomial(1, ctr)
    conv = rng.binomial(clicks, 0.1)
    t0 = np.datetime64("2026-03-01T00:00:00", "ms").astype(np.int64)
    ts = t0 + rng.integers(0, DAYS * 86_400_000, n_rows)
    return pd.DataFrame({
        "ts": pd.to_datetime(ts, unit="ms", utc=True),
        "user_id": pd.Series(user.astype(str), dtype="str"),
        "arm": pd.Categorical.from_codes(arm, ARMS),
        "price": rng.uniform(0.5, 4.0, n_rows),
        "clicks": clicks, "conversions": conv,
        "revenue": conv * rng.gamma(2.0, 20.0, n_rows),
    })


@pytest.fixture(scope="module")
def ab_log() -> pd.DataFrame:
    n_rows = max(10_000, int(10_000_000 * _scale()))
    return make_log(n_rows, max(1_000, n_rows // 10))


@pytest.fixture(scope="module")
def boot_log() -> pd.DataFrame:
    n_users = max(5_000, int(1_000_000 * _scale()))
    # one impression per user: the bootstrap, not the aggregation, dominates
    return make_log(n_users, n_users, seed=1)


# ---- peers: the same per-arm statistics --------------------------------------------------------


def _per_user_frame(log: pd.DataFrame) -> pd.DataFrame:
    return log.assign(impressions=1, spend=log["price"] / 1000.0)


def pandas_stats(log: pd.DataFrame) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    u = _per_user_frame(log).groupby(["arm", "user_id"], observed=True)[list(VALUES)].sum()
    out = {}
    for arm, g in u.groupby(level="arm", observed=True):
        x = g.to_numpy(dtype=np.float64)
        out[str(arm)] = (len(x), x.sum(axis=0), x.T @ x)
    return out


def polars_stats(log: pd.DataFrame) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    pl = pytest.importorskip("polars")
    df = pl.from_pandas(_per_user_frame(log)[["arm", "user_id", *VALUES]])
    u = df.group_by(["arm", "user_id"]).agg([pl.col(c).sum() for c in VALUES])
    exprs = [pl.len().alias("n")] + [pl.col(c).sum().alias(f"s:{c}") for c in VALUES] + [
        (pl.col(a).cast(pl.Float64) * pl.col(b)).sum().alias(f"q:{a}:{b}")
        for i, a in enumerate(VALUES) for b in VALUES[i:]]
    agg = u.group_by("arm").agg(exprs)
    out = {}
    for row in agg.iter_rows(named=True):
        q = np.zeros((len(VALUES), len(VALUES)))
        for i, a in enumerate(VALUES):
            for j, b in enumerate(VALUES[i:], start=i):
                q[i, j] = q[j, i] = row[f"q:{a}:{b}"]
        out[str(row["arm"])] = (row["n"], np.array([row[f"s:{c}"] for c in VALUES]), q)
    return out


def assert_same_stats(bta_stats, peer) -> None:
    assert set(map(str, bta_stats)) == set(peer)
    for arm, st in bta_stats.items():
        n, s, q = peer[str(arm)]
        idx = [st.names.index(c) for c in VALUES]
        assert st.n == n
        assert np.array(st.sums, dtype=float)[idx] == pytest.approx(s, rel=1e-9)
        assert np.array(st.cross, dtype=float)[np.ix_(idx, idx)] == pytest.approx(q, rel=1e-9)


# ---- ab_report ---------------------------------------------------------------------------------


@pytest.mark.benchmark(group="ab_report")
def test_ab_report(benchmark, ab_log, record_rate):
    from bta.evaluate.ab import ab_report

    rep = ab_report(ab_log)
    assert_same_stats(rep.stats, pandas_stats(ab_log))
    assert (rep.lifts.set_index("metric").loc["ctr", "status"] == "ok").all()
    assert rep.daily["date"].nunique() == DAYS and not rep.srm_alarm
    rounds, warm = bench_rounds(len(ab_log))
    benchmark.pedantic(ab_report, args=(ab_log,), rounds=rounds, iterations=1,
                       warmup_rounds=warm)
    record_rate(benchmark, len(ab_log), unit="logged impressions",
                users=int(rep.srm["users"].sum()))


@pytest.mark.benchmark(group="ab_report")
def test_summarize_only(benchmark, ab_log, record_rate):
    from bta.evaluate.ab import summarize

    assert_same_stats(summarize(ab_log), pandas_stats(ab_log))
    rounds, warm = bench_rounds(len(ab_log))
    benchmark.pedantic(summarize, args=(ab_log,), rounds=rounds, iterations=1,
                       warmup_rounds=warm)
    record_rate(benchmark, len(ab_log), unit="logged impressions")


@pytest.mark.benchmark(group="ab_report")
def test_peer_pandas_stats(benchmark, ab_log, record_rate):
    from bta.evaluate.ab import summarize

    assert_same_stats(summarize(ab_log), pandas_stats(ab_log))
    rounds, warm = bench_rounds(len(ab_log))
    benchmark.pedantic(pandas_stats, args=(ab_log,), rounds=rounds, iterations=1,
                       warmup_rounds=warm)
    record_rate(benchmark, len(ab_log), unit="logged impressions")


@pytest.mark.benchmark(group="ab_report")
def test_peer_polars_stats(benchmark, ab_log, record_rate):
    from bta.evaluate.ab import summarize

    assert_same_stats(summarize(ab_log), polars_stats(ab_log))
    rounds, warm = bench_rounds(len(ab_log))
    benchmark.pedantic(polars_stats, args=(ab_log,), rounds=rounds, iterations=1,
                       warmup_rounds=warm)
    record_rate(benchmark, len(ab_log), unit="logged impressions")


# ---- bootstrap ---------------------------------------------------------------------------------

N_BOOT = 1_000


@pytest.mark.benchmark(group="ab_bootstrap")
def test_bootstrap_1000(benchmark, boot_log, record_rate):
    from bta.evaluate.ab import kernels as _ab_kernels
    from bta.evaluate.ab import ab_report

    _ab_kernels.warmup()  # compile outside the timed part
    rep = ab_report(boot_log, bootstrap=N_BOOT, random_state=0, correction=None)
    lf = rep.lifts.set_index(["arm", "metric"])
    for key in [(a, "user_click_rate") for a in ARMS[1:]]:
        width = lf.loc[key, "abs_ci_high"] - lf.loc[key, "abs_ci_low"]
        boot = lf.loc[key, "boot_abs_ci_high"] - lf.loc[key, "boot_abs_ci_low"]
        assert boot == pytest.approx(width, rel=0.15), key
    base = ab_report(boot_log, correction=None)
    n_users = int(base.srm["users"].sum())

    def run():
        return ab_report(boot_log, bootstrap=N_BOOT, random_state=0, correction=None)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    record_rate(benchmark, n_users * N_BOOT, unit="user-resamples", users=n_users,
                resamples=N_BOOT)

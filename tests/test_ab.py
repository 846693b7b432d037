"""ab_report: input handling, bad-input messages, totals against pandas, merge == whole,
per-day tables, corrections, CUPED, bootstrap, sequential, SRM, Markdown and plots."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from bta.errors import ConfigError, SchemaError, UnknownNameError
from bta.evaluate.ab import ABReport, CostModel, ab_report, summarize
from bta.evaluate.stats import METRICS, compare, merge
from bta.schema import DECISION_SCHEMA

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2026-03-02", tz="UTC")


def engine_log(seed=0, n_users=600, days=5, arms=("control", "targeted"), ctr=(0.03, 0.045),
               imps=6):
    """A decision log in the Engine's schema and its outcomes (clicked impressions only)."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(n_users), rng.poisson(imps, n_users) + 1)
    n = user.size
    arm_of_user = rng.integers(0, len(arms), n_users)
    a = arm_of_user[user]
    ts = T0 + pd.to_timedelta(rng.integers(0, days * 86_400_000, n), unit="ms")
    log = pd.DataFrame({
        "ts": ts, "request_id": [f"r{i}" for i in range(n)],
        "user_id": [f"u{u}" for u in user], "arm": np.array(arms, dtype=object)[a],
        "creative_id": "c1", "campaign_id": "k1", "targeted": a > 0,
        "propensity": 1.0, "n_eligible": 1, "score": 1.0,
        "price": rng.uniform(1.0, 3.0, n), "policy_version": "v1",
        "reason": np.where(a > 0, "targeted", "control"),
    })
    clicks = rng.binomial(1, np.asarray(ctr)[a])
    conv = rng.binomial(clicks, 0.25)
    out = pd.DataFrame({"request_id": log["request_id"], "clicks": clicks, "conversions": conv,
                        "revenue": conv * rng.gamma(2.0, 15.0, n)})
    return log, out[out["clicks"] > 0].reset_index(drop=True)


def joined(log, out):
    j = log.merge(out, on="request_id", how="left")
    for c in ("clicks", "conversions", "revenue"):
        j[c] = j[c].fillna(0)
    j["spend"] = j["price"] / 1000.0
    return j


# ---- bad input: one exact message per case -----------------------------------------------------


def small(**kw):
    d = dict(arm=["control", "t", "control", "t"], user_id=["a", "b", "c", "d"],
             clicks=[0, 1, 0, 2], impressions=[1, 2, 3, 4], price=[1.0, 2, 3, 4],
             revenue=[0.0, 1, 2, 3], conversions=[0, 1, 0, 1])
    d.update(kw)
    return pd.DataFrame(d)


BAD = [
    (lambda: ab_report(small().drop(columns="arm")), SchemaError,
     "log is missing column 'arm' (the arm column; name yours with columns={'arm': ...})"),
    (lambda: ab_report(small().drop(columns="user_id")), SchemaError,
     "log is missing column 'user_id' (the user column; name yours with columns={'user': ...})"),
    (lambda: ab_report(small(impressions=[1, -2, 3, 4])), SchemaError,
     "log column 'impressions' must hold non-negative integers; 1 of 4 rows do not "
     "(first: row 1: -2.0)"),
    (lambda: ab_report(small(clicks=[0, 1.5, 0, 2])), SchemaError,
     "log column 'clicks' must hold non-negative integers; 1 of 4 rows do not "
     "(first: row 1: 1.5)"),
    (lambda: ab_report(small(price=[1, 2, -3.0, 4])), SchemaError,
     "log column 'price' must hold non-negative finite numbers; 1 of 4 rows do not "
     "(first: row 2: -3.0)"),
    (lambda: ab_report(small(cost=[1, 2, -3.0, 4])), SchemaError,
     "log column 'cost' must hold non-negative finite numbers; 1 of 4 rows do not "
     "(first: row 2: -3.0)"),
    (lambda: ab_report(small(revenue=[0, np.nan, 1, 1])), SchemaError,
     "log column 'revenue' must hold finite numbers; 1 of 4 rows do not (first: row 1: nan)"),
    (lambda: ab_report(small(clicks=["a", "b", "c", "d"])), SchemaError,
     "log column 'clicks' must be numeric, got dtype str"),
    (lambda: ab_report(small(arm=["control", None, "t", "t"])), SchemaError,
     "log column 'arm' must not be null; 1 of 4 rows are (first: row 1)"),
    (lambda: ab_report(small(), control="ctrl"), UnknownNameError,
     "control arm 'ctrl' is not in the data; arms are ['control', 't']"),
    (lambda: ab_report({"arm": ["control", "t"], "user_id": ["a"]}), SchemaError,
     "log columns must all have the same length, got 'arm': 2, 'user_id': 1"),
    (lambda: ab_report(small(request_id=list("wxyz")),
                       {"request_id": ["w", "x"], "clicks_": [1]}), SchemaError,
     "outcomes columns must all have the same length, got 'request_id': 2, 'clicks_': 1"),
    (lambda: ab_report([1, 2, 3]), SchemaError,
     "log must be a pandas DataFrame, a pyarrow Table, a Parquet path or a mapping of column "
     "arrays, got list"),
    (lambda: ab_report(small(), columns={"userid": "user_id"}), UnknownNameError,
     "columns has unknown key 'userid'; expected some of ['arm', 'user', 'impressions', "
     "'clicks', 'conversions', 'revenue', 'cost', 'price', 'ts', 'request_id']"),
    (lambda: ab_report(small(), columns={"clicks": "clk"}), SchemaError,
     "log is missing column 'clk' (the clicks column named in columns)"),
    (lambda: ab_report(small(), cost="cpm_price"), SchemaError,
     "log is missing column 'cpm_price' (the price per 1,000 impressions named by cost)"),
    (lambda: ab_report(small(), cost=3.0), ConfigError,
     "cost must be None, a column name or a CostModel, got float"),
    (lambda: CostModel(), ConfigError,
     "CostModel needs exactly one of cpm, cpc, cpa, got cpm=None, cpc=None, cpa=None"),
    (lambda: CostModel(cpm=1, cpc=2), ConfigError,
     "CostModel needs exactly one of cpm, cpc, cpa, got cpm=1, cpc=2, cpa=None"),
    (lambda: CostModel(cpm=-1.0), ConfigError,
     "cpm must be a non-negative finite number, got -1.0"),
    (lambda: ab_report(small().drop(columns="clicks"), cost=CostModel(cpc=1.0)), ConfigError,
     "CostModel(cpc=...) needs the clicks column, which the input does not have"),
    (lambda: ab_report(small(), alpha=1.5), ConfigError, "alpha must be in (0, 1), got 1.5"),
    (lambda: ab_report(small(), srm_alpha=0), ConfigError, "srm_alpha must be in (0, 1), got 0"),
    (lambda: ab_report(small(), correction="bonferroni"), ConfigError,
     "correction must be 'holm', 'bh' or None, got 'bonferroni'"),
    (lambda: ab_report(small(), family=()), ConfigError,
     "family must be a non-empty sequence of metric names, got ()"),
    (lambda: ab_report(small(), family=("ctr", "ctrr")), UnknownNameError,
     f"family has unknown metric 'ctrr'; expected some of {list(METRICS)}"),
    (lambda: ab_report(small(), bootstrap=-1), ConfigError,
     "bootstrap must be 0 or a positive number of resamples, got -1"),
    (lambda: ab_report(small(), expected_weights={"control": 1}), ConfigError,
     "expected_weights must give a weight to every arm; missing ['t']"),
    (lambda: ab_report(small(request_id=["r1", "r1", "r2", "r3"]),
                       pd.DataFrame({"request_id": ["r1"], "x": [1]})), SchemaError,
     "log column 'request_id' must be unique to join outcomes; 1 rows repeat an id "
     "(first: 'r1')"),
    (lambda: ab_report(small(request_id=list("wxyz")),
                       pd.DataFrame({"request_id": ["w"], "clicks": [1]})), SchemaError,
     "column 'clicks' (clicks) is in both log and outcomes; keep it in one"),
    (lambda: ab_report(small(), pd.DataFrame({"request_id": ["w"], "x": [1]})), SchemaError,
     "log is missing column 'request_id' (the request_id column, needed to join outcomes)"),
    (lambda: ab_report(small(user_id=["a", "b", "a", "d"], pre=[1.0, 2, 3, 4]), cuped="pre"),
     SchemaError, "cuped column 'pre' must be constant per user (a pre-period value); "
     "1 users have several values"),
    (lambda: ab_report(summarize(small()), cuped=True), ConfigError,
     "cuped=True needs summary statistics with covariates (pre:* names), got names "
     "['impressions', 'clicks', 'conversions', 'clicked', 'converted', 'spend', 'revenue']"),
    (lambda: ab_report(small(), cuped=True), ConfigError,
     "cuped=True is for summary statistics that already hold covariates; with a log, name the "
     "covariate column(s) or pass a frame"),
    (lambda: ab_report(small(ts=[1.0, np.inf, 2.0, 3.0])), SchemaError,
     "log column 'ts' must hold finite numbers; 1 of 4 rows do not (first: row 1: inf)"),
    (lambda: ab_report(summarize(small()), bootstrap=10), ConfigError,
     "bootstrap must be 0 with summary statistics (it resamples users of a log), got 10"),
]


@pytest.mark.parametrize("call, exc, msg", BAD, ids=range(len(BAD)))
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match="^" + re.escape(msg) + "$"):
        call()


# ---- totals and values against pandas ----------------------------------------------------------


def test_engine_log_totals_match_pandas():
    log, out = engine_log(1)
    rep = ab_report(log, out)
    j = joined(log, out)
    g = j.groupby("arm").agg(users=("user_id", "nunique"), impressions=("ts", "size"),
                             clicks=("clicks", "sum"), conversions=("conversions", "sum"),
                             spend=("spend", "sum"), revenue=("revenue", "sum"))
    wide = rep.arm_table()
    for a in ("control", "targeted"):
        for c in g.columns:
            assert wide.loc[a, c] == pytest.approx(g.loc[a, c], rel=1e-12), (a, c)
        r = g.loc[a]
        expect = {"ctr": r.clicks / r.impressions, "cvr": r.conversions / r.clicks,
                  "cpc": r.spend / r.clicks, "cpa": r.spend / r.conversions,
                  "cpm": 1000 * r.spend / r.impressions, "ecpm": 1000 * r.revenue / r.impressions,
                  "roas": r.revenue / r.spend, "roi": (r.revenue - r.spend) / r.spend,
                  "revenue_per_user": r.revenue / r.users}
        for m, v in expect.items():
            assert wide.loc[a, m] == pytest.approx(v, rel=1e-12), (a, m)
    assert (rep.arms["status"] == "ok").all()
    assert list(rep.stats) == ["control", "targeted"]


def test_study_roas_149_vs_390():
    # untargeted ads: $1.49 of sales per $1; targeted: $3.90 (the motivating study)
    rng = np.random.default_rng(3)
    n = 4000
    arm = np.where(np.arange(n) % 2 == 0, "untargeted", "targeted")
    cost = rng.uniform(0.5, 1.5, n)
    rev = cost * np.where(arm == "untargeted", 1.49, 3.90)
    log = pd.DataFrame({"arm": arm, "user_id": np.arange(n), "cost": cost, "revenue": rev})
    rep = ab_report(log, control="untargeted", family=("roas", "roi"))
    wide = rep.arm_table()
    assert wide.loc["untargeted", "roas"] == pytest.approx(1.49, rel=1e-12)
    assert wide.loc["targeted", "roas"] == pytest.approx(3.90, rel=1e-12)
    assert wide.loc["targeted", "roi"] == pytest.approx(2.90, rel=1e-12)
    row = rep.lifts.set_index("metric").loc["roas"]
    assert row["abs_lift"] == pytest.approx(2.41)
    assert row["rel_lift"] == pytest.approx(3.9 / 1.49 - 1)
    # not measured: no clicks, no impressions column (1 per row)
    assert rep.lifts.set_index("metric").loc["ctr", "status"] == "not_measured"
    assert any("clicks not measured" in n for n in rep.notes)


def test_lifts_equal_compare_on_summaries():
    log, out = engine_log(2, arms=("control", "a", "b"), ctr=(0.03, 0.04, 0.03))
    rep = ab_report(log, out, correction=None)
    stats = summarize(log, out)
    for _, row in rep.lifts.iterrows():
        r = compare(stats["control"], stats[row["arm"]], row["metric"])
        for k in ("control", "treatment", "abs_lift", "abs_ci_low", "rel_ci_high", "p_value"):
            assert row[k] == pytest.approx(float(r[k]), rel=1e-12, nan_ok=True), k


def test_cost_variants():
    log, out = engine_log(4)
    j = joined(log, out)
    by_price = ab_report(log, out).arm_table()
    named = ab_report(log.rename(columns={"price": "cpm_paid"}), out, cost="cpm_paid").arm_table()
    assert by_price["spend"].to_numpy() == pytest.approx(named["spend"].to_numpy(), rel=1e-12)
    direct = ab_report(log.assign(cost=log["price"] / 1000), out).arm_table()
    assert direct["spend"].to_numpy() == pytest.approx(by_price["spend"].to_numpy(), rel=1e-12)
    for model, basis in ((CostModel(cpm=2.0), j.groupby("arm").size() * 0.002),
                         (CostModel(cpc=0.5), j.groupby("arm")["clicks"].sum() * 0.5),
                         (CostModel(cpa=4.0), j.groupby("arm")["conversions"].sum() * 4.0)):
        t = ab_report(log, out, cost=model).arm_table()
        assert t["spend"].to_numpy() == pytest.approx(basis.to_numpy(dtype=float), rel=1e-12)
    nocost = ab_report(log.drop(columns="price"), out)
    assert (nocost.arms.set_index("metric").loc["roas", "status"] == "not_measured").all()


def test_input_types_agree(tmp_path):
    log, out = engine_log(5, n_users=200)
    ref = summarize(log, out)
    table = pa.Table.from_pandas(log, preserve_index=False)
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    mapping = {c: log[c].to_numpy() for c in log.columns}
    for src in (table, path, str(path), mapping):
        assert summarize(src, pa.Table.from_pandas(out)) == ref
    polars = pytest.importorskip("polars")
    assert summarize(polars.from_pandas(log), out) == ref


def test_column_mapping():
    log, out = engine_log(6, n_users=200)
    ren = log.rename(columns={"user_id": "uid", "arm": "group", "request_id": "rid"})
    out2 = out.rename(columns={"request_id": "rid", "clicks": "clk"})
    got = summarize(ren, out2, columns={"user": "uid", "arm": "group", "request_id": "rid",
                                        "clicks": "clk"})
    assert got == summarize(log, out)


def test_unmatched_outcomes_reported():
    log, out = engine_log(7, n_users=100)
    extra = pd.concat([out, pd.DataFrame({"request_id": ["nope"], "clicks": [1],
                                          "conversions": [0], "revenue": [0.0]})])
    with pytest.warns(RuntimeWarning, match="1 outcome rows match no decision"):
        rep = ab_report(log, extra)
    assert any("1 outcome rows match no decision" in n for n in rep.notes)
    assert summarize(log, out) == rep.stats


# ---- merged == whole ---------------------------------------------------------------------------


def assert_same_stats(got, ref):
    """Per-arm statistics equal: integer sums exactly, float sums to rounding (another order)."""
    assert set(got) == set(ref)
    for arm, r in ref.items():
        g = got[arm]
        assert g.n == r.n and g.names == r.names
        for gs, rs in zip((g.sums,) + g.cross, (r.sums,) + r.cross):
            for x, y in zip(gs, rs):
                if type(y) is int:  # integer sums and products: exact
                    assert type(x) is int and x == y
                else:  # float sums in another order: equal to rounding
                    assert x == pytest.approx(y, rel=1e-12, abs=1e-300)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), parts=st.integers(1, 4))
def test_merged_shards_equal_whole(seed, parts):
    log, out = engine_log(seed, n_users=60, arms=("control", "a", "b"), ctr=(0.05, 0.1, 0.05))
    j = joined(log, out)[["arm", "user_id", "clicks", "conversions", "revenue", "price"]]
    j["price"] *= 1e3  # large float sums make rounding differences visible
    shard = j["user_id"].str[1:].astype(int) % parts  # by user: shards share no user
    whole = summarize(j)
    merged = merge(*(summarize(j[shard == p]) for p in range(parts)
                     if (shard == p).any()))
    assert_same_stats(merged, whole)
    # the report from merged summaries equals the one from the log
    a = ab_report(merged, control="control").lifts
    b = ab_report(j, control="control").lifts
    num = ["control", "treatment", "abs_lift", "rel_lift", "p_value", "abs_ci_low"]
    assert a[num].to_numpy() == pytest.approx(b[num].to_numpy(), rel=1e-9, nan_ok=True)
    assert (a["status"].to_numpy() == b["status"].to_numpy()).all()


# ---- per day -----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_cuped", [False, True])
def test_daily_matches_reports_of_truncated_logs(with_cuped):
    log, out = engine_log(8, n_users=300, days=4)
    users = log["user_id"].unique()
    cuped = (pd.DataFrame({"user_id": users, "pre": np.random.default_rng(0).poisson(
        3, users.size)}) if with_cuped else None)
    rep = ab_report(log, out, family=("ctr", "roas", "revenue_per_user"), cuped=cuped)
    d = rep.daily
    assert set(d["scope"]) == {"day", "cumulative"}
    cols = ["control", "treatment", "abs_lift", "abs_ci_low", "rel_lift", "p_value"]
    for k in range(4):
        end = T0 + (k + 1) * DAY
        day_rows = log[(log["ts"] >= end - DAY) & (log["ts"] < end)]
        up_rows = log[log["ts"] < end]
        upto = ab_report(up_rows, out[out["request_id"].isin(up_rows["request_id"])],
                         correction=None, cuped=cuped).lifts.set_index("metric")
        only = ab_report(day_rows, out[out["request_id"].isin(day_rows["request_id"])],
                         correction=None, cuped=cuped).lifts.set_index("metric")
        for scope, ref in (("cumulative", upto), ("day", only)):
            got = d[(d["scope"] == scope) & (d["date"] == end - DAY)].set_index("metric")
            for m in ("ctr", "roas", "revenue_per_user"):
                assert got.loc[m, cols].to_numpy(dtype=float) == pytest.approx(
                    ref.loc[m, cols].to_numpy(dtype=float), rel=1e-9, nan_ok=True), (scope, k, m)
                assert got.loc[m, "status"] == ref.loc[m, "status"]
    # the last cumulative day is the whole log
    last = d[(d["scope"] == "cumulative") & (d["date"] == d["date"].max())].set_index("metric")
    whole = ab_report(log, out, correction=None, cuped=cuped).lifts.set_index("metric")
    assert last.loc["ctr", "p_value"] == pytest.approx(whole.loc["ctr", "p_value"], rel=1e-9)


def test_epoch_ms_times_equal_datetimes():
    log, out = engine_log(20, n_users=150, days=3)
    ms = log.assign(ts=(log["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1))
    a = ab_report(log, out, family="ctr").daily
    b = ab_report(ms, out, family="ctr").daily
    pd.testing.assert_frame_equal(a, b)
    assert set(a["metric"]) == {"ctr"} and a["date"].nunique() == 3


def test_no_ts_no_daily():
    log, out = engine_log(9, n_users=100)
    rep = ab_report(log.drop(columns="ts"), out)
    assert rep.daily.empty and list(rep.daily.columns)[:3] == ["date", "scope", "arm"]


# ---- checks: multi-arm users, SRM, empty arms --------------------------------------------------


def test_multi_arm_users_excluded_and_reported():
    log, out = engine_log(10, n_users=200)
    bad = log.copy()
    flip = bad["user_id"].isin(["u1", "u2", "u3"]) & (bad.index % 2 == 0)
    bad.loc[flip, "arm"] = np.where(bad.loc[flip, "arm"] == "control", "targeted", "control")
    n_multi = bad.groupby("user_id")["arm"].nunique().gt(1).sum()
    rep = ab_report(bad, out)
    assert rep.multi_arm_users == n_multi > 0
    assert any(f"{n_multi} users seen in more than one arm were excluded" in n for n in rep.notes)
    clean = bad[~bad["user_id"].isin(bad.groupby("user_id")["arm"].nunique().loc[
        lambda s: s > 1].index)]
    assert rep.stats == summarize(clean, out)
    assert (rep.rows, rep.rows_used) == (len(bad), len(clean))
    kept = summarize(bad, out, exclude_multi_arm_users=False)
    pairs = bad.groupby("arm")["user_id"].nunique()
    assert {a: s.n for a, s in kept.items()} == pairs.to_dict()


def test_rows_without_user_are_excluded_and_reported():
    log, out = engine_log(21, n_users=100)
    holes = log.copy()
    holes["user_id"] = holes["user_id"].astype(object)
    holes.loc[[0, 5, 9], "user_id"] = None  # the Engine logs requests without an id as null
    rep = ab_report(holes, out)
    assert any("3 rows without a user id were excluded" in n for n in rep.notes)
    assert rep.stats == summarize(log.drop(index=[0, 5, 9]), out)
    assert (rep.rows, rep.rows_used) == (len(log), len(log) - 3)


def test_table_like_objects_are_read():
    class Logged:  # e.g. bta.serve's DecisionLog: anything with to_table() -> Arrow
        def __init__(self, df):
            self.df = df

        def to_table(self):
            return pa.Table.from_pandas(self.df, preserve_index=False)

    log, out = engine_log(22, n_users=80)
    assert summarize(Logged(log), out) == summarize(log, out)


def test_srm_alarm_and_expected_weights():
    n = 3000
    log = pd.DataFrame({"arm": ["control"] * n + ["t"] * int(n * 0.9),
                        "user_id": np.arange(n + int(n * 0.9)), "clicks": 0})
    rep = ab_report(log)
    assert rep.srm_alarm and rep.srm["p_value"].iloc[0] < 0.001
    assert any("sample ratio mismatch" in n for n in rep.notes)
    ok = ab_report(log, expected_weights={"control": 10, "t": 9})
    assert not ok.srm_alarm and ok.srm["expected_share"].tolist() == pytest.approx([10 / 19,
                                                                                     9 / 19])


def test_planned_arm_without_traffic_is_empty_arm():
    log, out = engine_log(11, n_users=100)
    rep = ab_report(log, out, expected_weights={"control": 1, "targeted": 1, "ghost": 1})
    lifts = rep.lifts[rep.lifts["arm"] == "ghost"]
    assert (lifts["status"] == "empty_arm").all() and lifts["p_value"].isna().all()
    assert rep.srm_alarm
    arms = rep.arms[(rep.arms["arm"] == "ghost") & (rep.arms["metric"] == "ctr")]
    assert arms["status"].tolist() == ["empty_arm"] and arms["value"].isna().all()


# ---- family, corrections, sequential, CUPED, bootstrap ----------------------------------------


@pytest.mark.parametrize("correction", ["holm", "bh", None])
def test_family_correction_and_levels(correction):
    log, out = engine_log(12, arms=("control", "a", "b"), ctr=(0.03, 0.05, 0.031))
    fam = ("ctr", "user_click_rate")
    rep = ab_report(log, out, family=fam, correction=correction)
    lf = rep.lifts
    f = lf[lf["in_family"]]
    assert set(f["metric"]) == set(fam) and len(f) == 4
    if correction is None:
        assert (f["p_adjusted"] == f["p_value"]).all() and (f["ci_level"] == 0.95).all()
    else:
        ref = multipletests(f["p_value"], method={"holm": "holm", "bh": "fdr_bh"}[correction])[1]
        assert f["p_adjusted"].to_numpy() == pytest.approx(ref)
        rejected = max(int((ref <= 0.05).sum()), 1)
        level = 1 - 0.05 / 4 if correction == "holm" else 1 - 0.05 * rejected / 4
        assert f["ci_level"].to_numpy() == pytest.approx(level)
        # the adjusted interval of a metric is wider than the unadjusted one
        plain = ab_report(log, out, family=fam, correction=None).lifts
        w_adj = (f["abs_ci_high"] - f["abs_ci_low"]).to_numpy()
        pf = plain[plain["in_family"]]
        assert (w_adj >= (pf["abs_ci_high"] - pf["abs_ci_low"]).to_numpy() - 1e-15).all()
    rest = lf[~lf["in_family"]]
    assert (rest["p_adjusted"] == rest["p_value"]).all() | rest["p_value"].isna().all()
    assert (rest["ci_level"] == 0.95).all()
    assert "family: ctr, user_click_rate x 2 arm(s) vs 'control' = 4 tests" in rep.to_markdown()


def test_sequential_is_more_conservative():
    log, out = engine_log(13, n_users=2000, ctr=(0.03, 0.04))
    fixed = ab_report(log, out, correction=None).lifts.set_index("metric")
    seq = ab_report(log, out, correction=None, sequential=True).lifts.set_index("metric")
    ok = seq["status"] == "ok"
    assert ok.sum() >= 10 and (seq.loc[ok, "test"] == "msprt").all()
    assert (seq.loc[ok, "p_value"] >= fixed.loc[ok, "p_value"]).all()
    w_seq = (seq["abs_ci_high"] - seq["abs_ci_low"])[ok]
    w_fix = (fixed["abs_ci_high"] - fixed["abs_ci_low"])[ok]
    assert (w_seq > w_fix).all()


def test_cuped_column_and_frame_agree():
    log, out = engine_log(14, n_users=400)
    users = log["user_id"].unique()
    rng = np.random.default_rng(0)
    pre = pd.DataFrame({"user_id": users, "pre_clicks": rng.poisson(2, users.size)})
    with_col = log.merge(pre, on="user_id")
    a = ab_report(with_col, out, cuped="pre_clicks").lifts
    b = ab_report(log, out, cuped=pre).lifts
    num = ["control", "treatment", "abs_lift", "abs_se", "p_value"]
    assert a[num].to_numpy() == pytest.approx(b[num].to_numpy(), rel=1e-9, nan_ok=True)
    # users missing from the frame count as 0
    part = pre.iloc[: users.size // 2]
    c = ab_report(log, out, cuped=part).stats["control"]
    d = ab_report(log.merge(part, on="user_id", how="left").fillna({"pre_clicks": 0}), out,
                  cuped="pre_clicks").stats["control"]
    assert c == d
    # summaries carry the covariate: CUPED from merged stats
    e = ab_report(summarize(log, out, cuped=pre), cuped=True).lifts
    assert e[num].to_numpy() == pytest.approx(b[num].to_numpy(), rel=1e-9, nan_ok=True)


def test_cuped_reduces_variance():
    log, out = engine_log(15, n_users=1500)
    j = joined(log, out)
    rng = np.random.default_rng(1)
    per_user = j.groupby("user_id")["clicks"].sum()
    pre = pd.DataFrame({"user_id": per_user.index,
                        "pre": per_user.to_numpy() + rng.binomial(1, 0.05, per_user.size)})
    plain = ab_report(log, out).lifts.set_index("metric")
    adj = ab_report(log, out, cuped=pre).lifts.set_index("metric")
    assert adj.loc["clicks_per_user", "abs_se"] < 0.8 * plain.loc["clicks_per_user", "abs_se"]
    assert adj.loc["ctr", "abs_se"] < plain.loc["ctr", "abs_se"]


def test_bootstrap_close_to_delta_method_and_reproducible():
    log, out = engine_log(16, n_users=3000)
    a = ab_report(log, out, bootstrap=400, random_state=7, correction=None)
    b = ab_report(log, out, bootstrap=400, random_state=7, correction=None)
    pd.testing.assert_frame_equal(a.lifts, b.lifts)
    lf = a.lifts.set_index("metric")
    for m in ("ctr", "revenue_per_user", "user_click_rate"):
        width = lf.loc[m, "abs_ci_high"] - lf.loc[m, "abs_ci_low"]
        bw = lf.loc[m, "boot_abs_ci_high"] - lf.loc[m, "boot_abs_ci_low"]
        assert bw == pytest.approx(width, rel=0.2), m
        mid = (lf.loc[m, "boot_abs_ci_high"] + lf.loc[m, "boot_abs_ci_low"]) / 2
        assert mid == pytest.approx(lf.loc[m, "abs_lift"], abs=0.25 * width), m


# ---- output ------------------------------------------------------------------------------------


def test_markdown_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    log, out = engine_log(17, n_users=300)
    rep = ab_report(log, out)
    assert isinstance(rep, ABReport)
    md = rep.to_markdown()
    for part in ("# A/B report", "## Arms", "## Lifts against the control", "| targeted | ctr |",
                 "sample ratio check", "Holm step-down p-values; Bonferroni intervals at 98.33%"):
        assert part in md, part
    paths = rep.plot(tmp_path / "figs")
    assert [p.name for p in paths] == ["arms.png", "cumulative_lift.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_report_is_frozen():
    log, out = engine_log(18, n_users=50)
    rep = ab_report(log, out)
    with pytest.raises(AttributeError):
        rep.alpha = 0.1


def test_decision_schema_columns_are_read():
    log, out = engine_log(19, n_users=50)
    assert list(log.columns) == DECISION_SCHEMA.names
    table = pa.Table.from_pandas(log, schema=DECISION_SCHEMA, preserve_index=False)
    assert summarize(table, out) == summarize(log, out)

"""The ``bta`` command: every subcommand's output checked against the library called directly,
one-line errors for bad paths, malformed files, missing columns and bad configs, the feature
file round trip, and the demo at a small size (table, report files, valid PNGs)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.cli import Progress, main
from bta.config import (
    FeatureMatrixStore, engine_from_config, feature_spec, load_engine, load_features,
    read_memberships, save_features,
)
from bta.errors import ConfigError, SchemaError
from bta.events import EventLog
from bta.features import FeatureMatrix, FeatureSpec, build_features
from bta.segment import SegmentBook, evaluate_rules

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENGINE_TOML = """
version = "t1"
# a replay must not depend on how busy the machine is: no wall-clock deadline in effect
time_budget_ms = 60000.0
policy = {{name = "epsilon_greedy", epsilon = 0.2}}

[profiles]
{profiles}
segments = "seg.parquet"
min_audience = 5

[privacy]
opt_outs = [{opt_out}]

[fallback]
id = "house"
creatives = [{{id = "h1"}}]
bid = 0.01

[[campaigns]]
id = "autos"
creatives = [{{id = "autos-1", category = "autos"}}]
targeting = 'segment("autos_fans")'
pricing = "cpc"
bid = 0.8
caps = [{{max_impressions = 2, window = "1d"}}]

[[campaigns]]
id = "travel"
creatives = [{{id = "travel-1"}}, {{id = "travel-2"}}]
targeting = 'segment("travel_fans") and count:page_view:travel:7d >= 1'
bid = 3.0

[[campaigns]]
id = "ron"
creatives = [{{id = "ron-1"}}, {{id = "ron-2"}}]
bid = 1.0
"""
RULES = {"autos_fans": "count:page_view:autos:7d >= 1",
         "travel_fans": "count:page_view:travel:30d >= 2"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bta: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small pipeline's files, made once with the command itself."""
    d = tmp_path_factory.mktemp("pipeline")
    args = ["--users", "600", "--days", "12", "--seed", "4"]
    assert main(["simulate", *args, "--out", str(d / "ev.parquet"), "-q",
                 "--truth", str(d / "truth.csv")]) == 0
    assert main(["features", str(d / "ev.parquet"), "--out", str(d / "fm.parquet"), "-q"]) == 0
    rules = sum((["--rule", f"{k}={v}"] for k, v in RULES.items()), [])
    assert main(["segment", str(d / "fm.parquet"), *rules, "--min-audience", "5",
                 "--out", str(d / "seg.parquet"), "--book", str(d / "book"), "-q"]) == 0
    ev = pd.read_parquet(d / "ev.parquet")
    rng = np.random.default_rng(0)
    users = ev["user_id"].unique()
    n = 1500
    end = ev["ts"].max()
    req = pd.DataFrame({"user_id": rng.choice(users, n),
                        "ts": end + pd.to_timedelta(np.sort(rng.integers(1, 86_400, n)), "s"),
                        "request_id": [f"q{i}" for i in range(n)],
                        "gdpr": np.where(rng.random(n) < 0.1, 1.0, np.nan)})
    req.to_parquet(d / "req.parquet")
    req.to_csv(d / "req.csv", index=False)
    from bta.serve import Experiment

    # an opted-out user the Engine would otherwise target
    opt_out = next(int(u) for u in req["user_id"] if Experiment().assign(int(u)) == "targeted")
    (d / "engine.toml").write_text(ENGINE_TOML.format(profiles='features = "fm.parquet"',
                                                      opt_out=opt_out))
    (d / "engine_events.toml").write_text(ENGINE_TOML.format(
        profiles='events = "ev.parquet"', opt_out=opt_out))
    return d


# ---- happy paths, checked against the library -------------------------------------------------
def test_simulate_writes_the_simulators_events(files):
    from bta.sim import simulate_clickstream

    cs = simulate_clickstream(n_users=600, days=12, seed=4)
    got = pd.read_parquet(files / "ev.parquet")
    pd.testing.assert_frame_equal(got, cs.events.reset_index(drop=True), check_categorical=False)
    truth = pd.read_csv(files / "truth.csv")
    assert truth["is_bot"].tolist() == cs.users["is_bot"].tolist()


def test_simulate_csv_round_trips(tmp_path, capsys):
    code, out, _ = run(capsys, "simulate", "--users", "50", "--days", "3", "--out",
                       tmp_path / "e.csv", "-q")
    assert code == 0 and "wrote" in out
    df = pd.read_csv(tmp_path / "e.csv")
    assert {"user_id", "ts", "event", "category", "value"} <= set(df.columns)
    assert EventLog.from_pandas(df).n_rows == len(df)


def test_features_equal_build_features(files):
    ev = pd.read_parquet(files / "ev.parquet")
    ref = build_features(EventLog.from_pandas(ev, errors="quarantine"), FeatureSpec())
    fm = load_features(files / "fm.parquet")
    assert fm.feature_names == ref.feature_names
    assert np.array_equal(fm.users, ref.users)
    assert (fm.X != ref.X).nnz == 0 and fm.X.nnz == ref.X.nnz
    assert np.array_equal(fm.nan_absent, ref.nan_absent)
    assert fm.as_of == ref.as_of and fm.spec == ref.spec and fm.n_events == ref.n_events


def test_features_options_and_config(files, tmp_path, capsys):
    cfg = tmp_path / "f.toml"
    cfg.write_text('[features]\nwindows = ["1d", "7d"]\nhalf_life = "3d"\n')
    code, out, _ = run(capsys, "features", files / "ev.parquet", "--config", cfg,
                       "--deny-categories", "news", "--out", tmp_path / "f.parquet", "-q")
    assert code == 0
    fm = load_features(tmp_path / "f.parquet")
    assert fm.spec.windows == ("1d", "7d") and fm.spec.half_life == "3d"
    assert not any(":news:" in n for n in fm.feature_names)
    # a flag overrides the config
    code, _, _ = run(capsys, "features", files / "ev.parquet", "--config", cfg, "--windows",
                     "30d", "--out", tmp_path / "g.parquet", "-q")
    assert code == 0 and load_features(tmp_path / "g.parquet").spec.windows == ("30d",)


def test_segment_equals_evaluate_rules(files):
    fm = load_features(files / "fm.parquet")
    ref = SegmentBook.from_segments(fm.users, evaluate_rules(RULES, fm), min_audience=5)
    got = pd.read_parquet(files / "seg.parquet")
    for name in RULES:
        want = set(ref.members(name).tolist())
        assert set(got.loc[got["segment"] == name, "user_id"].tolist()) == want
        assert want  # the fixture's rules select someone
    book = read_memberships(files / "book")
    assert book.names == ref.names and (book.membership != ref.membership).nnz == 0
    assert book.min_audience == 5


def test_segment_rules_from_config(files, tmp_path, capsys):
    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps({"segments": {"rules": RULES, "min_audience": 7}}))
    code, out, _ = run(capsys, "segment", files / "fm.parquet", "--config", cfg, "--out",
                       tmp_path / "s.csv", "-q")
    assert code == 0 and "minimum audience 7" in out
    got = pd.read_csv(tmp_path / "s.csv")
    ref = pd.read_parquet(files / "seg.parquet")
    assert sorted(map(tuple, got.to_numpy().tolist())) == sorted(
        map(tuple, ref.to_numpy().tolist()))


def test_segment_clusters_equal_interest_clusters(files, tmp_path, capsys):
    from bta.segment import InterestClusters

    fm = load_features(files / "fm.parquet")
    ref = SegmentBook.from_segments(
        fm.users, InterestClusters(3, random_state=7).fit(fm).segments(), min_audience=5)
    code, out, _ = run(capsys, "segment", files / "fm.parquet", "--clusters", "3",
                       "--cluster-seed", "7", "--min-audience", "5", "--out",
                       tmp_path / "c.parquet", "-q")
    assert code == 0 and "top categories" in out
    got = pd.read_parquet(tmp_path / "c.parquet")
    assert sorted(set(got["segment"])) == ["interest:0", "interest:1", "interest:2"]
    for name in ref.names:
        assert set(got.loc[got["segment"] == name, "user_id"].tolist()) == \
            set(ref.members(name).tolist())
    # the same from a config, with the rules alongside
    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps({"segments": {"rules": RULES, "clusters": 3, "cluster_seed": 7,
                                            "min_audience": 5}}))
    code, _, _ = run(capsys, "segment", files / "fm.parquet", "--config", cfg, "--out",
                     tmp_path / "both.parquet", "-q")
    both = pd.read_parquet(tmp_path / "both.parquet")
    rules = pd.read_parquet(files / "seg.parquet")
    assert code == 0
    assert sorted(map(tuple, both.to_numpy().tolist())) == sorted(
        map(tuple, pd.concat([rules, got]).to_numpy().tolist()))


def _reference_decisions(engine, req: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in req.itertuples(index=False):
        consent = {"gdpr": 1} if r.gdpr == 1 else None
        rows.append(engine.decide({"user_id": r.user_id, "ts": r.ts, "request_id": r.request_id,
                                   "consent": consent}).as_dict())
    return pd.DataFrame(rows)


@pytest.mark.parametrize("config, requests", [("engine.toml", "req.parquet"),
                                              ("engine_events.toml", "req.csv")])
def test_replay_equals_a_loop_of_decide(files, tmp_path, capsys, config, requests):
    code, out, _ = run(capsys, "replay", files / requests, "--config", files / config,
                       "--out", tmp_path / "dec.parquet", "-q")
    assert code == 0 and "1,500 requests" in out
    got = pd.read_parquet(tmp_path / "dec.parquet")
    req = pd.read_parquet(files / "req.parquet")
    want = _reference_decisions(load_engine(files / config).warmup(), req)
    for col in ("request_id", "arm", "creative_id", "campaign_id", "targeted", "reason",
                "propensity", "price"):
        assert got[col].tolist() == want[col].tolist(), col
    assert got["user_id"].tolist() == [str(u) for u in want["user_id"]]
    got_ms = got["ts"].astype("datetime64[ms, UTC]").astype("int64")
    assert got_ms.tolist() == want["ts"].tolist()
    reasons = set(got["reason"])
    assert {"control", "targeted", "fallback:no_consent", "fallback:opt_out"} <= reasons


def test_evaluate_equals_ab_report(files, tmp_path, capsys):
    from bta.evaluate import ab_report
    from bta.report import summary_table

    assert main(["replay", str(files / "req.parquet"), "--config", str(files / "engine.toml"),
                 "--out", str(tmp_path / "dec.parquet"), "-q"]) == 0
    dec = pd.read_parquet(tmp_path / "dec.parquet")
    rng = np.random.default_rng(1)
    clicks = rng.binomial(1, np.where(dec["targeted"], 0.08, 0.02))
    conv = rng.binomial(clicks, 0.3)
    out = pd.DataFrame({"request_id": dec["request_id"], "clicks": clicks, "conversions": conv,
                        "revenue": conv * 25.0})
    out.to_csv(tmp_path / "out.csv", index=False)
    code, text, _ = run(capsys, "evaluate", tmp_path / "dec.parquet", "--outcomes",
                        tmp_path / "out.csv", "--out", tmp_path / "ab", "--figures")
    assert code == 0
    for label in ("impressions", "clicks", "conversions", "spend", "revenue", "CTR", "CVR",
                  "CPM", "eCPM", "ROAS", "ROI"):
        assert any(line.startswith(label + " ") for line in text.splitlines()), label
    assert "sample ratio check" in text
    ref = summary_table(ab_report(dec, out, control="control"))
    got = pd.read_csv(tmp_path / "ab" / "summary.csv")
    pd.testing.assert_frame_equal(got[ref.columns[:7]], ref[ref.columns[:7]],
                                  check_dtype=False)
    md = (tmp_path / "ab" / "report.md").read_text()
    assert "## Results" in md and "![arms](arms.png)" in md
    for png in ("arms.png", "cumulative_lift.png"):
        assert (tmp_path / "ab" / png).read_bytes()[:8] == PNG_SIGNATURE


# ---- errors: one line, exit 2 -----------------------------------------------------------------
def _bad_files(d: Path) -> dict[str, Path]:
    (d / "garbage.parquet").write_bytes(b"this is not parquet")
    (d / "garbage.csv").write_bytes(b'a,b\n1,"unterminated\n')
    (d / "nocol.csv").write_text("user,time\n1,2\n")
    (d / "bad.toml").write_text("[profiles\nfeatures = 1\n")
    (d / "unknown.toml").write_text('colour = "red"\n')
    (d / "x.txt").write_text("hello")
    return {p.name: p for p in d.iterdir()}


@pytest.mark.parametrize("argv, needle", [
    (["features", "{d}/missing.parquet", "--out", "{d}/o.parquet"], "missing.parquet"),
    (["features", "{d}/garbage.parquet", "--out", "{d}/o.parquet"], "not a readable PARQUET"),
    (["features", "{d}/garbage.csv", "--out", "{d}/o.parquet"], "not a readable CSV"),
    (["features", "{d}/nocol.csv", "--out", "{d}/o.parquet"], "lacks column(s) ['user_id', "),
    (["features", "{d}/x.txt", "--out", "{d}/o.parquet"], "unknown file type"),
    (["features", "{files}/ev.parquet", "--windows", "7x", "--out", "{d}/o.parquet"],
     "windows"),
    (["features", "{files}/ev.parquet", "--config", "{d}/bad.toml", "--out", "{d}/o.parquet"],
     "is not valid TOML"),
    (["segment", "{d}/missing.parquet", "--rule", "a=x > 1", "--out", "{d}/s.parquet"],
     "missing.parquet"),
    (["segment", "{files}/fm.parquet", "--rule", "a=nosuchfeature > 1", "--out",
      "{d}/s.parquet"], "nosuchfeature"),
    (["segment", "{files}/fm.parquet", "--rule", "a=(1 >", "--out", "{d}/s.parquet"], "a"),
    (["segment", "{files}/fm.parquet", "--rule", "noequals", "--out", "{d}/s.parquet"],
     "NAME=EXPRESSION"),
    (["segment", "{files}/fm.parquet", "--out", "{d}/s.parquet"], "no segment rules"),
    (["segment", "{files}/fm.parquet", "--clusters", "0", "--out", "{d}/s.parquet"],
     "clusters (--clusters or [segments] clusters) must be an integer >= 1, got 0"),
    (["segment", "{files}/fm.parquet", "--clusters", "2", "--cluster-seed", "-1", "--out",
      "{d}/s.parquet"], "cluster_seed (--cluster-seed"),
    (["segment", "{files}/fm.parquet", "--rule", "a=x > 1", "--cluster-seed", "3", "--out",
      "{d}/s.parquet"], "is given without clusters"),
    (["segment", "{files}/fm.parquet", "--rule", "interest:1=x > 1", "--clusters", "2",
      "--out", "{d}/s.parquet"], "rule name 'interest:1' is taken by the clusters"),
    (["segment", "{files}/fm.parquet", "--clusters", "100000", "--out", "{d}/s.parquet"],
     "--clusters 100000: n_clusters must be at most"),
    (["segment", "{files}/ev.parquet", "--rule", "a=x > 1", "--out", "{d}/s.parquet"],
     "lacks column(s) ['feature']"),
    (["replay", "{files}/req.parquet", "--config", "{d}/missing.toml", "--out",
      "{d}/r.parquet"], "missing.toml"),
    (["replay", "{files}/req.parquet", "--config", "{d}/bad.toml", "--out", "{d}/r.parquet"],
     "is not valid TOML"),
    (["replay", "{files}/req.parquet", "--config", "{d}/unknown.toml", "--out",
      "{d}/r.parquet"], "unknown key(s) ['colour']"),
    (["replay", "{d}/nocol.csv", "--config", "{files}/engine.toml", "--out", "{d}/r.parquet"],
     "lacks column(s) ['user_id']"),
    (["replay", "{d}/garbage.parquet", "--config", "{files}/engine.toml", "--out",
      "{d}/r.parquet"], "not a readable PARQUET"),
    (["evaluate", "{d}/missing.csv"], "missing.csv"),
    (["evaluate", "{d}/nocol.csv"], "lacks column(s) ['arm', 'user_id']"),
    (["evaluate", "{d}/garbage.csv"], "not a readable CSV"),
    (["evaluate", "{files}/req.parquet"], "lacks column(s) ['arm']"),
    (["simulate", "--users", "0", "--out", "{d}/e.parquet"], "--users must be > 0"),
    (["simulate", "--users", "5", "--out", "{d}/e.json"], "unknown file type"),
    (["demo", "--days", "5", "--train-days", "5", "--out", "{d}/r"], "--train-days"),
])
def test_bad_input_is_one_line_exit_2(files, tmp_path, capsys, argv, needle):
    _bad_files(tmp_path)
    argv = [a.format(d=tmp_path, files=files) for a in argv]
    code, out, err = run(capsys, *argv, "-q")
    assert code == 2
    line = one_line_error(err)
    assert line.startswith(f"bta: error: {argv[0]}: ")
    assert needle in line


def test_evaluate_unknown_control_and_missing_join_column(files, tmp_path, capsys):
    dec = tmp_path / "d.csv"
    pd.DataFrame({"arm": ["a", "b"], "user_id": [1, 2]}).to_csv(dec, index=False)
    code, _, err = run(capsys, "evaluate", dec)
    assert code == 2 and "--control 'control' is not an arm" in one_line_error(err)
    code, _, err = run(capsys, "evaluate", dec, "--control", "a", "--outcomes",
                       files / "req.csv")
    assert code == 2 and "lacks column 'request_id'" in one_line_error(err)


@pytest.mark.parametrize("cfg, needle", [
    ({}, "[profiles] is required"),
    ({"profiles": {"features": "fm.parquet", "events": "ev.parquet"}}, "exactly one of"),
    ({"profiles": {"features": "fm.parquet"}}, "[fallback] is required"),
    ({"profiles": {"features": "fm.parquet"}, "fallback": {"id": "h"}}, "creatives must be"),
    ({"profiles": {"features": "fm.parquet"}, "fallback": {"id": "h", "creatives": [{}]}},
     "each creative needs an id"),
    ({"profiles": {"features": "fm.parquet"}, "policy": "best",
      "fallback": {"id": "h", "creatives": [{"id": "h"}]}}, "policy must be one of"),
    ({"profiles": {"features": "fm.parquet"}, "policy": {"name": "softmax", "heat": 2},
      "fallback": {"id": "h", "creatives": [{"id": "h"}]}}, "does not take ['heat']"),
    ({"profiles": {"features": "fm.parquet"}, "fallback": {"id": "h", "creatives": [{"id": "h"}]},
      "campaigns": [{"id": "c", "creatives": [{"id": "c1"}], "bid": -1}]}, "bid must be"),
    ({"profiles": {"features": "fm.parquet"}, "fallback": {"id": "h", "creatives": [{"id": "h"}]},
      "campaigns": [{"id": "c", "creatives": [{"id": "c1"}], "colour": 1}]}, "['colour']"),
    ({"profiles": {"features": "fm.parquet"}, "fallback": {"id": "h", "creatives": [{"id": "h"}]},
      "campaigns": [{"id": "c", "creatives": [{"id": "c1"}], "targeting": "segment(\"x\")"}]},
     "segment 'x'"),
    ({"profiles": {"features": "fm.parquet"}, "fallback": {"id": "h", "creatives": [{"id": "h"}]},
      "experiment": {"arms": {"control": -1.0, "targeted": 2.0}}},
     "[experiment]: arm weights must be"),
])
def test_engine_config_errors(files, cfg, needle):
    with pytest.raises(ConfigError) as e:
        engine_from_config(cfg, files)
    assert needle in str(e.value)


def test_feature_spec_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['window'\]"):
        feature_spec({"window": ["1d"]})
    with pytest.raises(ConfigError, match="windows"):
        feature_spec({"windows": []})


def test_unexpected_errors_are_one_line_exit_1(monkeypatch, capsys, tmp_path):
    import bta.sim

    def boom(**kwargs):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(bta.sim, "simulate_clickstream", boom)
    code, _, err = run(capsys, "simulate", "--out", tmp_path / "e.parquet")
    assert code == 1
    assert "unexpected RuntimeError: kaboom second line" in one_line_error(err)
    with pytest.raises(RuntimeError, match="kaboom"):
        main(["--traceback", "simulate", "--out", str(tmp_path / "e.parquet")])


@pytest.mark.parametrize("command", ["demo", "simulate", "features", "segment", "replay",
                                     "evaluate"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: bta {command}" in capsys.readouterr().out


def test_python_dash_m_is_the_same_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bta", "evaluate", str(tmp_path / "no.csv")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"bta: error: evaluate: decision log {str(tmp_path / 'no.csv')!r} does not exist"]
    out = subprocess.run([sys.executable, "-m", "bta", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "replay" in out.stdout and "evaluate" in out.stdout


# ---- files and stores -------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(n_users=st.integers(1, 12), n_feat=st.integers(1, 6), density=st.floats(0, 1),
       str_ids=st.booleans(), seed=st.integers(0, 2**16), csv=st.booleans())
def test_feature_file_round_trip(tmp_path_factory, n_users, n_feat, density, str_ids, seed,
                                 csv):
    rng = np.random.default_rng(seed)
    names = tuple(f"count:page_view:c{j}:7d" for j in range(n_feat - 1)) + ("recency:x:y",)
    X = sp.csr_matrix(sp.random(n_users, n_feat, density=density, random_state=seed))
    X.data = np.round(X.data * 10, 3)
    X.data[rng.random(X.data.size) < 0.2] = 0.0  # explicit zeros survive (recency of 0 days)
    users = np.array([f"u{i}" for i in range(n_users)] if str_ids else
                     np.arange(n_users, dtype=np.int64) * 7 + 3, dtype=object if str_ids
                     else np.int64)
    fm = FeatureMatrix(X=X, feature_names=names, users=users,
                       as_of=pd.Timestamp("2026-02-01", tz="UTC"), spec=FeatureSpec(),
                       nan_absent=np.array([False] * (n_feat - 1) + [True]), n_events=5)
    path = tmp_path_factory.mktemp("rt") / ("f.csv" if csv else "f.parquet")
    save_features(fm, path)
    back = load_features(path)
    if csv:  # no layout metadata: users and features without entries are not in the file
        for u in back.users.tolist():
            assert back.row(u) == fm.row(u)
        return
    assert back.feature_names == names and np.array_equal(back.nan_absent, fm.nan_absent)
    assert back.users.tolist() == users.tolist() and back.as_of == fm.as_of
    assert (back.X != fm.X).nnz == 0 and back.X.nnz == fm.X.nnz


def test_feature_matrix_store_serves_the_rows(files):
    fm = load_features(files / "fm.parquet")
    book = read_memberships(files / "seg.parquet", min_audience=5)
    store = FeatureMatrixStore(fm, book)
    for u in fm.users[:50].tolist():
        p = store.get(u, 0)
        assert {fm.feature_names[j]: v for j, v in zip(p.indices, p.values)} == fm.row(u)
        assert [n for n, f in zip(store.segment_names, p.segments) if f] == \
            sorted(book.segments_of(u), key=store.segment_names.index)
    assert store.get("nobody", 0) is None
    u = fm.users[0].item()
    assert store.erase(u) and store.get(u, 0) is None


def test_read_table_errors(tmp_path):
    from bta.config import read_table

    _bad_files(tmp_path)
    with pytest.raises(SchemaError, match="lacks column"):
        read_table(tmp_path / "nocol.csv", required=("user_id",))
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "nope.parquet")


# ---- progress -------------------------------------------------------------------------------
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal():
    plain = io.StringIO()
    p = Progress(plain).start("step")
    p.bar(3, 10)
    p.done("(note)")
    assert plain.getvalue().count("\n") == 1 and "#" not in plain.getvalue()
    assert plain.getvalue().lstrip("\r").startswith("  step (note)")
    tty = _Tty()
    p = Progress(tty).start("step")
    p.bar(5, 10)
    assert "[############            ] 5/10" in tty.getvalue()
    quiet = io.StringIO()
    Progress(quiet, quiet=True).start("x").done()
    assert quiet.getvalue() == ""


# ---- the demo ---------------------------------------------------------------------------------
def test_demo_small(tmp_path, capsys):
    from matplotlib.image import imread

    out = tmp_path / "report"
    code, text, err = run(capsys, "demo", "--users", "2500", "--days", "10", "--train-days",
                          "5", "--seed", "1", "--out", out)
    assert code == 0, err
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("metric"))
    assert "control" in header and "targeted" in header and "lift targeted vs control" in header
    for label in ("impressions", "clicks", "conversions", "spend", "revenue", "CTR", "CVR",
                  "CPM", "eCPM", "ROAS", "ROI"):
        row = next(ln for ln in lines if ln.startswith(label + " "))
        if label in ("CTR", "CPM"):  # defined at any size: value, interval, lift interval
            assert row.count("[") == 3 and "%" in row, row
        elif label.isupper() or label == "eCPM":  # few conversions: a lift, or why none
            assert row.count("[") == 3 or "n/a (" in row, row
    assert "sample ratio check" in text and "flagged as bots" in text
    assert "simulate the world" in err and "serve the experiment" in err
    for name in ("report.md", "summary.csv", "arms.csv", "lifts.csv", "srm.csv", "daily.csv",
                 "segments.csv", "yan.csv"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    for png in ("arms.png", "cumulative_lift.png", "segment_sizes.png", "yan.png"):
        assert f"({png})" in md
        raw = (out / png).read_bytes()
        assert raw[:8] == PNG_SIGNATURE
        img = imread(out / png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    summary = pd.read_csv(out / "summary.csv")
    assert summary["metric"].tolist() == ["impressions", "clicks", "conversions", "spend",
                                          "revenue", "ctr", "cvr", "cpm", "ecpm", "roas", "roi"]
    assert (summary.loc[summary["metric"] == "impressions", ["control", "targeted"]]
            .to_numpy() > 0).all()
    assert "Yan et al." in md and "## Segments" in md


def test_yan_table_counts_the_historys_human_ad_events():
    from bta.report import yan_table
    from bta.sim import WorldConfig, build_targeting, make_world

    world = make_world(WorldConfig(n_users=1500, days=6, seed=3))
    t = build_targeting(world, train_days=3, min_audience=20)
    table = yan_table(t)
    # naive: the training days' events, bots (as the history flagged them) left out
    ev = world.events(0, 3)
    bots = set(t.history.users[t.history.flagged].tolist())
    ev = ev[~ev["user_id"].isin(bots)]
    # sensitive categories (health) are removed at ingestion and never enter the history
    assert "health" in set(ev["category"]) and "health" not in set(t.history.categories)
    ev = ev[ev["category"].isin(t.history.categories)]
    imp = ev[ev["event"] == "ad_impression"].groupby("category", observed=True).size()
    clk = ev[ev["event"] == "ad_click"].groupby("category", observed=True).size()
    per_ad = table.groupby("ad_id").first()
    assert set(per_ad.index) == set(imp[imp > 0].index.astype(str))
    for cat, row in per_ad.iterrows():
        assert row["ad_impressions"] == imp[cat]
        assert row["ad_clicks"] == clk.get(cat, 0)
    # a segment's impressions of an ad are its members' impressions of that category
    seg = t.book.names[0]
    members = set(t.book.members(seg).tolist())
    mine = ev[(ev["event"] == "ad_impression") & ev["user_id"].isin(members)]
    want = mine.groupby("category", observed=True).size()
    got = table[table["segment"] == seg].set_index("ad_id")["impressions"]
    for cat, n in got.items():
        assert n == want.get(cat, 0)


@pytest.mark.parametrize("requests", ["req.csv", "req.parquet"])
def test_text_opt_outs_protect_integer_users(files, tmp_path, capsys, requests):
    """TOML opt-outs written as text ("92") protect users whose ids the request log holds as
    integers or as text: ids compare in one canonical form (bta.ids)."""
    text = (files / "engine.toml").read_text()
    opt_out = int(text.split("opt_outs = [")[1].split("]")[0])
    req = pd.read_parquet(files / "req.parquet")
    other = next(int(u) for u in req["user_id"] if int(u) != opt_out)
    cfg = tmp_path / "engine.toml"
    cfg.write_text(text.replace(f"opt_outs = [{opt_out}]",
                                f'opt_outs = ["{opt_out}", "{other}"]'))
    for name in ("fm.parquet", "seg.parquet"):
        (tmp_path / name).write_bytes((files / name).read_bytes())
    code, _, _ = run(capsys, "replay", files / requests, "--config", cfg,
                     "--out", tmp_path / "dec.parquet", "-q")
    assert code == 0
    got = pd.read_parquet(tmp_path / "dec.parquet")
    mine = got["user_id"].astype(str).isin([str(opt_out), str(other)])
    assert mine.any()
    assert not got.loc[mine, "targeted"].any()
    assert set(got.loc[mine & (got["arm"] == "targeted"), "reason"]) <= {"fallback:opt_out"}


# ---- CSV ids are text; the demo's history follows --days -----------------------------------
@settings(max_examples=15, deadline=None)
@given(ids=st.lists(st.from_regex(r"0{0,2}[0-9]{1,3}", fullmatch=True), min_size=1, max_size=8),
       letter=st.booleans())
def test_csv_ids_stay_text_through_the_command(tmp_path_factory, ids, letter):
    """"001" and "1" are two users (and two categories), whatever the other rows hold."""
    d = tmp_path_factory.mktemp("ids")
    ids = ids + (["x1"] if letter else [])
    df = pd.DataFrame({"user_id": ids, "ts": [f"2026-01-01T00:0{i % 10}:00" for i in
                                              range(len(ids))],
                       "event": "page_view", "category": ids})
    df.to_csv(d / "e.csv", index=False)
    assert main(["features", str(d / "e.csv"), "--out", str(d / "f.parquet"), "-q"]) == 0
    fm = load_features(d / "f.parquet")
    assert sorted(fm.users.tolist()) == sorted(set(ids))
    cats = {n.split(":")[2] for n in fm.feature_names if n.startswith("count:page_view:")}
    assert cats == set(ids)


def test_demo_train_days_follow_days(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--users", "400", "--days", "7", "-q", "--out",
                         tmp_path / "r")
    assert code == 0, err
    assert "7 days (3 of history, 4 of experiment)" in out.splitlines()[0]
    code, _, err = run(capsys, "demo", "--days", "1", "-q", "--out", tmp_path / "r1")
    assert code == 2
    assert one_line_error(err) == ("bta: error: demo: --days must be at least 2 (a day of "
                                   "history, one of experiment), got 1")


def test_version(capsys):
    import bta

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"bta {bta.__version__}\n"

"""The ``bta`` command: the library's functions for people who want results without code.

==================  ==============================================================================
``bta demo``        the whole pipeline on a simulated ad world: a targeted-vs-untargeted A/B test
``bta simulate``    a simulated clickstream -> events file
``bta features``    events file -> feature file
``bta segment``     feature file + rules or interest clusters -> segment memberships
``bta replay``      request log -> decisions through an Engine config
``bta evaluate``    decision log (+ outcomes) -> A/B report
==================  ==============================================================================

Files are Parquet (``.parquet``/``.pq``) or CSV (``.csv``), told apart by extension;
configuration is TOML or JSON (:mod:`bta.config`). Only this module prints (progress goes to
stderr, results to stdout). Errors the user can fix (a bad path, a malformed file, a missing
column, a bad config) are reported in one line ``bta: error: ...`` with exit status 2, never
as a traceback; an unexpected failure is one line with exit status 1 (``--traceback`` shows it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from bta import __version__
from bta.errors import BtaError, ConfigError, SchemaError

__all__ = ["main", "Progress"]

#: Exit status of errors in the user's input (files, columns, configs), as argparse uses.
EXIT_USAGE = 2
#: Exit status of an unexpected failure.
EXIT_INTERNAL = 1


class Progress:
    """Text progress on a stream (stderr): timed steps and a bar for counted work.

    Bars redraw in place only on a terminal; elsewhere (logs, CI) each step prints one line
    when it ends, so captured output stays readable.
    """

    def __init__(self, stream: Any = None, quiet: bool = False):
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._label = ""
        self._t0 = 0.0

    def start(self, label: str) -> "Progress":
        self._label, self._t0 = label, time.perf_counter()
        if self.tty and not self.quiet:
            self.stream.write(f"  {label} ...")
            self.stream.flush()
        return self

    def bar(self, done: int, total: int) -> None:
        """Redraw ``[#####     ] done/total`` after the current step's label (terminals only)."""
        if not self.tty or self.quiet or total <= 0:
            return
        width = 24
        fill = int(width * min(done, total) / total)
        self.stream.write(f"\r  {self._label} [{'#' * fill}{' ' * (width - fill)}] "
                          f"{done}/{total}")
        self.stream.flush()

    def done(self, note: str = "") -> float:
        """End the step: one line with its time; returns the seconds it took."""
        secs = time.perf_counter() - self._t0
        if not self.quiet:
            text = f"  {self._label}{' ' + note if note else ''}"
            self.stream.write(f"\r{text:<72} {secs:7.2f} s\n")
            self.stream.flush()
        return secs


def _out(text: str = "") -> None:
    print(text, flush=True)


# ---- simulate ---------------------------------------------------------------------------------
def _simulate(args: argparse.Namespace) -> int:
    from bta.config import write_table
    from bta.sim import simulate_clickstream

    _check_positive(args, "users", "days", "categories")
    p = Progress(quiet=args.quiet).start("simulate clickstream")
    cs = simulate_clickstream(n_users=args.users, days=args.days, n_categories=args.categories,
                              seed=args.seed, start=args.start)
    p.done(f"({len(cs.events):,} events)")
    events = cs.events.drop(columns=["session_id"]) if args.no_sessions else cs.events
    write_table(events, args.out, "events output")
    _out(f"wrote {len(events):,} events of {args.users:,} users over {args.days} days to "
         f"{args.out}")
    if args.truth:
        write_table(cs.users, args.truth, "truth output")
        _out(f"wrote the users' ground truth (group, is_bot, activity) to {args.truth}")
    return 0


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        v = getattr(args, n)
        if v is None or v <= 0:
            raise ConfigError(f"--{n} must be > 0, got {v}")


# ---- features ---------------------------------------------------------------------------------
def _read_events(path: str, quiet: bool):
    from bta.config import read_table
    from bta.events import EventLog

    p = Progress(quiet=quiet).start("read and validate events")
    df = read_table(path, "events file", required=("user_id", "ts", "event"))
    if str(path).lower().endswith((".csv", ".csv.gz")):
        df = _ids_as_text(df, path)
    log = EventLog.from_pandas(df, errors="quarantine")
    p.done(f"({log.n_rows:,} rows)")
    return df, log


def _ids_as_text(df: Any, path: str, columns: tuple[str, ...] | None = None) -> Any:
    """The CSV's id columns as the text the file holds.

    A CSV reader that infers types turns a column of digits into numbers: ``"001"`` and
    ``"1"`` become one user 1, unless some other row holds a letter, when all stay text. An
    id's identity must not depend on the other rows, so the id columns that came back as
    anything but text are read again as text (the file has just parsed, so this cannot fail).
    """
    import pandas as pd

    from bta.events import ID_COLUMNS

    again = [c for c in (ID_COLUMNS if columns is None else columns) if c in df.columns
             and not (pd.api.types.is_string_dtype(df[c].dtype) or df[c].dtype == object)]
    if again:
        df = df.assign(**pd.read_csv(path, usecols=again, dtype=str))
    return df


def _features(args: argparse.Namespace) -> int:
    from bta.config import feature_spec, load_config, save_features
    from bta.features import build_features

    options = load_config(args.config).get("features", {}) if args.config else {}
    if not isinstance(options, dict):
        raise ConfigError(f"config {args.config!r}: [features] must be a table")
    options = dict(options)
    for flag, key, split in (("windows", "windows", True), ("half_life", "half_life", False),
                             ("categories", "categories", True),
                             ("deny_categories", "deny_categories", True)):
        v = getattr(args, flag)
        if v is not None:
            options[key] = tuple(s.strip() for s in v.split(",") if s.strip()) if split else v
    spec = feature_spec(options, f"config {args.config}: [features]" if args.config
                        else "feature options")
    _, log = _read_events(args.events, args.quiet)
    p = Progress(quiet=args.quiet).start("build features")
    fm = build_features(log, spec, as_of=args.as_of)
    p.done()
    save_features(fm, args.out)
    s = log.summary()
    _out(f"events: {s['rows_in']:,} rows, {s['rows_accepted']:,} accepted, "
         f"{s['rows_quarantined']:,} quarantined, {s.get('rows_removed', 0):,} removed by the "
         f"privacy policy; {int(log.flagged.sum()):,} users flagged as bots")
    _out(f"features: {fm.n_users:,} users x {fm.n_features:,} features "
         f"({fm.X.nnz:,} stored values) as of {fm.as_of}")
    _out(f"wrote {args.out}")
    return 0


# ---- segment ----------------------------------------------------------------------------------
def _segment(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from bta.config import load_config, load_features, segments_config, write_table
    from bta.segment import DEFAULT_MIN_AUDIENCE, InterestClusters, SegmentBook, evaluate_rules

    rules: dict[str, str] = {}
    min_audience = DEFAULT_MIN_AUDIENCE
    clusters, seed = None, None
    if args.config:
        cfg = segments_config(load_config(args.config), f"config {args.config!r}")
        rules.update(cfg["rules"])
        min_audience = cfg.get("min_audience", min_audience)
        clusters = cfg.get("clusters", clusters)
        seed = cfg.get("cluster_seed", seed)
    for r in args.rule or ():
        name, sep, expr = r.partition("=")
        if not sep or not name.strip() or not expr.strip():
            raise ConfigError(f"--rule must look like NAME=EXPRESSION, got {r!r}")
        rules[name.strip()] = expr.strip()
    if args.min_audience is not None:
        min_audience = args.min_audience
    if args.clusters is not None:
        clusters = args.clusters
    if args.cluster_seed is not None:
        seed = args.cluster_seed
    if not rules and clusters is None:
        raise ConfigError("no segment rules or clusters: give --rule NAME=EXPRESSION, "
                          "--clusters K, or a config with [segments.rules] or clusters")
    # checked before the (possibly long) feature read
    for what, v, low in (("clusters", clusters, 1), ("cluster_seed", seed, 0)):
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= low):
            raise ConfigError(f"{what} (--{what.replace('_', '-')} or [segments] {what}) "
                              f"must be an integer >= {low}, got {v!r}")
    if seed is not None and clusters is None:
        raise ConfigError("cluster_seed (--cluster-seed or [segments] cluster_seed) is given "
                          "without clusters")
    model = None
    if clusters is not None:
        clash = sorted(n for n in rules if n.startswith("interest:"))
        if clash:
            raise ConfigError(f"rule name {clash[0]!r} is taken by the clusters' segments "
                              f"(interest:0 .. interest:{clusters - 1}); rename the rule")
        model = InterestClusters(clusters, random_state=0 if seed is None else seed)
    fm = load_features(args.features)
    segs = []
    if rules:
        p = Progress(quiet=args.quiet).start(f"evaluate {len(rules)} rule(s)")
        segs += evaluate_rules(rules, fm)
        p.done()
    if model is not None:
        p = Progress(quiet=args.quiet).start(f"fit {clusters} interest cluster(s)")
        try:
            segs += model.fit(fm).segments()
        except ConfigError as exc:  # e.g. more clusters than users with interests
            raise ConfigError(f"--clusters {clusters}: {exc}") from None
        p.done()
    book = SegmentBook.from_segments(fm.users, segs, min_audience=min_audience)
    M = book.membership.tocoo()
    long = pd.DataFrame({"user_id": book.users[M.row],
                         "segment": np.asarray(book.names, dtype=object)[M.col]})
    write_table(long, args.out, "segments output")
    if args.book:
        book.save(args.book)
    _out(f"{book.n_users:,} users, {book.n_segments} segment(s), minimum audience "
         f"{book.min_audience:,}")
    sizes = pd.DataFrame({"segment": list(book.names), "members": book.sizes.to_numpy(),
                          "activatable": book.activatable.to_numpy()})
    sizes["share"] = sizes["members"] / max(book.n_users, 1)
    if model is not None:  # what each cluster is about
        top = {f"interest:{j}": ", ".join(t) for j, t in enumerate(model.top_categories_)}
        sizes["top categories"] = sizes["segment"].map(top).fillna("")
    _out(_text_table(sizes, {"share": "{:.2%}"}))
    _out(f"wrote {args.out}" + (f" and the book to {args.book}" if args.book else ""))
    return 0


# ---- replay -----------------------------------------------------------------------------------
_CONSENT_COLUMNS = ("opt_out", "age", "gdpr", "tcf", "coppa")


def _replay(args: argparse.Namespace) -> int:
    import pandas as pd

    from bta.config import load_engine, read_table, write_table

    req = read_table(args.requests, "request log", required=("user_id",))
    if str(args.requests).lower().endswith((".csv", ".csv.gz")):
        # "001" and "1" are two users, whatever the other rows hold (see _ids_as_text)
        req = _ids_as_text(req, args.requests, ("user_id", "request_id"))
    if "ts" in req.columns:
        ts = req["ts"]
        if not (pd.api.types.is_datetime64_any_dtype(ts) or pd.api.types.is_integer_dtype(ts)):
            try:
                req["ts"] = pd.to_datetime(ts, utc=True)
            except (ValueError, TypeError):
                raise SchemaError(f"request log {args.requests!r}: column 'ts' must hold times "
                                  f"(datetimes or epoch milliseconds)") from None
    consent_cols = [c for c in _CONSENT_COLUMNS if c in req.columns]
    p = Progress(quiet=args.quiet).start("build the Engine")
    engine = load_engine(args.config).warmup()
    p.done(f"({len(engine.campaigns)} campaigns)")
    n = len(req)
    p = Progress(quiet=args.quiet).start(f"decide {n:,} requests")
    # one frame of requests through the Engine's replay (equal to a loop of decide)
    frame = pd.DataFrame({"user_id": req["user_id"]})
    if "ts" in req.columns:
        frame["ts"] = req["ts"]
    frame["request_id"] = (req["request_id"].astype(str) if "request_id" in req.columns
                           else [f"req-{i}" for i in range(n)])
    if consent_cols:
        frame["consent"] = [{k: v for k, v in c.items() if not _missing(v)}
                            for c in req[consent_cols].to_dict("records")]
    dec = engine.decide_batch(frame)
    p.done()
    write_table(dec, args.out, "decisions output")
    counts = dec.groupby(["arm", "reason"]).size().rename("decisions").reset_index()
    _out(f"{n:,} requests through {len(engine.campaigns)} campaigns "
         f"(policy version {engine.version})")
    _out(_text_table(counts))
    _out(f"wrote {args.out}")
    return 0


def _missing(v: Any) -> bool:
    try:
        return v is None or v != v  # NaN from a CSV's empty cell
    except Exception:  # noqa: BLE001 - an unusual value is kept and judged by the gate
        return False


# ---- evaluate ---------------------------------------------------------------------------------
def _evaluate(args: argparse.Namespace) -> int:
    from bta.config import read_table
    from bta.evaluate import ab_report
    from bta.report import print_tables, write_ab_files

    log = read_table(args.log, "decision log", required=("arm", "user_id"))
    outcomes = None
    if args.outcomes:
        outcomes = read_table(args.outcomes, "outcomes file", required=("request_id",))
        if "request_id" not in log.columns:
            raise SchemaError(f"decision log {args.log!r} lacks column 'request_id', needed to "
                              f"join the outcomes")
    if args.control not in set(log["arm"].astype(str)):
        raise ConfigError(f"--control {args.control!r} is not an arm of {args.log!r}; its arms "
                          f"are {sorted(set(log['arm'].astype(str)))}")
    report = ab_report(log, outcomes, control=args.control, cost=args.cost, alpha=args.alpha,
                       sequential=args.sequential, bootstrap=args.bootstrap,
                       random_state=args.seed)
    print_tables(report, _out)
    if args.out:
        files = write_ab_files(report, args.out, figures=args.figures)
        _out(f"wrote {', '.join(str(f) for f in files)}")
    return 0


# ---- demo -------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    from bta.report import demo_report, print_tables
    from bta.sim import WorldConfig, build_targeting, make_world, run_experiment

    _check_positive(args, "users", "days")
    if args.days < 2:
        raise ConfigError(f"--days must be at least 2 (a day of history, one of experiment), "
                          f"got {args.days}")
    # the default follows --days: two weeks of history, or half the days of a shorter world
    train_days = min(14, args.days // 2) if args.train_days is None else args.train_days
    if not 1 <= train_days < args.days:
        raise ConfigError(f"--train-days must be between 1 and --days - 1 = {args.days - 1}, "
                          f"got {train_days}")
    args.train_days = train_days  # the report lists the value used
    cfg = WorldConfig(n_users=args.users, days=args.days, seed=args.seed,
                      informative=not args.null)
    kind = "null world: behavior says nothing about response" if args.null else "default world"
    _out(f"bta demo: {args.users:,} users, {args.days} days ({train_days} of history, "
         f"{args.days - train_days} of experiment), {cfg.n_campaigns} campaigns, seed "
         f"{args.seed}, {kind}")
    t_all = time.perf_counter()
    prog = Progress(quiet=args.quiet)
    prog.start("simulate the world")
    world = make_world(cfg)
    prog.done(f"({len(world.clickstream.events):,} events)")
    prog.start("history -> features -> segments -> Engine")
    t = build_targeting(world, train_days=train_days)
    prog.done(f"({t.book.n_segments} segments, {len(t.campaigns)} campaigns)")
    prog.start("serve the experiment")
    res = run_experiment(world, t.engine, days=args.days - train_days, progress=prog.bar)
    prog.done(f"({len(res.log):,} ad requests)")
    prog.start("A/B report")
    report = res.report(alpha=args.alpha)
    prog.done()

    log = t.history
    s = log.summary()
    planted = set(world.clickstream.users.loc[world.is_bot, "user_id"].tolist())
    flagged = set(log.users[log.flagged].tolist())
    _out("\nHistory")
    _out(f"  events {s['rows_in']:,}: accepted {s['rows_accepted']:,}, quarantined "
         f"{s['rows_quarantined']:,}, removed by the privacy policy {s.get('rows_removed', 0):,}; "
         f"users {log.n_users:,}, flagged as bots {len(flagged):,} (planted {len(planted):,}, "
         f"both {len(flagged & planted):,})")
    _out(f"  features {t.features.n_users:,} users x {t.features.n_features:,}; segments "
         f"{t.book.n_segments} ({int(t.book.activatable.sum())} activatable); bot requests "
         f"filtered in the experiment {res.n_filtered:,}")
    print_tables(report, _out)
    prog.start("write the report")
    files = demo_report(args.out, report, world=world, targeting=t, result=res, args=vars(args))
    prog.done()
    _out(f"\nreport: {Path(args.out) / 'report.md'} ({len(files)} files); total "
         f"{time.perf_counter() - t_all:.1f} s")
    return 0


# ---- helpers ----------------------------------------------------------------------------------
def _text_table(df: Any, formats: dict[str, str] | None = None) -> str:
    """A fixed-width text table of a small DataFrame (numbers right-aligned)."""
    formats = formats or {}
    cols = [str(c) for c in df.columns]
    cells = []
    for _, row in df.iterrows():
        out = []
        for c, v in zip(cols, row.tolist()):
            f = formats.get(c)
            out.append(f.format(v) if f else _fmt(v))
        cells.append(out)
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols)] + [line(r) for r in cells])


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    return str(v)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bta", description="Behavioral ad targeting: events -> features -> segments -> "
                                "Engine -> A/B report. Files are Parquet or CSV (by extension).")
    p.add_argument("--traceback", action="store_true",
                   help="show the traceback of an unexpected error")
    p.add_argument("--version", action="version", version=f"bta {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=description)
        c.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
        return c

    d = command("demo", "the whole pipeline on a simulated ad world",
                "Simulate an ad world, build features, segments and an Engine from the "
                "history, serve a randomized experiment (targeted vs untargeted), print the "
                "A/B table and write a report folder (Markdown, PNG charts, CSV tables).")
    d.add_argument("--users", type=int, default=50_000, help="simulated users (default 50,000)")
    d.add_argument("--days", type=int, default=30, help="simulated days (default 30)")
    d.add_argument("--train-days", type=int, default=None,
                   help="days of history before the experiment (default 14, or half of "
                        "--days when that is less)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--null", action="store_true",
                   help="the null world: behavior carries no information about response")
    d.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    d.add_argument("--out", default="bta-report", help="report folder (default bta-report/)")
    d.set_defaults(func=_demo)

    s = command("simulate", "simulate a clickstream to an events file",
                "Simulate users with latent interests browsing, seeing ads and responding; "
                "write the events (user_id, ts, event, category, value, session_id).")
    s.add_argument("--users", type=int, default=10_000, help="simulated users (default 10,000)")
    s.add_argument("--days", type=float, default=30, help="simulated days (default 30)")
    s.add_argument("--categories", type=int, default=20, help="content categories (default 20)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--start", default="2026-01-01", help="first day, UTC (default 2026-01-01)")
    s.add_argument("--no-sessions", action="store_true", help="leave out the session_id column")
    s.add_argument("--truth", metavar="FILE", help="also write the users' ground truth here")
    s.add_argument("--out", "-o", required=True, metavar="FILE",
                   help="events file (.parquet or .csv)")
    s.set_defaults(func=_simulate)

    f = command("features", "events file -> feature file",
                "Validate events (bad rows quarantined, bots flagged) and build behavioral "
                "features per user: counts over windows, decayed counts, recency, RFM, "
                "sessions, diversity, smoothed CTR. Options override the config's [features].")
    f.add_argument("events", help="events file with user_id, ts, event (category, value)")
    f.add_argument("--out", "-o", required=True, metavar="FILE",
                   help="feature file (.parquet keeps the layout; .csv is a long table)")
    f.add_argument("--config", metavar="FILE", help="TOML/JSON with a [features] table "
                                                    "(FeatureSpec parameters)")
    f.add_argument("--as-of", help="count events at or before this time (default: the last)")
    f.add_argument("--windows", help="comma-separated windows, e.g. 1d,7d,30d")
    f.add_argument("--half-life", help="half-life of decayed counts, e.g. 7d")
    f.add_argument("--categories", help="comma-separated categories to keep (default all)")
    f.add_argument("--deny-categories", help="comma-separated categories to leave out")
    f.set_defaults(func=_features)

    g = command("segment", "feature file + rules or clusters -> segment memberships",
                "Evaluate rule segments and/or fit interest clusters (spherical k-means over "
                "users' category affinity, segments interest:0 .. interest:K-1) over a "
                "feature file, and write the memberships as a long table (user_id, segment). "
                "Rules come from --rule and/or a config's [segments.rules] table; clusters "
                "from --clusters or the config's [segments] clusters.")
    g.add_argument("features", help="feature file written by `bta features`")
    g.add_argument("--rule", action="append", metavar="NAME=EXPR",
                   help='a rule, e.g. autos_fans="count:page_view:autos:7d >= 2" (repeatable)')
    g.add_argument("--config", metavar="FILE", help="TOML/JSON with [segments] rules, "
                                                    "min_audience, clusters, cluster_seed")
    g.add_argument("--clusters", type=int, metavar="K",
                   help="also fit K interest clusters (segments interest:0 .. interest:K-1)")
    g.add_argument("--cluster-seed", type=int, metavar="N",
                   help="seed of the clusters' k-means++ starts (default 0)")
    g.add_argument("--min-audience", type=int, help="smallest activatable segment")
    g.add_argument("--out", "-o", required=True, metavar="FILE", help="memberships file")
    g.add_argument("--book", metavar="DIR", help="also save the SegmentBook to this folder")
    g.set_defaults(func=_segment)

    r = command("replay", "request log -> decision log through an Engine config",
                "Serve every request of a log (user_id; optional ts, request_id and consent "
                "columns opt_out, age, gdpr, tcf, coppa) through the Engine described by a "
                "TOML/JSON config (see bta.config) and write the decision log. Requests over "
                "the config's time_budget_ms fall back as in production; raise it for a replay "
                "that does not depend on the machine's load.")
    r.add_argument("requests", help="request log file")
    r.add_argument("--config", required=True, metavar="FILE", help="Engine config (TOML/JSON)")
    r.add_argument("--out", "-o", required=True, metavar="FILE", help="decision log file")
    r.set_defaults(func=_replay)

    e = command("evaluate", "decision log (+ outcomes) -> A/B report",
                "CTR, CVR, CPM, eCPM, ROAS, ROI per arm and lifts against the control with "
                "intervals, p-values and the sample-ratio check; printed, and written as "
                "Markdown and CSV.")
    e.add_argument("log", help="decision log (arm, user_id; clicks, conversions, revenue, "
                               "price or cost, ts, request_id when available)")
    e.add_argument("--outcomes", metavar="FILE",
                   help="outcomes (request_id, clicks, conversions, revenue) joined by "
                        "request_id")
    e.add_argument("--control", default="control", help="control arm (default control)")
    e.add_argument("--cost", help="column with the price per 1,000 impressions (default: the "
                                  "cost column, else price)")
    e.add_argument("--alpha", type=float, default=0.05, help="significance level")
    e.add_argument("--sequential", action="store_true", help="always-valid sequential tests")
    e.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples (default 0)")
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e.add_argument("--out", "-o", default="bta-evaluation", metavar="DIR",
                   help="folder for report.md and the CSV tables (default bta-evaluation/); "
                        "'' to only print")
    e.add_argument("--figures", action="store_true", help="also write PNG charts")
    e.set_defaults(func=_evaluate)
    return p


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and msg.startswith(("'", '"')) and msg.endswith(("'", '"')):
        msg = msg[1:-1]  # KeyError quotes its message
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        msg = f"{exc.filename}: {exc.strerror}"
    return " ".join(msg.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bta`` command with ``argv`` (default ``sys.argv[1:]``); returns the status."""
    import pandas as pd
    import pyarrow as pa

    args = _parser().parse_args(argv)
    # ImportError: an optional extra is missing (charts need bta[plot]); its message says which
    user_errors = (BtaError, OSError, pa.ArrowException, pd.errors.ParserError,
                   pd.errors.EmptyDataError, UnicodeDecodeError, ImportError)
    try:
        return args.func(args)
    except user_errors as exc:
        print(f"bta: error: {args.command}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"bta: error: {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, unless asked for
        if args.traceback:
            raise
        print(f"bta: error: {args.command}: unexpected {type(exc).__name__}: {_one_line(exc)} "
              f"(rerun with --traceback for details)", file=sys.stderr)
        return EXIT_INTERNAL

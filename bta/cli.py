"""The ``bta`` command: the library's functions for people who want results without code.

Only this module prints. Errors the user can fix (bad arguments, bad files) are reported in one
line with a non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from bta.errors import BtaError

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from bta.events import EventLog
    from bta.features import FeatureSpec, build_features
    from bta.sim import simulate_clickstream

    def step(label: str, t0: float) -> None:
        print(f"  {label:<38} {time.perf_counter() - t0:6.2f} s", flush=True)

    print(f"bta demo: {args.users:,} users, {args.days} days, {args.categories} categories, "
          f"seed {args.seed}")
    t0 = time.perf_counter()
    cs = simulate_clickstream(n_users=args.users, days=args.days, n_categories=args.categories,
                              seed=args.seed)
    step(f"simulate clickstream ({len(cs.events):,} events)", t0)
    t0 = time.perf_counter()
    log = EventLog.from_pandas(cs.events, errors="quarantine")
    step("validate and encode events", t0)
    t0 = time.perf_counter()
    fm = build_features(log, FeatureSpec())
    step("build features (incl. first-run compile)", t0)

    s = log.summary()
    print("\nEvents")
    print(f"  rows in {s['rows_in']:,}   accepted {s['rows_accepted']:,}   "
          f"quarantined {s['rows_quarantined']:,}")
    planted = set(cs.users.loc[cs.users["is_bot"], "user_id"].tolist())
    flagged = set(log.users[log.flagged].tolist())
    print(f"  users {log.n_users:,}   flagged as bots {len(flagged):,} "
          f"(planted bots {len(planted):,}; flagged and planted {len(flagged & planted):,})")
    sessions = log.sessionize()
    print(f"  sessions {sessions.count:,}   mean events/session {sessions.mean_events:.2f}   "
          f"mean duration {sessions.mean_duration_s:.0f} s")
    print("\nFeatures")
    print(f"  {fm.n_users:,} users x {fm.n_features:,} features, {fm.X.nnz:,} stored values "
          f"({fm.X.nnz / max(fm.n_users, 1):.1f} per user), as of {fm.as_of}")
    print(f"  events counted {fm.n_events:,}; bot events excluded {fm.n_flagged_excluded:,}")
    ctr = fm.column("ctr:smoothed")
    ent = fm.column("diversity:entropy")
    print(f"  smoothed CTR: median {_q(ctr, .5):.4f}, 99th pct {_q(ctr, .99):.4f}")
    print(f"  category entropy of page views: median {_q(ent, .5):.2f} nats")
    pv = [n for n in fm.feature_names if n.startswith("count:page_view:") and n.endswith(":30d")]
    totals = sorted(((float(fm.column(n).sum()), n.split(":")[2]) for n in pv), reverse=True)[:5]
    print("  top categories by 30-day page views: "
          + ", ".join(f"{c} ({int(v):,})" for v, c in totals))
    return 0


def _q(x, q: float) -> float:
    import numpy as np

    x = x[~np.isnan(x)]
    return float(np.quantile(x, q)) if x.size else float("nan")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bta", description="Behavioral ad targeting.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="simulate a clickstream and build behavioral features",
                       description="Simulate a clickstream, validate it, build features and "
                                   "print a summary.")
    d.add_argument("--users", type=int, default=50_000, help="simulated users (default 50,000)")
    d.add_argument("--days", type=int, default=30, help="simulated days (default 30)")
    d.add_argument("--categories", type=int, default=20, help="content categories (default 20)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (BtaError, OSError) as exc:
        print(f"bta {args.command}: error: {exc}", file=sys.stderr)
        return 2

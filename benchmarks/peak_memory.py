"""Peak memory of each implementation of the per-(user, category) aggregation.

Each implementation runs once in a fresh subprocess: imports and a warm-up on tiny data first
(numba compiles or loads its cache), then the data is generated, then the baseline is taken, then
the aggregation runs. Reported: peak RSS (``resource.getrusage(...).ru_maxrss``) above the
baseline, as a Markdown table on stdout.

On Linux the peak is reset to the current RSS right before the baseline (``/proc/self/clear_refs``),
so that temporaries of the data generation do not hide a smaller peak of the implementation;
where that is not possible the baseline is the peak so far (column "reset": no).

Usage::

    python benchmarks/peak_memory.py                       # size from BTA_BENCH_EVENTS
    python benchmarks/peak_memory.py --events 20000000 --users 2000000
    python benchmarks/peak_memory.py --impl bta --impl polars
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# The checkout's bta is measured, whether or not a bta is installed.
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

IMPLS = ("bta", "bta (prepared log)", "pandas", "polars", "duckdb")


def _maxrss_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # kilobytes on Linux, bytes on macOS
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5": reset the peak RSS to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _child(impl: str, n_events: int, n_users: int) -> dict:
    from _data import make_events
    from _peers import (bta_event_log, bta_features, duckdb_connect, duckdb_features,
                        page_view_events, pandas_features, polars_features, to_cells)

    con = duckdb_connect() if impl == "duckdb" else None
    runs = {
        "bta": lambda ev, pv, log: bta_features(bta_event_log(ev, pv), ev.as_of),
        "bta (prepared log)": lambda ev, pv, log: bta_features(log, ev.as_of),
        "pandas": lambda ev, pv, log: pandas_features(ev),
        "polars": lambda ev, pv, log: polars_features(ev),
        "duckdb": lambda ev, pv, log: duckdb_features(ev, con),
    }
    run = runs[impl]
    is_bta = impl.startswith("bta")

    def inputs(ev):
        pv = page_view_events(ev.n_events) if is_bta else None
        log = bta_event_log(ev, pv) if impl == "bta (prepared log)" else None
        return pv, log

    tiny = make_events(2_000, 200, seed=1)
    run(tiny, *inputs(tiny))  # imports, numba compile or cache load, first-call setup

    ev = make_events(n_events, n_users)
    pv, log = inputs(ev)
    input_bytes = ev.user.nbytes + ev.ts.nbytes + ev.category.nbytes
    gc.collect()
    reset = _reset_peak()
    base = _maxrss_bytes()
    t0 = time.perf_counter()
    result = run(ev, pv, log)
    seconds = time.perf_counter() - t0
    peak = _maxrss_bytes()
    n_cells = to_cells(result, ev.as_of).n_cells
    return {"impl": impl, "n_events": n_events, "n_users": n_users, "n_cells": n_cells,
            "baseline_mib": base / 2**20, "peak_mib": peak / 2**20,
            "delta_mib": (peak - base) / 2**20, "input_mib": input_bytes / 2**20,
            "seconds": seconds, "reset": reset}


def _table(rows: list[dict]) -> str:
    lines = ["| implementation | cells | peak above baseline (MiB) | baseline (MiB) | "
             "peak (MiB) | seconds | reset |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['n_cells']:,} | {r['delta_mib']:.1f} | "
                     f"{r['baseline_mib']:.1f} | {r['peak_mib']:.1f} | {r['seconds']:.2f} | "
                     f"{'yes' if r['reset'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from _data import bench_size

    default_events, default_users = bench_size()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=default_events)
    ap.add_argument("--users", type=int, default=None,
                    help="default: BTA_BENCH_USERS, or one user per 10 events")
    ap.add_argument("--impl", action="append", choices=IMPLS,
                    help="implementation to measure (repeatable; default: all)")
    ap.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.users is None:
        args.users = default_users if args.events == default_events else max(1, args.events // 10)

    if args.child:
        sys.stdout.write(json.dumps(_child(args.child, args.events, args.users)) + "\n")
        return 0

    rows = []
    for impl in args.impl or IMPLS:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", impl,
             "--events", str(args.events), "--users", str(args.users)],
            capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(f"{impl} failed:\n{proc.stderr}")
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first = rows[0]
    sys.stdout.write(f"Peak RSS above baseline, {first['n_events']:,} events, "
                     f"{first['n_users']:,} users (input arrays {first['input_mib']:.1f} MiB)\n\n")
    sys.stdout.write(_table(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

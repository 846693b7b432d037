"""Reports of an A/B test for people: the per-arm table as text, and report folders.

- :func:`summary_table`: one row per metric (impressions ... ROI), the value and interval of
  every arm, and each treatment arm's relative lift with its interval and p-values.
- :func:`print_tables`: that table, the sample-ratio check and the notes, as fixed-width text.
- :func:`write_ab_files`: ``report.md`` and the tables as CSV (optional PNG charts).
- :func:`demo_report`: the ``bta demo`` folder: the above plus segment sizes and the
  Yan et al. segment CTR table (:func:`bta.segment.yan_analysis`) with their charts.

Charts need matplotlib (``bta[plot]``); they are drawn without pyplot (:mod:`bta._plot`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

__all__ = ["SUMMARY_METRICS", "summary_table", "format_summary", "print_tables",
           "write_ab_files", "yan_table", "demo_report"]

#: Rows of the summary table, in order: totals, then ratio metrics.
SUMMARY_METRICS = ("impressions", "clicks", "conversions", "spend", "revenue", "ctr", "cvr",
                   "cpm", "ecpm", "roas", "roi")
_TOTALS = frozenset({"impressions", "clicks", "conversions", "spend", "revenue"})
_PERCENT = frozenset({"ctr", "cvr", "roi"})
_LABELS = {"ctr": "CTR", "cvr": "CVR", "cpm": "CPM", "ecpm": "eCPM", "roas": "ROAS",
           "roi": "ROI"}


def summary_table(report: Any) -> pd.DataFrame:
    """The per-arm table with lifts, one row per metric of :data:`SUMMARY_METRICS`.

    Columns: ``metric``; per arm ``{arm}``, ``{arm}_ci_low``, ``{arm}_ci_high``; per treatment
    arm ``{arm}_abs_lift``, ``{arm}_abs_ci_low``, ``{arm}_abs_ci_high``, ``{arm}_rel_lift``,
    ``{arm}_rel_ci_low``, ``{arm}_rel_ci_high``, ``{arm}_p_value``,
    ``{arm}_p_adjusted``, ``{arm}_significant``, ``{arm}_status``. Totals have no interval and
    no lift (NaN).
    """
    arms = [a for a in report.stats]
    a = report.arms.set_index(["arm", "metric"])
    lf = report.lifts.set_index(["arm", "metric"]) if len(report.lifts) else None
    rows = []
    for m in SUMMARY_METRICS:
        row: dict[str, Any] = {"metric": m}
        for arm in arms:
            key = (arm, m)
            has = key in a.index
            row[str(arm)] = float(a.loc[key, "value"]) if has else math.nan
            row[f"{arm}_ci_low"] = float(a.loc[key, "ci_low"]) if has else math.nan
            row[f"{arm}_ci_high"] = float(a.loc[key, "ci_high"]) if has else math.nan
        for arm in arms:
            if arm == report.control:
                continue
            hit = lf is not None and (arm, m) in lf.index
            r = lf.loc[(arm, m)] if hit else None
            for col in ("abs_lift", "abs_ci_low", "abs_ci_high", "rel_lift", "rel_ci_low",
                        "rel_ci_high", "p_value", "p_adjusted"):
                row[f"{arm}_{col}"] = float(r[col]) if hit and pd.notna(r[col]) else math.nan
            row[f"{arm}_significant"] = bool(r["significant"]) if hit else False
            row[f"{arm}_status"] = str(r["status"]) if hit else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _value(m: str, v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    if m in ("impressions", "clicks", "conversions"):
        return f"{v:,.0f}"
    if m in _PERCENT:
        return _pct(v)
    return f"{v:,.2f}" if abs(v) >= 1 else f"{v:.4g}"


def _pct(v: float) -> str:
    x = 100 * v
    return f"{x:,.0f}%" if abs(x) >= 100 else f"{x:.3g}%"


def _interval(m: str, lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    if m in _PERCENT:
        return f"[{_pct(lo)}, {_pct(hi)}]"
    return f"[{lo:.3g}, {hi:.3g}]"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "<1e-16" if p < 1e-16 else f"{p:.2g}"


def format_summary(report: Any) -> pd.DataFrame:
    """:func:`summary_table` as display strings (what ``bta`` prints and report.md shows)."""
    t = summary_table(report)
    out = pd.DataFrame({"metric": [_LABELS.get(m, m) for m in t["metric"]]})
    for arm in report.stats:
        out[str(arm)] = [_value(m, v) + (" " + _interval(m, lo, hi) if m not in _TOTALS and
                                         _interval(m, lo, hi) else "")
                         for m, v, lo, hi in zip(t["metric"], t[str(arm)], t[f"{arm}_ci_low"],
                                                 t[f"{arm}_ci_high"])]
    level = f"{100 * (1 - report.alpha):.4g}%"
    for arm in report.stats:
        if arm == report.control:
            continue
        lift, p, padj = [], [], []
        for _, r in t.iterrows():
            if r["metric"] in _TOTALS:
                lift.append(""), p.append(""), padj.append("")
                continue
            # ROI is already a relative quantity near 0: its lift is a difference, in points
            kind = "abs" if r["metric"] == "roi" else "rel"
            if not math.isfinite(r[f"{arm}_{kind}_lift"]):
                # say why there is no lift (e.g. zero_denominator: no conversions in control)
                lift.append(f"n/a ({r[f'{arm}_status'] or 'undefined'})")
                p.append(_p(r[f"{arm}_p_value"])), padj.append(_p(r[f"{arm}_p_adjusted"]))
                continue
            unit = " pp" if kind == "abs" else "%"
            lo, hi = r[f"{arm}_{kind}_ci_low"], r[f"{arm}_{kind}_ci_high"]
            ci = (f" [{100 * lo:+.1f}{unit}, {100 * hi:+.1f}{unit}]"
                  if math.isfinite(lo) and math.isfinite(hi) else "")
            star = " *" if r[f"{arm}_significant"] else ""
            lift.append(f"{100 * r[f'{arm}_{kind}_lift']:+.1f}{unit}{ci}{star}")
            p.append(_p(r[f"{arm}_p_value"]))
            padj.append(_p(r[f"{arm}_p_adjusted"]))
        out[f"lift {arm} vs {report.control} ({level} CI)"] = lift
        out[f"p {arm}"] = p
        out[f"p adj. {arm}"] = padj
    return out


def _fixed(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    cells = [[str(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    first = lambda vals: "  ".join(  # noqa: E731 - first column left, numbers right
        v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([first(cols)] + [first(r) for r in cells])


def _markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _srm_line(report: Any) -> str:
    srm = report.srm
    if not len(srm):
        return "sample ratio check: not available"
    users = ", ".join(f"{a} {n:,}" for a, n in zip(srm["arm"], srm["users"]))
    verdict = "MISMATCH (the split is broken: do not trust the lifts)" if report.srm_alarm \
        else "ok"
    return (f"sample ratio check (users: {users}): chi2 = {srm['chi2'].iloc[0]:.3g}, "
            f"p = {srm['p_value'].iloc[0]:.3g}: {verdict}")


def print_tables(report: Any, out: Callable[[str], Any] = print) -> None:
    """Print the summary table, the test family, the SRM status and the notes via ``out``."""
    out("")
    out(_fixed(format_summary(report)))
    out("")
    out(f"* significant (the family's metrics after correction); lifts are relative, ROI's in "
        f"percentage points (pp); {report.family_statement()}")
    out(_srm_line(report))
    for n in report.notes:
        out(f"note: {n}")


def write_ab_files(report: Any, out_dir: str | os.PathLike, *, figures: bool = False,
                   title: str = "A/B report", intro: tuple[str, ...] = ()) -> list[Path]:
    """Write ``report.md`` and ``summary/arms/lifts/srm/daily.csv`` (and charts) to a folder.

    Returns the paths written. ``figures`` adds ``arms.png`` and ``cumulative_lift.png``.
    """
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    files = []
    for name, df in (("summary", summary_table(report)), ("arms", report.arms),
                     ("lifts", report.lifts), ("srm", report.srm), ("daily", report.daily)):
        p = d / f"{name}.csv"
        df.to_csv(p, index=False)
        files.append(p)
    pngs = report.plot(d) if figures else []
    md = [f"# {title}", "", *intro, "" if intro else "", "## Results", "",
          _markdown(format_summary(report)), "",
          f"\\* significant (the family's metrics after correction); lifts are relative, ROI's "
          f"in percentage points (pp); {report.family_statement()}", "",
          f"- {_srm_line(report)}", *[f"- {n}" for n in report.notes], ""]
    for p in pngs:
        md += [f"![{p.stem}]({p.name})", ""]
    md += ["## Full report", "", report.to_markdown().replace("# A/B report", "### Details", 1)]
    files.append(d / "report.md")
    files[-1].write_text("\n".join(md))
    return files + list(pngs)


def yan_table(targeting: Any) -> pd.DataFrame:
    """Yan et al. (2009) segment CTR table over the history's ads (ad = ad category).

    The history's ads were served without targeting, so each segment's CTR on an ad
    category estimates what targeting that segment alone would have given. Users flagged as
    bots are left out (their clicks are spam).
    """
    from bta.segment import yan_analysis

    h = targeting.history
    ev = h.event_types
    imp, clk = ev.index("ad_impression"), ev.index("ad_click")
    human = ~h.flagged[h.user]
    keep = human & ((h.event == imp) | (h.event == clk)) & (h.category >= 0)
    ev_kept = h.event[keep]
    df = pd.DataFrame({"user": h.user[keep], "cat": h.category[keep],
                       "impressions": (ev_kept == imp).astype(np.int64),
                       "clicks": (ev_kept == clk).astype(np.int64)})
    g = df.groupby(["user", "cat"], sort=True)[["impressions", "clicks"]].sum().reset_index()
    log = pd.DataFrame({"user_id": h.users[g["user"].to_numpy()],
                        "ad_id": np.asarray(h.categories, dtype=object)[g["cat"].to_numpy()],
                        "impressions": g["impressions"].to_numpy(),
                        "clicks": g["clicks"].to_numpy()})
    log = log[log["impressions"] > 0]
    return yan_analysis(log, targeting.book)


def _segment_sizes_png(book: Any, path: Path) -> Path:
    from bta._plot import new_figure

    sizes = book.sizes.sort_values()
    fig = new_figure(7.0, max(3.0, 0.28 * len(sizes) + 1.2), "the segment chart")
    ax = fig.add_subplot()
    colors = ["C0" if s >= book.min_audience else "0.6" for s in sizes.to_numpy()]
    ax.barh(np.arange(len(sizes)), sizes.to_numpy(), color=colors)
    ax.set_yticks(np.arange(len(sizes)), [str(n) for n in sizes.index], fontsize=8)
    ax.axvline(book.min_audience, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel(f"members (dashed: minimum audience {book.min_audience:,}; grey: not "
                  f"activatable)")
    ax.set_title(f"Segment sizes ({book.n_users:,} users with features)")
    fig.savefig(path, format="png", dpi=110)
    return path


def demo_report(out_dir: str | os.PathLike, report: Any, *, world: Any, targeting: Any,
                result: Any, args: Mapping[str, Any] | None = None) -> list[Path]:
    """The ``bta demo`` report folder; returns the files written.

    ``report.md`` (setup, the A/B table, charts, segments, the Yan et al. table, the full
    report), ``arms.png`` (ROAS and CTR per arm with intervals), ``cumulative_lift.png``,
    ``segment_sizes.png``, ``yan.png``, and CSV tables (summary, arms, lifts, srm, daily,
    segments, yan).
    """
    from bta.segment import plot_yan, yan_best

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    cfg = world.config
    book = targeting.book
    seg = book.summary().reset_index(names="segment")
    seg.to_csv(d / "segments.csv", index=False)
    files = [d / "segments.csv", _segment_sizes_png(book, d / "segment_sizes.png")]
    yan = yan_table(targeting)
    yan.to_csv(d / "yan.csv", index=False)
    files.append(d / "yan.csv")
    best = yan_best(yan).merge(yan.loc[yan["best"], ["ad_id", "impressions"]], on="ad_id",
                               how="left")
    if len(best):
        files.append(plot_yan(yan, d / "yan.png"))
    log = result.log
    intro = (
        f"Simulated world: {cfg.n_users:,} users, {cfg.days} days, {cfg.n_campaigns} campaigns "
        f"({cfg.n_run_of_network} untargeted), seed {cfg.seed}, "
        + ("**null world** (behavior carries no information about response)"
           if not cfg.informative else "informative world") + ".",
        "",
        f"History: days 0-{targeting.train_days - 1} ({targeting.history.n_rows:,} events) -> "
        f"features ({targeting.features.n_users:,} users x {targeting.features.n_features:,}) "
        f"-> {book.n_segments} affinity segments ({int(book.activatable.sum())} activatable) "
        f"-> an Engine with {len(targeting.campaigns)} campaigns.",
        "",
        f"Experiment: days {result.days[0]}-{result.days[-1]}, {len(log):,} ad requests, "
        f"users split by hash into {', '.join(map(str, result.expected_weights))}; the control "
        f"arm is served untargeted, the other arm by the Engine's targeting. Spend is the "
        f"market clearing price of each impression; revenue comes from simulated conversions.",
    )
    files += write_ab_files(report, d, figures=True, title="bta demo: did targeting pay?",
                            intro=intro)
    md = (d / "report.md").read_text().split("## Full report", 1)
    extra = ["## Segments", "", "![segment sizes](segment_sizes.png)", "",
             _markdown(seg.assign(share=[f"{s:.2%}" for s in seg["share"]])), ""]
    if len(best):
        cols = ["ad_id", "segment", "ad_impressions", "ad_ctr", "impressions", "ctr", "lift",
                "recall", "f_measure"]
        show = best[cols].copy()
        for c in ("ad_ctr", "ctr", "recall"):
            show[c] = [f"{100 * v:.3g}%" if np.isfinite(v) else "n/a" for v in show[c]]
        show["lift"] = [f"{100 * v:+.0f}%" if np.isfinite(v) else "n/a" for v in show["lift"]]
        show["f_measure"] = [f"{v:.3g}" for v in show["f_measure"]]
        for c in ("ad_impressions", "impressions"):
            show[c] = [f"{v:,.0f}" if np.isfinite(v) else "n/a" for v in show[c].astype(float)]
        extra += ["## Segment CTR per ad category (Yan et al. 2009)", "",
                  "Organic ads of the history, served without targeting: each ad category's "
                  "CTR over all users and in its best segment by F-measure (lift = segment "
                  "CTR / overall CTR - 1).", "", "![yan](yan.png)", "", _markdown(show), ""]
    if args:
        extra += ["## Command", "", "```", "bta demo " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in args.items()
            if k in ("users", "days", "train_days", "seed", "out", "alpha")) +
            (" --null" if args.get("null") else ""), "```", ""]
    (d / "report.md").write_text(md[0] + "\n".join(extra) + "\n## Full report" + md[1])
    return sorted(set(files))

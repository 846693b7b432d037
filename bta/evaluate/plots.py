"""Figures of an A/B report, saved as PNG. matplotlib is imported only here, when called.

Install it with ``pip install 'bta[plot]'``. The figures are built on
:class:`matplotlib.figure.Figure` directly (no ``pyplot``), so plotting neither opens windows
nor touches global figure state in the caller's process.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from bta._plot import new_figure

__all__ = ["plot_arms", "plot_cumulative_lift"]


class ABReport(Protocol):
    """What the figures read of a :class:`bta.evaluate.ABReport` (structural, so this module
    needs nothing of the report's own)."""

    alpha: float
    control: Any
    family: Sequence[str]
    arms: pd.DataFrame
    stats: Any
    daily: pd.DataFrame


def _figure(ncols: int, width: float = 5.0, height: float = 3.6) -> Any:
    fig = new_figure(width * ncols, height)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def plot_arms(report: ABReport, path: str | os.PathLike) -> Path:
    """ROAS and CTR per arm with their intervals (level ``1 - alpha``), as a PNG.

    Parameters
    ----------
    report : ABReport
    path : str or path-like
        Output file.

    Returns
    -------
    Path
    """
    fig, axes = _figure(2)
    arms = report.arms
    labels = [str(a) for a in report.stats]
    for ax, metric, title in zip(axes, ("roas", "ctr"),
                                 ("ROAS (revenue per $1 of spend)", "CTR (clicks / impressions)")):
        rows = arms[arms["metric"] == metric].set_index("arm").reindex(list(report.stats))
        val = rows["value"].to_numpy(dtype=float)
        lo = val - rows["ci_low"].to_numpy(dtype=float)
        hi = rows["ci_high"].to_numpy(dtype=float) - val
        x = np.arange(len(labels))
        colors = ["0.55" if a == report.control else "C0" for a in report.stats]
        ax.bar(x, np.nan_to_num(val), color=colors)
        ax.errorbar(x, val, yerr=np.vstack([lo, hi]), fmt="none", ecolor="black", capsize=4)
        for xi, v, st in zip(x, val, rows["status"]):
            if st != "ok":
                ax.annotate(str(st), (xi, 0), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, labels)
        ax.set_title(title)
    level = 100 * (1 - report.alpha)
    fig.suptitle(f"Per arm, {level:.4g}% intervals (control in grey)")
    out = Path(path)
    fig.savefig(out, format="png", dpi=110)
    return out


def plot_cumulative_lift(report: ABReport, path: str | os.PathLike) -> Path:
    """Cumulative relative lift over time of each family metric, per arm, with its interval.

    A lift that starts high and decays over the days is a novelty effect.

    Parameters
    ----------
    report : ABReport
        Needs the per-day table (a log with times).
    path : str or path-like

    Returns
    -------
    Path
    """
    d = report.daily
    d = d[d["scope"] == "cumulative"]
    metrics = list(report.family)
    fig, axes = _figure(len(metrics), width=4.5)
    for ax, metric in zip(axes, metrics):
        part = d[d["metric"] == metric]
        for i, (arm, g) in enumerate(part.groupby("arm", sort=False)):
            t = g["date"].to_numpy()
            ax.plot(t, 100 * g["rel_lift"].to_numpy(dtype=float), color=f"C{i}",
                    label=str(arm), marker="o", markersize=3)
            # an unbounded (Fieller) interval of an early day is left out, not drawn to inf
            lo, hi = (100 * g[k].to_numpy(dtype=float) for k in ("rel_ci_low", "rel_ci_high"))
            finite = np.isfinite(lo) & np.isfinite(hi)
            ax.fill_between(t, np.where(finite, lo, np.nan), np.where(finite, hi, np.nan),
                            color=f"C{i}", alpha=0.2)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_title(f"{metric}: cumulative lift vs {report.control}")
        ax.set_ylabel("relative lift, %")
        ax.tick_params(axis="x", labelrotation=45)
        ax.legend(fontsize=8)
    out = Path(path)
    fig.savefig(out, format="png", dpi=110)
    return out

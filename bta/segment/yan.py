"""The analysis of Yan et al., "How much can behavioral targeting help online advertising?"
(WWW 2009), on bta's segments.

- :func:`similarity_ratio`: do segments hold users that behave alike? Mean cosine similarity of
  users within a segment over that between segments (the paper's :math:`S_w / S_b`).
- :func:`yan_analysis`: from logged impressions and clicks, each ad's CTR over all users and in
  every segment, the segment that best captures its clicks (F-measure) and that segment's CTR
  lift; :func:`yan_best` keeps one row per ad and :func:`plot_yan` draws it (needs the optional
  ``bta[plot]`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from numbers import Integral
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bta._params import InstanceOf, Interval, validate_args
from bta.errors import SchemaError
from bta.segment.book import SegmentBook

__all__ = ["SimilarityRatio", "similarity_ratio", "yan_analysis", "yan_best", "plot_yan"]


# ---- within / between similarity ---------------------------------------------------------------
@dataclass(frozen=True)
class SimilarityRatio:
    """Within- and between-segment cosine similarity (see :func:`similarity_ratio`).

    Attributes
    ----------
    within : float
        :math:`S_w`, NaN when no segment has two users with affinity.
    between : float
        :math:`S_b`, NaN when fewer than two segments have users with affinity.
    ratio : float
        :math:`S_w / S_b`; ``inf`` when :math:`S_b = 0`; NaN when either is undefined.
    within_by_segment : tuple of float
        :math:`W_s` per segment (NaN below two users with affinity).
    n_users : int
        Users with affinity in at least one segment.
    status : {"ok", "no_within_pairs", "too_few_segments", "zero_between"}
    """

    within: float
    between: float
    ratio: float
    within_by_segment: tuple[float, ...]
    n_users: int
    status: str


def similarity_ratio(affinity: Any, segments: Any) -> SimilarityRatio:
    """Yan et al.'s within/between-segment user similarity ratio.

    Parameters
    ----------
    affinity : Affinity, sparse matrix or ndarray of shape (n_users, n_features)
        User vectors (e.g. :func:`~bta.segment.clusters.interest_affinity`); rows are
        L2-normalized here, so any non-negative profile works. Zero rows take no part.
    segments : array-like of int, shape (n_users,), or of bool, shape (n_users, n_segments)
        Cluster labels (negative: in no segment) or a membership matrix (segments may overlap).

    Returns
    -------
    SimilarityRatio

    Raises
    ------
    SchemaError
        Shapes disagree, or the vectors are not finite.

    Notes
    -----
    With :math:`U_s` the users with affinity in segment :math:`s`, :math:`n_s = |U_s|` and
    unit vectors :math:`x_u`:

    .. math::
        W_s = \\frac{1}{n_s (n_s - 1)} \\sum_{u \\ne v \\in U_s} \\cos(x_u, x_v), \\qquad
        B_{st} = \\frac{1}{n_s n_t - |U_s \\cap U_t|}
                 \\sum_{u \\in U_s, v \\in U_t, u \\ne v} \\cos(x_u, x_v)

    :math:`S_w` is the mean of :math:`W_s` over segments with :math:`n_s \\ge 2`, :math:`S_b`
    the mean of :math:`B_{st}` over pairs :math:`s < t`, and the ratio is :math:`S_w / S_b`.
    Each segment (and pair) weighs the same, as each ad does in the paper; a ratio far above 1
    means the segments hold users that behave alike. Computed in :math:`O(nnz + S^2 d)` from
    the segment sums :math:`\\Sigma_s = \\sum_{u \\in U_s} x_u`:
    :math:`\\sum_{u \\ne v} \\cos = \\Sigma_s \\cdot \\Sigma_t - |U_s \\cap U_t|`.

    Examples
    --------
    >>> X = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> r = similarity_ratio(X, np.array([0, 0, 1, 1]))
    >>> round(r.within, 3), round(r.between, 3), r.status
    (0.995, 0.099, 'ok')
    """
    X = sp.csr_matrix(getattr(affinity, "X", affinity), dtype=np.float64)
    if not np.all(np.isfinite(X.data)):
        raise SchemaError("affinity must be finite, got NaN or infinite values")
    n = X.shape[0]
    M = _membership(segments, n)
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    active = norms > 0
    inv = np.where(active, 1.0 / np.where(active, norms, 1.0), 0.0)
    Xn = sp.diags(inv) @ X
    M = sp.diags(active.astype(np.float64)) @ M
    sums = np.asarray((M.T @ Xn).todense())
    G = sums @ sums.T
    O = np.asarray((M.T @ M).todense())
    size = np.diag(O).copy()
    pairs = np.outer(size, size) - O
    with np.errstate(invalid="ignore", divide="ignore"):
        P = np.where(pairs > 0, (G - O) / np.where(pairs > 0, pairs, 1.0), np.nan)
    within_s = np.where(size >= 2, np.diag(P), np.nan)
    iu = np.triu_indices(len(size), k=1)
    off = P[iu][pairs[iu] > 0]
    n_users = int((np.asarray(M.sum(axis=1)).ravel() > 0).sum())
    within = float(np.nanmean(within_s)) if np.isfinite(within_s).any() else float("nan")
    between = float(off.mean()) if off.size else float("nan")
    if np.isnan(within):
        status, ratio = "no_within_pairs", float("nan")
    elif np.isnan(between):
        status, ratio = "too_few_segments", float("nan")
    elif between <= 0:
        status, ratio = "zero_between", float("inf")
    else:
        status, ratio = "ok", within / between
    return SimilarityRatio(within=within, between=between, ratio=ratio,
                           within_by_segment=tuple(float(v) for v in within_s),
                           n_users=n_users, status=status)


def _membership(segments: Any, n: int) -> sp.csr_matrix:
    if sp.issparse(segments):
        M = sp.csr_matrix(segments, dtype=np.float64)
    else:
        s = np.asarray(segments)
        if s.ndim == 1:
            if s.shape[0] != n or not np.issubdtype(s.dtype, np.integer):
                raise SchemaError(f"segments must be {n} integer labels (one per user) or a "
                                  f"boolean matrix of shape ({n}, n_segments), got dtype "
                                  f"{s.dtype} with shape {s.shape}")
            keep = s >= 0
            k = int(s.max()) + 1 if keep.any() else 0
            return sp.csr_matrix((np.ones(int(keep.sum())), (np.flatnonzero(keep), s[keep])),
                                 shape=(n, k))
        M = sp.csr_matrix(s.astype(np.float64)) if s.ndim == 2 else None
    if M is None or M.shape[0] != n:
        shape = getattr(segments, "shape", None)
        raise SchemaError(f"segments must be {n} integer labels (one per user) or a boolean "
                          f"matrix of shape ({n}, n_segments), got shape {shape}")
    M.data = (M.data != 0).astype(np.float64)
    return M


# ---- CTR by segment ----------------------------------------------------------------------------
_LOG_COLUMNS = "user_id, ad_id and either (impressions, clicks) or clicked"
_PARAMS: dict[str, list[Any]] = {
    "log": [InstanceOf(pd.DataFrame, desc=f"a pandas DataFrame with columns {_LOG_COLUMNS}",
                       show_type=True)],
    "book": [InstanceOf(SegmentBook, show_type=True)],
    "min_impressions": [Interval(Integral, 0, None, closed="left")],
    "activatable_only": ["boolean"],
    "max_ads": [Interval(Integral, 1, None, closed="left")],
}


def yan_analysis(log: pd.DataFrame, book: SegmentBook, *,
                 segments: Sequence[str] | None = None, min_impressions: int = 100,
                 activatable_only: bool = True) -> pd.DataFrame:
    """CTR of every ad over all users and in every segment, with the best segment per ad.

    Parameters
    ----------
    log : pandas.DataFrame
        Logged ads, in one of two layouts (told apart by their columns):

        - aggregated: ``user_id``, ``ad_id``, ``impressions``, ``clicks`` (non-negative
          integers, ``clicks <= impressions``; a pair may repeat, rows are summed);
        - one row per impression: ``user_id``, ``ad_id``, ``clicked`` (bool or 0/1).
    book : SegmentBook
        Segments over users; log users not in the book count in the ad's totals
        (``ad_unmatched_impressions``) but in no segment.
    segments : sequence of str, optional
        Segments to analyse (default: all of the book's).
    min_impressions : int, default 100
        A segment must have at least this many impressions of the ad to be eligible as best.
    activatable_only : bool, default True
        Only segments meeting the book's minimum audience can be best.

    Returns
    -------
    pandas.DataFrame
        One row per (ad, segment), ads sorted, segments in book order, with columns
        ``ad_id, segment, impressions, clicks, ctr, recall, f_measure, lift, eligible, best,
        ad_impressions, ad_clicks, ad_ctr, ad_unmatched_impressions``.

    Raises
    ------
    SchemaError
        A column is missing or holds invalid values, or the log is empty.
    ConfigError
        ``book`` is not a SegmentBook or a parameter is out of range.
    UnknownNameError
        A name in ``segments`` is not in the book.

    Notes
    -----
    For ad :math:`a` and segment :math:`s`, with :math:`I` impressions and :math:`C` clicks:

    - ``ctr`` = precision :math:`P_{a,s} = C_{a,s} / I_{a,s}`: the share of the segment's
      impressions of the ad that were clicked (NaN without impressions);
    - ``recall`` :math:`R_{a,s} = C_{a,s} / C_a`: the share of all the ad's clicks that came
      from the segment (NaN when the ad has no click);
    - ``f_measure`` :math:`F = 2PR / (P + R)` (0 when :math:`P = R = 0`);
    - ``lift`` :math:`= P_{a,s} / CTR_a - 1`, the relative CTR improvement of targeting the
      segment over showing the ad to everyone (:math:`CTR_a = C_a / I_a`); NaN when
      :math:`CTR_a = 0`.

    ``best`` marks, per ad with clicks, the eligible segment of largest :math:`F` (first in book
    order on ties). A segment with a handful of impressions and a lucky click has
    :math:`P` near 1 but recall near 0, so the F-measure ranks it low where the CTR alone would
    rank it first; ``min_impressions`` and ``activatable_only`` take out the remaining
    chance winners (with CTRs around 1%, :math:`F \\approx 2P` as soon as :math:`R \\gg P`).

    Examples
    --------
    >>> table = yan_analysis(log, book, min_impressions=50)   # doctest: +SKIP
    >>> yan_best(table)[["ad_id", "segment", "lift"]]           # doctest: +SKIP
    """
    validate_args(_PARAMS, "yan_analysis", book=book, min_impressions=min_impressions,
                  activatable_only=activatable_only)
    users, ads, imp, clk = _read_log(log)
    ad_codes, ad_ids = pd.factorize(ads, sort=True)
    n_ads = len(ad_ids)
    if segments is None:
        seg_idx = np.arange(book.n_segments)
    else:
        seg_idx = np.array([book.index(name) for name in segments], dtype=np.int64)
    names = [book.names[j] for j in seg_idx]
    rows = pd.Index(book.users).get_indexer(users)
    hit = rows >= 0

    ad_imp = np.bincount(ad_codes, weights=imp, minlength=n_ads)
    ad_clk = np.bincount(ad_codes, weights=clk, minlength=n_ads)
    ad_unmatched = np.bincount(ad_codes[~hit], weights=imp[~hit], minlength=n_ads)
    M = book.membership[:, seg_idx].astype(np.float64)
    shape = (n_ads, book.n_users)
    seg_imp = np.asarray((sp.csr_matrix((imp[hit], (ad_codes[hit], rows[hit])), shape=shape)
                          @ M).todense()).reshape(n_ads, len(seg_idx))
    seg_clk = np.asarray((sp.csr_matrix((clk[hit], (ad_codes[hit], rows[hit])), shape=shape)
                          @ M).todense()).reshape(n_ads, len(seg_idx))

    n_seg = len(seg_idx)
    I, C = seg_imp.ravel(), seg_clk.ravel()
    aI, aC = np.repeat(ad_imp, n_seg), np.repeat(ad_clk, n_seg)
    with np.errstate(invalid="ignore", divide="ignore"):
        ctr = np.where(I > 0, C / I, np.nan)
        recall = np.where(aC > 0, C / aC, np.nan)
        ad_ctr = np.where(aI > 0, aC / aI, np.nan)
        f = np.where(ctr + recall > 0, 2 * ctr * recall / (ctr + recall), 0.0)
        f = np.where(np.isnan(ctr) | np.isnan(recall), np.nan, f)
        lift = np.where(ad_ctr > 0, ctr / ad_ctr - 1.0, np.nan)
    activatable = book.activatable.to_numpy()[seg_idx]
    eligible = I >= max(1, int(min_impressions))
    if activatable_only:
        eligible &= np.tile(activatable, n_ads)
    best = np.zeros(n_ads * n_seg, dtype=bool)
    if n_seg:
        score = np.where(eligible & ~np.isnan(f), f, -np.inf).reshape(n_ads, n_seg)
        pick = np.argmax(score, axis=1)  # first maximum: book order on ties
        ok = np.isfinite(score[np.arange(n_ads), pick]) & (ad_clk > 0)
        best[np.flatnonzero(ok) * n_seg + pick[ok]] = True
    return pd.DataFrame({
        "ad_id": np.repeat(np.asarray(ad_ids), n_seg),
        "segment": np.tile(np.asarray(names, dtype=object), n_ads),
        "impressions": I.astype(np.int64), "clicks": C.astype(np.int64), "ctr": ctr,
        "recall": recall, "f_measure": f, "lift": lift, "eligible": eligible, "best": best,
        "ad_impressions": aI.astype(np.int64), "ad_clicks": aC.astype(np.int64),
        "ad_ctr": ad_ctr,
        "ad_unmatched_impressions": np.repeat(ad_unmatched, n_seg).astype(np.int64),
    })


def _read_log(log: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """user ids, ad ids, impressions and clicks (float64) of a validated log."""
    validate_args(_PARAMS, "yan_analysis", log=log)
    for col in ("user_id", "ad_id"):
        if col not in log.columns:
            raise SchemaError(f"log is missing column {col!r} (expected {_LOG_COLUMNS})")
    aggregated = "impressions" in log.columns or "clicks" in log.columns
    if aggregated and "clicked" in log.columns:
        raise SchemaError("log must have either impressions and clicks (aggregated) or clicked "
                          "(one row per impression), not both")
    if len(log) == 0:
        raise SchemaError("log has no rows: nothing to analyse")
    for col in ("user_id", "ad_id"):
        if log[col].isna().any():
            first = int(np.flatnonzero(log[col].isna().to_numpy())[0])
            raise SchemaError(f"log column {col!r} must not be missing, got a null at row "
                              f"{first}")
    if aggregated:
        for col in ("impressions", "clicks"):
            if col not in log.columns:
                raise SchemaError(f"log is missing column {col!r} (expected {_LOG_COLUMNS})")
        imp = _counts(log, "impressions")
        clk = _counts(log, "clicks")
        over = np.flatnonzero(clk > imp)
        if over.size:
            r = int(over[0])
            raise SchemaError(f"log column 'clicks' must be <= 'impressions', got {int(clk[r])} "
                              f"clicks for {int(imp[r])} impressions at row {r}")
    elif "clicked" in log.columns:
        raw = log["clicked"]
        vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isin(vals, (0.0, 1.0)))
        if bad.size:
            r = int(bad[0])
            raise SchemaError(f"log column 'clicked' must be True/False or 0/1, got "
                              f"{_py(raw.iloc[r])!r} at row {r}")
        imp, clk = np.ones(len(log)), vals
    else:
        raise SchemaError(f"log must have columns impressions and clicks, or clicked (expected "
                          f"{_LOG_COLUMNS}), got {list(log.columns)}")
    return log["user_id"].to_numpy(), log["ad_id"].to_numpy(), imp, clk


def _counts(log: pd.DataFrame, col: str) -> np.ndarray:
    raw = log[col]
    vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(vals) | (vals < 0) | (vals != np.round(vals)))
    if bad.size:
        r = int(bad[0])
        raise SchemaError(f"log column {col!r} must hold integers >= 0, got "
                          f"{_py(raw.iloc[r])!r} at row {r}")
    return vals


def _py(v: Any) -> Any:
    """NumPy scalar as the Python value, so messages read ``-2`` and not ``np.int64(-2)``."""
    return v.item() if isinstance(v, np.generic) else v


def yan_best(table: pd.DataFrame) -> pd.DataFrame:
    """One row per ad from a :func:`yan_analysis` table: its totals and its best segment.

    Returns
    -------
    pandas.DataFrame
        Columns ``ad_id, ad_impressions, ad_clicks, ad_ctr, segment, ctr, recall, f_measure,
        lift, status``; ``segment`` is None and the statistics NaN where ``status`` is
        ``"no_clicks"`` (the ad has no click: nothing to capture) or ``"no_eligible_segment"``.
    """
    _check_table(table)
    per_ad = table.groupby("ad_id", sort=True).agg(
        ad_impressions=("ad_impressions", "first"), ad_clicks=("ad_clicks", "first"),
        ad_ctr=("ad_ctr", "first"))
    best = table.loc[table["best"], ["ad_id", "segment", "ctr", "recall", "f_measure", "lift"]]
    out = per_ad.join(best.set_index("ad_id"), how="left").reset_index()
    out["segment"] = out["segment"].astype(object).where(out["segment"].notna(), None)
    out["status"] = np.where(out["ad_clicks"] == 0, "no_clicks",
                             np.where(out["segment"].isna(), "no_eligible_segment", "ok"))
    return out


def _check_table(table: Any) -> None:
    need = {"ad_id", "segment", "best", "ctr", "recall", "f_measure", "lift", "ad_impressions",
            "ad_clicks", "ad_ctr"}
    if not isinstance(table, pd.DataFrame) or not need <= set(table.columns):
        got = list(table.columns) if isinstance(table, pd.DataFrame) else type(table).__name__
        raise SchemaError(f"table must be a yan_analysis() result with columns {sorted(need)}, "
                          f"got {got}")


def plot_yan(table: pd.DataFrame, path: str | Path, *, max_ads: int = 30) -> Path:
    """Save a PNG of each ad's CTR over all users next to its best segment's CTR.

    Parameters
    ----------
    table : pandas.DataFrame
        A :func:`yan_analysis` result.
    path : str or Path
        Where to write the PNG.
    max_ads : int, default 30
        The ads with most impressions are drawn, at most this many.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ImportError
        matplotlib is not installed (``pip install 'bta[plot]'``).
    """
    validate_args(_PARAMS, "plot_yan", max_ads=max_ads)
    per_ad = yan_best(table)
    from bta._plot import new_figure

    shown = per_ad.nlargest(int(max_ads), "ad_impressions", keep="first")
    x = np.arange(len(shown))
    fig = new_figure(max(6.0, 0.45 * len(shown) + 2.0), 4.5, "plot_yan")
    ax = fig.add_subplot()
    ax.bar(x - 0.2, shown["ad_ctr"].to_numpy(dtype=float), 0.4, label="all users")
    ax.bar(x + 0.2, shown["ctr"].to_numpy(dtype=float), 0.4, label="best segment (F-measure)")
    for xi, ctr, lift in zip(x, shown["ctr"].to_numpy(dtype=float),
                             shown["lift"].to_numpy(dtype=float)):
        if np.isfinite(lift):
            ax.annotate(f"{lift:+.0%}", (xi + 0.2, ctr), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [str(a) for a in shown["ad_id"]], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("CTR")
    ax.set_title("CTR over all users and in the best segment per ad (Yan et al., 2009)")
    ax.legend()
    path = Path(path)
    fig.savefig(path, format="png", dpi=120)
    return path

"""Segments and scores over partitioned features, with models fitted once and broadcast."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bta.dask._compute import compute, persist
from bta.dask.features import PartitionedFeatures
from bta.errors import ConfigError, check_param
from bta.features.matrix import FeatureMatrix
from bta.segment.book import DEFAULT_MIN_AUDIENCE, Segment, SegmentBook
from bta.segment.clusters import InterestClusters, interest_affinity
from bta.segment.lookalike import Lookalike, centroid_scores
from bta.segment.propensity import PropensityModel
from bta.segment.rules import evaluate_rules

__all__ = ["segment", "PartitionedSegments", "BookPiece", "score"]

#: Metadata file of a segments dataset, written after every part.
META_FILE = "_bta_segments.json"
#: Rows densified at a time when scoring (bounds memory: rows x model features x 8 bytes).
_SCORE_CHUNK_ROWS = 65_536


@dataclasses.dataclass(frozen=True, eq=False)
class PartitionedSegments:
    """Segment memberships per partition, all with the same segments.

    Attributes
    ----------
    partitions : tuple of dask.delayed.Delayed
        Per partition a :class:`BookPiece` (``None`` for a partition without users): the
        parts of a :class:`~bta.segment.SegmentBook` as plain arrays, so that they travel
        between processes whatever the book object holds.
    min_audience : int
    """

    partitions: tuple
    min_audience: int = DEFAULT_MIN_AUDIENCE

    @property
    def npartitions(self) -> int:
        return len(self.partitions)

    def persist(self, client: Any = None) -> PartitionedSegments:
        """Compute the partitions and keep them in the cluster's memory."""
        return PartitionedSegments(tuple(persist(*self.partitions, client=client)),
                                   self.min_audience)

    def compute(self, client: Any = None) -> SegmentBook:
        """One SegmentBook of every user, rows sorted by user id; sizes, overlaps and the
        minimum-audience rule are over all partitions."""
        books = [b for b in compute(*self.partitions, client=client) if b is not None]
        if not books:
            raise ConfigError("no partition has any user: there is no segment to collect")
        users = np.concatenate([b.users for b in books])
        M = sp.vstack([b.membership for b in books], format="csr")
        order = np.argsort(users, kind="stable")
        first = books[0]
        return SegmentBook(users=users[order], membership=M[order], names=first.names,
                           kinds=first.kinds, definitions=first.definitions,
                           min_audience=self.min_audience)

    def to_books(self) -> tuple:
        """Lazy :class:`~bta.segment.SegmentBook` of each partition (None where no users)."""
        import dask

        task = dask.delayed(_to_book, pure=True)
        return tuple(task(b, self.min_audience) for b in self.partitions)

    def to_parquet(self, path: str | os.PathLike, client: Any = None) -> Path:
        """Write a Parquet dataset: ``part.NNNNN.parquet`` with ``user_id`` and one boolean
        column per segment (partitions without users write no file), then
        ``_bta_segments.json`` with names, kinds, definitions, sizes and ``min_audience``."""
        import dask

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        writes = [dask.delayed(_write_book)(b, str(root / f"part.{i:05d}.parquet"))
                  for i, b in enumerate(self.partitions)]
        heads = [h for h in compute(*writes, client=client) if h is not None]
        if not heads:
            raise ConfigError("no partition has any user: there is no segment to write")
        names, kinds, definitions = heads[0][:3]
        sizes = np.sum([h[3] for h in heads], axis=0).astype(int).tolist()
        meta = {"format": "bta.dask.segments", "format_version": 1,
                "min_audience": int(self.min_audience),
                "segments": [{"name": n, "kind": k, "definition": d, "size": s}
                             for n, k, d, s in zip(names, kinds, definitions, sizes)]}
        (root / META_FILE).write_text(json.dumps(meta, indent=1))
        return root


def segment(features: PartitionedFeatures, *,
            rules: Iterable[Any] | Mapping[str, str] | None = None,
            clusters: Mapping[str, InterestClusters] | None = None,
            propensity: Mapping[str, tuple[PropensityModel, float]] | None = None,
            lookalike: Mapping[str, tuple[Lookalike, float]] | None = None,
            min_audience: int = DEFAULT_MIN_AUDIENCE) -> PartitionedSegments:
    """Segment memberships of every partition, with fitted models broadcast to the workers.

    Parameters
    ----------
    features : PartitionedFeatures
        From :func:`bta.dask.build_features` or :func:`bta.dask.read_features`.
    rules : iterable of RuleSegment, or mapping of name to rule text, optional
        Evaluated by :func:`bta.segment.evaluate_rules`; they may reference the model segments
        below with ``segment("name")``.
    clusters : mapping of str to InterestClusters, optional
        ``{prefix: fitted model}``: segments ``{prefix}:{j}`` as
        ``model.segments(prefix, fm)``.
    propensity : mapping of str to (PropensityModel, float), optional
        ``{name: (fitted model, threshold)}``: ``model.segment(name, fm, threshold=...)``.
        (A ``top_fraction`` cut needs the global score distribution; cut on a threshold.)
    lookalike : mapping of str to (Lookalike, float), optional
        ``{name: (fitted centroid Lookalike, threshold)}``: every user of the partitions is
        scored against the fitted seed (the fitted IDF and seed centroid; seed users get their
        leave-one-out score, as in ``Lookalike.scores_``), members are the non-seed users with
        ``score >= threshold``. (A reach cut ranks all users: cut on a threshold.)
    min_audience : int
        The book's minimum audience, applied to the collected sizes.

    Returns
    -------
    PartitionedSegments
        Equal, once collected, to the single-machine segments over the collected features:
        every maker decides each user from that user's features and the fitted model alone.

    Raises
    ------
    ConfigError
        Nothing to compute, an unfitted or wrong model, or a bad threshold.
    """
    import dask

    if not isinstance(features, PartitionedFeatures):
        raise ConfigError(f"features must be PartitionedFeatures (see bta.dask.build_features), "
                          f"got {type(features).__name__}")
    clusters = dict(clusters or {})
    propensity = dict(propensity or {})
    rule_arg = None if rules is None else (dict(rules) if isinstance(rules, Mapping)
                                           else list(rules))
    lookalike = {name: _centroid_state(name, pair) for name, pair in (lookalike or {}).items()}
    if not clusters and not propensity and not lookalike and not rule_arg:
        raise ConfigError("give at least one of rules, clusters, propensity and lookalike")
    for prefix, model in clusters.items():
        check_param(f"clusters[{prefix!r}]", model, isinstance(model, InterestClusters)
                    and hasattr(model, "centroids_"), "a fitted InterestClusters")
    for name, pair in propensity.items():
        ok = (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], PropensityModel)
              and isinstance(pair[1], (int, float)) and not isinstance(pair[1], bool)
              and 0.0 <= pair[1] <= 1.0)
        check_param(f"propensity[{name!r}]", pair, ok,
                    "a (fitted PropensityModel, threshold in [0, 1]) pair")
    check_param("min_audience", min_audience, isinstance(min_audience, (int, np.integer))
                and not isinstance(min_audience, bool) and min_audience >= 1, "an integer >= 1")
    # one key for the models: shipped once to each worker, not once per task
    models = dask.delayed(_Models(clusters, propensity, lookalike, rule_arg), pure=True,
                          traverse=False)
    task = dask.delayed(_partition_segments, pure=True)
    return PartitionedSegments(tuple(task(fm, models, int(min_audience))
                                     for fm in features.partitions), int(min_audience))


class BookPiece(NamedTuple):
    """The segments of one partition's users."""

    users: np.ndarray
    membership: sp.csr_matrix
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    definitions: tuple[dict, ...]


def _to_book(piece: BookPiece | None, min_audience: int) -> SegmentBook | None:
    if piece is None:
        return None
    return SegmentBook(users=piece.users, membership=piece.membership, names=piece.names,
                       kinds=piece.kinds, definitions=piece.definitions,
                       min_audience=min_audience)


@dataclasses.dataclass(frozen=True, eq=False)
class _Models:
    clusters: dict
    propensity: dict
    lookalike: dict
    rules: Any


@dataclasses.dataclass(frozen=True, eq=False)
class _Centroid:
    """What scoring new users against a fitted centroid Lookalike needs (not its users)."""

    event: str
    stat: str
    categories: tuple
    idf: np.ndarray
    seed: np.ndarray        # seed user ids with affinity
    S: np.ndarray           # sum of the seed users' unit affinity rows
    threshold: float
    definition: dict


def _centroid_state(name: str, pair: Any) -> _Centroid:
    ok = (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], Lookalike)
          and hasattr(pair[0], "scores_") and isinstance(pair[1], (int, float))
          and not isinstance(pair[1], bool) and 0.0 <= pair[1] <= 1.0)
    check_param(f"lookalike[{name!r}]", pair, ok,
                "a (fitted Lookalike, threshold in [0, 1]) pair")
    la, threshold = pair
    check_param(f"lookalike[{name!r}]", la.method, la.method == "centroid",
                "a Lookalike with method='centroid' (knn compares with every seed user)")
    aff = la.affinity_
    active = la.seed_rows_[aff.has_affinity[la.seed_rows_]]
    S = np.asarray(aff.X[active].sum(axis=0)).ravel()
    definition = {"maker": "Lookalike", "method": la.method, "event": la.event,
                  "stat": la.stat, "idf": bool(la.idf), "threshold": float(threshold),
                  "n_seed": int(active.size)}
    return _Centroid(la.event, la.stat, tuple(aff.categories), np.asarray(aff.idf),
                     aff.users[active], S, float(threshold), definition)


def _centroid_scores(c: _Centroid, fm: FeatureMatrix) -> tuple[np.ndarray, np.ndarray]:
    """Scores and seed flags of ``fm``'s users: the formula of :class:`Lookalike` (centroid),
    ``s(u) = x_u . S / |S|``, leave-one-out ``x_u . (S - x_u) / |S - x_u|`` for seed users."""
    aff = interest_affinity(fm, event=c.event, stat=c.stat, idf=c.idf, categories=c.categories)
    is_seed = pd.Index(c.seed).get_indexer(aff.users) >= 0
    scores = centroid_scores(aff.X, c.S, np.flatnonzero(is_seed & aff.has_affinity))
    scores = np.clip(scores, 0.0, 1.0)
    scores[~aff.has_affinity] = 0.0
    return scores, is_seed


def _partition_segments(fm: FeatureMatrix, m: _Models, min_audience: int
                        ) -> BookPiece | None:
    if fm.n_users == 0:  # makers refuse empty matrices; an empty partition has no members
        return None
    segs: list[Segment] = []
    for prefix, model in m.clusters.items():
        segs.extend(model.segments(prefix, fm))
    for name, (model, threshold) in m.propensity.items():
        segs.append(model.segment(name, fm, threshold=float(threshold)))
    for name, c in m.lookalike.items():
        scores, is_seed = _centroid_scores(c, fm)
        segs.append(Segment(name, "lookalike", c.definition,
                            (scores >= c.threshold) & ~is_seed, scores))
    if m.rules:
        book = SegmentBook.from_segments(fm.users, segs, min_audience) if segs else None
        segs.extend(evaluate_rules(m.rules, fm, book))
    b = SegmentBook.from_segments(fm.users, segs, min_audience)
    return BookPiece(b.users, b.membership, b.names, b.kinds, b.definitions)


def _write_book(book: BookPiece | None, path: str) -> tuple | None:
    if book is None:
        return None
    M = book.membership.toarray()
    df = pd.DataFrame({"user_id": book.users})
    for j, name in enumerate(book.names):
        df[name] = M[:, j]
    df.to_parquet(path, index=False)
    return book.names, book.kinds, book.definitions, M.sum(axis=0)


# ---------------------------------------------------------------------------- scoring


def score(features: PartitionedFeatures, scorer: Any, *,
          feature_names: Sequence[str] | None = None, **predict_kw: Any) -> Any:
    """Scores of every user by a compiled scorer, partition by partition.

    Parameters
    ----------
    features : PartitionedFeatures
    scorer : TreeScorer, LinearScorer, PropensityModel, Lookalike, or any object with ``predict``
        A :class:`~bta.segment.PropensityModel` scores a FeatureMatrix (its own column
        alignment); a fitted centroid :class:`~bta.segment.Lookalike` gives every user's
        similarity to its seed (``scores_`` of the fitted users; see :func:`segment`); other
        scorers get the dense columns named by ``feature_names`` (default
        the scorer's ``feature_names``), NaN where a recency-like feature is undefined.
    feature_names : sequence of str, optional
        The scorer's input columns, in order, when it does not carry names.
    **predict_kw
        Passed to ``scorer.predict`` (e.g. ``raw_score=True``).

    Returns
    -------
    dask.dataframe.Series or DataFrame
        Indexed by ``user_id``: a Series ``score``, or for a multiclass scorer a DataFrame
        ``score_0 ... score_{k-1}``. Equal to ``scorer.predict`` on the collected features
        row for row (the same kernel on the same row values).

    Raises
    ------
    ConfigError
        ``features`` is not partitioned features, or the input columns are unknown.
    UnknownNameError
        A scorer feature is not a column of the features (closest names suggested).
    """
    import dask
    import dask.dataframe as dd

    if not isinstance(features, PartitionedFeatures):
        raise ConfigError(f"features must be PartitionedFeatures (see bta.dask.build_features), "
                          f"got {type(features).__name__}")
    if isinstance(scorer, Lookalike):
        scorer = _centroid_state("scorer", (scorer, 0.0))
    elif not hasattr(scorer, "predict"):
        raise ConfigError(f"scorer must have a predict method, got {type(scorer).__name__}")
    if feature_names is None and not isinstance(scorer, (PropensityModel, _Centroid)):
        feature_names = getattr(scorer, "feature_names", None)
        if feature_names is None:
            raise ConfigError(f"{type(scorer).__name__} carries no feature_names: pass "
                              f"feature_names=, the matrix columns it reads in order")
    names = None if feature_names is None else tuple(str(n) for n in feature_names)
    n_classes = int(getattr(scorer, "n_classes", 1) or 1)
    if n_classes > 1:
        meta: Any = pd.DataFrame({f"score_{k}": pd.Series(dtype=np.float64)
                                  for k in range(n_classes)})
    else:
        meta = pd.Series(dtype=np.float64, name="score")
    # user ids may be ints or strings: the index dtype is only known per partition
    meta.index = pd.Index([], name="user_id", dtype=object)
    model = dask.delayed(scorer, pure=True, traverse=False)
    task = dask.delayed(_partition_scores, pure=True)
    parts = [task(fm, model, names, n_classes, predict_kw) for fm in features.partitions]
    return dd.from_delayed(parts, meta=meta, verify_meta=False)


def _partition_scores(fm: FeatureMatrix, scorer: Any, names: tuple[str, ...] | None,
                      n_classes: int, predict_kw: dict) -> Any:
    out = np.empty((fm.n_users, n_classes), dtype=np.float64)
    if isinstance(scorer, PropensityModel):
        if fm.n_users:
            out[:, 0] = scorer.predict(fm, **predict_kw)
    elif isinstance(scorer, _Centroid):
        if fm.n_users:
            out[:, 0] = _centroid_scores(scorer, fm)[0]
    else:
        for name in names or ():
            fm.feature_index(name)  # unknown names fail here, with suggestions
        for r0 in range(0, fm.n_users, _SCORE_CHUNK_ROWS):
            r1 = min(r0 + _SCORE_CHUNK_ROWS, fm.n_users)
            block = dataclasses.replace(fm, X=fm.X[r0:r1], users=fm.users[r0:r1])
            X = np.ascontiguousarray(block.to_pandas(columns=names).to_numpy(np.float64))
            out[r0:r1] = np.asarray(scorer.predict(X, **predict_kw),
                                    dtype=np.float64).reshape(r1 - r0, n_classes)
    index = pd.Index(fm.users, name="user_id")
    if n_classes == 1:
        return pd.Series(out[:, 0], index=index, name="score")
    return pd.DataFrame(out, index=index, columns=[f"score_{k}" for k in range(n_classes)])

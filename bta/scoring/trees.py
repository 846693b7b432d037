"""TreeScorer: a LightGBM model flattened into arrays and scored by numba kernels.

The model is read from LightGBM's text format (``Booster.model_to_string``, a model file), so
a flattened model needs LightGBM only to be made, never to be scored. Every internal node of
every tree goes into one set of contiguous arrays (struct of arrays); one compiled kernel
scores any model, so a new model never meets stale compiled code. (The kernels read a layout
derived from these arrays at load: see :mod:`bta.scoring._kernels`.)

Scoring reproduces LightGBM's ``Tree::GetLeaf`` and ``GBDT::PredictRaw``:

- inputs with ``|x| <= 1e-35`` (``kZeroThreshold``, as a float) are zero: LightGBM's dense-row
  reader drops them;
- numerical node with ``missing_type=None``: NaN is replaced by 0, then ``x <= threshold``
  goes left; ``missing_type=NaN``: NaN goes the default way; ``missing_type=Zero``: NaN and
  zero go the default way;
- categorical node: ``x`` is truncated toward zero to an int (C's ``static_cast<int>``);
  negative values, NaN, the infinities and values outside the int32 range go right (on
  x86-64 the cast yields ``INT_MIN`` for the last three); otherwise left iff the category's
  bit is set, categories beyond the bitset going right;
- the raw score of class ``k`` is ``0.0 + tree[k] + tree[K + k] + ...``, in iteration order,
  then the objective's transform.

Inputs are numbers: a model trained on a pandas DataFrame with ``category`` columns takes the
category codes, as LightGBM uses them inside (the model's ``pandas_categorical`` mapping is
not applied).
"""

from __future__ import annotations

import json
import os
from numbers import Integral
from pathlib import Path
from typing import Any, Mapping, Sequence

import numba
import numpy as np

from bta._params import Interval, validate_args
from bta.errors import ConfigError, SchemaError
from bta.scoring import _kernels as K

__all__ = ["TreeScorer", "FORMAT_VERSION"]

#: Version of the ``to_dict``/``save`` layout; bumped on any incompatible change.
FORMAT_VERSION = 1
_FORMAT = "bta.TreeScorer"

# Objectives by output transform. Regression-type objectives output the raw score (squared
# back with ``sqrt``, i.e. reg_sqrt); everything else (ranking, custom) is refused.
_IDENTITY_OBJECTIVES = ("regression", "regression_l1", "huber", "fair", "quantile", "mape")
_EXP_OBJECTIVES = ("poisson", "gamma", "tweedie")
_OBJECTIVES = (("binary", "multiclass", "multiclassova", "cross_entropy", "cross_entropy_lambda")
               + _IDENTITY_OBJECTIVES + _EXP_OBJECTIVES)

# Header fields that do not change predictions (or are checked on their own).
_HEADER_FIELDS = frozenset({"version", "num_class", "num_tree_per_iteration", "label_index",
                            "max_feature_idx", "objective", "feature_names", "feature_infos",
                            "tree_sizes", "monotone_constraints"})
_TREE_FIELDS = frozenset({"Tree", "num_leaves", "num_cat", "split_feature", "split_gain",
                          "threshold", "decision_type", "left_child", "right_child",
                          "leaf_value", "leaf_weight", "leaf_count", "internal_value",
                          "internal_weight", "internal_count", "cat_boundaries",
                          "cat_threshold", "is_linear", "shrinkage"})

_ARRAYS = {"split_feature": np.int32, "threshold": np.float64, "decision_type": np.uint8,
           "left_child": np.int32, "right_child": np.int32, "leaf_value": np.float64,
           "cat_boundaries": np.int32, "cat_threshold": np.uint32, "tree_root": np.int32}

# Above this many rows the parallel kernel pays for its thread start-up (about 10 us).
_PARALLEL_MIN_ROWS = 2048
_F64 = np.dtype(np.float64)
# the constructor's counts, checked once converted with int() (a model file's fields are text)
_PARAMS: dict[str, list[Any]] = {
    "n_features": [Interval(Integral, 1, None, closed="left", desc="a positive integer")],
    "best_iteration": [Interval(Integral, 0, None, closed="left", desc=">= 0")],
}


def _parse_objective(objective: str) -> tuple[str, int, float]:
    """(name, link code, sigmoid scale) of a LightGBM objective string ("binary sigmoid:1")."""
    tokens = objective.split()
    name = tokens[0] if tokens else ""
    if name not in _OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(_OBJECTIVES)}, got {objective!r}")
    params: dict[str, str] = {}
    for tok in tokens[1:]:
        key, sep, val = tok.partition(":")
        params[key] = val if sep else "true"
    allowed = {"binary": {"sigmoid"}, "multiclass": {"num_class"},
               "multiclassova": {"num_class", "sigmoid"}}.get(
        name, {"sqrt"} if name in _IDENTITY_OBJECTIVES else set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(f"objective {name!r} must have parameters among {sorted(allowed)}, "
                          f"got {unknown[0]!r} in {objective!r}")
    scale = 1.0
    if "sigmoid" in params:
        try:
            scale = float(params["sigmoid"])
        except ValueError:
            scale = float("nan")
        if not np.isfinite(scale) or scale <= 0:
            raise ConfigError(f"sigmoid must be a positive number, got {params['sigmoid']!r} "
                              f"in objective {objective!r}")
    if name in ("binary", "multiclassova", "cross_entropy"):
        link = K.LINK_SIGMOID
    elif name == "multiclass":
        link = K.LINK_SOFTMAX
    elif name == "cross_entropy_lambda":
        link = K.LINK_SOFTPLUS
    elif name in _EXP_OBJECTIVES:
        link = K.LINK_EXP
    else:
        link = K.LINK_SIGNED_SQUARE if "sqrt" in params else K.LINK_IDENTITY
    return name, link, scale


def _model_text(model: Any) -> tuple[str, int]:
    """(model text, best iteration) of a Booster, scikit-learn model, model string or path."""
    if hasattr(model, "booster_"):  # LightGBM's scikit-learn estimators
        model = model.booster_
    if hasattr(model, "model_to_string"):
        # num_iteration=-1: every tree; best_iteration is kept apart, as the Booster keeps it.
        best = int(getattr(model, "best_iteration", 0) or 0)
        return model.model_to_string(num_iteration=-1), max(best, 0)
    if isinstance(model, str) and model.lstrip().split("\n", 1)[0].strip() == "tree":
        return model, 0
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ConfigError(f"model must be a LightGBM Booster, model string or model file, "
                              f"got a path that is not a file: {str(path)!r}")
        return path.read_text(), 0
    raise ConfigError("model must be a LightGBM Booster, model string or model file, "
                      f"got {type(model).__name__}")


def _parse_text(text: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Header fields and per-tree fields of a LightGBM text model."""
    lines = [ln.strip() for ln in text.splitlines()]
    if not lines or lines[0] != "tree":
        raise ConfigError("model must be a LightGBM text model starting with 'tree', got "
                          f"{(lines[0] if lines else '')[:40]!r}")
    header: dict[str, Any] = {}
    trees: list[dict[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line == "end of trees":
            return header, trees
        key, sep, val = line.partition("=")
        if key == "Tree":
            trees.append({})
        if trees:
            if key == "is_linear" and val.strip() not in ("", "0"):
                raise ConfigError(f"model: linear trees (linear_tree=True) are not supported, "
                                  f"got is_linear={val.strip()} in tree {len(trees) - 1}")
            if key not in _TREE_FIELDS:
                raise ConfigError(f"model: tree {len(trees) - 1} has field {key!r}, which "
                                  "TreeScorer does not know; refusing rather than scoring it "
                                  "wrongly")
            trees[-1][key] = val
        elif key == "average_output":
            raise ConfigError("model: random forest models (average_output) are not supported")
        elif key not in _HEADER_FIELDS:
            raise ConfigError(f"model: header field {key!r} is not supported; refusing rather "
                              "than scoring the model wrongly")
        else:
            header[key] = val if sep else True
    raise ConfigError("model must end its trees with 'end of trees', got a truncated model")


def _ints(tree: Mapping[str, str], key: str, n: int, t: int, dtype: Any = np.int64) -> np.ndarray:
    raw = tree.get(key, "")
    try:
        arr = np.array(raw.split(), dtype=np.float64 if dtype is np.float64 else np.int64)
    except ValueError as exc:
        raise ConfigError(f"model: tree {t} field {key!r} must be numbers, got {raw[:40]!r}"
                          ) from exc
    if arr.shape[0] != n:
        raise ConfigError(f"model: tree {t} field {key!r} must have {n} values, "
                          f"got {arr.shape[0]}")
    return arr


def _flatten(trees: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """Concatenate LightGBM trees into global arrays (children and categorical indices made
    global; leaves ``~leaf`` with a global leaf number)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in _ARRAYS}
    n_nodes = n_leaves = n_cats = n_words = 0
    parts["cat_boundaries"].append(np.zeros(1, dtype=np.int64))
    for t, tree in enumerate(trees):
        try:
            nl = int(tree.get("num_leaves", ""))
            nc = int(tree.get("num_cat", "0"))
        except ValueError as exc:
            raise ConfigError(f"model: tree {t} must have integer num_leaves and num_cat") from exc
        if nl < 1 or nc < 0:
            raise ConfigError(f"model: tree {t} must have num_leaves >= 1 and num_cat >= 0, "
                              f"got {nl} and {nc}")
        parts["leaf_value"].append(_ints(tree, "leaf_value", nl, t, np.float64))
        if nl == 1:
            parts["tree_root"].append(np.array([~n_leaves]))
            n_leaves += 1
            continue
        ni = nl - 1
        feat = _ints(tree, "split_feature", ni, t)
        thr = _ints(tree, "threshold", ni, t, np.float64)
        dt = _ints(tree, "decision_type", ni, t)
        kids = [_ints(tree, side, ni, t) for side in ("left_child", "right_child")]
        for side, kid in zip(("left_child", "right_child"), kids):
            if kid.size and (kid.max() >= ni or kid.min() < -nl):
                raise ConfigError(f"model: tree {t} {side} must lie in [-{nl}, {ni}), "
                                  f"got {int(kid.min())}..{int(kid.max())}")
            parts[side].append(np.where(kid >= 0, kid + n_nodes, ~(~kid + n_leaves)))
        is_cat = (dt & 1) == 1
        if is_cat.any():
            if nc == 0:
                raise ConfigError(f"model: tree {t} has categorical splits but num_cat=0")
            bounds = _ints(tree, "cat_boundaries", nc + 1, t)
            words = tree.get("cat_threshold", "").split()
            cats = np.array(words, dtype=np.uint64)
            if bounds[0] != 0 or bounds[-1] != cats.shape[0] or np.any(np.diff(bounds) < 0):
                raise ConfigError(f"model: tree {t} cat_boundaries must rise from 0 to "
                                  f"{cats.shape[0]}, got {bounds.tolist()}")
            if cats.size and cats.max() > np.iinfo(np.uint32).max:
                raise ConfigError(f"model: tree {t} cat_threshold must be 32-bit words")
            cat_idx = thr[is_cat]
            if np.any(cat_idx != np.floor(cat_idx)) or np.any((cat_idx < 0) | (cat_idx >= nc)):
                raise ConfigError(f"model: tree {t} categorical thresholds must be bitset "
                                  f"indices in [0, {nc}), got {cat_idx.tolist()}")
            thr = np.where(is_cat, thr + n_cats, thr)
            parts["cat_boundaries"].append(bounds[1:] + n_words)
            parts["cat_threshold"].append(cats)
            n_cats += nc
            n_words += cats.shape[0]
        parts["split_feature"].append(feat)
        parts["threshold"].append(thr)
        parts["decision_type"].append(dt)
        parts["tree_root"].append(np.array([n_nodes]))
        n_nodes += ni
        n_leaves += nl
    return {k: (np.concatenate(v) if v else np.zeros(0)).astype(_ARRAYS[k])
            for k, v in parts.items()}


def _check_structure(a: Mapping[str, np.ndarray], n_features: int) -> None:
    """Refuse arrays a kernel could read out of bounds or loop forever on.

    Kernels do not check bounds (they are on the request path), so this runs once at load:
    features and bitset indices in range, every node and leaf reached from exactly one parent
    or root, and children numbered after their parent (LightGBM numbers nodes in split order),
    which together rule out cycles.
    """
    n_nodes = a["split_feature"].shape[0]
    n_leaves = a["leaf_value"].shape[0]
    for name in ("threshold", "decision_type", "left_child", "right_child"):
        if a[name].shape != (n_nodes,):
            raise ConfigError(f"{name} must have shape ({n_nodes},) like split_feature, "
                              f"got {a[name].shape}")
    feat = a["split_feature"].astype(np.int64)
    if n_nodes and (feat.min() < 0 or feat.max() >= n_features):
        raise ConfigError(f"split_feature must lie in [0, {n_features}), "
                          f"got {int(feat.min())}..{int(feat.max())}")
    dt = a["decision_type"]
    if np.any(((dt >> 2) & 3) == 3) or np.any(dt >= 16):
        raise ConfigError(f"decision_type must use LightGBM's bits (< 16, missing type < 3), "
                          f"got {sorted(set(dt.tolist()))}")
    bounds, words = a["cat_boundaries"], a["cat_threshold"]
    if (bounds.ndim != 1 or bounds.shape[0] < 1 or bounds[0] != 0
            or bounds[-1] != words.shape[0] or np.any(np.diff(bounds) < 0)):
        raise ConfigError(f"cat_boundaries must rise from 0 to {words.shape[0]}, "
                          f"got {bounds[:10].tolist()}")
    is_cat = (dt & 1) == 1
    cat_idx = a["threshold"][is_cat]
    if np.any(cat_idx != np.floor(cat_idx)) or np.any(
            (cat_idx < 0) | (cat_idx >= bounds.shape[0] - 1)):
        raise ConfigError(f"threshold of categorical nodes must be bitset indices in "
                          f"[0, {bounds.shape[0] - 1})")
    roots = a["tree_root"].astype(np.int64)
    kids = np.concatenate([roots, a["left_child"], a["right_child"]]).astype(np.int64)
    if kids.size and (kids.max() >= n_nodes or kids.min() < -n_leaves):
        raise ConfigError(f"left_child, right_child and tree_root must lie in "
                          f"[-{n_leaves}, {n_nodes})")
    parent = np.concatenate([np.full(roots.shape[0], -1), np.arange(n_nodes),
                             np.arange(n_nodes)])
    internal = kids >= 0
    if np.any(kids[internal] <= parent[internal]):
        raise ConfigError("left_child and right_child must number children after their parent")
    if (np.any(np.bincount(kids[internal], minlength=n_nodes) != 1)
            or np.any(np.bincount(~kids[~internal], minlength=n_leaves) != 1)):
        raise ConfigError("every node and leaf must have exactly one parent or be one "
                          "tree's root")


def _kernel_layout(a: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The kernels' arrays (see :mod:`bta.scoring._kernels`) from the flattened model.

    Nodes are renumbered breadth-first within each tree, so that siblings are adjacent, and
    leaves become absorbing nodes. Per node:

    - where a missing value goes: for ``missing_type=None`` NaN becomes 0, so it goes left iff
      ``0 <= threshold``; otherwise the node's default direction;
    - the threshold as compared: within ``[-1e-35, 1e-35]`` it moves to the edge of that
      interval. Inputs that small are zero to LightGBM, and with the moved threshold they
      compare as zero does (``0 <= t`` for ``t >= 0``: left; for ``t < 0``: right), while every
      larger input compares as before.

    Returns ``row_nodes, block_nodes, flags, values, trees, cats, columns, has_cat``.
    """
    thr0, dt = a["threshold"], a["decision_type"].astype(np.int64)
    feat0 = a["split_feature"].astype(np.int64)
    cat = (dt & 1) == 1
    missing = (dt >> 2) & 3
    miss_left = np.where(missing == 0, thr0 >= 0.0, (dt & 2) == 2)
    flags = np.where(cat, K.CATEGORICAL, np.where(miss_left, K.MISSING_LEFT, 0)
                     | np.where(missing == 1, K.ZERO_MISSING, 0))
    z = K.ZERO_THRESHOLD
    tiny = ~cat & (np.abs(thr0) <= z)
    thr = np.where(tiny, np.where(thr0 >= 0, z, np.nextafter(-z, -np.inf)), thr0)
    # One expanded column per (feature, missing rule); nodes with missing_type=None all read
    # NaN as 0, so a model trained without NaN needs one column per feature.
    kind = np.select([cat, missing == 0, missing == 2, missing == 1],
                     [K.COL_RAW, K.COL_NAN_ZERO, np.where(miss_left, K.COL_NAN_LEFT, K.COL_RAW),
                      np.where(miss_left, K.COL_ZERO_LEFT, K.COL_ZERO_RIGHT)])
    keys, col_of_node = np.unique(feat0 * K.N_COL_KINDS + kind, return_inverse=True)
    columns = np.stack([keys // K.N_COL_KINDS, keys % K.N_COL_KINDS], axis=1).astype(np.int32)
    # Leaves read a column that never holds NaN (NaN would step out of a leaf): the first such
    # column, or one added for them.
    no_nan = np.isin(columns[:, 1], [K.COL_NAN_ZERO, K.COL_NAN_LEFT, K.COL_ZERO_LEFT])
    if no_nan.any():
        leaf_column = int(np.argmax(no_nan))
    else:
        leaf_column = columns.shape[0]
        columns = np.concatenate([columns, np.array([[0, K.COL_NAN_ZERO]], dtype=np.int32)])
    column = np.where(cat, ~col_of_node.reshape(-1), col_of_node.reshape(-1))

    # Breadth-first, all trees at once, level by level; siblings are appended as a pair.
    roots = a["tree_root"].astype(np.int64)
    old, tree, depth, first_entry = [roots], [np.arange(roots.shape[0])], [0 * roots], []
    frontier, frontier_tree, level, n_entries = roots, np.arange(roots.shape[0]), 0, 0
    while True:
        n_entries += frontier.shape[0]
        split = frontier >= 0
        first_entry.append(np.where(split, n_entries + 2 * (np.cumsum(split) - 1), -1))
        if not split.any():
            break
        parents = frontier[split]
        frontier = np.stack([a["left_child"][parents], a["right_child"][parents]],
                            axis=1).reshape(-1).astype(np.int64)
        frontier_tree = np.repeat(frontier_tree[split], 2)
        level += 1
        old.append(frontier)
        tree.append(frontier_tree)
        depth.append(np.full(frontier.shape[0], level))
    e_old, e_tree, e_depth = np.concatenate(old), np.concatenate(tree), np.concatenate(depth)
    e_first = np.concatenate(first_entry)
    order = np.argsort(e_tree, kind="stable")  # per tree contiguous, siblings kept adjacent
    new_id = np.empty_like(order)
    new_id[order] = np.arange(order.shape[0])
    n = order.shape[0]
    o, f_e = e_old[order], e_first[order]
    is_leaf = o < 0
    inner = np.where(is_leaf, 0, o)  # any valid index for leaves; masked below
    has_inner = feat0.shape[0] > 0
    first = np.where(is_leaf, np.arange(n), new_id[np.where(is_leaf, 0, f_e)])
    # Leaves: threshold +inf (nothing is greater) and MISSING_LEFT (NaN stays too).
    node_thr = np.where(is_leaf, np.inf, thr[inner] if has_inner else 0.0)
    row_nodes = np.zeros(n, dtype=K.ROW_NODE)
    row_nodes["first"] = first
    row_nodes["feature"] = np.where(is_leaf, 0, feat0[inner] if has_inner else 0)
    row_nodes["thr"] = node_thr
    block_nodes = np.zeros(n, dtype=K.BLOCK_NODE)
    block_nodes["first"] = first
    block_nodes["column"] = np.where(is_leaf, leaf_column, column[inner] if has_inner else 0)
    block_nodes["thr"] = node_thr
    node_flags = np.where(is_leaf, K.MISSING_LEFT, flags[inner] if has_inner else 0)
    values = np.where(is_leaf, a["leaf_value"][np.where(is_leaf, ~o, 0)], 0.0)

    # Lockstep depth per tree: the depth that 3 in 4 of its leaves are at or above. Walking
    # every row to the deepest leaf wastes steps on lopsided (leaf-wise) trees; the rows
    # still inside the tree after this depth finish one by one.
    n_trees = roots.shape[0]
    trees = np.zeros((n_trees, 2), dtype=np.int32)
    trees[:, 0] = new_id[:n_trees]
    leaf_tree, leaf_depth = e_tree[e_old < 0], e_depth[e_old < 0]
    by = np.lexsort((leaf_depth, leaf_tree))
    counts = np.bincount(leaf_tree, minlength=n_trees)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    trees[:, 1] = leaf_depth[by][starts + (3 * (counts - 1)) // 4]

    n_bitsets = a["cat_boundaries"].shape[0] - 1
    cats = np.concatenate([a["cat_boundaries"].astype(np.int64) + n_bitsets + 1,
                           a["cat_threshold"].astype(np.int64)]).astype(np.uint32)
    # Flat (1-d) arrays: a 2-d index costs a multiplication by a run-time stride per access.
    return (row_nodes, block_nodes, node_flags.astype(np.uint8), values.astype(np.float64),
            trees.reshape(-1), cats, np.ascontiguousarray(columns).reshape(-1),
            bool(cat.any()))


class TreeScorer:
    """A LightGBM tree ensemble flattened into arrays, scored by compiled kernels.

    Build one with :meth:`from_lightgbm` (a Booster, a model string or a model file) or
    :meth:`load`; the constructor takes the flattened arrays themselves (what :meth:`to_dict`
    gives back), so a model ships and scores without LightGBM.

    Parameters
    ----------
    split_feature : ndarray of int32, shape (n_nodes,)
        Feature tested by each internal node of every tree, trees one after another.
    threshold : ndarray of float64, shape (n_nodes,)
        ``x <= threshold`` goes left; for categorical nodes, the node's bitset index into
        ``cat_boundaries``.
    decision_type : ndarray of uint8, shape (n_nodes,)
        LightGBM's bits: 1 categorical, 2 default left, ``(d >> 2) & 3`` the missing type
        (0 None, 1 Zero, 2 NaN).
    left_child, right_child : ndarray of int32, shape (n_nodes,)
        Child node index, or ``~leaf`` (negative) for a leaf, in global numbering.
    leaf_value : ndarray of float64, shape (n_leaves,)
    cat_boundaries : ndarray of int32, shape (n_bitsets + 1,)
        Bitset ``b`` is ``cat_threshold[cat_boundaries[b]:cat_boundaries[b + 1]]``.
    cat_threshold : ndarray of uint32, shape (n_words,)
        Category ``c`` is in a bitset iff bit ``c % 32`` of its word ``c // 32`` is set.
    tree_root : ndarray of int32, shape (n_trees,)
        First node of each tree, or ``~leaf`` for a tree that is a single leaf. Tree
        ``i * n_classes + k`` is iteration ``i``'s tree for class ``k``.
    n_features : int
        Width of the rows the model scores.
    objective : str
        LightGBM objective string, e.g. ``"binary sigmoid:1"`` or ``"multiclass num_class:3"``.
    n_classes : int, default 1
        Trees per iteration (LightGBM's ``num_tree_per_iteration``).
    feature_names : sequence of str, optional
        Defaults to ``Column_0 ...``, LightGBM's names for unnamed features.
    best_iteration : int, default 0
        Iterations used when ``predict`` gets ``num_iteration=None``; 0 means all.
    warmup : bool, default True
        Compile (or load from numba's cache) every kernel now, see :meth:`warmup`.

    Raises
    ------
    ConfigError
        Unknown objective, arrays of the wrong shape or dtype, or a structure a kernel could
        not walk safely (indices out of range, a node with two parents).

    Notes
    -----
    The scoring rules are LightGBM's, listed in the module docstring; raw scores equal
    ``Booster.predict(X, raw_score=True)`` bit for bit, as trees are summed in LightGBM's
    order. Transforms: binary and ``multiclassova``: ``1 / (1 + exp(-sigmoid * raw))``;
    ``multiclass``: softmax; ``cross_entropy``: ``1 / (1 + exp(-raw))``;
    ``cross_entropy_lambda``: ``log1p(exp(raw))``; poisson, gamma, tweedie: ``exp(raw)``;
    regression objectives: identity (``sign(raw) * raw**2`` with ``reg_sqrt``).

    Nothing is mutated while scoring and the kernels release the GIL, so one scorer serves
    many threads at once.

    Examples
    --------
    >>> scorer = TreeScorer.from_lightgbm(booster)               # doctest: +SKIP
    >>> scorer.predict(X)                                         # doctest: +SKIP
    >>> scorer.predict_one(X[0], out=buf)                         # doctest: +SKIP
    """

    def __init__(self, *, split_feature: np.ndarray, threshold: np.ndarray,
                 decision_type: np.ndarray, left_child: np.ndarray, right_child: np.ndarray,
                 leaf_value: np.ndarray, cat_boundaries: np.ndarray, cat_threshold: np.ndarray,
                 tree_root: np.ndarray, n_features: int, objective: str, n_classes: int = 1,
                 feature_names: Sequence[str] | None = None, best_iteration: int = 0,
                 warmup: bool = True) -> None:
        arrays = dict(split_feature=split_feature, threshold=threshold,
                      decision_type=decision_type, left_child=left_child,
                      right_child=right_child, leaf_value=leaf_value,
                      cat_boundaries=cat_boundaries, cat_threshold=cat_threshold,
                      tree_root=tree_root)
        for name, dtype in _ARRAYS.items():
            arr = np.asarray(arrays[name])
            if arr.ndim != 1 or (arr.size and not np.can_cast(arr.dtype, dtype, "same_kind")):
                raise ConfigError(f"{name} must be a 1-d array of {np.dtype(dtype).name}, got "
                                  f"{arr.dtype} with shape {arr.shape}")
            if arr.size and np.issubdtype(arr.dtype, np.integer) and (
                    arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
                raise ConfigError(f"{name} must fit in {np.dtype(dtype).name}")
            arrays[name] = np.array(arr, dtype=dtype)  # a copy: the scorer owns its arrays
        n_features = int(n_features)
        validate_args(_PARAMS, "TreeScorer", n_features=n_features)
        n_classes = int(n_classes)
        n_trees = arrays["tree_root"].shape[0]
        if n_trees == 0:
            raise ConfigError("tree_root must list at least one tree, got none")
        if n_classes < 1 or n_trees % n_classes:
            raise ConfigError(f"n_classes must be a positive divisor of the number of trees "
                              f"({n_trees}), got {n_classes}")
        if not np.all(np.isfinite(arrays["leaf_value"])):
            raise ConfigError("leaf_value must be finite numbers")
        name, link, scale = _parse_objective(str(objective))
        if (name == "multiclass" or name == "multiclassova") != (n_classes > 1):
            raise ConfigError(f"n_classes must be > 1 exactly for multiclass objectives, got "
                              f"{n_classes} with objective {objective!r}")
        _check_structure(arrays, n_features)
        if feature_names is None:
            feature_names = [f"Column_{i}" for i in range(n_features)]
        names = tuple(str(f) for f in feature_names)
        if len(names) != n_features:
            raise ConfigError(f"feature_names must have {n_features} names (one per feature), "
                              f"got {len(names)}")
        best_iteration = int(best_iteration)
        validate_args(_PARAMS, "TreeScorer", best_iteration=best_iteration)

        self._arrays = arrays
        for arr in arrays.values():
            arr.flags.writeable = False
        self._n_features = n_features
        self._n_classes = n_classes
        self._objective = str(objective)
        self._name, self._link, self._scale = name, link, scale
        self._feature_names = names
        self._best_iteration = best_iteration
        self._default_n_iter = self._n_iter(None)
        # Kernel arguments, in kernel order, shared by every model of any size: numba compiles
        # each kernel once per process (or loads it from its cache) for all models.
        (row_nodes, block_nodes, flags, values, trees, cats, columns,
         has_cat) = _kernel_layout(arrays)
        self._one_args = (row_nodes, flags, values, trees, cats,
                          int(np.bitwise_or.reduce(flags, initial=0)))
        # Full argument tuples for the default number of iterations: one unpacking per request.
        self._one_score = self._one_args + (self._default_n_iter, link, scale)
        self._one_raw = self._one_args + (self._default_n_iter, K.LINK_IDENTITY, 1.0)
        self._batch_args = (block_nodes, values, trees, cats, columns, has_cat)
        if warmup:
            self.warmup()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_lightgbm(cls, model: Any, *, feature_names: Sequence[str] | None = None,
                      warmup: bool = True) -> "TreeScorer":
        """Flatten a LightGBM model.

        Parameters
        ----------
        model : lightgbm.Booster, LGBMModel, str or path-like
            A Booster (or a fitted scikit-learn estimator), a model string
            (``Booster.model_to_string()``) or the path of a model file.
        feature_names : sequence of str, optional
            The names the caller will feed, in order; checked once here against the model's.
        warmup : bool, default True
            Compile the kernels now.

        Returns
        -------
        TreeScorer

        Raises
        ------
        ConfigError
            Unsupported model: linear trees, random forest averaging, an objective without a
            known transform (ranking, custom), or any field this reader does not know.
        SchemaError
            ``feature_names`` differ from the model's.

        Notes
        -----
        A Booster keeps every tree and its ``best_iteration`` (set by early stopping): as in
        ``Booster.predict``, ``predict(num_iteration=None)`` then uses only the first
        ``best_iteration`` iterations. A model string or file has no best iteration (LightGBM
        saves up to the best one by default), so all its trees are used.

        The binary ``sigmoid`` parameter is printed with 6 significant digits in model text,
        and LightGBM predicts with that printed value even in the Booster that was trained
        with more digits; so does the scorer.
        """
        text, best = _model_text(model)
        header, trees = _parse_text(text)
        if header.get("version") not in ("v3", "v4"):
            raise ConfigError(f"version must be 'v3' or 'v4' (LightGBM 3 or 4 model text), got "
                              f"{header.get('version')!r}")
        if "objective" not in header:
            raise ConfigError("objective must be given in the model (a model trained with a "
                              "custom objective has none), got no objective line")
        objective = str(header["objective"])
        try:
            n_features = int(header.get("max_feature_idx", "")) + 1
            n_classes = int(header.get("num_tree_per_iteration", "1"))
        except ValueError as exc:
            raise ConfigError("model: max_feature_idx and num_tree_per_iteration must be "
                              "integers") from exc
        model_names = str(header.get("feature_names", "")).split()
        if len(model_names) != n_features:
            raise ConfigError(f"model: feature_names must have {n_features} names, "
                              f"got {len(model_names)}")
        if feature_names is not None:
            _check_names(list(feature_names), model_names, "feature_names")
        arrays = _flatten(trees)
        n_iter = len(trees) // max(n_classes, 1)
        return cls(**arrays, n_features=n_features, objective=objective, n_classes=n_classes,
                   feature_names=model_names, best_iteration=min(best, n_iter), warmup=warmup)

    # ------------------------------------------------------------------ properties
    @property
    def n_features(self) -> int:
        """Width of the rows the model scores."""
        return self._n_features

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._feature_names

    @property
    def n_classes(self) -> int:
        """Scores per row: trees per iteration (1 for binary and regression)."""
        return self._n_classes

    @property
    def n_trees(self) -> int:
        return int(self._arrays["tree_root"].shape[0])

    @property
    def n_iterations(self) -> int:
        return self.n_trees // self._n_classes

    @property
    def best_iteration(self) -> int:
        """Iterations used by default; 0 means all."""
        return self._best_iteration

    @property
    def objective(self) -> str:
        """Objective name (``"binary"``, ``"multiclass"``, ``"regression"`` ...)."""
        return self._name

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The flattened model (read-only views), as the constructor takes them."""
        return dict(self._arrays)

    def __repr__(self) -> str:
        return (f"TreeScorer(objective={self._objective!r}, n_trees={self.n_trees}, "
                f"n_classes={self._n_classes}, n_features={self._n_features})")

    # ------------------------------------------------------------------ scoring
    def _n_iter(self, num_iteration: int | None) -> int:
        """Iterations to use, with ``Booster.predict``'s rules: None -> best iteration (all if
        none), <= 0 -> all, more than there are -> all."""
        total = self.n_iterations
        if num_iteration is None:
            num_iteration = self._best_iteration
        n = int(num_iteration)
        return total if n <= 0 or n > total else n

    def _link_args(self, raw_score: bool) -> tuple[int, float]:
        return (K.LINK_IDENTITY, 1.0) if raw_score else (self._link, self._scale)

    def predict(self, X: Any, *, raw_score: bool = False,
                num_iteration: int | None = None) -> np.ndarray:
        """Score a matrix of rows.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
            Numbers; NaN is missing. Categorical features as their integer codes. A DataFrame
            must have the model's feature names as columns, in order.
        raw_score : bool, default False
            Return the sum of the trees, without the objective's transform.
        num_iteration : int, optional
            Use the first ``num_iteration`` iterations; None: the best iteration if there is
            one, else all; ``<= 0``: all (as ``Booster.predict``).

        Returns
        -------
        ndarray of float64, shape (n_rows,) or (n_rows, n_classes)
            2-d for multiclass models only, as LightGBM returns.

        Raises
        ------
        SchemaError
            ``X`` is not 2-d numbers with ``n_features`` columns, or a DataFrame's columns are
            not the model's features.
        """
        X = self._as_matrix(X)
        out = np.empty((X.shape[0], self._n_classes), dtype=np.float64)
        link, scale = self._link_args(raw_score)
        n_iter = self._n_iter(num_iteration)
        if X.shape[0] == 1:
            # One row: the single-row kernel, without the block kernel's scratch allocations.
            K.tree_predict_one(X[0], *self._one_args, n_iter, link, scale, out[0])
        elif X.shape[0] >= _PARALLEL_MIN_ROWS and numba.get_num_threads() > 1:
            K.tree_predict_parallel(X, *self._batch_args, n_iter, link, scale, out)
        else:
            K.tree_predict(X, *self._batch_args, n_iter, link, scale, out)
        return out[:, 0] if self._n_classes == 1 else out

    def predict_one(self, x: np.ndarray, raw_score: bool = False, *,
                    num_iteration: int | None = None,
                    out: np.ndarray | None = None) -> float | np.ndarray:
        """Score one row, the serving path.

        Parameters
        ----------
        x : ndarray of float64, shape (n_features,)
            Other dtypes or layouts are converted first (one allocation).
        raw_score : bool, default False
        num_iteration : int, optional
            As in :meth:`predict`.
        out : ndarray of float64, shape (n_classes,), optional
            Written in place and returned: with a contiguous float64 ``x`` nothing at all is
            allocated.

        Returns
        -------
        float or ndarray of float64, shape (n_classes,)
            Without ``out``: the score as a float for a one-class model (binary, regression:
            the scalar :meth:`predict` gives per row, and what :class:`LinearScorer` returns),
            a new array for a multiclass model. With ``out``: ``out``, filled.

        Raises
        ------
        SchemaError
            ``x`` has the wrong width, or ``out`` the wrong shape or dtype.

        Notes
        -----
        Nothing is compiled here (see :meth:`warmup`) and nothing is shared between calls:
        any number of threads may call this at once, and the kernel runs without the GIL.
        A model without categorical splits walks eight trees at a time; a row holding NaN
        takes a slightly slower step (one more test per node).

        Examples
        --------
        >>> p_click = scorer.predict_one(x)                   # doctest: +SKIP
        >>> buf = np.empty(scorer.n_classes)                  # doctest: +SKIP
        >>> scorer.predict_one(x, out=buf)[0]                 # doctest: +SKIP
        """
        # The checks are ordered cheapest first and kept to what the kernel needs: this is the
        # per-request path, where each attribute lookup is a measurable share of the latency.
        if type(x) is not np.ndarray or x.dtype is not _F64 or x.ndim != 1 \
                or not ((fl := x.flags).c_contiguous and fl.aligned):
            x = self._as_row(x)
        if x.shape[0] != self._n_features:
            raise SchemaError(f"x must have {self._n_features} features (one per model "
                              f"feature), got {x.shape[0]}")
        given = out is not None
        if not given:
            out = np.empty(self._n_classes, dtype=np.float64)
        elif type(out) is not np.ndarray or out.dtype is not _F64 or out.ndim != 1 \
                or out.shape[0] != self._n_classes \
                or not ((fl := out.flags).c_contiguous and fl.aligned and fl.writeable):
            raise SchemaError(f"out must be a writable contiguous float64 array of shape "
                              f"({self._n_classes},), got {type(out).__name__} "
                              f"{getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}")
        if num_iteration is None:
            args = self._one_raw if raw_score else self._one_score
        else:
            args = self._one_args + (self._n_iter(num_iteration),) + (
                (K.LINK_IDENTITY, 1.0) if raw_score else (self._link, self._scale))
        K.tree_predict_one(x, *args, out)
        if given or self._n_classes > 1:
            return out
        return float(out[0])

    def _as_row(self, x: Any) -> np.ndarray:
        try:
            arr = np.require(x, dtype=np.float64, requirements=["C", "A"])
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"x must be numbers, got {type(x).__name__}") from exc
        if arr.ndim != 1:
            raise SchemaError(f"x must be a 1-d array of {self._n_features} features, got "
                              f"shape {arr.shape}")
        return arr

    def _as_matrix(self, X: Any) -> np.ndarray:
        columns = getattr(X, "columns", None)
        if columns is not None:
            _check_names([str(c) for c in columns], list(self._feature_names), "X.columns",
                         SchemaError)
        try:
            # C-contiguous, aligned, writable float64: the one array type the kernels are
            # compiled for (numba types read-only or unaligned arrays apart, and would compile
            # again while a request waits); anything else is copied once.
            arr = np.require(X, dtype=np.float64, requirements=["C", "A", "W"])
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"X must be numbers, got {type(X).__name__} that does not "
                              f"convert to float64 ({exc})") from exc
        if arr.ndim != 2 or arr.shape[1] != self._n_features:
            raise SchemaError(f"X must be a 2-d array with {self._n_features} columns (one per "
                              f"model feature), got shape {arr.shape}")
        return arr

    def warmup(self) -> None:
        """Compile every kernel this scorer calls (or load it from numba's on-disk cache).

        The kernels take the model as arrays, so they are compiled once per process for all
        models; called by the constructor unless ``warmup=False``, in which case serving code
        must call it before the first request.
        """
        x = np.zeros(self._n_features, dtype=np.float64)
        X = np.zeros((1, self._n_features), dtype=np.float64)
        out = np.empty((1, self._n_classes), dtype=np.float64)
        K.tree_predict_one(x, *self._one_args, 0, self._link, self._scale, out[0])
        # Rows that arrive read-only (views of immutable buffers) are typed apart by numba.
        x.flags.writeable = False
        K.tree_predict_one(x, *self._one_args, 0, self._link, self._scale, out[0])
        K.tree_predict(X, *self._batch_args, 0, self._link, self._scale, out)
        K.tree_predict_parallel(X, *self._batch_args, 0, self._link, self._scale, out)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """The model as JSON-able metadata plus arrays (copies); :meth:`from_dict` inverts it."""
        return {"format": _FORMAT, "format_version": FORMAT_VERSION,
                "objective": self._objective, "n_features": self._n_features,
                "n_classes": self._n_classes, "feature_names": list(self._feature_names),
                "best_iteration": self._best_iteration,
                "arrays": {k: v.copy() for k, v in self._arrays.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, warmup: bool = True) -> "TreeScorer":
        """Rebuild a scorer from :meth:`to_dict`'s output (validated like a new model)."""
        if data.get("format") != _FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"data must be a {_FORMAT} of format_version {FORMAT_VERSION}, "
                              f"got {data.get('format')!r} version "
                              f"{data.get('format_version')!r}")
        arrays = data.get("arrays", {})
        missing = [k for k in _ARRAYS if k not in arrays]
        if missing:
            raise ConfigError(f"arrays must include {list(_ARRAYS)}, got no {missing[0]!r}")
        return cls(**{k: arrays[k] for k in _ARRAYS}, n_features=data["n_features"],
                   objective=data["objective"], n_classes=data["n_classes"],
                   feature_names=data["feature_names"], best_iteration=data["best_iteration"],
                   warmup=warmup)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to ``path`` as one ``.npz`` file: the arrays plus a JSON entry
        ``meta`` (no pickles, so :meth:`load` never runs code from the file)."""
        d = self.to_dict()
        arrays = d.pop("arrays")
        with open(path, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(d)), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, warmup: bool = True) -> "TreeScorer":
        """Read a model written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            try:
                meta = json.loads(str(z["meta"]))
            except (KeyError, ValueError) as exc:
                raise ConfigError(f"path must be a TreeScorer file written by save(), got "
                                  f"{str(path)!r} without a valid meta entry") from exc
            meta["arrays"] = {k: z[k] for k in z.files if k != "meta"}
        return cls.from_dict(meta, warmup=warmup)


def _check_names(got: list[str], expected: list[str], what: str,
                 cls: type = SchemaError) -> None:
    """Raise ``cls`` naming the first position where ``got`` differs from ``expected``."""
    if len(got) != len(expected):
        raise cls(f"{what} must have {len(expected)} names (the model's features), "
                  f"got {len(got)}")
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            raise cls(f"{what}[{i}] must be {e!r} (the model's feature {i}), got {g!r}")

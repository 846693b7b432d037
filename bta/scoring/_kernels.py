"""Numba kernels of the compiled scorers.

Tree ensembles
--------------
The trees module flattens a model into a few arrays; every model shares the same compiled
kernels (so a new model never meets stale compiled code):

- ``row_nodes`` (:data:`ROW_NODE` records) and ``block_nodes`` (:data:`BLOCK_NODE` records):
  one 16-byte record per node, so that a step reads one cache line: the first child, the
  feature (single rows) or expanded column (blocks of rows), and the threshold.
  Siblings are adjacent, so the next node is ``first + go_right``: no branch. Leaves are nodes
  too: their first child is themselves and their threshold ``+inf``, so a step from a leaf
  stays there whatever the input ("absorbing" leaves) and walks of different lengths can run
  side by side for a fixed number of steps.
- ``flags`` (uint8): per node :data:`CATEGORICAL`, :data:`MISSING_LEFT`, :data:`ZERO_MISSING`
  (leaves: :data:`MISSING_LEFT`, so that NaN stays at a leaf too).
- ``values`` (float64): per node its leaf value (0 for internal nodes).
- ``trees`` (int32, (2 * n_trees,)): per tree ``[root, lockstep depth]``.
- ``cats`` (uint32): bitset ``b`` is ``cats[cats[b]:cats[b + 1]]`` (offsets, then words).
- ``columns`` (int32, (2 * n_columns,)): per expanded column ``[feature, kind]``, see below.

Scoring one node reproduces LightGBM's ``NumericalDecision`` / ``CategoricalDecision`` (the
trees module moved thresholds within ``[-1e-35, 1e-35]`` so that inputs that small compare as
zero does, which is what they are to LightGBM): a categorical node sends ``x`` left iff
``int(x)`` (truncated) is in its bitset, NaN, negatives, infinities and values outside the
int32 range right; a numerical node sends ``x`` right iff ``x > threshold``, except missing
values, which go left iff the node has :data:`MISSING_LEFT`. Missing means NaN, and zero too at
nodes flagged :data:`ZERO_MISSING`.

Batch kernels first *expand* each block of rows: one column per (feature, missing rule) that
the model uses, with NaN (and, for zero-is-missing, zero) replaced by a value that goes the
right way whatever the threshold (``-inf``: left, NaN: right, as a step is ``right = not
(v <= threshold)``; ``0`` for LightGBM's ``missing_type=None``), so that a numerical step is
one comparison. A categorical node's column is ``~c`` (negative) for a column holding the raw
value; leaves read a column that never holds NaN. Trees run tree-outer, rows-inner: eight
rows advance one level at a time together ("lockstep": no data-dependent branch, eight
independent loads in flight) for the tree's lockstep depth, then rows not yet at a leaf
finish alone. The single-row kernel walks eight trees in lockstep instead, for the same
reason.

Every sum is LightGBM's: class ``k`` of a row is ``0.0 + tree[k] + tree[K + k] + ...`` in
tree order. The tree kernels therefore use :func:`bta._jit.exact_jit` (cached, ``nogil``, no
fastmath): ``reassoc`` would allow the compiler to split that sum. The linear kernels use
``serving_jit``: their reference (a BLAS dot product) sums in its own order anyway.

Node indices are unsigned: numba then skips its negative-index wraparound, a measurable part
of a step. The eight lockstep walks are written out as eight variables because numba has no
stack arrays, and a heap scratch would be an allocation per call.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from bta._jit import batch_jit, exact_jit, serving_jit

__all__ = [
    "CATEGORICAL", "MISSING_LEFT", "ZERO_MISSING", "ZERO_THRESHOLD", "BLOCK",
    "ROW_NODE", "BLOCK_NODE",
    "COL_RAW", "COL_NAN_ZERO", "COL_NAN_LEFT", "COL_ZERO_LEFT", "COL_ZERO_RIGHT",
    "N_COL_KINDS",
    "LINK_IDENTITY", "LINK_SIGMOID", "LINK_SOFTMAX", "LINK_EXP", "LINK_SIGNED_SQUARE",
    "LINK_SOFTPLUS",
    "tree_predict_one", "tree_predict", "tree_predict_parallel",
    "linear_dense", "linear_csr", "linear_sparse_row",
]

#: Node flag: categorical split (the threshold is a bitset number).
CATEGORICAL = 1
#: Node flag: a missing value goes left (else right).
MISSING_LEFT = 2
#: Node flag: zero is missing here too (LightGBM's ``missing_type=Zero``).
ZERO_MISSING = 4
_SPECIAL = CATEGORICAL | ZERO_MISSING
#: LightGBM's ``kZeroThreshold``: the float ``1e-35f`` widened to double. Inputs no larger in
#: magnitude are zero to LightGBM (its dense-row reader drops them; ``IsZero`` tests this).
ZERO_THRESHOLD = float(np.float32(1e-35))

#: Node record of the single-row kernel.
ROW_NODE = np.dtype([("first", np.uint32), ("feature", np.uint32), ("thr", np.float64)])
#: Node record of the batch kernels (``column``: expanded column, ``~c`` if categorical).
BLOCK_NODE = np.dtype([("first", np.uint32), ("column", np.int32), ("thr", np.float64)])

# Kinds of expanded columns. The batch step is ``right = not (v <= threshold)``, so NaN goes
# right and -inf goes left at any threshold, +-inf included (LightGBM writes ``inf`` for
# "NaN right, every number left" splits). Kinds: the raw value (categorical nodes, and
# numerical nodes that send NaN right); NaN replaced by 0 (LightGBM's missing_type=None); NaN
# sent left as -inf; NaN and zero sent left (-inf) or right (NaN), missing_type=Zero.
COL_RAW = 0
COL_NAN_ZERO = 1
COL_NAN_LEFT = 2
COL_ZERO_LEFT = 3
COL_ZERO_RIGHT = 4
N_COL_KINDS = 5

# Output transforms ("links"), by code; the trees module maps objectives onto them.
LINK_IDENTITY = 0
LINK_SIGMOID = 1        # 1 / (1 + exp(-scale * raw)), per class
LINK_SOFTMAX = 2
LINK_EXP = 3
LINK_SIGNED_SQUARE = 4  # sign(raw) * raw**2 (regression with reg_sqrt)
LINK_SOFTPLUS = 5       # log1p(exp(raw)) (cross_entropy_lambda)

# Rows scored together, tree by tree: 64 rows of 50-100 expanded columns (25-50 KiB, stored
# column-major so that row i of column c is at c * BLOCK + i) stay in the L1/L2 cache while a
# tree's nodes serve every row. A power of two, so that the address is a shift.
_BLOCK_SHIFT = np.uint32(6)
BLOCK = 1 << int(_BLOCK_SHIFT)

# Rows per parallel task: several blocks, so that the task's scratch allocation and start
# are amortized and the threads still get balanced work.
_TASK_ROWS = 8 * BLOCK

# A C cast to int is defined inside the int32 range only; LightGBM on x86-64 gets INT_MIN
# (negative: goes right) outside it, for NaN and for the infinities.
_INT32_END = 2147483648.0

# Unsigned constants for index arithmetic (uint32 op uint32 stays unsigned in numba; a plain
# int would make it signed again).
_U0, _U1, _U2, _U3 = np.uint32(0), np.uint32(1), np.uint32(2), np.uint32(3)
_U4, _U5, _U6, _U7 = np.uint32(4), np.uint32(5), np.uint32(6), np.uint32(7)
_U8 = np.uint32(8)


@exact_jit()
def _in_bitset(v, b, cats):  # pragma: no cover
    """1 if the raw categorical value ``v`` is in bitset ``b``, else 0."""
    if not (v > -1.0 and v < _INT32_END):
        return _U0
    c = np.uint32(int(v))  # truncates toward zero, as static_cast<int> does
    lo = cats[b]
    w = c >> _U5
    if w >= cats[b + _U1] - lo:
        return _U0
    return (cats[lo + w] >> (c & np.uint32(31))) & _U1


@exact_jit()
def _right(v, fl, thr):  # pragma: no cover
    """1 if the raw value ``v`` goes right at a numerical node with flags ``fl``, else 0."""
    if (fl & ZERO_MISSING) and -ZERO_THRESHOLD <= v <= ZERO_THRESHOLD:
        return _U0 if fl & MISSING_LEFT else _U1
    return np.uint32(v > thr) | (np.uint32(v != v) & np.uint32((fl & MISSING_LEFT) == 0))


@exact_jit()
def _finish(x, n, nodes, flags, cats):  # pragma: no cover
    """Walk the raw row ``x`` from node ``n`` down to its leaf, any node kind."""
    while nodes[n].first != n:
        node = nodes[n]
        fl = flags[n]
        v = x[node.feature]
        if fl & CATEGORICAL:
            n = node.first + _U1 - _in_bitset(v, np.uint32(int(node.thr)), cats)
        else:
            n = node.first + _right(v, fl, node.thr)
    return n


@exact_jit()
def _lockstep8(x, nodes, flags, depth, n0, n1, n2, n3, n4, n5, n6, n7):  # pragma: no cover
    """Advance eight walks of the raw row ``x`` by ``depth`` steps at numerical nodes, NaN
    allowed."""
    for _ in range(depth):
        r = nodes[n0]
        n0 = r.first + _right(x[r.feature], flags[n0], r.thr)
        r = nodes[n1]
        n1 = r.first + _right(x[r.feature], flags[n1], r.thr)
        r = nodes[n2]
        n2 = r.first + _right(x[r.feature], flags[n2], r.thr)
        r = nodes[n3]
        n3 = r.first + _right(x[r.feature], flags[n3], r.thr)
        r = nodes[n4]
        n4 = r.first + _right(x[r.feature], flags[n4], r.thr)
        r = nodes[n5]
        n5 = r.first + _right(x[r.feature], flags[n5], r.thr)
        r = nodes[n6]
        n6 = r.first + _right(x[r.feature], flags[n6], r.thr)
        r = nodes[n7]
        n7 = r.first + _right(x[r.feature], flags[n7], r.thr)
    return n0, n1, n2, n3, n4, n5, n6, n7


@exact_jit()
def _link_row(out, r, link, scale):  # pragma: no cover
    """Apply the output transform to row ``r`` of the raw scores ``out`` (in place)."""
    k = out.shape[1]
    if link == LINK_SIGMOID:
        for j in range(k):
            out[r, j] = 1.0 / (1.0 + math.exp(-scale * out[r, j]))
    elif link == LINK_SOFTMAX:
        m = out[r, 0]
        for j in range(1, k):
            m = max(m, out[r, j])
        s = 0.0
        for j in range(k):
            out[r, j] = math.exp(out[r, j] - m)
            s += out[r, j]
        for j in range(k):
            out[r, j] /= s
    elif link == LINK_EXP:
        for j in range(k):
            out[r, j] = math.exp(out[r, j])
    elif link == LINK_SIGNED_SQUARE:
        for j in range(k):
            v = out[r, j]
            out[r, j] = (1.0 if v > 0 else (-1.0 if v < 0 else 0.0)) * v * v
    elif link == LINK_SOFTPLUS:
        for j in range(k):
            out[r, j] = math.log1p(math.exp(out[r, j]))


@exact_jit()
def tree_predict_one(x, nodes, flags, values, trees, cats, model_flags, n_iter, link, scale,
                     out):  # pragma: no cover
    """Score one row ``x`` (n_features,) into ``out`` (n_class,) with the first ``n_iter``
    iterations; allocates nothing. ``model_flags``: the node flags of the model, or-ed.

    Without categorical nodes, eight trees advance in lockstep for their largest lockstep
    depth, then each walk finishes alone; a step is one comparison when ``x`` holds no NaN and
    no node treats zero as missing. With categorical nodes, every tree is walked alone. Leaf
    values are added in tree order.
    """
    n_class = out.shape[0]
    for k in range(n_class):
        out[k] = 0.0
    n_trees = n_iter * n_class
    has_cat = (model_flags & CATEGORICAL) != 0
    plain = (model_flags & _SPECIAL) == 0
    for j in range(x.shape[0]):
        if x[j] != x[j]:
            plain = False
            break
    t = 0
    while not has_cat and t + 8 <= n_trees:
        depth = trees[2 * t + 1]
        for j in range(t + 1, t + 8):
            depth = max(depth, trees[2 * j + 1])
        n0 = np.uint32(trees[2 * t])
        n1 = np.uint32(trees[2 * t + 2])
        n2 = np.uint32(trees[2 * t + 4])
        n3 = np.uint32(trees[2 * t + 6])
        n4 = np.uint32(trees[2 * t + 8])
        n5 = np.uint32(trees[2 * t + 10])
        n6 = np.uint32(trees[2 * t + 12])
        n7 = np.uint32(trees[2 * t + 14])
        if plain:
            # The hot path, inline: one comparison per step.
            for _ in range(depth):
                r = nodes[n0]
                n0 = r.first + np.uint32(x[r.feature] > r.thr)
                r = nodes[n1]
                n1 = r.first + np.uint32(x[r.feature] > r.thr)
                r = nodes[n2]
                n2 = r.first + np.uint32(x[r.feature] > r.thr)
                r = nodes[n3]
                n3 = r.first + np.uint32(x[r.feature] > r.thr)
                r = nodes[n4]
                n4 = r.first + np.uint32(x[r.feature] > r.thr)
                r = nodes[n5]
                n5 = r.first + np.uint32(x[r.feature] > r.thr)
                r = nodes[n6]
                n6 = r.first + np.uint32(x[r.feature] > r.thr)
                r = nodes[n7]
                n7 = r.first + np.uint32(x[r.feature] > r.thr)
            walks = (n0, n1, n2, n3, n4, n5, n6, n7)
        else:
            walks = _lockstep8(x, nodes, flags, depth, n0, n1, n2, n3, n4, n5, n6, n7)
        # Tree t adds to class t % n_class: one division per group of eight, not per tree.
        k = t % n_class
        for n in walks:
            if plain:
                # Inline, not a call: a call per tree costs as much as a few steps.
                while nodes[n].first != n:
                    r = nodes[n]
                    n = r.first + np.uint32(x[r.feature] > r.thr)
            else:
                n = _finish(x, n, nodes, flags, cats)
            out[k] += values[n]
            k = 0 if k + 1 == n_class else k + 1
        t += 8
    while t < n_trees:
        out[t % n_class] += values[_finish(x, np.uint32(trees[2 * t]), nodes, flags, cats)]
        t += 1
    if link != LINK_IDENTITY:
        _link_row(out.reshape((1, n_class)), 0, link, scale)


@exact_jit()
def _over(v, t):  # pragma: no cover
    """1 unless ``v <= t``: NaN goes right whatever the threshold."""
    return np.uint32(not v <= t)


@exact_jit()
def _expand(X, lo, m, columns, E):  # pragma: no cover
    """Rows ``lo:lo+m`` of ``X`` into the expanded block ``E`` (n_columns, BLOCK)."""
    for c in range(columns.shape[0] // 2):
        f = np.uint32(columns[2 * c])
        kind = columns[2 * c + 1]
        for i in range(m):
            v = X[lo + i, f]
            if kind != COL_RAW and (v != v or (kind >= COL_ZERO_LEFT
                                               and -ZERO_THRESHOLD <= v <= ZERO_THRESHOLD)):
                if kind == COL_NAN_ZERO:
                    v = 0.0
                elif kind == COL_ZERO_RIGHT:
                    v = np.nan
                else:
                    v = -np.inf
            E[c, i] = v


@exact_jit()
def _walk_block(E, m, root, depth, nodes, cats, has_cat, cur):  # pragma: no cover
    """Leaf of each of the ``m`` rows of the expanded block ``E`` (flattened) in the tree at
    ``root``, into ``cur``: ``depth`` levels in lockstep, eight rows at a time, then each row
    finishes alone."""
    i = _U0
    while not has_cat and i + _U7 < m:
        n0 = root
        n1 = root
        n2 = root
        n3 = root
        n4 = root
        n5 = root
        n6 = root
        n7 = root
        for _ in range(depth):
            r = nodes[n0]
            n0 = r.first + _over(E[(np.uint32(r.column) << _BLOCK_SHIFT) + i], r.thr)
            r = nodes[n1]
            n1 = r.first + _over(E[(np.uint32(r.column) << _BLOCK_SHIFT) + i + _U1], r.thr)
            r = nodes[n2]
            n2 = r.first + _over(E[(np.uint32(r.column) << _BLOCK_SHIFT) + i + _U2], r.thr)
            r = nodes[n3]
            n3 = r.first + _over(E[(np.uint32(r.column) << _BLOCK_SHIFT) + i + _U3], r.thr)
            r = nodes[n4]
            n4 = r.first + _over(E[(np.uint32(r.column) << _BLOCK_SHIFT) + i + _U4], r.thr)
            r = nodes[n5]
            n5 = r.first + _over(E[(np.uint32(r.column) << _BLOCK_SHIFT) + i + _U5], r.thr)
            r = nodes[n6]
            n6 = r.first + _over(E[(np.uint32(r.column) << _BLOCK_SHIFT) + i + _U6], r.thr)
            r = nodes[n7]
            n7 = r.first + _over(E[(np.uint32(r.column) << _BLOCK_SHIFT) + i + _U7], r.thr)
        cur[i] = n0
        cur[i + _U1] = n1
        cur[i + _U2] = n2
        cur[i + _U3] = n3
        cur[i + _U4] = n4
        cur[i + _U5] = n5
        cur[i + _U6] = n6
        cur[i + _U7] = n7
        i += _U8
    # Rows left over (and every row of a model with categorical nodes) walk alone; then every
    # row not yet at a leaf finishes alone. Steps call only helpers of scalars (inlined); a
    # call with array arguments costs as much as a step, so only categorical nodes make one.
    while i < m:
        n = root
        for _ in range(depth):
            r = nodes[n]
            c = r.column
            if c < 0:
                n = r.first + _U1 - _in_bitset(E[(np.uint32(~c) << _BLOCK_SHIFT) + i],
                                               np.uint32(int(r.thr)), cats)
            else:
                n = r.first + _over(E[(np.uint32(c) << _BLOCK_SHIFT) + i], r.thr)
        cur[i] = n
        i += _U1
    for i in range(m):
        n = cur[i]
        while nodes[n].first != n:
            r = nodes[n]
            c = r.column
            if c < 0:
                n = r.first + _U1 - _in_bitset(E[(np.uint32(~c) << _BLOCK_SHIFT) + i],
                                               np.uint32(int(r.thr)), cats)
            else:
                n = r.first + _over(E[(np.uint32(c) << _BLOCK_SHIFT) + i], r.thr)
        cur[i] = n


@exact_jit()
def _score_block(X, lo, hi, nodes, values, trees, cats, columns, has_cat, n_iter, link, scale,
                 E, cur, out):  # pragma: no cover
    """Rows ``lo:hi`` of ``out`` (n_rows, n_class): expand, walk every tree (tree-outer), add
    the leaf values in tree order, apply the link."""
    m = np.uint32(hi - lo)
    n_class = out.shape[1]
    _expand(X, lo, m, columns, E)
    Ef = E.ravel()
    for r in range(lo, hi):
        for k in range(n_class):
            out[r, k] = 0.0
    for t in range(n_iter * n_class):
        k = t % n_class
        _walk_block(Ef, m, np.uint32(trees[2 * t]), trees[2 * t + 1], nodes, cats, has_cat,
                    cur)
        for i in range(m):
            out[lo + i, k] += values[cur[i]]
    if link != LINK_IDENTITY:
        for r in range(lo, hi):
            _link_row(out, r, link, scale)


@exact_jit()
def tree_predict(X, nodes, values, trees, cats, columns, has_cat, n_iter, link, scale,
                 out):  # pragma: no cover
    """Score the rows of ``X`` (n_rows, n_features) into ``out`` (n_rows, n_class) on the
    calling thread, block by block."""
    n = X.shape[0]
    E = np.empty((columns.shape[0] // 2, BLOCK), dtype=np.float64)
    cur = np.empty(BLOCK, dtype=np.uint32)
    for lo in range(0, n, BLOCK):
        _score_block(X, lo, min(n, lo + BLOCK), nodes, values, trees, cats, columns, has_cat,
                     n_iter, link, scale, E, cur, out)


@batch_jit(parallel=True)
def tree_predict_parallel(X, nodes, values, trees, cats, columns, has_cat, n_iter, link, scale,
                          out):  # pragma: no cover
    """:func:`tree_predict` with tasks of rows spread over numba's threads (the same sums:
    each row is still summed tree by tree in order)."""
    n = X.shape[0]
    n_tasks = (n + _TASK_ROWS - 1) // _TASK_ROWS
    for task in prange(n_tasks):
        E = np.empty((columns.shape[0] // 2, BLOCK), dtype=np.float64)
        cur = np.empty(BLOCK, dtype=np.uint32)
        end = min(n, (task + 1) * _TASK_ROWS)
        for lo in range(task * _TASK_ROWS, end, BLOCK):
            _score_block(X, lo, min(end, lo + BLOCK), nodes, values, trees, cats, columns,
                         has_cat, n_iter, link, scale, E, cur, out)


@serving_jit()
def _linear_link(eta, link):  # pragma: no cover
    if link == LINK_SIGMOID:
        return 1.0 / (1.0 + math.exp(-eta))
    if link == LINK_EXP:
        return math.exp(eta)
    return eta


@serving_jit()
def linear_dense(X, coef, intercept, link, out):  # pragma: no cover
    """``out[i] = link(intercept + X[i] @ coef)`` for a dense (n_rows, n_features) ``X``."""
    for i in range(X.shape[0]):
        s = 0.0
        for j in range(X.shape[1]):
            s += X[i, j] * coef[j]
        out[i] = _linear_link(intercept + s, link)


@serving_jit()
def linear_csr(indptr, indices, data, coef, intercept, link, out):  # pragma: no cover
    """:func:`linear_dense` for a CSR matrix given as its three arrays (indices checked by
    the caller)."""
    for i in range(indptr.shape[0] - 1):
        s = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            s += data[p] * coef[indices[p]]
        out[i] = _linear_link(intercept + s, link)


@serving_jit()
def linear_sparse_row(indices, values, coef, intercept, link):  # pragma: no cover
    """Score one sparse row; returns ``(score, bad)`` where ``bad`` is the position of the first
    index outside ``[0, n_features)`` (the score is then NaN), or -1."""
    n = coef.shape[0]
    s = 0.0
    for p in range(indices.shape[0]):
        j = indices[p]
        if j < 0 or j >= n:
            return np.nan, p
        s += values[p] * coef[j]
    return _linear_link(intercept + s, link), -1

"""Postfix code of compiled rules and its two executors.

A rule compiles (:mod:`bta.segment.rules`) to rows ``(opcode, argument)`` of an int64 array.
Two executors run the same code with the same semantics: :func:`eval_row`, a numba kernel for
one user's sparse feature vector (serving), and :func:`run_block`, NumPy operations over a
block of users whose referenced columns :func:`fill_block` densified (batch). Tests hold them
equal to each other and to a naive evaluator. Many rules travel to a kernel as one
:class:`PackedRules` (their arrays concatenated, with offsets), which :func:`pack_rules`
builds and ``bta.serve._kernels.eval_rules`` runs rule by rule through :func:`run_code`.

``eval_row`` uses ``exact_jit`` (no fastmath): ``arcp`` could turn ``a / b`` into
``a * (1 / b)`` and make a threshold comparison differ by one ulp from the batch path.
On its stack conditions are 1.0 (true) or 0.0 (false); the compiler's type check guarantees
that logical opcodes only ever see those.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from bta._jit import batch_jit, exact_jit

__all__ = [
    "OP_CONST", "OP_FEATURE", "OP_SEGMENT", "OP_NEG", "OP_ABS", "OP_DEFINED", "OP_NOT",
    "OP_ADD", "OP_SUB", "OP_MUL", "OP_DIV", "OP_LT", "OP_LE", "OP_GT", "OP_GE", "OP_EQ",
    "OP_NE", "OP_MIN", "OP_MAX", "OP_TOTAL", "OP_AND", "OP_OR", "PackedRules", "pack_rules",
    "eval_row", "run_code", "fill_block", "run_block",
]

# push: argument is an index into consts / the rule's feature slots / its segment slots
OP_CONST = 0
OP_FEATURE = 1
OP_SEGMENT = 2
# unary: replace the top of the stack
OP_NEG = 3
OP_ABS = 4
OP_DEFINED = 5
OP_NOT = 6
# binary: pop b, pop a, push a (op) b
OP_ADD = 7
OP_SUB = 8
OP_MUL = 9
OP_DIV = 10
OP_LT = 11
OP_LE = 12
OP_GT = 13
OP_GE = 14
OP_EQ = 15
OP_NE = 16
# n-ary: argument is the number of operands popped; one result is pushed
OP_MIN = 17
OP_MAX = 18
OP_TOTAL = 19
OP_AND = 20
OP_OR = 21


class PackedRules(NamedTuple):
    """Compiled rules concatenated into flat arrays, one argument for the kernels (all IN).

    Rule ``r`` owns ``code[code_offsets[r]:code_offsets[r+1]]``, and likewise for its
    constants, feature columns (with their ``nan_absent`` flags) and segment slots; a rule's
    code indexes its own constants, slots and segments from 0. Built by :func:`pack_rules`.
    """

    code: np.ndarray             #: int64 (n_ops, 2): every rule's (opcode, argument) rows
    code_offsets: np.ndarray     #: int64 (n_rules + 1,)
    consts: np.ndarray           #: float64 (n_consts,)
    const_offsets: np.ndarray    #: int64 (n_rules + 1,)
    columns: np.ndarray          #: int64 (n_slots,): a rule's feature slots as store columns
    column_offsets: np.ndarray   #: int64 (n_rules + 1,)
    nan_absent: np.ndarray       #: bool (n_slots,): an absent slot is NaN (else 0.0)
    segment_index: np.ndarray    #: int64 (n_segment_slots,): position in the user's segment
    #: flags (the ``segment_names`` packed against); -1: unknown there, read as not a member
    segment_offsets: np.ndarray  #: int64 (n_rules + 1,)
    stack_sizes: np.ndarray      #: int64 (n_rules,): the stack each rule's code needs


def pack_rules(compiled: Sequence[Any], segment_names: Sequence[str]) -> PackedRules:
    """The :class:`PackedRules` of ``compiled`` (``CompiledRule`` objects, in rule order),
    their segment references resolved against ``segment_names`` (the user's segment flags'
    order)."""
    def offsets(parts):
        return np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    def concat(parts, dtype, empty_shape=(0,)):
        if not parts:
            return np.zeros(empty_shape, dtype=dtype)
        return np.ascontiguousarray(np.concatenate(parts)).astype(dtype)

    names = list(segment_names)
    codes = [r.code for r in compiled]
    consts = [r.consts for r in compiled]
    columns = [r.columns for r in compiled]
    nan_absent = [r.nan_absent for r in compiled]
    segments = [np.array([names.index(s) if s in names else -1 for s in r.segments],
                         dtype=np.int64) for r in compiled]
    return PackedRules(
        code=concat(codes, np.int64, (0, 2)), code_offsets=offsets(codes),
        consts=concat(consts, np.float64), const_offsets=offsets(consts),
        columns=concat(columns, np.int64), column_offsets=offsets(columns),
        nan_absent=concat(nan_absent, np.bool_),
        segment_index=concat(segments, np.int64), segment_offsets=offsets(segments),
        stack_sizes=np.array([r.stack_size for r in compiled], dtype=np.int64))


@exact_jit()
def ieee_div(a, b):
    """``a / b`` with IEEE results for a zero divisor (numba's Python error model would raise)."""
    if b == 0.0:
        if a != a or a == 0.0:
            return np.nan
        return math.copysign(np.inf, a) * math.copysign(1.0, b)
    return a / b


@exact_jit()
def eval_row(code, consts, columns, nan_absent, seg_flags, indices, values, stack_size):
    """Run a rule's code on one user: ``(indices, values)`` are the stored entries of its row.

    ``columns`` (sorted int64) are the feature columns the rule reads, ``nan_absent`` whether
    each is undefined (NaN) rather than 0 when absent, ``seg_flags`` the user's membership of
    each referenced segment. Entries whose index the rule does not read are skipped.
    """
    n_slots = columns.shape[0]
    local = np.empty(n_slots)
    for s in range(n_slots):
        local[s] = np.nan if nan_absent[s] else 0.0
    for k in range(indices.shape[0]):
        s = np.searchsorted(columns, indices[k])
        if s < n_slots and columns[s] == indices[k]:
            local[s] = values[k]
    return run_code(code, 0, code.shape[0], consts, 0, local, seg_flags, 0,
                    np.empty(max(stack_size, 1)))


@exact_jit(inline=True)
def run_code(code, code_start, code_end, consts, const_start, local, seg_flags, seg_start,
             stack):
    """Run the postfix code ``code[code_start:code_end]`` (IN) with its constants from
    ``consts[const_start:]`` (IN), the rule's feature values in ``local`` (IN, slot order),
    its segment flags from ``seg_flags[seg_start:]`` (IN) and a caller-supplied ``stack``
    (scratch, at least the rule's stack size); returns the condition.

    Offsets rather than slices, and inlined into its callers: packed rules run hundreds per
    request, and a call with sliced array arguments costs more than a short rule."""
    sp = 0  # stack pointer: the number of values on the stack
    for pc in range(code_start, code_end):
        op = code[pc, 0]
        arg = code[pc, 1]
        if op == OP_CONST:
            stack[sp] = consts[const_start + arg]
            sp += 1
        elif op == OP_FEATURE:
            stack[sp] = local[arg]
            sp += 1
        elif op == OP_SEGMENT:
            stack[sp] = 1.0 if seg_flags[seg_start + arg] else 0.0
            sp += 1
        elif op == OP_NEG:
            stack[sp - 1] = -stack[sp - 1]
        elif op == OP_ABS:
            stack[sp - 1] = abs(stack[sp - 1])
        elif op == OP_DEFINED:
            x = stack[sp - 1]
            stack[sp - 1] = 1.0 if x == x else 0.0
        elif op == OP_NOT:
            stack[sp - 1] = 0.0 if stack[sp - 1] != 0.0 else 1.0
        elif op <= OP_NE:
            b = stack[sp - 1]
            a = stack[sp - 2]
            sp -= 1
            if op == OP_ADD:
                r = a + b
            elif op == OP_SUB:
                r = a - b
            elif op == OP_MUL:
                r = a * b
            elif op == OP_DIV:
                r = ieee_div(a, b)
            elif op == OP_LT:
                r = 1.0 if a < b else 0.0
            elif op == OP_LE:
                r = 1.0 if a <= b else 0.0
            elif op == OP_GT:
                r = 1.0 if a > b else 0.0
            elif op == OP_GE:
                r = 1.0 if a >= b else 0.0
            elif op == OP_EQ:
                r = 1.0 if a == b else 0.0
            else:
                # undefined on either side is false, unlike IEEE where NaN != x is true
                r = 1.0 if (a != b and a == a and b == b) else 0.0
            stack[sp - 1] = r
        elif op == OP_TOTAL:
            # 0.0 plus the defined operands in order; undefined when none is. Starting from +0.0
            # (never -0.0 after additions) lets the block executor add 0.0 for undefined ones.
            base = sp - arg
            acc = 0.0
            seen = False
            for t in range(base, sp):
                if stack[t] == stack[t]:
                    acc += stack[t]
                    seen = True
            stack[base] = acc if seen else np.nan
            sp = base + 1
        else:
            base = sp - arg
            acc = stack[base]
            for t in range(base + 1, sp):
                x = stack[t]
                if op == OP_MIN:
                    # first argument wins ties (and signed zeros); NaN arguments are skipped
                    acc = acc if (acc <= x or x != x) else x
                elif op == OP_MAX:
                    acc = acc if (acc >= x or x != x) else x
                elif op == OP_AND:
                    acc = 1.0 if (acc != 0.0 and x != 0.0) else 0.0
                else:
                    acc = 1.0 if (acc != 0.0 or x != 0.0) else 0.0
            stack[base] = acc
            sp = base + 1
    return stack[0] != 0.0


@batch_jit()
def fill_block(indptr, indices, data, colmap, fill, r0, r1, block):
    """Dense values of rows ``r0:r1`` in the columns ``colmap`` selects (block column
    ``colmap[j]`` for feature ``j``, -1 for none) into ``block[:r1 - r0]``; absent entries get
    the column's ``fill`` (0.0, or NaN for nan_absent columns)."""
    m = r1 - r0
    for c in range(fill.shape[0]):
        v = fill[c]
        for i in range(m):
            block[i, c] = v
    for i in range(m):
        for p in range(indptr[r0 + i], indptr[r0 + i + 1]):
            c = colmap[indices[p]]
            if c >= 0:
                block[i, c] = data[p]


# ---- the block executor (NumPy) -----------------------------------------------------------------
def _fmin(a: Any, b: Any) -> Any:
    # the row kernel's rule: the first argument wins ties (and signed zeros), NaN is skipped
    return np.where((a <= b) | np.isnan(b), a, b)


def _fmax(a: Any, b: Any) -> Any:
    return np.where((a >= b) | np.isnan(b), a, b)


def _total(args: Sequence[Any], n: int) -> np.ndarray:
    # the row kernel's rule: +0.0 plus the defined values in order (so adding 0.0 for an
    # undefined one changes nothing: the sum is never -0.0); undefined where none is defined
    acc = np.zeros(n)
    seen = np.zeros(n, dtype=bool)
    for x in args:
        if not np.isnan(np.min(x, initial=0.0)):
            # no undefined value in x (min propagates NaN): the common count column, one pass
            np.add(acc, x, out=acc)
            seen[:] = True
        else:
            defined = ~np.isnan(x)
            np.add(acc, x, out=acc, where=defined)
            seen |= defined
    acc[~seen] = np.nan
    return acc


def _ne(a: Any, b: Any) -> Any:
    return (a != b) & ~np.isnan(a) & ~np.isnan(b)


def _defined(x: Any) -> Any:
    return ~np.isnan(x)


_NP_UNARY = {OP_NEG: np.negative, OP_ABS: np.abs, OP_NOT: np.logical_not, OP_DEFINED: _defined}
_NP_BINARY = {OP_ADD: np.add, OP_SUB: np.subtract, OP_MUL: np.multiply, OP_DIV: np.divide,
              OP_LT: np.less, OP_LE: np.less_equal, OP_GT: np.greater,
              OP_GE: np.greater_equal, OP_EQ: np.equal, OP_NE: _ne}
_NP_NARY = {OP_MIN: _fmin, OP_MAX: _fmax, OP_AND: np.logical_and, OP_OR: np.logical_or}


def run_block(code: np.ndarray, consts: np.ndarray, feats: Sequence[np.ndarray],
              segs: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Membership (bool, shape (n,)) of ``n`` users from their referenced feature columns
    ``feats`` (float64, one per feature slot) and segment columns ``segs`` (bool, one per
    segment slot). Call under ``np.errstate(all="ignore")``: x / 0 is meant to give inf."""
    stack: list[Any] = []
    for op, arg in code.tolist():
        if op == OP_CONST:
            stack.append(consts[arg])  # a float64 scalar, so x / 0 follows IEEE
        elif op == OP_FEATURE:
            stack.append(feats[arg])
        elif op == OP_SEGMENT:
            stack.append(segs[arg])
        elif op in _NP_UNARY:
            stack[-1] = _NP_UNARY[op](stack[-1])
        elif op in _NP_BINARY:
            b = stack.pop()
            stack[-1] = _NP_BINARY[op](stack[-1], b)
        else:
            args = stack[len(stack) - arg:]
            del stack[len(stack) - arg:]
            stack.append(_total(args, n) if op == OP_TOTAL
                         else functools.reduce(_NP_NARY[op], args))
    # a rule of constants only gives a scalar
    return np.broadcast_to(np.asarray(stack[0], dtype=bool), (n,))

"""Compilation of a parsed rule to postfix code over resolved feature columns.

:class:`~bta.segment.rules.CompiledRule` holds the result.
"""

from __future__ import annotations

import difflib
from fnmatch import fnmatchcase
from typing import Any

import numpy as np

from bta.errors import ConfigError, SchemaError, UnknownNameError
from bta.privacy import PrivacyPolicy
from bta.segment.rules import kernels as K
from bta.segment.rules.syntax import (
    BinOp,
    BoolOp,
    Call,
    Compare,
    Defined,
    Feature,
    Neg,
    Node,
    Not,
    Num,
    SegmentRef,
    Total,
)

__all__ = ["_NO_SEGMENTS", "_Columns", "_emit", "_stack_size"]


# ---- compilation -------------------------------------------------------------------------------
class _Columns:
    """Feature names, their index and their nan_absent flags, built once per layout."""

    def __init__(self, features: Any, param: str = "features"):
        names = getattr(features, "feature_names", None)
        nan_absent = getattr(features, "nan_absent", None)
        if names is None or nan_absent is None:
            raise ConfigError(f"{param} must be a FeatureMatrix or a layout with feature_names "
                              f"and nan_absent, got {type(features).__name__}")
        self.names = tuple(names)
        self.nan_absent = np.asarray(nan_absent, dtype=bool)
        if self.nan_absent.shape != (len(self.names),):
            raise SchemaError(f"nan_absent must have one flag per feature ({len(self.names)}), "
                              f"got shape {self.nan_absent.shape}")
        self.index = {n: j for j, n in enumerate(self.names)}

    def lookup(self, name: str, pos: int) -> int:
        j = self.index.get(name)
        if j is not None:
            return j
        close = difflib.get_close_matches(name, self.names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        # 'a:b:c:7d-3' lexes as one name: say how to subtract when a prefix is a feature
        parts = name.split("-")
        for k in range(len(parts) - 1, 0, -1):
            head = "-".join(parts[:k])
            if head in self.index:
                hint += f" (to subtract, put spaces around '-': '{head} - {'-'.join(parts[k:])}')"
                break
        raise UnknownNameError(f"unknown feature {name!r} at position {pos}{hint}")

    def matching(self, pattern: str, pos: int, policy: PrivacyPolicy | None = None
                 ) -> list[int]:
        cols = [j for j, n in enumerate(self.names) if fnmatchcase(n, pattern)]
        if policy is not None:
            # a wildcard must not reach the columns of a blocked category
            allowed = [j for j in cols if policy.blocked_category_in(self.names[j]) is None]
            if cols and not allowed:
                raise UnknownNameError(f"the pattern {pattern!r} of total() at position {pos} "
                                       f"matches only features of blocked categories")
            cols = allowed
        if not cols:
            raise UnknownNameError(f"no feature matches the pattern {pattern!r} of total() at "
                                   f"position {pos}")
        return cols


_BINARY = {"+": K.OP_ADD, "-": K.OP_SUB, "*": K.OP_MUL, "/": K.OP_DIV, "<": K.OP_LT,
           "<=": K.OP_LE, ">": K.OP_GT, ">=": K.OP_GE, "==": K.OP_EQ, "!=": K.OP_NE}
_NARY = {"min": K.OP_MIN, "max": K.OP_MAX, "and": K.OP_AND, "or": K.OP_OR}


def _emit(ast: Node, cols: _Columns, policy: PrivacyPolicy | None = None
          ) -> tuple[list[tuple[int, int]], list[float], list[int], list[tuple[str, int]]]:
    """Postfix code of ``ast``, with feature arguments as column indices (remapped by caller)."""
    code: list[tuple[int, int]] = []
    consts: list[float] = []
    features: list[int] = []
    segments: list[tuple[str, int]] = []

    def walk(node: Node) -> None:
        if isinstance(node, Num):
            consts.append(float(node.value))
            code.append((K.OP_CONST, len(consts) - 1))
        elif isinstance(node, Feature):
            j = cols.lookup(node.name, node.pos)
            features.append(j)
            code.append((K.OP_FEATURE, j))
        elif isinstance(node, Total):
            matched = cols.matching(node.pattern, node.pos, policy)
            features.extend(matched)
            code.extend((K.OP_FEATURE, j) for j in matched)
            code.append((K.OP_TOTAL, len(matched)))
        elif isinstance(node, SegmentRef):
            names = [s for s, _ in segments]
            if node.name not in names:
                segments.append((node.name, node.pos))
                names.append(node.name)
            code.append((K.OP_SEGMENT, names.index(node.name)))
        elif isinstance(node, (Neg, Not, Defined)) or (isinstance(node, Call)
                                                       and node.func == "abs"):
            walk(node.children()[0])
            op = {Neg: K.OP_NEG, Not: K.OP_NOT, Defined: K.OP_DEFINED}.get(type(node), K.OP_ABS)
            code.append((op, 0))
        elif isinstance(node, (BinOp, Compare)):
            walk(node.left)
            walk(node.right)
            code.append((_BINARY[node.op], 0))
        elif isinstance(node, (Call, BoolOp)):
            for child in node.children():
                walk(child)
            code.append((_NARY[node.func if isinstance(node, Call) else node.op],
                         len(node.children())))
        else:  # pragma: no cover - the parser makes no other node
            raise TypeError(f"not a rule node: {node!r}")

    walk(ast)
    return code, consts, features, segments


def _stack_size(code: np.ndarray) -> int:
    depth = peak = 0
    for op, arg in code.tolist():
        if op <= K.OP_SEGMENT:
            depth += 1
        elif op >= K.OP_MIN:
            depth -= arg - 1
        elif op >= K.OP_ADD:
            depth -= 1
        peak = max(peak, depth)
    return peak


_NO_SEGMENTS = np.zeros(0, dtype=bool)

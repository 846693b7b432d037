"""The rule AST of :mod:`bta.segment.rules`: node classes, binding powers, rendering.

``str(node)`` renders rule text that parses back to an equal tree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "_COMPARISONS",
    "_FUNCTIONS",
    "_INFIX",
    "_KEYWORDS",
    "_NAME_RE",
    "_NEG",
    "_NOT",
    "_NUMERIC_FUNCS",
    "BinOp",
    "BoolOp",
    "Call",
    "Compare",
    "Defined",
    "Feature",
    "Neg",
    "Node",
    "Not",
    "Num",
    "SegmentRef",
    "Total",
    "_walk",
]


#: Deepest nesting a rule may have (parentheses, operators, function calls). It keeps the
#: recursive parser, renderer and compiler far below Python's recursion limit; real rules
#: nest a handful of levels.
MAX_DEPTH = 100

# binding power of infix operators; prefix 'not' binds at _NOT and unary '-' at _NEG
_OR, _AND, _NOT, _CMP, _ADD, _MUL, _NEG = 1, 2, 3, 4, 5, 6, 7
_INFIX = {"or": _OR, "and": _AND, "<": _CMP, "<=": _CMP, ">": _CMP, ">=": _CMP, "==": _CMP,
          "!=": _CMP, "+": _ADD, "-": _ADD, "*": _MUL, "/": _MUL}
_COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
_KEYWORDS = ("and", "or", "not")
#: numeric functions and their (min, max) argument counts; None: no maximum
_NUMERIC_FUNCS = {"abs": (1, 1), "defined": (1, 1), "min": (2, None), "max": (2, None)}
_FUNCTIONS = ("abs", "defined", "max", "min", "segment", "total")


_NAME_RE = re.compile(r"[A-Za-z_](?:[A-Za-z0-9_:]|[.\-](?=[A-Za-z0-9]))*")


# ---- AST ---------------------------------------------------------------------------------------
class Node:
    """Base of rule AST nodes (frozen dataclasses; ``pos`` is not part of equality).

    ``numeric`` tells numeric expressions from conditions; ``depth`` is the height of the tree.
    ``str(node)`` renders rule text that parses back to an equal tree.
    """

    numeric = True

    def children(self) -> tuple["Node", ...]:
        return ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "depth", 1 + max((c.depth for c in self.children()), default=0))

    def __str__(self) -> str:
        return _render(self, 0)


def _pos() -> Any:
    return field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Num(Node):
    """A number literal."""

    value: float
    pos: int = _pos()


@dataclass(frozen=True)
class Feature(Node):
    """A feature column, by name."""

    name: str
    pos: int = _pos()


@dataclass(frozen=True)
class Total(Node):
    """``total("pattern")``: sum of the defined values of the features matching ``pattern``."""

    pattern: str
    pos: int = _pos()


@dataclass(frozen=True)
class SegmentRef(Node):
    """``segment("name")``: membership of another segment."""

    name: str
    pos: int = _pos()
    numeric = False


@dataclass(frozen=True)
class Neg(Node):
    """Unary minus."""

    operand: Node
    pos: int = _pos()

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class BinOp(Node):
    """``left op right`` with ``op`` in ``+ - * /``."""

    op: str
    left: Node
    right: Node
    pos: int = _pos()

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class Call(Node):
    """``min(...)``, ``max(...)`` or ``abs(...)``."""

    func: str
    args: tuple[Node, ...]
    pos: int = _pos()

    def children(self) -> tuple[Node, ...]:
        return tuple(self.args)


@dataclass(frozen=True)
class Defined(Node):
    """``defined(x)``: x is not NaN."""

    operand: Node
    pos: int = _pos()
    numeric = False

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class Compare(Node):
    """``left op right`` with ``op`` a comparison; false when either side is undefined."""

    op: str
    left: Node
    right: Node
    pos: int = _pos()
    numeric = False

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class Not(Node):
    """``not x``."""

    operand: Node
    pos: int = _pos()
    numeric = False

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class BoolOp(Node):
    """``a and b and ...`` or ``a or b or ...`` (one node per chain of the same operator)."""

    op: str
    operands: tuple[Node, ...]
    pos: int = _pos()
    numeric = False

    def children(self) -> tuple[Node, ...]:
        return tuple(self.operands)


# ---- rendering ---------------------------------------------------------------------------------
def _num_text(v: float) -> str:
    if v == 0 and math.copysign(1.0, v) < 0:
        return "-0.0"
    if float(v).is_integer() and abs(v) < 1e16:
        return str(int(v))
    return repr(float(v))


def _quote(s: str) -> str:
    return f"'{s}'" if '"' in s else f'"{s}"'


def _render(node: Node, rbp: int) -> str:
    """Text of ``node`` in a context binding at ``rbp``, parenthesized when it binds looser."""
    if isinstance(node, Num):
        return _num_text(node.value)
    if isinstance(node, Feature):
        bare = _NAME_RE.fullmatch(node.name) and ":" in node.name
        return node.name if bare else f"`{node.name}`"
    if isinstance(node, Total):
        return f"total({_quote(node.pattern)})"
    if isinstance(node, SegmentRef):
        return f"segment({_quote(node.name)})"
    if isinstance(node, (Call, Defined)):
        args = node.args if isinstance(node, Call) else (node.operand,)
        name = node.func if isinstance(node, Call) else "defined"
        return f"{name}({', '.join(_render(a, 0) for a in args)})"
    if isinstance(node, Neg):
        # -(3) keeps Neg(Num(3)) apart from the literal -3
        inner = (f"({_render(node.operand, 0)})" if isinstance(node.operand, Num)
                 and node.operand.value >= 0 else _render(node.operand, _NEG - 1))
        text, prec = "-" + (" " if inner.startswith("-") else "") + inner, _NEG
    elif isinstance(node, Not):
        text, prec = "not " + _render(node.operand, _NOT - 1), _NOT
    elif isinstance(node, (BinOp, Compare)):
        prec = _INFIX[node.op]
        # left-associative: the left side may bind as loosely as this operator, the right may not
        left_rbp = prec if isinstance(node, Compare) else prec - 1
        text = f"{_render(node.left, left_rbp)} {node.op} {_render(node.right, prec)}"
    elif isinstance(node, BoolOp):
        prec = _INFIX[node.op]
        text = f" {node.op} ".join(_render(o, prec) for o in node.operands)
    else:  # pragma: no cover - every node type is handled above
        raise TypeError(f"not a rule node: {node!r}")
    return f"({text})" if prec <= rbp else text


def _walk(node: Node) -> Iterable[Node]:
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children()))

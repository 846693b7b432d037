r"""Rule segments: a small, safe expression language over named features.

A rule is a condition over the columns of a :class:`~bta.features.FeatureMatrix`::

    count:page_view:autos:7d >= 3 and recency:ad_click:autos < 14
    (decay:page_view:travel + decay:search:travel) / 2 > 1.5 or segment("frequent_flyers")
    not defined(recency:conversion:autos)
        and max(count:page_view:autos:30d, count:search:autos:30d) >= 5

It is tokenized and parsed (a Pratt parser) into an AST, type-checked, and compiled to postfix
code with the feature columns resolved. User text is never handed to ``eval``, ``exec`` or
``compile``: a rule can read features and segment memberships and nothing else.

Language
--------
*Conditions* (true or false per user): comparisons ``<  <=  >  >=  ==  !=`` between two numeric
expressions; ``and``, ``or``, ``not``; ``segment("name")``; ``defined(x)``.

*Numeric expressions*: feature names; numbers (``3``, ``0.5``, ``.5``, ``1e-3``); ``+ - * /``;
unary ``-``; ``min(...)``, ``max(...)``, ``abs(...)``, ``total("pattern")``.

Parentheses group either kind. Precedence, loosest first: ``or``; ``and``; ``not``;
comparisons; ``+ -``; ``* /``; unary ``-`` (so ``not a:x > 1`` is ``not (a:x > 1)``).
``and``, ``or`` and arithmetic group left to right; comparisons do not chain (write
``1 < x and x < 3``). Keywords and function names are
case-insensitive; whitespace, newlines included, is free.

*Names.* A feature name is written bare when it contains ``:`` and is made of letters, digits,
``_``, ``:``, and ``.`` or ``-`` each followed by a letter or digit: ``count:page_view:17:7d``,
``recency:ad_click:sci-fi``, ``count:page_view:v1.2:7d``. Any other name goes in backticks:
```count:page_view:Autos & Vehicles:7d```. Hence ``a:b-c:d`` is one name; to subtract, put
spaces around ``-``. A bare word without ``:`` is a keyword or a function, never a feature.

*Functions.*

- ``segment("name")``: members of segment ``name``, another rule of the same
  :func:`evaluate_rules` call or a segment of the ``book`` passed to it (the rule wins when
  both have the name).
- ``defined(x)``: ``x`` is defined (not NaN); ``defined(recency:ad_click:autos)`` reads
  "clicked an autos ad at least once".
- ``min(x, y, ...)``, ``max(x, y, ...)``: smallest / largest of the *defined* arguments,
  undefined only when all are; ``min(recency:ad_click:autos, recency:search:autos) < 7``.
- ``abs(x)``.
- ``total("pattern")``: sum of every feature whose name matches the shell-style pattern
  (``*`` any text, ``?`` one character, ``[...]`` one of a set), skipping undefined values,
  undefined only when all are: ``total("count:page_view:*:7d") >= 20``.

Missing values
--------------
Features flagged in ``FeatureMatrix.nan_absent`` (recency-like) are undefined (NaN) for a user
without the event; every other feature reads 0 when absent. Arithmetic on an undefined value is
undefined, and **every comparison with an undefined side is false**, ``!=`` included (unlike
IEEE, where NaN != x is true). So for a user who never clicked an autos ad, both
``recency:ad_click:autos < 14`` and ``recency:ad_click:autos >= 14`` are false, while
``not (recency:ad_click:autos < 14)`` is **true**: ``not`` negates the comparison's result.
Division follows IEEE: ``x / 0`` is ``+-inf`` and ``0 / 0`` undefined.

Errors
------
A syntax or type error raises :class:`~bta.errors.RuleSyntaxError` naming the 0-based position
and what was expected, followed by the offending line and a caret::

    expected a comparison operator at position 25, got 'autos'
        count:page_view:autos:7d autos
                                 ^

Unknown feature and segment names raise :class:`~bta.errors.UnknownNameError` with the closest
names suggested.

Privacy
-------
A rule may not read a blocked category (a sensitive category its
:class:`~bta.privacy.PrivacyPolicy` does not allow; the default policy's deny list applies when
none is given). A feature name or ``total()`` pattern that names one is refused with
:class:`~bta.errors.ConfigError` when the rule is defined; when compiled against a layout, a
``total()`` pattern skips the columns of blocked categories, so a wildcard never reaches them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Collection, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from bta.errors import ConfigError, RuleSyntaxError, SchemaError, UnknownNameError, check_param
from bta.privacy import PrivacyPolicy
from bta.segment import _rule_kernels as K
from bta.segment.book import Segment, SegmentBook

__all__ = [
    "RuleSegment", "CompiledRule", "evaluate_rules", "parse_rule", "MAX_DEPTH",
    "Node", "Num", "Feature", "Total", "SegmentRef", "Neg", "BinOp", "Call", "Defined",
    "Compare", "Not", "BoolOp",
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


# ---- tokens ------------------------------------------------------------------------------------
class _Tok(NamedTuple):
    kind: str   # num | name | word | kw | str | op | end
    text: str   # source text (keywords lower-cased)
    pos: int
    value: Any = None


_NAME_RE = re.compile(r"[A-Za-z_](?:[A-Za-z0-9_:]|[.\-](?=[A-Za-z0-9]))*")
_NUMBER_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_RUN_RE = re.compile(r"[A-Za-z0-9_.]*")
_OPERATORS = ("<=", ">=", "==", "!=", "<", ">", "+", "-", "*", "/", "(", ")", ",")
_CHAR_HINTS = {"=": " (use '==' to compare)", "&": " (use 'and')", "|": " (use 'or')",
               "!": " (use 'not', or '!=' to compare)"}


def _syntax_error(text: str, message: str, pos: int) -> RuleSyntaxError:
    """RuleSyntaxError with the line holding ``pos`` and a caret under it."""
    pos = max(0, min(pos, len(text)))
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start:len(text) if end < 0 else end].replace("\t", " ").replace("\r", " ")
    return RuleSyntaxError(f"{message}\n    {line}\n    {' ' * (pos - start)}^", pos)


def _describe(tok: _Tok) -> str:
    return "end of rule" if tok.kind == "end" else repr(tok.text)


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        m = _NUMBER_RE.match(text, i)
        if m:
            run = _RUN_RE.match(text, m.end()).group()
            if run:  # "7d", "1.2.3", "1e": a number must not run into letters or dots
                got = text[i:m.end() + len(run)]
                raise _syntax_error(text, f"expected a number at position {i}, got {got!r}", i)
            value = float(m.group())
            if not math.isfinite(value):
                raise _syntax_error(
                    text, f"expected a finite number at position {i}, got {m.group()!r}", i)
            toks.append(_Tok("num", m.group(), i, value))
            i = m.end()
            continue
        m = _NAME_RE.match(text, i)
        if m:
            word = m.group()
            if ":" in word:
                toks.append(_Tok("name", word, i, word))
            elif word.lower() in _KEYWORDS:
                toks.append(_Tok("kw", word.lower(), i))
            else:
                toks.append(_Tok("word", word, i))
            i = m.end()
            continue
        if ch in "`\"'":
            close = text.find(ch, i + 1)
            what = "name" if ch == "`" else "string"
            if close < 0:
                raise _syntax_error(text, f"expected a closing {ch} for the {what} at position "
                                          f"{i}, got end of rule", i)
            inner = text[i + 1:close]
            if ch == "`" and not inner:
                raise _syntax_error(text, f"expected a name between the backticks at position "
                                          f"{i}, got ``", i)
            toks.append(_Tok("name" if ch == "`" else "str", text[i:close + 1], i, inner))
            i = close + 1
            continue
        op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
        if op is None:
            raise _syntax_error(text, f"unexpected character {ch!r} at position {i}"
                                      f"{_CHAR_HINTS.get(ch, '')}", i)
        toks.append(_Tok("op", op, i))
        i += len(op)
    toks.append(_Tok("end", "", n))
    return toks


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


# ---- parser ------------------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.level = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def advance(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def fail(self, message: str, pos: int) -> RuleSyntaxError:
        return _syntax_error(self.text, message, pos)

    def expected(self, what: str, tok: _Tok, hint: str = "") -> RuleSyntaxError:
        return self.fail(f"expected {what} at position {tok.pos}, got {_describe(tok)}{hint}",
                         tok.pos)

    def need_number(self, node: Node) -> Node:
        if not node.numeric:
            raise self.fail(f"expected a numeric expression at position {node.pos}, got a "
                            f"condition", node.pos)
        return node

    def need_condition(self, node: Node) -> Node:
        # a numeric expression stopped where a comparison operator would have made it a condition
        if node.numeric:
            raise self.expected("a comparison operator", self.peek())
        return node

    def made(self, node: Node) -> Node:
        if node.depth > MAX_DEPTH:
            raise self.fail(f"rule nests more than {MAX_DEPTH} levels deep at position "
                            f"{node.pos}", node.pos)
        return node

    def parse(self) -> Node:
        node = self.expr(0)
        tok = self.peek()
        if node.numeric:
            raise self.expected("a comparison operator", tok)
        if tok.kind != "end":
            raise self.expected("'and', 'or' or end of rule", tok)
        return node

    def expr(self, rbp: int) -> Node:
        self.level += 1
        try:
            if self.level > MAX_DEPTH:
                tok = self.peek()
                raise self.fail(f"rule nests more than {MAX_DEPTH} levels deep at position "
                                f"{tok.pos}", tok.pos)
            left = self.prefix(rbp)
            while True:
                tok = self.peek()
                lbp = _INFIX.get(tok.text) if tok.kind in ("op", "kw") else None
                if lbp is None or lbp <= rbp:
                    return left
                left = self.infix(left, tok, lbp)
        finally:
            self.level -= 1

    def infix(self, left: Node, tok: _Tok, lbp: int) -> Node:
        op = tok.text
        if op in ("and", "or"):
            if left.numeric:
                raise self.expected("a comparison operator", tok)
            operands = [left]
            while self.peek().kind == "kw" and self.peek().text == op:
                self.advance()
                operands.append(self.need_condition(self.expr(lbp)))
            return self.made(BoolOp(op, tuple(operands), left.pos))
        if not left.numeric:
            hint = (" (comparisons do not chain: write 'a < b and b < c')"
                    if isinstance(left, Compare) and op in _COMPARISONS else "")
            raise self.expected("'and' or 'or'", tok, hint)
        self.advance()
        right = self.need_number(self.expr(lbp))
        cls = Compare if op in _COMPARISONS else BinOp
        return self.made(cls(op, left, right, left.pos))

    def prefix(self, rbp: int) -> Node:
        tok = self.advance()
        if tok.kind == "num":
            return Num(tok.value, tok.pos)
        if tok.kind == "name":
            return Feature(tok.value, tok.pos)
        if tok.kind == "kw":
            if tok.text != "not":
                raise self.expected("an expression", tok)
            if rbp > _NOT:  # 'a + not b', 'a < not b'
                raise self.expected("a numeric expression", tok)
            operand = self.need_condition(self.expr(_NOT))
            return self.made(Not(operand, tok.pos))
        if tok.kind == "word":
            if self.peek().kind == "op" and self.peek().text == "(":
                return self.call(tok)
            hint = (f" ({tok.text.lower()}() needs parentheses)" if tok.text.lower() in _FUNCTIONS
                    else " (feature names contain ':'; quote other names in backticks)")
            raise self.expected("an expression", tok, hint)
        if tok.kind == "op" and tok.text == "(":
            inner = self.expr(0)
            close = self.peek()
            if not (close.kind == "op" and close.text == ")"):
                what = "an operator or ')'" if inner.numeric else "'and', 'or' or ')'"
                raise self.expected(what, close)
            self.advance()
            # errors about a parenthesized operand point at its '('
            return dataclasses.replace(inner, pos=tok.pos)
        if tok.kind == "op" and tok.text == "-":
            if self.peek().kind == "num":
                return Num(-self.advance().value, tok.pos)
            operand = self.need_number(self.expr(_NEG))
            return self.made(Neg(operand, tok.pos))
        hint = ""
        if tok.kind == "str":
            hint = " (quoted text only goes in segment(...) and total(...))"
        raise self.expected("an expression", tok, hint)

    def call(self, tok: _Tok) -> Node:
        name = tok.text.lower()
        if name not in _FUNCTIONS:
            raise self.fail(f"unknown function {tok.text!r} at position {tok.pos} (functions: "
                            f"{', '.join(_FUNCTIONS)})", tok.pos)
        self.advance()  # '('
        if name in ("segment", "total"):
            arg = self.advance()
            if arg.kind != "str":
                what = "a quoted segment name" if name == "segment" else "a quoted name pattern"
                raise self.expected(what, arg)
            close = self.advance()
            if not (close.kind == "op" and close.text == ")"):
                raise self.expected("')'", close, f" ({name}() takes exactly 1 argument)")
            return (SegmentRef if name == "segment" else Total)(arg.value, tok.pos)
        lo, hi = _NUMERIC_FUNCS[name]
        args: list[Node] = []
        while True:
            args.append(self.need_number(self.expr(0)))
            nxt = self.peek()
            more = hi is None or len(args) < hi
            close = len(args) >= lo
            if nxt.kind == "op" and nxt.text == "," and more:
                self.advance()
                continue
            if nxt.kind == "op" and nxt.text == ")" and close:
                self.advance()
                break
            options = [f"'{o}'" for o, ok in ((",", more), (")", close)) if ok]
            hint = ""
            if nxt.kind == "op" and nxt.text in (",", ")"):
                hint = (f" ({name}() takes exactly 1 argument)" if hi == 1
                        else f" ({name}() takes at least {lo} arguments)")
            raise self.expected("an operator or " + " or ".join(options), nxt, hint)
        node = Defined(args[0], tok.pos) if name == "defined" else Call(name, tuple(args), tok.pos)
        return self.made(node)


def parse_rule(text: str) -> Node:
    """Parse rule text into its AST (a condition).

    Parameters
    ----------
    text : str
        The rule; see the module documentation for the language.

    Returns
    -------
    Node
        Root of the tree; ``str(node)`` gives canonical rule text.

    Raises
    ------
    RuleSyntaxError
        On a syntax or type error, naming the position and what was expected.

    Examples
    --------
    >>> str(parse_rule("not a:x > 1  OR  b:y<=2 and c:z == 3"))
    'not a:x > 1 or b:y <= 2 and c:z == 3'
    """
    if not isinstance(text, str):
        raise ConfigError(f"a rule must be a string, got {type(text).__name__} {text!r}")
    return _Parser(text).parse()


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


@dataclass(frozen=True, eq=False)
class CompiledRule:
    """A rule compiled against one feature layout: postfix code with resolved columns.

    Built by :meth:`RuleSegment.compile`; valid for any FeatureMatrix with the same
    ``feature_names`` (batch or online: :func:`bta.features.layout_for` gives the same layout).

    Attributes
    ----------
    name, expr : str
        The rule's name and text.
    code : ndarray of int64, shape (n_instructions, 2)
        ``(opcode, argument)`` rows, see :mod:`bta.segment._rule_kernels`.
    consts : ndarray of float64, shape (n_consts,)
    columns : ndarray of int64, shape (n_slots,)
        Sorted feature columns the rule reads; feature arguments in ``code`` index this array.
    nan_absent : ndarray of bool, shape (n_slots,)
        Whether each of ``columns`` is undefined (NaN), rather than 0, when absent.
    segments : tuple of str
        Segments referenced by ``segment(...)``, in slot order.
    segment_positions : tuple of int
        Where each of ``segments`` is first referenced in ``expr`` (for error messages).
    stack_size : int
        Deepest evaluation stack the code needs.
    feature_names : tuple of str
        The layout compiled against.
    """

    name: str
    expr: str
    ast: Node
    code: np.ndarray
    consts: np.ndarray
    columns: np.ndarray
    nan_absent: np.ndarray
    segments: tuple[str, ...]
    segment_positions: tuple[int, ...]
    stack_size: int
    feature_names: tuple[str, ...] = field(repr=False)

    def evaluate_row(self, indices: Any, values: Any, segments: Collection[str] = ()) -> bool:
        """Whether one user is in the segment, from the stored entries of its feature row.

        Runs in a compiled kernel; no pandas, a few small allocations.

        Parameters
        ----------
        indices : array-like of int, shape (nnz,)
            Feature columns of the user's stored entries (a CSR row's ``indices``), unique,
            in any order. Entries of columns the rule does not read are ignored.
        values : array-like of float, shape (nnz,)
            Their values. Absent columns read 0, or NaN when ``nan_absent``.
        segments : collection of str, default ()
            Names of the segments the user belongs to (e.g. ``book.segments_of(user)``);
            ``segment("x")`` is true iff ``"x"`` is in it.

        Returns
        -------
        bool

        Raises
        ------
        SchemaError
            If ``indices`` and ``values`` are not 1-d arrays of the same length, or
            ``indices`` are not integers.

        Examples
        --------
        >>> row = fm.X.getrow(0)                                     # doctest: +SKIP
        >>> compiled.evaluate_row(row.indices, row.data)            # doctest: +SKIP
        True
        """
        idx = np.ascontiguousarray(indices)
        try:
            val = np.ascontiguousarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise SchemaError(f"values must be numbers, got {np.asarray(values).dtype} "
                              f"values") from None
        if idx.ndim != 1 or val.shape != idx.shape:
            raise SchemaError(f"indices and values must be 1-d arrays of the same length, got "
                              f"shapes {idx.shape} and {val.shape}")
        # CSR rows carry int32 or int64 indices; both have a compiled kernel (see warmup)
        if idx.dtype != np.int64 and idx.dtype != np.int32:
            if idx.size and idx.dtype.kind not in "iu":
                raise SchemaError(f"indices must be integer feature columns, got dtype "
                                  f"{idx.dtype}")
            idx = idx.astype(np.int64)
        flags = (np.array([s in segments for s in self.segments], dtype=bool) if self.segments
                 else _NO_SEGMENTS)
        return bool(K.eval_row(self.code, self.consts, self.columns, self.nan_absent, flags,
                               idx, val, self.stack_size))

    def evaluate(self, fm: Any, book: SegmentBook | None = None) -> np.ndarray:
        """Membership of every user of ``fm`` (bool, shape (n_users,)).

        ``segment(...)`` references are read from ``book`` (aligned to ``fm.users`` by id).
        """
        self._check_layout(fm)
        external = _external_segments([self], fm, book, set())
        return _evaluate_block([self], fm, external)[self.name]

    def warmup(self) -> None:
        """Compile the row kernel (int32 and int64 indices) now, so that no request waits."""
        for dtype in (np.int32, np.int64):
            self.evaluate_row(np.empty(0, dtype), np.empty(0, np.float64))

    def _check_layout(self, fm: Any) -> None:
        names = tuple(fm.feature_names)
        if names is not self.feature_names and names != self.feature_names:
            raise ConfigError(f"rule {self.name!r} was compiled for another feature layout "
                              f"({len(self.feature_names)} features) than this matrix has "
                              f"({len(names)} features); compile it again for this matrix")


@dataclass(frozen=True)
class RuleSegment:
    """A segment defined by a rule over named features.

    Parameters
    ----------
    name : str
        Segment name (letters, digits, ``_``, ``-``, ``.``, ``:``).
    expr : str
        The rule; see :mod:`bta.segment.rules` for the language. Parsed (and type-checked)
        here, so a bad rule fails at construction.
    privacy : PrivacyPolicy, optional
        Feature names and ``total()`` patterns naming a blocked category are refused here;
        None means ``PrivacyPolicy()`` (the default sensitive deny list always applies).

    Attributes
    ----------
    ast : Node
        The parsed rule.

    Raises
    ------
    RuleSyntaxError
        If ``expr`` does not parse; the message starts with ``rule '<name>': ``.
    ConfigError
        If ``name`` or ``expr`` is not a valid name / a string, or the rule names a blocked
        category.

    Examples
    --------
    >>> rule = RuleSegment("auto_intenders",
    ...                    "count:page_view:autos:7d >= 3 and recency:ad_click:autos < 14")
    >>> seg = rule.segment(fm)                                       # doctest: +SKIP
    >>> seg.kind, seg.definition                                     # doctest: +SKIP
    ('rule', {'expr': 'count:page_view:autos:7d >= 3 and recency:ad_click:autos < 14'})
    """

    name: str
    expr: str
    privacy: PrivacyPolicy | None = field(default=None, repr=False, compare=False)
    ast: Node = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ok = (isinstance(self.name, str) and self.name != ""
              and all(ch.isalnum() or ch in "_-.:" for ch in self.name))
        check_param("name", self.name, ok,
                    "a non-empty string of letters, digits, '_', '-', '.', ':'")
        check_param("expr", self.expr, isinstance(self.expr, str), "a rule expression (str)")
        try:
            ast = parse_rule(self.expr)
        except RuleSyntaxError as exc:
            raise RuleSyntaxError(f"rule {self.name!r}: {exc}", exc.position) from None
        object.__setattr__(self, "ast", ast)
        policy = PrivacyPolicy() if self.privacy is None else self.privacy
        if not isinstance(policy, PrivacyPolicy):
            raise ConfigError(f"privacy must be a PrivacyPolicy or None, got "
                              f"{type(policy).__name__}")
        object.__setattr__(self, "privacy", policy)
        for node in _walk(ast):
            text = node.name if isinstance(node, Feature) else (
                node.pattern if isinstance(node, Total) else None)
            if text is None:
                continue
            # a pattern's literal runs count; its wildcards are resolved at compile time
            blocked = next((c for c in map(policy.blocked_category_in,
                                           [text, *re.split(r"[*?\[\]]+", text)]) if c), None)
            if blocked is not None:
                what = "feature" if isinstance(node, Feature) else "total() pattern"
                raise ConfigError(f"rule {self.name!r}: {what} {text!r} at position {node.pos} "
                                  f"reads the blocked (sensitive) category {blocked!r}; a rule "
                                  f"may use it only when the PrivacyPolicy allows it "
                                  f"(allowed_sensitive) for users who opted in")

    @property
    def feature_refs(self) -> tuple[str, ...]:
        """Feature names the rule names explicitly, in order of first appearance."""
        return tuple(dict.fromkeys(n.name for n in _walk(self.ast) if isinstance(n, Feature)))

    @property
    def segment_refs(self) -> tuple[str, ...]:
        """Segments referenced with ``segment(...)``, in order of first appearance."""
        return tuple(dict.fromkeys(n.name for n in _walk(self.ast) if isinstance(n, SegmentRef)))

    def compile(self, features: Any) -> CompiledRule:
        """Resolve feature names against a layout and compile to postfix code.

        Parameters
        ----------
        features : FeatureMatrix or Layout
            Anything with ``feature_names`` and ``nan_absent``.

        Raises
        ------
        UnknownNameError
            For an unknown feature name (closest names suggested) or a ``total()`` pattern
            matching nothing (columns of blocked categories do not count).
        """
        cols = features if isinstance(features, _Columns) else _Columns(features)
        try:
            code, consts, used, segs = _emit(self.ast, cols, self.privacy)
        except UnknownNameError as exc:
            raise UnknownNameError(f"rule {self.name!r}: {exc}") from None
        columns = np.unique(np.asarray(used, dtype=np.int64))
        code_arr = np.asarray(code, dtype=np.int64).reshape(-1, 2)
        feat = code_arr[:, 0] == K.OP_FEATURE
        code_arr[feat, 1] = np.searchsorted(columns, code_arr[feat, 1])
        return CompiledRule(
            name=self.name, expr=self.expr, ast=self.ast, code=np.ascontiguousarray(code_arr),
            consts=np.asarray(consts, dtype=np.float64), columns=columns,
            nan_absent=np.ascontiguousarray(cols.nan_absent[columns]),
            segments=tuple(s for s, _ in segs), segment_positions=tuple(p for _, p in segs),
            stack_size=_stack_size(code_arr), feature_names=cols.names)

    def segment(self, fm: Any, book: SegmentBook | None = None) -> Segment:
        """The segment over the users of ``fm`` (kind ``"rule"``, definition ``{"expr": ...}``).

        ``segment(...)`` references are read from ``book``; see :func:`evaluate_rules`.
        """
        return evaluate_rules([self], fm, book)[0]


def _walk(node: Node) -> Iterable[Node]:
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children()))


# ---- batch evaluation --------------------------------------------------------------------------
#: Floats per densified block of referenced columns (32 MiB): large enough that NumPy's
#: per-call overhead vanishes, small enough that 2M users x hundreds of columns never sit in
#: memory at once.
_BLOCK_FLOATS = 1 << 22


def evaluate_rules(rules: Iterable[RuleSegment] | Mapping[str, str], fm: Any,
                   book: SegmentBook | None = None,
                   privacy: PrivacyPolicy | None = None) -> list[Segment]:
    """Evaluate several rules over every user of ``fm``, sharing the column extraction.

    Parameters
    ----------
    rules : iterable of RuleSegment, or mapping of name to rule text
    fm : FeatureMatrix
        Features of shape (n_users, n_features).
    book : SegmentBook, optional
        Segments that rules may reference with ``segment("name")`` besides each other; its
        users are matched to ``fm.users`` by id.
    privacy : PrivacyPolicy, optional
        Policy of rules given as a mapping of text (RuleSegment objects carry their own).

    Returns
    -------
    list of Segment
        One per rule, in the order given: kind ``"rule"``, definition ``{"expr": expr}``,
        members of shape (n_users,).

    Raises
    ------
    ConfigError
        On duplicate rule names, or rules that reference each other in a cycle (the message
        names the cycle).
    UnknownNameError
        On an unknown feature or segment name (closest names suggested).
    SchemaError
        If ``book`` lacks some users of ``fm``.

    Notes
    -----
    Every feature column any rule reads is densified once per block of rows (absent entries:
    0, or NaN for ``nan_absent`` columns) straight from the CSR arrays; each rule's postfix
    code then runs as NumPy operations over the block. Rules run in dependency order, so a
    rule referencing another sees its finished membership.
    """
    rule_list = _as_rules(rules, privacy)
    cols = _Columns(fm, "fm")
    if book is not None and not isinstance(book, SegmentBook):
        raise ConfigError(f"book must be a SegmentBook or None, got {type(book).__name__}")
    compiled = [r.compile(cols) for r in rule_list]
    order = _dependency_order(compiled)
    external = _external_segments(compiled, fm, book, {c.name for c in compiled})
    members = _evaluate_block(order, fm, external)
    return [Segment(r.name, "rule", {"expr": r.expr}, members[r.name]) for r in rule_list]


def _as_rules(rules: Any, privacy: PrivacyPolicy | None = None) -> list[RuleSegment]:
    if isinstance(rules, Mapping):
        out = [RuleSegment(name, expr, privacy) for name, expr in rules.items()]
    elif isinstance(rules, (RuleSegment, str)) or not isinstance(rules, Iterable):
        raise ConfigError(f"rules must be an iterable of RuleSegment or a mapping of name to "
                          f"rule text, got {type(rules).__name__}")
    else:
        out = list(rules)
        bad = [r for r in out if not isinstance(r, RuleSegment)]
        if bad:
            raise ConfigError(f"rules must be RuleSegment objects, got {type(bad[0]).__name__} "
                              f"{bad[0]!r}")
    names = [r.name for r in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"rule names must be unique, got duplicates {dup}")
    return out


def _dependency_order(compiled: list[CompiledRule]) -> list[CompiledRule]:
    """Rules ordered so that each comes after the rules it references; cycles raise."""
    by_name = {c.name: c for c in compiled}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    order: list[CompiledRule] = []
    for root in compiled:
        if root.name in state:
            continue
        # iterative DFS: chains of thousands of rules must not hit the recursion limit
        path = [root.name]
        todo = [iter([s for s in root.segments if s in by_name])]
        state[root.name] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                done = path.pop()
                todo.pop()
                state[done] = 2
                order.append(by_name[done])
            elif state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise ConfigError(f"rules reference each other in a cycle: "
                                  f"{' -> '.join(cycle)}")
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter([s for s in by_name[nxt].segments if s in by_name]))
    return order


def _external_segments(compiled: Sequence[CompiledRule], fm: Any, book: SegmentBook | None,
                       internal: set[str]) -> dict[str, np.ndarray]:
    """Members (aligned to ``fm.users``) of referenced segments that are not rules of the call."""
    wanted: dict[str, None] = {}
    for c in compiled:
        for name, pos in zip(c.segments, c.segment_positions):
            if name in internal:
                continue
            if book is None or name not in book.names:
                known = sorted(internal | set(book.names if book is not None else ()))
                close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                where = "" if book is not None else " (no book was given)"
                raise UnknownNameError(f"rule {c.name!r}: unknown segment {name!r} at position "
                                       f"{pos}{where}{hint}")
            wanted[name] = None
    if not wanted:
        return {}
    users = np.asarray(fm.users)
    if len(book.users) == len(users) and np.array_equal(book.users, users):
        rows = None
    else:
        rows = pd.Index(book.users).get_indexer(users)
        missing = rows < 0
        if missing.any():
            example = users[missing][:1].tolist()[0]  # a Python value, for a plain repr
            raise SchemaError(f"book has no row for {int(missing.sum())} of the {len(users)} "
                              f"users of the feature matrix (e.g. {example!r}); "
                              f"segments referenced by rules must cover every user")
    return {n: book.column(n) if rows is None else book.column(n)[rows] for n in wanted}


def _evaluate_block(order: Sequence[CompiledRule], fm: Any,
                    external: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Members of each rule of ``order`` (dependency-ordered) over the users of ``fm``."""
    X = fm.X
    if getattr(X, "format", None) != "csr":
        X = X.tocsr()
    n_users, n_features = X.shape
    union = np.unique(np.concatenate([c.columns for c in order] + [np.empty(0, np.int64)]))
    colmap = np.full(n_features, -1, dtype=np.int64)
    colmap[union] = np.arange(union.size)
    fill = np.where(np.asarray(fm.nan_absent, dtype=bool)[union], np.nan, 0.0)
    slots = [colmap[c.columns] for c in order]
    out = {c.name: np.empty(n_users, dtype=bool) for c in order}
    chunk = int(min(max(_BLOCK_FLOATS // max(union.size, 1), 1024), max(n_users, 1)))
    block = np.empty((chunk, union.size), order="F")
    indptr, indices, data = X.indptr, X.indices, X.data
    with np.errstate(all="ignore"):  # IEEE results for x / 0, inf - inf, overflow: documented
        for r0 in range(0, n_users, chunk):
            r1 = min(n_users, r0 + chunk)
            K.fill_block(indptr, indices, data, colmap, fill, r0, r1, block)
            b = block[:r1 - r0]
            for c, sl in zip(order, slots):
                segs = [(out[s] if s in out else external[s])[r0:r1] for s in c.segments]
                out[c.name][r0:r1] = K.run_block(c.code, c.consts, [b[:, g] for g in sl], segs,
                                               r1 - r0)
    return out

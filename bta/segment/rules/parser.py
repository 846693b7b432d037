"""Tokenizer and Pratt parser of the rule language (:func:`parse_rule`).

The language is documented in :mod:`bta.segment.rules`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, NamedTuple

from bta.errors import ConfigError, RuleSyntaxError
from bta.segment.rules.syntax import (
    _COMPARISONS,
    _FUNCTIONS,
    _INFIX,
    _KEYWORDS,
    _NAME_RE,
    _NEG,
    _NOT,
    _NUMERIC_FUNCS,
    MAX_DEPTH,
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

__all__ = ["parse_rule"]


# ---- tokens ------------------------------------------------------------------------------------
class _Tok(NamedTuple):
    kind: str   # num | name | word | kw | str | op | end
    text: str   # source text (keywords lower-cased)
    pos: int
    value: Any = None
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

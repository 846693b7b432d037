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

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from bta.errors import ConfigError, RuleSyntaxError, SchemaError, UnknownNameError, check_param
from bta.privacy import PrivacyPolicy
from bta.segment.rules import kernels as K
from bta.segment.rules.syntax import (
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
    _walk,
)
from bta.segment.rules.compile import _NO_SEGMENTS, _Columns, _emit, _stack_size
from bta.segment.rules.parser import parse_rule
from bta.segment.book import Segment, SegmentBook

__all__ = [
    "RuleSegment", "CompiledRule", "evaluate_rules", "parse_rule", "MAX_DEPTH",
    "Node", "Num", "Feature", "Total", "SegmentRef", "Neg", "BinOp", "Call", "Defined",
    "Compare", "Not", "BoolOp",
]


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
        ``(opcode, argument)`` rows, see :mod:`bta.segment.rules.kernels`.
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

"""Rule segments: parser (errors, precedence, round trip, fuzzing), evaluation against a naive
per-user evaluator, the one-user row path, segment references and their dependency order."""

from __future__ import annotations

import ast as pyast
import builtins
import inspect
import math
from fnmatch import fnmatchcase

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, RuleSyntaxError, SchemaError, UnknownNameError
from bta.features import FeatureSpec
from bta.features.matrix import FeatureMatrix
from bta.segment import rules as rules_mod
from bta.segment.book import Segment, SegmentBook
from bta.segment.rules import (
    MAX_DEPTH, BinOp, BoolOp, Call, Compare, Defined, Feature, Neg, Not, Num, RuleSegment,
    SegmentRef, Total, evaluate_rules, parse_rule,
)

# ---- a small random world ---------------------------------------------------------------------
# names exercise the lexer: digits as categories, '-', '.', and one that needs backticks
NAMES = ("count:page_view:autos:7d", "count:page_view:17:7d", "decay:search:v1.2",
         "recency:ad_click:autos", "recency:page_view:sci-fi", "rfm:monetary",
         "count:page_view:Autos & Vehicles:7d")
NAN_ABSENT = np.array([False, False, False, True, True, False, False])
SEGMENTS = ("seg_a", "seg_b")
PATTERNS = ("count:*", "recency:*", "*:autos*", "*")
# None: not stored (0, or NaN in nan_absent columns); 0.0 is a stored, defined zero
CELLS = [None, None, None, None, 0.0, 1.0, 2.5, 3.0, 14.0, -1.0, 0.1, 1e308, math.inf]
CONSTS = [0.0, 1.0, 2.5, 3.0, 14.0, 0.1, 1e-3, 1e300, -1.0, -2.5]


SPEC = FeatureSpec()


def make_fm(cells: list[list], users=None) -> FeatureMatrix:
    """FeatureMatrix over NAMES from a dense list of rows (None: no stored entry)."""
    indptr, indices, data = [0], [], []
    for row in cells:
        for j, v in enumerate(row):
            if v is not None:
                indices.append(j)
                data.append(v)
        indptr.append(len(indices))
    X = sp.csr_matrix((np.asarray(data, dtype=np.float64), np.asarray(indices, dtype=np.int32),
                       np.asarray(indptr, dtype=np.int32)), shape=(len(cells), len(NAMES)))
    users = np.arange(len(cells)) if users is None else np.asarray(users)
    return FeatureMatrix(X=X, feature_names=NAMES, users=users,
                         as_of=pd.Timestamp("2026-01-01", tz="UTC"), spec=SPEC,
                         nan_absent=NAN_ABSENT)


# ---- the naive reference: walk the AST for one user --------------------------------------------
def naive_value(node, row: dict, seg: dict):
    """Value of ``node`` for one user, straight from the documented semantics."""
    if isinstance(node, Num):
        return float(node.value)
    if isinstance(node, Feature):
        return row[node.name]
    if isinstance(node, Total):
        vals = [row[n] for n in NAMES if fnmatchcase(n, node.pattern) and not math.isnan(row[n])]
        if not vals:
            return math.nan
        acc = 0.0
        for v in vals:
            acc = acc + v
        return acc
    if isinstance(node, SegmentRef):
        return seg[node.name]
    if isinstance(node, Neg):
        return -naive_value(node.operand, row, seg)
    if isinstance(node, BinOp):
        a, b = naive_value(node.left, row, seg), naive_value(node.right, row, seg)
        if node.op == "/":
            with np.errstate(all="ignore"):
                return float(np.float64(a) / np.float64(b))
        return {"+": a + b, "-": a - b, "*": a * b}[node.op]
    if isinstance(node, Call):
        vals = [naive_value(x, row, seg) for x in node.args]
        if node.func == "abs":
            return abs(vals[0])
        defined = [v for v in vals if not math.isnan(v)]
        if not defined:
            return math.nan
        return min(defined) if node.func == "min" else max(defined)
    if isinstance(node, Defined):
        return not math.isnan(naive_value(node.operand, row, seg))
    if isinstance(node, Compare):
        a, b = naive_value(node.left, row, seg), naive_value(node.right, row, seg)
        if math.isnan(a) or math.isnan(b):
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b,
                "!=": a != b}[node.op]
    if isinstance(node, Not):
        return not naive_value(node.operand, row, seg)
    if isinstance(node, BoolOp):
        vals = [naive_value(x, row, seg) for x in node.operands]
        return all(vals) if node.op == "and" else any(vals)
    raise TypeError(node)


def naive_members(node, fm: FeatureMatrix, segs: dict[str, np.ndarray]) -> np.ndarray:
    df = fm.to_pandas()
    out = []
    for i, (_, r) in enumerate(df.iterrows()):
        row = {n: float(r[n]) for n in NAMES}
        out.append(bool(naive_value(node, row, {k: bool(v[i]) for k, v in segs.items()})))
    return np.array(out, dtype=bool)


# ---- random rule ASTs -------------------------------------------------------------------------
num_leaf = st.one_of(
    st.sampled_from(NAMES).map(Feature),
    st.sampled_from(CONSTS).map(Num),
    st.sampled_from(PATTERNS).map(Total),
)
numeric = st.recursive(num_leaf, lambda c: st.one_of(
    c.map(Neg),
    st.builds(BinOp, st.sampled_from("+-*/"), c, c),
    c.map(lambda x: Call("abs", (x,))),
    st.builds(Call, st.sampled_from(["min", "max"]), st.lists(c, min_size=2, max_size=3)
              .map(tuple)),
), max_leaves=6)
OPS = ["<", "<=", ">", ">=", "==", "!="]
cond_leaf = st.one_of(
    st.builds(Compare, st.sampled_from(OPS), numeric, numeric),
    # plain 'feature op number' comparisons, as most rules are, so NaN semantics decide often
    st.builds(Compare, st.sampled_from(OPS), st.sampled_from(NAMES).map(Feature),
              st.sampled_from(CONSTS).map(Num)),
    numeric.map(Defined),
    st.sampled_from(SEGMENTS).map(SegmentRef),
)
conditions = st.recursive(cond_leaf, lambda c: st.one_of(
    c.map(Not),
    st.builds(BoolOp, st.sampled_from(["and", "or"]), st.lists(c, min_size=2, max_size=3)
              .map(tuple)),
), max_leaves=5)
matrices = st.integers(0, 12).flatmap(lambda n: st.lists(
    st.lists(st.sampled_from(CELLS), min_size=len(NAMES), max_size=len(NAMES)),
    min_size=n, max_size=n))
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(tree=conditions)
def test_round_trip_parse_str_parse(tree):
    text = str(tree)
    parsed = parse_rule(text)
    assert parsed == tree, text
    assert str(parsed) == text


@SETTINGS
@given(tree=conditions, cells=matrices, data=st.data())
def test_vectorized_and_row_paths_match_naive_evaluator(tree, cells, data):
    fm = make_fm(cells)
    segs = {s: np.array(data.draw(st.lists(st.booleans(), min_size=fm.n_users,
                                           max_size=fm.n_users)), dtype=bool) for s in SEGMENTS}
    book = SegmentBook.from_segments(
        fm.users, [Segment(s, "custom", {}, m) for s, m in segs.items()], 1)
    rule = RuleSegment("r", str(tree))
    expected = naive_members(tree, fm, segs)
    got = rule.segment(fm, book)
    np.testing.assert_array_equal(got.members, expected, err_msg=str(tree))
    compiled = rule.compile(fm)
    for i in range(fm.n_users):
        lo, hi = fm.X.indptr[i], fm.X.indptr[i + 1]
        mine = {s for s in SEGMENTS if segs[s][i]}
        assert compiled.evaluate_row(fm.X.indices[lo:hi], fm.X.data[lo:hi], mine) == expected[i]


def test_every_operator_on_every_feature_matches_naive():
    # exhaustive and deterministic: each comparison, function and operator over each feature
    # (and pairs) in one evaluate_rules call, against the naive evaluator and the row path
    rng = np.random.default_rng(5)
    fm = make_fm([[CELLS[k] for k in rng.integers(0, len(CELLS), len(NAMES))]
                  for _ in range(60)])
    trees = []
    feats = [Feature(n) for n in NAMES]
    for f in feats:
        for g in feats:
            trees += [Compare(op, f, g) for op in OPS]
            trees += [Compare(op, Call(fn, (f, g)), Num(2.5)) for op in ("<", "==", "!=")
                      for fn in ("min", "max")]
            trees += [Compare(">", BinOp(op, f, g), Num(1.0)) for op in "+-*/"]
        trees += [Compare(op, f, Num(c)) for op in OPS for c in CONSTS]
        trees += [Defined(f), Not(Compare("<", f, Num(3.0))), Compare("<", Neg(f), Num(-1.0)),
                  Compare(">=", Call("abs", (f,)), Num(1.0))]
    trees += [Compare(op, Total(p), Num(c)) for op in OPS for p in PATTERNS for c in CONSTS]
    trees += [Defined(Total(p)) for p in PATTERNS]
    rules = [RuleSegment(f"r{i}", str(t)) for i, t in enumerate(trees)]
    segs = evaluate_rules(rules, fm)
    df = fm.to_pandas()
    rows = [{n: float(v) for n, v in zip(NAMES, r)} for r in df.itertuples(index=False)]
    X = fm.X
    for tree, rule, seg in zip(trees, rules, segs):
        expected = [bool(naive_value(tree, row, {})) for row in rows]
        assert seg.members.tolist() == expected, rule.expr
        compiled = rule.compile(fm)
        got = [compiled.evaluate_row(X.indices[X.indptr[i]:X.indptr[i + 1]],
                                     X.data[X.indptr[i]:X.indptr[i + 1]]) for i in range(60)]
        assert got == expected, rule.expr


# ---- parser fuzzing ---------------------------------------------------------------------------
SOUP = ["a:b", "count:page_view:17:7d", "`x y`", "3", ".5", "1e-3", "and", "or", "not", "(", ")",
        ",", "<", "<=", "==", "!=", ">", "+", "-", "*", "/", "min", "max", "abs", "defined",
        "segment", "total", '"s"', "'t'", "__import__", "os", ".", "=", "[", "]", "lambda", ":",
        "\n", "7d", "`", '"']


def _parse_or_syntax_error(text: str) -> None:
    try:
        parse_rule(text)
    except RuleSyntaxError as exc:
        assert 0 <= exc.position <= len(text)
        first, line, caret = str(exc).split("\n")
        assert f"at position {exc.position}" in first
        assert caret.endswith("^")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab:cd_0123.e-+*/<>=!()`'\",; \tnotrxy")),
                    max_size=40))
def test_random_text_parses_or_raises_rule_syntax_error(text):
    _parse_or_syntax_error(text)


@settings(max_examples=300, deadline=None)
@given(soup=st.lists(st.sampled_from(SOUP), max_size=14))
def test_random_token_soup_parses_or_raises_rule_syntax_error(soup):
    _parse_or_syntax_error(" ".join(soup))


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=30))
def test_arbitrary_unicode_parses_or_raises_rule_syntax_error(text):
    _parse_or_syntax_error(text)


@pytest.mark.parametrize("text", [
    "__import__('os')", "__import__('os').system('true') > 0", "os.system('true')",
    "x.__class__", "count:page_view:autos:7d.__class__ > 1", "().__class__", "(lambda: 1)()",
    "open('f')", "a:b[0] > 1", "eval('1') > 0", "exec('x')", "a:b > 1; import os",
    "getattr(a:b, 'x') > 1",
])
def test_python_code_is_a_syntax_error(text, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the rule parser must never evaluate text")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    with pytest.raises(RuleSyntaxError):
        parse_rule(text)


def test_module_never_calls_eval_exec_or_compile():
    tree = pyast.parse(inspect.getsource(rules_mod))
    calls = [n.func for n in pyast.walk(tree) if isinstance(n, pyast.Call)]
    names = {f.id for f in calls if isinstance(f, pyast.Name)}
    attrs = {f.attr for f in calls if isinstance(f, pyast.Attribute)}
    assert not names & {"eval", "exec", "compile", "__import__"}
    assert not attrs & {"eval", "exec", "literal_eval", "import_module"}


# ---- bad rules: exact messages ------------------------------------------------------------------
BAD_RULES = [
    ("", "expected an expression at position 0, got end of rule"),
    ("count:page_view:autos:7d autos",
     "expected a comparison operator at position 25, got 'autos'"),
    ("count:page_view:autos:7d", "expected a comparison operator at position 24, got end of rule"),
    ("a:b > 1 autos", "expected 'and', 'or' or end of rule at position 8, got 'autos'"),
    ("a:b > 1 and", "expected an expression at position 11, got end of rule"),
    ("a:b and c:d > 1", "expected a comparison operator at position 4, got 'and'"),
    ("a:b > 1 and c:d", "expected a comparison operator at position 15, got end of rule"),
    ("not a:b", "expected a comparison operator at position 7, got end of rule"),
    ("1 < a:b < 3", "expected 'and' or 'or' at position 8, got '<' (comparisons do not chain: "
                    "write 'a < b and b < c')"),
    ("(a:b > 1) + 2", "expected 'and' or 'or' at position 10, got '+'"),
    ("a:b + (c:d > 1) > 0", "expected a numeric expression at position 6, got a condition"),
    ("a:b + not c:d > 1", "expected a numeric expression at position 6, got 'not'"),
    ("-segment('x') > 1", "expected a numeric expression at position 1, got a condition"),
    ("(a:b > 1", "expected 'and', 'or' or ')' at position 8, got end of rule"),
    ("(a:b + 1 > 2", "expected 'and', 'or' or ')' at position 12, got end of rule"),
    ("(a:b + 1 x:y) > 2", "expected an operator or ')' at position 9, got 'x:y'"),
    ("a:b > 1)", "expected 'and', 'or' or end of rule at position 7, got ')'"),
    ("a:b = 1", "unexpected character '=' at position 4 (use '==' to compare)"),
    ("a:b > 1 && c:d > 1", "unexpected character '&' at position 8 (use 'and')"),
    ("a:b > 1 || c:d > 1", "unexpected character '|' at position 8 (use 'or')"),
    ("!(a:b > 1)", "unexpected character '!' at position 0 (use 'not', or '!=' to compare)"),
    ("a:b > 1 # comment", "unexpected character '#' at position 8"),
    ("recency:ad_click:autos < 7d", "expected a number at position 25, got '7d'"),
    ("a:b > 1.2.3", "expected a number at position 6, got '1.2.3'"),
    ("a:b > 1e", "expected a number at position 6, got '1e'"),
    ("a:b > 1e999", "expected a finite number at position 6, got '1e999'"),
    ("age > 30", "expected an expression at position 0, got 'age' (feature names contain ':'; "
                 "quote other names in backticks)"),
    ("min > 3", "expected an expression at position 0, got 'min' (min() needs parentheses)"),
    ("foo(a:b) > 1", "unknown function 'foo' at position 0 (functions: abs, defined, max, min, "
                     "segment, total)"),
    ("min(a:b) > 1", "expected an operator or ',' at position 7, got ')' (min() takes at least "
                     "2 arguments)"),
    ("abs(a:b, 1) > 1", "expected an operator or ')' at position 7, got ',' (abs() takes "
                        "exactly 1 argument)"),
    ("max(a:b, 1 2) > 1", "expected an operator or ',' or ')' at position 11, got '2'"),
    ("min() > 1", "expected an expression at position 4, got ')'"),
    ("defined(a:b > 1)", "expected a numeric expression at position 8, got a condition"),
    ("segment(auto) or a:b > 1", "expected a quoted segment name at position 8, got 'auto'"),
    ("segment('a', 'b')", "expected ')' at position 11, got ',' (segment() takes exactly 1 "
                          "argument)"),
    ("total(count:x) > 1", "expected a quoted name pattern at position 6, got 'count:x'"),
    ("segment('abc", "expected a closing ' for the string at position 8, got end of rule"),
    ("`count:a b > 1", "expected a closing ` for the name at position 0, got end of rule"),
    ("`` > 1", "expected a name between the backticks at position 0, got ``"),
    ("'x' > 1", "expected an expression at position 0, got \"'x'\" (quoted text only goes in "
                "segment(...) and total(...))"),
    ("a:b > 1 and or c:d > 1", "expected an expression at position 12, got 'or'"),
    ("a:b * * 2 > 1", "expected an expression at position 6, got '*'"),
    ("a:b > 1 not c:d > 1", "expected 'and', 'or' or end of rule at position 8, got 'not'"),
    ("a:b >\n  1 2", "expected 'and', 'or' or end of rule at position 10, got '2'"),
]


@pytest.mark.parametrize("text, message", BAD_RULES)
def test_bad_rules_give_exact_messages(text, message):
    with pytest.raises(RuleSyntaxError) as info:
        parse_rule(text)
    assert str(info.value).split("\n")[0] == message
    assert info.value.position == int(message.split("at position ")[1].split(",")[0].split()[0])


def test_error_shows_the_line_and_a_caret_under_the_position():
    with pytest.raises(RuleSyntaxError) as info:
        parse_rule("count:page_view:autos:7d >= 3\n  and recency:ad_click:autos < 14 14")
    assert str(info.value) == (
        "expected 'and', 'or' or end of rule at position 64, got '14'\n"
        "      and recency:ad_click:autos < 14 14\n"
        "                                      ^")


def test_rule_segment_names_the_rule_in_syntax_errors():
    with pytest.raises(RuleSyntaxError, match=r"^rule 'autos': expected a comparison operator "
                                              r"at position 3, got end of rule") as info:
        RuleSegment("autos", "a:b")
    assert info.value.position == 3


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000])
def test_deep_nesting_is_a_syntax_error_not_a_crash(depth):
    with pytest.raises(RuleSyntaxError, match="rule nests more than 100 levels deep"):
        parse_rule("(" * depth + "a:b > 1" + ")" * depth)
    with pytest.raises(RuleSyntaxError, match="rule nests more than 100 levels deep"):
        parse_rule("not " * depth + "a:b > 1")
    with pytest.raises(RuleSyntaxError, match="rule nests more than 100 levels deep"):
        parse_rule("a:b" + " + a:b" * depth + " > 1")


def test_long_and_or_chains_stay_flat():
    text = " or ".join(f"a:b > {i}" for i in range(3000))
    tree = parse_rule(text)
    assert isinstance(tree, BoolOp) and len(tree.operands) == 3000
    assert str(tree) == text


@pytest.mark.parametrize("name, expr, cls, message", [
    ("", "a:b > 1", ConfigError, "name must be a non-empty string of letters, digits, '_', '-', "
                                 "'.', ':', got ''"),
    ("a b", "a:b > 1", ConfigError, "name must be a non-empty string of letters, digits, '_', "
                                    "'-', '.', ':', got 'a b'"),
    ("ok", 3, ConfigError, "expr must be a rule expression (str), got 3"),
])
def test_rule_segment_parameters(name, expr, cls, message):
    with pytest.raises(cls) as info:
        RuleSegment(name, expr)
    assert str(info.value) == message


# ---- precedence, associativity, lexing --------------------------------------------------------
A, B, C = Feature("a:x"), Feature("b:y"), Feature("c:z")


def gt(x, v=1):
    return Compare(">", x, Num(v))


@pytest.mark.parametrize("text, tree", [
    ("not a:x > 1 or b:y > 1 and c:z > 1",
     BoolOp("or", (Not(gt(A)), BoolOp("and", (gt(B), gt(C)))))),
    ("NOT a:x > 1 Or b:y > 1 AND c:z > 1",
     BoolOp("or", (Not(gt(A)), BoolOp("and", (gt(B), gt(C)))))),
    ("not (a:x > 1 or b:y > 1)", Not(BoolOp("or", (gt(A), gt(B))))),
    ("not not a:x > 1", Not(Not(gt(A)))),
    ("a:x > 1 or b:y > 1 or c:z > 1", BoolOp("or", (gt(A), gt(B), gt(C)))),
    ("(a:x > 1 or b:y > 1) or c:z > 1", BoolOp("or", (BoolOp("or", (gt(A), gt(B))), gt(C)))),
    ("a:x > 1 or (b:y > 1 or c:z > 1)", BoolOp("or", (gt(A), BoolOp("or", (gt(B), gt(C)))))),
    ("a:x - b:y - c:z > 1", gt(BinOp("-", BinOp("-", A, B), C))),
    ("a:x - (b:y - c:z) > 1", gt(BinOp("-", A, BinOp("-", B, C)))),
    ("a:x / b:y * c:z > 1", gt(BinOp("*", BinOp("/", A, B), C))),
    ("a:x + b:y * c:z > 1", gt(BinOp("+", A, BinOp("*", B, C)))),
    ("(a:x + b:y) * c:z > 1", gt(BinOp("*", BinOp("+", A, B), C))),
    ("-a:x * b:y > 1", gt(BinOp("*", Neg(A), B))),
    ("- -a:x > 1", gt(Neg(Neg(A)))),
    ("a:x > -3", Compare(">", A, Num(-3.0))),
    ("a:x > -(3)", Compare(">", A, Neg(Num(3.0)))),
    ("a:x + 1 > b:y * 2", Compare(">", BinOp("+", A, Num(1.0)), BinOp("*", B, Num(2.0)))),
    ("MIN(a:x, b:y, c:z) >= abs(-a:x)",
     Compare(">=", Call("min", (A, B, C)), Call("abs", (Neg(A),)))),
    ("segment(\"s\") and defined(a:x) or total('count:*') > 0",
     BoolOp("or", (BoolOp("and", (SegmentRef("s"), Defined(A))),
                   Compare(">", Total("count:*"), Num(0.0))))),
])
def test_precedence_and_associativity(text, tree):
    assert parse_rule(text) == tree
    assert parse_rule(str(tree)) == tree


@pytest.mark.parametrize("text, name", [
    ("count:page_view:17:7d > 0", "count:page_view:17:7d"),
    ("recency:ad_click:sci-fi < 3", "recency:ad_click:sci-fi"),
    ("count:page_view:v1.2:7d > 0", "count:page_view:v1.2:7d"),
    ("count:page_view:a-b:7d-3 > 0", "count:page_view:a-b:7d-3"),
    ("`count:page_view:Autos & Vehicles:7d` > 0", "count:page_view:Autos & Vehicles:7d"),
    ("`age` > 0", "age"),
    ("not:really:x > 0", "not:really:x"),
])
def test_feature_names_are_single_tokens(text, name):
    tree = parse_rule(text)
    assert isinstance(tree, Compare) and tree.left == Feature(name)


@pytest.mark.parametrize("literal, value", [
    ("3", 3.0), ("3.5", 3.5), (".5", 0.5), ("3.", 3.0), ("1e-3", 1e-3), ("2.5E+4", 25000.0),
    ("-7", -7.0), ("0", 0.0),
])
def test_number_literals(literal, value):
    assert parse_rule(f"a:x > {literal}") == Compare(">", A, Num(value))


def test_subtraction_needs_spaces_around_minus():
    assert parse_rule("a:x - b:y > 0") == gt(BinOp("-", A, B), 0)
    assert parse_rule("a:x-b:y > 0") == gt(Feature("a:x-b:y"), 0)
    assert parse_rule("a:x -3 > 0") == gt(BinOp("-", A, Num(3.0)), 0)


# ---- semantics on fixed data --------------------------------------------------------------------
CLICKED, NEVER = 0, 1
FIXED = make_fm([
    # count:autos, count:17, decay, recency:ad_click:autos, recency:sci-fi, monetary, odd
    [4.0, None, 0.5, 3.0, 0.0, 12.0, None],   # clicked 3 days ago, sci-fi today (a stored 0)
    [None, 2.0, None, None, None, None, 1.0],  # never clicked, never saw sci-fi
])


@pytest.mark.parametrize("expr, expected", [
    ("recency:ad_click:autos < 14", [True, False]),
    ("recency:ad_click:autos >= 14", [False, False]),
    ("recency:ad_click:autos != 3", [False, False]),
    ("recency:ad_click:autos == 3", [True, False]),
    ("not (recency:ad_click:autos < 14)", [False, True]),
    ("not recency:ad_click:autos < 14", [False, True]),
    ("defined(recency:ad_click:autos)", [True, False]),
    ("defined(recency:page_view:sci-fi)", [True, False]),
    ("recency:page_view:sci-fi == 0", [True, False]),
    ("count:page_view:autos:7d == 0", [False, True]),
    ("recency:ad_click:autos + 1 < 100", [True, False]),
    ("min(recency:ad_click:autos, recency:page_view:sci-fi) == 0", [True, False]),
    ("max(recency:ad_click:autos, recency:page_view:sci-fi) == 3", [True, False]),
    ("min(recency:ad_click:autos, count:page_view:17:7d) == 2", [False, True]),
    ("defined(min(recency:ad_click:autos, recency:page_view:sci-fi))", [True, False]),
    ("total('recency:*') == 3", [True, False]),
    ("defined(total('recency:*'))", [True, False]),
    ("total('count:*') == 4", [True, False]),
    ("total('count:*') == 3", [False, True]),
    ("rfm:monetary / 0 > 1e308", [True, False]),
    ("defined(count:page_view:17:7d / 0)", [False, True]),  # 0 / 0 vs 2 / 0
    ("-count:page_view:17:7d / 0 < -1e308", [False, True]),
    ("`count:page_view:Autos & Vehicles:7d` > 0", [False, True]),
    ("1 < 2", [True, True]),
    ("1 > 2 or 3 < 4 and not 1 == 1", [False, False]),
])
def test_missing_value_semantics(expr, expected):
    seg = RuleSegment("r", expr).segment(FIXED)
    assert seg.members.tolist() == expected
    compiled = RuleSegment("r", expr).compile(FIXED)
    X = FIXED.X
    rows = [compiled.evaluate_row(X.indices[X.indptr[i]:X.indptr[i + 1]],
                                  X.data[X.indptr[i]:X.indptr[i + 1]]) for i in range(2)]
    assert rows == expected


def test_segment_object():
    rule = RuleSegment("clickers", "defined(recency:ad_click:autos)")
    seg = rule.segment(FIXED)
    assert (seg.name, seg.kind, seg.definition) == ("clickers", "rule",
                                                    {"expr": "defined(recency:ad_click:autos)"})
    assert seg.members.dtype == bool and seg.members.shape == (2,)
    assert rule.feature_refs == ("recency:ad_click:autos",)


def test_references():
    rule = RuleSegment("r", "segment('b') and a:x > b:y or segment('a') and a:x > 1 "
                            "and total('count:*') > 0 or segment('b')")
    assert rule.feature_refs == ("a:x", "b:y")
    assert rule.segment_refs == ("b", "a")


# ---- names: unknown features and segments -------------------------------------------------------
@pytest.mark.parametrize("expr, message", [
    ("count:page_view:auto:7d > 1",
     "rule 'r': unknown feature 'count:page_view:auto:7d' at position 0; did you mean "
     "'count:page_view:autos:7d', 'count:page_view:17:7d', "
     "'count:page_view:Autos & Vehicles:7d'?"),
    ("rfm:monetary > 1 or count:page_view:autos:7d-3 > 0",
     "rule 'r': unknown feature 'count:page_view:autos:7d-3' at position 20; did you mean "
     "'count:page_view:autos:7d', 'count:page_view:17:7d', "
     "'count:page_view:Autos & Vehicles:7d'? (to subtract, put spaces around "
     "'-': 'count:page_view:autos:7d - 3')"),
    ("zzz:qqq > 1", "rule 'r': unknown feature 'zzz:qqq' at position 0"),
    ("total('nothing:*') > 1",
     "rule 'r': no feature matches the pattern 'nothing:*' of total() at position 0"),
])
def test_unknown_features(expr, message):
    with pytest.raises(UnknownNameError) as info:
        RuleSegment("r", expr).segment(FIXED)
    assert str(info.value) == message


def test_unknown_segment_suggests_close_names():
    with pytest.raises(UnknownNameError) as info:
        evaluate_rules({"autos_fans": "segment('auto_fans')", "x": "1 < 2"}, FIXED)
    assert str(info.value) == ("rule 'autos_fans': unknown segment 'auto_fans' at position 0 "
                               "(no book was given); did you mean 'autos_fans'?")
    book = SegmentBook.from_segments(FIXED.users, [Segment("auto_fanz", "custom", {},
                                                                     np.ones(2, bool))], 1)
    with pytest.raises(UnknownNameError) as info:
        evaluate_rules({"r": "segment('auto_fans')"}, FIXED, book)
    assert str(info.value) == ("rule 'r': unknown segment 'auto_fans' at position 0; did you "
                               "mean 'auto_fanz'?")


# ---- several rules: dependency order, cycles, books ---------------------------------------------
def test_rules_see_each_other_in_dependency_order():
    rules = [
        RuleSegment("top", "segment('mid') and count:page_view:17:7d >= 0"),
        RuleSegment("mid", "segment('base') or rfm:monetary > 100"),
        RuleSegment("base", "defined(recency:ad_click:autos)"),
        RuleSegment("neither", "not segment('top') and not segment('base')"),
    ]
    segs = evaluate_rules(rules, FIXED)
    assert [s.name for s in segs] == ["top", "mid", "base", "neither"]
    assert [s.members.tolist() for s in segs] == [[True, False]] * 3 + [[False, True]]


@pytest.mark.parametrize("rules, cycle", [
    ({"a": "segment('a')"}, "a -> a"),
    ({"a": "segment('b')", "b": "segment('c') or 1 < 2", "c": "segment('a')"}, "a -> b -> c -> a"),
    ({"x": "1 < 2", "a": "segment('x') and segment('b')", "b": "not segment('a')"}, "a -> b -> a"),
])
def test_cycles_are_named(rules, cycle):
    with pytest.raises(ConfigError) as info:
        evaluate_rules(rules, FIXED)
    assert str(info.value) == f"rules reference each other in a cycle: {cycle}"


def test_long_dependency_chain_does_not_recurse():
    n = 3000
    rules = {f"r{i}": f"segment('r{i + 1}')" for i in range(n)}
    rules[f"r{n}"] = "rfm:monetary > 10"
    segs = evaluate_rules(rules, FIXED)
    assert all(s.members.tolist() == [True, False] for s in segs)


def test_book_segments_are_aligned_by_user_id():
    fm = make_fm([[1.0] + [None] * 6, [None] * 7, [2.0] + [None] * 6], users=["u1", "u2", "u3"])
    book = SegmentBook.from_segments(
        ["u3", "u9", "u1", "u2"],
        [Segment("vip", "custom", {}, np.array([True, True, False, True])),
         Segment("r", "custom", {}, np.array([True, True, True, True]))], 1)
    segs = evaluate_rules({"a": "segment('vip') and count:page_view:autos:7d > 0",
                           "r": "count:page_view:autos:7d > 1",
                           "b": "segment('r')"}, fm, book)
    # vip: u1 False, u2 True, u3 True; 'r' in the call wins over the book's 'r'
    assert [s.members.tolist() for s in segs] == [[False, False, True], [False, False, True],
                                                  [False, False, True]]
    small = SegmentBook.from_segments(["u1", "u2"], [Segment(
        "vip", "custom", {}, np.array([True, False]))], 1)
    with pytest.raises(SchemaError, match=r"^book has no row for 1 of the 3 users of the feature "
                                          r"matrix \(e.g. 'u3'\)"):
        evaluate_rules({"a": "segment('vip')"}, fm, small)


@pytest.mark.parametrize("rules, message", [
    ([RuleSegment("a", "1 < 2"), RuleSegment("a", "1 > 2")],
     "rule names must be unique, got duplicates ['a']"),
    ("a:b > 1", "rules must be an iterable of RuleSegment or a mapping of name to rule text, "
                "got str"),
    (["a:b > 1"], "rules must be RuleSegment objects, got str 'a:b > 1'"),
])
def test_evaluate_rules_bad_input(rules, message):
    with pytest.raises(ConfigError) as info:
        evaluate_rules(rules, FIXED)
    assert str(info.value) == message


def test_evaluate_rules_bad_matrix_or_book():
    with pytest.raises(ConfigError, match=r"^fm must be a FeatureMatrix or a layout with "
                                          r"feature_names and nan_absent, got DataFrame$"):
        evaluate_rules({"a": "rfm:monetary > 1"}, FIXED.to_pandas())
    with pytest.raises(ConfigError, match=r"^book must be a SegmentBook or None, got dict$"):
        evaluate_rules({"a": "segment('x')"}, FIXED, {"x": [True, False]})


def test_compiled_rule_checks_layout_and_row_input():
    compiled = RuleSegment("r", "rfm:monetary > 1").compile(FIXED)
    np.testing.assert_array_equal(compiled.evaluate(FIXED), [True, False])
    other = FeatureMatrix(X=sp.csr_matrix((2, 2)), feature_names=("rfm:monetary", "x:y"),
                          users=np.arange(2), as_of=FIXED.as_of, spec=FIXED.spec,
                          nan_absent=np.zeros(2, bool))
    with pytest.raises(ConfigError, match=r"^rule 'r' was compiled for another feature layout "
                                          r"\(7 features\) than this matrix has \(2 features\)"):
        compiled.evaluate(other)
    with pytest.raises(SchemaError, match=r"^indices and values must be 1-d arrays of the same "
                                          r"length, got shapes \(2,\) and \(1,\)"):
        compiled.evaluate_row([5, 1], [1.0])
    with pytest.raises(SchemaError, match=r"^indices must be integer feature columns, got dtype "
                                          r"float64"):
        compiled.evaluate_row([5.0], [20.0])
    with pytest.raises(SchemaError, match=r"^values must be numbers, got <U1 values$"):
        compiled.evaluate_row([5], ["x"])
    assert compiled.evaluate_row([5], [20.0]) is True
    assert compiled.evaluate_row(np.array([5], np.int32), [20.0]) is True
    assert compiled.evaluate_row([], []) is False
    assert compiled.evaluate_row([0, 6], [20.0, 3.0]) is False  # other columns are ignored


def test_empty_inputs():
    empty = make_fm([])
    assert RuleSegment("r", "rfm:monetary > 1").segment(empty).members.shape == (0,)
    assert evaluate_rules([], FIXED) == []


def test_blocks_give_the_same_answer_as_one_block(monkeypatch):
    rng = np.random.default_rng(7)
    cells = [[None if rng.random() < 0.5 else float(rng.integers(0, 20)) for _ in NAMES]
             for _ in range(3000)]
    fm = make_fm(cells)
    rules = {"a": "count:page_view:autos:7d + decay:search:v1.2 > 12 or recency:ad_click:autos < 3",
             "b": "segment('a') and not defined(recency:page_view:sci-fi)"}
    whole = [s.members for s in evaluate_rules(rules, fm)]
    monkeypatch.setattr(rules_mod, "_BLOCK_FLOATS", 7)  # 1024-row blocks, the smallest allowed
    blocks = [s.members for s in evaluate_rules(rules, fm)]
    for w, b in zip(whole, blocks):
        np.testing.assert_array_equal(w, b)
    df = fm.to_pandas()
    ref = ((df["count:page_view:autos:7d"] + df["decay:search:v1.2"] > 12)
           | (df["recency:ad_click:autos"] < 3))
    np.testing.assert_array_equal(whole[0], ref.to_numpy())
    np.testing.assert_array_equal(whole[1], ref.to_numpy() & df["recency:page_view:sci-fi"]
                                  .isna().to_numpy())



@SETTINGS
@given(trees=st.lists(conditions, min_size=1, max_size=6), cells=matrices, data=st.data())
def test_packed_rules_equal_each_rule_alone(trees, cells, data):
    # the serving path: every rule packed into one PackedRules, evaluated in one eval_rules
    # call per user (and one eval_rules_batch call), equals each compiled rule on its own;
    # "seg_a" is unknown to the store's segments (read as not a member)
    from bta.segment.rules.kernels import PackedRules, pack_rules
    from bta.serve import _kernels as serve_kernels

    fm = make_fm(cells)
    store_segments = ("seg_b", "seg_c")
    compiled = [RuleSegment(f"r{i}", str(t)).compile(fm) for i, t in enumerate(trees)]
    packed = pack_rules(compiled, store_segments)
    assert isinstance(packed, PackedRules)
    assert packed.code_offsets[-1] == packed.code.shape[0]
    assert packed.stack_sizes.tolist() == [r.stack_size for r in compiled]
    flags = np.array(data.draw(st.lists(st.booleans(), min_size=fm.n_users * 2,
                                        max_size=fm.n_users * 2)), dtype=bool)
    flags = flags.reshape(fm.n_users, 2)
    X = fm.X
    batch = np.zeros((fm.n_users, len(compiled)), dtype=bool)
    indices = X.indices.astype(np.int32)
    serve_kernels.eval_rules_batch(packed, flags, X.indptr.astype(np.int64), indices, X.data,
                                   np.int64(len(NAMES)), batch)
    for i in range(fm.n_users):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        member_of = {s for s, f in zip(store_segments, flags[i]) if f}
        expected = [r.evaluate_row(X.indices[lo:hi], X.data[lo:hi], member_of) for r in compiled]
        one = np.zeros(len(compiled), dtype=bool)
        serve_kernels.eval_rules(packed, flags[i], indices[lo:hi], X.data[lo:hi],
                                 np.int64(len(NAMES)), one)
        assert one.tolist() == expected, [str(t) for t in trees]
        assert batch[i].tolist() == expected


def test_pack_rules_of_no_rules_is_empty():
    from bta.segment.rules.kernels import pack_rules

    packed = pack_rules([], ("seg_a",))
    assert packed.code.shape == (0, 2) and packed.code.dtype == np.int64
    assert packed.code_offsets.tolist() == [0]
    assert packed.stack_sizes.shape == (0,)
    assert packed.nan_absent.dtype == np.bool_

def test_rules_on_simulated_features():
    from bta.events import EventLog
    from bta.features import build_features
    from bta.sim import simulate_clickstream

    cs = simulate_clickstream(n_users=300, days=14, n_categories=4, seed=3)
    fm = build_features(EventLog.from_pandas(cs.events), FeatureSpec())
    cat = fm.feature_names[0].split(":")[2]  # the first category with columns
    rules = {
        "viewers": f"count:page_view:{cat}:7d >= 2 and not (recency:ad_click:{cat} < 14)",
        "heavy": "total('count:page_view:*:30d') > 10 or segment('viewers')",
    }
    segs = evaluate_rules(rules, fm)
    df = fm.to_pandas()
    viewers = (df[f"count:page_view:{cat}:7d"] >= 2) & ~(df[f"recency:ad_click:{cat}"] < 14)
    pv30 = df[[c for c in df.columns if fnmatchcase(c, "count:page_view:*:30d")]].sum(axis=1)
    np.testing.assert_array_equal(segs[0].members, viewers.to_numpy())
    np.testing.assert_array_equal(segs[1].members, ((pv30 > 10) | viewers).to_numpy())
    assert 0 < segs[0].size < fm.n_users
    book = SegmentBook.from_segments(fm.users, segs, min_audience=1)
    assert book.names == ("viewers", "heavy")


# ---- privacy: blocked categories ----------------------------------------------------------------
import re  # noqa: E402

from bta.privacy import PrivacyPolicy  # noqa: E402

PRIV_NAMES = ("count:page_view:autos:7d", "count:page_view:health:7d", "recency:ad_click:Health",
              "decay:search:religion", "count:search:autos:7d", "rfm:monetary")
PRIV_NAN = np.array([False, False, True, False, False, False])


def priv_fm(rows):
    X = sp.csr_matrix(np.asarray(rows, dtype=np.float64))
    return FeatureMatrix(X=X, feature_names=PRIV_NAMES, users=np.arange(len(rows)),
                         as_of=pd.Timestamp("2026-01-01", tz="UTC"), spec=SPEC,
                         nan_absent=PRIV_NAN)


@pytest.mark.parametrize("expr, message", [
    ("count:page_view:health:7d >= 1",
     "rule 'r': feature 'count:page_view:health:7d' at position 0 reads the blocked (sensitive) "
     "category 'health'; a rule may use it only when the PrivacyPolicy allows it "
     "(allowed_sensitive) for users who opted in"),
    ("count:page_view:autos:7d > 1 and recency:ad_click:Health < 3",
     "rule 'r': feature 'recency:ad_click:Health' at position 33 reads the blocked (sensitive) "
     "category 'health'"),
    ('total("count:*:religion:*") > 0',
     "rule 'r': total() pattern 'count:*:religion:*' at position 0 reads the blocked "
     "(sensitive) category 'religion'"),
    ('total("*politics*") > 0',
     "rule 'r': total() pattern '*politics*' at position 0 reads the blocked (sensitive) "
     "category 'politics'"),
    ("1 < `count:page_view:Sexual_Orientation:7d`",
     "rule 'r': feature 'count:page_view:Sexual_Orientation:7d' at position 4 reads the "
     "blocked (sensitive) category 'sexual_orientation'"),
])
def test_rules_naming_blocked_categories_are_refused_at_definition(expr, message):
    with pytest.raises(ConfigError) as info:
        RuleSegment("r", expr)  # no policy given: the default deny list applies
    assert str(info.value).startswith(message)
    with pytest.raises(ConfigError):
        evaluate_rules({"r": expr}, priv_fm([[0] * 6]))


def test_allowed_sensitive_category_may_be_used_and_others_stay_blocked():
    policy = PrivacyPolicy(allowed_sensitive={"health"})
    r = RuleSegment("r", "count:page_view:health:7d >= 1", privacy=policy)
    fm = priv_fm([[0, 2, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    assert r.segment(fm).members.tolist() == [True, False]
    with pytest.raises(ConfigError, match="'religion'"):
        RuleSegment("r", "decay:search:religion > 0", privacy=policy)
    # a policy without a deny list is an explicit choice; it accepts everything
    open_policy = PrivacyPolicy(sensitive_categories=())
    assert RuleSegment("r", "decay:search:religion > 0", privacy=open_policy).feature_refs == (
        "decay:search:religion",)


def test_wildcards_skip_blocked_columns_when_compiled():
    # a matrix built without the policy has blocked columns; a wildcard must not read them
    fm = priv_fm([[1, 5, 0, 7, 2, 0], [0, 9, 0, 9, 0, 0]])
    seg = RuleSegment("r", 'total("count:*") >= 3').segment(fm)
    assert seg.members.tolist() == [True, False]  # health's 5 and 9 are not summed
    naive = np.array([1 + 2, 0]) >= 3
    assert seg.members.tolist() == naive.tolist()
    with pytest.raises(UnknownNameError, match=re.escape(
            "the pattern 'decay:*' of total() at position 0 matches only features of blocked "
            "categories")):
        RuleSegment("r", 'total("decay:*") > 0').compile(fm)
    allowed = PrivacyPolicy(sensitive_categories=())
    seg2 = RuleSegment("r", 'total("count:*") >= 3', privacy=allowed).segment(fm)
    assert seg2.members.tolist() == [True, True]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.sampled_from(PRIV_NAMES + ('total("count:*")', 'total("*:autos*")',
                                                    'total("*health*")')),
                      min_size=1, max_size=4))
def test_accepted_rules_never_read_a_blocked_column(parts):
    expr = " + ".join(p if p.startswith("total") else f"`{p}`" for p in parts) + " > 0"
    policy = PrivacyPolicy()
    try:
        rule = RuleSegment("r", expr)
    except ConfigError:
        blocked = policy.sensitive_categories - policy.allowed_sensitive
        texts = [p[len('total("'):-2] if p.startswith("total") else p for p in parts]
        assert any(re.search(rf"(^|[:*?]){re.escape(c)}($|[:*?])", t.lower())
                   for t in texts for c in blocked)
        return
    try:
        compiled = rule.compile(priv_fm([[0] * 6]))
    except UnknownNameError:
        return
    read = [PRIV_NAMES[j] for j in compiled.columns]
    assert all(policy.blocked_category_in(n) is None for n in read), read

"""SegmentBook: membership queries, overlap, minimum audience, OpenRTB export, save/load."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, SchemaError, UnknownNameError
from bta.segment.book import FORMAT_VERSION, Segment, SegmentBook


def book_of(flags: dict[str, list[bool]], users=None, min_audience=2) -> SegmentBook:
    n = len(next(iter(flags.values())))
    users = np.arange(n) if users is None else np.asarray(users)
    segs = [Segment(name, "custom", {"note": name}, np.array(f, dtype=bool))
            for name, f in flags.items()]
    return SegmentBook.from_segments(users, segs, min_audience=min_audience)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=1, max_size=5))
def test_queries_match_naive(columns):
    flags = {f"s{i}": col for i, col in enumerate(columns)}
    users = np.array([f"u{i}" for i in range(6)], dtype=object)
    book = book_of(flags, users)
    for name, col in flags.items():
        assert list(book.members(name)) == [u for u, f in zip(users, col) if f]
        assert book.sizes[name] == sum(col)
        assert book.activatable[name] == (sum(col) >= 2)
    for i, u in enumerate(users):
        assert book.segments_of(u) == [n for n, col in flags.items() if col[i]]
    ov = book.overlap()
    for a, ca in flags.items():
        for b, cb in flags.items():
            assert ov.loc[a, b] == sum(x and y for x, y in zip(ca, cb))


def test_unknown_names_and_users():
    book = book_of({"auto_intenders": [True, False, True]})
    with pytest.raises(UnknownNameError, match=re.escape(
            "unknown segment 'auto_intender'; did you mean 'auto_intenders'?")):
        book.members("auto_intender")
    assert book.segments_of("nobody") == []


def test_min_audience_blocks_export():
    book = book_of({"big": [True, True, True], "tiny": [True, False, False]}, min_audience=2)
    assert book.is_activatable("big") and not book.is_activatable("tiny")
    data = book.to_openrtb(0, segtax=4, segment_ids={"big": "101"})
    assert data == [{"id": "bta", "name": "bta", "segment": [{"id": "101", "name": "big"}],
                     "ext": {"segtax": 4}}]
    assert book.to_openrtb(0, activatable_only=False)[0]["segment"][1]["name"] == "tiny"
    assert book.to_openrtb(99) == []


def test_save_load_round_trip(tmp_path):
    book = book_of({"a": [True, False, True, True], "b": [False, False, True, False]},
                   users=["x", "y", "z", "w"], min_audience=3)
    loaded = SegmentBook.load(book.save(tmp_path / "book"))
    assert loaded.names == book.names and loaded.kinds == book.kinds
    assert loaded.definitions == book.definitions
    assert list(loaded.users) == list(book.users)
    assert (loaded.membership != book.membership).nnz == 0
    assert loaded.min_audience == 3
    meta = json.loads((tmp_path / "book" / "book.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "book" / "book.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaError, match="format_version 2 is not supported"):
        SegmentBook.load(tmp_path / "book")
    with pytest.raises(SchemaError, match="is not a saved SegmentBook: book.json not found"):
        SegmentBook.load(tmp_path)


def test_add_and_replace():
    book = book_of({"a": [True, False]})
    more = book.add(Segment("b", "custom", {}, np.array([False, True])))
    assert more.names == ("a", "b")
    with pytest.raises(ConfigError, match=re.escape("segments ['a'] already exist")):
        more.add(Segment("a", "custom", {}, np.array([True, True])))
    replaced = more.add(Segment("a", "custom", {}, np.array([True, True])), replace=True)
    assert replaced.sizes["a"] == 2


@pytest.mark.parametrize("make, message", [
    (lambda: Segment("", "rule", {}, np.array([True])),
     "name must be a non-empty string of letters, digits, '_', '-', '.', ':', got ''"),
    (lambda: Segment("a b", "rule", {}, np.array([True])), "name must be a non-empty string"),
    (lambda: Segment("a", "magic", {}, np.array([True])), "kind must be one of"),
    (lambda: Segment("a", "rule", {}, np.array([1, 0])),
     "members of segment 'a' must be a 1-d boolean array, got dtype int64 with shape (2,)"),
    (lambda: Segment("a", "rule", {"f": object()}, np.array([True])),
     "definition of segment 'a' must be JSON-serializable"),
    (lambda: SegmentBook.from_segments([1, 2], [Segment("a", "rule", {}, np.array([True]))]),
     "segment 'a' has 1 members flags for 2 users"),
    (lambda: book_of({"a": [True]}, min_audience=0), "min_audience must be an integer >= 1, got 0"),
])
def test_bad_input(make, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()


def test_summary_frame():
    book = book_of({"a": [True, True, False, False]}, min_audience=2)
    s = book.summary()
    assert s.loc["a"].tolist() == ["custom", 2, 0.5, True]
    assert isinstance(s, pd.DataFrame)


# ---- privacy: blocked categories in definitions, erasure ---------------------------------------
from bta.privacy import PrivacyPolicy  # noqa: E402


@pytest.mark.parametrize("definition, message", [
    ({"expr": "count:page_view:health:7d >= 1"},
     "segment 's': its definition references blocked (sensitive) categories: 'health' at "
     "expr; such segments need the category in PrivacyPolicy(allowed_sensitive=...) and the "
     "users' opt-in"),
    ({"maker": "InterestClusters", "top_categories": ["autos", "Religion"]},
     "segment 's': its definition references blocked (sensitive) categories: 'religion' at "
     "top_categories[1]"),
    ({"weights": {"debt": 0.5}},
     "segment 's': its definition references blocked (sensitive) categories: 'debt' at "
     "weights.debt(key)"),
    ({"expr": 'total("count:*:politics:*") > 0 and recency:ad_click:health<3'},
     "segment 's': its definition references blocked (sensitive) categories: 'health' at "
     "expr, 'politics' at expr"),
])
def test_book_refuses_definitions_with_blocked_categories(definition, message):
    seg = Segment("s", "custom", definition, np.ones(3, dtype=bool))
    with pytest.raises(ConfigError) as info:
        SegmentBook.from_segments([1, 2, 3], [seg])  # default policy
    assert str(info.value).startswith(message)
    with pytest.raises(ConfigError):
        book_of({"ok": [True, True, True]}).add(seg)


def test_book_accepts_allowed_categories_and_checks_on_load(tmp_path):
    policy = PrivacyPolicy(allowed_sensitive={"health"})
    seg = Segment("s", "rule", {"expr": "count:page_view:health:7d >= 1"},
                  np.array([True, False, True]))
    book = SegmentBook.from_segments([1, 2, 3], [seg], privacy=policy)
    assert book.privacy is policy
    assert book.add(Segment("t", "custom", {}, np.ones(3, bool))).privacy is policy
    book.save(tmp_path / "b")
    assert SegmentBook.load(tmp_path / "b", privacy=policy).names == ("s",)
    with pytest.raises(ConfigError, match="'health' at expr"):
        SegmentBook.load(tmp_path / "b")  # a stricter reader refuses it
    # names that merely contain a sensitive word are not categories
    ok = Segment("healthy_eaters", "custom", {"model": "healthy.txt", "note": "health_food"},
                 np.ones(3, bool))
    assert SegmentBook.from_segments([1, 2, 3], [ok]).names == ("healthy_eaters",)
    with pytest.raises(ConfigError, match="privacy must be a PrivacyPolicy or None, got str"):
        SegmentBook.from_segments([1, 2, 3], [ok], privacy="strict")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=1, max_size=4),
       st.lists(st.sampled_from(["u0", "u1", "u2", "u3", "u4", "u5", "nobody"]), max_size=4))
def test_erase_matches_naive(columns, gone):
    flags = {f"s{i}": col for i, col in enumerate(columns)}
    users = np.array([f"u{i}" for i in range(6)], dtype=object)
    book = book_of(flags, users, min_audience=3)
    new = book.erase(gone)
    keep = [i for i, u in enumerate(users) if u not in gone]
    assert new.users.tolist() == [users[i] for i in keep]
    for name, col in flags.items():
        assert new.column(name).tolist() == [col[i] for i in keep]
        assert new.activatable[name] == (sum(col[i] for i in keep) >= 3)
    for u in gone:
        assert new.segments_of(u) == []
    assert new.names == book.names and new.min_audience == book.min_audience
    assert book.users.tolist() == users.tolist()  # the old book is unchanged


def test_erase_int_ids_and_min_audience_after_erasure():
    book = book_of({"s": [True, True, False]}, users=[10, 20, 30], min_audience=2)
    assert book.is_activatable("s") and book.to_openrtb(10) != []
    small = book.erase(10)
    assert small.users.tolist() == [20, 30]
    assert not small.is_activatable("s")  # below the minimum audience now
    assert small.to_openrtb(20) == []  # and no longer exported
    assert book.erase([99]) is book

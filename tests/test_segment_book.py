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

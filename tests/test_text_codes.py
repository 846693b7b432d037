"""Arrow text read from its buffers (bta.events.text): codes and sorted vocabularies equal
Python's, for every shape Arrow gives text in, and logs equal whatever form the text took."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.events import EventLog
from bta.events.columns import _arrow_text


def _decoded(arr):
    s = _arrow_text(arr)
    vocab = list(s.cat.categories)
    codes = s.cat.codes.to_numpy()
    return vocab, [None if c < 0 else vocab[c] for c in codes]


TEXT = st.text(alphabet=st.sampled_from(["a", "b", "\x00", "é", "中", "😀", "0", " "]),
               max_size=20)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), TEXT), min_size=1, max_size=300),
       st.sampled_from(["string", "large_string"]), st.integers(0, 5), st.integers(1, 4))
def test_codes_and_vocabulary_equal_pythons(values, kind, cut, n_chunks):
    typ = pa.string() if kind == "string" else pa.large_string()
    # chunks of a sliced array: offsets into shared buffers, validity bitmaps at bit offsets
    base = pa.array(["pad"] * cut + values, type=typ).slice(cut)
    bounds = np.linspace(0, len(values), n_chunks + 1).astype(int)
    arr = pa.chunked_array([base.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])],
                           type=typ)
    vocab, got = _decoded(arr)
    assert vocab == sorted({v for v in values if v is not None})  # code point order
    assert got == values


def test_many_distinct_strings_grow_the_tables():
    rng = np.random.default_rng(3)
    # enough distinct strings (some long) to grow the hash table and the arena several times
    pool = [f"{i:x}" * int(rng.integers(1, 40)) for i in range(300_000)]
    values = [pool[i] for i in rng.integers(0, len(pool), 400_000)]
    vocab, got = _decoded(pa.array(values))
    assert vocab == sorted(set(values))
    assert got == values


def test_other_arrow_types_are_left_to_pandas():
    assert _arrow_text(pa.array([1, 2])) is None
    assert _arrow_text(pa.array(["a"]).dictionary_encode()) is None
    assert _arrow_text(pa.chunked_array([], type=pa.string())) is None


@pytest.mark.parametrize("form", ["arrow", "large_string", "arrow_dtype", "pandas_str",
                                  "object"])
def test_logs_are_the_same_whatever_form_the_text_took(form):
    rng = np.random.default_rng(5)
    n = 5_000
    users = np.array([f"{x:016x}" for x in rng.integers(0, 2**62, 400)], dtype=object)
    users[3] = ""  # an empty id is a missing user
    df = pd.DataFrame({
        "user_id": users[rng.integers(0, len(users), n)],
        "ts": pd.to_datetime(1_700_000_000 + rng.integers(0, 86_400, n), unit="s"),
        "event": np.array(["page_view", "search", "ad_click"], dtype=object)[
            rng.integers(0, 3, n)],
        "category": np.array(["IAB2", "IAB10", "IAB1", None], dtype=object)[
            rng.integers(0, 4, n)],
    })
    want = EventLog.from_pandas(df, errors="quarantine")
    table = pa.Table.from_pandas(df, preserve_index=False)
    if form == "arrow":
        got = EventLog.from_arrow(table, errors="quarantine")
    elif form == "large_string":
        got = EventLog.from_arrow(table.cast(pa.schema([
            pa.field(f.name, pa.large_string() if pa.types.is_string(f.type) else f.type)
            for f in table.schema])), errors="quarantine")
    elif form == "arrow_dtype":
        got = EventLog.from_pandas(table.to_pandas(types_mapper=pd.ArrowDtype),
                                   errors="quarantine")
    elif form == "pandas_str":
        got = EventLog.from_pandas(df.astype({"user_id": "str", "event": "str"}),
                                   errors="quarantine")
    else:
        got = EventLog.from_pandas(df.astype(object).astype({"ts": df["ts"].dtype}),
                                   errors="quarantine")
    assert list(got.users) == list(want.users)
    assert list(got.categories) == list(want.categories)
    for attr in ("user", "ts", "event", "category", "user_offsets"):
        np.testing.assert_array_equal(getattr(got, attr), getattr(want, attr))
    assert got.quarantine["row"].tolist() == want.quarantine["row"].tolist()
    assert got.quarantine["reason"].tolist() == want.quarantine["reason"].tolist()
    assert len(want.quarantine) > 0  # the empty ids

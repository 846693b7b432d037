"""Features: batch against a naive reference, batch == online, invariances, bad input."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError, UnknownNameError
from bta.events import STANDARD_EVENTS, EventLog
from bta.features import FeatureSpec, OnlineProfiles, build_features
from naive import matrix_entries, naive_features

DAY = 86_400_000
T0 = 1_750_000_000_000 - 1_750_000_000_000 % DAY  # midnight UTC, so buckets are calendar days


def make_log(df: pd.DataFrame, **kw) -> EventLog:
    kw.setdefault("ts_unit", "ms")
    return EventLog.from_pandas(df, **kw)


def to_naive_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    if "value" not in out:
        out["value"] = 0.0
    out["value"] = out["value"].fillna(0.0)
    return out


def assert_matches_naive(fm, df, spec, as_of):
    got = matrix_entries(fm)
    ref = naive_features(to_naive_frame(df), spec, as_of)
    assert set(got) == set(ref), (sorted(set(got) - set(ref))[:5], sorted(set(ref) - set(got))[:5])
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


# ---- random event logs ------------------------------------------------------------------------
# none of these is sensitive: the default privacy screen would drop them at ingestion
CATS = ["autos", "travel", "news", "fitness"]


@st.composite
def event_frames(draw, max_rows=60):
    n = draw(st.integers(1, max_rows))
    users = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    # times on a coarse grid so ties, exact window boundaries and session gaps all occur
    offsets = draw(st.lists(st.sampled_from([0, 1, 30, 31, 60, 90, 1440, 1441, 2880, 10080,
                                             10081, 20000, 43200, 43201, 50000]),
                            min_size=n, max_size=n))
    events = draw(st.lists(st.sampled_from(STANDARD_EVENTS), min_size=n, max_size=n))
    cats = draw(st.lists(st.sampled_from(CATS + [None]), min_size=n, max_size=n))
    values = draw(st.lists(st.sampled_from([0.0, 1.5, 20.0, 99.99]), min_size=n, max_size=n))
    df = pd.DataFrame({
        "user_id": users,
        "ts": [T0 + o * 60_000 for o in offsets],  # minutes
        "event": events,
        "category": pd.Series(cats, dtype=object),
        "value": [v if e == "conversion" else np.nan for v, e in zip(values, events)],
    })
    return df.drop_duplicates(ignore_index=True)


@st.composite
def specs(draw):
    windows = draw(st.sampled_from([("1d", "7d", "30d"), ("1h", "1d"), ("12h",), ("1d", "35d")]))
    bucket = draw(st.sampled_from([None, "1h"] + (["1d"] if "1h" not in windows and
                                                  "12h" not in windows else [])))
    events = draw(st.sampled_from([STANDARD_EVENTS, ("page_view",), ("ad_click", "conversion"),
                                   ("page_view", "ad_impression")]))
    return FeatureSpec(
        windows=windows, half_life=draw(st.sampled_from(["7d", "1d", "90min"])), events=events,
        weights={e: draw(st.sampled_from([1.0, 0.5, 3.0])) for e in events},
        categories=draw(st.sampled_from([None, ("autos", "news")])),
        deny_categories=draw(st.sampled_from([(), ("fitness",)])),
        max_session=draw(st.sampled_from([None, "1h"])),
        window_bucket=bucket, user_features=draw(st.booleans()), exclude_flagged=False,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=event_frames(), spec=specs(), as_of_min=st.sampled_from([0, 30, 1440, 10081, 43200,
                                                                   60000]))
def test_batch_matches_naive(df, spec, as_of_min):
    as_of = T0 + as_of_min * 60_000
    fm = build_features(make_log(df), spec, as_of=as_of)
    assert_matches_naive(fm, df, spec, as_of)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=event_frames(), spec=specs(), seed=st.integers(0, 2**32 - 1))
def test_row_order_invariance(df, spec, seed):
    as_of = T0 + 50_000 * 60_000
    a = build_features(make_log(df), spec, as_of=as_of)
    shuffled = df.sample(frac=1.0, random_state=np.random.default_rng(seed))
    b = build_features(make_log(shuffled), spec, as_of=as_of)
    assert a.feature_names == b.feature_names
    assert np.array_equal(a.users, b.users)
    assert (a.X != b.X).nnz == 0
    assert np.array_equal(a.X.indices, b.X.indices)


def feed_online(df, spec, splits, categories=None):
    prof = OnlineProfiles(spec, categories=categories)
    ordered = df.sort_values("ts", kind="stable")
    for part in np.array_split(np.arange(len(ordered)), splits):
        if len(part):
            r = prof.update(ordered.iloc[part], ts_unit="ms")
            assert r.n_quarantined == 0
    return prof


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=event_frames(), spec=specs(), splits=st.integers(1, 7))
def test_batch_equals_online_exactly(df, spec, splits):
    as_of = T0 + 60_000 * 60_000  # after every event: online cannot go back in time
    batch = build_features(make_log(df), spec, as_of=as_of)
    online = feed_online(df, spec, splits).features(as_of=as_of)
    assert batch.feature_names == online.feature_names
    assert list(batch.users) == list(online.users)
    # bit-identical, not approximately equal: same kernels, same order of operations
    assert np.array_equal(batch.X.indptr, online.X.indptr)
    assert np.array_equal(batch.X.indices, online.X.indices)
    assert np.array_equal(batch.X.data, online.X.data)


def test_online_late_events_close_to_batch():
    rng = np.random.default_rng(3)
    n = 400
    df = pd.DataFrame({"user_id": rng.integers(0, 10, n),
                       "ts": T0 + rng.integers(0, 20 * DAY, n),
                       "event": rng.choice(["page_view", "ad_click"], n),
                       "category": rng.choice(CATS[:3], n)})
    spec = FeatureSpec(user_features=False)
    prof = OnlineProfiles(spec)
    for part in np.array_split(rng.permutation(n), 8):  # arrival order scrambled
        prof.update(df.iloc[part], ts_unit="ms")
    as_of = T0 + 21 * DAY
    online = prof.features(as_of=as_of)
    batch = build_features(make_log(df), spec, as_of=as_of)
    assert np.array_equal(batch.X.indices, online.X.indices)
    np.testing.assert_allclose(online.X.data, batch.X.data, rtol=1e-12)


# test_bucketed_online_memory_is_bounded lives in tests/test_online.py


def test_flagged_users_are_excluded_and_counted():
    rng = np.random.default_rng(0)
    normal = pd.DataFrame({"user_id": np.repeat(np.arange(200), 5),
                           "ts": T0 + rng.integers(0, 7 * DAY, 1000),
                           "event": "page_view", "category": rng.choice(CATS, 1000)})
    bot = pd.DataFrame({"user_id": 999, "ts": T0 + np.arange(3000) * 1000,
                        "event": np.tile(["ad_impression", "ad_click"], 1500),
                        "category": "autos"})
    df = pd.concat([normal, bot], ignore_index=True)
    log = make_log(df)
    assert log.flagged[log.user_code([999])[0]]
    fm = build_features(log, FeatureSpec())
    assert 999 not in set(fm.users)
    assert fm.n_flagged_excluded == 3000
    kept = build_features(log, FeatureSpec(exclude_flagged=False))
    assert 999 in set(kept.users)


def test_events_after_as_of_and_empty_result():
    df = pd.DataFrame({"user_id": [1, 1, 2], "ts": [T0, T0 + DAY, T0 + 2 * DAY],
                       "event": "page_view", "category": "autos"})
    fm = build_features(make_log(df), FeatureSpec(), as_of=T0 + DAY - 1)
    assert list(fm.users) == [1]
    assert fm.row(1)["count:page_view:autos:30d"] == 1.0
    empty = build_features(make_log(df), FeatureSpec(), as_of=T0 - 1)
    assert empty.shape == (0, len(fm.feature_names))


def test_feature_matrix_views():
    df = pd.DataFrame({"user_id": ["a", "a", "b"], "ts": [T0, T0 + DAY, T0 + DAY],
                       "event": ["page_view", "conversion", "page_view"],
                       "category": ["autos", "autos", "news"], "value": [np.nan, 12.5, np.nan]})
    fm = build_features(make_log(df), FeatureSpec(windows=("1d",)), as_of=T0 + DAY)
    frame = fm.to_pandas(["rfm:monetary", "rfm:recency_days", "recency:page_view:autos"])
    assert frame.loc["a", "rfm:monetary"] == 12.5
    assert frame.loc["a", "rfm:recency_days"] == 0.0  # defined and zero: stored explicitly
    assert np.isnan(frame.loc["b", "rfm:recency_days"])  # never converted: undefined
    assert frame.loc["a", "recency:page_view:autos"] == 1.0
    assert np.isnan(frame.loc["b", "recency:page_view:autos"])
    assert frame.loc["b", "rfm:monetary"] == 0.0
    np.testing.assert_array_equal(fm.column("rfm:monetary"), [12.5, 0.0])
    long = fm.to_long()
    assert len(long) == fm.X.nnz and set(long.columns) == {"user_id", "feature", "value"}
    with pytest.raises(UnknownNameError, match=re.escape(
            "unknown feature 'count:page_view:auto:1d'; did you mean "
            "'count:page_view:autos:1d'")):
        fm.feature_index("count:page_view:auto:1d")


def test_deny_list_keeps_category_out_of_everything():
    df = pd.DataFrame({"user_id": [1, 1, 1], "ts": [T0, T0 + 1000, T0 + 2000],
                       "event": ["page_view", "page_view", "ad_click"],
                       "category": ["health", "autos", "health"]})
    fm = build_features(make_log(df), FeatureSpec(deny_categories=("health",)))
    assert not any("health" in n for n in fm.feature_names)
    row = fm.row(1)
    assert row["sessions:mean_events"] == 1.0  # the two health events never entered
    assert row["ctr:smoothed"] == pytest.approx(1 / 100)


def test_online_as_of_before_latest_event_is_refused():
    prof = OnlineProfiles(FeatureSpec())
    prof.update(pd.DataFrame({"user_id": [1], "ts": [T0 + DAY], "event": ["search"],
                              "category": ["autos"]}), ts_unit="ms")
    with pytest.raises(ConfigError, match="as_of must be at or after the latest event"):
        prof.features(as_of=T0)


def test_online_erase_forgets_user():
    prof = OnlineProfiles(FeatureSpec())
    df = pd.DataFrame({"user_id": [1, 2], "ts": [T0, T0], "event": "page_view",
                       "category": "autos"})
    prof.update(df, ts_unit="ms")
    assert prof.erase(1) and not prof.erase(1)
    fm = prof.features(as_of=T0)
    assert list(fm.users) == [2]
    assert prof.last_event_time(1) is None
    # a returning user starts from scratch
    prof.update(df.iloc[:1], ts_unit="ms")
    assert prof.features(as_of=T0).row(1)["count:page_view:autos:1d"] == 1.0


def test_online_quarantines_bad_rows_without_raising():
    prof = OnlineProfiles(FeatureSpec())
    df = pd.DataFrame({"user_id": [1, None, 3], "ts": [T0, T0, T0],
                       "event": ["page_view", "page_view", "teleport"], "category": "autos"})
    r = prof.update(df, ts_unit="ms")
    assert (r.n_in, r.n_applied, r.n_quarantined) == (3, 1, 2)
    assert sorted(r.quarantine["reason"]) == ["missing_user", "unknown_event"]


@pytest.mark.parametrize("kwargs, message", [
    ({"windows": ()}, "windows must be a non-empty sequence of durations, got ()"),
    ({"windows": ("1d", "-1d")}, "windows must be a positive duration (a string like '30min', "
                                 "a Timedelta, a timedelta or seconds), got '-1d'"),
    ({"windows": ("1d", "24h")}, "windows must be distinct durations, got ('1d', '24h')"),
    ({"half_life": 0}, "half_life must be a positive duration (a string like '30min', a "
                       "Timedelta, a timedelta or seconds), got 0"),
    ({"events": ()}, "events must be a non-empty sequence of event names, got ()"),
    ({"events": ("page_view", "page_view")}, "events must be without repeats"),
    ({"weights": {"ad_click": -1}}, "weights['ad_click'] must be a finite number >= 0, got -1"),
    ({"events": ("page_view",), "weights": {"ad_click": 2}},
     "weights names event 'ad_click', which is not in events ('page_view',)"),
    ({"ctr_prior": (1, 0)}, "ctr_prior must be a pair (a, b) of positive numbers, got (1, 0)"),
    ({"window_bucket": "7d"},
     "window_bucket must divide every window; 7d does not divide ['1d', '30d']"),
    ({"dtype": "int8"}, "dtype must be 'float64' or 'float32', got 'int8'"),
    ({"user_features": 1}, "user_features must be True or False, got 1"),
])
def test_spec_bad_input(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        FeatureSpec(**kwargs)


def test_spec_normalizes_names_and_bad_builder_args():
    spec = FeatureSpec(windows=("30d", "12h", 3600), half_life=pd.Timedelta(hours=36))
    assert spec.windows == ("1h", "12h", "30d")
    assert spec.half_life == "36h"
    with pytest.raises(ConfigError, match="spec must be a FeatureSpec, got dict"):
        build_features(make_log(pd.DataFrame({"user_id": [1], "ts": [T0], "event": ["search"],
                                              "category": ["a"]})), {})
    with pytest.raises(ConfigError, match="log must be an EventLog"):
        build_features(pd.DataFrame(), FeatureSpec())


def test_float32_matrix():
    df = pd.DataFrame({"user_id": [1, 2], "ts": [T0, T0 + 5], "event": "page_view",
                       "category": "autos"})
    fm = build_features(make_log(df), FeatureSpec(dtype="float32"))
    assert fm.X.dtype == np.float32


def test_online_vector_equals_matrix_row_and_fixed_layout():
    rng = np.random.default_rng(5)
    n = 300
    df = pd.DataFrame({"user_id": rng.integers(0, 6, n),
                       "ts": T0 + np.sort(rng.integers(0, 9 * DAY, n)),
                       "event": rng.choice(STANDARD_EVENTS, n),
                       "category": rng.choice(CATS + ["new_cat"], n)})
    spec = FeatureSpec()
    prof = OnlineProfiles(spec, categories=CATS, grow_categories=False)
    prof.update(df, ts_unit="ms")
    assert not any("new_cat" in n for n in prof.feature_names)
    as_of = T0 + 10 * DAY
    fm = prof.features(as_of=as_of)
    for r, u in enumerate(fm.users):
        idx, val = prof.vector(u, as_of)
        row = fm.X.getrow(r)
        assert np.array_equal(idx, row.indices) and np.array_equal(val, row.data)
    assert prof.vector("nobody", as_of) is None
    # events in the unknown category still count per user, like build_features with the same
    # columns: the batch builder over the same log drops new_cat columns via an allow list
    batch = build_features(make_log(df), FeatureSpec(categories=tuple(CATS), exclude_flagged=False),
                           as_of=as_of)
    assert np.array_equal(batch.X.data, fm.X.data)


def test_parallel_and_serial_kernels_agree(monkeypatch):
    import bta.features.batch as batch

    rng = np.random.default_rng(9)
    n = 5000
    df = pd.DataFrame({"user_id": rng.integers(0, 300, n), "ts": T0 + rng.integers(0, 40 * DAY, n),
                       "event": rng.choice(STANDARD_EVENTS, n), "category": rng.choice(CATS, n),
                       "value": rng.exponential(5.0, n)})
    log = make_log(df.drop_duplicates(ignore_index=True), flag_bots=None)
    spec = FeatureSpec()
    serial = build_features(log, spec, as_of=T0 + 35 * DAY)
    monkeypatch.setattr(batch, "PARALLEL_MIN_ROWS", 0)
    parallel = build_features(log, spec, as_of=T0 + 35 * DAY)
    assert np.array_equal(serial.X.indptr, parallel.X.indptr)
    assert np.array_equal(serial.X.indices, parallel.X.indices)
    assert np.array_equal(serial.X.data, parallel.X.data)


def test_online_accepts_array_vocabularies():
    # an EventLog's vocabularies are NumPy arrays; they must work as the fixed layout
    log = make_log(pd.DataFrame({"user_id": [1], "ts": [T0], "event": ["page_view"],
                                 "category": ["autos"]}))
    prof = OnlineProfiles(FeatureSpec(), categories=log.categories, grow_categories=False,
                          event_types=np.array([], dtype=object))
    prof.update_log(log)
    assert prof.features().row(1)["count:page_view:autos:1d"] == 1.0


# ---- feature families: the declarations are the layout ----------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), cats=st.lists(st.sampled_from(CATS + ["a", "zz"]), unique=True, max_size=5))
def test_family_declarations_are_the_layout(spec, cats):
    """Names, NaN-when-absent flags and column offsets of FeatureSpec / layout_for are exactly
    what the families declare: a family whose declaration drifts from the kernels' offsets
    fails here (and its entries then land under another name in the naive comparisons)."""
    from bta.features import families as F
    from bta.features.matrix import layout_for

    layout = layout_for(spec, cats)
    names, nan_absent = layout.feature_names, layout.nan_absent
    n_win = len(spec.windows)
    n_stat = n_win + len(F.cells.TAIL_STATS)
    assert spec.stats == F.cells.stats(spec.windows)
    for e_slot, e in enumerate(spec.events):
        for c_slot, c in enumerate(layout.column_categories):
            base = (e_slot * layout.n_cat + c_slot) * n_stat  # emit_cells' column of a cell
            for w, wname in enumerate(spec.windows):
                assert names[base + w] == f"count:{e}:{c}:{wname}" and not nan_absent[base + w]
            assert names[base + n_win + F.cells.DECAY] == f"decay:{e}:{c}"
            assert names[base + n_win + F.cells.RECENCY] == f"recency:{e}:{c}"
            for s in F.cells.TAIL_STATS:
                j = base + n_win + F.cells.TAIL_STATS.index(s)
                assert nan_absent[j] == (s in F.cells.NAN_ABSENT_STATS)
    user_col0 = int(F.row_params(spec, layout).user_col0)
    assert user_col0 == len(spec.events) * layout.n_cat * n_stat
    if not spec.user_features:
        assert len(names) == user_col0
        return
    assert names[user_col0:] == F.USER_FEATURES
    for fam in F.USER_FAMILIES:
        col = user_col0 + F.BASES[fam.name].col
        assert names[col:col + len(fam.columns)] == fam.columns
        assert [bool(v) for v in nan_absent[col:col + len(fam.columns)]] == [
            c in fam.nan_absent for c in fam.columns]


def test_family_state_and_kernels_are_declared_once():
    import inspect

    from bta.features import families as F

    # state slices: consecutive after the bookkeeping fields, covering the user state exactly
    i0, f0 = len(F.CORE_INTS), 0
    for fam in F.USER_FAMILIES:
        assert F.BASES[fam.name][:2] == (i0, f0), fam.name
        i0 += len(fam.ints)
        f0 += len(fam.floats)
        for field, value in fam.initial:
            assert F.INITIAL_INTS[F.BASES[fam.name].i0 + fam.ints.index(field)] == value
        assert fam.naive.startswith("tests/naive.py::naive_features")
    assert (i0, f0) == (F.N_INT, F.N_FLOAT)
    # every registered family is run by the composite kernels, which both paths call
    emit_src = inspect.getsource(F.emit_row.py_func)
    nnz_src = inspect.getsource(F.row_nnz.py_func)
    for fam in F.USER_FAMILIES:
        module = getattr(F, fam.name)
        assert f"{fam.name}.emit(" in emit_src and f"{fam.name}.n_entries(" in nnz_src
        if fam.ints or fam.floats:
            assert f"{fam.name}.step(" in inspect.getsource(F.user_step.py_func)
        # the module's named column positions are the declaration's
        for j, c in enumerate(fam.columns):
            const = c.split(":", 1)[1].upper()
            if hasattr(module, const):
                assert getattr(module, const) == j, (fam.name, c)
    # the matrix's columns are these names, in this order
    df = pd.DataFrame({"user_id": [1, 1, 2], "ts": [T0, T0 + 1000, T0], "value": [0.0, 5.0, 0.0],
                       "event": ["page_view", "conversion", "ad_impression"],
                       "category": ["autos", "autos", "news"]})
    fm = build_features(make_log(df, flag_bots=None), FeatureSpec())
    assert fm.feature_names[-len(F.USER_FEATURES):] == F.USER_FEATURES
    assert fm.row(1)["rfm:monetary"] == 5.0 and fm.row(1)["diversity:entropy"] == 0.0

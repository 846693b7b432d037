"""Tests of the clickstream simulator: schema, determinism, and the planted ground truth."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bta.errors import ConfigError
from bta.events import STANDARD_EVENTS
from bta.sim import CATEGORY_NAMES, Clickstream, SimConfig, simulate, simulate_clickstream

GAP = pd.Timedelta(minutes=30)

# --------------------------------------------------------------------------- bad arguments

BAD_ARGUMENTS = [
    ({"n_users": 0}, "n_users must be an integer >= 1, got 0"),
    ({"n_users": 2.5}, "n_users must be an integer >= 1, got 2.5"),
    ({"n_users": True}, "n_users must be an integer >= 1, got True"),
    ({"days": 0}, "days must be a positive number of days, got 0"),
    ({"days": -1.5}, "days must be a positive number of days, got -1.5"),
    ({"days": math.inf}, "days must be a positive number of days, got inf"),
    ({"days": "30"}, "days must be a positive number of days, got '30'"),
    ({"n_categories": 0}, "n_categories must be an integer >= 1, got 0"),
    ({"seed": -1}, "seed must be a non-negative integer, got -1"),
    ({"seed": 1.0}, "seed must be a non-negative integer, got 1.0"),
    ({"start": "not a date"},
     "start must be a date or timestamp such as '2026-01-01', got 'not a date'"),
    ({"start": None}, "start must be a date or timestamp such as '2026-01-01', got None"),
    ({"n_groups": 0}, "n_groups must be None or an integer >= 1, got 0"),
    ({"sessions_per_day": 0}, "sessions_per_day must be None or a positive number, got 0"),
    ({"events_per_user_day": -1.0},
     "events_per_user_day must be None or a positive number, got -1.0"),
    ({"sessions_per_day": 0.1, "events_per_user_day": 0.3},
     "give at most one of sessions_per_day and events_per_user_day, got "
     "sessions_per_day=0.1 and events_per_user_day=0.3"),
    ({"pages_per_session": 0.5}, "pages_per_session must be a number >= 1, got 0.5"),
    ({"search_rate": 1.5}, "search_rate must be a number in [0, 1], got 1.5"),
    ({"ad_rate": -0.1}, "ad_rate must be a number in [0, 1], got -0.1"),
    ({"ad_match": math.nan}, "ad_match must be a number in [0, 1], got nan"),
    ({"base_ctr": 2}, "base_ctr must be a number in [0, 1], got 2"),
    ({"conversion_rate": 1.01}, "conversion_rate must be a number in [0, 1], got 1.01"),
    ({"bot_ctr": -1}, "bot_ctr must be a number in [0, 1], got -1"),
    ({"group_focus": 3}, "group_focus must be a number in [0, 1], got 3"),
    ({"bot_fraction": 1.0}, "bot_fraction must be a number in [0, 1), got 1.0"),
    ({"bot_fraction": -0.01}, "bot_fraction must be a number in [0, 1), got -0.01"),
    ({"interest_effect": -1}, "interest_effect must be a non-negative number, got -1"),
    ({"revenue_sigma": -0.5}, "revenue_sigma must be a non-negative number, got -0.5"),
    ({"activity_sigma": math.inf}, "activity_sigma must be a non-negative number, got inf"),
    ({"revenue_mean": 0}, "revenue_mean must be a positive number, got 0"),
    ({"bot_activity": 0.0}, "bot_activity must be a positive number, got 0.0"),
    ({"interest_concentration": -2},
     "interest_concentration must be a positive number, got -2"),
    ({"n_favorites": 0}, "n_favorites must be an integer >= 1, got 0"),
    ({"user_ids": "uuid"}, "user_ids must be one of 'int', 'str', got 'uuid'"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), BAD_ARGUMENTS)
def test_bad_arguments_give_exact_config_error(kwargs, message):
    args = {"n_users": 5, "days": 1, **kwargs}
    with pytest.raises(ConfigError) as info:
        simulate_clickstream(**args)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match=re.escape(message)):
        SimConfig(**args)


def test_function_defaults_are_the_config_defaults():
    params = inspect.signature(simulate_clickstream).parameters
    fields = {f.name: f.default for f in dataclasses.fields(SimConfig)}
    assert list(params) == list(fields)
    for name, param in params.items():
        assert param.default == fields[name], name


# --------------------------------------------------------------------------- shared worlds


@pytest.fixture(scope="module")
def world() -> Clickstream:
    # ~240k events: enough clicks (~450) for CTR statements, fast to simulate.
    return simulate_clickstream(n_users=3000, days=20, seed=7, events_per_user_day=4)


@pytest.fixture(scope="module")
def converting_world() -> Clickstream:
    # A high conversion rate and CTR give a few hundred conversions to check.
    return simulate_clickstream(n_users=1500, days=10, seed=3, events_per_user_day=5,
                                conversion_rate=0.5, base_ctr=0.02)  # fmt: skip


def codes(cs: Clickstream):
    e = cs.events
    user = e["user_id"].to_numpy()
    ev = e["event"].cat.codes.to_numpy()
    cat = e["category"].cat.codes.to_numpy()
    return user, ev, cat


EV = {name: i for i, name in enumerate(STANDARD_EVENTS)}


# --------------------------------------------------------------------------- invariants


def check_invariants(cs: Clickstream) -> None:
    """Properties every simulated world must have, whatever its parameters."""
    cfg = cs.config
    e = cs.events
    assert list(e.columns) == ["user_id", "ts", "event", "category", "value", "session_id"]
    if cfg.user_ids == "int":
        assert e["user_id"].dtype == np.int64
    else:
        assert e["user_id"].dtype == pd.StringDtype("pyarrow", na_value=np.nan)
    assert str(e["ts"].dtype) == "datetime64[ms, UTC]"
    assert isinstance(e["event"].dtype, pd.CategoricalDtype)
    assert list(e["event"].cat.categories) == list(STANDARD_EVENTS)
    assert list(e["category"].cat.categories) == list(cs.categories)
    assert e["value"].dtype == np.float64 and e["session_id"].dtype == np.int64
    assert not e["event"].isna().any() and not e["category"].isna().any()

    # Time: sorted overall, inside [start, end).
    assert e["ts"].is_monotonic_increasing
    assert cs.end - cs.start == pd.Timedelta(milliseconds=round(cfg.days * 86_400_000))
    if len(e):
        assert e["ts"].iloc[0] >= cs.start and e["ts"].iloc[-1] < cs.end

    # Value: revenue for conversions only.
    is_conv = (e["event"] == "conversion").to_numpy()
    assert np.all(e["value"].to_numpy()[is_conv] > 0)
    assert np.all(np.isnan(e["value"].to_numpy()[~is_conv]))

    # Ground truth shapes.
    n, k = cfg.n_users, cfg.n_categories
    assert cs.interests.shape == (n, k) and cs.interests.dtype == np.float64
    assert np.all(cs.interests >= 0)
    np.testing.assert_allclose(cs.interests.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert cs.groups.shape == (n,)
    assert cs.groups.min() >= 0 and cs.groups.max() < cs.group_profiles.shape[0]
    np.testing.assert_allclose(cs.group_profiles.sum(axis=1), 1.0, atol=1e-12)
    assert len(cs.categories) == k
    assert list(cs.users.columns) == [
        "user_id", "group", "is_bot", "activity", "sessions_per_day", "n_events"
    ]  # fmt: skip
    assert len(cs.users) == n and cs.users["is_bot"].sum() == round(cfg.bot_fraction * n)
    np.testing.assert_array_equal(cs.users["group"].to_numpy(), cs.groups)
    counts = e["user_id"].value_counts().reindex(cs.users["user_id"], fill_value=0)
    np.testing.assert_array_equal(counts.to_numpy(), cs.users["n_events"].to_numpy())

    # Sessions: one user each; gaps within <= 30 min; consecutive sessions of a user > 30 min.
    by = e.sort_values(["user_id", "ts"], kind="stable")
    assert (by.groupby("session_id")["user_id"].nunique() == 1).all()
    same_user = by["user_id"].to_numpy()[1:] == by["user_id"].to_numpy()[:-1]
    same_session = by["session_id"].to_numpy()[1:] == by["session_id"].to_numpy()[:-1]
    gaps = by["ts"].diff().to_numpy()[1:]
    assert np.all(gaps[same_session] <= GAP.to_timedelta64())
    assert np.all(gaps[same_user & ~same_session] > GAP.to_timedelta64())

    # Every conversion follows an earlier click of the same user on the same category.
    check_conversions_follow_clicks(cs)


def check_conversions_follow_clicks(cs: Clickstream) -> None:
    e = cs.events
    conv = e[e["event"] == "conversion"]
    clicks = e[e["event"] == "ad_click"]
    if len(conv) == 0:
        return
    key = ["user_id", "category"]
    # Categoricals with identical categories merge on codes; plain columns keep it simple.
    left = conv.assign(category=conv["category"].cat.codes)[key + ["ts"]]
    right = clicks.assign(category=clicks["category"].cat.codes, click_ts=clicks["ts"])
    matched = pd.merge_asof(left, right[key + ["ts", "click_ts"]], on="ts", by=key,
                            allow_exact_matches=False, direction="backward")  # fmt: skip
    assert matched["click_ts"].notna().all(), "a conversion without an earlier click"
    assert ((matched["ts"] - matched["click_ts"]) <= pd.Timedelta(days=7)).all()
    bots = set(cs.users.loc[cs.users["is_bot"], "user_id"])
    assert not set(conv["user_id"]) & bots


def test_invariants_on_a_mid_size_world(world, converting_world):
    check_invariants(world)
    check_invariants(converting_world)


@settings(max_examples=40, deadline=None)
@given(
    n_users=st.integers(1, 40),
    days=st.floats(0.01, 3.0),
    n_categories=st.integers(1, 30),
    seed=st.integers(0, 2**32),
    sessions_per_day=st.floats(0.1, 6.0),
    bot_fraction=st.sampled_from([0.0, 0.1, 0.5]),
    start=st.sampled_from(["2026-01-01", "2026-03-29 01:17:05.123456", "2025-06-30T23:59:59"]),
    user_ids=st.sampled_from(["int", "str"]),
    conversion_rate=st.sampled_from([0.03, 1.0]),
)
def test_invariants_hold_for_any_small_world(n_users, days, n_categories, seed,
                                             sessions_per_day, bot_fraction, start, user_ids,
                                             conversion_rate):  # fmt: skip
    cs = simulate_clickstream(n_users, days, n_categories, seed, start=start,
                              sessions_per_day=sessions_per_day, bot_fraction=bot_fraction,
                              user_ids=user_ids, conversion_rate=conversion_rate,
                              base_ctr=0.2)  # fmt: skip
    check_invariants(cs)


# --------------------------------------------------------------------------- basics


def test_same_seed_same_world_and_different_seed_different_world():
    a = simulate_clickstream(n_users=300, days=5, seed=11, events_per_user_day=3)
    b = simulate_clickstream(n_users=300, days=5, seed=11, events_per_user_day=3)
    c = simulate_clickstream(n_users=300, days=5, seed=12, events_per_user_day=3)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.users, b.users)
    np.testing.assert_array_equal(a.interests, b.interests)
    assert len(a.events) > 1000
    assert not a.events.equals(c.events)
    assert not np.array_equal(a.interests, c.interests)


def test_string_user_ids_are_the_same_world_relabelled():
    a = simulate_clickstream(n_users=200, days=3, seed=5, events_per_user_day=3)
    b = simulate_clickstream(n_users=200, days=3, seed=5, events_per_user_day=3, user_ids="str")
    expected = ["u%07d" % i for i in a.events["user_id"]]
    assert b.events["user_id"].tolist() == expected
    assert b.users["user_id"].iloc[42] == "u0000042"
    pd.testing.assert_frame_equal(a.events.drop(columns="user_id"),
                                  b.events.drop(columns="user_id"))  # fmt: skip


def test_category_names():
    assert simulate_clickstream(n_users=2, days=1, n_categories=3).categories == (
        "autos", "travel", "finance",
    )  # fmt: skip
    names = simulate_clickstream(n_users=2, days=1, n_categories=23).categories
    assert names[:20] == CATEGORY_NAMES and names[20:] == ("cat_021", "cat_022", "cat_023")


def test_tiny_worlds():
    quiet = simulate_clickstream(n_users=1, days=1)
    check_invariants(quiet)
    assert quiet.users["is_bot"].sum() == 0  # round(0.005 * 1) bots
    busy = simulate_clickstream(n_users=1, days=1, n_categories=1, sessions_per_day=20)
    check_invariants(busy)
    assert len(busy.events) > 0
    assert set(busy.events["category"]) == {"autos"}
    np.testing.assert_array_equal(busy.interests, [[1.0]])


def test_start_is_utc_and_end_follows_days():
    cs = simulate_clickstream(n_users=20, days=1.5, start="2026-03-01 12:30+02:00",
                              sessions_per_day=4)  # fmt: skip
    assert cs.start == pd.Timestamp("2026-03-01 10:30", tz="UTC")
    assert cs.end == pd.Timestamp("2026-03-02 22:30", tz="UTC")
    assert str(cs.start.tz) == "UTC"
    check_invariants(cs)


def test_result_is_frozen():
    cs = simulate_clickstream(n_users=5, days=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cs.seed = 3
    with pytest.raises(ValueError, match="read-only"):
        cs.interests[0, 0] = 1.0


# --------------------------------------------------------------------------- size


def test_events_per_user_day_sets_the_size():
    cs = simulate_clickstream(n_users=4000, days=10, seed=2, events_per_user_day=2.0)
    assert cs.expected_events_per_user_day == pytest.approx(2.0, rel=1e-12)
    realized = len(cs.events) / (4000 * 10)
    # Heavy-tailed activity: the relative sd of the total is ~sqrt(e - 1) / sqrt(4000) ~ 2%.
    assert realized == pytest.approx(2.0, rel=0.1)
    # The solved visit rate, given back, reproduces the same world draw for draw.
    again = simulate_clickstream(n_users=4000, days=10, seed=2,
                                 sessions_per_day=cs.sessions_per_day)  # fmt: skip
    pd.testing.assert_frame_equal(cs.events, again.events)


def test_default_size_is_about_a_third_of_an_event_per_user_day():
    cs = simulate_clickstream(n_users=20_000, days=10, seed=1)
    assert len(cs.events) / (20_000 * 10) == pytest.approx(0.33, rel=0.1)


# --------------------------------------------------------------------------- ground truth


def test_page_categories_follow_interests(world):
    user, ev, cat = codes(world)
    k, n = len(world.categories), world.config.n_users
    pv = ev == EV["page_view"]
    pages_per_user = np.bincount(user[pv], minlength=n)
    for g in range(world.group_profiles.shape[0]):
        in_g = world.groups == g
        mask = pv & in_g[user]
        empirical = np.bincount(cat[mask], minlength=k) / mask.sum()
        # Given each user's page count, categories are multinomial in the user's interests.
        weights = pages_per_user[in_g]
        expected = weights @ world.interests[in_g] / weights.sum()
        # ~25k pages per group: sampling noise alone gives a total variation near 0.01.
        assert 0.5 * np.abs(empirical - expected).sum() < 0.03
        assert 0.5 * np.abs(empirical - world.group_profiles[g]).sum() < 0.06
    # Per user too: the heaviest users' page mix tracks their own interests.
    heavy = np.flatnonzero(pages_per_user >= 100)
    assert len(heavy) >= 20
    counts = np.zeros((n, k))
    np.add.at(counts, (user[pv], cat[pv]), 1)
    corr = [np.corrcoef(counts[u], world.interests[u])[0, 1] for u in heavy]
    assert np.median(corr) > 0.9


def test_groups_are_planted_and_distinct(world):
    # Users of a group are closer to their own profile than to any other group's.
    dist = np.abs(world.interests[:, None, :] - world.group_profiles[None, :, :]).sum(axis=2)
    assert np.mean(dist.argmin(axis=1) == world.groups) > 0.95


def test_human_ctr_is_realistic_and_bots_spam_clicks(world):
    user, ev, _ = codes(world)
    bot = world.users["is_bot"].to_numpy()[user]
    imp, clk = ev == EV["ad_impression"], ev == EV["ad_click"]
    human_ctr = clk[~bot].sum() / imp[~bot].sum()
    bot_ctr = clk[bot].sum() / imp[bot].sum()
    assert 0.001 <= human_ctr <= 0.01
    assert bot_ctr > 5 * human_ctr


def test_bots_have_much_higher_event_rates(world):
    users = world.users
    assert users["is_bot"].sum() == round(0.005 * 3000)
    per_day = users["n_events"] / world.config.days
    assert per_day[users["is_bot"]].median() > 10 * per_day[~users["is_bot"]].median()
    assert per_day[users["is_bot"]].min() > per_day[~users["is_bot"]].quantile(0.9)


@pytest.mark.parametrize("interest_effect", [0.0, 1.0])
def test_click_counts_match_ground_truth_probabilities(interest_effect):
    cs = simulate_clickstream(n_users=2000, days=15, seed=9, events_per_user_day=4,
                              base_ctr=0.005, interest_effect=interest_effect)  # fmt: skip
    user, ev, cat = codes(cs)
    human = ~cs.users["is_bot"].to_numpy()[user]
    imp = (ev == EV["ad_impression"]) & human
    clk = (ev == EV["ad_click"]) & human
    p = cs.click_probability()[user[imp], cat[imp]]
    # Each impression is a Bernoulli(p) trial; allow 4 sd (clicks censored at the end of the
    # period are a few seconds' worth, far below that).
    assert abs(clk.sum() - p.sum()) < 4 * math.sqrt((p * (1 - p)).sum())
    # Split impressions at the median interest: clicks concentrate where interest is high
    # exactly when interest_effect > 0.
    theta_imp = cs.interests[user[imp], cat[imp]]
    cut = np.median(theta_imp)
    theta_clk = cs.interests[user[clk], cat[clk]]
    ctr_high = (theta_clk > cut).sum() / (theta_imp > cut).sum()
    ctr_low = (theta_clk <= cut).sum() / (theta_imp <= cut).sum()
    if interest_effect > 0:
        assert ctr_high > 4 * ctr_low
    else:
        assert 0.7 < ctr_high / ctr_low < 1.4


def test_click_probability_ground_truth(world):
    p = world.click_probability()
    cfg = world.config
    k = cfg.n_categories
    bots = world.users["is_bot"].to_numpy()
    np.testing.assert_allclose(p[~bots], np.minimum(1, cfg.base_ctr * k * world.interests[~bots]))
    assert np.all(p[bots] == cfg.bot_ctr)


def test_conversions_follow_clicks_at_the_configured_rate(converting_world):
    cs = converting_world
    check_conversions_follow_clicks(cs)
    user, ev, _ = codes(cs)
    human = ~cs.users["is_bot"].to_numpy()[user]
    n_clicks = ((ev == EV["ad_click"]) & human).sum()
    n_conv = (ev == EV["conversion"]).sum()
    assert n_conv > 100
    # Binomial(n_clicks, 0.5), less the conversions pushed past the end (up to 7 days late
    # in a 10-day period: roughly a quarter of the late half at most).
    assert 0.4 * n_clicks < n_conv <= 0.5 * n_clicks + 4 * math.sqrt(0.25 * n_clicks)
    revenue = cs.events.loc[cs.events["event"] == "conversion", "value"]
    assert revenue.mean() == pytest.approx(50.0, rel=0.25)


def test_traffic_peaks_in_the_evening(world):
    hours = world.events.loc[world.events["event"] == "page_view", "ts"].dt.hour
    by_hour = np.bincount(hours, minlength=24)
    assert by_hour[18:23].mean() > 2.5 * by_hour[2:7].mean()


# --------------------------------------------------------------------------- sessions


def naive_sessions(events: pd.DataFrame) -> np.ndarray:
    """Slow, obviously correct 30-minute sessionization, numbered in (user, time) order."""
    out = np.empty(len(events), dtype=np.int64)
    order = sorted(range(len(events)),
                   key=lambda i: (events["user_id"].iat[i], events["ts"].iat[i]))  # fmt: skip
    next_id, prev_user, prev_ts = -1, None, None
    for i in order:
        u, t = events["user_id"].iat[i], events["ts"].iat[i]
        if u != prev_user or t - prev_ts > GAP:
            next_id += 1
        out[i] = next_id
        prev_user, prev_ts = u, t
    return out


def test_sessions_match_a_naive_sessionizer():
    # Frequent visits so that some of them merge into one session.
    cs = simulate_clickstream(n_users=30, days=2, seed=4, sessions_per_day=8, bot_fraction=0.1)
    assert len(cs.events) > 500
    np.testing.assert_array_equal(cs.events["session_id"].to_numpy(), naive_sessions(cs.events))


def test_simulate_takes_a_config():
    cfg = SimConfig(n_users=50, days=2, seed=8, sessions_per_day=1.0)
    pd.testing.assert_frame_equal(
        simulate(cfg).events,
        simulate_clickstream(n_users=50, days=2, seed=8, sessions_per_day=1.0).events,
    )

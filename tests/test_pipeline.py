"""The pipeline composes: events -> features -> online profiles -> Engine -> decision log -> A/B."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bta import EventLog, FeatureSpec
from bta.privacy import PrivacyPolicy
from bta.evaluate import ab_report
from bta.features import OnlineProfiles
from bta.serve import Campaign, Creative, DecisionLog, Engine, MemoryProfileStore


def test_engine_log_feeds_ab_report():
    from bta.sim import simulate_clickstream

    cs = simulate_clickstream(n_users=2000, days=10, seed=5, events_per_user_day=2.0)
    log = EventLog.from_pandas(cs.events)
    profiles = OnlineProfiles(FeatureSpec(), categories=log.categories, grow_categories=False)
    profiles.update(cs.events)
    campaigns = [Campaign(f"c-{c}", (Creative(f"cr-{c}", c),),
                          targeting=f"count:page_view:{c}:7d >= 1", bid=2.0)
                 # a campaign may not target a sensitive category (the simulator has "health")
                 for c in [c for c in cs.categories if not PrivacyPolicy().is_blocked_category(c)][:8]]
    campaigns.append(Campaign("ron", (Creative("ron-1"),), bid=1.5))
    engine = Engine(campaigns, fallback=Campaign("house", (Creative("h"),), bid=0.01),
                    store=MemoryProfileStore(profiles)).warmup()
    dlog = DecisionLog()
    for i, u in enumerate(log.users):
        dlog.append(engine.decide({"user_id": int(u), "ts": cs.end, "request_id": f"r{i}"}))
    dec = dlog.to_frame()
    assert set(dec["arm"]) == {"control", "targeted"}
    assert not dec.loc[dec["arm"] == "control", "targeted"].any()
    rng = np.random.default_rng(0)
    clicks = (rng.random(len(dec)) < np.where(dec["targeted"], 0.05, 0.01)).astype(int)
    outcomes = pd.DataFrame({"request_id": dec["request_id"], "clicks": clicks,
                             "conversions": 0, "revenue": 0.0})
    report = ab_report(dec, outcomes, control="control", cost="price")
    arms = report.arm_table()
    for arm, rows in dec.groupby("arm"):
        assert arms.loc[arm, "impressions"] == len(rows)
        assert arms.loc[arm, "users"] == rows["user_id"].nunique()
        # spend is the CPM price of each impression / 1000
        assert arms.loc[arm, "spend"] == pytest.approx(rows["price"].sum() / 1000.0, rel=1e-12)
        assert arms.loc[arm, "clicks"] == clicks[dec["arm"].to_numpy() == arm].sum()
    ctr = report.lifts.set_index("metric").loc["ctr"]
    assert ctr["rel_lift"] > 0  # the simulated outcome favours targeted impressions

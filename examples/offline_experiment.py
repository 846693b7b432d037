# %% [markdown]
# # An offline targeting experiment, step by step
#
# Events -> features -> segments -> Engine -> randomized experiment -> A/B report, on a
# simulated ad world whose users respond to ads according to their (hidden) interests.
# Run it as a script (`python examples/offline_experiment.py`) or cell by cell in an editor
# that understands `# %%` cells. The world's size comes from the environment:
# `BTA_EXAMPLE_USERS` (default 20,000), `BTA_EXAMPLE_DAYS` (default 24),
# `BTA_EXAMPLE_SEED` (default 0).

# %%
import os

import pandas as pd

from bta.evaluate import ab_report
from bta.events import EventLog
from bta.features import FeatureSpec, OnlineProfiles, build_features
from bta.segment import SegmentBook, evaluate_rules
from bta.serve import Campaign, Creative, Engine, Experiment, MemoryProfileStore
from bta.sim import WorldConfig, make_world, run_experiment

N_USERS = int(os.environ.get("BTA_EXAMPLE_USERS", 20_000))
DAYS = int(os.environ.get("BTA_EXAMPLE_DAYS", 24))
SEED = int(os.environ.get("BTA_EXAMPLE_SEED", 0))
TRAIN_DAYS = DAYS // 2  # the first half is history, the second half the experiment

pd.set_option("display.width", 120)

# %% [markdown]
# ## 1. A world and its history
# `make_world` simulates users browsing for `DAYS` days, and advertisers with campaigns in
# content categories. The first `TRAIN_DAYS` days are the history we learn from.

# %%
world = make_world(WorldConfig(n_users=N_USERS, days=DAYS, seed=SEED))
events = world.events(0, TRAIN_DAYS)
log = EventLog.from_pandas(events, errors="quarantine", time_range=None)
summary = log.summary()
print(f"history: {summary['rows_accepted']:,} events of {log.n_users:,} users; "
      f"{int(log.flagged.sum())} users flagged as bots")

# %% [markdown]
# ## 2. Features at the end of the history
# Counts per event type and category over 1, 7 and 30 days, decayed counts with a one-week
# half-life, recency, RFM, sessions, diversity, smoothed CTR. Bots are left out.

# %%
spec = FeatureSpec(windows=("1d", "7d", "30d"), half_life="7d")
as_of = world.day_start_ms(TRAIN_DAYS) - 1
fm = build_features(log, spec, as_of=pd.Timestamp(as_of, unit="ms", tz="UTC"))
print(fm)

# %% [markdown]
# ## 3. Segments: one rule per advertised category
# A user is in `likes_<category>` when at least a tenth of their (decayed) page views are in
# that category and they viewed it at least twice in 30 days.

# %%
targeted_specs = [c for c in world.campaigns if c.targeted]
rules = {f"likes_{c}": (f'decay:page_view:{c} >= 0.1 * total("decay:page_view:*") '
                        f"and count:page_view:{c}:30d >= 2")
         for c in sorted({s.category for s in targeted_specs})}
book = SegmentBook.from_segments(fm.users, evaluate_rules(rules, fm), min_audience=50)
print(book.summary().sort_values("size", ascending=False).head(10))

# %% [markdown]
# ## 4. Campaigns and the Engine
# Targeted campaigns serve their category's segment (the rule is re-evaluated on the live
# profile at each request); run-of-network campaigns serve anyone, and they are all the
# control arm gets. A house ad fills what nothing else can. Users are split 50/50 by a hash.

# %%
def campaign(spec_, targeting):
    return Campaign(spec_.id, tuple(Creative(cr, cat) for cr, cat in spec_.creatives),
                    targeting=targeting, pricing=spec_.pricing, bid=spec_.bid,
                    budget=spec_.budget, cvr=world.config.conversion_rate)


campaigns = [campaign(s, f'segment("likes_{s.category}")') for s in targeted_specs
             if book.is_activatable(f"likes_{s.category}")]
campaigns += [campaign(s, None) for s in world.campaigns if not s.targeted]
profiles = OnlineProfiles(spec, categories=world.categories, grow_categories=False)
profiles.update_log(log)
engine = Engine(campaigns, fallback=Campaign("house", (Creative("house-1"),), bid=0.01),
                store=MemoryProfileStore(profiles, book), experiment=Experiment(salt="example"),
                # offline, decisions should not depend on how busy the machine is
                time_budget_ms=60_000.0).warmup()
print(f"{len(campaigns)} campaigns ({sum(c.targeting is not None for c in campaigns)} "
      f"targeted)")

# %% [markdown]
# ## 5. The experiment
# Each remaining day, the world's ad requests go through the Engine; users click and convert
# according to the ground truth; profiles are updated with the day's events overnight.

# %%
result = run_experiment(world, engine, days=DAYS - TRAIN_DAYS)
decisions = result.log
print(decisions.groupby(["arm", "reason"]).size().rename("requests"))

# %% [markdown]
# ## 6. Did targeting pay?
# Per arm: CTR, CVR, CPM, eCPM, ROAS, ROI with intervals; lifts against the control with
# p-values corrected over the family (CTR, CVR, ROAS); the sample-ratio check.

# %%
report = ab_report(decisions, control=result.control, cost=None,
                   expected_weights=result.expected_weights)
print(report.arm_table()[["impressions", "clicks", "conversions", "spend", "revenue", "ctr",
                          "cvr", "cpm", "roas", "roi"]].round(4))
lifts = report.lifts.set_index("metric").loc[["ctr", "cvr", "roas", "roi"],
                                             ["rel_lift", "rel_ci_low", "rel_ci_high",
                                              "p_adjusted", "significant"]]
print(lifts.round(4))
print(f"sample ratio mismatch: {report.srm_alarm}")

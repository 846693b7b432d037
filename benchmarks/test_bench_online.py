"""OnlineProfiles throughput: the benchmark stream, time ordered, in micro-batches of 10,000.

Paths: ``update(df)`` (ingestion of a DataFrame included), ``update_log(log)`` (EventLogs built
beforehand: the pure update) and ``update_log(log)+privacy`` (the same with a
:class:`~bta.privacy.PrivacyPolicy` screening every batch: 1% of the users opted out, 5 of the
200 categories blocked as sensitive). Target: 2,000,000 events/s. Before timing, each path's
profiles after the whole stream are checked equal, bit for bit, to ``build_features`` on the
events that may enter them. Micro-batches are built outside the timed part; each timed round
starts from empty profiles (made in ``setup``, untimed) and folds in every batch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _data import time_ordered
from _peers import page_view_events

BATCH = 10_000


def _spec():
    from bta.features import FeatureSpec

    # The per-category cells of the batch benchmark plus the per-user block (sessions, entropy),
    # which a serving profile carries too.
    return FeatureSpec(events=("page_view",), windows=("1d", "7d", "30d"), half_life="7d",
                       exclude_flagged=False)


def _log(user, ts, event, category):
    from bta.events import BotRule, EventLog

    # update(df) does not flag bots either (see OnlineProfiles.update).
    return EventLog.from_arrays(user_id=user, ts=ts, event=event, category=category,
                                ts_unit="ms", flag_bots=BotRule(enabled=False))


@pytest.fixture(scope="module")
def stream(bench_events):
    ev = time_ordered(bench_events)
    return ev, page_view_events(ev.n_events)


@pytest.fixture(scope="module")
def frames(stream):
    ev, pv = stream
    return [pd.DataFrame({"user_id": ev.user[i:i + BATCH], "ts": ev.ts[i:i + BATCH],
                          "event": pv[i:i + BATCH], "category": ev.category[i:i + BATCH]})
            for i in range(0, ev.n_events, BATCH)]


@pytest.fixture(scope="module")
def logs(stream):
    ev, pv = stream
    return [_log(ev.user[i:i + BATCH], ev.ts[i:i + BATCH], pv[i:i + BATCH],
                 ev.category[i:i + BATCH]) for i in range(0, ev.n_events, BATCH)]


@pytest.fixture(scope="module")
def batch_features(stream):
    from bta.features import build_features

    ev, pv = stream
    return build_features(_log(ev.user, ev.ts, pv, ev.category), _spec(), as_of=ev.as_of)


def _feed_frames(profiles, frames):
    for df in frames:
        profiles.update(df, ts_unit="ms")
    return profiles


def _feed_logs(profiles, logs):
    for log in logs:
        profiles.update_log(log)
    return profiles


def _assert_same_matrix(got, want):
    assert got.feature_names == want.feature_names
    np.testing.assert_array_equal(got.users, want.users)
    for part in ("indptr", "indices", "data"):
        # bit-identical: both paths run the same kernels in the same order
        np.testing.assert_array_equal(getattr(got.X, part), getattr(want.X, part), err_msg=part)


@pytest.mark.benchmark(group="online")
@pytest.mark.parametrize("path, threads, reserved", [
    ("update(df)", None, False), ("update(df)", 1, False), ("update_log(log)", None, False),
    ("update_log(log)", None, True)],
    ids=["update(df)", "update(df)-1thread", "update_log(log)", "update_log(log)-reserved"])
def test_online_update(benchmark, path, threads, reserved, stream, frames, logs, batch_features,
                       online_rounds, record_rate):
    # reserved: the profiles made room for the stream's users and events beforehand
    # (OnlineProfiles.reserve, untimed), as a long-running server's have: the rounds then time
    # the steady state, without the tables' growth from empty
    # threads=1: ingestion runs parallel batch kernels; on 10k-event batches their start-up
    # cost can exceed the work, so the serial figure is recorded beside the default one.
    import numba

    from bta._jit import num_threads
    from bta.features import OnlineProfiles

    ev, _pv = stream
    spec = _spec()
    OnlineProfiles(spec).warmup()
    feed, batches = (_feed_frames, frames) if path == "update(df)" else (_feed_logs, logs)

    def run(profiles, batches):
        with num_threads(threads):
            return feed(profiles, batches)

    def fresh():
        prof = OnlineProfiles(spec)
        return prof.reserve(users=int(np.unique(ev.user).size), events=ev.n_events) \
            if reserved else prof

    checked = run(fresh(), batches)
    assert checked.n_users == batch_features.n_users
    _assert_same_matrix(checked.features(as_of=ev.as_of), batch_features)
    profile_bytes = checked.memory_bytes()
    del checked  # GBs at full size: not kept alive beside the timed rounds' profiles

    n_rounds, _ = online_rounds
    # no warm-up rounds: the checked run above already compiled and touched everything
    benchmark.pedantic(run, setup=lambda: ((fresh(), batches), {}),
                       rounds=n_rounds, iterations=1, warmup_rounds=0)
    record_rate(benchmark, ev.n_events, batch_size=BATCH, n_batches=len(batches),
                target_events_per_s=2_000_000, profile_bytes=profile_bytes,
                numba_threads=threads or numba.get_num_threads())


#: Categories the privacy benchmark blocks, and the share of users who opted out.
_BLOCKED = (3, 50, 97, 144, 191)
_OPT_OUT_EVERY = 100


def _policy(n_users):
    from bta.privacy import PrivacyPolicy

    return PrivacyPolicy(sensitive_categories={str(c) for c in _BLOCKED},
                         opt_outs=range(0, n_users, _OPT_OUT_EVERY))


@pytest.mark.benchmark(group="online")
def test_online_update_privacy(benchmark, stream, logs, online_rounds, record_rate):
    from bta.features import OnlineProfiles, build_features

    ev, pv = stream
    spec = _spec()
    policy = _policy(ev.n_users)
    OnlineProfiles(spec).warmup()
    # categories are the integer codes 0..199; the policy names them as text, as a taxonomy
    # would, so the vocabulary given to the profiles is text too
    names = np.array([str(c) for c in range(ev.n_categories)], dtype=object)
    logs = [_log(log.users[log.user], log.ts, pv[:log.n_rows], names[log.categories][
        log.category]) for log in logs]
    keep = (ev.user % _OPT_OUT_EVERY != 0) & ~np.isin(ev.category, _BLOCKED)
    want = build_features(_log(ev.user[keep], ev.ts[keep], pv[:int(keep.sum())],
                               names[ev.category[keep]]), spec, as_of=ev.as_of)

    def run(profiles, batches):
        return _feed_logs(profiles, batches)

    checked = run(OnlineProfiles(spec, privacy=policy), logs)
    _assert_same_matrix(checked.features(as_of=ev.as_of), want)
    del checked

    n_rounds, _ = online_rounds
    benchmark.pedantic(run, setup=lambda: ((OnlineProfiles(spec, privacy=policy), logs), {}),
                       rounds=n_rounds, iterations=1, warmup_rounds=0)
    record_rate(benchmark, ev.n_events, batch_size=BATCH, n_batches=len(logs),
                target_events_per_s=2_000_000, opted_out_share=1 / _OPT_OUT_EVERY,
                blocked_categories=len(_BLOCKED))

"""The sweeps' choices (sendtrack/sweeps.py) and the replay hint (sendtrack/state.py), table-driven."""

from __future__ import annotations

import pytest

from sendtrack import state as st
from sendtrack import sweeps

NOW = 1_780_000_000_000
TTL = 1000
RETENTION = 5000


@pytest.mark.parametrize("held_since, due", [(None, False), (NOW - TTL + 1, False), (NOW - TTL, True), (0, True)])
def test_orphan_due(held_since, due):
    assert sweeps.orphan_due(held_since, NOW, TTL) is due


@pytest.mark.parametrize("state, dropped", [
    (None, False),
    ({"req": None, "ms": {}, "ev": [], "held": [{"cb": {}, "origin": []}]}, True),  # the request never came
    ({"req": {"message_id": "m"}, "ms": {}, "ev": [], "held": []}, False),  # it did: only the held expire
])
def test_drop_orphaned_state(state, dropped):
    assert sweeps.drop_orphaned_state(state) is dropped


@pytest.mark.parametrize("state, touched_at, evicted", [
    ({"req": None, "ms": {}, "ev": [], "held": [], "t": NOW - RETENTION - 1}, NOW - RETENTION - 1, True),
    ({"req": None, "ms": {}, "ev": [], "held": [], "t": NOW - RETENTION}, NOW - RETENTION, False),
    # holding callbacks: never evicted silently, whatever its age (the orphan sweep's)
    ({"req": None, "ms": {}, "ev": [], "held": [{"cb": {}, "origin": []}], "t": 0}, NOW, False),
    ({"req": None, "ms": {}, "ev": [], "held": []}, 0, True),  # never touched: as old as can be
])
def test_message_eviction(state, touched_at, evicted):
    assert sweeps.message_touched(state, NOW) == touched_at
    assert sweeps.stale(state, lambda s: sweeps.message_touched(s, NOW), NOW, RETENTION) is evicted


@pytest.mark.parametrize("value, touched, evicted", [
    (["m1", NOW - RETENTION - 1], sweeps.mapping_touched, True),
    (["m1", NOW - 10], sweeps.mapping_touched, False),
    ({"msgs": [], "marks": {}, "t": NOW - RETENTION - 1}, sweeps.recipient_touched, True),
    ({"msgs": [], "marks": {}, "t": NOW}, sweeps.recipient_touched, False),
])
def test_mapping_and_recipient_eviction(value, touched, evicted):
    assert sweeps.stale(value, touched, NOW, RETENTION) is evicted


@pytest.mark.parametrize("applied, topic, offset, reread", [
    ([], "send-requests", 5, False),  # nothing applied yet
    ([("send-requests", 5)], "send-requests", 5, True),  # the same record again
    ([("send-requests", 9)], "send-requests", 5, True),  # an earlier one: maybe a re-read
    ([("send-requests", 5)], "send-requests", 6, False),  # a later one
    ([("send-requests", 5)], "provider-callbacks", 1, False),  # offsets are per topic
    ([("send-requests", 9), ("send-requests", 3)], "send-requests", 8, True),  # only forward: 9 stays
])
def test_replay_hint(applied, topic, offset, reread):
    state = st.new_state()
    for t, o in applied:
        st.mark_applied(state, t, o, NOW)
    assert st.is_reread(state, topic, offset) is reread
    if applied:
        assert state["t"] == NOW

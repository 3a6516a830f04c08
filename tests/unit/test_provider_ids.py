"""Provider-id resolution and holding (sendtrack/provider_ids.py), table-driven, without Kafka."""

from __future__ import annotations

import copy

import pytest

from sendtrack import provider_ids
from sendtrack.status import MAX_HELD

NOW = 1_780_000_000_000
ORIGIN = ["provider-callbacks", 1, 7]


def body(event_id: str = "e1", **kw) -> dict:
    return {"event_id": event_id, "status": "delivered", "occurred_at": NOW, "provider": "esms",
            "provider_message_id": "p1", **kw}


def held(*event_ids: str, since: int = NOW - 1000) -> dict:
    return {"since": since, "cbs": [{"origin": ORIGIN, "body": body(e)} for e in event_ids]}


@pytest.mark.parametrize("mapping, held_before, message_id, now, stored, routed_to, deleted", [
    # first registration: stored, nothing held
    (None, None, "m1", NOW, ["m1", NOW], [], False),
    # the same message again within an hour: nothing to write
    (["m1", NOW - 60_000], None, "m1", NOW, None, [], False),
    # the same message after more than an hour: touched again (eviction keeps it)
    (["m1", NOW - 3_600_001], None, "m1", NOW, ["m1", NOW], [], False),
    # another message claims a known provider id: the first one stays its owner
    (["m1", NOW - 60_000], None, "m2", NOW, ["m1", NOW], [], False),
    # callbacks held for the id go to the message, and the held entry goes
    (None, held("e1", "e2"), "m1", NOW, ["m1", NOW], ["m1", "m1"], True),
    # held callbacks go to the first owner, not to the message that named the id now
    (["m1", NOW - 60_000], held("e1"), "m2", NOW, ["m1", NOW], ["m1"], True),
])
def test_map(mapping, held_before, message_id, now, stored, routed_to, deleted):
    d = provider_ids.on_map(mapping, held_before, message_id, now)
    assert d.mapping == stored
    assert [mid for mid, _ in d.routes] == routed_to
    assert all(env["kind"] == "callback" and env["body"]["message_id"] == mid for mid, env in d.routes)
    assert d.delete_held is deleted and d.held is None and d.refused is None


@pytest.mark.parametrize("mapping, held_before, event_id, outcome", [
    (["m1", NOW], None, "e1", "routed"),  # known mapping: straight to its message
    (["m1", NOW], held("e0"), "e1", "routed"),
    (None, None, "e1", "held"),  # unknown: held, since now
    (None, held("e0"), "e1", "held"),  # joins the others
    (None, held("e1"), "e1", "nothing"),  # the same event again: held once
    (None, held(*(f"e{i}" for i in range(MAX_HELD))), "new", "refused"),  # full
])
def test_resolve(mapping, held_before, event_id, outcome):
    stored = copy.deepcopy(held_before)
    d = provider_ids.on_resolve(mapping, held_before, ORIGIN, body(event_id), NOW, "provider id 'esms:p1'")
    got = ("routed" if d.routes else "held" if d.held else "refused" if d.refused else "nothing")
    assert got == outcome
    if outcome == "routed":
        (mid, env), = d.routes
        assert mid == "m1" and env == {"kind": "callback", "origin": ORIGIN, "body": body(event_id, message_id="m1")}
    if outcome == "held":
        before = held_before["cbs"] if held_before else []
        assert d.held["cbs"] == [*before, {"origin": ORIGIN, "body": body(event_id)}]
        assert d.held["since"] == (held_before["since"] if held_before else NOW)
    assert held_before == stored  # the value read from the table is not changed in place
    if outcome == "refused":
        assert d.refused.error_type == "too_many_held" and "provider id 'esms:p1'" in d.refused.error


@pytest.mark.parametrize("held_value, now, ttl, expired", [
    (None, NOW, 1000, False),
    (held("e1", since=NOW - 999), NOW, 1000, False),
    (held("e1", since=NOW - 1000), NOW, 1000, True),
    (held("e1", since=NOW - 5000), NOW, 1000, True),
])
def test_orphaned(held_value, now, ttl, expired):
    assert provider_ids.orphaned(held_value, now, ttl) is expired

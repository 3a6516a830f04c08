"""Messenger watermarks (sendtrack/watermarks.py), table-driven, without Kafka."""

from __future__ import annotations

import pytest

from sendtrack import watermarks

NOW = 1_780_000_000_000
DAY = 86_400_000
ORIGIN = ["sendtrack-by-provider-id", -1, -1]


def watch(mid: str, requested_at: int) -> dict:
    return {"op": "watch", "message_id": mid, "requested_at": requested_at}


def mark(status: str, watermark: int, event_id: str = "w") -> dict:
    return {"op": "watermark", "status": status, "watermark": watermark, "event_id": event_id, "occurred_at": watermark}


def run(ops: list[dict], now: int = NOW, retention: int = 30 * DAY) -> tuple[dict, list[tuple[str, str]]]:
    entry, routed = None, []
    for op in ops:
        entry, routes = watermarks.apply(entry, op, now, retention, ORIGIN)
        routed += [(mid, env["body"]["status"]) for mid, env in routes]
    return entry, routed


@pytest.mark.parametrize("ops, routed, watched", [
    # a watermark covers the messages requested at or before it
    ([watch("a", NOW - 10), watch("b", NOW - 5), mark("delivered", NOW - 5)],
     [("a", "delivered"), ("b", "delivered")], ["a", "b"]),
    # ...not the ones after it
    ([watch("a", NOW - 10), watch("b", NOW), mark("delivered", NOW - 5)], [("a", "delivered")], ["a", "b"]),
    # a watermark before the request: applied when the request arrives
    ([mark("delivered", NOW - 5), watch("a", NOW - 10)], [("a", "delivered")], ["a"]),
    # once per message and status, however many watermarks cover it
    ([watch("a", NOW - 10), mark("delivered", NOW - 5), mark("delivered", NOW - 1, "w2")], [("a", "delivered")], ["a"]),
    # a lower watermark than the one kept changes nothing
    ([mark("delivered", NOW - 1), mark("delivered", NOW - 100, "w2"), watch("a", NOW - 50)], [("a", "delivered")], ["a"]),
    # delivered and read: no longer watched
    ([watch("a", NOW - 10), mark("delivered", NOW - 5), mark("opened", NOW - 5)],
     [("a", "delivered"), ("a", "opened")], []),
    # watching the same message twice: once
    ([watch("a", NOW - 10), watch("a", NOW - 10)], [], ["a"]),
    # older than the retention: dropped
    ([watch("old", NOW - 31 * DAY), watch("a", NOW - 10)], [], ["a"]),
])
def test_watermarks(ops, routed, watched):
    entry, got = run(ops)
    assert got == routed
    assert [m[0] for m in entry["msgs"]] == watched
    assert entry["t"] == NOW


def test_a_routed_receipt_is_a_messenger_callback_with_its_own_event_id():
    _, routes = watermarks.apply({"msgs": [["a", NOW - 10, []]], "marks": {}, "t": 0}, mark("delivered", NOW, "mid.1"),
                                 NOW, DAY, ORIGIN)
    assert routes == [("a", {"kind": "callback", "origin": ORIGIN, "body": {
        "event_id": "mid.1:a", "status": "delivered", "occurred_at": NOW, "message_id": "a", "provider": "messenger"}})]


def test_at_most_the_newest_messages_are_watched():
    entry, _ = run([watch(f"m{i}", NOW - 1000 + i) for i in range(watermarks.MAX_WATCHED + 10)])
    assert len(entry["msgs"]) == watermarks.MAX_WATCHED and entry["msgs"][0][0] == "m10"

"""Messenger delivery and read receipts, without Kafka. Messenger reports a watermark per
recipient: every message to that recipient sent at or before it was delivered (or read). The
engine keeps, per recipient, the messages it still watches and the highest watermark per status,
and turns a watermark into one callback per message it covers, including messages whose request
arrives after the watermark (agents/engine.py stores the entry and routes the callbacks).

Entry: `{"msgs": [[message_id, requested_at, [statuses applied]]], "marks": {status: [watermark,
event_id, occurred_at]}, "t": touched_at}`.
"""

from __future__ import annotations

from typing import Any, Optional

MAX_WATCHED = 256  # messages tracked per recipient
STATUSES = 2  # delivered and opened: a message both have covered is no longer watched

Route = tuple[str, dict[str, Any]]


def apply(entry: Optional[dict[str, Any]], op: dict[str, Any], now: int, retention_ms: int,
          origin: Any) -> tuple[dict[str, Any], list[Route]]:
    """Apply `op` (`{"op": "watch", message_id, requested_at}` or `{"op": "watermark", status,
    watermark, event_id, occurred_at}`) to a recipient's entry; returns the new entry and the
    callbacks to route, one per (message, status) newly covered."""
    entry = entry or {"msgs": [], "marks": {}, "t": now}
    if op["op"] == "watch":
        if all(m[0] != op["message_id"] for m in entry["msgs"]):
            entry["msgs"].append([op["message_id"], op["requested_at"], []])
    else:
        mark = entry["marks"].get(op["status"])
        if mark is None or op["watermark"] > mark[0]:
            entry["marks"][op["status"]] = [op["watermark"], op["event_id"], op["occurred_at"]]
    routes: list[Route] = []
    for msg in entry["msgs"]:
        for status, (watermark, event_id, occurred_at) in entry["marks"].items():
            if msg[1] <= watermark and status not in msg[2]:
                msg[2].append(status)
                body = {"event_id": f"{event_id}:{msg[0]}", "status": status, "occurred_at": occurred_at,
                        "message_id": msg[0], "provider": "messenger"}
                routes.append((msg[0], {"kind": "callback", "origin": origin, "body": body}))
    # A message that every kind of receipt has covered needs no more tracking; nor does one older
    # than the retention, and the index keeps at most the newest MAX_WATCHED messages.
    horizon = now - retention_ms
    entry["msgs"] = [m for m in entry["msgs"] if len(m[2]) < STATUSES and m[1] >= horizon][-MAX_WATCHED:]
    entry["t"] = now
    return entry, routes

"""Provider-id resolution and holding, without Kafka: what the provider-id side of the engine does
with one operation, given what its tables hold for that provider id (agents/engine.py applies the
decision: table writes, routed callbacks, dead letters).

The tables, per provider id (`provider\\x1fprovider_message_id`):

* mapping: `[message_id, touched_at]`, registered by the first callback that names both ids;
* held: `{"since": ms, "cbs": [{"origin": [...], "body": {...}}]}`, callbacks that named only the
  provider's id and arrived before its mapping.

Operations: `map` (a callback named both ids), `resolve` (a callback named only the provider's id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from schemas.models import Invalid
from sendtrack.status import hold_refusal

# A mapping is rewritten (its touched_at refreshed, so eviction keeps it) at most this often.
TOUCH_EVERY_MS = 3_600_000

Route = tuple[str, dict[str, Any]]  # (message_id, envelope for the partition that owns it)


@dataclass
class Decision:
    """What an operation changes. `mapping` / `held`: the new value to store (None = leave as is);
    `delete_held`: remove the held entry; `routes`: callbacks to send to their message's partition;
    `refused`: the callback cannot be held (a dead letter)."""

    mapping: Optional[list] = None
    held: Optional[dict[str, Any]] = None
    delete_held: bool = False
    routes: list[Route] = field(default_factory=list)
    refused: Optional[Invalid] = None


def _callback(message_id: str, origin: Any, body: dict[str, Any]) -> Route:
    return message_id, {"kind": "callback", "origin": origin, "body": dict(body, message_id=message_id)}


def on_map(mapping: Optional[list], held: Optional[dict[str, Any]], message_id: str, now: int) -> Decision:
    """A callback named both ids. The first message registered for a provider id stays its message;
    callbacks held for the id go to it."""
    decision = Decision()
    if mapping is None or mapping[0] != message_id or now - mapping[1] > TOUCH_EVERY_MS:
        decision.mapping = [mapping[0] if mapping else message_id, now]
    owner = mapping[0] if mapping else message_id
    if held:
        decision.routes = [_callback(owner, item["origin"], item["body"]) for item in held["cbs"]]
        decision.delete_held = True
    return decision


def on_resolve(mapping: Optional[list], held: Optional[dict[str, Any]], origin: Any, body: dict[str, Any],
               now: int, waiting_for: str) -> Decision:
    """A callback named only the provider's id: routed to its message when the mapping is known, else
    held for it (once per event id), unless the held callbacks are full."""
    if mapping is not None:
        return Decision(routes=[_callback(mapping[0], origin, body)])
    held = held or {"since": now, "cbs": []}
    if any(item["body"]["event_id"] == body["event_id"] for item in held["cbs"]):
        return Decision()  # the same callback again: held once
    entry = {"origin": origin, "body": body}
    refused = hold_refusal(held["cbs"], entry, waiting_for)
    if refused is not None:
        return Decision(refused=refused)
    return Decision(held={**held, "cbs": [*held["cbs"], entry]})


def orphaned(held: Optional[dict[str, Any]], now: int, ttl_ms: int) -> bool:
    """The held callbacks waited the orphan TTL for their mapping: they become dead letters."""
    return held is not None and now - held["since"] >= ttl_ms

"""The state of one message, as the engine keeps it in the `messages` table (one typed mapping,
every key declared here and nowhere else; tests/unit/test_state.py checks that the engine and the
rules use no other).

It is stored as compact JSON (orjson) under these short keys, and kept a plain mapping at run time
rather than an object: it is decoded and encoded for every record the engine applies, and a
`TypedDict` costs nothing there, while an object built from it would cost a conversion each way.
A state written by any earlier version loads as it is: keys were only ever added, and every key
added after the first (`rh`, `fail`, `fail_key`, `eng`, `off`, `t`, `hi`, `pm`) is optional.
"""

from __future__ import annotations

from typing import Any, Optional, TypedDict

# A milestone entry: [occurred_at, inferred, source event id] and, for the first open or click,
# [..., url, is_machine].
OCCURRED_AT, INFERRED, SOURCE, URL, IS_MACHINE = range(5)


class HeldCallback(TypedDict):
    cb: dict[str, Any]  # the callback, as parsed (its fields without the null ones)
    origin: list  # [topic, partition, offset] where it was read


class MessageState(TypedDict, total=False):
    # Always present (new_state):
    req: Optional[dict[str, Any]]  # the send request without `attributes`, or None before it arrives
    ms: dict[str, list]  # status -> milestone entry (above), in the order reached
    ev: list[str]  # digests of applied callback event ids, oldest first (at most MAX_EVENT_IDS)
    held: list[HeldCallback]  # callbacks waiting for the request (at most MAX_HELD)
    # Added by the rules:
    rh: str  # digest of the request's content: the same request again is a duplicate
    fail: list[str]  # [reason_code, reason, bounce_type] of the earliest failure event
    fail_key: list  # [occurred_at, reason_code, reason, bounce_type]: what "earliest" compares
    eng: dict[str, list]  # engagement event id -> [status, occurred_at, url, is_machine] (the last kept)
    # Added by the engine (agents/engine.py):
    off: dict[str, int]  # input topic -> highest offset applied (a hint that a duplicate is a re-read)
    t: int  # when last touched (ms): eviction after SENDTRACK_STATE_RETENTION_DAYS
    hi: bool  # listed in the held-index table (it holds callbacks)
    pm: list[str]  # provider ids it registered (at most 8)
    # Added by an erasure (`sendtrack erase`): the state is only this marker (with `t`), and the
    # message's inputs are dropped until it is evicted.
    erased: int  # when the customer was erased (ms)


def new_state() -> MessageState:
    """The state of a message nothing is known about yet."""
    return {"req": None, "ms": {}, "ev": [], "held": []}


def is_reread(state: MessageState, topic: str, offset: int) -> bool:
    """True when the record at (`topic`, `offset`) may be a re-read after a crash: some record of this
    message at or after it on the same topic was applied before.

    Only a hint, used to produce an applied record's changes again (same change_id). Whether a record
    is applied is decided by its identity (the event id, the request's content), never by its offset:
    Faust can hand the engine a later record without an earlier one (the earlier one is then re-read
    after a restart), so "below the highest applied offset" does not mean "applied".
    """
    seen = state.get("off", {}).get(topic)
    return seen is not None and offset <= seen


def mark_applied(state: MessageState, topic: str, offset: int, now: int) -> None:
    """Record that the record at (`topic`, `offset`) was applied, at `now`. Only forward: a re-read of
    an earlier record must not hide that later ones were applied."""
    seen = state.setdefault("off", {})
    seen[topic] = max(seen.get(topic, -1), offset)
    state["t"] = now


def erased(now: int) -> MessageState:
    """The state of an erased customer's message: nothing of the customer, only when it was erased."""
    state = new_state()
    state["erased"] = now
    state["t"] = now
    return state

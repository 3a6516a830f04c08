"""The status rules of CONTRACT §2 as pure functions: apply a request or callback to a message's state."""

from __future__ import annotations

import dataclasses
import hashlib

import orjson
from dataclasses import dataclass, field
from typing import Any, Optional

from schemas.models import ACTIONS, Callback, Invalid, SendRequest, StatusChange
from schemas.validate import ErrorType
from sendtrack.state import INFERRED, IS_MACHINE, OCCURRED_AT, SOURCE, URL, MessageState, new_state  # noqa: F401 - re-exported

# §2.2: reaching the key implies reaching each value (transitively, only within the action's set).
IMPLIES: dict[str, tuple[str, ...]] = {
    "delivered": ("processing",),
    "opened": ("delivered",),
    "clicked": ("opened", "delivered"),
    "answered": ("delivered",),
    "complained": ("delivered",),
    "unsubscribed": ("delivered",),
    "bounced": ("failed",),
}

# §2.3 as one total order: the current status is the reached milestone that ranks highest here.
# failed/bounced outrank every positive milestone except the engagement ones (opened, answered,
# clicked), which is exactly "failed unless the customer engaged". unsubscribed/complained are
# never current.
CURRENT_RANK: dict[str, int] = {
    "sent": 1,
    "processing": 2,
    "delivered": 3,
    "succeeded": 4,
    "failed": 5,
    "bounced": 6,
    "opened": 7,
    "answered": 7,
    "clicked": 8,
}

# Bounds on one message's state, so that it always fits in one record of its table's changelog
# (sendtrack.topics.RECORD_MAX_BYTES, 1 MiB). Parts whose size depends on text are bounded in
# encoded bytes as well as in count: TEXT_MAX counts characters, and a character takes up to 4 bytes
# in UTF-8 and 6 in JSON (a control character, \u0001). At their limits the other parts take about
# 485 KB (20,000 event-id digests 380 KB, milestones 58 KB, failure reason and its sort key 28 KB,
# provider ids 10 KB, request 7 KB). Held callbacks exist only before the request, kept engagement
# events only after it: the worst states are 512 KB and 740 KB (tests/unit/test_status.py).
MAX_HELD = 64  # callbacks waiting for their request
HELD_MAX_BYTES = 512 * 1024  # ... and their encoded size (a callback is up to ~42 KB)
MAX_EVENT_IDS = 20_000  # digests of applied event ids kept for idempotence (oldest dropped)
MAX_ENGAGEMENT_KEPT = 64  # engagement events kept for re-production after a crash (oldest dropped)
ENGAGEMENT_MAX_BYTES = 256 * 1024  # ... and their encoded size (an event is up to ~26 KB)

ENGAGEMENT = frozenset({"opened", "clicked"})
FAILURE = frozenset({"failed", "bounced"})
HTTP_STATUS_ACTIONS = frozenset({"http_request", "sync"})
REQUEST_SOURCE = "@request"


def closure(status: str) -> list[str]:
    """The status and everything it implies, nearest first."""
    out, todo = [], [status]
    while todo:
        s = todo.pop(0)
        if s not in out:
            out.append(s)
            todo.extend(IMPLIES.get(s, ()))
    return out


# Every status's closure, computed once (the rules ask for one per milestone reached).
CLOSURES: dict[str, tuple[str, ...]] = {s: tuple(closure(s)) for s in CURRENT_RANK.keys() | IMPLIES.keys()}


def current_status(reached: Any) -> str:
    """The one current status of a message whose reached milestones are `reached` (§2.3)."""
    best, best_rank = "", 0
    for s in reached:
        rank = CURRENT_RANK.get(s, 0)
        if rank > best_rank:
            best, best_rank = s, rank
    return best


def change_id(message_id: str, status: str, event_id: str = "") -> str:
    """Deterministic id of a status change: the same milestone always gets the same id."""
    material = f"{message_id}\x1f{status}\x1f{event_id}" if event_id else f"{message_id}\x1f{status}"
    return hashlib.blake2b(material.encode(), digest_size=16).hexdigest()


@dataclass(slots=True)
class Outcome:
    """What applying one input did: the status changes it caused, or why it was refused."""

    changes: list[StatusChange] = field(default_factory=list)
    invalid: Optional[Invalid] = None
    held: bool = False
    duplicate: bool = False
    # Held callbacks refused when their request arrived (e.g. a status the action does not allow):
    # (held entry, why).
    rejected: list[tuple[dict[str, Any], Invalid]] = field(default_factory=list)


def _resolve_status(cb: Callback, action: str) -> str | Invalid:
    """The status a callback reports for a message of `action` (§2.8 for http_status)."""
    if cb.status is not None:
        status = cb.status
    elif action in HTTP_STATUS_ACTIONS:
        status = "succeeded" if cb.http_status == 200 else "failed"
    else:
        return Invalid(
            ErrorType.STATUS_NOT_ALLOWED,
            f"a callback with only 'http_status' applies to http_request and sync, not {action}",
        )
    if status not in ACTIONS[action]:
        return Invalid(
            ErrorType.STATUS_NOT_ALLOWED,
            f"status {status!r} is not allowed for action {action!r} "
            f"(allowed: {', '.join(sorted(ACTIONS[action]))})",
        )
    return status


def _change(state: MessageState, status: str, previous: str, now: int, *, current: str,
            kind: str = "milestone", event: Optional[list] = None) -> StatusChange:
    """A status change record. `event` is [event_id, occurred_at, url, is_machine] for engagement."""
    req = state["req"]
    if kind != "milestone":
        source, occurred_at, url, is_machine = event
        inferred = False
    else:
        entry = state["ms"][status]
        occurred_at, inferred, source = entry[OCCURRED_AT], entry[INFERRED], entry[SOURCE]
        url, is_machine = (entry[URL], entry[IS_MACHINE]) if len(entry) > URL else ("", False)
    if status in FAILURE:
        reason_code, reason, bounce_type = state.get("fail") or ("", "", "")
        reason_at = state["fail_key"][0] if "fail_key" in state else 0
    else:
        reason_code = reason = bounce_type = ""
        reason_at = 0
    return StatusChange(
        change_id=change_id(req["message_id"], status, source if kind == "engagement" else ""),
        kind=kind,
        message_id=req["message_id"],
        status=status,
        previous_status=previous,
        current_status=current,
        inferred=bool(inferred),
        occurred_at=occurred_at,
        recorded_at=now,
        action=req["action"],
        provider=req.get("provider") or "",
        customer_id=req["customer_id"],
        recipient=req.get("recipient") or "",
        flow_id=req.get("flow_id") or "",
        campaign_id=req.get("campaign_id") or "",
        step_id=req.get("step_id") or "",
        requested_at=req["requested_at"],
        reason_code=reason_code,
        reason=reason,
        bounce_type=bounce_type,
        reason_at=reason_at,
        event_id=source if source != REQUEST_SOURCE else "",
        url=url,
        is_machine=is_machine,
        workspace_id=req.get("workspace_id") or "",
    )


def _reach(state: MessageState, status: str, occurred_at: int, source: str, now: int,
           cb: Callback | None) -> list[StatusChange]:
    """Reach `status` and what it implies; one change per milestone newly reached."""
    allowed = ACTIONS[state["req"]["action"]]
    changes = []
    for i, s in enumerate(CLOSURES.get(status) or closure(status)):
        if s in allowed and s not in state["ms"]:
            previous = current_status(state["ms"])
            entry = [occurred_at, i > 0, source]
            if i == 0 and cb is not None and s in ENGAGEMENT and (cb.url or cb.is_machine):
                entry += [cb.url or "", bool(cb.is_machine)]
            state["ms"][s] = entry
            changes.append(_change(state, s, previous, now, current=current_status(state["ms"])))
    return changes


def _record_failure(state: MessageState, cb: Callback) -> bool:
    """Keep the reason of the earliest failure event, so a message's failure reason does not depend
    on the order callbacks arrive in. Ties on occurred_at go to the smallest (reason_code, reason,
    bounce_type): the same order ClickHouse's messages view folds with. True if the reason changed."""
    reason = [cb.reason_code or "", cb.reason or "", cb.bounce_type or ""]
    key = [cb.occurred_at, *reason]
    if "fail" not in state or key < state["fail_key"]:
        state["fail"] = reason
        state["fail_key"] = key
        return True
    return False


def _request_doc(req: SendRequest) -> tuple[dict[str, Any], str]:
    """The request as kept in the state (without attributes, which can be large) and a digest of
    its whole content, for telling a repeat from a conflicting request."""
    doc = {name: v for name in req.__slots__ if (v := getattr(req, name)) is not None}
    if doc.get("workspace_id") == "":  # '' is no workspace, as absent is: the same content
        del doc["workspace_id"]
    content = _digest(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    doc.pop("attributes", None)
    return doc, content


def request_conflict(state: MessageState, req: SendRequest) -> Optional[Invalid]:
    """Why `req` is refused if the message was already requested with other content (§2.1)."""
    if state["req"] is None or state.get("rh") == _request_doc(req)[1]:
        return None
    return Invalid(
        ErrorType.CONFLICTING_REQUEST,
        f"message {req.message_id!r} was already requested with different content; the first stands",
    )


def apply_request(state: MessageState, req: SendRequest, now: int) -> Outcome:
    """Apply a send request (§2.1), then any callbacks held for it (§2.6)."""
    doc, content = _request_doc(req)
    if state["req"] is not None:
        conflict = request_conflict(state, req)
        return Outcome(invalid=conflict) if conflict else Outcome(duplicate=True)
    state["req"] = doc
    state["rh"] = content
    out = Outcome()
    if "sent" in ACTIONS[req.action]:
        out.changes.extend(_reach(state, "sent", req.requested_at, REQUEST_SOURCE, now, None))
    else:
        out.changes.append(_request_record(state, now))
    held, state["held"] = state["held"], []
    for entry in held:
        sub = apply_callback(state, Callback(**entry["cb"]), now)
        out.changes.extend(sub.changes)
        if sub.invalid is not None:
            out.rejected.append((entry, sub.invalid))
    return out


def apply_callback(state: MessageState, cb: Callback, now: int, origin: Any = None) -> Outcome:
    """Apply one canonical callback (§2.2-§2.8). Held if the request is not known yet."""
    seen = _digest(cb.event_id.encode())
    if seen in state["ev"]:
        return Outcome(duplicate=True)
    if state["req"] is None:
        if any(h["cb"]["event_id"] == cb.event_id for h in state["held"]):
            return Outcome(duplicate=True)
        doc = {k: v for k, v in _asdict(cb).items() if v is not None}
        entry = {"cb": doc, "origin": origin}
        refused = hold_refusal(state["held"], entry, f"the request of message {cb.message_id!r}")
        if refused is not None:
            return Outcome(invalid=refused)
        state["held"].append(entry)
        return Outcome(held=True)
    status = _resolve_status(cb, state["req"]["action"])
    if isinstance(status, Invalid):
        return Outcome(invalid=status)
    state["ev"].append(seen)
    if len(state["ev"]) > MAX_EVENT_IDS:
        del state["ev"][: len(state["ev"]) - MAX_EVENT_IDS]
    reason_changed = status in FAILURE and _record_failure(state, cb)
    failed_before = sorted(FAILURE.intersection(state["ms"])) if reason_changed else ()
    already = status in state["ms"]
    changes = _reach(state, status, cb.occurred_at, cb.event_id, now, cb)
    if reason_changed:
        # An earlier failure arrived late: its reason replaces the one already recorded on the
        # failure milestones, which are produced again (same change_id, newer reason_at wins).
        current = current_status(state["ms"])
        for s in failed_before:
            changes.append(_change(state, s, current, now, current=current))
    if already and status in ENGAGEMENT:
        # §2.4: a repeated open/click with a new event_id reaches nothing but is an engagement event.
        # Kept in the state so a re-read after a crash can produce it again.
        event = [cb.event_id, cb.occurred_at, cb.url or "", bool(cb.is_machine)]
        kept = state.setdefault("eng", {})
        kept[cb.event_id] = [status, *event[1:]]
        _trim_engagement(kept)
        current = current_status(state["ms"])
        changes.append(_change(state, status, current, now, current=current, kind="engagement", event=event))
    return Outcome(changes=changes)


def hold_refusal(held: list[Any], entry: Any, waiting_for: str) -> Optional[Invalid]:
    """Why `entry` cannot join the callbacks `held` waiting for `waiting_for`, if it cannot: at most
    MAX_HELD of them, together at most HELD_MAX_BYTES encoded."""
    if len(held) >= MAX_HELD:
        return Invalid(ErrorType.TOO_MANY_HELD, f"{MAX_HELD} callbacks already wait for {waiting_for}")
    size = len(orjson.dumps(entry)) + sum(len(orjson.dumps(h)) + 1 for h in held)
    if size > HELD_MAX_BYTES:
        return Invalid(ErrorType.TOO_MANY_HELD, f"the {len(held)} callbacks waiting for {waiting_for} and "
                       f"this one would take {size} bytes, over {HELD_MAX_BYTES}")
    return None


def _trim_engagement(kept: dict[str, list]) -> None:
    """Drop the oldest kept engagement events past MAX_ENGAGEMENT_KEPT or ENGAGEMENT_MAX_BYTES. The
    newest always stays: a re-read after a crash is of the inputs applied last."""
    while len(kept) > MAX_ENGAGEMENT_KEPT:
        del kept[next(iter(kept))]
    sizes = [len(orjson.dumps([k, v])) for k, v in kept.items()]
    total = sum(sizes)
    for size in sizes[:-1]:
        if total <= ENGAGEMENT_MAX_BYTES:
            break
        del kept[next(iter(kept))]
        total -= size


def _request_record(state: MessageState, now: int) -> StatusChange:
    """The record that makes an http_request known downstream before any milestone (status '').

    http_request has no `sent`, but a message awaiting its result still has a row in `messages`
    with current status ''."""
    return dataclasses.replace(
        _change(state, "sent", "", now, current=current_status(state["ms"]), kind="request",
                event=[REQUEST_SOURCE, state["req"]["requested_at"], "", False]),
        status="", change_id=change_id(state["req"]["message_id"], ""), event_id="",
    )


def replay_changes(state: MessageState, source: str, now: int) -> list[StatusChange]:
    """The milestone changes an already applied input caused, rebuilt from the state.

    Used when an input is re-read after a crash: its state update may have survived while the
    status changes it produced were never written, so they are produced again (same change_id).
    `source` is the callback's event_id, or REQUEST_SOURCE for the send request.
    """
    if state["req"] is None:
        return []
    out, reached = [], []
    for status, entry in state["ms"].items():
        previous = current_status(reached)
        reached.append(status)
        if entry[SOURCE] == source:
            out.append(_change(state, status, previous, now, current=current_status(reached)))
    if source == REQUEST_SOURCE and "sent" not in ACTIONS[state["req"]["action"]]:
        out.insert(0, _request_record(state, now))
    if source in state.get("eng", {}):
        status, occurred_at, url, is_machine = state["eng"][source]
        current = current_status(state["ms"])
        out.append(_change(state, status, current, now, current=current, kind="engagement",
                           event=[source, occurred_at, url, is_machine]))
    return out


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _asdict(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}

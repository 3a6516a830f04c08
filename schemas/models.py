"""The records of the four contract topics, as plain dataclasses (CONTRACT §3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# CONTRACT §1: the statuses each action can reach. This table is the law.
ACTIONS: dict[str, frozenset[str]] = {
    "email": frozenset(
        {"sent", "processing", "delivered", "failed", "opened", "clicked",
         "unsubscribed", "complained", "bounced"}
    ),
    "zalo_oa": frozenset({"sent", "processing", "delivered", "failed", "opened", "clicked"}),
    "zns": frozenset({"sent", "processing", "delivered", "failed"}),
    "messenger": frozenset({"sent", "delivered", "failed", "opened", "clicked"}),
    "sms": frozenset({"sent", "processing", "delivered", "failed", "clicked"}),
    "ai_call": frozenset({"sent", "delivered", "failed", "answered"}),
    "http_request": frozenset({"succeeded", "failed"}),
    "timer": frozenset({"sent"}),
    "voucher": frozenset({"sent", "processing", "failed", "delivered"}),
    "sync": frozenset({"sent", "succeeded", "failed"}),
    "start_flow": frozenset({"sent", "succeeded", "failed"}),
    "other": frozenset({"sent", "succeeded", "failed"}),
}

STATUSES: tuple[str, ...] = (
    "sent", "processing", "delivered", "failed", "opened", "clicked",
    "unsubscribed", "complained", "bounced", "answered", "succeeded",
)

MESSAGE_ID_MAX = 128
# Longest accepted text per field (characters, as JSON Schema's maxLength counts them). They bound
# what a message's state and a status change can hold; the engine bounds the state in encoded bytes
# too (sendtrack/status.py), since a character is up to 6 bytes in JSON (\u0001).
TEXT_MAX: dict[str, int] = {
    "event_id": 256, "provider_message_id": 256, "provider": 64, "customer_id": 256, "recipient": 512,
    "flow_id": 256, "campaign_id": 256, "step_id": 256, "workspace_id": 128, "reason_code": 256, "reason": 2048, "url": 4096,
}
# Identifiers: no control characters (C0, DEL, C1). They become parts of keys ("\x1f" separates
# provider and provider message id) and of dashboard labels.
ID_FIELDS = frozenset({"message_id", "event_id", "provider_message_id", "provider", "customer_id",
                       "recipient", "flow_id", "campaign_id", "step_id", "workspace_id"})
ID_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]*$"  # as JSON Schema (ECMA-262) and Python's re read it


@dataclass(slots=True)
class SendRequest:
    """Published by the flow engine each time it asks a third party to act (topic send-requests)."""

    message_id: str
    action: str
    customer_id: str
    requested_at: int
    provider: Optional[str] = None
    recipient: Optional[str] = None
    flow_id: Optional[str] = None
    campaign_id: Optional[str] = None
    step_id: Optional[str] = None
    # The workspace (shop, tenant) the send belongs to; '' when the producer does not say (docs/contract.md).
    workspace_id: Optional[str] = None
    attributes: Optional[dict[str, Any]] = None


@dataclass(slots=True)
class Callback:
    """A canonical provider result or receipt (topic provider-callbacks)."""

    event_id: str
    occurred_at: int
    status: Optional[str] = None
    http_status: Optional[int] = None
    message_id: Optional[str] = None
    provider: Optional[str] = None
    provider_message_id: Optional[str] = None
    reason_code: Optional[str] = None
    reason: Optional[str] = None
    url: Optional[str] = None
    is_machine: Optional[bool] = None
    bounce_type: Optional[str] = None


# Not slotted: orjson writes a dataclass from its __dict__ in a third of the time it takes reading
# slots (0.9 against 2.4 µs, the same bytes), and the engine writes one per status change. Without
# slots an attribute set by mistake would be written too: only _change and dataclasses.replace make one.
@dataclass
class StatusChange:
    """One milestone reached by one message, or one engagement event (topic status-changes)."""

    change_id: str
    # 'milestone'; 'engagement' (a repeated open/click with a new event_id); 'request' (an
    # http_request awaiting its result: status '', so the message has a row before any milestone).
    kind: str
    message_id: str
    status: str
    previous_status: str
    current_status: str
    inferred: bool
    occurred_at: int
    recorded_at: int
    action: str
    provider: str
    customer_id: str
    recipient: str
    flow_id: str
    campaign_id: str
    step_id: str
    requested_at: int
    reason_code: str = ""
    reason: str = ""
    bounce_type: str = ""
    reason_at: int = 0  # occurred_at of the failure event the reason comes from (0: none)
    event_id: str = ""
    url: str = ""
    is_machine: bool = False
    workspace_id: str = ""  # the request's, '' when it named none


@dataclass(slots=True)
class DeadLetter:
    """A record sendtrack could not use, with its original bytes and why (topic dead-letters)."""

    source_topic: str
    partition: int
    offset: int
    key: Optional[str]
    payload: str
    payload_encoding: str  # 'utf-8' or 'base64'
    error_type: str
    error: str
    failed_at: int


@dataclass(slots=True, frozen=True)
class Invalid:
    """Why a record was refused: one of ErrorType, and a message naming the field."""

    error_type: str
    error: str
    extra: dict[str, Any] = field(default_factory=dict)

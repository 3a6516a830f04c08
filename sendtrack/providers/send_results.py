"""A provider's synchronous send API response as one canonical callback (accepted or rejected)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from sendtrack.providers.canonical import callback, event_hash, in_range, message_id as valid_message_id
from sendtrack.providers.payload import decode_json, integer, items, obj, text

_REASON_MAX = 200
_XML_TAG = "<{0}>([^<]{{1,256}})</{0}>"


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What a send response says: accepted (with the provider's id when given) or rejected and why."""

    accepted: bool
    provider_message_id: str | None = None
    reason_code: str | None = None
    reason: str | None = None


def send_result_to_callback(provider: str, message_id: str, http_status: int, headers: Mapping[str, str],
                            body_bytes: bytes, occurred_at_ms: int) -> dict[str, Any]:
    """The callback for a send response: processing (sent where the action has no processing) or failed.

    It carries message_id, provider and provider_message_id, so it registers the id mapping.
    Raises ValueError for an unknown provider, an invalid message_id or occurred_at_ms (caller bugs).
    """
    reader = READERS.get(provider)
    own_id = valid_message_id(message_id)
    if reader is None or own_id is None or in_range(occurred_at_ms) is None:
        raise ValueError("unknown provider, or message_id/occurred_at_ms out of the contract's range")
    outcome = reader(http_status, {k.lower(): v for k, v in headers.items()}, body_bytes)
    status = _accepted_status(provider, outcome) if outcome.accepted else "failed"
    return callback(
        provider, status, occurred_at_ms,
        provider_message_id=outcome.provider_message_id,
        message_id=own_id,
        event_id=event_hash(provider, own_id, status, "send", str(occurred_at_ms)),
        reason_code=outcome.reason_code,
        reason=outcome.reason,
    )


def _accepted_status(provider: str, outcome: SendOutcome) -> str:
    """Acceptance is not delivery: processing, except for messenger and calls, whose actions lack it."""
    if provider in ("messenger", "retell"):
        return "sent"
    if provider == "twilio" and (outcome.provider_message_id or "").startswith("CA"):
        return "sent"  # a Voice call sid
    return "processing"


def _ok(http_status: int) -> bool:
    return 200 <= http_status < 300


def _rejected(http_status: int, code: Any = None, reason: Any = None, pmid: str | None = None) -> SendOutcome:
    reason_text = text(reason)
    return SendOutcome(False, pmid, text(code) or f"http_{http_status}",
                       reason_text[:_REASON_MAX] if reason_text else None)


def _invalid(http_status: int) -> SendOutcome:
    return SendOutcome(False, None, "invalid_response", f"HTTP {http_status} with an unexpected body")


def sendgrid(http_status: int, headers: Mapping[str, str], body: bytes) -> SendOutcome:
    """202 + X-Message-Id header; errors as {"errors":[{"message"}]}."""
    if _ok(http_status):
        return SendOutcome(True, headers.get("x-message-id") or None)
    first = obj(next(iter(items(obj(decode_json(body)).get("errors"))), None))
    return _rejected(http_status, reason=first.get("message"))


def ses(http_status: int, headers: Mapping[str, str], body: bytes) -> SendOutcome:
    """SESv2 JSON {"MessageId"} or the v1 query API's XML; errors in x-amzn-ErrorType or <Error>."""
    doc = obj(decode_json(body))
    if _ok(http_status):
        return SendOutcome(True, text(doc.get("MessageId")) or _xml(body, "MessageId"))
    code = (headers.get("x-amzn-errortype") or "").split(":", 1)[0] or _xml(body, "Code")
    return _rejected(http_status, code, text(doc.get("message")) or text(doc.get("Message")) or _xml(body, "Message"))


def mailgun(http_status: int, headers: Mapping[str, str], body: bytes) -> SendOutcome:
    """{"id":"<...@domain>","message":"Queued. Thank you."}; the id without brackets is the webhook's."""
    doc = obj(decode_json(body))
    if _ok(http_status):
        return SendOutcome(True, (text(doc.get("id")) or "").strip().strip("<>") or None)
    return _rejected(http_status, reason=doc.get("message"))


def zalo(http_status: int, headers: Mapping[str, str], body: bytes) -> SendOutcome:
    """OA {"error":0,"data":{"message_id"}} or ZNS {"error":0,"data":{"msg_id"}}; error != 0 behind 200."""
    doc = obj(decode_json(body))
    code = integer(doc.get("error"))
    if not _ok(http_status):
        return _rejected(http_status, code, doc.get("message"))
    if code is None:
        return _invalid(http_status)
    if code != 0:
        return _rejected(http_status, str(code), doc.get("message"))
    data = obj(doc.get("data"))
    return SendOutcome(True, text(data.get("message_id")) or text(data.get("msg_id")))


def messenger(http_status: int, headers: Mapping[str, str], body: bytes) -> SendOutcome:
    """{"recipient_id","message_id"}; or {"error":{"code","error_subcode","message"}}."""
    doc = obj(decode_json(body))
    mid = text(doc.get("message_id"))
    if _ok(http_status) and mid:
        return SendOutcome(True, mid)
    error = obj(doc.get("error"))
    code, subcode = text(error.get("code")), text(error.get("error_subcode"))
    if code is None:
        return _invalid(http_status) if _ok(http_status) else _rejected(http_status)
    return _rejected(http_status, f"{code}/{subcode}" if subcode else code, error.get("message"))


def esms(http_status: int, headers: Mapping[str, str], body: bytes) -> SendOutcome:
    """CodeResult "100" accepted with SMSID; other codes are rejections behind HTTP 200."""
    doc = obj(decode_json(body))
    code, sms_id = text(doc.get("CodeResult")), text(doc.get("SMSID"))
    if not _ok(http_status):
        return _rejected(http_status, reason=doc.get("ErrorMessage"))
    if code is None:
        return _invalid(http_status)
    # 124 = duplicate RequestId: a replay of a send eSMS already accepted (reference §4a).
    if code in ("100", "124"):
        return SendOutcome(True, sms_id)
    # 146 (wrong customer-care template) still returns an SMSID: keep it for the mapping.
    return _rejected(http_status, code, doc.get("ErrorMessage"), pmid=sms_id)


def twilio(http_status: int, headers: Mapping[str, str], body: bytes) -> SendOutcome:
    """201 {"sid","status"} for Messages (SM...) and Calls (CA...); errors {"code","message"}."""
    doc = obj(decode_json(body))
    if _ok(http_status):
        return SendOutcome(True, text(doc.get("sid")))
    return _rejected(http_status, doc.get("code"), doc.get("message"))


def retell(http_status: int, headers: Mapping[str, str], body: bytes) -> SendOutcome:
    """create-phone-call returns {"call_id", "call_status":"registered", ...}."""
    doc = obj(decode_json(body))
    if _ok(http_status):
        return SendOutcome(True, text(doc.get("call_id")))
    return _rejected(http_status, reason=doc.get("message") or doc.get("error_message"))


def _xml(body: bytes, tag: str) -> str | None:
    match = re.search(_XML_TAG.format(tag).encode(), body)
    if match is None:
        return None
    return match.group(1).decode("utf-8", "replace").strip() or None


READERS: dict[str, Callable[[int, Mapping[str, str], bytes], SendOutcome]] = {
    "sendgrid": sendgrid,
    "ses": ses,
    "mailgun": mailgun,
    "zalo": zalo,
    "messenger": messenger,
    "esms": esms,
    "twilio": twilio,
    "retell": retell,
}

"""Facebook Messenger Platform webhooks: delivery/read watermarks, postback and quick-reply clicks."""

from __future__ import annotations

from typing import Any

from sendtrack.providers import checks
from sendtrack.providers.base import ParseResult, ProviderSecrets, RawWebhook, Verdict, accept, refuse
from sendtrack.providers.canonical import callback, clean, epoch_to_ms, event_hash, message_id
from sendtrack.providers.payload import decode_json, items, obj, text, utf8

NAME = "messenger"
SIGNATURE_HEADER = "x-hub-signature-256"
_ENVELOPE_KEYS = frozenset({"sender", "recipient", "timestamp"})


def verify(raw: RawWebhook, secrets: ProviderSecrets, now_ms: int,
           max_body_bytes: int = 1_000_000, window_seconds: int = 300) -> Verdict:
    """POST: X-Hub-Signature-256 = sha256=<hex HMAC-SHA256(app secret, raw body)>. GET: the setup handshake."""
    if raw.method.upper() == "GET":
        return _handshake(raw, secrets, max_body_bytes)
    refused = checks.precheck(raw, max_body_bytes, secrets.messenger_app_secret)
    if refused:
        return refused
    # Only the SHA-256 header is accepted; the legacy SHA-1 X-Hub-Signature is not.
    header = raw.headers.get(SIGNATURE_HEADER, "").strip()
    if not header:
        return checks.MISSING
    expected = "sha256=" + checks.hmac_hex(secrets.messenger_app_secret.strip(), raw.body)
    if not checks.same(expected, header.lower()):
        return checks.BAD
    return accept()


def _handshake(raw: RawWebhook, secrets: ProviderSecrets, max_body_bytes: int) -> Verdict:
    """Echo hub.challenge when hub.verify_token is ours (subscription setup)."""
    refused = checks.precheck(raw, max_body_bytes, secrets.messenger_verify_token)
    if refused:
        return refused
    token = raw.query.get("hub.verify_token")
    challenge = raw.query.get("hub.challenge")
    if raw.query.get("hub.mode") != "subscribe" or not challenge:
        return refuse(400, "not a subscription handshake")
    if not token:
        return refuse(401, "missing verify token")
    if not checks.same(secrets.messenger_verify_token.strip(), token):
        return refuse(403, "bad verify token")
    return accept("verification handshake", response_body=utf8(clean(challenge)), content_type="text/plain")


def parse(raw: RawWebhook) -> ParseResult:
    """Every entry[].messaging[] item: receipts become watermarks (plus callbacks for listed mids)."""
    result = ParseResult()
    if raw.method.upper() == "GET":
        result.ignored.append("verification")
        return result
    doc = decode_json(raw.body)
    if not isinstance(doc, dict) or doc.get("object") != "page":
        return result.invalid("messenger body is not a page webhook object")
    for entry in items(doc.get("entry")):
        page_id = text(obj(entry).get("id"))
        for item in items(obj(entry).get("messaging")):
            if isinstance(item, dict):
                _add_item(result, page_id, item)
            else:
                result.invalid("messenger messaging item is not an object")
    return result


def _add_item(result: ParseResult, page_id: str | None, item: dict[str, Any]) -> None:
    timestamp = epoch_to_ms(item.get("timestamp"))
    if "delivery" in item:
        _receipt(result, page_id, item, obj(item["delivery"]), "delivered", timestamp)
    elif "read" in item:
        _receipt(result, page_id, item, obj(item["read"]), "opened", timestamp)
    elif "postback" in item:
        _click(result, "postback", obj(item["postback"]).get("payload"), timestamp)
    elif "message" in item:
        _message(result, obj(item["message"]), timestamp)
    else:
        kind = next((k for k in item if k not in _ENVELOPE_KEYS), "empty")
        result.ignored.append(str(kind)[:64])


def _receipt(result: ParseResult, page_id: str | None, item: dict[str, Any], receipt: dict[str, Any],
             status: str, timestamp: int | None) -> None:
    """A watermark: every message sent to the user up to it reached this status (reference §3)."""
    psid = text(obj(item.get("sender")).get("id"))
    page = text(obj(item.get("recipient")).get("id")) or page_id
    watermark = epoch_to_ms(receipt.get("watermark"))
    if psid is None or page is None or watermark is None:
        result.invalid(f"messenger {status} receipt lacks sender, page or watermark")
        return
    occurred_at = timestamp or watermark
    result.watermarks.append({
        "provider": NAME,
        "page_id": clean(page),
        "recipient": clean(psid),
        "status": status,
        "watermark": watermark,
        "event_id": event_hash(NAME, page, psid, status, str(watermark)),
        "occurred_at": occurred_at,
    })
    for mid in dict.fromkeys(text(m) for m in items(receipt.get("mids"))):
        if mid:
            result.callbacks.append(callback(NAME, status, occurred_at, provider_message_id=mid))


def _message(result: ParseResult, message: dict[str, Any], timestamp: int | None) -> None:
    if message.get("is_echo"):
        result.ignored.append("message_echo")
    elif "quick_reply" in message:
        _click(result, "quick_reply", obj(message["quick_reply"]).get("payload"), timestamp)
    else:
        result.ignored.append("message")


def _click(result: ParseResult, kind: str, payload: Any, timestamp: int | None) -> None:
    """A button or quick-reply tap, linked to our send by {"message_id": ...} in its payload."""
    own_id = payload_message_id(payload)
    if own_id is None or timestamp is None:
        result.ignored.append(f"{kind}_uncorrelated")
        return
    # No provider_message_id: the postback mid names the user's tap, not our message.
    result.callbacks.append(callback(NAME, "clicked", timestamp, message_id=own_id))


def payload_message_id(payload: Any) -> str | None:
    """Our message id from a button payload written as a JSON object with a message_id key."""
    if not isinstance(payload, str) or not payload.startswith("{"):
        return None
    return message_id(obj(decode_json(payload)).get("message_id"))

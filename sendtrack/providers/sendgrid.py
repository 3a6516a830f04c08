"""SendGrid Event Webhook: ECDSA-signed JSON arrays of email events."""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from sendtrack.providers import checks
from sendtrack.providers.base import ParseResult, ProviderSecrets, RawWebhook, Verdict, accept, refuse
from sendtrack.providers.canonical import callback, epoch_to_ms, message_id
from sendtrack.providers.payload import NOT_JSON, decode_json, flag, text, utf8

NAME = "sendgrid"
SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"

_STATUS = {
    "processed": "processing",
    "deferred": "processing",
    "delivered": "delivered",
    "dropped": "failed",
    "bounce": "bounced",
    "open": "opened",
    "click": "clicked",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}
_IGNORED = frozenset({"group_resubscribe"})


def verify(raw: RawWebhook, secrets: ProviderSecrets, now_ms: int,
           max_body_bytes: int = 1_000_000, window_seconds: int = 300) -> Verdict:
    """ECDSA P-256/SHA-256 over timestamp header + raw body, with the configured public key."""
    refused = checks.precheck(raw, max_body_bytes, secrets.sendgrid_public_key)
    if refused:
        return refused
    key = _public_key(secrets.sendgrid_public_key.strip())
    if key is None:
        return refuse(403, "not configured: unreadable public key")
    signature = raw.headers.get(SIGNATURE_HEADER)
    timestamp = raw.headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        return checks.MISSING
    if not checks.within_window(epoch_to_ms(timestamp), now_ms, window_seconds):
        return checks.STALE
    try:
        key.verify(base64.b64decode(signature, validate=True), utf8(timestamp) + raw.body,
                   ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return checks.BAD
    return accept()


@lru_cache(maxsize=4)
def _public_key(configured: str) -> ec.EllipticCurvePublicKey | None:
    """The key from PEM or from base64 DER (as the SendGrid settings page shows it)."""
    try:
        if configured.startswith("-----BEGIN"):
            key = load_pem_public_key(configured.encode())
        else:
            key = load_der_public_key(base64.b64decode(configured, validate=True))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def parse(raw: RawWebhook) -> ParseResult:
    """One canonical callback per event of the JSON array."""
    result = ParseResult()
    events = decode_json(raw.body)
    if events is NOT_JSON or not isinstance(events, list):
        return result.invalid("sendgrid body is not a JSON array")
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            result.invalid(f"sendgrid event #{index} is not an object")
            continue
        _add_event(result, event, index, raw.received_at)
    return result


def _add_event(result: ParseResult, event: dict[str, Any], index: int, received_at: int) -> None:
    name = text(event.get("event")) or ""
    if name in _IGNORED:
        result.ignored.append(name)
        return
    status = _STATUS.get(name)
    if status is None:
        result.unknown(NAME, name)
        return
    sg_message_id = text(event.get("sg_message_id"))
    # X-Message-Id (send response) = sg_message_id before its first '.' (reference §5a).
    provider_message_id = sg_message_id.split(".", 1)[0] if sg_message_id else None
    own_id = message_id(event.get("message_id"))  # custom_args / unique_args
    if not provider_message_id and own_id is None:
        result.invalid(f"sendgrid event #{index} has neither sg_message_id nor message_id")
        return
    result.callbacks.append(callback(
        NAME, status, epoch_to_ms(event.get("timestamp")) or received_at,
        provider_message_id=provider_message_id or None,
        message_id=own_id,
        event_id=text(event.get("sg_event_id")),
        **_attributes(name, event),
    ))


def _attributes(name: str, event: dict[str, Any]) -> dict[str, Any]:
    if name == "deferred":
        return {"reason": text(event.get("response"))}
    if name == "dropped":
        return {"reason_code": "dropped", "reason": text(event.get("reason"))}
    if name == "bounce":
        # type=bounce is a permanent failure, type=blocked a temporary rejection (reference §5a).
        soft = event.get("type") == "blocked"
        return {
            "bounce_type": "soft" if soft else "hard",
            "reason_code": text(event.get("bounce_classification")) or text(event.get("status")),
            "reason": text(event.get("reason")),
        }
    if name == "open":
        return {"is_machine": flag(event.get("sg_machine_open"))}
    if name == "click":
        return {"url": text(event.get("url"))}
    return {}

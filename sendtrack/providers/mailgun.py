"""Mailgun webhooks: one JSON event per POST, HMAC signature inside the body."""

from __future__ import annotations

from typing import Any

from sendtrack.providers import checks
from sendtrack.providers.base import ParseResult, ProviderSecrets, RawWebhook, Verdict, accept
from sendtrack.providers.canonical import callback, epoch_to_ms, message_id
from sendtrack.providers.payload import decode_json, obj, text, utf8
from sendtrack.providers.replay import Nonce

NAME = "mailgun"
_STATUS = {
    "accepted": "processing",
    "rejected": "failed",
    "delivered": "delivered",
    "failed": "failed",  # refined by severity and reason in _failure
    "opened": "opened",
    "clicked": "clicked",
    "unsubscribed": "unsubscribed",
    "complained": "complained",
}
_IGNORED = frozenset({"stored"})


def verify(raw: RawWebhook, secrets: ProviderSecrets, now_ms: int,
           max_body_bytes: int = 1_000_000, window_seconds: int = 300) -> Verdict:
    """Hex HMAC-SHA256(signing key, timestamp + token) against signature.signature, inside the window;
    the accepted verdict carries the token as a nonce (replays are refused by whoever remembers it)."""
    refused = checks.precheck(raw, max_body_bytes, secrets.mailgun_signing_key)
    if refused:
        return refused
    doc = decode_json(raw.body)
    if not isinstance(doc, dict):
        return checks.UNPARSEABLE
    signed = obj(doc.get("signature"))
    timestamp, token, signature = (text(signed.get(k)) for k in ("timestamp", "token", "signature"))
    if not (timestamp and token and signature):
        return checks.MISSING
    timestamp_ms = epoch_to_ms(timestamp)
    if timestamp_ms is None or not checks.within_window(timestamp_ms, now_ms, window_seconds):
        return checks.STALE
    expected = checks.hmac_hex(secrets.mailgun_signing_key.strip(), utf8(timestamp + token))
    if not checks.same(expected, signature.lower()):
        return checks.BAD
    # The signature does not cover the body: the token must be single-use (the ingress remembers it).
    return accept(nonce=_nonce(token, timestamp_ms, window_seconds))


def nonce(raw: RawWebhook, window_seconds: int = 300) -> Nonce | None:
    """The token of an accepted request's signature block (for a second memory after the ingress)."""
    signed = obj(obj(decode_json(raw.body)).get("signature"))
    token, timestamp_ms = text(signed.get("token")), epoch_to_ms(text(signed.get("timestamp")))
    if not token or timestamp_ms is None:
        return None
    return _nonce(token, timestamp_ms, window_seconds)


def _nonce(token: str, timestamp_ms: int, window_seconds: int) -> Nonce:
    # Live until the signed timestamp leaves the window: from then on the timestamp alone refuses it.
    return Nonce(f"{NAME}:{token}", timestamp_ms + window_seconds * 1000)


def parse(raw: RawWebhook) -> ParseResult:
    """One canonical callback for the event-data of the body."""
    result = ParseResult()
    data = obj(decode_json(raw.body)).get("event-data")
    if not isinstance(data, dict):
        return result.invalid("mailgun body has no event-data object")
    name = text(data.get("event")) or ""
    if name in _IGNORED:
        result.ignored.append(name)
        return result
    if name not in _STATUS:
        result.unknown(NAME, name)
        return result
    provider_message_id = _message_header_id(data)
    own_id = message_id(obj(data.get("user-variables")).get("message_id"))
    if provider_message_id is None and own_id is None:
        return result.invalid("mailgun event has neither a message-id header nor a message_id variable")
    status, attributes = _mapping(name, data)
    result.callbacks.append(callback(
        NAME, status, epoch_to_ms(data.get("timestamp")) or raw.received_at,
        provider_message_id=provider_message_id,
        message_id=own_id,
        event_id=text(data.get("id")),
        **attributes,
    ))
    return result


def _message_header_id(data: dict[str, Any]) -> str | None:
    """The Message-Id header without angle brackets, as the send API's `id` once stripped."""
    header = text(obj(obj(data.get("message")).get("headers")).get("message-id")) or ""
    return header.strip().strip("<>") or None


def _mapping(name: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if name == "failed":
        return _failure(data)
    if name == "rejected":
        reject = obj(data.get("reject"))
        return "failed", {"reason_code": "rejected",
                          "reason": text(reject.get("reason")) or text(reject.get("description"))}
    if name in ("opened", "clicked"):
        return _STATUS[name], {"url": text(data.get("url")), "is_machine": _bot(data)}
    return _STATUS[name], {}


def _failure(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Temporary = soft bounce Mailgun retries; permanent = hard bounce, or failed for suppressions."""
    reason = text(data.get("reason"))
    status = obj(data.get("delivery-status"))
    attributes = {
        "reason_code": reason or text(status.get("code")),
        "reason": text(status.get("description")) or text(status.get("message")),
    }
    if data.get("severity") == "temporary":
        return "processing", {**attributes, "bounce_type": "soft"}
    if reason and reason.startswith("suppress-"):
        return "failed", attributes
    # reason 'old' = retry limit reached after temporary failures: not a proven bad address.
    return "bounced", {**attributes, "bounce_type": "soft" if reason == "old" else "hard"}


def _bot(data: dict[str, Any]) -> bool | None:
    """client-info.bot is 'apple' | 'gmail' | 'generic' for machine opens/clicks, '' for people."""
    client = obj(data.get("client-info"))
    if "bot" not in client:
        return None
    return bool(client["bot"])

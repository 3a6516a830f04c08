"""Zalo OA events and ZNS delivery receipts: one webhook, X-ZEvent-Signature = sha256 mac."""

from __future__ import annotations

import hashlib
from typing import Any

from sendtrack.providers import checks
from sendtrack.providers.base import AdapterError, ParseResult, ProviderSecrets, RawWebhook, Verdict, accept
from sendtrack.providers.canonical import callback, epoch_to_ms, message_id
from sendtrack.providers.payload import decode_json, integer, items, obj, text, utf8

NAME = "zalo"
SIGNATURE_HEADER = "x-zevent-signature"
TIMESTAMP_HEADER = "x-zevent-timestamp"
# Recognised, not tracked: echoes of our own sends (sent is reached at request time), inbound
# messages and user-level events that name no message of ours (reference §1).
_IGNORED_PREFIXES = ("oa_send_", "user_send_")
# Zalo resends an event that was not answered 200 within 2 s, body and signed timestamp (the event's
# time) unchanged. Accounts of how long disagree: "30 s, 5 m, 15 m, 30 m, 1 h" or "for 12 hours,
# then the webhook is disabled" (reference §1, third-party; hainh.me). The longer one is the horizon:
# the mac covers the whole body, so a replay inside it repeats msg_id, status and time, and dedup by
# event id drops it.
REDELIVERY_SECONDS = 12 * 3600


def signing_key(secrets: ProviderSecrets) -> str | None:
    """The OA Secret Key signs webhooks (not the App Secret); the App Secret setting is a fallback."""
    if checks.configured(secrets.zalo_oa_secret_key):
        return secrets.zalo_oa_secret_key
    return secrets.zalo_app_secret


def verify(raw: RawWebhook, secrets: ProviderSecrets, now_ms: int,
           max_body_bytes: int = 1_000_000, window_seconds: int = 300) -> Verdict:
    """mac = hex sha256(app_id + raw body + timestamp + OA secret key); the timestamp (ms) at most the
    window ahead and the window + 12 h behind (Zalo's retries keep it)."""
    key = signing_key(secrets)
    refused = checks.precheck(raw, max_body_bytes, key)
    if refused:
        return refused
    header = raw.headers.get(SIGNATURE_HEADER, "").strip()
    if not header:
        return checks.MISSING
    doc = decode_json(raw.body)
    app_id = text(obj(doc).get("app_id"))
    if not app_id:
        return checks.UNPARSEABLE
    given = header[4:] if header[:4].lower() == "mac=" else header
    # Zalo signs the body's timestamp; some integrations send it as a header instead: accept either.
    for timestamp in _timestamps(doc, raw.headers):
        expected = hashlib.sha256(utf8(app_id) + raw.body + utf8(timestamp) + utf8(key.strip())).hexdigest()
        if checks.same(expected, given.lower()):
            if not checks.within_window(epoch_to_ms(timestamp), now_ms, window_seconds, REDELIVERY_SECONDS):
                return checks.STALE
            return accept()
    return checks.BAD


def _timestamps(doc: Any, headers: dict[str, str]) -> list[str]:
    candidates = [text(obj(doc).get("timestamp")), headers.get(TIMESTAMP_HEADER)]
    return list(dict.fromkeys(c for c in candidates if c))


def parse(raw: RawWebhook) -> ParseResult:
    """delivered for user_received_message (OA and ZNS), opened for each id of user_seen_message."""
    result = ParseResult()
    doc = decode_json(raw.body)
    if not isinstance(doc, dict):
        return result.invalid("zalo body is not a JSON object")
    name = text(doc.get("event_name"))
    if name is None:
        return _without_event(result, doc)
    timestamp = epoch_to_ms(doc.get("timestamp")) or raw.received_at
    message = obj(doc.get("message"))
    if name == "user_received_message":
        _received(result, message, timestamp)
    elif name == "user_seen_message":
        _seen(result, message, timestamp)
    else:
        # Zalo has many event families (OA, shop, ZNS template/quota): all are counted, none is tracked.
        result.ignored.append(_ignored_label(name))
    return result


def _without_event(result: ParseResult, doc: dict[str, Any]) -> ParseResult:
    """A Zalo error envelope (error != 0 behind HTTP 200) instead of an event."""
    code = integer(doc.get("error"))
    if code:
        detail = (text(doc.get("message")) or "")[:200]
        result.errors.append(AdapterError("provider_error", f"zalo error {code}: {detail}"))
        return result
    return result.invalid("zalo body has no event_name")


def _ignored_label(name: str) -> str:
    for prefix in _IGNORED_PREFIXES:
        if name.startswith(prefix):
            return prefix + "*"
    return name[:64]


def _received(result: ParseResult, message: dict[str, Any], timestamp: int) -> None:
    msg_id = text(message.get("msg_id"))
    if msg_id is None:
        result.invalid("zalo user_received_message has no message.msg_id")
        return
    # ZNS receipts carry delivery_time (ms) and our tracking_id; OA receipts carry neither (reference §2).
    result.callbacks.append(callback(
        NAME, "delivered", epoch_to_ms(message.get("delivery_time")) or timestamp,
        provider_message_id=msg_id,
        message_id=message_id(message.get("tracking_id")),
    ))


def _seen(result: ParseResult, message: dict[str, Any], timestamp: int) -> None:
    ids = [text(i) for i in items(message.get("msg_ids"))] or [text(message.get("msg_id"))]
    ids = [i for i in dict.fromkeys(ids) if i]
    if not ids:
        result.invalid("zalo user_seen_message has no message.msg_ids")
    for msg_id in ids:
        result.callbacks.append(callback(NAME, "opened", timestamp, provider_message_id=msg_id))

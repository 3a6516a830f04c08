"""Retell AI call webhooks: X-Retell-Signature = v=<ms>,d=<hex HMAC-SHA256(API key, body + ms)>."""

from __future__ import annotations

import re
from typing import Any

from sendtrack.providers import checks
from sendtrack.providers.base import ParseResult, ProviderSecrets, RawWebhook, Verdict, accept
from sendtrack.providers.canonical import callback, epoch_to_ms, event_hash, message_id
from sendtrack.providers.payload import decode_json, obj, text, utf8

NAME = "retell"
SIGNATURE_HEADER = "x-retell-signature"
_SIGNATURE = re.compile(r"v=([0-9]{1,16}),d=([0-9a-fA-F]{1,128})")
_IGNORED = frozenset({"call_analyzed", "transcript_updated", "transfer_started", "transfer_bridged",
                      "transfer_cancelled", "transfer_ended"})
_MACHINE_REASONS = frozenset({"voicemail_reached", "ivr_reached"})


def verify(raw: RawWebhook, secrets: ProviderSecrets, now_ms: int,
           max_body_bytes: int = 1_000_000, window_seconds: int = 300) -> Verdict:
    """HMAC-SHA256 of raw body + timestamp under the webhook API key; timestamp (ms) inside the window."""
    refused = checks.precheck(raw, max_body_bytes, secrets.retell_api_key)
    if refused:
        return refused
    header = raw.headers.get(SIGNATURE_HEADER, "").strip()
    if not header:
        return checks.MISSING
    match = _SIGNATURE.fullmatch(header)
    if match is None:
        return checks.BAD
    timestamp, digest = match.groups()
    if not checks.within_window(epoch_to_ms(timestamp), now_ms, window_seconds):
        return checks.STALE
    expected = checks.hmac_hex(secrets.retell_api_key.strip(), raw.body + utf8(timestamp))
    if not checks.same(expected, digest.lower()):
        return checks.BAD
    return accept()


def parse(raw: RawWebhook) -> ParseResult:
    """call_started -> answered; call_ended -> answered or failed; enrichment events are counted only."""
    result = ParseResult()
    doc = decode_json(raw.body)
    if not isinstance(doc, dict):
        return result.invalid("retell body is not a JSON object")
    name = text(doc.get("event")) or ""
    if name in _IGNORED:
        result.ignored.append(name)
        return result
    if name not in ("call_started", "call_ended"):
        result.unknown(NAME, name)
        return result
    call = obj(doc.get("call"))
    call_id = text(call.get("call_id"))
    if call_id is None:
        return result.invalid(f"retell {name} has no call.call_id")
    outcome = _started(call) if name == "call_started" else _ended(call)
    if outcome is None:
        result.unknown(NAME, f"call_ended/{text(call.get('call_status')) or ''}")
        return result
    status, occurred_at, attributes = outcome
    result.callbacks.append(callback(
        NAME, status, occurred_at or raw.received_at,
        provider_message_id=call_id,
        message_id=message_id(obj(call.get("metadata")).get("message_id")),
        event_id=event_hash(NAME, call_id, status, name),  # retries resend (call_id, event)
        **attributes,
    ))
    return result


def _started(call: dict[str, Any]) -> tuple[str, int | None, dict[str, Any]]:
    # call_started is only sent once the call connected (reference §6b).
    return "answered", epoch_to_ms(call.get("start_timestamp")), {}


def _ended(call: dict[str, Any]) -> tuple[str, int | None, dict[str, Any]] | None:
    call_status = text(call.get("call_status"))
    reason = text(call.get("disconnection_reason"))
    at = epoch_to_ms(call.get("end_timestamp")) or epoch_to_ms(call.get("start_timestamp"))
    if call_status == "ended":
        # ai_call has no 'succeeded' (CONTRACT §1): a connected call that ended is answered.
        machine = True if reason in _MACHINE_REASONS else None
        return "answered", at, {"is_machine": machine}
    if call_status in ("not_connected", "error"):
        return "failed", at, {"reason_code": reason or call_status, "reason": f"call {call_status}"}
    return None

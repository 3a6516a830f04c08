"""Twilio SMS and Voice status callbacks: form POSTs signed with HMAC-SHA1 over URL + sorted params."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit, urlunsplit

from sendtrack.providers import checks
from sendtrack.providers.base import ParseResult, ProviderSecrets, RawWebhook, Verdict, accept, refuse
from sendtrack.providers.canonical import callback, event_hash, rfc2822_to_ms
from sendtrack.providers.payload import decode_form, integer, utf8

NAME = "twilio"
SIGNATURE_HEADER = "x-twilio-signature"
NO_PUBLIC_URL = refuse(403, "not configured: no public URL")

_SMS_STATUS = {
    "accepted": "processing",
    "scheduled": "processing",
    "queued": "processing",
    "sending": "processing",
    "sent": "sent",
    "delivered": "delivered",
    "partially_delivered": "delivered",
    "read": "opened",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}
_SMS_ERRORS = {
    "30003": "unreachable destination handset",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "carrier filtering",
}
_CALL_FAILURES = {"busy": "line busy", "no-answer": "no answer", "failed": "call failed",
                  "canceled": "call canceled"}
# ai_call has no 'processing' (CONTRACT §1): queued/initiated are counted, not tracked.
_CALL_IGNORED = frozenset({"queued", "initiated"})


def verify(raw: RawWebhook, secrets: ProviderSecrets, now_ms: int,
           max_body_bytes: int = 1_000_000, window_seconds: int = 300) -> Verdict:
    """X-Twilio-Signature = base64 HMAC-SHA1(auth token, URL + name+value of each POST param sorted)."""
    refused = checks.precheck(raw, max_body_bytes, secrets.twilio_auth_token)
    if refused:
        return refused
    # Twilio signs the URL it called. The ingress sets raw.url from SENDTRACK_WEBHOOK_PUBLIC_URL only
    # (a Host header would let a request signed for another host, e.g. staging, through): none, no check.
    if not raw.url:
        return NO_PUBLIC_URL
    signature = raw.headers.get(SIGNATURE_HEADER, "").strip()
    if not signature:
        return checks.MISSING
    form = decode_form(raw.body) if raw.method.upper() == "POST" else {}
    if form is None:
        return checks.UNPARSEABLE
    token = secrets.twilio_auth_token.strip()
    # Like Twilio's own validators, accept the URL with and without its default port.
    if any(checks.same(_signature(token, url, form), signature) for url in _url_variants(raw.url)):
        return accept()
    return checks.BAD


def _signature(token: str, url: str, form: dict[str, list[str]]) -> str:
    signed = url + "".join(name + value for name in sorted(form) for value in sorted(set(form[name])))
    return base64.b64encode(hmac.new(utf8(token), utf8(signed), hashlib.sha1).digest()).decode()


def _url_variants(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        return [url] if url else []
    if not url or not host or parts.scheme not in ("http", "https"):
        return [url] if url else []
    default = 443 if parts.scheme == "https" else 80
    credentials = parts.netloc.rpartition("@")[0]
    prefix = credentials + "@" if credentials else ""
    bare_host = f"[{host}]" if ":" in host else host
    without = urlunsplit(parts._replace(netloc=prefix + bare_host))
    with_port = urlunsplit(parts._replace(netloc=f"{prefix}{bare_host}:{port or default}"))
    return list(dict.fromkeys([url, without, with_port]))


def parse(raw: RawWebhook) -> ParseResult:
    """An SMS (MessageSid/MessageStatus) or Voice (CallSid/CallStatus) status callback."""
    result = ParseResult()
    form = decode_form(raw.body) if raw.method.upper() == "POST" else None
    params = {name: values[0] for name, values in (form or {}).items()} or dict(raw.query)
    if params.get("MessageSid") or params.get("SmsSid"):
        _sms(result, params, raw.received_at)
    elif params.get("CallSid"):
        _call(result, params, raw.received_at)
    else:
        result.invalid("twilio callback has neither MessageSid nor CallSid")
    return result


def _sms(result: ParseResult, params: dict[str, str], received_at: int) -> None:
    sid = params.get("MessageSid") or params["SmsSid"]
    raw_status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    status = _SMS_STATUS.get(raw_status)
    if status is None:
        result.unknown(NAME, f"MessageStatus={raw_status}")
        return
    code = params.get("ErrorCode") or None
    attributes = {}
    if status == "failed":
        detail = f"{raw_status} (error {code})" if code else raw_status
        attributes = {"reason_code": code or raw_status, "reason": _SMS_ERRORS.get(code or "", detail)}
    # SMS callbacks carry no event time: use the receipt time, and keep it out of the event id.
    result.callbacks.append(callback(
        NAME, status, received_at, provider_message_id=sid,
        event_id=event_hash(NAME, sid, status, raw_status), **attributes,
    ))


def _call(result: ParseResult, params: dict[str, str], received_at: int) -> None:
    sid = params["CallSid"]
    raw_status = params.get("CallStatus") or ""
    if raw_status in _CALL_IGNORED:
        result.ignored.append(f"call_{raw_status}")
        return
    outcome = _call_outcome(raw_status, params)
    if outcome is None:
        result.unknown(NAME, f"CallStatus={raw_status}")
        return
    status, attributes = outcome
    result.callbacks.append(callback(
        NAME, status, rfc2822_to_ms(params.get("Timestamp")) or received_at,
        provider_message_id=sid,
        event_id=event_hash(NAME, sid, status, raw_status),
        **attributes,
    ))


def _call_outcome(raw_status: str, params: dict[str, str]) -> tuple[str, dict] | None:
    if raw_status == "ringing":
        return "sent", {}
    if raw_status == "in-progress":
        return "answered", {"is_machine": _machine(params)}
    if raw_status == "completed":
        # Twilio: completed = answered and ended normally; a zero duration means nobody was on the line.
        if integer(params.get("CallDuration")) == 0:
            return "failed", {"reason_code": "zero-duration", "reason": "completed with zero duration"}
        return "answered", {"is_machine": _machine(params)}
    if raw_status in _CALL_FAILURES:
        code = params.get("ErrorCode") or None
        return "failed", {"reason_code": raw_status, "reason": _CALL_FAILURES[raw_status]
                          + (f" (error {code})" if code else "")}
    return None


def _machine(params: dict[str, str]) -> bool | None:
    """AnsweredBy from answering-machine detection: machine_* and fax are machines."""
    answered_by = params.get("AnsweredBy")
    if not answered_by or answered_by == "unknown":
        return None
    return answered_by.startswith("machine") or answered_by == "fax"

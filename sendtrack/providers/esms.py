"""eSMS.vn delivery callbacks: an HTTP GET with a query string, authenticated by our URL token."""

from __future__ import annotations

from urllib.parse import unquote

from sendtrack.providers import checks
from sendtrack.providers.base import AdapterError, ParseResult, ProviderSecrets, RawWebhook, Verdict, accept
from sendtrack.providers.canonical import callback, event_hash, message_id
from sendtrack.providers.payload import decode_form, decode_json, integer, obj, text

NAME = "esms"
TOKEN_PARAM = "token"
_PENDING = frozenset({1, 2, 5, 7})  # pending approval, waiting, sent, at the telco (reference §4a)
_REJECTED = 4


def verify(raw: RawWebhook, secrets: ProviderSecrets, now_ms: int,
           max_body_bytes: int = 1_000_000, window_seconds: int = 300) -> Verdict:
    """eSMS signs nothing: the CallbackUrl carries an unguessable ?token= that must match ours."""
    refused = checks.precheck(raw, max_body_bytes, secrets.esms_token)
    if refused:
        return refused
    token = raw.query.get(TOKEN_PARAM)
    if not token:
        return checks.MISSING
    if not checks.same(secrets.esms_token.strip(), token):
        return checks.BAD
    return accept()


def parse(raw: RawWebhook) -> ParseResult:
    """One callback per request, decided from SendSuccess/SendFailed before SendStatus."""
    result = ParseResult()
    params = _params(raw)
    sms_id = params.get("SMSID") or None
    zalo_error = _zalo_error(params.get("error_info"))
    if sms_id is None:
        if zalo_error:
            result.errors.append(AdapterError("provider_error", f"esms callback without SMSID: {zalo_error[1]}"))
            return result
        return result.invalid("esms callback has no SMSID")
    outcome = _outcome(params, zalo_error)
    if outcome is None:
        result.unknown(NAME, f"SendStatus={params.get('SendStatus', '')[:16]}")
        return result
    status, attributes = outcome
    # No event timestamp: the receipt time is the time, and the event id must not depend on it.
    counts = "/".join(params.get(k, "") for k in ("SendStatus", "SendSuccess", "SendFailed"))
    result.callbacks.append(callback(
        NAME, status, raw.received_at,
        provider_message_id=sms_id,
        message_id=message_id(params.get("RequestId")),
        event_id=event_hash(NAME, sms_id, status, counts),
        **attributes,
    ))
    return result


def _params(raw: RawWebhook) -> dict[str, str]:
    params = dict(raw.query)
    if raw.method.upper() == "POST":
        form = decode_form(raw.body) or {}
        params.update({name: values[0] for name, values in form.items()})
    return params


def _outcome(params: dict[str, str], zalo_error: tuple[str, str] | None) -> tuple[str, dict] | None:
    success = integer(params.get("SendSuccess")) or 0
    failed = integer(params.get("SendFailed")) or 0
    send_status = integer(params.get("SendStatus"))
    if success > 0:
        return "delivered", {}
    if zalo_error:
        code, detail = zalo_error
        return "failed", {"reason_code": code, "reason": detail}
    if failed > 0:
        return "failed", {"reason_code": "esms_send_failed", "reason": "eSMS reported SendFailed"}
    if send_status == _REJECTED:
        return "failed", {"reason_code": "esms_rejected", "reason": "eSMS rejected the message"}
    if send_status in _PENDING:
        return "processing", {}
    return None


def _zalo_error(error_info: str | None) -> tuple[str, str] | None:
    """(code, message) of the Zalo error JSON eSMS forwards for ZNS (e.g. -114), if it is an error."""
    if not error_info:
        return None
    doc = decode_json(error_info)
    if not isinstance(doc, dict):
        doc = obj(decode_json(unquote(error_info)))  # sometimes URL-encoded twice
    code = integer(doc.get("error"))
    if not code:
        return None
    return str(code), (text(doc.get("message")) or f"Zalo error {code}")[:200]

"""Twilio SMS and Voice status callbacks: URL+params HMAC-SHA1 signature and status mapping."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from urllib.parse import urlencode

import pytest

from sendtrack.providers import ProviderSecrets, parse, verify

AUTH_TOKEN = "12345678901234567890123456789012"
URL = "https://hooks.shop.example.vn/webhooks/twilio?tenant=7"
NOW_MS = 1_714_529_560_000
SMS_SID = "SM5a3f2c1b0e9d8c7b6a5f4e3d2c1b0a9f"
CALL_SID = "CA9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def twilio_signature(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    signed = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def sms(**params) -> dict[str, str]:
    return {"AccountSid": "AC0123456789abcdef0123456789abcdef", "MessageSid": SMS_SID, "SmsSid": SMS_SID,
            "From": "+15017122661", "To": "+84901234567", "ApiVersion": "2010-04-01", **params}


def call(**params) -> dict[str, str]:
    return {"AccountSid": "AC0123456789abcdef0123456789abcdef", "CallSid": CALL_SID, "Direction": "outbound-api",
            "From": "+15017122661", "To": "+84901234567", "Timestamp": "Wed, 01 May 2024 02:12:35 +0000",
            "SequenceNumber": "0", **params}


def request(make_raw, params: dict[str, str], *, url: str = URL, signature_url: str | None = None,
            received_at: int = NOW_MS):
    headers = {"X-Twilio-Signature": twilio_signature(signature_url or url, params),
               "Content-Type": "application/x-www-form-urlencoded"}
    return make_raw("twilio", urlencode(params).encode(), headers=headers, url=url, received_at=received_at)


@pytest.fixture
def secrets() -> ProviderSecrets:
    return ProviderSecrets(twilio_auth_token=AUTH_TOKEN)


def test_valid_signature(make_raw, secrets):
    assert verify(request(make_raw, sms(MessageStatus="delivered")), secrets, NOW_MS).ok


def test_signature_over_another_url_or_altered_param_is_refused(make_raw, secrets):
    other_url = request(make_raw, sms(MessageStatus="delivered"), signature_url="https://evil.example/x")
    assert verify(other_url, secrets, NOW_MS).status == 403
    raw = request(make_raw, sms(MessageStatus="delivered"))
    tampered = make_raw("twilio", raw.body.replace(b"delivered", b"failed"), headers=raw.headers, url=URL)
    assert verify(tampered, secrets, NOW_MS).status == 403


def test_url_with_default_port_variant_is_accepted(make_raw, secrets):
    signed_with_port = "https://hooks.shop.example.vn:443/webhooks/twilio?tenant=7"
    raw = request(make_raw, sms(MessageStatus="sent"), signature_url=signed_with_port)
    assert verify(raw, secrets, NOW_MS).ok


def test_without_a_public_url_every_request_is_refused(make_raw, secrets):
    # The ingress leaves raw.url empty unless SENDTRACK_WEBHOOK_PUBLIC_URL is set (never the Host header).
    raw = dataclasses.replace(request(make_raw, sms(MessageStatus="delivered")), url="")
    verdict = verify(raw, secrets, NOW_MS)
    assert (verdict.ok, verdict.status, verdict.reason) == (False, 403, "not configured: no public URL")


def test_missing_signature_is_401(make_raw, secrets):
    assert verify(make_raw("twilio", b"MessageSid=SM1", url=URL), secrets, NOW_MS).status == 401


@pytest.mark.parametrize("twilio_status, status", [
    ("accepted", "processing"), ("queued", "processing"), ("sending", "processing"), ("sent", "sent"),
    ("delivered", "delivered"), ("read", "opened"), ("undelivered", "failed"), ("failed", "failed"),
    ("canceled", "failed"),
])
def test_sms_statuses(make_raw, check_canonical, twilio_status, status):
    record = parse(request(make_raw, sms(MessageStatus=twilio_status, SmsStatus=twilio_status))).callbacks[0]
    check_canonical(record)
    assert (record["status"], record["provider_message_id"], record["occurred_at"]) == (status, SMS_SID, NOW_MS)


def test_sms_error_code_becomes_the_reason(make_raw):
    record = parse(request(make_raw, sms(MessageStatus="undelivered", ErrorCode="30007"))).callbacks[0]
    assert (record["reason_code"], record["reason"]) == ("30007", "carrier filtering")


def test_sms_retry_same_event_id_despite_no_timestamp(make_raw):
    first = parse(request(make_raw, sms(MessageStatus="delivered"), received_at=NOW_MS)).callbacks[0]
    again = parse(request(make_raw, sms(MessageStatus="delivered"), received_at=NOW_MS + 5_000)).callbacks[0]
    sent = parse(request(make_raw, sms(MessageStatus="sent"))).callbacks[0]
    assert first["event_id"] == again["event_id"] != sent["event_id"]


@pytest.mark.parametrize("params, status, extra", [
    ({"CallStatus": "ringing"}, "sent", {}),
    ({"CallStatus": "in-progress", "AnsweredBy": "human"}, "answered", {"is_machine": False}),
    ({"CallStatus": "in-progress", "AnsweredBy": "machine_end_beep"}, "answered", {"is_machine": True}),
    ({"CallStatus": "completed", "CallDuration": "42"}, "answered", {}),
    ({"CallStatus": "completed", "CallDuration": "0"}, "failed", {"reason_code": "zero-duration"}),
    ({"CallStatus": "busy", "CallDuration": "0"}, "failed", {"reason_code": "busy", "reason": "line busy"}),
    ({"CallStatus": "no-answer"}, "failed", {"reason_code": "no-answer"}),
    ({"CallStatus": "failed", "ErrorCode": "13224"}, "failed",
     {"reason_code": "failed", "reason": "call failed (error 13224)"}),
])
def test_voice_statuses(make_raw, check_canonical, params, status, extra):
    record = parse(request(make_raw, call(**params))).callbacks[0]
    check_canonical(record)
    assert record["status"] == status and record["occurred_at"] == 1_714_529_555_000  # RFC-2822 Timestamp
    assert {k: record.get(k) for k in extra} == extra


def test_voice_queued_and_initiated_are_not_tracked(make_raw):
    for call_status in ("queued", "initiated"):
        result = parse(request(make_raw, call(CallStatus=call_status)))
        assert (result.callbacks, result.ignored) == ([], [f"call_{call_status}"])


def test_unknown_status_and_unrelated_body(make_raw):
    assert parse(request(make_raw, sms(MessageStatus="teleported"))).errors[0].error_type == "unknown_event"
    assert parse(make_raw("twilio", b"Foo=bar")).errors[0].error_type == "invalid_webhook"

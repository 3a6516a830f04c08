"""Retell AI call webhooks: v=<ms>,d=<hmac> signature window and the call event mapping."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from sendtrack.providers import ProviderSecrets, parse, verify

API_KEY = "key_2b9f1c0d8e7a6b5c4d3e2f1a"
NOW_MS = 1_714_529_560_000
CALL_ID = "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6"


def body(event: str, **call) -> bytes:
    return json.dumps({"event": event, "call": {
        "call_type": "phone_call", "call_id": CALL_ID, "agent_id": "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD",
        "from_number": "+12137771234", "to_number": "+84901234567", "direction": "outbound",
        "metadata": {"message_id": "msg-call-5", "flow_id": "f-1"},
        "start_timestamp": 1_714_529_400_000, **call,
    }}).encode()


def signed(make_raw, raw_body: bytes, at_ms: int = NOW_MS, key: str = API_KEY, received_at: int = NOW_MS):
    digest = hmac.new(key.encode(), raw_body + str(at_ms).encode(), hashlib.sha256).hexdigest()
    return make_raw("retell", raw_body, headers={"X-Retell-Signature": f"v={at_ms},d={digest}"},
                    received_at=received_at)


@pytest.fixture
def secrets() -> ProviderSecrets:
    return ProviderSecrets(retell_api_key=API_KEY)


ENDED = body("call_ended", call_status="ended", end_timestamp=1_714_529_500_000, duration_ms=100_000,
             disconnection_reason="user_hangup")


def test_signature_window_and_key(make_raw, secrets):
    assert verify(signed(make_raw, ENDED), secrets, NOW_MS).ok
    assert verify(signed(make_raw, ENDED, key="key_other"), secrets, NOW_MS).status == 403
    stale = verify(signed(make_raw, ENDED, at_ms=NOW_MS - 301_000), secrets, NOW_MS)
    assert (stale.status, stale.reason) == (403, "timestamp outside window")
    assert verify(make_raw("retell", ENDED), secrets, NOW_MS).status == 401
    malformed = make_raw("retell", ENDED, headers={"X-Retell-Signature": "sha256=abc"})
    assert verify(malformed, secrets, NOW_MS).status == 403


def test_call_started_and_ended_are_answered(make_raw, check_canonical):
    started = parse(make_raw("retell", body("call_started", call_status="ongoing"))).callbacks[0]
    ended = parse(make_raw("retell", ENDED)).callbacks[0]
    for record in (started, ended):
        check_canonical(record)
        assert (record["status"], record["provider_message_id"], record["message_id"]) == \
            ("answered", CALL_ID, "msg-call-5")
    assert (started["occurred_at"], ended["occurred_at"]) == (1_714_529_400_000, 1_714_529_500_000)
    assert started["event_id"] != ended["event_id"]


def test_voicemail_is_flagged_as_machine(make_raw):
    raw_body = body("call_ended", call_status="ended", end_timestamp=1_714_529_450_000,
                    disconnection_reason="voicemail_reached")
    assert parse(make_raw("retell", raw_body)).callbacks[0]["is_machine"] is True


@pytest.mark.parametrize("call_status, reason", [("not_connected", "dial_no_answer"),
                                                 ("not_connected", "dial_busy"), ("error", "error_llm_websocket_open")])
def test_unconnected_calls_fail_with_the_disconnection_reason(make_raw, check_canonical, call_status, reason):
    raw_body = body("call_ended", call_status=call_status, end_timestamp=1_714_529_410_000,
                    disconnection_reason=reason)
    record = parse(make_raw("retell", raw_body)).callbacks[0]
    check_canonical(record)
    assert (record["status"], record["reason_code"]) == ("failed", reason)


def test_analysis_and_transcripts_are_enrichment_only(make_raw):
    for event in ("call_analyzed", "transcript_updated", "transfer_started"):
        result = parse(make_raw("retell", body(event, call_analysis={"call_successful": True})))
        assert (result.callbacks, result.ignored) == ([], [event])


def test_retries_keep_the_event_id(make_raw):
    first = parse(make_raw("retell", ENDED, received_at=NOW_MS)).callbacks
    again = parse(make_raw("retell", ENDED, received_at=NOW_MS + 10_000)).callbacks
    assert first == again


def test_unknown_event_and_missing_call_id(make_raw):
    assert parse(make_raw("retell", body("call_teleported"))).errors[0].error_type == "unknown_event"
    no_id = json.dumps({"event": "call_ended", "call": {"call_status": "ended"}}).encode()
    assert parse(make_raw("retell", no_id)).errors[0].error_type == "invalid_webhook"

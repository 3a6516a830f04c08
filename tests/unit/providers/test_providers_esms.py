"""eSMS callbacks: URL token, GET query parsing, counts before SendStatus, Zalo errors behind 200."""

from __future__ import annotations

import json

import pytest

from sendtrack.providers import ProviderSecrets, parse, verify

TOKEN = "u8Jd0s-Qm3Lr9ZxT4vWp"
NOW_MS = 1_714_529_560_000


def query(**params) -> dict[str, str]:
    base = {"token": TOKEN, "SMSID": "d533459e-1b2c-4d5e-9f00-aa11bb22cc33", "SendFailed": "0",
            "SendStatus": "5", "SendSuccess": "1", "TotalPrice": "795", "TotalReceiver": "1", "TotalSent": "1",
            "RequestId": "msg-sms-9", "TypeId": "2", "telcoid": "1", "phonenumber": "84901234567"}
    return {**base, **params}


def callback(make_raw, **params):
    return make_raw("esms", method="GET", query=query(**params))


@pytest.fixture
def secrets() -> ProviderSecrets:
    return ProviderSecrets(esms_token=TOKEN)


def test_token_in_the_query_is_the_authentication(make_raw, secrets):
    assert verify(callback(make_raw), secrets, NOW_MS).ok
    assert verify(callback(make_raw, token="guess"), secrets, NOW_MS).status == 403
    no_token = make_raw("esms", method="GET", query={"SMSID": "x"})
    assert verify(no_token, secrets, NOW_MS).status == 401


def test_success_count_means_delivered(make_raw, check_canonical):
    record = parse(callback(make_raw)).callbacks[0]
    check_canonical(record)
    assert (record["status"], record["provider_message_id"], record["message_id"], record["occurred_at"]) == \
        ("delivered", "d533459e-1b2c-4d5e-9f00-aa11bb22cc33", "msg-sms-9", NOW_MS)


@pytest.mark.parametrize("params, status, reason_code", [
    ({"SendStatus": "5", "SendSuccess": "0", "SendFailed": "1"}, "failed", "esms_send_failed"),
    ({"SendStatus": "4", "SendSuccess": "0"}, "failed", "esms_rejected"),
    ({"SendStatus": "2", "SendSuccess": "0"}, "processing", None),
    ({"SendStatus": "7", "SendSuccess": "0"}, "processing", None),
])
def test_outcome_from_counts_then_status(make_raw, params, status, reason_code):
    record = parse(callback(make_raw, **params)).callbacks[0]
    assert (record["status"], record.get("reason_code")) == (status, reason_code)


def test_zns_error_behind_200_fails_with_the_zalo_code(make_raw, check_canonical):
    error_info = json.dumps({"error": -114, "message": "User inactive or rejected"})
    record = parse(callback(make_raw, SendStatus="5", SendSuccess="0", SendFailed="1", partnerids="zmsg-1",
                            error_info=error_info, oaid="579745863508352884", tempid="211")).callbacks[0]
    check_canonical(record)
    assert (record["status"], record["reason_code"], record["reason"]) == \
        ("failed", "-114", "User inactive or rejected")


def test_error_without_smsid_is_a_provider_error(make_raw):
    result = parse(make_raw("esms", method="GET", query={"token": TOKEN,
                                                           "error_info": '{"error":-124,"message":"bad token"}'}))
    assert result.callbacks == [] and result.errors[0].error_type == "provider_error"


def test_retried_callback_gets_the_same_event_id(make_raw):
    first = parse(make_raw("esms", method="GET", query=query(), received_at=NOW_MS)).callbacks[0]
    again = parse(make_raw("esms", method="GET", query=query(), received_at=NOW_MS + 60_000)).callbacks[0]
    assert first["event_id"] == again["event_id"] and first["occurred_at"] != again["occurred_at"]


def test_unknown_status_and_missing_id(make_raw):
    assert parse(callback(make_raw, SendStatus="9", SendSuccess="0")).errors[0].error_type == "unknown_event"
    assert parse(make_raw("esms", method="GET", query={"token": TOKEN})).errors[0].error_type == "invalid_webhook"

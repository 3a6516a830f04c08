"""Zalo OA events and ZNS receipts: the mac signature, ms timestamps, msg_ids lists, errors behind 200."""

from __future__ import annotations

import hashlib
import json

import pytest

from sendtrack.providers import ProviderSecrets, parse, verify

APP_ID = "4218931745103825614"
OA_KEY = "Ab3xY9zQwErTyUiOpAsD"
OA_ID = "579745863508352884"
USER_ID = "31215806834323092"
NOW_MS = 1_714_529_560_000


def body(event_name: str, message: dict, timestamp: str = str(NOW_MS - 5_000)) -> bytes:
    return json.dumps({
        "app_id": APP_ID, "user_id_by_app": "552177279717587730", "event_name": event_name,
        "sender": {"id": OA_ID}, "recipient": {"id": USER_ID}, "message": message, "timestamp": timestamp,
    }, separators=(",", ":")).encode()


def mac(raw_body: bytes, timestamp: str, key: str = OA_KEY) -> str:
    return "mac=" + hashlib.sha256(APP_ID.encode() + raw_body + timestamp.encode() + key.encode()).hexdigest()


def signed(make_raw, raw_body: bytes, timestamp: str = str(NOW_MS - 5_000), **kwargs):
    return make_raw("zalo", raw_body, headers={"X-ZEvent-Signature": mac(raw_body, timestamp, **kwargs)})


@pytest.fixture
def secrets() -> ProviderSecrets:
    return ProviderSecrets(zalo_oa_secret_key=OA_KEY)


RECEIVED = body("user_received_message", {"msg_id": "e1a60e8890be9de4c4ab"})


def test_valid_mac_is_accepted(make_raw, secrets):
    assert verify(signed(make_raw, RECEIVED), secrets, NOW_MS).ok


def test_mac_without_prefix_and_upper_case_is_accepted(make_raw, secrets):
    header = mac(RECEIVED, str(NOW_MS - 5_000))[4:].upper()
    assert verify(make_raw("zalo", RECEIVED, headers={"X-ZEvent-Signature": header}), secrets, NOW_MS).ok


def test_timestamp_in_header_variant_is_accepted(make_raw, secrets):
    raw_body = json.dumps({"app_id": APP_ID, "event_name": "follow", "follower": {"id": USER_ID}}).encode()
    ts = str(NOW_MS - 1_000)
    headers = {"X-ZEvent-Signature": mac(raw_body, ts), "X-ZEvent-Timestamp": ts}
    assert verify(make_raw("zalo", raw_body, headers=headers), secrets, NOW_MS).ok


def test_app_secret_is_the_fallback_key(make_raw):
    secrets = ProviderSecrets(zalo_app_secret=OA_KEY)
    assert verify(signed(make_raw, RECEIVED), secrets, NOW_MS).ok
    both = ProviderSecrets(zalo_oa_secret_key="another", zalo_app_secret=OA_KEY)
    assert verify(signed(make_raw, RECEIVED), both, NOW_MS).status == 403


def test_bad_missing_and_replayed(make_raw, secrets):
    assert verify(signed(make_raw, RECEIVED, key="wrong"), secrets, NOW_MS).status == 403
    assert verify(make_raw("zalo", RECEIVED), secrets, NOW_MS).status == 401
    old = body("user_received_message", {"msg_id": "x"}, timestamp=str(NOW_MS - 13 * 3_600_000))
    verdict = verify(signed(make_raw, old, timestamp=str(NOW_MS - 13 * 3_600_000)), secrets, NOW_MS)
    assert (verdict.status, verdict.reason) == (403, "timestamp outside window")


@pytest.mark.parametrize("age_ms", [10 * 60_000, 6 * 3_600_000, 12 * 3_600_000])
def test_redelivery_of_an_old_event_is_accepted(make_raw, secrets, age_ms):
    # Zalo resends a failed event, body and signed timestamp unchanged, for up to 12 hours.
    ts = str(NOW_MS - age_ms)
    raw_body = body("user_received_message", {"msg_id": "late"}, timestamp=ts)
    assert verify(signed(make_raw, raw_body, timestamp=ts), secrets, NOW_MS).ok


@pytest.mark.parametrize("offset_ms", [-(12 * 3600 + 300) * 1000 - 1, 300_001])
def test_timestamp_past_the_horizon_or_ahead_of_the_window_is_refused(make_raw, secrets, offset_ms):
    ts = str(NOW_MS + offset_ms)
    raw_body = body("user_received_message", {"msg_id": "x"}, timestamp=ts)
    verdict = verify(signed(make_raw, raw_body, timestamp=ts), secrets, NOW_MS)
    assert (verdict.status, verdict.reason) == (403, "timestamp outside window")


def test_oa_receipt_is_delivered_with_ms_timestamp(make_raw, check_canonical):
    record = parse(make_raw("zalo", RECEIVED)).callbacks[0]
    check_canonical(record)
    assert (record["status"], record["provider_message_id"], record["occurred_at"]) == \
        ("delivered", "e1a60e8890be9de4c4ab", NOW_MS - 5_000)
    assert "message_id" not in record


def test_zns_receipt_uses_delivery_time_and_tracking_id(make_raw, check_canonical):
    raw_body = body("user_received_message", {"msg_id": "5c4ee6a0b1", "delivery_time": "1626926350000",
                                              "tracking_id": "msg-zns-7"})
    record = parse(make_raw("zalo", raw_body)).callbacks[0]
    check_canonical(record)
    assert record["occurred_at"] == 1_626_926_350_000
    assert record["message_id"] == "msg-zns-7" and record["provider_message_id"] == "5c4ee6a0b1"


def test_seen_message_opens_every_listed_id(make_raw):
    raw_body = body("user_seen_message", {"msg_ids": ["id-a", "id-b", "id-c"]})
    records = parse(make_raw("zalo", raw_body)).callbacks
    assert [(r["status"], r["provider_message_id"]) for r in records] == \
        [("opened", "id-a"), ("opened", "id-b"), ("opened", "id-c")]
    assert len({r["event_id"] for r in records}) == 3


def test_duplicate_delivery_gives_the_same_event_ids(make_raw):
    raw_body = body("user_seen_message", {"msg_ids": ["id-a", "id-b"]})
    first = parse(make_raw("zalo", raw_body, received_at=NOW_MS))
    again = parse(make_raw("zalo", raw_body, received_at=NOW_MS + 3_600_000))
    assert first.callbacks == again.callbacks


@pytest.mark.parametrize("event_name, label", [
    ("oa_send_text", "oa_send_*"), ("user_send_text", "user_send_*"), ("follow", "follow"),
    ("unfollow", "unfollow"), ("user_click_chatnow", "user_click_chatnow"),
    ("change_template_status", "change_template_status"),
])
def test_untracked_events_are_counted_not_errors(make_raw, event_name, label):
    result = parse(make_raw("zalo", body(event_name, {"msg_id": "m1", "text": "xin chào"})))
    assert (result.callbacks, result.errors, result.ignored) == ([], [], [label])


def test_error_behind_http_200_is_a_provider_error(make_raw):
    result = parse(make_raw("zalo", b'{"error":-124,"message":"Access token is invalid"}'))
    assert result.callbacks == []
    assert [(e.error_type, e.error) for e in result.errors] == \
        [("provider_error", "zalo error -124: Access token is invalid")]


def test_unparseable_and_incomplete_bodies(make_raw):
    assert parse(make_raw("zalo", b"<html>")).errors[0].error_type == "invalid_webhook"
    assert parse(make_raw("zalo", b'{"error":0}')).errors[0].error_type == "invalid_webhook"
    no_id = parse(make_raw("zalo", body("user_received_message", {})))
    assert no_id.errors[0].error_type == "invalid_webhook"


def test_big_numeric_ids_stay_exact(make_raw):
    raw_body = b'{"app_id":"1","event_name":"user_received_message","message":{"msg_id":123456789012345678901},' \
               b'"timestamp":"1714529555000"}'
    assert parse(make_raw("zalo", raw_body)).callbacks[0]["provider_message_id"] == "123456789012345678901"

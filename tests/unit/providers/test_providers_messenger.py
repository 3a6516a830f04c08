"""Messenger: X-Hub-Signature-256, the GET handshake, watermarks, mids, postback/quick-reply clicks."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from sendtrack.providers import ProviderSecrets, parse, verify

APP_SECRET = "0f3c9d1e2b4a6c8e0f1a2b3c4d5e6f70"
PAGE_ID = "104318745637219"
PSID = "6812345678901234"
NOW_MS = 1_714_529_560_000


def item(**event) -> dict:
    return {"sender": {"id": PSID}, "recipient": {"id": PAGE_ID}, **event}


def page_body(*entries: list[dict]) -> bytes:
    return json.dumps({"object": "page", "entry": [
        {"id": PAGE_ID, "time": NOW_MS - 1_000, "messaging": messaging} for messaging in entries
    ]}).encode()


def signed(make_raw, raw_body: bytes, secret: str = APP_SECRET):
    digest = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return make_raw("messenger", raw_body, headers={"X-Hub-Signature-256": f"sha256={digest}"})


@pytest.fixture
def secrets() -> ProviderSecrets:
    return ProviderSecrets(messenger_app_secret=APP_SECRET, messenger_verify_token="tok-7f3a")


BATCH = page_body(
    [
        item(delivery={"mids": ["m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6AC8fplwlqLP_5cgXIbu7I3rBN0P"],
                       "watermark": NOW_MS - 10_000}),
        item(timestamp=NOW_MS - 5_000, read={"watermark": NOW_MS - 6_000}),
    ],
    [
        item(timestamp=NOW_MS - 4_000, postback={"mid": "m_postback1", "title": "Xem ưu đãi",
                                                 "payload": json.dumps({"message_id": "msg-fb-3"})}),
        item(timestamp=NOW_MS - 3_000, message={"mid": "m_qr", "text": "Có",
                                                "quick_reply": {"payload": '{"message_id":"msg-fb-4"}'}}),
        item(timestamp=NOW_MS - 2_000, message={"mid": "m_in", "text": "hello"}),
        item(timestamp=NOW_MS - 2_000, message={"mid": "m_echo", "is_echo": True, "app_id": 1}),
        item(timestamp=NOW_MS - 1_000, postback={"mid": "m_pb2", "title": "Get Started", "payload": "GET_STARTED"}),
        item(timestamp=NOW_MS - 1_000, reaction={"mid": "m_x", "action": "react", "emoji": "❤"}),
    ],
)


def test_valid_signature_and_bad_ones(make_raw, secrets):
    assert verify(signed(make_raw, BATCH), secrets, NOW_MS).ok
    assert verify(signed(make_raw, BATCH, secret="nope"), secrets, NOW_MS).status == 403
    assert verify(make_raw("messenger", BATCH), secrets, NOW_MS).status == 401
    legacy_only = make_raw("messenger", BATCH, headers={"X-Hub-Signature": "sha1=abc"})
    assert verify(legacy_only, secrets, NOW_MS).status == 401


def test_get_handshake_echoes_the_challenge(make_raw, secrets):
    query = {"hub.mode": "subscribe", "hub.verify_token": "tok-7f3a", "hub.challenge": "1158201444"}
    verdict = verify(make_raw("messenger", method="GET", query=query), secrets, NOW_MS)
    assert (verdict.ok, verdict.response_body, verdict.content_type) == (True, b"1158201444", "text/plain")
    wrong = verify(make_raw("messenger", method="GET", query={**query, "hub.verify_token": "x"}), secrets, NOW_MS)
    assert (wrong.ok, wrong.status, wrong.response_body) == (False, 403, None)
    assert parse(make_raw("messenger", method="GET", query=query)).ignored == ["verification"]


def test_handshake_without_a_configured_token_is_refused(make_raw):
    query = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}
    verdict = verify(make_raw("messenger", method="GET", query=query),
                     ProviderSecrets(messenger_app_secret=APP_SECRET), NOW_MS)
    assert (verdict.status, verdict.reason) == (403, "not configured")


def test_receipts_are_watermarks(make_raw):
    result = parse(make_raw("messenger", BATCH))
    delivered, read = result.watermarks
    assert delivered == {"provider": "messenger", "page_id": PAGE_ID, "recipient": PSID, "status": "delivered",
                         "watermark": NOW_MS - 10_000, "event_id": delivered["event_id"],
                         "occurred_at": NOW_MS - 10_000}
    assert (read["status"], read["watermark"], read["occurred_at"]) == ("opened", NOW_MS - 6_000, NOW_MS - 5_000)


def test_delivery_mids_and_clicks_become_callbacks(make_raw, check_canonical):
    result = parse(make_raw("messenger", BATCH))
    for record in result.callbacks:
        check_canonical(record)
    delivered, postback, quick_reply = result.callbacks
    assert delivered["status"] == "delivered" and delivered["provider_message_id"].startswith("m_AG5Hz2")
    assert (postback["status"], postback["message_id"], postback["occurred_at"]) == \
        ("clicked", "msg-fb-3", NOW_MS - 4_000)
    assert "provider_message_id" not in postback
    assert (quick_reply["status"], quick_reply["message_id"]) == ("clicked", "msg-fb-4")
    assert sorted(result.ignored) == ["message", "message_echo", "postback_uncorrelated", "reaction"]
    assert result.errors == []


def test_seconds_string_timestamps_are_normalised(make_raw):
    raw_body = page_body([item(timestamp="1527459824", postback={"payload": '{"message_id":"m-1"}'})])
    assert parse(make_raw("messenger", raw_body)).callbacks[0]["occurred_at"] == 1_527_459_824_000


def test_duplicate_delivery_same_ids(make_raw):
    first = parse(make_raw("messenger", BATCH, received_at=NOW_MS))
    again = parse(make_raw("messenger", BATCH, received_at=NOW_MS + 99_999))
    assert (first.callbacks, first.watermarks) == (again.callbacks, again.watermarks)


def test_non_page_objects_and_bad_receipts(make_raw):
    assert parse(make_raw("messenger", b'{"object":"instagram","entry":[]}')).errors[0].error_type \
        == "invalid_webhook"
    bad = parse(make_raw("messenger", page_body([item(delivery={"mids": ["m_1"]})])))
    assert bad.errors[0].error_type == "invalid_webhook" and bad.callbacks == []

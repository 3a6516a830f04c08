"""Mailgun webhooks: in-body HMAC signature, replay window, event/severity mapping, bot flags."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from sendtrack.providers import ProviderSecrets, parse, verify
from sendtrack.providers.replay import SeenTokens

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
NOW_S = 1_714_529_560


def webhook(event: str, *, timestamp: float = NOW_S - 30.25, signed_at: int = NOW_S, key: str = KEY,
            **data) -> bytes:
    token = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
    signature = hmac.new(key.encode(), f"{signed_at}{token}".encode(), hashlib.sha256).hexdigest()
    event_data = {
        "event": event, "id": f"G9Bn5sl1TC6nu79C8C0bwg-{event}", "timestamp": timestamp,
        "recipient": "lan@example.vn", "log-level": "info",
        "message": {"headers": {"message-id": "20240501021200.1.ABCDEF@mg.shop.example.vn",
                                "to": "lan@example.vn", "subject": "Sale"}},
        "user-variables": {"message_id": "msg-0100"},
        **data,
    }
    return json.dumps({"signature": {"timestamp": str(signed_at), "token": token, "signature": signature},
                       "event-data": event_data}).encode()


@pytest.fixture
def secrets() -> ProviderSecrets:
    return ProviderSecrets(mailgun_signing_key=KEY)


def test_valid_signature(make_raw, secrets, now_ms):
    assert verify(make_raw("mailgun", webhook("delivered")), secrets, now_ms).ok


def test_wrong_key_is_refused(make_raw, secrets, now_ms):
    verdict = verify(make_raw("mailgun", webhook("delivered", key="other")), secrets, now_ms)
    assert (verdict.status, verdict.reason) == (403, "bad signature")


def test_missing_signature_block_is_401(make_raw, secrets, now_ms):
    body = json.dumps({"event-data": {"event": "delivered"}}).encode()
    assert verify(make_raw("mailgun", body), secrets, now_ms).status == 401


def test_replay_of_an_old_signed_request_is_refused(make_raw, secrets, now_ms):
    verdict = verify(make_raw("mailgun", webhook("delivered", signed_at=NOW_S - 3600)), secrets, now_ms)
    assert (verdict.status, verdict.reason) == (403, "timestamp outside window")


def test_unparseable_body_is_400(make_raw, secrets, now_ms):
    assert verify(make_raw("mailgun", b"signature=abc"), secrets, now_ms).status == 400


def test_delivered_event_is_canonical(make_raw, check_canonical):
    record = parse(make_raw("mailgun", webhook("delivered"))).callbacks[0]
    check_canonical(record)
    assert record == {
        "event_id": "G9Bn5sl1TC6nu79C8C0bwg-delivered", "status": "delivered",
        "occurred_at": 1_714_529_529_750,  # float seconds -> ms
        "provider": "mailgun", "provider_message_id": "20240501021200.1.ABCDEF@mg.shop.example.vn",
        "message_id": "msg-0100",
    }


@pytest.mark.parametrize("data, expected", [
    ({"severity": "temporary", "reason": "generic",
      "delivery-status": {"code": 452, "description": "mailbox full"}},
     {"status": "processing", "bounce_type": "soft", "reason_code": "generic", "reason": "mailbox full"}),
    ({"severity": "permanent", "reason": "bounce",
      "delivery-status": {"code": 550, "message": "5.1.1 no such user"}},
     {"status": "bounced", "bounce_type": "hard", "reason_code": "bounce", "reason": "5.1.1 no such user"}),
    ({"severity": "permanent", "reason": "suppress-bounce",
      "delivery-status": {"code": 605, "description": "Not delivering to previously bounced address"}},
     {"status": "failed", "reason_code": "suppress-bounce"}),
    ({"severity": "permanent", "reason": "old", "delivery-status": {"code": 421}},
     {"status": "bounced", "bounce_type": "soft", "reason_code": "old"}),
])
def test_failures_by_severity_and_reason(make_raw, check_canonical, data, expected):
    record = parse(make_raw("mailgun", webhook("failed", **data))).callbacks[0]
    check_canonical(record)
    assert {k: record.get(k) for k in expected} == expected
    if expected["status"] == "failed":
        assert "bounce_type" not in record


@pytest.mark.parametrize("bot, expected", [("apple", True), ("gmail", True), ("", False), (None, None)])
def test_bot_opens_are_machine_flagged(make_raw, bot, expected):
    client = {"client-type": "mobile browser", "user-agent": "Mozilla/5.0"}
    if bot is not None:
        client["bot"] = bot
    record = parse(make_raw("mailgun", webhook("opened", **{"client-info": client}))).callbacks[0]
    assert record["status"] == "opened" and record.get("is_machine") is expected


def test_click_unsubscribe_complaint_accept_reject(make_raw):
    def status(event: str, **data):
        return parse(make_raw("mailgun", webhook(event, **data))).callbacks[0]

    click = status("clicked", url="https://shop.example.vn/p/1", **{"client-info": {"bot": ""}})
    assert (click["status"], click["url"], click["is_machine"]) == ("clicked", "https://shop.example.vn/p/1", False)
    assert status("unsubscribed")["status"] == "unsubscribed"
    assert status("complained")["status"] == "complained"
    assert status("accepted")["status"] == "processing"
    rejected = status("rejected", reject={"reason": "Sandbox subdomain", "description": ""})
    assert (rejected["status"], rejected["reason"]) == ("failed", "Sandbox subdomain")


def test_stored_is_ignored_and_unknown_is_an_error(make_raw):
    assert parse(make_raw("mailgun", webhook("stored"))).ignored == ["stored"]
    assert parse(make_raw("mailgun", webhook("list_member_uploaded"))).errors[0].error_type == "unknown_event"


def test_duplicate_delivery_same_event_id(make_raw):
    body = webhook("opened")
    assert parse(make_raw("mailgun", body)).callbacks == parse(make_raw("mailgun", body, received_at=1)).callbacks


def forged(event: str, event_id: str, message_id: str) -> bytes:
    """A body the attacker wrote around a signature block captured from a genuine request."""
    doc = json.loads(webhook("delivered"))
    doc["event-data"].update({"event": event, "id": event_id, "user-variables": {"message_id": message_id}})
    return json.dumps(doc).encode()


def test_signature_block_reused_with_forged_bodies_is_refused(make_raw, secrets, now_ms):
    seen = SeenTokens()
    assert verify(make_raw("mailgun", webhook("delivered")), secrets, now_ms, seen=seen).ok
    attempts = [forged("clicked", "f-1", "msg-0100"), forged("complained", "f-2", "msg-0100"),
                forged("delivered", "f-3", "msg-0200")]
    verdicts = [verify(make_raw("mailgun", body), secrets, now_ms + 1_000, seen=seen) for body in attempts]
    assert [(v.ok, v.status, v.reason) for v in verdicts] == [(False, 403, "replayed token")] * 3


def test_the_same_request_twice_is_refused_too(make_raw, secrets, now_ms):
    seen = SeenTokens()
    body = webhook("delivered")
    assert verify(make_raw("mailgun", body), secrets, now_ms, seen=seen).ok
    assert verify(make_raw("mailgun", body), secrets, now_ms, seen=seen).status == 403


def test_token_is_remembered_until_its_timestamp_leaves_the_window(make_raw, secrets, now_ms):
    seen = SeenTokens()
    body = webhook("delivered", signed_at=NOW_S - 200)
    assert verify(make_raw("mailgun", body), secrets, now_ms, seen=seen).ok
    assert len(seen) == 1
    # 100 s later the signed timestamp is 300 s old: still inside the window, still refused.
    assert verify(make_raw("mailgun", body), secrets, now_ms + 100_000, seen=seen).reason == "replayed token"
    # Past the window the timestamp alone refuses it, and the memory has let the token go.
    assert verify(make_raw("mailgun", body), secrets, now_ms + 101_000, seen=seen).reason == \
        "timestamp outside window"
    assert verify(make_raw("mailgun", webhook("opened")), secrets, now_ms + 101_000, seen=seen).ok
    assert len(seen) == 1


def test_a_forgotten_token_can_be_used_again(make_raw, secrets, now_ms):
    # The ingress forgets a token whose request it could not publish (503), so that the retry gets in.
    seen = SeenTokens()
    verdict = verify(make_raw("mailgun", webhook("delivered")), secrets, now_ms, seen=seen)
    seen.forget(verdict.nonce)
    assert verify(make_raw("mailgun", webhook("delivered")), secrets, now_ms, seen=seen).ok


def test_bad_signatures_do_not_fill_the_memory(make_raw, secrets, now_ms):
    seen = SeenTokens()
    for n in range(5):
        assert verify(make_raw("mailgun", webhook("delivered", key=f"guess-{n}")), secrets, now_ms, seen=seen) \
            .status == 403
    assert len(seen) == 0

"""SendGrid Event Webhook: ECDSA verification and the event -> canonical status table."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sendtrack.providers import ProviderSecrets, parse, verify

NOW_S = 1_714_529_560
SG_ID = "LRzXl66hSCqDG_ybkm2d3A"


def event(name: str, n: int, **extra) -> dict:
    return {
        "email": "lan@example.vn", "timestamp": NOW_S - 60 + n, "event": name,
        "sg_event_id": f"ev{n}-{name}", "sg_message_id": f"{SG_ID}.filterdrecv-5645d9c87f-78xgx-1-62841247-82.0",
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>", "category": ["welcome"],
        "message_id": "msg-0001", "flow_id": "flow-9", **extra,
    }


BATCH = [
    event("processed", 0),
    event("deferred", 1, response="400 try again later", attempt="5"),
    event("delivered", 2, response="250 OK"),
    event("open", 3, sg_machine_open=False, useragent="Mozilla/5.0 (Windows NT 10.0)", ip="203.0.113.9"),
    event("open", 4, sg_machine_open=True, useragent="Mozilla/5.0", ip="17.58.0.1"),
    event("click", 5, url="https://shop.example.vn/sale?utm=mail"),
    event("bounce", 6, type="bounce", status="5.1.1", reason="550 5.1.1 user unknown",
          bounce_classification="Invalid Address"),
    event("bounce", 7, type="blocked", status="4.0.0", reason="421 try later", bounce_classification="Technical"),
    event("dropped", 8, reason="Bounced Address"),
    event("spamreport", 9),
    event("unsubscribe", 10),
    event("group_unsubscribe", 11, asm_group_id=42),
    event("group_resubscribe", 12, asm_group_id=42),
]


@pytest.fixture
def secrets(ec_key) -> ProviderSecrets:
    der = ec_key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return ProviderSecrets(sendgrid_public_key=base64.b64encode(der).decode())


def signed(ec_key, body: bytes, timestamp: int = NOW_S) -> dict[str, str]:
    signature = ec_key.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": str(timestamp)}


def body_of(events) -> bytes:
    return json.dumps(events).encode()


def test_valid_signature_is_accepted(make_raw, ec_key, secrets, now_ms):
    body = body_of(BATCH)
    verdict = verify(make_raw("sendgrid", body, headers=signed(ec_key, body)), secrets, now_ms)
    assert (verdict.ok, verdict.status) == (True, 200)


def test_pem_public_key_is_accepted_too(make_raw, ec_key, now_ms):
    pem = ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    body = body_of(BATCH[:1])
    verdict = verify(make_raw("sendgrid", body, headers=signed(ec_key, body)),
                     ProviderSecrets(sendgrid_public_key=pem), now_ms)
    assert verdict.ok


def test_tampered_body_is_refused(make_raw, ec_key, secrets, now_ms):
    headers = signed(ec_key, body_of(BATCH))
    verdict = verify(make_raw("sendgrid", body_of(BATCH[:2]), headers=headers), secrets, now_ms)
    assert (verdict.ok, verdict.status, verdict.reason) == (False, 403, "bad signature")


def test_other_key_is_refused(make_raw, secrets, now_ms):
    body = body_of(BATCH)
    other = ec.generate_private_key(ec.SECP256R1())
    verdict = verify(make_raw("sendgrid", body, headers=signed(other, body)), secrets, now_ms)
    assert verdict.status == 403


def test_missing_signature_is_401(make_raw, secrets, now_ms):
    verdict = verify(make_raw("sendgrid", body_of(BATCH)), secrets, now_ms)
    assert (verdict.ok, verdict.status) == (False, 401)


def test_replayed_old_timestamp_is_refused_even_when_signed(make_raw, ec_key, secrets, now_ms):
    body = body_of(BATCH)
    verdict = verify(make_raw("sendgrid", body, headers=signed(ec_key, body, NOW_S - 301)), secrets, now_ms)
    assert (verdict.status, verdict.reason) == (403, "timestamp outside window")


def test_garbage_signature_is_refused_not_raised(make_raw, secrets, now_ms):
    headers = {"X-Twilio-Email-Event-Webhook-Signature": "not base64!!",
               "X-Twilio-Email-Event-Webhook-Timestamp": str(NOW_S)}
    assert verify(make_raw("sendgrid", b"[]", headers=headers), secrets, now_ms).status == 403


def test_unreadable_public_key_refuses_without_echoing_it(make_raw, ec_key, now_ms):
    body = body_of(BATCH)
    verdict = verify(make_raw("sendgrid", body, headers=signed(ec_key, body)),
                     ProviderSecrets(sendgrid_public_key="c2VjcmV0LWJ1dC1ub3QtYS1rZXk="), now_ms)
    assert verdict.status == 403 and "c2VjcmV0" not in verdict.reason


def test_batch_maps_every_event(make_raw, check_canonical):
    result = parse(make_raw("sendgrid", body_of(BATCH)))
    assert result.errors == []
    assert result.ignored == ["group_resubscribe"]
    statuses = [c["status"] for c in result.callbacks]
    assert statuses == ["processing", "processing", "delivered", "opened", "opened", "clicked", "bounced",
                        "bounced", "failed", "complained", "unsubscribed", "unsubscribed"]
    for record in result.callbacks:
        check_canonical(record)
        assert record["provider"] == "sendgrid"
        assert record["provider_message_id"] == SG_ID  # = X-Message-Id of the send response
        assert record["message_id"] == "msg-0001"  # custom_args echo
    first = result.callbacks[0]
    assert first["event_id"] == "ev0-processed"
    assert first["occurred_at"] == (NOW_S - 60) * 1000  # seconds -> ms


def test_machine_opens_are_flagged(make_raw):
    opens = [c for c in parse(make_raw("sendgrid", body_of(BATCH))).callbacks if c["status"] == "opened"]
    assert [o["is_machine"] for o in opens] == [False, True]


def test_bounce_types_reasons_and_click_url(make_raw):
    by_id = {c["event_id"]: c for c in parse(make_raw("sendgrid", body_of(BATCH))).callbacks}
    assert by_id["ev6-bounce"]["bounce_type"] == "hard"
    assert by_id["ev6-bounce"]["reason_code"] == "Invalid Address"
    assert by_id["ev6-bounce"]["reason"] == "550 5.1.1 user unknown"
    assert by_id["ev7-bounce"]["bounce_type"] == "soft"
    assert by_id["ev8-dropped"]["reason"] == "Bounced Address"
    assert by_id["ev5-click"]["url"] == "https://shop.example.vn/sale?utm=mail"


def test_duplicate_delivery_gives_the_same_event_ids(make_raw):
    body = body_of(BATCH)
    first = parse(make_raw("sendgrid", body, received_at=1))
    again = parse(make_raw("sendgrid", body, received_at=2_000_000_000_000))
    assert first.callbacks == again.callbacks


def test_event_without_sg_event_id_gets_a_deterministic_id(make_raw):
    bare = {k: v for k, v in event("delivered", 1).items() if k != "sg_event_id"}
    ids = {parse(make_raw("sendgrid", body_of([bare]))).callbacks[0]["event_id"] for _ in range(2)}
    assert len(ids) == 1 and len(ids.pop()) == 32


def test_unknown_events_and_non_objects_are_errors_but_do_not_stop_the_batch(make_raw):
    result = parse(make_raw("sendgrid", body_of([event("teleported", 0), 7, event("delivered", 1)])))
    assert [c["status"] for c in result.callbacks] == ["delivered"]
    assert sorted(e.error_type for e in result.errors) == ["invalid_webhook", "unknown_event"]


def test_non_array_body_is_invalid(make_raw):
    for body in (b'{"event":"open"}', b"not json", b"\xff\xfe"):
        result = parse(make_raw("sendgrid", body))
        assert result.callbacks == [] and result.errors[0].error_type == "invalid_webhook"


def test_millisecond_timestamp_is_not_multiplied(make_raw):
    record = parse(make_raw("sendgrid", body_of([event("delivered", 0, timestamp=1_714_529_500_123)])))
    assert record.callbacks[0]["occurred_at"] == 1_714_529_500_123

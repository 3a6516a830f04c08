"""Amazon SES via SNS: signature against a configured certificate, topic check, SES event mapping."""

from __future__ import annotations

import base64
import datetime
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sendtrack.providers import ProviderSecrets, parse, verify

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
SES_ID = "010001850b2e8a3f-5c7a9b1e-2f3d-4a5b-8c6d-7e8f9a0b1c2d-000000"
NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


def ses_event(event_type: str, **detail) -> dict:
    return {
        "eventType": event_type,
        "mail": {
            "timestamp": "2024-05-01T02:12:00.000Z", "source": "news@shop.example.vn",
            "messageId": SES_ID, "destination": ["lan@example.vn"],
            "tags": {"ses:configuration-set": ["tracking"], "message_id": ["msg-0042"]},
        },
        **detail,
    }


def sns_doc(key: rsa.RSAPrivateKey, message: dict | str, *, kind: str = "Notification", version: str = "1",
            timestamp: str = "2024-05-01T02:12:39.000Z", topic: str = TOPIC, message_id: str = "sns-1",
            subject: str | None = None) -> dict:
    doc = {
        "Type": kind, "MessageId": message_id, "TopicArn": topic,
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": timestamp, "SignatureVersion": version,
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
    }
    if subject is not None:
        doc["Subject"] = subject
    if kind == "SubscriptionConfirmation":
        doc["Token"] = "2336412f37fb687f5d51e6e2425"
        doc["SubscribeURL"] = ("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
                               f"&TopicArn={TOPIC}&Token=2336412f37fb687f5d51e6e2425")
    fields = NOTIFICATION_FIELDS if kind == "Notification" else CONFIRMATION_FIELDS
    signed = "".join(f"{name}\n{doc[name]}\n" for name in fields if name in doc).encode()
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    doc["Signature"] = base64.b64encode(key.sign(signed, padding.PKCS1v15(), digest)).decode()
    return doc


def request(make_raw, doc: dict):
    return make_raw("ses", json.dumps(doc).encode(), headers={"x-amz-sns-message-type": doc["Type"]})


@pytest.fixture
def secrets(sns_signer) -> ProviderSecrets:
    return ProviderSecrets(ses_sns_certificate_pem=sns_signer[1], ses_topic_arn=TOPIC)


@pytest.mark.parametrize("version", ["1", "2"])
def test_signature_versions_1_and_2_verify(make_raw, sns_signer, secrets, now_ms, version):
    doc = sns_doc(sns_signer[0], ses_event("Delivery"), version=version, subject="Amazon SES Email Event")
    verdict = verify(request(make_raw, doc), secrets, now_ms)
    assert (verdict.ok, verdict.status, verdict.subscribe_url) == (True, 200, None)


def test_altered_message_is_refused(make_raw, sns_signer, secrets, now_ms):
    doc = sns_doc(sns_signer[0], ses_event("Delivery"))
    doc["Message"] = json.dumps(ses_event("Click", click={"link": "https://evil.example"}))
    assert verify(request(make_raw, doc), secrets, now_ms).status == 403


def test_certificate_of_another_key_is_refused(make_raw, sns_signer, secrets, now_ms):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert verify(request(make_raw, sns_doc(other, ses_event("Send"))), secrets, now_ms).status == 403


def test_missing_signature_is_401(make_raw, sns_signer, secrets, now_ms):
    doc = sns_doc(sns_signer[0], ses_event("Send"))
    del doc["Signature"]
    assert verify(request(make_raw, doc), secrets, now_ms).status == 401


def test_old_sns_timestamp_is_a_replay(make_raw, sns_signer, secrets, now_ms):
    doc = sns_doc(sns_signer[0], ses_event("Send"), timestamp="2024-05-01T01:00:00.000Z")
    verdict = verify(request(make_raw, doc), secrets, now_ms)
    assert (verdict.status, verdict.reason) == (403, "timestamp outside window")


def test_other_topic_is_refused(make_raw, sns_signer, secrets, now_ms):
    doc = sns_doc(sns_signer[0], ses_event("Send"), topic="arn:aws:sns:us-east-1:999999999999:other")
    verdict = verify(request(make_raw, doc), secrets, now_ms)
    assert (verdict.status, verdict.reason) == (403, "topic not allowed")


@pytest.mark.parametrize("kind", ["Notification", "SubscriptionConfirmation"])
@pytest.mark.parametrize("topic", [TOPIC, "arn:aws:sns:us-east-1:999999999999:attacker"])
def test_no_topic_configured_refuses_every_request(make_raw, sns_signer, now_ms, kind, topic):
    # AWS signs every account's topics with the same regional certificate: without a topic ARN,
    # anyone's topic (and its subscription confirmation) would verify.
    doc = sns_doc(sns_signer[0], ses_event("Send") if kind == "Notification" else "subscribe", kind=kind,
                  topic=topic)
    verdict = verify(request(make_raw, doc), ProviderSecrets(ses_sns_certificate_pem=sns_signer[1]), now_ms)
    assert (verdict.ok, verdict.status, verdict.reason, verdict.subscribe_url) == \
        (False, 403, "not configured: no topic ARN", None)


def test_confirmation_of_another_topic_is_refused(make_raw, sns_signer, secrets, now_ms):
    doc = sns_doc(sns_signer[0], "subscribe", kind="SubscriptionConfirmation",
                  topic="arn:aws:sns:us-east-1:999999999999:attacker")
    verdict = verify(request(make_raw, doc), secrets, now_ms)
    assert (verdict.ok, verdict.status, verdict.reason, verdict.subscribe_url) == \
        (False, 403, "topic not allowed", None)


def test_subscribe_url_of_another_topic_is_refused(make_raw, sns_signer, secrets, now_ms):
    doc = sns_doc(sns_signer[0], "subscribe", kind="SubscriptionConfirmation")
    doc["SubscribeURL"] = doc["SubscribeURL"].replace(TOPIC, "arn:aws:sns:us-east-1:999999999999:attacker")
    signed = "".join(f"{name}\n{doc[name]}\n" for name in CONFIRMATION_FIELDS).encode()
    doc["Signature"] = base64.b64encode(sns_signer[0].sign(signed, padding.PKCS1v15(), hashes.SHA1())).decode()
    verdict = verify(request(make_raw, doc), secrets, now_ms)
    assert (verdict.ok, verdict.status, verdict.subscribe_url) == (False, 400, None)


def iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@pytest.mark.parametrize("age_minutes", [6, 30, 64])
def test_sns_retry_within_the_redelivery_horizon_is_accepted(make_raw, sns_signer, secrets, now_ms, age_minutes):
    # SNS retries keep the publication Timestamp; its HTTP/S retries last at most an hour.
    doc = sns_doc(sns_signer[0], ses_event("Send"), timestamp=iso(now_ms - age_minutes * 60_000))
    assert verify(request(make_raw, doc), secrets, now_ms).ok


@pytest.mark.parametrize("offset_ms", [-(3600 + 300) * 1000 - 1, 300_001])
def test_sns_timestamp_past_the_horizon_or_ahead_of_the_window_is_refused(make_raw, sns_signer, secrets, now_ms,
                                                                           offset_ms):
    doc = sns_doc(sns_signer[0], ses_event("Send"), timestamp=iso(now_ms + offset_ms))
    verdict = verify(request(make_raw, doc), secrets, now_ms)
    assert (verdict.status, verdict.reason) == (403, "timestamp outside window")


def test_subscription_confirmation_reports_the_url_to_get(make_raw, sns_signer, secrets, now_ms):
    doc = sns_doc(sns_signer[0], "You have chosen to subscribe to the topic", kind="SubscriptionConfirmation")
    verdict = verify(request(make_raw, doc), secrets, now_ms)
    assert verdict.ok and verdict.subscribe_url == doc["SubscribeURL"]
    assert parse(request(make_raw, doc)).ignored == ["SubscriptionConfirmation"]


def test_subscribe_url_outside_sns_is_refused(make_raw, sns_signer, secrets, now_ms):
    doc = sns_doc(sns_signer[0], "subscribe", kind="SubscriptionConfirmation")
    doc["SubscribeURL"] = "https://169.254.169.254/latest/meta-data"
    fields = CONFIRMATION_FIELDS
    signed = "".join(f"{name}\n{doc[name]}\n" for name in fields).encode()
    doc["Signature"] = base64.b64encode(sns_signer[0].sign(signed, padding.PKCS1v15(), hashes.SHA1())).decode()
    verdict = verify(request(make_raw, doc), secrets, now_ms)
    assert not verdict.ok and verdict.subscribe_url is None


def test_bundle_with_a_rotated_certificate_still_verifies(make_raw, sns_signer, self_signed, now_ms):
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bundle = sns_signer[1] + self_signed(new_key)
    verdict = verify(request(make_raw, sns_doc(new_key, ses_event("Send"))),
                     ProviderSecrets(ses_sns_certificate_pem=bundle, ses_topic_arn=TOPIC), now_ms)
    assert verdict.ok


def test_unreadable_certificate_is_not_configured(make_raw, sns_signer, now_ms):
    verdict = verify(request(make_raw, sns_doc(sns_signer[0], ses_event("Send"))),
                     ProviderSecrets(ses_sns_certificate_pem="-----BEGIN CERTIFICATE-----\nxx",
                                     ses_topic_arn=TOPIC), now_ms)
    assert (verdict.ok, verdict.status, verdict.reason) == (False, 403, "not configured: unreadable certificate")


def test_send_delivery_and_tag_message_id(make_raw, sns_signer, check_canonical):
    send = parse(request(make_raw, sns_doc(sns_signer[0], ses_event("Send"), message_id="sns-send")))
    delivery = parse(request(make_raw, sns_doc(sns_signer[0], ses_event(
        "Delivery", delivery={"timestamp": "2024-05-01T02:12:03.512Z", "recipients": ["lan@example.vn"],
                              "smtpResponse": "250 2.6.0 Message received"}), message_id="sns-del")))
    sent, delivered = send.callbacks[0], delivery.callbacks[0]
    for record in (sent, delivered):
        check_canonical(record)
    assert sent == {"event_id": "sns-send", "status": "sent", "occurred_at": 1_714_529_520_000,
                    "provider": "ses", "provider_message_id": SES_ID, "message_id": "msg-0042"}
    assert delivered["status"] == "delivered" and delivered["occurred_at"] == 1_714_529_523_512


def test_permanent_and_transient_bounces(make_raw, sns_signer, check_canonical):
    def bounce(bounce_type: str, sub_type: str):
        detail = {"bounceType": bounce_type, "bounceSubType": sub_type, "timestamp": "2024-05-01T02:12:05.000Z",
                  "bouncedRecipients": [{"emailAddress": "lan@example.vn", "status": "5.1.1",
                                         "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}
        return parse(request(make_raw, sns_doc(sns_signer[0], ses_event("Bounce", bounce=detail)))).callbacks[0]

    hard, soft = bounce("Permanent", "General"), bounce("Transient", "MailboxFull")
    check_canonical(hard)
    assert (hard["status"], hard["bounce_type"], hard["reason_code"]) == ("bounced", "hard", "General")
    assert hard["reason"] == "smtp; 550 5.1.1 user unknown"
    assert (soft["status"], soft["bounce_type"]) == ("bounced", "soft")
    assert bounce("Undetermined", "Undetermined")["bounce_type"] == "soft"


def test_recipients_fan_out_with_indexed_event_ids(make_raw, sns_signer):
    complaint = {"timestamp": "2024-05-01T03:00:00.000Z", "complaintFeedbackType": "abuse",
                 "complainedRecipients": [{"emailAddress": "a@example.vn"}, {"emailAddress": "b@example.vn"}]}
    doc = sns_doc(sns_signer[0], ses_event("Complaint", complaint=complaint), message_id="sns-7")
    records = parse(request(make_raw, doc)).callbacks
    assert [r["event_id"] for r in records] == ["sns-7:0", "sns-7:1"]
    assert {r["status"] for r in records} == {"complained"}


def test_open_click_reject_rendering_delay(make_raw, sns_signer):
    def one(event_type: str, **detail):
        return parse(request(make_raw, sns_doc(sns_signer[0], ses_event(event_type, **detail)))).callbacks[0]

    human = one("Open", open={"timestamp": "2024-05-01T04:00:00.000Z", "userAgent": "Mozilla/5.0 (iPhone)",
                             "ipAddress": "203.0.113.5"})
    apple = one("Open", open={"timestamp": "2024-05-01T04:00:00.000Z", "userAgent": "Mozilla/5.0",
                             "ipAddress": "17.58.0.1"})
    assert human["status"] == "opened" and "is_machine" not in human
    assert apple["is_machine"] is True
    click = one("Click", click={"timestamp": "2024-05-01T04:01:00.000Z", "link": "https://shop.example.vn/x"})
    assert (click["status"], click["url"]) == ("clicked", "https://shop.example.vn/x")
    reject = one("Reject", reject={"reason": "Bad content"})
    assert (reject["status"], reject["reason_code"], reject["reason"]) == ("failed", "Reject", "Bad content")
    render = one("Rendering Failure", failure={"errorMessage": "Attribute 'name' missing", "templateName": "t"})
    assert (render["status"], render["reason_code"]) == ("failed", "RenderingFailure")
    delay = one("DeliveryDelay", deliveryDelay={"timestamp": "2024-05-01T05:00:00.000Z",
                                                "delayType": "MailboxFull", "delayedRecipients": []})
    assert (delay["status"], delay["reason_code"]) == ("processing", "MailboxFull")


def test_subscription_unsubscribe_and_mere_preference_change(make_raw, sns_signer):
    def subscription(new: dict, old: dict):
        detail = {"contactList": "News", "timestamp": "2024-05-01T06:00:00.000Z", "source": "UnsubscribeHeader",
                  "newTopicPreferences": new, "oldTopicPreferences": old}
        return parse(request(make_raw, sns_doc(sns_signer[0], ses_event("Subscription", subscription=detail))))

    out = subscription({"unsubscribeAll": True}, {"unsubscribeAll": False})
    assert out.callbacks[0]["status"] == "unsubscribed"
    unchanged = {"unsubscribeAll": False,
                 "topicSubscriptionStatus": [{"topicName": "Deals", "subscriptionStatus": "OptOut"}]}
    assert subscription(unchanged, unchanged).ignored == ["Subscription"]


def test_unknown_event_type_and_bad_message(make_raw, sns_signer):
    assert parse(request(make_raw, sns_doc(sns_signer[0], ses_event("Teleport")))).errors[0].error_type \
        == "unknown_event"
    assert parse(request(make_raw, sns_doc(sns_signer[0], "not json"))).errors[0].error_type == "invalid_webhook"


def test_sns_retry_gives_the_same_event_ids(make_raw, sns_signer):
    doc = sns_doc(sns_signer[0], ses_event("Send"))
    assert parse(request(make_raw, doc)).callbacks == parse(make_raw(
        "ses", json.dumps(doc).encode(), received_at=1_800_000_000_000)).callbacks

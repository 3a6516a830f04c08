"""From an HTTP POST at the ingress, through Kafka and the status engine, to the status in ClickHouse."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.conftest import Worker, consume, produce, req

KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("webhooks"), "hooks", sendgrid_public_key=PUBLIC,
               messenger_verify_token="verify-me", messenger_app_secret="app-secret")
    w.start()
    yield w
    w.stop()


def sendgrid_event(name: str, n: int, now: int, **extra) -> dict:
    return {"email": "lan@example.vn", "timestamp": now - 60 + n, "event": name, "sg_event_id": f"ev-{n}-{name}",
            "sg_message_id": "LRzXl66hSCqDG.filterdrecv-1", "message_id": "m-hook", **extra}


def post(w: Worker, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{w.port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def signed(body: bytes, timestamp: int) -> dict[str, str]:
    signature = KEY.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": str(timestamp)}


async def test_sendgrid_post_becomes_statuses_in_clickhouse(worker):
    now = int(time.time())
    await produce(worker.topic("send-requests"), [req("m-hook", requested_at=(now - 120) * 1000)])
    events = [sendgrid_event("processed", 0, now), sendgrid_event("delivered", 1, now),
              sendgrid_event("open", 2, now, sg_machine_open=True),
              sendgrid_event("click", 3, now, url="https://shop.example.vn/sale")]
    body = json.dumps(events).encode()
    status, _ = post(worker, "/webhooks/sendgrid", body, signed(body, now))
    assert status == 200
    # The provider retries the same delivery: nothing changes.
    assert post(worker, "/webhooks/sendgrid", body, signed(body, now))[0] == 200
    worker.wait_for("SELECT current_status, processing_at IS NOT NULL, delivered_at IS NOT NULL, "
                    "opened_at IS NOT NULL FROM sendtrack.messages WHERE message_id = 'm-hook'",
                    [["clicked", True, True, True]], timeout=60)
    rows = worker.sql("SELECT status, is_machine, url FROM sendtrack.engagement_events "
                      "WHERE message_id = 'm-hook' ORDER BY status")
    assert rows == [["clicked", False, "https://shop.example.vn/sale"], ["opened", True, ""]]


async def test_bad_missing_and_replayed_signatures_are_refused_and_counted(worker):
    now = int(time.time())
    body = json.dumps([sendgrid_event("delivered", 9, now)]).encode()
    forged = signed(b"[]", now)
    assert post(worker, "/webhooks/sendgrid", body, forged)[0] == 403
    assert post(worker, "/webhooks/sendgrid", body, {})[0] == 401
    old = now - 3600
    assert post(worker, "/webhooks/sendgrid", body, signed(body, old))[0] == 403
    assert post(worker, "/webhooks/retell", b"{}", {})[0] == 403  # its secret is not configured
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=10).read().decode()
    refused = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
               for line in metrics.splitlines() if line.startswith("sendtrack_webhooks_refused_total{")}
    assert refused['provider="sendgrid",status="403"'] >= 2
    assert refused['provider="sendgrid",status="401"'] >= 1
    # Nothing unverified reached the pipeline: only the two verified POSTs of the test above.
    published = await consume(worker.topic("provider-webhooks"), 0, timeout=10, settle=2)
    assert all(r["provider"] == "sendgrid" for r in published)
    assert len(published) <= 2


def test_messenger_verification_handshake(worker):
    url = (f"http://127.0.0.1:{worker.port}/webhooks/messenger?hub.mode=subscribe"
           f"&hub.verify_token=verify-me&hub.challenge=1158201444")
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"1158201444"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.replace("verify-me", "guess"), timeout=10)
    assert refused.value.code == 403


async def test_messenger_read_watermark_covers_earlier_and_later_seen_requests(worker):
    import hashlib
    import hmac

    now_ms = int(time.time() * 1000)
    psid, page = "psid-771", "page-42"

    def messenger(mid: str, at: int):
        return req(mid, action="messenger", provider="messenger", recipient=psid, requested_at=at)

    await produce(worker.topic("send-requests"), [messenger("m-ms-1", now_ms - 60_000),
                                                  messenger("m-ms-3", now_ms + 60_000)])
    body = json.dumps({"object": "page", "entry": [{"id": page, "time": now_ms, "messaging": [
        {"sender": {"id": psid}, "recipient": {"id": page}, "timestamp": now_ms,
         "read": {"watermark": now_ms}}]}]}).encode()
    signature = "sha256=" + hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    assert post(worker, "/webhooks/messenger", body, {"X-Hub-Signature-256": signature})[0] == 200
    # A request the engine sees only after the watermark, but sent before it, is covered too.
    await produce(worker.topic("send-requests"), [messenger("m-ms-2", now_ms - 30_000)])
    worker.wait_for("SELECT message_id, current_status, delivered_at IS NOT NULL FROM sendtrack.messages "
                    "WHERE message_id LIKE 'm-ms-%' ORDER BY message_id",
                    [["m-ms-1", "opened", True], ["m-ms-2", "opened", True], ["m-ms-3", "sent", False]],
                    timeout=60)


# ---------------------------------------------------------------------------------------------
# Attacks on the ingress (security issue, items 6, 7, 8 and 10), and retries that must get through
# ---------------------------------------------------------------------------------------------

import datetime  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
from urllib.parse import urlencode  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

SNS_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
# Stands in for the regional certificate AWS signs every topic's messages with (any account's).
SNS_CERT = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")]))
    .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")]))
    .public_key(SNS_KEY.public_key()).serial_number(x509.random_serial_number())
    .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
    .not_valid_after(datetime.datetime(2040, 1, 1, tzinfo=datetime.timezone.utc))
    .sign(SNS_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
)
OUR_TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
ATTACKER_TOPIC = "arn:aws:sns:us-east-1:999999999999:attacker"
MAILGUN_KEY = "key-integration-mailgun"
ZALO_APP_ID, ZALO_KEY = "4218931745103825614", "zalo-oa-secret"
TWILIO_TOKEN = "12345678901234567890123456789012"
PUBLIC_URL = "https://hooks.shop.example.vn"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A worker with every provider configured, the SES topic and the public URL included."""
    w = Worker(tmp_path_factory.mktemp("webhooks-secured"), "hooks-secured", ses_sns_certificate=SNS_CERT,
               ses_topic_arn=OUR_TOPIC, mailgun_signing_key=MAILGUN_KEY, zalo_oa_secret_key=ZALO_KEY,
               twilio_auth_token=TWILIO_TOKEN, webhook_public_url=PUBLIC_URL)
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def half_configured(tmp_path_factory):
    """A worker with the SES certificate but no topic ARN, the Twilio token but no public URL."""
    w = Worker(tmp_path_factory.mktemp("webhooks-half"), "hooks-half", ses_sns_certificate=SNS_CERT,
               twilio_auth_token=TWILIO_TOKEN)
    w.start()
    yield w
    w.stop()


def iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sns(kind: str, topic: str, published_ms: int, message_id: str, message: str = "{}") -> bytes:
    doc = {"Type": kind, "MessageId": message_id, "TopicArn": topic, "Message": message,
           "Timestamp": iso(published_ms), "SignatureVersion": "1",
           "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem"}
    fields = ["Message", "MessageId", "Timestamp", "TopicArn", "Type"]
    if kind == "SubscriptionConfirmation":
        doc["Token"] = "2336412f37fb687f5d51e6e2425"
        doc["SubscribeURL"] = ("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
                               f"&TopicArn={topic}&Token=2336412f37fb687f5d51e6e2425")
        fields = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    signed = "".join(f"{name}\n{doc[name]}\n" for name in fields).encode()
    doc["Signature"] = base64.b64encode(SNS_KEY.sign(signed, padding.PKCS1v15(), hashes.SHA1())).decode()
    return json.dumps(doc).encode()


def ses_delivery(mid: str, at_ms: int) -> str:
    return json.dumps({"eventType": "Delivery", "mail": {"timestamp": iso(at_ms), "messageId": f"ses-{mid}",
                                                         "tags": {"message_id": [mid]}},
                       "delivery": {"timestamp": iso(at_ms), "recipients": ["lan@example.vn"]}})


async def published(w: Worker, provider: str) -> list[dict]:
    return [r for r in await consume(w.topic("provider-webhooks"), 0, timeout=10, settle=2)
            if r["provider"] == provider]


async def test_ses_without_topic_arn_refuses_any_topic_and_its_subscription(half_configured):
    now_ms = int(time.time() * 1000)
    confirmation = sns("SubscriptionConfirmation", ATTACKER_TOPIC, now_ms, "sns-attack-sub", "subscribe")
    notification = sns("Notification", ATTACKER_TOPIC, now_ms, "sns-attack-1", ses_delivery("m-forged", now_ms))
    for body, kind in ((confirmation, "SubscriptionConfirmation"), (notification, "Notification")):
        status, answer = post(half_configured, "/webhooks/ses", body, {"x-amz-sns-message-type": kind})
        assert status == 403, (kind, answer)
    assert await published(half_configured, "ses") == []
    assert "SENDTRACK_SES_TOPIC_ARN" in half_configured.tail(400)


async def test_ses_refuses_another_accounts_topic(secured):
    now_ms = int(time.time() * 1000)
    body = sns("SubscriptionConfirmation", ATTACKER_TOPIC, now_ms, "sns-attack-sub-2", "subscribe")
    status, answer = post(secured, "/webhooks/ses", body, {"x-amz-sns-message-type": "SubscriptionConfirmation"})
    assert (status, json.loads(answer)) == (403, {"error": "topic not allowed"})


async def test_sns_retry_after_a_long_outage_is_accepted_and_one_past_the_horizon_is_not(secured):
    now_ms = int(time.time() * 1000)
    # SNS retries keep the publication Timestamp: 40 minutes after it, after a Kafka outage.
    late = sns("Notification", OUR_TOPIC, now_ms - 40 * 60_000, "sns-late-1", ses_delivery("m-ses-late", now_ms))
    status, answer = post(secured, "/webhooks/ses", late, {"x-amz-sns-message-type": "Notification"})
    assert status == 200, answer
    too_late = sns("Notification", OUR_TOPIC, now_ms - 2 * 3600_000, "sns-late-2", ses_delivery("m-ses-x", now_ms))
    status, answer = post(secured, "/webhooks/ses", too_late, {"x-amz-sns-message-type": "Notification"})
    assert (status, json.loads(answer)) == (403, {"error": "timestamp outside window"})
    callbacks = await consume(secured.topic("provider-callbacks"), 1, timeout=30)
    assert [c["status"] for c in callbacks if c.get("event_id") == "sns-late-1"] == ["delivered"]


def zalo_signed(body: bytes, timestamp: str) -> dict[str, str]:
    mac = hashlib.sha256(ZALO_APP_ID.encode() + body + timestamp.encode() + ZALO_KEY.encode()).hexdigest()
    return {"X-ZEvent-Signature": f"mac={mac}"}


async def test_zalo_retry_hours_after_the_event_is_accepted(secured):
    sent_ms = int(time.time() * 1000) - 3 * 3600_000
    body = json.dumps({"app_id": ZALO_APP_ID, "event_name": "user_received_message", "timestamp": str(sent_ms),
                       "sender": {"id": "oa"}, "recipient": {"id": "u"},
                       "message": {"msg_id": "zalo-late-1"}}).encode()
    status, answer = post(secured, "/webhooks/zalo", body, zalo_signed(body, str(sent_ms)))
    assert status == 200, answer


def mailgun_body(signature_block: dict, event_id: str, event: str, mid: str) -> bytes:
    return json.dumps({"signature": signature_block, "event-data": {
        "event": event, "id": event_id, "timestamp": time.time(), "recipient": "lan@example.vn",
        "message": {"headers": {"message-id": f"{mid}@mg.example.vn"}},
        "user-variables": {"message_id": mid}}}).encode()


async def test_mailgun_signature_block_reused_with_forged_bodies_is_refused(secured):
    timestamp, token = str(int(time.time())), "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
    block = {"timestamp": timestamp, "token": token,
             "signature": hmac.new(MAILGUN_KEY.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()}
    genuine = mailgun_body(block, "mg-genuine", "delivered", "m-mg-1")
    assert post(secured, "/webhooks/mailgun", genuine, {})[0] == 200
    # The same captured block with three forged bodies, inside the 5-minute window.
    forged = [mailgun_body(block, f"mg-forged-{n}", event, mid)
              for n, (event, mid) in enumerate([("clicked", "m-mg-1"), ("complained", "m-mg-1"),
                                                ("delivered", "m-mg-2")])]
    answers = [post(secured, "/webhooks/mailgun", body, {}) for body in forged]
    assert [(status, json.loads(answer)) for status, answer in answers] == \
        [(403, {"error": "replayed token"})] * 3
    assert [r["body"] for r in await published(secured, "mailgun")] == [base64.b64encode(genuine).decode()]


def twilio_post(w: Worker, url_signed: str, params: dict[str, str], host: str | None = None) -> int:
    signed = url_signed + "".join(k + params[k] for k in sorted(params))
    signature = base64.b64encode(hmac.new(TWILIO_TOKEN.encode(), signed.encode(), hashlib.sha1).digest()).decode()
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
    if host:
        headers["Host"] = host
    request = urllib.request.Request(f"http://127.0.0.1:{w.port}/webhooks/twilio?tenant=7",
                                     data=urlencode(params).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


TWILIO_SMS = {"AccountSid": "AC0123456789abcdef0123456789abcdef", "MessageSid": "SM-int-1",
              "MessageStatus": "delivered", "To": "+84901234567"}


async def test_twilio_url_is_never_taken_from_the_host_header(half_configured):
    # A request Twilio signed for another host of ours (staging), replayed with that Host header.
    staging = twilio_post(half_configured, "http://staging.example/webhooks/twilio?tenant=7", TWILIO_SMS,
                          host="staging.example")
    direct = twilio_post(half_configured, f"http://127.0.0.1:{half_configured.port}/webhooks/twilio?tenant=7",
                         TWILIO_SMS)
    assert (staging, direct) == (403, 403)
    assert await published(half_configured, "twilio") == []
    assert "SENDTRACK_WEBHOOK_PUBLIC_URL" in half_configured.tail(400)


async def test_twilio_signature_is_checked_against_the_configured_url_only(secured):
    assert twilio_post(secured, "http://evil.example/webhooks/twilio?tenant=7", TWILIO_SMS,
                       host="evil.example") == 403
    assert twilio_post(secured, f"{PUBLIC_URL}/webhooks/twilio?tenant=7", TWILIO_SMS) == 200


async def test_token_reused_through_another_ingress_worker_is_dead_lettered_not_applied(secured):
    # Another worker's ingress does not share this one's token memory: its record of a forged body
    # reaches the adapter, which has seen the token in an earlier record of the same partition.
    timestamp, token = str(int(time.time())), "b9df1fec3ee9412eff7d3516346695f56bb02e2f0a8a4e4f61"
    block = {"timestamp": timestamp, "token": token,
             "signature": hmac.new(MAILGUN_KEY.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()}
    genuine = mailgun_body(block, "mg-genuine-2", "delivered", "m-mg-3")
    assert post(secured, "/webhooks/mailgun", genuine, {})[0] == 200
    forged = mailgun_body(block, "mg-forged-other-worker", "complained", "m-mg-3")
    record = {"provider": "mailgun", "method": "POST", "path": "/webhooks/mailgun", "query": {},
              "headers": {"content-type": "application/json"}, "body": base64.b64encode(forged).decode(),
              "received_at": int(time.time() * 1000), "url": f"{PUBLIC_URL}/webhooks/mailgun"}
    await produce(secured.topic("provider-webhooks"), [(b"mailgun", json.dumps(record).encode())])
    dead = [d for d in await consume(secured.topic("dead-letters"), 1, timeout=30)
            if "token already used" in d.get("error", "")]
    assert [json.loads(d["payload"])["body"] for d in dead] == [record["body"]]
    event_ids = {c.get("event_id") for c in await consume(secured.topic("provider-callbacks"), 1, timeout=10)}
    assert "mg-genuine-2" in event_ids and "mg-forged-other-worker" not in event_ids

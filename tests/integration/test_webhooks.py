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

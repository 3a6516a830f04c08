"""Webhooks public, readers private: the webhook-only listener serves providers and nothing else."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import Worker, free_port, produce, req
from tests.integration.test_webhooks import PUBLIC, sendgrid_event, signed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """No readers configured, the web port on loopback, webhooks also on a listener of their own."""
    w = Worker(tmp_path_factory.mktemp("listener"), "listener", sendgrid_public_key=PUBLIC,
               webhook_port=free_port(), webhook_host="127.0.0.1")
    w.start()
    yield w
    w.stop()


def call(w: Worker, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
    port = int(w.env["SENDTRACK_WEBHOOK_PORT"])
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=body if method == "POST" else None, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_a_provider_reaches_the_ingress_through_the_webhook_listener(worker):
    now = int(time.time())
    await produce(worker.topic("send-requests"), [req("m-listener", requested_at=(now - 60) * 1000)])
    body = json.dumps([sendgrid_event("delivered", 1, now, message_id="m-listener")]).encode()
    status, answer = call(worker, "POST", "/webhooks/sendgrid", body,
                          {"Content-Type": "application/json", **signed(body, now)})
    assert (status, json.loads(answer)) == (200, {"status": "accepted"})
    assert call(worker, "POST", "/webhooks/sendgrid", body, {"Content-Type": "application/json"})[0] == 401
    worker.wait_for("SELECT current_status FROM sendtrack.messages WHERE message_id = 'm-listener'",
                    [["delivered"]], timeout=60)


@pytest.mark.parametrize("path", ["/query?q=SELECT+recipient+FROM+sendtrack.messages", "/reports/funnel",
                                  "/reports/customer?customer=cus-1", "/dashboard", "/metrics", "/health",
                                  "/table/messages/", "/router/messages/m-listener/", "/"])
def test_nothing_but_webhooks_answers_on_it(worker, path):
    """Even from loopback (where the web port would serve readers without credentials)."""
    status, body = call(worker, "GET", path, headers={"Host": "localhost"})
    assert status == 404, (path, status, body)
    assert b"example" not in body and b"cus-1" not in body
    # The same request on the web port is a reader's, from loopback: served there.
    if path.startswith("/query"):
        assert worker.request("GET", "/query", q="SELECT 1")[0] == 200

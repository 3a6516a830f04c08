"""Erasing a customer through a running worker (POST /admin/erase, `sendtrack erase`): admins only,
and afterwards no ClickHouse table holds the customer's id or recipients, while the funnels and the
other customers' rows are unchanged (the search itself: tests/unit/test_erasure.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaConsumer

from tests.integration.conftest import BROKER, ROOT, Worker, cb, produce, req
from tests.integration.test_reliability import table_state

pytestmark = pytest.mark.integration

ADMIN = ("dpo", "erase-Me-7")
READER = ("analyst", "read-Only-3")


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode(),
            "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("erase"), "erase", readers=":".join(READER), admins=":".join(ADMIN))
    w.start()
    records = []
    for i in range(3):
        records.append(req(f"al-{i}", customer_id="cus-alice", recipient="alice@gmail.com"))
        records.append(req(f"bo-{i}", customer_id="cus-bob", recipient="bob@gmail.com"))
    # A Messenger message: the engine indexes its recipient (a page-scoped id) for read receipts.
    records.append(req("al-m", action="messenger", provider="messenger", customer_id="cus-alice",
                       recipient="psid-alice-42"))
    asyncio.run(produce(w.topic("send-requests"), records))
    # Callbacks with the provider's id too: the engine keeps provider id -> message id.
    asyncio.run(produce(w.topic("provider-callbacks"), [
        cb(f"{who}-{i}", f"d-{who}-{i}", "delivered", provider="sendgrid", provider_message_id=f"sg-{who}-{i}")
        for who in ("al", "bo") for i in range(3)]))
    w.wait_for("SELECT count() FROM sendtrack.messages WHERE current_status = 'delivered'", [[6]])
    w.wait_for("SELECT count() FROM sendtrack.messages", [[7]])
    yield w
    w.stop()


def customers(w: Worker) -> list:
    return w.sql("SELECT customer_id, recipient, count() FROM sendtrack.messages GROUP BY ALL ORDER BY ALL")


def test_erasure_is_refused_without_an_admin_s_credentials(worker):
    before = customers(worker)
    for headers in ({"Authorization": "Basic", "Content-Type": "application/json"}, basic(*READER),
                    basic(ADMIN[0], "wrong")):
        status, body = worker.request("POST", "/admin/erase", headers=headers, customer="cus-alice")
        assert status == 401 and "rows" not in body and "erased" not in body, (headers, status, body)
    status, body = worker.request("POST", "/admin/erase", headers={**basic(*ADMIN), "Sec-Fetch-Site": "cross-site"},
                                  customer="cus-alice")
    assert status == 403, body
    status, _ = worker.request("GET", "/admin/erase", headers=basic(*ADMIN), customer="cus-alice")
    assert status == 405  # a link or an image cannot erase
    form = {**basic(*ADMIN), "Content-Type": "application/x-www-form-urlencoded"}
    assert worker.request("POST", "/admin/erase", headers=form, customer="cus-alice")[0] == 415  # nor a form
    assert worker.request("POST", "/admin/erase", headers=basic(*ADMIN))[0] == 400  # no customer
    assert customers(worker) == before


def test_an_admin_erases_a_customer_and_the_counts_stay(worker):
    funnel = worker.sql("SELECT * FROM sendtrack.funnel_daily ORDER BY ALL")
    current = worker.sql("SELECT * FROM sendtrack.current_status_daily ORDER BY ALL")

    holding = "SELECT count() FROM sendtrack.{} WHERE position(toString(tuple(*)), 'alice') > 0"
    assert worker.sql(holding.format("status_changes_raw"))[0][0] >= 6  # the search sees her rows

    status, body = worker.request("POST", "/admin/erase", headers=basic(*ADMIN), customer="cus-alice")
    assert status == 200, body
    assert body["erased"]["clickhouse"]["messages"] == 4
    assert body["erased"]["engine_state"]["messages"] == 4
    assert body["erased"]["engine_state"]["applied_before_clickhouse"] is True
    assert any("status-changes" in item["where"] for item in body["not_erased"])

    assert customers(worker) == [["", "", 4], ["cus-bob", "bob@gmail.com", 3]]
    for table in ("status_changes_raw", "messages_by_workspace", "engagement_events_raw", "dead_letters_raw"):
        assert worker.sql(holding.format(table)) == [[0]], table
    assert worker.sql("SELECT * FROM sendtrack.funnel_daily ORDER BY ALL") == funnel
    assert worker.sql("SELECT * FROM sendtrack.current_status_daily ORDER BY ALL") == current
    # The worker's log names the erased customer by a digest only.
    assert "cus-alice" not in worker.log_path.read_text(errors="replace")


def test_sendtrack_erase_goes_through_the_running_worker(worker):
    env = {**worker.env, "SENDTRACK_ADMINS": ":".join(ADMIN)}
    done = subprocess.run([sys.executable, "-m", "sendtrack.cli", "erase", "--customer", "cus-bob"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["erased"]["clickhouse"]["messages"] == 3
    assert customers(worker) == [["", "", 7]]

    env["SENDTRACK_ADMINS"] = "dpo:not-the-password"
    refused = subprocess.run([sys.executable, "-m", "sendtrack.cli", "erase", "--customer", "cus-bob"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "wrong admin name or password" in refused.stderr


def test_the_engine_forgets_the_customers_and_drops_their_late_inputs(worker):
    """After the two erasures above: the engine replaced the erased messages' states; a late
    callback for one of them changes nothing; then, with the worker stopped, no key or value of
    any table's RocksDB, and no latest record of any changelog (but a tombstone's key), holds the
    customers' ids or recipients."""
    deadline = time.monotonic() + 60
    while worker.metrics().get("sendtrack_erased_messages_total", 0) < 7 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker.metrics().get("sendtrack_erased_messages_total", 0) == 7  # alice's 4, then bob's 3
    # Late callbacks: one with the message id, one with only the provider's id (the mapping, which
    # names no one, still routes it to the message, whose marker drops it).
    asyncio.run(produce(worker.topic("provider-callbacks"), [
        cb("al-0", "late-open", "opened"),
        cb(None, "late-click", "clicked", provider="sendgrid", provider_message_id="sg-al-1", url="https://x/alice")]))
    deadline = time.monotonic() + 60
    while worker.metrics().get("sendtrack_erased_inputs_total", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker.metrics().get("sendtrack_erased_inputs_total", 0) == 2
    assert worker.sql("SELECT count() FROM sendtrack.status_changes_raw WHERE message_id IN ('al-0', 'al-1') "
                      "AND status IN ('opened', 'clicked')") == [[0]]

    changelogs = asyncio.run(latest_changelog_values(worker))
    worker.stop()
    state = table_state(worker.data_dir)
    assert sum(len(v) for v in state.values()) > 0
    needles = (b"alice", b"cus-bob", b"bob@gmail.com")
    for db, items in state.items():
        for k, v in items.items():
            assert not any(n in k or n in v for n in needles), (db, k, v)
    assert changelogs, "no changelog records read"
    for (topic, key), value in changelogs.items():
        # A deleted entry's key (a Messenger recipient's page-scoped id) stays in its tombstone until
        # compaction and delete.retention.ms remove it (docs/retention.md); nothing else does.
        if value is not None:
            assert not any(n in key or n in value for n in needles), (topic, key, value)


async def latest_changelog_values(w: Worker) -> dict:
    """The latest value of every key of every table's changelog topic (None: a tombstone)."""
    app_id = w.env["SENDTRACK_APP_ID"]
    consumer = AIOKafkaConsumer(bootstrap_servers=BROKER, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith(app_id) and t.endswith("-changelog"))
        assert topics, "no changelog topics"
        consumer.subscribe(topics)
        latest: dict = {}
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=1000)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for r in records:
                    latest[(r.topic, r.key)] = r.value
        return latest
    finally:
        await consumer.stop()

"""Erasing a customer through a running worker (POST /admin/erase, `sendtrack erase`): admins only,
and afterwards no ClickHouse table holds the customer's id or recipients, while the funnels and the
other customers' rows are unchanged (the search itself: tests/unit/test_erasure.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT, Worker, cb, produce, req

pytestmark = pytest.mark.integration

ADMIN = ("dpo", "erase-Me-7")
READER = ("analyst", "read-Only-3")


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("erase"), "erase", readers=":".join(READER), admins=":".join(ADMIN))
    w.start()
    records = []
    for i in range(3):
        records.append(req(f"al-{i}", customer_id="cus-alice", recipient="alice@gmail.com"))
        records.append(req(f"bo-{i}", customer_id="cus-bob", recipient="bob@gmail.com"))
    asyncio.run(produce(w.topic("send-requests"), records))
    asyncio.run(produce(w.topic("provider-callbacks"), [cb(f"{who}-{i}", f"d-{who}-{i}", "delivered")
                                                        for who in ("al", "bo") for i in range(3)]))
    w.wait_for("SELECT count() FROM sendtrack.messages WHERE current_status = 'delivered'", [[6]])
    yield w
    w.stop()


def customers(w: Worker) -> list:
    return w.sql("SELECT customer_id, recipient, count() FROM sendtrack.messages GROUP BY ALL ORDER BY ALL")


def test_erasure_is_refused_without_an_admin_s_credentials(worker):
    before = customers(worker)
    for headers in ({"Authorization": "Basic"}, basic(*READER), basic(ADMIN[0], "wrong")):
        status, body = worker.request("POST", "/admin/erase", headers=headers, customer="cus-alice")
        assert status == 401 and "rows" not in body and "erased" not in body, (headers, status, body)
    status, body = worker.request("POST", "/admin/erase", headers={**basic(*ADMIN), "Sec-Fetch-Site": "cross-site"},
                                  customer="cus-alice")
    assert status == 403, body
    status, _ = worker.request("GET", "/admin/erase", headers=basic(*ADMIN), customer="cus-alice")
    assert status == 405  # a link or an image cannot erase
    assert worker.request("POST", "/admin/erase", headers=basic(*ADMIN))[0] == 400  # no customer
    assert customers(worker) == before


def test_an_admin_erases_a_customer_and_the_counts_stay(worker):
    funnel = worker.sql("SELECT * FROM sendtrack.funnel_daily ORDER BY ALL")
    current = worker.sql("SELECT * FROM sendtrack.current_status_daily ORDER BY ALL")

    holding = "SELECT count() FROM sendtrack.{} WHERE position(toString(tuple(*)), 'alice') > 0"
    assert worker.sql(holding.format("status_changes_raw"))[0][0] >= 6  # the search sees her rows

    status, body = worker.request("POST", "/admin/erase", headers=basic(*ADMIN), customer="cus-alice")
    assert status == 200, body
    assert body["erased"]["clickhouse"]["messages"] == 3
    assert any("status-changes" in item["where"] for item in body["not_erased"])

    assert customers(worker) == [["", "", 3], ["cus-bob", "bob@gmail.com", 3]]
    for table in ("status_changes_raw", "messages_agg", "engagement_events_raw", "dead_letters_raw"):
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
    assert customers(worker) == [["", "", 6]]

    env["SENDTRACK_ADMINS"] = "dpo:not-the-password"
    refused = subprocess.run([sys.executable, "-m", "sendtrack.cli", "erase", "--customer", "cus-bob"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "wrong admin name or password" in refused.stderr

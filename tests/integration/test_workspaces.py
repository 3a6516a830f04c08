"""Workspaces through a running worker (issue 17): two shops' messages side by side (and one of a
producer that names no workspace). A reader scoped to one shop sees only its rows in the report
API, `/query`, the ClickHouse HTTP interface (clickhouse-connect) and the dashboard (chromium); an
admin erases one shop's customer and leaves the other shop's customer of the same id alone."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from tests.integration import browser
from tests.integration.conftest import ROOT, Worker, cb, free_port, produce, req
from tests.integration.test_clickhouse_http import _wait_for_port
from tests.integration.test_dashboard import ARTIFACTS, run, tiles

pytestmark = pytest.mark.integration

EVERY = ("ana", "pw-ana-1")  # reads every workspace
HANOI = ("hoa", "pw-hoa-2")  # reads shop-hanoi only
SAIGON = ("sang", "pw-sang-3")  # reads shop-saigon only
ADMIN = ("dpo", "pw-dpo-4")
DAY = 1_780_000_000_000


def _send(mid: str, workspace: str, customer: str, action: str = "email") -> tuple[bytes, bytes]:
    extra = {"workspace_id": workspace} if workspace else {}
    return req(mid, action=action, provider="sendgrid" if action == "email" else "esms", customer_id=customer,
               recipient=f"{customer}-{workspace or 'none'}@gmail.com", requested_at=DAY, **extra)


# The same customer id, cus-1, in both shops: two different people.
REQUESTS = [
    _send("h1", "shop-hanoi", "cus-1"), _send("h2", "shop-hanoi", "cus-2"), _send("h3", "shop-hanoi", "cus-3"),
    _send("s1", "shop-saigon", "cus-1"), _send("s2", "shop-saigon", "cus-9", action="sms"),
    _send("n1", "", "cus-5"),
]
CALLBACKS = [
    cb("h1", "h1-d", "delivered"), cb("h1", "h1-o", "opened", at=DAY + 60_000),
    cb("h2", "h2-b", "bounced", reason_code="550 5.1.1", reason="no such mailbox", bounce_type="hard"),
    cb("s1", "s1-d", "delivered"), cb("s2", "s2-d", "delivered"), cb("n1", "n1-d", "delivered"),
]


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode(),
            "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("workspaces"), "workspaces",
               readers=",".join(":".join(r) for r in (EVERY, HANOI, SAIGON)),
               reader_workspaces=f"{HANOI[0]}=shop-hanoi,{SAIGON[0]}=shop-saigon", admins=":".join(ADMIN),
               clickhouse_http_port=free_port())
    w.ch_port = int(w.env["SENDTRACK_CLICKHOUSE_HTTP_PORT"])
    try:
        w.start()
        run(produce(w.topic("send-requests"), REQUESTS + [(None, b"{not json")]))
        run(produce(w.topic("provider-callbacks"), CALLBACKS))
        w.wait_for("SELECT workspace_id, count() FROM sendtrack.messages GROUP BY ALL ORDER BY ALL",
                   [["", 1], ["shop-hanoi", 3], ["shop-saigon", 2]])
        w.wait_for("SELECT count() FROM sendtrack.status_changes WHERE status IN ('delivered', 'bounced', 'opened')",
                   [[6]])
        w.wait_for("SELECT count() FROM sendtrack.dead_letters", [[1]])
        _wait_for_port(w.ch_port)
        yield w
    finally:
        w.stop()


def as_(w: Worker, reader: tuple[str, str], path: str, **params: Any) -> tuple[int, Any]:
    return w.request("GET", path, headers=basic(*reader), **params)


def sent(report: dict) -> int:
    return sum(row[report["columns"].index("sent")] for row in report["rows"])


def test_the_report_api_narrows_to_a_workspace(worker):
    status, every = as_(worker, EVERY, "/reports/funnel")
    assert status == 200 and sent(every) == 6
    status, hanoi = as_(worker, EVERY, "/reports/funnel", workspace="shop-hanoi")
    assert status == 200 and sent(hanoi) == 3
    status, none = as_(worker, EVERY, "/reports/funnel", workspace="")
    assert status == 200 and sent(none) == 1  # '' is the workspace of requests that named none
    status, failures = as_(worker, EVERY, "/reports/failures", workspace="shop-saigon")
    assert status == 200 and failures["rows"] == []


def test_a_scoped_reader_gets_its_workspace_in_every_report(worker):
    for name in ("funnel", "status", "failures", "latency", "trend", "recipients", "unconfirmed"):
        status, mine = as_(worker, HANOI, f"/reports/{name}")
        status_all, asked = as_(worker, EVERY, f"/reports/{name}", workspace="shop-hanoi")
        assert status == status_all == 200, (name, mine, asked)
        assert mine == asked, name
    status, customer = as_(worker, HANOI, "/reports/customer", customer="cus-1")
    assert status == 200 and [r[0] for r in customer["rows"]] == ["h1"]  # not saigon's cus-1
    status, body = as_(worker, HANOI, "/reports/funnel", workspace="shop-saigon")
    assert status == 403 and "shop-hanoi" in body["error"] and "rows" not in body
    status, body = as_(worker, HANOI, "/reports/dead_letters")
    assert status == 403 and "no workspace" in body["error"]


def test_reading_without_credentials_is_refused_with_a_workspace_too(worker):
    for path, params in (("/reports/funnel", {"workspace": "shop-hanoi"}), ("/query", {"q": "SELECT 1"}),
                         ("/dashboard/api/choices", {"workspace": "shop-hanoi"})):
        status, body = worker.request("GET", path, headers={"Authorization": "Basic"}, **params)
        assert status == 401 and "rows" not in body, (path, status, body)


def test_sql_of_a_scoped_reader_sees_its_workspace_only(worker):
    status, body = as_(worker, SAIGON, "/query", q="SELECT workspace_id, count() FROM sendtrack.messages GROUP BY ALL")
    assert status == 200 and body["rows"] == [["shop-saigon", 2]]
    status, body = as_(worker, SAIGON, "/query", q="SELECT count() FROM sendtrack.status_changes_raw "
                                                   "WHERE workspace_id != 'shop-saigon'")
    assert status == 200 and body["rows"] == [[0]]
    status, body = as_(worker, SAIGON, "/query", q="SELECT count() FROM sendtrack.dead_letters")
    assert status == 200 and body["rows"] == [[0]]
    for attack in ("SELECT count() FROM merge('sendtrack', '^status_changes_raw$')",
                   "SELECT query FROM system.processes",
                   "SELECT count() FROM sendtrack.messages SETTINGS additional_table_filters = {}"):
        status, body = as_(worker, SAIGON, "/query", q=attack)
        assert status == 400 and body["code"] in (164, 497) and "rows" not in body, (attack, body)


def test_clickhouse_connect_as_a_scoped_reader(worker):
    mine = clickhouse_connect.get_client(host="127.0.0.1", port=worker.ch_port, username=HANOI[0],
                                         password=HANOI[1])
    every = clickhouse_connect.get_client(host="127.0.0.1", port=worker.ch_port, username=EVERY[0],
                                          password=EVERY[1])
    sql = ("SELECT workspace_id, status, toUInt64(sum(messages)) FROM sendtrack.funnel_daily "
           "GROUP BY ALL ORDER BY ALL")
    assert mine.query(sql).result_rows == [r for r in every.query(sql).result_rows if r[0] == "shop-hanoi"]
    assert {r[0] for r in every.query(sql).result_rows} == {"", "shop-hanoi", "shop-saigon"}
    with pytest.raises(DatabaseError) as refused:
        mine.query("SELECT * FROM merge('sendtrack', '.*')")
    assert "497" in str(refused.value)
    # What clients' catalogs ask still works.
    assert ("messages",) in mine.query("SELECT name FROM system.tables WHERE database = 'sendtrack'").result_rows


def test_the_dashboard_of_a_scoped_reader(worker):
    if browser.missing():
        pytest.fail(f"the dashboard tests need a browser: {browser.missing()}")
    with browser.chromium() as chromium:
        page = browser.open_dashboard(chromium, worker.port, HANOI)
        field = page.locator("#filters [name=workspace]")
        assert field.input_value() == "shop-hanoi" and field.is_disabled()
        shown = {k: int(v) for k, v in tiles(page).items() if not k.endswith("rate")}
        assert shown == {"messages": 3, "delivered": 1, "opened": 1, "clicked": 0, "failed": 1}
        assert "no workspace" in page.locator("#dead_letters .body").inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-scoped-reader.png"), full_page=True)

        page = browser.open_dashboard(chromium, worker.port, EVERY)
        assert int(tiles(page)["messages"]) == 6
        options = page.eval_on_selector_all("#workspace-choices option", "os => os.map(o => o.value)")
        assert options == ["shop-hanoi", "shop-saigon"]
        before = int(page.evaluate("document.body.dataset.generation"))
        page.fill("#filters [name=workspace]", "shop-saigon")
        page.click("#filters button[type=submit]")
        browser.wait_loaded(page, after=before)
        assert "workspace=shop-saigon" in page.url
        assert {k: int(v) for k, v in tiles(page).items() if not k.endswith("rate")} == \
            {"messages": 2, "delivered": 2, "opened": 0, "clicked": 0, "failed": 0}
        page.screenshot(path=str(ARTIFACTS / "dashboard-workspace-filter.png"), full_page=True)


def test_erasing_a_customer_of_one_workspace_leaves_the_same_id_in_another(worker):
    holders = "SELECT workspace_id, message_id, recipient FROM sendtrack.messages WHERE customer_id = 'cus-1' ORDER BY ALL"
    assert worker.sql(holders) == [["shop-hanoi", "h1", "cus-1-shop-hanoi@gmail.com"],
                                   ["shop-saigon", "s1", "cus-1-shop-saigon@gmail.com"]]
    funnel = worker.sql("SELECT * FROM sendtrack.funnel_daily ORDER BY ALL")
    env = {**worker.env, "SENDTRACK_ADMINS": ":".join(ADMIN)}
    done = subprocess.run([sys.executable, "-m", "sendtrack.cli", "erase", "--customer", "cus-1",
                           "--workspace", "shop-hanoi"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    erased = json.loads(done.stdout)["erased"]["clickhouse"]
    assert erased["workspace"] == "shop-hanoi" and erased["messages"] == 1
    assert worker.sql(holders) == [["shop-saigon", "s1", "cus-1-shop-saigon@gmail.com"]]
    assert worker.sql("SELECT count() FROM sendtrack.status_changes_raw WHERE position(recipient, "
                      "'cus-1-shop-hanoi') > 0 OR (message_id = 'h1' AND customer_id != '')") == [[0]]
    assert worker.sql("SELECT * FROM sendtrack.funnel_daily ORDER BY ALL") == funnel

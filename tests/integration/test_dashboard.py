"""The dashboard in a real browser: the numbers it shows are the views' numbers, its filters narrow
them, the customer lookup shows each message's timeline, an empty database is an empty state, and
nothing is served without a reader's credentials."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.integration import browser
from tests.integration.conftest import ROOT, Worker, cb, produce, req

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("SENDTRACK_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
READER = ("ana", "pw-ana-1")
DAY1 = 1_780_000_000_000  # 2026-05-28 (UTC)
DAY2 = DAY1 + 86_400_000  # 2026-05-29


def _send(mid: str, customer: str, campaign: str, at: int, action: str = "email", provider: str = "sendgrid",
          step: str = "s1") -> tuple[bytes, bytes]:
    flow = {"camp-a": "flow-a", "camp-b": "flow-b"}.get(campaign, "flow-x")
    return req(mid, action=action, provider=provider, customer_id=customer, campaign_id=campaign, flow_id=flow,
               step_id=step, requested_at=at)


# Two campaigns over two send days; cus-7 has a message in each.
REQUESTS = [
    _send("e1", "cus-7", "camp-a", DAY1),
    _send("e2", "cus-1", "camp-a", DAY1),
    _send("e3", "cus-2", "camp-a", DAY1, step="s2"),
    _send("e4", "cus-3", "camp-a", DAY2, step="s2"),
    _send("s1", "cus-7", "camp-b", DAY2, action="sms", provider="esms"),
    _send("s2", "cus-4", "camp-b", DAY2, action="sms", provider="esms"),
    _send("z1", "cus-5", "camp-b", DAY2, action="zalo_oa", provider="zalo", step="s2"),
]
CALLBACKS = [
    cb("e1", "e1-d", "delivered", at=DAY1 + 1_000), cb("e1", "e1-o", "opened", at=DAY1 + 60_000),
    cb("e1", "e1-c", "clicked", at=DAY1 + 120_000),
    cb("e2", "e2-d", "delivered", at=DAY1 + 2_000),
    cb("e3", "e3-f", "failed", at=DAY1 + 1_000, reason_code="550 5.1.1", reason="mailbox does not exist"),
    cb("s1", "s1-d", "delivered", at=DAY2 + 3_000),
    cb("s2", "s2-f", "failed", at=DAY2 + 2_000, reason_code="99", reason="Unknown error from the carrier"),
    cb("z1", "z1-d", "delivered", at=DAY2 + 1_000), cb("z1", "z1-o", "opened", at=DAY2 + 30_000),
]


def run(coro: Any) -> Any:
    """Run a coroutine to its end, also from a test that drives the browser (Playwright's sync API
    holds this thread's event loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def chromium():
    if browser.missing():
        pytest.fail(f"the dashboard tests need a browser: {browser.missing()}")
    with browser.chromium() as b:
        yield b


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A worker with a reader configured and the scenario above in ClickHouse."""
    w = Worker(tmp_path_factory.mktemp("dashboard"), "dashboard", readers=f"{READER[0]}:{READER[1]}")
    w.start()
    run(produce(w.topic("send-requests"), REQUESTS + [(None, b"{not json")]))
    run(produce(w.topic("provider-callbacks"), CALLBACKS))
    w.wait_for("SELECT count() FROM sendtrack.messages", [[7]])
    w.wait_for("SELECT toUInt64(sum(messages)) FROM sendtrack.funnel_daily "
               "WHERE status IN ('delivered', 'opened', 'clicked', 'failed')", [[9]])
    w.wait_for("SELECT count() FROM sendtrack.dead_letters", [[1]])
    yield w
    w.stop()


@pytest.fixture(scope="module")
def empty_worker(tmp_path_factory):
    """A worker with a reader configured and nothing sent."""
    w = Worker(tmp_path_factory.mktemp("dashboard-empty"), "dashboard-empty", readers=f"{READER[0]}:{READER[1]}")
    w.start()
    yield w
    w.stop()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def tiles(page: Any) -> dict[str, str]:
    return page.eval_on_selector_all("[data-tile]", "els => Object.fromEntries(els.map(e => [e.dataset.tile, e.dataset.value]))")


def apply(page: Any, **fields: str) -> None:
    """Type filters into the form, press Apply, wait for the redrawn page."""
    before = int(page.evaluate("document.body.dataset.generation"))
    for name, value in fields.items():
        selector = f"#filters [name={name}]"
        if name in ("by", "lang"):
            page.select_option(selector, value)
        else:
            page.fill(selector, value)
    page.click("#filters button[type=submit]")
    browser.wait_loaded(page, after=before)


def lookup(page: Any, customer: str) -> None:
    before = int(page.evaluate("document.body.dataset.generation"))
    page.fill("#customer-form [name=customer]", customer)
    page.click("#customer-form button[type=submit]")
    browser.wait_loaded(page, after=before)


def same_as_report(shown: list[dict[str, str]], report: dict, key: str) -> None:
    """Every cell the page shows equals the report API's value (numbers and rates exactly)."""
    expected = {r[report["columns"].index(key)]: dict(zip(report["columns"], r)) for r in report["rows"]}
    assert sorted(row[key] for row in shown) == sorted(expected), (shown, report)
    for row in shown:
        want = expected[row[key]]
        for col, value in row.items():
            if isinstance(want[col], (int, float)) and not isinstance(want[col], bool):
                assert float(value) == pytest.approx(want[col]), (row[key], col, value, want[col])
            elif want[col] is None:
                assert value in ("", "–"), (row[key], col, value)


def funnel_view(w: Worker, where: str = "1") -> dict[tuple[str, str], int]:
    rows = w.sql(f"SELECT action, status, toUInt64(sum(messages)) FROM sendtrack.funnel_daily WHERE {where} "
                 "GROUP BY action, status")
    return {(a, s): n for a, s, n in rows}


def test_the_dashboard_shows_the_views_numbers(worker, chromium):
    page = browser.open_dashboard(chromium, worker.port, READER)
    shot(page, "all")
    assert page.locator("[data-testid=error]").count() == 0
    view = funnel_view(worker)
    funnel = browser.table(page, "funnel-table")
    same_as_report(funnel, worker.get("/reports/funnel"), "action")
    for row in funnel:
        for status in ("sent", "delivered", "opened", "clicked", "failed"):
            if status in row:
                assert int(row[status]) == view.get((row["action"], status), 0), (row, status)
    # Opens by people (not machines) come from engagement_daily.
    people = dict(worker.sql("SELECT action, toUInt64(sum(messages)) FROM sendtrack.engagement_daily "
                             "WHERE kind = 'opened_by_person' GROUP BY action"))
    assert people, "the scenario has opens by people"
    for row in funnel:
        if "opened_by_person" in row:
            assert int(row["opened_by_person"]) == people.get(row["action"], 0), row
    # The scenario's own numbers, as a person would check them on camp-a and camp-b.
    by_action = {r["action"]: r for r in funnel}
    assert int(by_action["sms"]["delivered"]) == 1 and int(by_action["zalo_oa"]["opened"]) == 1
    assert float(by_action["sms"]["delivery_rate"]) == 0.5

    t = tiles(page)
    assert int(t["messages"]) == sum(int(r["messages"]) for r in funnel)
    for status in ("delivered", "opened", "clicked", "failed"):
        assert int(t[status]) == sum(n for (_, s), n in view.items() if s == status), status

    trend = browser.table(page, "trend-table")
    days = worker.sql("SELECT toString(day), status, toUInt64(sum(messages)) FROM sendtrack.funnel_daily "
                      "GROUP BY day, status")
    assert [r["day"] for r in trend] == sorted({day for day, _, _ in days})
    same_as_report(trend, worker.get("/reports/trend"), "day")
    for day, status, n in days:
        if status in ("sent", "delivered", "opened", "clicked", "failed"):
            assert int(next(r for r in trend if r["day"] == day)[status]) == n, (day, status)

    status = browser.table(page, "status-table")
    shares = worker.sql("SELECT action, current_status, toUInt64(sum(messages)) FROM sendtrack.current_status_daily "
                        "GROUP BY action, current_status")
    assert sorted((r["action"], r["current_status"], int(r["messages"])) for r in status) == sorted(map(tuple, shares))

    failures = browser.table(page, "failures-table")
    reasons = worker.sql("SELECT reason_code, toUInt64(sum(messages)) FROM sendtrack.failure_reasons GROUP BY reason_code")
    assert sorted((r["reason_code"], int(r["messages"])) for r in failures) == sorted(map(tuple, reasons)) \
        == [("550 5.1.1", 1), ("99", 1)]

    dead = browser.table(page, "dead_letters-table")
    kinds = worker.sql("SELECT error_type, count() FROM sendtrack.dead_letters GROUP BY error_type")
    assert sorted((r["error_type"], int(r["records"])) for r in dead) == sorted(map(tuple, kinds))
    same_as_report(dead, worker.get("/reports/dead_letters"), "error_type")

    same_as_report(browser.table(page, "latency-table"), worker.get("/reports/latency"), "action")


def test_filters_narrow_the_numbers(worker, chromium):
    page = browser.open_dashboard(chromium, worker.port, READER)
    apply(page, campaign="camp-b")
    assert "campaign=camp-b" in page.url  # a filtered view is a link to share
    funnel = browser.table(page, "funnel-table")
    same_as_report(funnel, worker.get("/reports/funnel", campaign="camp-b"), "action")
    assert {r["action"] for r in funnel} == {"sms", "zalo_oa"}
    assert {k: int(v) for k, v in tiles(page).items() if not k.endswith("rate")} == \
        {"messages": 3, "delivered": 2, "opened": 1, "clicked": 0, "failed": 1}
    shot(page, "camp-b")

    apply(page, campaign="", action="email", by="step")
    funnel = browser.table(page, "funnel-table")
    same_as_report(funnel, worker.get("/reports/funnel", action="email", by="step"), "step")
    assert {r["step"]: int(r["sent"]) for r in funnel} == {"s1": 2, "s2": 2}

    apply(page, action="", by="action", campaign="camp-a", since="2026-05-29")
    assert int(tiles(page)["messages"]) == 1  # e4
    assert [r["day"] for r in browser.table(page, "trend-table")] == ["2026-05-29"]

    # funnel_daily has no provider column: the funnel says so and stays whole; failure_reasons has one.
    apply(page, campaign="", since="", provider="esms")
    notes = page.locator("#funnel [data-testid=unapplied]").inner_text()
    assert "provider" in notes and "funnel_daily" in notes
    assert int(tiles(page)["messages"]) == sum(r[1] for r in worker.get("/reports/funnel")["rows"])
    assert [(r["provider"], r["reason_code"]) for r in browser.table(page, "failures-table")] == [("esms", "99")]
    assert page.locator("#failures [data-testid=unapplied]").count() == 0
    latency = browser.table(page, "latency-table")
    assert [r["action"] for r in latency] == ["sms"]
    shot(page, "provider")


def test_the_customer_lookup_shows_each_messages_timeline(worker, chromium):
    page = browser.open_dashboard(chromium, worker.port, READER)
    lookup(page, "cus-7")
    rows = browser.table(page, "customer-table")
    assert [(r["message_id"], r["campaign_id"]) for r in rows] == [("e1", "camp-a"), ("s1", "camp-b")]
    report = worker.get("/reports/customer", customer="cus-7")
    timelines = {r[0]: r[report["columns"].index("timeline")] for r in report["rows"]}
    for mid in ("e1", "s1"):
        chips = page.locator(f"[data-testid=customer-table] tr:has(td[data-col=message_id]:text-is('{mid}')) .chip")
        shown = [c.inner_text().replace("\n", " ") for c in chips.all()]
        assert shown == timelines[mid].split(" > "), (mid, shown, timelines[mid])
    e1 = [c.split(" ")[0].rstrip("*") for c in timelines["e1"].split(" > ")]
    assert [s for s in e1 if s in ("sent", "delivered", "opened", "clicked")] == ["sent", "delivered", "opened", "clicked"]
    assert rows[0]["current_status"] == "clicked" and rows[1]["current_status"] == "delivered"
    shot(page, "customer")

    apply(page, campaign="camp-a")  # the Customer Activity report seen from one campaign
    assert [r["message_id"] for r in browser.table(page, "customer-table")] == ["e1"]
    apply(page, campaign="", flow="flow-b")  # and from one flow
    assert [r["message_id"] for r in browser.table(page, "customer-table")] == ["s1"]


def test_vietnamese_labels(worker, chromium):
    page = browser.open_dashboard(chromium, worker.port, READER, "refresh=0&lang=vi&customer=cus-7")
    shot(page, "vi")
    assert page.locator("html").get_attribute("lang") == "vi"
    assert page.locator("#funnel th", has_text="Đã gửi").count() == 1
    assert page.locator("#funnel th", has_text="Đã nhận").count() == 1
    assert "Đã nhận" in page.locator(".tiles").text_content()  # (shown in capitals by the CSS)
    assert "Đã nhận" in [r["current_status"] for r in browser.table(page, "status-table")]
    assert page.locator("#customer [data-i18n]").inner_text() == "Báo cáo Hoạt động khách hàng"
    assert "Đã click" in [r["current_status"] for r in browser.table(page, "customer-table")]


def test_the_page_fills_itself_as_data_arrives(worker, chromium):
    page = browser.open_dashboard(chromium, worker.port, READER, "refresh=1&campaign=camp-live")
    assert page.locator("#funnel [data-testid=empty]").count() == 1
    # A voucher in a campaign of its own: the other tests' numbers stay as they are, in any order.
    run(produce(worker.topic("send-requests"), [_send("live-1", "cus-live", "camp-live", DAY2, action="voucher",
                                                      provider="vouchers", step="s-live")]))
    run(produce(worker.topic("provider-callbacks"), [cb("live-1", "live-1-d", "delivered", at=DAY2 + 1_000)]))
    page.wait_for_function("document.querySelector('[data-tile=delivered]').dataset.value === '1'", timeout=60_000)
    assert tiles(page)["messages"] == "1"
    assert page.locator("#funnel [data-testid=empty]").count() == 0
    assert browser.table(page, "funnel-table")[0]["action"] == "voucher"


def test_an_empty_database_shows_an_empty_state(empty_worker, chromium):
    page = browser.open_dashboard(chromium, empty_worker.port, READER)
    shot(page, "empty")
    assert page.locator("[data-testid=error]").count() == 0
    for panel in ("funnel", "trend", "status", "failures", "health", "recipients", "latency", "dead_letters"):
        assert page.locator(f"#{panel} [data-testid=empty]").count() == 1, panel
    assert {k: v for k, v in tiles(page).items() if not k.endswith("rate")} == \
        {"messages": "0", "delivered": "0", "opened": "0", "clicked": "0", "failed": "0"}
    assert "No messages yet" in page.locator("#funnel").inner_text()


def fetch(port: int, path: str, auth: Optional[tuple[str, str]] = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/api/funnel", "/dashboard/api/customer?customer=cus-7",
                                  "/dashboard/api/choices", "/dashboard/static/dashboard.js",
                                  "/dashboard/static/plotly.min.js"])
def test_nothing_is_served_without_credentials(worker, path):
    for auth in (None, ("ana", "wrong"), ("nobody", READER[1])):
        status, headers, body = fetch(worker.port, path, auth)
        assert status == 401, (path, auth, status)
        assert headers.get("WWW-Authenticate") == 'Basic realm="sendtrack"'
        assert b"cus-7" not in body and b"camp-a" not in body
    status, _, body = fetch(worker.port, path, READER)
    assert status == 200 and body


def test_the_browser_asks_for_credentials(worker, chromium):
    from playwright.sync_api import Error as PlaywrightError

    context = chromium.new_context()  # a browser that knows no credentials
    try:
        page = context.new_page()
        challenges = []
        page.on("response", lambda r: challenges.append((r.status, r.headers.get("www-authenticate"))))
        try:
            page.goto(f"http://127.0.0.1:{worker.port}/dashboard")
        except PlaywrightError as exc:  # chromium gives up when nobody types credentials
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
        assert challenges == [(401, 'Basic realm="sendtrack"')]  # and nothing after it: no page, no data
    finally:
        context.close()
    started = time.monotonic()
    page = browser.open_dashboard(chromium, worker.port, READER)  # answers the challenge
    assert time.monotonic() - started < 30
    assert page.locator("[data-testid=error]").count() == 0
    assert browser.table(page, "funnel-table")


@pytest.fixture(scope="module")
def health_worker(tmp_path_factory):
    """A worker with a reader and, sent an hour ago: 120 sendgrid emails to Gmail of which 15 bounced
    (12.5 %: critical), 100 SES emails to Yahoo of which 6 bounced (a warning), and 4 to Outlook, 3 of
    them bounced (too few to judge)."""
    w = Worker(tmp_path_factory.mktemp("dashboard-health"), "dashboard-health", readers=f"{READER[0]}:{READER[1]}")
    w.start()
    now = int(time.time() * 1000) - 3_600_000
    groups = [("g", "sendgrid", "gmail.com", 120, 15), ("y", "ses", "yahoo.com", 100, 6), ("o", "ses", "outlook.com", 4, 3)]
    requests, callbacks = [], []
    for prefix, provider, domain, count, bounced in groups:
        for n in range(count):
            mid = f"h-{prefix}{n}"
            requests.append(req(mid, provider=provider, recipient=f"u{n}@{domain}", requested_at=now))
            callbacks.append(cb(mid, f"{mid}-r", "bounced" if n < bounced else "delivered", at=now + 1_000))
    run(produce(w.topic("send-requests"), requests))
    run(produce(w.topic("provider-callbacks"), callbacks))
    w.wait_for("SELECT count() FROM sendtrack.messages WHERE bounced_at IS NOT NULL OR delivered_at IS NOT NULL", [[224]])
    yield w
    w.stop()


def test_the_health_panel_shows_the_rates_past_their_thresholds(health_worker, chromium):
    page = browser.open_dashboard(chromium, health_worker.port, READER, "refresh=0")
    page.locator("#health").scroll_into_view_if_needed()
    shot(page, "health")
    report = health_worker.get("/reports/health")
    at = {c: i for i, c in enumerate(report["columns"])}
    alerts = [r for r in report["rows"] if r[at["measured"]] and r[at["state"]] != "ok"]
    shown = page.locator("[data-testid=health-alerts] tbody tr")
    assert shown.count() == len(alerts) > 0
    for tr, r in zip(shown.all(), alerts):  # in the report's order: the worst first
        assert tr.get_attribute("data-state") == r[at["state"]]
        assert tr.locator("[data-col=action]").inner_text() == r[at["action"]] == "email"
        assert float(tr.locator("[data-col=rate]").get_attribute("data-value")) == pytest.approx(r[at["rate"]])
    states = {(r[at["period"]], r[at["provider"]], r[at["mailbox_provider"]], r[at["metric"]]): r[at["state"]]
              for r in alerts}
    assert states[("24h", "sendgrid", "gmail", "bounce")] == "critical"  # 15 of 120
    assert states[("24h", "ses", "*", "bounce")] == "warning"  # 9 of 104
    assert not any(key[2] == "outlook" for key in states)  # 3 of 4: not judged
    summary = page.locator("[data-testid=health-summary]").inner_text()
    critical = sum(1 for r in alerts if r[at["state"]] == "critical")
    assert f"{critical} critical" in summary and "under the minimum volume are not judged" in summary
    # Dates narrow the other panels, never this one; a campaign cannot narrow it and says so.
    apply(page, since="2026-01-01", until="2026-01-02", campaign="camp-a")
    assert page.locator("[data-testid=health-alerts] tbody tr").count() == len(alerts)
    assert "Not narrowed by campaign" in page.locator("#health [data-testid=unapplied]").inner_text()


def test_the_recipients_panel_shows_rates_per_mailbox_provider(health_worker, chromium):
    """The panel's numbers are the recipients report's, per mailbox provider as stored at ingestion."""
    page = browser.open_dashboard(chromium, health_worker.port, READER, "refresh=0")
    page.locator("#recipients").scroll_into_view_if_needed()
    shot(page, "recipients")
    page.locator("#recipients details summary").click()
    shown = browser.table(page, "recipients-table")
    report = health_worker.get("/reports/recipients")
    same_as_report(shown, report, "mailbox_provider")
    rates = {r["mailbox_provider"]: float(r["bounce_rate"]) for r in shown}
    assert rates == {"gmail": 0.125, "yahoo": 0.06, "outlook": 0.75}
    stored = health_worker.sql("SELECT mailbox_provider, count() FROM sendtrack.messages GROUP BY mailbox_provider "
                               "ORDER BY mailbox_provider")
    assert [tuple(r) for r in stored] == [("gmail", 120), ("outlook", 4), ("yahoo", 100)]
    assert page.locator("#recipients .chart .main-svg").count() > 0  # the chart was drawn

"""The Grafana dashboard's SQL, run as Grafana would send it, gives the report API's numbers.

Docker does not run here, so Grafana never does: each panel's and template variable's SQL is expanded
the way Grafana and the ClickHouse data source plugin (grafana-clickhouse-datasource 4.20.0) would for
a fixed time range and variable selection, then run through a real worker's readers' `/query` (and
its ClickHouse HTTP interface, the door Grafana uses to an embedded worker) and compared with
`/reports/...` for the same dates and filters.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

import pytest

from sinks.reports import FILTERABLE
from tests.integration.conftest import ROOT, Worker, cb, free_port, produce, req

pytestmark = pytest.mark.integration

DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "sendtrack-funnels.json"
READER = ("ana", "pw-ana-graf")
DAY1 = 1_780_000_000_000  # 2026-05-28 20:26:40 UTC
DAY2 = DAY1 + 86_400_000  # 2026-05-29
VARIABLES = ("flow", "campaign", "action")  # the dashboard's filters; report parameters of the same names

# Each panel, by title: the report it shows (name, fixed parameters) and the columns naming a row.
PANELS = {
    "Funnel per action": ("funnel", {}, ("action",)),
    "Delivery, open and click rates per campaign": ("funnel", {"by": "campaign"}, ("campaign", "action")),
    "Daily trend": ("trend", {}, ("day",)),
    "Current status shares": ("status", {}, ("action", "current_status")),
    "Top failure reasons": ("failures", {}, ("action", "provider", "reason_code", "reason")),
    "Latency percentiles (seconds)": ("latency", {}, ("action",)),
    "Dead letters by type": ("dead_letters", {}, ("source_topic", "error_type")),
}


def _send(mid: str, campaign: str, at: int, action: str = "email", provider: str = "sendgrid") -> tuple[bytes, bytes]:
    return req(mid, action=action, provider=provider, campaign_id=campaign,
               flow_id={"camp-a": "flow-a", "camp-b": "flow-b"}[campaign], requested_at=at)


# Two send days, two campaigns (one flow each), five actions: an http_request has no `sent` (its
# funnel counts succeeded + failed), an SMS can click but not open, a ZNS neither, and one
# http_request and one SMS still await their result.
REQUESTS = [
    _send("e1", "camp-a", DAY1), _send("e2", "camp-a", DAY1), _send("e3", "camp-a", DAY1),
    _send("h1", "camp-a", DAY1, "http_request", "webhook"), _send("h2", "camp-a", DAY1, "http_request", "webhook"),
    _send("h3", "camp-a", DAY1, "http_request", "webhook"),
    _send("e4", "camp-a", DAY2),
    _send("s1", "camp-b", DAY2, "sms", "esms"), _send("s2", "camp-b", DAY2, "sms", "esms"),
    _send("s3", "camp-b", DAY2, "sms", "esms"),
    _send("z1", "camp-b", DAY2, "zalo_oa", "zalo"), _send("n1", "camp-b", DAY2, "zns", "zalo"),
]
CALLBACKS = [
    cb("e1", "e1-d", "delivered", at=DAY1 + 1_000), cb("e1", "e1-o", "opened", at=DAY1 + 60_000),
    cb("e1", "e1-c", "clicked", at=DAY1 + 120_000),
    cb("e2", "e2-d", "delivered", at=DAY1 + 2_500),
    cb("e3", "e3-f", "failed", at=DAY1 + 1_000, reason_code="550 5.1.1", reason="mailbox does not exist"),
    cb("h1", "h1-r", http_status=200, at=DAY1 + 300), cb("h2", "h2-r", http_status=503, at=DAY1 + 400),
    cb("e4", "e4-d", "delivered", at=DAY2 + 3_000), cb("e4", "e4-o", "opened", at=DAY2 + 30_000),
    cb("s1", "s1-d", "delivered", at=DAY2 + 4_000),
    cb("s2", "s2-f", "failed", at=DAY2 + 2_000, reason_code="99", reason="Unknown error from the carrier"),
    cb("z1", "z1-d", "delivered", at=DAY2 + 1_000), cb("z1", "z1-o", "opened", at=DAY2 + 90_000),
    cb("n1", "n1-d", "delivered", at=DAY2 + 5_000),
]
# Refused: not JSON, and a request without a message id.
BAD_REQUESTS = [(None, b"{not json"), (b"x", b'{"action": "email", "customer_id": "c", "requested_at": 1}')]


@dataclass(frozen=True)
class Range:
    """A dashboard time range (UTC) and the send dates the report API gets for it."""

    name: str
    start: datetime
    end: datetime

    def dates(self) -> dict[str, str]:
        return {"since": self.start.date().isoformat(), "until": self.end.date().isoformat()}


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


BOTH_DAYS = Range("both send days", _utc(2026, 5, 28), _utc(2026, 5, 29, 23, 59, 59, 999000))
# Part of a day: $__dateFilter compares dates, so the whole of 2026-05-29 is in.
SECOND_DAY = Range("part of the second day", _utc(2026, 5, 29, 6), _utc(2026, 5, 29, 12))
THROUGH_TODAY = Range("through today", _utc(2026, 5, 28),
                      datetime.now(timezone.utc) + timedelta(hours=1))  # the refusals are dated today


# ---------------------------------------------------------------------------------------------------
# What Grafana and the plugin do to a query's text before ClickHouse sees it, in their order:
# the plugin's frontend applies $__conditionalAll, Grafana's template service replaces the variables,
# then the plugin's backend expands its macros (pkg/macros/macros.go). Only what the dashboard uses
# is implemented; anything else left in the text fails the test.

def _macro_args(sql: str, open_paren: int) -> tuple[list[str], int]:
    """The top-level comma-separated arguments of the call whose `(` is at `open_paren`, and the
    index just past its `)`."""
    depth, args, start = 0, [], open_paren + 1
    for i in range(open_paren, len(sql)):
        if sql[i] == "(":
            depth += 1
        elif sql[i] == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i])
                return args, i + 1
        elif sql[i] == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
    raise AssertionError(f"unbalanced parentheses after {sql[open_paren - 20:open_paren + 20]!r}")


def conditional_all(sql: str, selection: dict[str, Optional[list[str]]]) -> str:
    """$__conditionalAll(condition, $var): `1=1` when `var` is All, else the condition (the plugin's
    CHDatasource.applyConditionalAll, innermost last)."""
    macro = "$__conditionalAll("
    while (at := sql.rfind(macro)) != -1:
        args, end = _macro_args(sql, at + len(macro) - 1)
        assert len(args) == 2, f"$__conditionalAll takes (condition, $variable): {sql[at:end]}"
        var = re.fullmatch(r"\s*\$(?:\{(\w+)\}|(\w+))\s*", args[1])
        assert var, f"the second argument of $__conditionalAll must be a plain $variable: {sql[at:end]}"
        name = var[1] or var[2]
        assert name in selection, f"unknown variable ${name}"
        sql = sql[:at] + ("1=1" if not selection[name] else args[0]) + sql[end:]
    return sql


def singlequote(values: list[str]) -> str:
    """Grafana's `singlequote` format: each value quoted, `'` escaped with a backslash, comma-joined."""
    return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)


def template_variables(sql: str, selection: dict[str, Optional[list[str]]]) -> str:
    """${var:singlequote} with the selected values. An All selection must not reach here (it would
    expand to every option): the dashboard only uses variables inside $__conditionalAll."""

    def replace(match: re.Match) -> str:
        name, fmt = match[1], match[2]
        assert name in selection, f"unknown variable {match[0]}"
        assert fmt == "singlequote", f"{match[0]}: only ${{var:singlequote}} is expected in this dashboard"
        assert selection[name], f"{match[0]} outside $__conditionalAll would expand to every option"
        return singlequote(selection[name])

    return re.sub(r"\$\{(\w+):(\w+)\}", replace, sql)


def macros(sql: str, start: datetime, end: datetime) -> str:
    """The plugin's backend macros. $__dateFilter(col) is
    `col >= toDate('<from date>') AND col <= toDate('<to date>')`, dates of the range's ends as the
    Grafana server's clock has them (UTC in the grafana/grafana image)."""
    out, pos = [], 0
    for match in re.finditer(r"\$__(\w+)", sql):
        if match.start() < pos:
            continue
        name = match[1]
        assert name == "dateFilter", f"macro $__{name} is not expanded by this test: add its plugin expansion"
        assert sql[match.end():match.end() + 1] == "(", "$__dateFilter takes one column"
        args, after = _macro_args(sql, match.end())
        assert len(args) == 1, f"$__dateFilter takes one column, not {args}"
        col = args[0]
        out += [sql[pos:match.start()],
                f"{col} >= toDate('{start:%Y-%m-%d}') AND {col} <= toDate('{end:%Y-%m-%d}')"]
        pos = after
    return "".join(out) + sql[pos:]


def expand(sql: str, rng: Range, selection: dict[str, Optional[list[str]]]) -> str:
    """The statement ClickHouse receives for `sql`, in time range `rng` with these variables
    selected (None = All)."""
    sql = macros(template_variables(conditional_all(sql, selection), selection), rng.start, rng.end)
    assert "$" not in sql, f"left unexpanded: {sql}"
    return sql


def uses(sql: str) -> set[str]:
    """The dashboard variables a query refers to."""
    return {name for name in VARIABLES if re.search(rf"\$(?:\{{{name}[}}:]|{name}\b)", sql)}


# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A worker with a reader and its ClickHouse HTTP port, the scenario above in ClickHouse."""
    w = Worker(tmp_path_factory.mktemp("grafana"), "grafana", readers=f"{READER[0]}:{READER[1]}",
               clickhouse_http_port=free_port())
    w.start()
    try:
        asyncio.run(produce(w.topic("send-requests"), REQUESTS + BAD_REQUESTS))
        asyncio.run(produce(w.topic("provider-callbacks"), CALLBACKS))
        w.wait_for("SELECT count(), countIf(current_status = ''), countIf(failed_at IS NOT NULL), "
                   "countIf(opened_at IS NOT NULL) FROM sendtrack.messages", [[12, 1, 3, 3]])
        w.wait_for("SELECT status, toUInt64(sum(messages)) FROM sendtrack.funnel_daily WHERE status IN "
                   "('delivered', 'opened', 'clicked', 'failed', 'succeeded') GROUP BY status ORDER BY status",
                   [["clicked", 1], ["delivered", 6], ["failed", 3], ["opened", 3], ["succeeded", 1]])
        w.wait_for("SELECT count() FROM sendtrack.dead_letters", [[2]])
        yield w
    finally:
        w.stop()


def panels(dashboard: dict) -> dict[str, str]:
    """Each panel's title and its one SQL query."""
    out = {}
    for panel in dashboard["panels"]:
        (target,) = panel["targets"]
        assert target["editorType"] == "sql", panel["title"]
        out[panel["title"]] = target["rawSql"]
    return out


def same(got: Any, want: Any, column: str) -> bool:
    """A panel's cell equals the report's, the report having rounded its ratios (4 places) and
    seconds (3 places)."""
    if isinstance(want, float) and not isinstance(got, bool) and isinstance(got, (int, float)):
        return round(got, 3 if re.search(r"_p\d+$", column) else 4) == want
    return got == want


def check_panel(worker: Worker, title: str, sql: str, rng: Range, selection: dict[str, Optional[list[str]]]
                ) -> list[list[Any]]:
    """Run one panel's query and compare every cell with the report it mirrors. Returns its rows."""
    report_name, fixed, keys = PANELS[title]
    doc = worker.get("/query", q=expand(sql, rng, selection))
    assert "error" not in doc, (title, doc)
    columns, rows = doc["columns"], doc["rows"]
    filters = {name: values[0] for name, values in selection.items() if values and name in uses(sql)}
    report = worker.get(f"/reports/{report_name}", **fixed, **rng.dates(), **filters)
    assert "error" not in report, (title, report)
    assert set(columns) <= set(report["columns"]), (title, columns, report["columns"])
    expected = {tuple(r[report["columns"].index(k)] for k in keys): r for r in report["rows"]}
    shown = {tuple(r[columns.index(k)] for k in keys): r for r in rows}
    assert sorted(shown) == sorted(expected), (title, rng.name, selection, rows, report["rows"])
    for key, row in shown.items():
        want = dict(zip(report["columns"], expected[key]))
        for column, value in zip(columns, row):
            assert same(value, want[column], column), (title, key, column, value, want[column])
    return rows


SELECTIONS = {
    "all": {},
    "campaign camp-b": {"campaign": ["camp-b"]},
    "flow flow-a": {"flow": ["flow-a"]},
    "action email": {"action": ["email"]},
}


@pytest.mark.parametrize("rng", [BOTH_DAYS, SECOND_DAY, THROUGH_TODAY], ids=lambda r: r.name)
@pytest.mark.parametrize("selection", SELECTIONS, ids=str)
def test_every_panel_shows_the_report_apis_numbers(worker, dashboard, rng, selection):
    chosen = {name: SELECTIONS[selection].get(name) for name in VARIABLES}
    shown = {title: check_panel(worker, title, sql, rng, chosen) for title, sql in panels(dashboard).items()}
    if rng is THROUGH_TODAY and selection == "all":
        assert all(shown.values()), {title: rows for title, rows in shown.items() if not rows}


def test_the_dashboard_has_a_check_for_each_panel_and_applies_every_filter_its_view_has(dashboard):
    queries = panels(dashboard)
    assert set(queries) == set(PANELS)
    for title, sql in queries.items():
        report = PANELS[title][0]
        assert uses(sql) == set(VARIABLES) & set(FILTERABLE[report]), title


def test_known_numbers_for_both_days(worker, dashboard):
    """The comparison above cannot pass on two empty answers: the scenario's numbers, from the panels."""
    queries, everything = panels(dashboard), {name: None for name in VARIABLES}

    def rows(title: str, rng: Range = BOTH_DAYS) -> list[dict[str, Any]]:
        doc = worker.get("/query", q=expand(queries[title], rng, everything))
        return [dict(zip(doc["columns"], r)) for r in doc["rows"]]

    funnel = {r["action"]: r for r in rows("Funnel per action")}
    assert {a: (r["messages"], r["delivered"], r["opened"], r["clicked"], r["failed"]) for a, r in funnel.items()} \
        == {"email": (4, 3, 2, 1, 1), "http_request": (2, 0, 0, 0, 1), "sms": (3, 1, 0, 0, 1),
            "zalo_oa": (1, 1, 1, 0, 0), "zns": (1, 1, 0, 0, 0)}
    rates = {(r["campaign"], r["action"]): (r["delivery_rate"], r["open_rate"], r["click_rate"])
             for r in rows("Delivery, open and click rates per campaign")}
    assert rates[("camp-a", "email")] == (0.75, pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert rates[("camp-b", "sms")] == (pytest.approx(1 / 3), None, 0.0)  # an SMS is never opened
    assert rates[("camp-b", "zns")] == (1.0, None, None)
    assert rates[("camp-a", "http_request")] == (None, None, None)
    assert [(r["day"], r["sent"], r["failed"]) for r in rows("Daily trend")] == \
        [("2026-05-28", 3, 2), ("2026-05-29", 6, 1)]
    awaiting = [r for r in rows("Current status shares") if r["current_status"] == "(awaiting result)"]
    assert [(r["action"], r["messages"], r["share"]) for r in awaiting] == [("http_request", 1, pytest.approx(1 / 3))]
    assert {(r["reason_code"], r["messages"]) for r in rows("Top failure reasons")} >= {("550 5.1.1", 1), ("99", 1)}
    latency = {r["action"]: r for r in rows("Latency percentiles (seconds)")}
    assert latency["email"]["sent_to_delivered_n"] == 3 and latency["email"]["sent_to_delivered_p50"] == 2.5
    assert latency["zns"]["delivered_to_opened_n"] == 0 and latency["zns"]["delivered_to_opened_p50"] is None
    assert rows("Dead letters by type") == []  # refused today, not on the send days
    letters = {r["error_type"]: r["records"] for r in rows("Dead letters by type", THROUGH_TODAY)}
    assert letters == {"undecodable": 1, "missing_field": 1}


def test_template_variables_offer_the_scenarios_values(worker, dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == set(VARIABLES)

    def options(name: str, rng: Range = BOTH_DAYS, **chosen: list[str]) -> list[str]:
        sql = expand(variables[name]["query"]["rawSql"], rng, {n: chosen.get(n) for n in VARIABLES})
        return [row[0] for row in worker.sql(sql)]

    assert options("flow") == ["flow-a", "flow-b"]
    assert options("campaign") == ["camp-a", "camp-b"]
    assert options("campaign", flow=["flow-b"]) == ["camp-b"]  # the campaign list follows the flow
    assert options("action") == ["email", "http_request", "sms", "zalo_oa", "zns"]
    assert options("action", SECOND_DAY) == ["email", "sms", "zalo_oa", "zns"]


def _typed(value: Any, type_: str) -> Any:
    """A JSONCompact cell as /query's JSON has it: 64-bit integers unquoted, times in ISO form."""
    if value is None:
        return None
    if re.search(r"\bU?Int64\b", type_):
        return int(value)
    if "DateTime" in type_:
        return datetime.fromisoformat(value).isoformat()
    return value


def test_panels_over_the_workers_clickhouse_http_interface(worker, dashboard):
    """What Grafana's data source does with an embedded worker: the statement in a POST body to the
    worker's ClickHouse HTTP port, as a reader, gzip accepted, with the max_execution_time the
    plugin's client sends (its query timeout, 25 s, + 4) as a URL setting."""
    port = int(worker.env["SENDTRACK_CLICKHOUSE_HTTP_PORT"])
    token = base64.b64encode(f"{READER[0]}:{READER[1]}".encode()).decode()
    everything = {name: None for name in VARIABLES}
    for title, sql in panels(dashboard).items():
        expanded = expand(sql, THROUGH_TODAY, everything)
        params = urllib.parse.urlencode({"database": "sendtrack", "default_format": "JSONCompact",
                                         "max_execution_time": 29, "enable_http_compression": 1})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/?{params}", data=expanded.encode(), method="POST",
                                         headers={"Authorization": f"Basic {token}", "Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            body = resp.read()
            if resp.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
        doc = json.loads(body)
        types = [column["type"] for column in doc["meta"]]
        rows = [[_typed(v, t) for v, t in zip(row, types)] for row in doc["data"]]
        assert rows == worker.sql(expanded), title


# Grafana's ClickHouse data source reads through clickhouse-go (HTTP, Native format, the protocol
# revision it names): tests/go is a reader built on the same client, from the Go module proxy.
GO_READER = ROOT / "tests" / "go"


@pytest.fixture(scope="module")
def clickhouse_go() -> str:
    if shutil.which("go") is None:
        pytest.fail("the clickhouse-go test needs Go (1.26): the client Grafana's data source is built on")
    binary = ROOT / "build" / "chgo"
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=GO_READER, check=True, timeout=600)
    return str(binary)


def read_with_clickhouse_go(binary: str, worker: Worker, sql: str) -> dict:
    port = worker.env["SENDTRACK_CLICKHOUSE_HTTP_PORT"]
    done = subprocess.run([binary, f"127.0.0.1:{port}", READER[0], READER[1], sql], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"clickhouse-go: {done.stderr.strip()}\n{sql}"
    return json.loads(done.stdout)


def test_panels_through_grafanas_client(worker, dashboard, clickhouse_go):
    """Every panel's statement read by clickhouse-go from the embedded worker's HTTP interface, as
    Grafana's data source reads it: the same rows as the readers' /query."""
    everything = {name: None for name in VARIABLES}
    for title, sql in panels(dashboard).items():
        expanded = expand(sql, THROUGH_TODAY, everything)
        assert read_with_clickhouse_go(clickhouse_go, worker, expanded)["rows"] == worker.sql(expanded), title


def test_grafanas_client_reads_every_column_type_a_panel_can_return(worker, clickhouse_go):
    sql = ("SELECT toDate('2026-12-01') AS d, toDateTime64('2026-12-01 10:00:00.123', 3, 'UTC') AS t, "
           "toDateTime('2026-12-01 10:00:00', 'UTC') AS t2, 1.5 AS f, toUInt64(18446744073709551615) AS u, "
           "toInt32(-7) AS i, [1, 2] AS a, CAST(NULL AS Nullable(Float64)) AS n, toDecimal64(1.25, 2) AS dec, "
           "toLowCardinality(toNullable('x')) AS lcn, map('a', 1) AS m, tuple(1, 'x') AS tu, "
           "toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0') AS id, ['a', 'b'] AS sa, true AS b "
           "FROM numbers(3)")
    doc = read_with_clickhouse_go(clickhouse_go, worker, sql)
    assert len(doc["rows"]) == 3 and doc["rows"] == worker.sql(sql)
    # Many rows and blocks, and a LowCardinality column (the funnel's `action`): every row arrives.
    many = read_with_clickhouse_go(clickhouse_go, worker, "SELECT number, toLowCardinality(toString(number % 7)) AS k, "
                                   "toString(number) AS s FROM numbers(90000)")
    assert len(many["rows"]) == 90000 and many["rows"][-1] == [89999, str(89999 % 7), "89999"]


@pytest.mark.parametrize("sql, problem", [
    ("SELECT 1 WHERE $__timeFilter(day)", "macro $__timeFilter"),
    ("SELECT 1 WHERE action IN (${action:csv})", "only ${var:singlequote}"),
    ("SELECT 1 WHERE $__conditionalAll(action = 'x', ${action:singlequote})", "plain $variable"),
    ("SELECT 1 WHERE action IN (${action:singlequote})", "outside $__conditionalAll"),
    ("SELECT 1 WHERE action = '$action'", "left unexpanded"),
])
def test_the_expander_refuses_what_it_does_not_implement(sql, problem):
    with pytest.raises(AssertionError, match=re.escape(problem)):
        expand(sql, BOTH_DAYS, {name: None for name in VARIABLES})


def test_the_expander_matches_the_plugins_documented_output():
    """The examples of the plugin's docs and tests (pkg/macros/macros_test.go, template-variables.md)."""
    rng = Range("doc", _utc(2014, 11, 12, 11, 45, 26), _utc(2015, 11, 12, 11, 45, 26))
    assert macros("WHERE $__dateFilter(dateCol)", rng.start, rng.end) == \
        "WHERE dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')"
    sql = "WHERE $__conditionalAll(database IN (${database:singlequote}), $database)"
    assert conditional_all(sql, {"database": None}) == "WHERE 1=1"
    assert template_variables(conditional_all(sql, {"database": ["db1", "o'db"]}), {"database": ["db1", "o'db"]}) \
        == "WHERE database IN ('db1','o\\'db')"
    # Part of a day in the range is the whole day.
    assert expand("$__dateFilter(day)", SECOND_DAY, {}) == "day >= toDate('2026-05-29') AND day <= toDate('2026-05-29')"

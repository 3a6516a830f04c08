"""ClickHouse's HTTP interface of a real worker, through clients nobody here wrote: clickhouse-connect and
the official JDBC driver (docs/clickhouse-http.md)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional

import clickhouse_connect
import pyarrow.ipc
import pyarrow.parquet
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from sinks.reports import FUNNEL_STATUSES
from tests.integration.conftest import ROOT, Worker, cb, free_port, produce, req

pytestmark = pytest.mark.integration

READER = ("ana", "pw-ana-1")
FUNNEL_SQL = ("SELECT action, status, toUInt64(sum(messages)) AS n FROM sendtrack.funnel_daily "
              "GROUP BY action, status ORDER BY action, status")
# What the scenario below makes funnel_daily hold (a delivered message was processing too).
EXPECTED_FUNNEL = [["email", "delivered", 3], ["email", "opened", 2], ["email", "processing", 3],
                   ["email", "sent", 4], ["sms", "delivered", 1], ["sms", "processing", 1], ["sms", "sent", 2]]
SITE_PACKAGES = Path(next(p for p in sys.path if p.endswith("site-packages")))


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A worker with a reader, tight query limits, its ClickHouse HTTP port, and a known scenario."""
    w = Worker(tmp_path_factory.mktemp("chhttp"), "chhttp", readers=f"{READER[0]}:{READER[1]},bob:pw-bob-2",
               clickhouse_http_port=free_port(), query_max_seconds=3, query_max_result_rows=50_000,
               query_memory_mb=128)
    w.ch_port = int(w.env["SENDTRACK_CLICKHOUSE_HTTP_PORT"])
    try:
        w.start()
        requests = [req(f"ch-e{i}", recipient=f"person{i}@example.com") for i in range(4)]
        requests += [req(f"ch-s{i}", action="sms", provider="esms", recipient=f"+8490000000{i}") for i in range(2)]
        callbacks = [cb(f"ch-e{i}", f"ev-d{i}", "delivered") for i in range(3)]
        callbacks += [cb(f"ch-e{i}", f"ev-o{i}", "opened", at=1_780_000_002_000) for i in range(2)]
        callbacks += [cb("ch-s0", "ev-sd0", "delivered")]
        asyncio.run(produce(w.topic("send-requests"), requests))
        asyncio.run(produce(w.topic("provider-callbacks"), callbacks))
        w.wait_for(FUNNEL_SQL, EXPECTED_FUNNEL, timeout=90)
        _wait_for_port(w.ch_port)
        yield w
    finally:
        w.stop()


def _wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def client(w: Worker, username: str = READER[0], password: str = READER[1], **kw: Any):
    return clickhouse_connect.get_client(host="127.0.0.1", port=w.ch_port, username=username,
                                         password=password, **kw)


def http(w: Worker, query: Optional[str] = None, *, body: Optional[bytes] = None, path: str = "/",
         auth: Optional[tuple[str, str]] = READER, headers: Optional[dict[str, str]] = None,
         **params: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a plain HTTP request to the interface."""
    if query is not None:
        params["query"] = query
    url = f"http://127.0.0.1:{w.ch_port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def report_funnel(w: Worker) -> dict[tuple[str, str], int]:
    """The report API's funnel as {(action, status): messages}, statuses that no message reached left out."""
    doc = w.get("/reports/funnel")
    out = {}
    for row in doc["rows"]:
        values = dict(zip(doc["columns"], row))
        for status in FUNNEL_STATUSES:
            if values[status]:
                out[(values["action"], status)] = values[status]
    return out


def test_clickhouse_connect_reads_the_funnel_as_the_report_api(worker):
    c = client(worker)
    result = c.query(FUNNEL_SQL)
    assert result.column_names == ("action", "status", "n")
    rows = [list(r) for r in result.result_rows]
    assert rows == worker.sql(FUNNEL_SQL) == EXPECTED_FUNNEL
    assert {(a, s): n for a, s, n in rows} == report_funnel(worker)
    assert result.summary["query_id"]
    assert c.server_version and str(c.server_tz) in ("UTC", "Etc/UTC")
    assert c.command("SELECT 1") == 1
    assert c.command("SELECT count() FROM sendtrack.messages") == 6


def test_clickhouse_connect_arrow_and_pandas(worker):
    c = client(worker)
    table = c.query_arrow(FUNNEL_SQL)
    assert table.column_names == ["action", "status", "n"]
    assert [[r["action"], r["status"], r["n"]] for r in table.to_pylist()] == EXPECTED_FUNNEL
    frame = c.query_df(FUNNEL_SQL)
    assert frame.values.tolist() == EXPECTED_FUNNEL


def test_server_side_parameters(worker):
    c = client(worker)
    sql = "SELECT message_id, action FROM sendtrack.messages WHERE message_id = {m:String}"
    assert c.query(sql, parameters={"m": "ch-s1"}).result_rows == [("ch-s1", "sms")]
    # A value is a value: it is never read as SQL.
    assert c.query(sql, parameters={"m": "x' OR 1 = 1 --"}).result_rows == []
    assert c.query("SELECT message_id FROM sendtrack.messages WHERE message_id IN {ids:Array(String)} "
                   "ORDER BY message_id", parameters={"ids": ["ch-e0", "ch-s0", "nope"]}).result_rows \
        == [("ch-e0",), ("ch-s0",)]
    # The unqualified names of a client's database (clickhouse-connect sends `database=`).
    assert client(worker, database="sendtrack").query("SELECT count() FROM messages").result_rows == [(6,)]
    status, _, body = http(worker, "SELECT {a:UInt8} + {b:UInt8}", param_a="2", param_b="3")
    assert (status, body) == (200, b"5\n")
    status, _, body = http(worker, "SELECT {a:UInt8}")
    assert status == 400 and body.startswith(b"Code: 456. DB::Exception:") and b"(UNKNOWN_QUERY_PARAMETER)" in body


@pytest.mark.parametrize("fmt", ["TabSeparated", "JSON", "JSONEachRow", "JSONCompact", "CSV", "CSVWithNames",
                                 "TSVWithNames", "TSVWithNamesAndTypes", "Native", "RowBinaryWithNamesAndTypes",
                                 "Arrow", "Parquet"])
def test_formats_are_written_by_clickhouse(worker, fmt):
    sql = "SELECT action, toUInt64(sum(messages)) AS n FROM sendtrack.funnel_daily WHERE status = 'sent' " \
          "GROUP BY action ORDER BY action"
    by_param = http(worker, sql, default_format=fmt)
    by_clause = http(worker, f"{sql} FORMAT {fmt}")
    by_body = http(worker, body=f"{sql} FORMAT {fmt}".encode())
    for status, headers, body in (by_param, by_clause, by_body):
        assert status == 200, body
        assert headers["X-ClickHouse-Format"] == fmt
    if fmt not in ("JSON", "JSONCompact"):  # those two carry the query's elapsed time
        assert by_param[2] == by_clause[2] == by_body[2]
    body = by_param[2]
    expected = [["email", 4], ["sms", 2]]
    if fmt == "TabSeparated":
        assert body == b"email\t4\nsms\t2\n"
    elif fmt == "JSON":
        doc = json.loads(body)
        assert doc["meta"] == [{"name": "action", "type": "LowCardinality(String)"}, {"name": "n", "type": "UInt64"}]
        assert [[r["action"], int(r["n"])] for r in doc["data"]] == expected
    elif fmt == "JSONEachRow":
        assert [[r["action"], int(r["n"])] for r in map(json.loads, body.splitlines())] == expected
    elif fmt == "JSONCompact":
        assert [[a, int(n)] for a, n in json.loads(body)["data"]] == expected
    elif fmt == "CSV":
        assert body == b'"email",4\n"sms",2\n'
    elif fmt == "CSVWithNames":
        assert body == b'"action","n"\n"email",4\n"sms",2\n'
    elif fmt == "TSVWithNames":
        assert body == b"action\tn\nemail\t4\nsms\t2\n"
    elif fmt == "TSVWithNamesAndTypes":
        assert body == b"action\tn\nLowCardinality(String)\tUInt64\nemail\t4\nsms\t2\n"
    elif fmt == "Native":
        assert body.startswith(b"\x02\x02\x06action")  # 2 columns, 2 rows, the first one's name
    elif fmt == "RowBinaryWithNamesAndTypes":
        assert body.startswith(b"\x02\x06action\x01n")
    elif fmt == "Arrow":
        table = pyarrow.ipc.open_file(io.BytesIO(body)).read_all()
        assert [[r["action"], r["n"]] for r in table.to_pylist()] == expected
    elif fmt == "Parquet":
        table = pyarrow.parquet.read_table(io.BytesIO(body))
        assert [[r["action"], r["n"]] for r in table.to_pylist()] == expected


def test_http_protocol_details(worker):
    assert http(worker, path="/ping", auth=None)[2] == b"Ok.\n"
    assert http(worker, auth=None)[2] == b"Ok.\n"
    status, headers, body = http(worker, "SELECT 1", query_id="my-query-1")
    assert (status, body) == (200, b"1\n")
    assert headers["X-ClickHouse-Query-Id"] == "my-query-1"
    assert headers["X-ClickHouse-Timezone"] and headers["X-ClickHouse-Server-Display-Name"]
    assert json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "0"
    # The URL's query, then the body: ClickHouse runs both as one statement.
    assert http(worker, "SELECT 1 +", body=b"2")[2] == b"3\n"
    assert http(worker, "SELECT currentDatabase()", database="sendtrack")[2] == b"sendtrack\n"
    assert http(worker, "SELECT currentDatabase()", headers={"X-ClickHouse-Database": "sendtrack"})[2] \
        == b"sendtrack\n"
    assert http(worker, "SELECT currentDatabase()")[2] == b"default\n"
    # Credentials in the URL, as ClickHouse takes them.
    assert http(worker, "SELECT 1", auth=None, user=READER[0], password=READER[1])[2] == b"1\n"
    # Compression that clients ask for: HTTP (gzip) and ClickHouse's own blocks (compress=1, as JDBC does).
    status, headers, body = http(worker, "SELECT number FROM numbers(1000)", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(body).splitlines()[-1] == b"999"


def test_settings_from_the_url(worker):
    # A setting equal to the session's value is fine; what clients send for transport is consumed.
    status, _, body = http(worker, "SELECT 1", max_result_rows="50000", session_id="abc", wait_end_of_query="1",
                           send_progress_in_http_headers="1", enable_http_compression="1",
                           client_protocol_version="54405", output_format_json_quote_64bit_integers="0")
    assert (status, body) == (200, b"1\n")
    # A client's own timeout, sent with every query, is taken; the session's limit (3 s here) still holds.
    assert http(worker, "SELECT 1", max_execution_time="2")[:3:2] == (200, b"1\n")
    assert http(worker, "SELECT 1", max_execution_time="300")[:3:2] == (200, b"1\n")
    status, headers, _ = http(worker, "SELECT count() FROM numbers(1e12)", max_execution_time="300")
    assert status >= 400 and headers["X-ClickHouse-Exception-Code"] in ("158", "159")  # the 3 s limit holds
    for params, code in (({"max_result_rows": "0"}, 164), ({"readonly": "0"}, 164),
                         ({"max_execution_time": "0"}, 164),
                         ({"no_such_setting": "1"}, 115)):
        status, headers, body = http(worker, "SELECT 1", **params)
        assert status >= 400 and headers["X-ClickHouse-Exception-Code"] == str(code), (params, body)
        assert body.startswith(f"Code: {code}. DB::Exception: ".encode()), body


def test_a_dashboards_burst_is_served_by_the_bounded_sessions(worker):
    # A dashboard opens with many panels at once: SENDTRACK_QUERY_CONCURRENCY sessions serve them all in turn.
    from concurrent.futures import ThreadPoolExecutor

    sql = "SELECT status, toUInt64(sum(messages)) FROM sendtrack.funnel_daily WHERE action = 'email' " \
          "GROUP BY status ORDER BY status FORMAT JSONCompact"
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: http(worker, sql), range(24)))
    assert {status for status, _, _ in answers} == {200}
    assert {json.dumps(json.loads(body)["data"]) for _, _, body in answers} == \
        {json.dumps([[s, n] for a, s, n in EXPECTED_FUNNEL if a == "email"])}
    assert worker.get("/health")["status"] == "ok"


def refused(w: Worker, q: str) -> tuple[int, bytes]:
    """The interface refuses `q` for clickhouse-connect and for a plain request, in ClickHouse's words."""
    with pytest.raises(DatabaseError) as caught:
        client(w).query(q)
    assert "Code: " in str(caught.value) and "root:" not in str(caught.value), q
    status, headers, body = http(w, q)
    assert status >= 400 and body.startswith(b"Code: ") and b"DB::Exception" in body, (q, status, body)
    assert headers["X-ClickHouse-Exception-Code"] == body[6:body.index(b".")].decode()
    return int(headers["X-ClickHouse-Exception-Code"]), body


def test_files_urls_and_other_servers_are_refused(worker):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        for q in ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "SELECT file('/etc/passwd')",
                  "SELECT file('/proc/self/environ')",
                  f"SELECT * FROM url('http://127.0.0.1:{port}/x', 'CSV', 'a String')",
                  f"SELECT * FROM remote('127.0.0.1:{port}', system.one)",
                  f"SELECT * FROM s3('http://127.0.0.1:{port}/b/k', 'CSV', 'a String')",
                  "SELECT * FROM executable('id', 'TSV', 'a String')"):
            code, body = refused(worker, q)
            assert code == 497 and b"(ACCESS_DENIED)" in body and b"root:" not in body, (q, body)
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_nothing_is_written_and_readonly_cannot_be_lifted(worker):
    target = SITE_PACKAGES / f"sendtrack_chhttp_{os.getpid()}.pth"
    for q in (f"SELECT 1 INTO OUTFILE '{target}'", f"SELECT 1 INTO OUTFILE '{target}' TRUNCATE FORMAT CSV",
              f"SELECT 1; SELECT 1 INTO OUTFILE '{target}'"):
        refused(worker, q)
        assert not target.exists(), q
    for q in ("SELECT 1 SETTINGS readonly = 0", "SELECT 1 SETTINGS max_result_rows = 0", "SET readonly = 0",
              "DROP TABLE sendtrack.status_changes_raw", "INSERT INTO sendtrack.dead_letters_raw (error) VALUES ('x')",
              "CREATE TABLE sendtrack.x (a UInt8) ENGINE = Memory"):
        code, body = refused(worker, q)
        assert code == 164 and b"(READONLY)" in body, (q, body)
    status, _, body = http(worker, body=b"INSERT INTO sendtrack.dead_letters_raw (error) FORMAT TSV\nx\n")
    assert status == 403 and body.startswith(b"Code: 164.")
    assert worker.sql("SELECT count() FROM sendtrack.messages") == [[6]]
    assert worker.sql("SELECT count() FROM system.tables WHERE database = 'sendtrack' AND name = 'x'") == [[0]]


def test_a_huge_query_is_stopped_by_the_session_limits(worker):
    started = time.monotonic()
    code, _ = refused(worker, "SELECT count() FROM numbers(1e12)")
    assert code in (158, 159) and time.monotonic() - started < 20  # TOO_MANY_ROWS (estimated), TIMEOUT_EXCEEDED
    code, body = refused(worker, "SELECT number FROM numbers(20000000)")
    assert code == 396, body  # TOO_MANY_ROWS_OR_BYTES: the 50,000-row cap, not a 20 M row answer
    assert worker.get("/health")["status"] == "ok"


def test_readers_need_credentials(worker):
    for auth, headers in ((None, None), (("ana", "wrong"), None), (("nobody", READER[1]), None),
                          (None, {"X-ClickHouse-User": "ana", "X-ClickHouse-Key": "nope"})):
        status, _, body = http(worker, "SELECT recipient FROM sendtrack.messages", auth=auth, headers=headers)
        assert status == 401 and body.startswith(b"Code: 516. DB::Exception:"), (auth, headers, body)
        assert b"(AUTHENTICATION_FAILED)" in body and b"example.com" not in body
    status, _, body = http(worker, "SELECT 1", auth=None, user="ana", password="wrong")
    assert status == 401 and body.startswith(b"Code: 516.")
    status, _, body = http(worker, "SELECT count() FROM sendtrack.messages", auth=None,
                           headers={"X-ClickHouse-User": "bob", "X-ClickHouse-Key": "pw-bob-2"})
    assert (status, body) == (200, b"6\n")
    with pytest.raises(DatabaseError) as caught:
        client(worker, password="wrong").query("SELECT recipient FROM sendtrack.messages")
    assert "516" in str(caught.value) and "example.com" not in str(caught.value)
    with pytest.raises(DatabaseError):
        client(worker, username="default", password="").query("SELECT 1")
    # A page on another site cannot use the operator's credentials.
    status, _, body = http(worker, "SELECT recipient FROM sendtrack.messages", headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and b"example.com" not in body and body.startswith(b"Code: 497.")


@pytest.fixture(scope="module")
def open_worker(tmp_path_factory):
    """A worker without readers: loopback clients that name a loopback host only."""
    w = Worker(tmp_path_factory.mktemp("chhttp-open"), "chhttp-open", clickhouse_http_port=free_port())
    w.ch_port = int(w.env["SENDTRACK_CLICKHOUSE_HTTP_PORT"])
    try:
        w.start()
        _wait_for_port(w.ch_port)
        yield w
    finally:
        w.stop()


def test_without_readers_only_loopback_hosts(open_worker):
    assert client(open_worker, username="default", password="").command("SELECT 1") == 1
    # A DNS-rebinding page reaches 127.0.0.1 under its own host name.
    status, _, body = http(open_worker, "SELECT 1", auth=None,
                           headers={"Host": f"attacker.example:{open_worker.ch_port}"})
    assert status == 403 and body.startswith(b"Code: 497. DB::Exception:") and b"(ACCESS_DENIED)" in body
    assert http(open_worker, "SELECT 1", auth=None, headers={"Host": f"localhost:{open_worker.ch_port}"})[2] == b"1\n"


# The official ClickHouse JDBC driver (tests/jdbc): Maven fetches it, javac builds the reader.
JDBC_DIR = ROOT / "tests" / "jdbc"


@pytest.fixture(scope="module")
def jdbc_classpath() -> str:
    missing = [tool for tool in ("java", "javac", "mvn") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the JDBC test needs {', '.join(missing)} (Java 17 and Maven)")
    subprocess.run(["mvn", "-q", "-B", "dependency:copy-dependencies", "-DoutputDirectory=target/lib"],
                   cwd=JDBC_DIR, check=True, timeout=600)
    subprocess.run(["javac", "-d", "target/classes", "-cp", "target/lib/*", "FunnelRows.java"], cwd=JDBC_DIR,
                   check=True, timeout=300)
    return "target/classes:target/lib/*"


def jdbc(classpath: str, port: int, user: str, password: str, sql: str,
         options: str = "") -> subprocess.CompletedProcess:
    url = f"jdbc:clickhouse://127.0.0.1:{port}/sendtrack" + (f"?{options}" if options else "")
    return subprocess.run(["java", "-cp", classpath, "FunnelRows", url, user, password, sql], cwd=JDBC_DIR,
                          capture_output=True, text=True, timeout=120)


# The driver's compression choices: by default it asks for ClickHouse's own LZ4 blocks (compress=1);
# `decompress` sends the statement so compressed too; HTTP's lz4 both ways; none.
@pytest.mark.parametrize("options", ["", "decompress=true", "client.use_http_compression=true&decompress=true",
                                     "compress=false"])
def test_jdbc_driver_reads_the_funnel_as_the_report_api(worker, jdbc_classpath, options):
    # funnel_daily unqualified: the database of the JDBC URL.
    run = jdbc(jdbc_classpath, worker.ch_port, *READER, FUNNEL_SQL.replace("sendtrack.funnel_daily", "funnel_daily"),
               options)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line.split("\t") for line in run.stdout.splitlines()]
    assert ["DRIVER", "ClickHouse JDBC Driver", "0.10.0"] in lines
    assert next(line for line in lines if line[0] == "COLUMNS") == ["COLUMNS", "action:LowCardinality(String)",
                                                                     "status:LowCardinality(String)", "n:UInt64"]
    rows = {(a, s): int(n) for _, a, s, n in (line for line in lines if line[0] == "ROW")}
    assert rows == report_funnel(worker) == {(a, s): n for a, s, n in EXPECTED_FUNNEL}


def test_jdbc_driver_is_refused_in_clickhouse_words(worker, jdbc_classpath):
    run = jdbc(jdbc_classpath, worker.ch_port, READER[0], "wrong", "SELECT 1")
    assert run.returncode == 2 and "ERROR" in run.stdout and "516" in run.stdout, run.stdout + run.stderr
    run = jdbc(jdbc_classpath, worker.ch_port, *READER, "SELECT * FROM file('/etc/passwd', 'LineAsString')")
    assert run.returncode == 2 and "Code: 497. DB::Exception:" in run.stdout and "root:" not in run.stdout

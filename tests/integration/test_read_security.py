"""Attacks on the reading endpoints, each refused with the data and files unchanged (docs/security.md)."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Worker, produce, req

pytestmark = pytest.mark.integration

SITE_PACKAGES = Path(next(p for p in sys.path if p.endswith("site-packages")))


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """One worker with no readers configured (loopback only) and tight query limits."""
    w = Worker(tmp_path_factory.mktemp("readsec"), "readsec", query_max_seconds=3,
               query_max_result_rows=50_000, query_memory_mb=128, secret_marker="s3cr3t-marker")
    w.start()
    asyncio_run(produce(w.topic("send-requests"), [req(f"rs-{i}", recipient=f"person{i}@example.com")
                                                   for i in range(3)]))
    w.wait_for("SELECT count() FROM sendtrack.messages", [[3]])
    yield w
    w.stop()


def asyncio_run(coro):
    import asyncio

    return asyncio.run(coro)


def refused(w: Worker, q: str) -> dict:
    status, body = w.request("GET", "/query", q=q)
    assert status >= 400 and "error" in body and "rows" not in body, (q, status, body)
    return body


def tables(w: Worker) -> list:
    return w.sql("SELECT name, total_rows FROM system.tables WHERE database = 'sendtrack' ORDER BY name")


def test_files_of_the_machine_are_not_readable(worker):
    before = tables(worker)
    for q in ("SELECT * FROM file('/etc/passwd', 'LineAsString')",
              "SELECT file('/etc/passwd')",
              "SELECT * FROM file('/proc/self/environ', 'RawBLOB')",
              "SELECT file('/proc/self/environ')",
              "SELECT 1 WHERE file('/proc/self/environ') != ''",
              "WITH (SELECT file('/etc/passwd')) AS f SELECT f",
              "SELECT * FROM sendtrack.messages WHERE recipient IN (SELECT file('/etc/hostname'))",
              "select  FILE('/etc/passwd')  /* comment */",
              "SELECT * FROM fileCluster('default', '/etc/passwd', 'LineAsString')"):
        body = refused(worker, q)
        assert "root:" not in str(body) and "s3cr3t-marker" not in str(body), (q, body)
    assert tables(worker) == before


def test_no_outbound_connection_is_opened(worker):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        for q in (f"SELECT * FROM url('http://127.0.0.1:{port}/x', 'CSV', 'a String')",
                  f"SELECT * FROM remote('127.0.0.1:{port}', system.one)",
                  f"SELECT * FROM remoteSecure('127.0.0.1:{port}', system.one)",
                  f"SELECT * FROM postgresql('127.0.0.1:{port}', 'db', 't', 'u', 'p')",
                  f"SELECT * FROM mysql('127.0.0.1:{port}', 'db', 't', 'u', 'p')",
                  f"SELECT * FROM s3('http://127.0.0.1:{port}/b/k', 'CSV', 'a String')",
                  "SELECT * FROM executable('id', 'TSV', 'a String')",
                  "SELECT * FROM Python('settings')"):
            refused(worker, q)
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_nothing_is_written_to_a_file(worker):
    target = SITE_PACKAGES / f"sendtrack_attack_{os.getpid()}.pth"
    for q in (f"SELECT 'import os' || char(59) || 'os.system(''touch /tmp/pwned'')' INTO OUTFILE '{target}' "
              "FORMAT LineAsString",
              f"SELECT 1 INTO OUTFILE '{target}'",
              f"SELECT 1 INTO OUTFILE '{target}' TRUNCATE FORMAT CSV",
              f"SELECT 1; SELECT 1 INTO OUTFILE '{target}'",
              f"SELECT 1 -- \nINTO OUTFILE '{target}'"):
        refused(worker, q)
        assert not target.exists(), q


def test_statements_that_write_are_refused(worker):
    before = tables(worker)
    for q in ("CREATE TABLE sendtrack.x (a UInt8) ENGINE = Memory",
              "INSERT INTO sendtrack.dead_letters_raw (error) VALUES ('x')",
              "DROP TABLE sendtrack.status_changes_raw",
              "TRUNCATE TABLE sendtrack.status_changes_raw",
              "ALTER TABLE sendtrack.status_changes_raw DELETE WHERE 1",
              "SET readonly = 0",
              "SYSTEM STOP MERGES",
              "KILL QUERY WHERE 1",
              "OPTIMIZE TABLE sendtrack.status_changes_raw FINAL",
              "SELECT 1; DROP TABLE sendtrack.status_changes_raw",
              "SELECT 1 SETTINGS readonly = 0",
              "SELECT count() FROM sendtrack.messages SETTINGS max_memory_usage = 0",
              "SELECT count() FROM sendtrack.messages SETTINGS max_execution_time = 0",
              "SELECT count() FROM sendtrack.messages SETTINGS max_result_rows = 0"):
        refused(worker, q)
    assert tables(worker) == before
    assert worker.sql("SELECT count() FROM sendtrack.messages") == [[3]]


def test_a_huge_query_is_stopped_by_its_limits(worker):
    started = time.monotonic()
    body = refused(worker, "SELECT count() FROM numbers(1e12)")
    assert time.monotonic() - started < 15, "the time limit did not stop it"
    assert body["code"] in (159, 158), body  # TIMEOUT_EXCEEDED, TOO_MANY_ROWS (estimated)
    body = refused(worker, "SELECT number FROM numbers(20000000)")
    assert body["code"] == 396, body  # TOO_MANY_ROWS_OR_BYTES: the result is capped, not built whole
    assert worker.get("/health")["status"] == "ok"


def test_faust_pages_that_serve_state_are_off(worker):
    for path in ("/table/messages/", "/table/messages/rs-1/", "/router/messages/rs-1/"):
        status, body = worker.request("GET", path)
        assert status == 404, (path, status, body)
        assert "example.com" not in str(body)


def test_the_product_has_no_fault_injection_page(worker):
    # Test faults live in tests/faults.py and are never part of a worker started as users start it.
    for method in ("GET", "POST"):
        status, _ = worker.request(method, "/debug/clickhouse-outage", seconds="60")
        assert status == 404, (method, status)
    assert worker.get("/health")["status"] == "ok"
    assert worker.sql("SELECT 1") == [[1]]


def test_health_names_no_host_or_path(worker):
    body = worker.get("/health")
    assert body["clickhouse"] == "embedded"
    assert str(worker.data_dir) not in str(body) and "127.0.0.1" not in str(body)


def test_without_readers_only_loopback_hosts_and_same_site_are_served(worker):
    # A DNS-rebinding page reaches 127.0.0.1 under its own host name.
    status, body = worker.request("GET", "/query", headers={"Host": f"attacker.example:{worker.port}"},
                                  q="SELECT recipient FROM sendtrack.messages")
    assert status == 403 and "example.com" not in str(body)
    # A page on another site fires a request at the operator's worker.
    for path in ("/query", "/reports/customer"):
        status, body = worker.request("GET", path, headers={"Sec-Fetch-Site": "cross-site"},
                                      q="SELECT recipient FROM sendtrack.messages", customer="cus-1")
        assert status == 403 and "example.com" not in str(body), (path, body)
    status, body = worker.request("GET", "/query", headers={"Host": f"localhost:{worker.port}"}, q="SELECT 1")
    assert status == 200 and body["rows"] == [[1]]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A worker with two readers configured."""
    w = Worker(tmp_path_factory.mktemp("readsec-auth"), "readsec-auth", readers="ana:pw-ana-1,bob:pw-bob-2")
    w.start()
    asyncio_run(produce(w.topic("send-requests"), [req("ga-1", recipient="secret-person@example.com")]))
    w.wait_for("SELECT count() FROM sendtrack.messages", [[1]])
    yield w
    w.stop()


@pytest.mark.parametrize("path,params", [
    ("/query", {"q": "SELECT recipient FROM sendtrack.messages"}),
    ("/reports/customer", {"customer": "cus-1"}),
    ("/reports/funnel", {}),
    ("/reports/health", {}),
])
def test_readers_need_credentials(guarded, path, params):
    for headers in ({"Authorization": "Basic "},  # no credentials at all (overrides the test's own)
                    {"Authorization": "Basic YW5hOndyb25n"},  # ana:wrong
                    {"Authorization": "Basic bm9ib2R5OnB3LWFuYS0x"},  # nobody:pw-ana-1
                    {"Authorization": "Bearer pw-ana-1"}):
        status, body = guarded.request("GET", path, headers=headers, **params)
        assert status == 401 and "secret-person" not in str(body), (path, headers, status, body)
    status, body = guarded.request("GET", path, headers={"Authorization": "Basic Ym9iOnB3LWJvYi0y"}, **params)
    assert status == 200, body
    # ClickHouse's own headers work too (the HTTP interface's clients send them).
    status, body = guarded.request("GET", path, headers={"Authorization": "", "X-ClickHouse-User": "ana",
                                                         "X-ClickHouse-Key": "pw-ana-1"}, **params)
    assert status == 200, body
    status, body = guarded.request("GET", path, headers={"Authorization": "", "X-ClickHouse-User": "ana",
                                                         "X-ClickHouse-Key": "nope"}, **params)
    assert status == 401


def test_with_readers_the_reader_reads(guarded):
    assert guarded.sql("SELECT recipient FROM sendtrack.messages") == [["secret-person@example.com"]]
    assert guarded.get("/health")["status"] == "ok"  # health stays open: it names nobody

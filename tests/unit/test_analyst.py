"""Readers' SQL on the embedded engine: ClickHouse parses it, the parse tree is checked, and the
session is readonly with limits, apart from the sink's connection."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from sendtrack.settings import Settings
from sendtrack import threads as threads_mod
from sendtrack.threads import evaluation_nice, thread_stat
from sinks.analyst import EVALUATION_BLOCK_ROWS, Analysts, Refused, analyst_limits, check_tree, evaluation_pool
from sinks.clickhouse import ClickHouse


# Runs until the 3 s time limit: under the rows-read limit, but seconds of hashing.
SLOW = "SELECT count() FROM numbers(1900000000) WHERE sipHash64(number) = 1"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """chDB runs one engine per process: use the one an earlier test module opened, else open one
    here and close it (with the readers' handles) afterwards, so a later module can open its own."""
    already = next(iter(ClickHouse._embedded), None)
    path = already or str(tmp_path_factory.mktemp("analyst"))
    settings = Settings(clickhouse_url=f"chdb://{path}", query_max_seconds=3, query_max_result_rows=1000,
                        query_concurrency=2)
    ch = ClickHouse.connect(settings, database=f"analyst_{uuid.uuid4().hex[:8]}")
    ch.command(f"CREATE DATABASE IF NOT EXISTS {ch.database}")
    ch.command(f"CREATE TABLE {ch.database}.t (x UInt64) ENGINE = MergeTree ORDER BY x")
    ch.command(f"INSERT INTO {ch.database}.t VALUES (1), (2), (3)")
    pool = Analysts(settings, ch)
    yield settings, ch, pool
    pool.close()
    ch.command(f"DROP DATABASE IF EXISTS {ch.database}")
    if already is None:
        ClickHouse._embedded.pop(path).close()


def test_a_reader_reads(engine):
    settings, ch, pool = engine
    assert pool.query(f"SELECT sum(x) FROM {ch.database}.t") == (["sum(x)"], [(6,)])
    assert pool.query(f"SELECT x FROM {ch.database}.t WHERE x = {{v:UInt64}}", {"v": 2})[1] == [(2,)]
    assert pool.query("SELECT count() FROM numbers(10)")[1] == [(10,)]
    assert pool.query(f"SHOW TABLES FROM {ch.database}")[1] == [("t",)]
    assert pool.query(f"DESCRIBE TABLE {ch.database}.t")[1][0][:2] == ("x", "UInt64")


@pytest.mark.parametrize("sql,code", [
    ("SELECT file('/etc/passwd')", 497),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", 497),
    ("SELECT * FROM url('http://127.0.0.1:9/', 'CSV', 'a String')", 497),
    ("SELECT 1 INTO OUTFILE '/tmp/sendtrack-never-written'", 164),
    ("SELECT 1; SELECT 2", 62),
    ("SELECT 1 SETTINGS readonly = 0", 164),
    ("SELECT 1 SETTINGS max_execution_time = 0", 164),
    ("INSERT INTO t VALUES (4)", 164),
    ("DROP TABLE t", 164),
    ("SELECT count() FROM numbers(1e12)", 158),  # TOO_MANY_ROWS: refused before it starts
    ("SELECT count() FROM numbers(10) SETTINGS max_block_size = 4", 164),
    (SLOW, 159),  # TIMEOUT_EXCEEDED
    ("SELECT number FROM numbers(5000)", 396),
    ("", 62),
    ("SELEC 1", 62),
])
def test_what_a_reader_cannot_do(engine, sql, code):
    settings, ch, pool = engine
    with pytest.raises(Refused) as refused:
        pool.query(sql)
    assert refused.value.code == code, refused.value.message
    assert ch.query(f"SELECT sum(x) FROM {ch.database}.t")[1] == [(6,)]


def test_the_parse_tree_check():
    check_tree(["SelectWithUnionQuery (children 1)", " ExpressionList (children 1)",
                "  SelectQuery (children 1)", "   ExpressionList (children 1)", "    Function count"])
    outfile = ["SelectWithUnionQuery (children 2)", " ExpressionList (children 1)", " Literal '/tmp/x'"]
    with pytest.raises(Refused, match="INTO OUTFILE"):
        check_tree(outfile)
    with pytest.raises(Refused, match="table function"):
        check_tree(["SelectWithUnionQuery (children 1)", "     TableExpression (children 1)",
                    "      Function someTableFunction (children 1)"])
    with pytest.raises(Refused, match="only reading"):
        check_tree(["InsertQuery (children 1)"])


def test_limits_come_before_readonly():
    limits = analyst_limits(Settings(query_memory_mb=64))
    assert list(limits)[-1] == "readonly" and limits["readonly"] == 1
    assert limits["max_memory_usage"] == 64 << 20 and limits["result_overflow_mode"] == "throw"


def test_a_readers_query_does_not_hold_the_sinks_connection(engine):
    settings, ch, pool = engine
    done = threading.Event()

    def slow() -> None:
        with pytest.raises(Refused):
            pool.query(SLOW)
        done.set()

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    ch.insert_json("t", ["x"], b'{"x": 4}')
    inserted_in = time.monotonic() - started
    finished_first = not done.is_set()
    thread.join()
    assert finished_first and inserted_in < 1.0, inserted_in
    # The sink's session is not readonly: readers' settings stay on their own sessions.
    assert ch.query("SELECT getSetting('readonly')")[1] == [(0,)]


def test_a_pool_can_keep_its_statements_to_one_thread(engine):
    # The alerts' evaluator reads through such a pool: with a pause of nine times its duration, one
    # thread keeps it to a tenth of a core. A reader's pool uses ClickHouse's default.
    settings, ch, pool = engine
    one = Analysts(settings, ch, threads=1)
    try:
        assert one.trusted_query("SELECT getSetting('max_threads')")[1] == [(1,)]
        with pytest.raises(Refused):  # the session is readonly: a statement cannot raise it again
            one.query("SELECT 1 SETTINGS max_threads = 8")
    finally:
        one.close()
    # A reader's pool keeps the engine's own default (the machine's cores).
    assert pool.trusted_query("SELECT getSetting('max_threads')")[1] == ch.query("SELECT getSetting('max_threads')")[1]


def test_the_alerts_evaluation_reads_on_one_thread_in_small_blocks(engine):
    # Its FINAL over message_health holds a block of every unmerged part: at 1 M messages in 7 parts,
    # ClickHouse's default blocks added 59-85 MB to the peak, these 24-29 MB (bench/alert_memory.py).
    settings, ch, pool = engine
    alerts = evaluation_pool(settings, ch)
    try:
        assert alerts.trusted_query("SELECT getSetting('max_threads'), getSetting('max_block_size')")[1] == [
            (1, EVALUATION_BLOCK_ROWS)]
        with pytest.raises(Refused):
            alerts.query("SELECT 1 SETTINGS max_block_size = 65409")
    finally:
        alerts.close()
    assert pool.trusted_query("SELECT getSetting('max_block_size')")[1] == ch.query(
        "SELECT getSetting('max_block_size')")[1]


def nice_values() -> dict[int, int]:
    return {int(t): stat[1] for t in os.listdir("/proc/self/task") if (stat := thread_stat(int(t)))}


def test_the_alerts_evaluation_runs_nicer_than_the_event_loop_in_clickhouses_threads(engine):
    """Its statement's threads (the caller's and ClickHouse's own) run at evaluation_nice while it runs
    and at their value again afterwards; a reader's statement keeps the process's value. Threads are
    judged against their value before (the process may run nice; ClickHouse keeps a thread at -20)."""
    settings, ch, pool = engine
    expected = evaluation_nice(settings.background_nice)
    alerts = evaluation_pool(settings, ch)
    alerts.trusted_query("SELECT 1")  # its session opened, whatever threads that starts
    before = nice_values()
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(nice for tid, nice in nice_values().items() if nice != before.get(tid, base))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert alerts.trusted_query("SELECT getSetting('os_thread_priority')")[1] == [(expected or 0,)]
        assert alerts.trusted_query("SELECT sum(sleepEachRow(0.05)) FROM numbers(12)")[1] == [(0,)]
        assert pool.trusted_query("SELECT getSetting('os_thread_priority')")[1] == [(0,)]
        done.set()
        watcher.join(5)
        after = nice_values()  # before the sessions close: a thread they end cannot hide a value left
    finally:
        done.set()
        alerts.close()
    if expected is None:  # no CAP_SYS_NICE, or a nice worker: nothing is set
        assert not seen
    else:
        assert seen == {expected}
        assert not [tid for tid, nice in after.items() if nice == expected and before.get(tid) != expected]
    # The evaluation is sendtrack's own query: ten times a reader's time limit before it is cut.
    assert alerts.limits["max_execution_time"] == 10 * settings.query_max_seconds


def test_only_the_embedded_engines_evaluation_sets_a_nice_value(engine, monkeypatch):
    settings, ch, _ = engine
    monkeypatch.setattr(threads_mod, "has_cap_sys_nice", lambda: True)
    monkeypatch.setattr(threads_mod.os, "getpriority", lambda which, who: 0)
    embedded = evaluation_pool(settings, ch)
    embedded.close()
    assert embedded.limits["os_thread_priority"] == settings.background_nice + 1
    assert list(embedded.limits)[-1] == "readonly"  # set last, so that the others can be set
    # A ClickHouse server's threads are its own: its evaluation sessions set nothing.
    on_server = evaluation_pool(settings.model_copy(update={"clickhouse_url": "http://clickhouse.example:8123"}), ch)
    on_server.close()
    assert "os_thread_priority" not in on_server.limits and "max_threads" in on_server.limits

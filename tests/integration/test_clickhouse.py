"""End to end on the real broker into embedded ClickHouse: views against a model, outage, reports."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from sendtrack import simulate
from sendtrack.settings import Settings
from tests.integration.conftest import ROOT, Worker

N_MESSAGES = 800
ENGAGED = {"opened", "clicked", "answered"}
POSITIVE_ORDER = ["sent", "processing", "delivered", "opened", "clicked", "succeeded"]


def expected_current(reached: set[str]) -> str:
    """CONTRACT §2.3, written out independently of sendtrack.status."""
    if reached & {"failed", "bounced"} and not reached & ENGAGED:
        return "bounced" if "bounced" in reached else "failed"
    best = ""
    for s in POSITIVE_ORDER:
        if s in reached or (s == "opened" and "answered" in reached):
            best = "answered" if s == "opened" and "answered" in reached else s
    return best


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One worker, one simulated run published while ClickHouse is unavailable for a while."""
    w = Worker(tmp_path_factory.mktemp("e2e"), "e2e", faults=True, orphan_ttl_seconds=3,
               # The simulation spreads requests over three days: SMS and ZNS receipts expected within a day.
               receipt_expected_hours="sms:24,zns:24", sweep_interval_seconds=1)
    w.start()
    try:
        traffic = simulate.generate(N_MESSAGES, seed=11, run_id="e2e")
        settings = Settings(kafka_broker=w.env["SENDTRACK_KAFKA_BROKER"], topic_prefix=w.prefix)
        # An outage of the sink's database while the traffic flows: rows must be delayed, not lost.
        assert w.post("/debug/clickhouse-outage", seconds=8)["outage_seconds"] == 8
        asyncio.run(simulate.publish(settings, traffic, progress=False))
        yield w, traffic
    finally:
        w.stop()


def test_funnel_daily_equals_the_model(run):
    w, traffic = run
    expected = Counter((m.action, s) for m in traffic.messages for s in m.expected)
    rows = sorted([a, s, n] for (a, s), n in expected.items())
    w.wait_for("SELECT action, status, toUInt64(sum(messages)) FROM sendtrack.funnel_daily "
               "GROUP BY action, status ORDER BY action, status", rows, timeout=120)
    # Per day and campaign too: metrics belong to the send date.
    by_day = Counter((time.strftime("%Y-%m-%d", time.gmtime(m.requested_at / 1000)), m.campaign_id, s)
                     for m in traffic.messages for s in m.expected)
    got = w.sql("SELECT toString(day), campaign_id, status, toUInt64(sum(messages)) FROM sendtrack.funnel_daily "
                "GROUP BY day, campaign_id, status")
    assert Counter({(d, c, s): n for d, c, s, n in got}) == by_day


def test_messages_and_current_status_equal_the_model(run):
    w, traffic = run
    expected = Counter((m.action, expected_current(m.expected)) for m in traffic.messages)
    rows = sorted([a, s, n] for (a, s), n in expected.items())
    w.wait_for("SELECT action, current_status, toUInt64(sum(messages)) FROM sendtrack.current_status_daily "
               "GROUP BY action, current_status ORDER BY action, current_status", rows, timeout=120)
    assert w.sql("SELECT count(), uniqExact(message_id) FROM sendtrack.messages") == [[N_MESSAGES, N_MESSAGES]]
    # Milestone columns agree with the model message by message.
    got = {r[0]: r[1:] for r in w.sql(
        "SELECT message_id, sent_at IS NOT NULL, delivered_at IS NOT NULL, failed_at IS NOT NULL, "
        "clicked_at IS NOT NULL FROM sendtrack.messages")}
    for m in traffic.messages:
        assert got[m.message_id] == [s in m.expected for s in ("sent", "delivered", "failed", "clicked")], m


def test_failure_reasons_and_status_changes_have_no_duplicates(run):
    w, traffic = run
    failed = Counter((m.action, m.failure[0]) for m in traffic.messages if "failed" in m.expected)
    rows = sorted([a, rc, n] for (a, rc), n in failed.items())
    w.wait_for("SELECT action, reason_code, toUInt64(sum(messages)) FROM sendtrack.failure_reasons "
               "GROUP BY action, reason_code ORDER BY action, reason_code", rows, timeout=60)
    total = sum(len(m.expected) for m in traffic.messages)
    assert w.sql("SELECT count(), uniqExact(message_id, status) FROM sendtrack.status_changes") == [[total, total]]


def test_engagement_events_one_row_per_event_id(run):
    w, _ = run
    rows = w.sql("SELECT count(), uniqExact(event_id), countIf(status NOT IN ('opened', 'clicked')) "
                 "FROM sendtrack.engagement_events")
    assert rows[0][0] > 0 and rows[0][0] == rows[0][1] and rows[0][2] == 0
    # The simulator sends a repeated open/click with event id '<first>-again' for some messages.
    again = w.sql("SELECT count() FROM sendtrack.engagement_events WHERE endsWith(event_id, '-again')")
    assert again[0][0] > 0


def test_dead_letters_are_queryable(run):
    w, traffic = run
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = dict(w.sql("SELECT error_type, count() FROM sendtrack.dead_letters GROUP BY error_type"))
        if rows.get("orphan", 0) >= traffic.orphans:
            break
        time.sleep(1)
    assert rows.get("orphan") == traffic.orphans
    malformed = sum(n for t, n in rows.items() if t != "orphan")
    assert malformed == traffic.malformed, (rows, w.sql(
        "SELECT error_type, error, payload FROM sendtrack.dead_letters WHERE error_type != 'orphan' LIMIT 5"))
    assert set(rows) - {"orphan"} <= {"undecodable", "not_an_object", "missing_field", "unknown_action"}


def test_the_outage_delayed_rows_and_inserts_stay_few_and_large(run):
    w, traffic = run
    metrics = urlopen_text(f"http://127.0.0.1:{w.port}/metrics")
    errors = metric(metrics, "sendtrack_clickhouse_insert_errors_total")
    assert errors >= 1, "the injected outage never hit an insert"
    inserts = metric(metrics, "sendtrack_clickhouse_inserts_total")
    rows = metric(metrics, "sendtrack_clickhouse_rows_total")
    assert rows >= sum(len(m.expected) for m in traffic.messages)
    # Every status change the engine published is counted once its batch is acknowledged.
    assert metric(metrics, "sendtrack_status_changes_total") >= sum(len(m.expected) for m in traffic.messages)
    assert inserts <= rows / 20, (inserts, rows)


def urlopen_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def report(w: Worker, *args: str) -> str:
    env = dict(w.env)
    out = subprocess.run([sys.executable, "-m", "sendtrack.cli", "report", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_report_commands(run):
    w, traffic = run
    w.wait_for("SELECT count() FROM sendtrack.messages", [[N_MESSAGES]], timeout=120)
    funnel = {r["action"]: r for r in json.loads(report(w, "funnel", "--format", "json"))}
    emails = [m for m in traffic.messages if m.action == "email"]
    assert funnel["email"]["sent"] == len(emails)
    delivered = sum("delivered" in m.expected for m in emails)
    assert funnel["email"]["delivered"] == delivered
    assert funnel["email"]["delivery_rate"] == pytest.approx(delivered / len(emails), abs=1e-4)

    camp = traffic.messages[0].campaign_id
    only = json.loads(report(w, "funnel", "--campaign", camp, "--by", "campaign", "--format", "json"))
    assert {r["campaign"] for r in only} == {camp}
    assert sum(r["sent"] for r in only) == sum(1 for m in traffic.messages
                                               if m.campaign_id == camp and "sent" in m.expected)

    table = report(w, "status", "--lang", "vi")
    assert "Đã nhận" in table and "Messages by current status" in table

    failures = list(csv.reader(io.StringIO(report(w, "failures", "--format", "csv"))))
    assert failures[0] == ["action", "provider", "reason_code", "reason", "messages"]
    assert sum(int(r[4]) for r in failures[1:]) == sum("failed" in m.expected for m in traffic.messages)

    customer = traffic.messages[0].customer_id
    mine = [m for m in traffic.messages if m.customer_id == customer]
    rows = json.loads(report(w, "customer", customer, "--format", "json"))
    assert sorted(r["message_id"] for r in rows) == sorted(m.message_id for m in mine)
    for r in rows:
        m = next(m for m in mine if m.message_id == r["message_id"])
        assert r["current_status"] == expected_current(m.expected)
        assert all(s in r["timeline"] for s in m.expected)

    latency = {r["action"]: r for r in json.loads(report(w, "latency", "--format", "json"))}
    assert latency["email"]["sent_to_delivered_n"] == delivered
    assert latency["email"]["sent_to_delivered_p50"] > 0

    # Unconfirmed: no outcome past sent/processing, and older than its action's expected hours.
    hours = Settings(receipt_expected_hours=w.env["SENDTRACK_RECEIPT_EXPECTED_HOURS"]).receipt_hours

    def waiting(now: float) -> set[str]:
        return {m.message_id for m in traffic.messages if m.expected <= {"sent", "processing"} and hours[m.action]
                and m.requested_at < now - hours[m.action] * 3.6e6}

    before = waiting(time.time() * 1000)
    rows = json.loads(report(w, "unconfirmed", "--format", "json"))
    after = waiting(time.time() * 1000)  # a message may cross its deadline while the report runs
    assert before <= {r["message_id"] for r in rows} <= after and len(before) > 0
    assert {r["current_status"] for r in rows} <= {"sent", "processing"}


def test_metrics_show_where_memory_and_time_go(run):
    w, traffic = run
    deadline = time.monotonic() + 60  # the fixture holds ClickHouse away for the first 8 s
    needed = ("sendtrack_malloc_trim_seconds_count", "sendtrack_clickhouse_insert_seconds_count")
    while True:  # run alone, this test may come before the first trim and the first insert
        text = urlopen_text(f"http://127.0.0.1:{w.port}/metrics")
        series = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        collected = sum(float(series.get(f'sendtrack_gc_collections_total{{generation="{g}"}}', 0)) for g in "012")
        if (all(name in series for name in needed) and collected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    value = lambda name: float(series[name])  # noqa: E731
    assert 50e6 < value("sendtrack_process_resident_bytes") <= value("sendtrack_process_peak_resident_bytes")
    # One budget (SENDTRACK_STATE_MEMORY_MB, 64) for every table's RocksDB: the memtables and the
    # shared cache each stay within their half.
    half = 32 * 2**20
    write_buffers = value('sendtrack_rocksdb_memory_bytes{part="write_buffers"}')
    cache = value('sendtrack_rocksdb_memory_bytes{part="block_cache"}')
    assert 0 < write_buffers <= half * 1.1 and 0 < cache <= half * 1.1, (write_buffers, cache)
    assert value('sendtrack_malloc_bytes{part="in_use"}') > 0
    assert value("sendtrack_malloc_trim_seconds_count") >= 1
    # Python's collector, every generation, timed where it pauses the thread that triggered it.
    # (The freeze, 10 s after start, is a full collection; the younger ones depend on the load.)
    collections = [value(f'sendtrack_gc_collections_total{{generation="{g}"}}') for g in "012"]
    assert sum(collections) >= 1, collections
    assert sum(value(f'sendtrack_gc_collection_seconds_total{{generation="{g}"}}') for g in "012") > 0
    # Every engine batch and every sink write is timed; the loop-lag probe runs.
    assert value("sendtrack_engine_batch_seconds_count") >= 1
    # ...and each batch's phases (a fetch may hold batches of both engine agents): their times add up
    # to no more than the batches'.
    phases = ("apply", "produce", "table_write")
    counts = {p: value(f"sendtrack_engine_{p}_seconds_count") for p in phases}
    assert counts["apply"] >= value("sendtrack_engine_batch_seconds_count"), counts
    assert counts["apply"] == counts["produce"] == counts["table_write"], counts
    spent = sum(value(f"sendtrack_engine_{p}_seconds_sum") for p in phases)
    assert 0 < spent <= value("sendtrack_engine_batch_seconds_sum"), spent
    writes = value("sendtrack_clickhouse_insert_seconds_count")
    assert 1 <= writes <= metric(text, "sendtrack_clickhouse_inserts_total")
    assert value('sendtrack_event_loop_lag_seconds_bucket{le="+Inf"}') == value(
        "sendtrack_event_loop_lag_seconds_count") > 0
    # Each batch the sink gathered is timed and counted by what ended it (both at once, in one read).
    gathered = value("sendtrack_sink_batch_gather_seconds_count")
    ended = metric(text, "sendtrack_sink_batches_total")
    assert gathered >= 1 and ended == gathered, (ended, gathered)
    assert set(re.findall(r'sendtrack_sink_batches_total\{ended="(\w+)"\}', text)) <= {
        "caught_up", "deadline", "full", "stopping"}


def test_the_embedded_engine_and_analyst_queries_are_bounded(run):
    w, _ = run
    # ClickHouse's server defaults (5 GiB caches, merges up to half the RAM) are replaced by budgets
    # for a worker's process.
    server = dict(w.sql("SELECT name, value FROM system.server_settings WHERE name IN "
                        "('mark_cache_size', 'merges_mutations_memory_usage_soft_limit', "
                        "'background_merges_mutations_concurrency_ratio')"))
    assert server == {"mark_cache_size": str(64 * 2**20),
                      "merges_mutations_memory_usage_soft_limit": str(256 * 2**20),
                      "background_merges_mutations_concurrency_ratio": "1"}
    # The engine's own allocator returns freed pages from background threads within a second
    # (ClickHouse's build keeps them 5 s, and only an allocation in the same arena returns them).
    stats = w.sql("SELECT * FROM system.jemalloc_stats")[0][0]
    assert "opt.dirty_decay_ms: 1000 " in stats and "opt.background_thread: true" in stats, \
        [line for line in stats.splitlines() if "opt." in line]
    # 20 M distinct GROUP BY keys need more than the 256 MiB one query may use: with the spill to
    # disk past half of it the query answers, without the spill it fails with a precise error.
    group_by = "SELECT count() FROM (SELECT number AS k, count() FROM numbers(20000000) GROUP BY k)"
    assert w.sql(group_by) == [[20_000_000]]
    # A reader cannot turn the spill off (nor any other limit): the session is readonly.
    failed = w.get("/query", q=group_by + " SETTINGS max_bytes_before_external_group_by = 0")
    assert failed["code"] == 164 and "readonly" in failed["error"], failed
    # The worker survived it and still answers.
    assert w.get("/health")["status"] == "ok"

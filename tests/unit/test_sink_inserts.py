"""The sink's inserts against embedded ClickHouse (chDB): partition limits, rows ClickHouse refuses,
errors that stop the sink. Each test has its own database."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import orjson
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from schemas.models import StatusChange
from sendtrack.metrics import metrics
from tests import faults
from sinks.clickhouse import ClickHouse, is_rejection, is_retriable
from sinks.writer import (MAX_PARTITIONS_PER_INSERT, REJECTED_BY_CLICKHOUSE, STATUS, Batch, Unwritable,
                          partition_month)

CHANGE = StatusChange(
    change_id="c", kind="milestone", message_id="m", status="sent", previous_status="", current_status="sent",
    inferred=False, occurred_at=1_780_000_000_000, recorded_at=1_780_000_001_000, action="email",
    provider="sendgrid", customer_id="cus", recipient="a@b", flow_id="f", campaign_id="c", step_id="s",
    requested_at=1_780_000_000_000, event_id="", url="", is_machine=False,
)
DEAD = {"source_topic": "send-requests", "partition": 1, "offset": 7, "key": None, "payload": "{",
        "payload_encoding": "utf-8", "error_type": "undecodable", "error": "bad", "failed_at": 1_780_000_000_000}
MONTH_MS = 31 * 86_400_000


def rows(ch: ClickHouse, sql: str) -> list[tuple]:
    return ch.query(sql.replace("{db}", f"`{ch.database}`"))[1]


def change(i: int, **kw) -> bytes:
    return orjson.dumps(dataclasses.replace(CHANGE, message_id=f"m{i}", change_id=f"c{i}", **kw))


def backfill(months: int) -> Batch:
    """One status change per month, over `months` months from 2010 on."""
    batch = Batch()
    for i in range(months):
        batch.add_status_change(change(i, requested_at=1_263_000_000_000 + i * MONTH_MS), "status-changes", 0, i)
    return batch


# ---------------------------------------------------------------------------------------------
# What ClickHouse's errors mean
# ---------------------------------------------------------------------------------------------


def test_too_many_parts_is_retried_but_too_many_partitions_is_the_rows():
    merges = DatabaseError("Code: 252. DB::Exception: Too many parts (3001 with average size of 1.2 KiB) in "
                           "table 'db.t'. Merges are processing significantly slower than inserts. "
                           "(TOO_MANY_PARTS)", code=252, name="TOO_MANY_PARTS")
    in_total = DatabaseError("Code: 252. DB::Exception: Too many parts (100000) in all partitions in total in "
                             "table 'db.t'. (TOO_MANY_PARTS)", code=252, name="TOO_MANY_PARTS")
    partitions = DatabaseError("Code: 252. DB::Exception: Too many partitions for single INSERT block (more than "
                               "100). (TOO_MANY_PARTS)", code=252, name="TOO_MANY_PARTS")
    for busy in (merges, in_total, OperationalError("connection refused"), DatabaseError("x", code=241)):
        assert is_retriable(busy) and not is_rejection(busy), busy
    assert is_rejection(partitions) and not is_retriable(partitions)
    assert is_rejection(DatabaseError("Duplicate field", code=117)) and not is_retriable(DatabaseError("", code=117))
    unknown_table = DatabaseError("Code: 60. Unknown table", code=60, name="UNKNOWN_TABLE")
    assert not is_retriable(unknown_table) and not is_rejection(unknown_table)


def test_clickhouse_refuses_101_months_in_one_insert(ch):
    # The attack, without the sink's splitting: what main did on every retry.
    lines = backfill(101).status
    with pytest.raises(DatabaseError) as refused:
        ch.insert_json(STATUS.ingest, STATUS.columns, b"\n".join(line.data for line in lines))
    assert refused.value.code == 252 and is_rejection(refused.value) and not is_retriable(refused.value)


def test_partition_month_is_what_clickhouse_partitions_by(ch):
    times = [0, 1, 946_684_799_999, 946_684_800_000, 1_780_000_000_000, 1_782_863_999_999, 1_782_864_000_000,
             4_102_444_800_000, 5_643_590_399_999]
    got = rows(ch, "SELECT toYYYYMM(fromUnixTimestamp64Milli(t, 'UTC')), toYYYYMM(toDate(fromUnixTimestamp64Milli("
                   "t, 'UTC'))) FROM (SELECT arrayJoin([" + ",".join(map(str, times)) + "])::Int64 AS t)")
    assert [a for a, _ in got] == [b for _, b in got] == [partition_month(t) for t in times]


# ---------------------------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------------------------


def test_a_batch_over_101_months_lands_in_every_table_and_again_changes_nothing(ch):
    batch = backfill(101)
    assert batch.write(ch) == {"status_changes_raw": 101}
    assert batch.inserts["status_changes_raw"] == 3 and batch.rejected == 0  # split first, none refused
    assert rows(ch, "SELECT count(), uniqExact(toYYYYMM(requested_at)) FROM {db}.messages") == [(101, 101)]
    assert rows(ch, "SELECT count() FROM {db}.status_changes") == [(101,)]
    assert rows(ch, "SELECT toUInt64(sum(messages)), uniqExact(toYYYYMM(day)) FROM {db}.funnel_daily") == [(101, 101)]
    # A redelivery of the batch (a crash before the commit): the views fold it.
    views = {v: rows(ch, f"SELECT * FROM {{db}}.{v} ORDER BY message_id") for v in ("messages", "status_changes")}
    backfill(101).write(ch)
    assert views == {v: rows(ch, f"SELECT * FROM {{db}}.{v} ORDER BY message_id") for v in views}


def test_a_row_clickhouse_refuses_is_a_dead_letter_and_its_neighbours_are_inserted(ch):
    # A field twice: Python's JSON reader keeps the last one and the record passes the sink's check;
    # ClickHouse refuses the line (INCORRECT_DATA) when it meets the second one before the line's
    # last column. The change is an open: its engagement line (which ClickHouse would take) is set
    # aside with it.
    refused = change(5, status="opened", current_status="opened", event_id="e5")[:-1] + b',"status":"clicked"}'
    refused_letter = b'{"offset":8,' + orjson.dumps(DEAD)[1:]
    batch = Batch()
    for i in range(10):
        batch.add_status_change(refused if i == 5 else change(i), "status-changes", 2, 100 + i)
    batch.add_dead_letter(orjson.dumps(DEAD), "dead-letters", 0, 40)
    batch.add_dead_letter(refused_letter, "dead-letters", 0, 41)
    assert batch.dead[1].data == refused_letter and not batch.status[5].own  # passed the Python check

    written = batch.write(ch)
    assert written == {"status_changes_raw": 9, "dead_letters_raw": 3}
    assert batch.rejected == 2 and "status-changes partition 2 offset 105" in batch.first_rejection
    assert rows(ch, "SELECT message_id FROM {db}.messages ORDER BY message_id") \
        == [(f"m{i}",) for i in range(10) if i != 5]
    assert rows(ch, "SELECT count() FROM {db}.engagement_events") == [(0,)]
    letters = rows(ch, "SELECT source_topic, partition, offset, payload, payload_encoding, error FROM "
                       f"{{db}}.dead_letters WHERE error_type = '{REJECTED_BY_CLICKHOUSE}' ORDER BY source_topic")
    assert [r[:5] for r in letters] == [("dead-letters", 0, 41, refused_letter.decode(), "utf-8"),
                                        ("status-changes", 2, 105, refused.decode(), "utf-8")]
    for error in (r[5] for r in letters):
        assert error.startswith("ClickHouse error 117") and "Duplicate field" in error, error
    assert rows(ch, "SELECT offset FROM {db}.dead_letters WHERE error_type = 'undecodable'") == [(7,)]


def test_a_refusal_for_too_many_partitions_is_split_until_it_fits(ch):
    # A server configured below what the writer assumes: the refused insert is halved, nothing is lost.
    batch = backfill(MAX_PARTITIONS_PER_INSERT)
    ch.command("SET max_partitions_per_insert_block = 20")
    try:
        assert batch.write(ch) == {"status_changes_raw": MAX_PARTITIONS_PER_INSERT}
    finally:
        ch.command("SET max_partitions_per_insert_block = 100")
    assert batch.rejected == 0 and batch.inserts["status_changes_raw"] > 1
    assert rows(ch, "SELECT count() FROM {db}.messages") == [(MAX_PARTITIONS_PER_INSERT,)]


def test_a_missing_table_is_not_the_rows_fault(ch):
    ch.command(f"DROP TABLE `{ch.database}`.status_changes_ingest")
    batch = Batch()
    for i in range(4):
        batch.add_status_change(change(i), "status-changes", 0, i)
    with pytest.raises(Unwritable, match="status_changes_ingest: ClickHouse error 60"):
        batch.write(ch)
    assert batch.rejected == 0
    assert rows(ch, "SELECT count() FROM {db}.dead_letters") == [(0,)]


def test_when_even_the_dead_letter_is_refused_the_write_stops(ch):
    # A real ClickHouse refusal of the sink's own rejection rows: a view that throws on them.
    ch.command(f"CREATE TABLE `{ch.database}`.refusals (x UInt8) ENGINE = Null")
    ch.command(f"CREATE MATERIALIZED VIEW `{ch.database}`.refuse_mv TO `{ch.database}`.refusals AS "
               f"SELECT throwIf(error_type = '{REJECTED_BY_CLICKHOUSE}', 'refused here') AS x "
               f"FROM `{ch.database}`.dead_letters_ingest")
    batch = Batch()
    batch.add_status_change(change(0), "status-changes", 0, 0)
    batch.add_status_change(change(1)[:-1] + b',"status":"x"}', "status-changes", 0, 1)
    with pytest.raises(Unwritable, match="dead-letter row for status-changes partition 0 offset 1.*error 395"):
        batch.write(ch)
    assert rows(ch, "SELECT message_id FROM {db}.messages") == [("m0",)]


# ---------------------------------------------------------------------------------------------
# The sink around the writes (no broker: the sink's write and commit steps)
# ---------------------------------------------------------------------------------------------


class Commits:
    """Stands in for the sink's Kafka consumer: records what the sink commits."""

    def __init__(self) -> None:
        self.committed: list[dict] = []

    async def commit(self, offsets: dict) -> None:
        self.committed.append(offsets)

    def highwater(self, tp) -> int:
        return 0

    def assignment(self) -> set:
        return set()


def test_the_sink_stops_with_one_error_and_holds_its_offsets(ch, caplog):
    from agents.sink import ClickHouseSink

    ch.command(f"DROP TABLE `{ch.database}`.dead_letters_ingest")
    sink = ClickHouseSink()
    sink.ch = ch
    batch = Batch()
    batch.add_status_change(change(0), "status-changes", 0, 0)
    batch.add_status_change(change(1)[:-1] + b',"status":"x"}', "status-changes", 0, 1)
    consumer = Commits()

    async def run() -> None:
        await sink._finish(consumer, asyncio.ensure_future(sink._write(batch)), {"tp": 2})

    with caplog.at_level(logging.WARNING, logger="agents.sink"):
        asyncio.run(run())
    assert consumer.committed == []
    assert sink.failed and "dead_letters_ingest" in sink.failed and "error 60" in sink.failed, sink.failed
    assert metrics.get("sink_failed") == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "offsets held" in errors[0].getMessage()
    # The good row was inserted; the refused one waits in Kafka (uncommitted) for the fix.
    assert rows(ch, "SELECT message_id FROM {db}.messages") == [("m0",)]


def test_an_outage_is_retried_and_then_the_batch_is_committed(ch):
    from agents.sink import ClickHouseSink

    sink = ClickHouseSink()
    sink.ch = ch
    faults.clickhouse_outage(0.5)
    consumer = Commits()
    batch = backfill(3)

    async def run() -> None:
        await sink._finish(consumer, asyncio.ensure_future(sink._write(batch)), {"tp": 3})

    asyncio.run(run())
    assert sink.failed is None and consumer.committed == [{"tp": 3}]
    assert rows(ch, "SELECT count() FROM {db}.messages") == [(3,)]


def test_a_caught_up_batch_waits_for_the_typical_insert_not_the_last_slow_one(ch):
    """The early batch gathers three times as long as an insert takes: the median of the last
    five, so one slow insert does not hold the next batch open for three times its duration."""
    from agents.sink import INSERTS_REMEMBERED, ClickHouseSink

    sink = ClickHouseSink()
    sink.ch = ch
    assert sink.insert_seconds() == 0.0  # before the first insert: SENDTRACK_SINK_CAUGHT_UP_SECONDS alone

    async def insert(n: int) -> None:
        await sink._finish(Commits(), asyncio.ensure_future(sink._write(backfill(n))), {})

    for _ in range(INSERTS_REMEMBERED):
        asyncio.run(insert(3))
    typical = sink.insert_seconds()
    assert typical > 0
    sink._insert_seconds.append(typical + 5.0)  # one insert far slower than the others
    assert sink.insert_seconds() < typical * 2 + 0.05, "one slow insert moved the window"
    for _ in range(INSERTS_REMEMBERED // 2 + 1):
        sink._insert_seconds.append(typical + 5.0)
    assert sink.insert_seconds() >= typical + 5.0, "slow inserts that are the rule must widen the window"

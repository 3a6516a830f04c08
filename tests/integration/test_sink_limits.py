"""The sink against batches ClickHouse refuses, on a real worker: a backfill over 101 months, a bad row."""

from __future__ import annotations

import asyncio
import calendar
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import BROKER, Worker, consume, req

MONTHS = 101  # ClickHouse refuses an insert block that spans more than 100 partitions (months)


def mid_month_times(n: int) -> list[int]:
    """Epoch ms at noon UTC on the 15th of each of the `n` months before this one (this month's
    15th may still be ahead, past the validation window)."""
    year, month = time.gmtime()[:2]
    year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    out = []
    for _ in range(n):
        out.append(calendar.timegm((year, month, 15, 12, 0, 0)) * 1000)
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out


async def publish(topic: str, values: list[bytes]) -> list[tuple[int, int]]:
    """(partition, offset) of each value, published in order."""
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, acks="all")
    await producer.start()
    try:
        return [(m.partition, m.offset) for m in
                [await producer.send_and_wait(topic, value=v, key=orjson.loads(v)["message_id"].encode())
                 for v in values]]
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A worker whose sink meets a backlog: the engine runs first (sink off) and turns a backfill of
    101 months of requests into status changes; the sink then starts and reads them in one batch.
    The requests are up to 8.5 years old: the validation window and the retention are widened for a backfill."""
    w = Worker(tmp_path_factory.mktemp("limits"), "limits", time_max_age_days=4000, retention_days=4000,
               aggregate_retention_days=4000, sink_enabled="false",
               sink_batch_seconds=2)
    w.start()
    times = mid_month_times(MONTHS)
    asyncio.run(publish(w.topic("send-requests"),
                        [req(f"backfill-{i}", campaign_id="backfill", requested_at=t)[1]
                         for i, t in enumerate(times)]))
    changes = asyncio.run(consume(w.topic("status-changes"), MONTHS, timeout=60, settle=1))
    assert len({c["message_id"] for c in changes}) == MONTHS, w.tail()
    w.stop()
    w.env["SENDTRACK_SINK_ENABLED"] = "true"
    w.start()
    yield w
    w.stop()


def insert_errors(w: Worker) -> float:
    return sum(v for k, v in w.metrics().items() if k.startswith("sendtrack_clickhouse_insert_errors_total"))


def test_a_backfill_over_101_months_reaches_every_view(worker):
    worker.wait_for("SELECT count(), uniqExact(toYYYYMM(requested_at)) FROM sendtrack.messages "
                    "WHERE campaign_id = 'backfill'", [[MONTHS, MONTHS]], timeout=90)
    assert worker.sql("SELECT count(), uniqExact(toYYYYMM(requested_at)) FROM sendtrack.status_changes "
                      "WHERE campaign_id = 'backfill'") == [[MONTHS, MONTHS]]
    assert worker.sql("SELECT toUInt64(sum(messages)), uniqExact(toYYYYMM(day)) FROM sendtrack.funnel_daily "
                      "WHERE campaign_id = 'backfill'") == [[MONTHS, MONTHS]]
    # Split before the insert, not found out by a refusal; nothing set aside.
    assert insert_errors(worker) == 0
    assert worker.sql("SELECT count() FROM sendtrack.dead_letters WHERE error_type = 'rejected_by_clickhouse'") \
        == [[0]]
    assert worker.get("/health")["status"] == "ok"


def change(mid: str, **kw: Any) -> bytes:
    doc = {"change_id": f"{mid}-sent", "kind": "milestone", "message_id": mid, "status": "sent",
           "previous_status": "", "current_status": "sent", "inferred": False, "occurred_at": 1_780_000_000_000,
           "recorded_at": 1_780_000_000_500, "action": "email", "provider": "sendgrid", "customer_id": "cus-1",
           "recipient": "", "flow_id": "", "campaign_id": "refused", "step_id": "", "requested_at": 1_780_000_000_000,
           "reason_code": "", "reason": "", "bounce_type": "", "reason_at": 0, "event_id": "", "url": "",
           "is_machine": False, **kw}
    return orjson.dumps(doc)


def test_a_row_clickhouse_refuses_is_dead_lettered_and_its_neighbours_land(worker):
    # A status change with a field twice: Python's JSON reader keeps the last value, ClickHouse
    # refuses the line (INCORRECT_DATA). On main it wedged the sink for good, and every row behind it.
    bad = change("refused-bad")[:-1] + b',"status":"delivered"}'
    values = [change(f"refused-{i}") for i in range(5)] + [bad] + [change(f"refused-{i}") for i in range(5, 10)]
    positions = asyncio.run(publish(worker.topic("status-changes"), values))
    worker.wait_for("SELECT count() FROM sendtrack.messages WHERE campaign_id = 'refused'", [[10]], timeout=60)
    partition, offset = positions[5]
    rows = worker.wait_for(
        "SELECT source_topic, partition, offset, payload, payload_encoding FROM sendtrack.dead_letters "
        "WHERE error_type = 'rejected_by_clickhouse'",
        [[worker.topic("status-changes"), partition, offset, bad.decode(), "utf-8"]], timeout=30)
    assert rows
    [[error]] = worker.sql("SELECT error FROM sendtrack.dead_letters WHERE error_type = 'rejected_by_clickhouse'")
    assert "117" in error and "Duplicate field" in error, error
    assert worker.sql("SELECT count() FROM sendtrack.messages WHERE message_id = 'refused-bad'") == [[0]]
    assert worker.get("/health")["status"] == "ok"

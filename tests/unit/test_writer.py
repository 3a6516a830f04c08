"""The sink's record checks (sinks/writer.py): what becomes an insert line and what a dead-letter row."""

from __future__ import annotations

import dataclasses

import orjson

from schemas.models import StatusChange
from sinks.writer import MAX_PARTITIONS_PER_INSERT, Batch, _split, partition_month

CHANGE = StatusChange(
    change_id="c1", kind="milestone", message_id="m1", status="opened", previous_status="delivered",
    current_status="opened", inferred=False, occurred_at=1_780_000_000_000, recorded_at=1_780_000_001_000,
    action="email", provider="sendgrid", customer_id="cus", recipient="a@b", flow_id="f", campaign_id="c",
    step_id="s", requested_at=1_779_999_000_000, event_id="e1", url="", is_machine=False,
)


def test_a_milestone_is_kept_as_its_own_bytes_plus_its_position():
    batch = Batch()
    value = orjson.dumps(CHANGE)
    batch.add_status_change(value, "status-changes", 3, 42)
    assert batch.dead == []
    row = orjson.loads(batch.status[0].data)
    assert row == {**orjson.loads(value), "_topic": "status-changes", "_partition": 3, "_offset": 42}
    # A reported open is also an engagement row; an inferred one is not.
    assert [orjson.loads(e.data)["event_id"] for e in batch.engagement] == ["e1"]
    inferred = Batch()
    inferred.add_status_change(orjson.dumps(dataclasses.replace(CHANGE, inferred=True)), "status-changes", 3, 43)
    assert inferred.engagement == [] and len(inferred.status) == 1


def test_an_engagement_record_goes_to_engagement_only():
    batch = Batch()
    batch.add_status_change(orjson.dumps(dataclasses.replace(CHANGE, kind="engagement")), "status-changes", 0, 1)
    assert batch.status == [] and len(batch.engagement) == 1


def test_records_the_sink_cannot_insert_become_dead_letter_rows():
    wrong_time = {**orjson.loads(orjson.dumps(CHANGE)), "occurred_at": "yesterday"}
    bool_as_time = {**orjson.loads(orjson.dumps(CHANGE)), "reason_at": True}
    missing = {k: v for k, v in orjson.loads(orjson.dumps(CHANGE)).items() if k != "customer_id"}
    batch = Batch()
    for i, value in enumerate([orjson.dumps(wrong_time), orjson.dumps(bool_as_time), orjson.dumps(missing),
                               b"[1, 2]", b"\xff not json"]):
        batch.add_status_change(value, "status-changes", 0, i)
    assert batch.status == [] and batch.engagement == []
    rows = [orjson.loads(d.data) for d in batch.dead]
    assert [r["offset"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r["error_type"] == "undecodable" and r["source_topic"] == "status-changes" for r in rows)
    assert "occurred_at must be int" in rows[0]["error"]
    assert "reason_at must be int, not bool" in rows[1]["error"]
    assert "customer_id" in rows[2]["error"]
    assert rows[4]["payload_encoding"] == "base64"


def test_a_dead_letter_record_is_checked_too():
    good = {"source_topic": "send-requests", "partition": 1, "offset": 7, "key": None, "payload": "{",
            "payload_encoding": "utf-8", "error_type": "undecodable", "error": "bad", "failed_at": 1_780_000_000_000}
    batch = Batch()
    batch.add_dead_letter(orjson.dumps(good), "dead-letters", 0, 0)
    batch.add_dead_letter(orjson.dumps({**good, "offset": "7"}), "dead-letters", 0, 1)
    assert orjson.loads(batch.dead[0].data) == good
    assert "offset must be int" in orjson.loads(batch.dead[1].data)["error"]


def test_each_line_knows_its_partition_and_its_record():
    batch = Batch()
    batch.add_status_change(orjson.dumps(CHANGE), "status-changes", 3, 42)
    # requested_at 1_779_999_000_000 is 2026-05-28 UTC; the engagement line shares the month.
    assert [(line.month, line.topic, line.partition, line.offset) for line in batch.status + batch.engagement] \
        == [(202605, "status-changes", 3, 42)] * 2


def test_partition_month_is_the_utc_calendar_month_and_odd_times_are_their_own_key():
    assert partition_month(0) == 197001
    assert partition_month(1_780_000_000_000) == 202605
    assert partition_month(1_782_863_999_999) == 202606 and partition_month(1_782_864_000_000) == 202607
    # Before 1970 or past 2148 ClickHouse's Date clamps or wraps: one time, one key, never a month.
    for odd in (-1, -10**15, 6_000_000_000_000, 2**64 - 1):
        assert partition_month(odd) == odd


def test_inserts_are_split_by_month_and_keep_each_months_order():
    batch = Batch()
    # 3 records per month over 120 months, interleaved the way a backfill arrives.
    for i in range(360):
        month = 1_600_000_000_000 + (i % 120) * 31 * 86_400_000
        batch.add_status_change(orjson.dumps(dataclasses.replace(CHANGE, message_id=f"m{i}", requested_at=month)),
                                "status-changes", 0, i)
    inserts = _split(batch.status)
    assert len(inserts) == 3  # ceil(120 / 50): not one insert per month
    assert all(len({line.month for line in lines}) <= MAX_PARTITIONS_PER_INSERT for lines in inserts)
    assert sorted(line.offset for lines in inserts for line in lines) == list(range(360))
    for lines in inserts:
        assert [line.offset for line in lines] == sorted(line.offset for line in lines)
    # A month is never split across inserts.
    assert sum(len({line.month for line in lines}) for lines in inserts) == 120
    # A usual batch (a few months) stays one insert, as it was.
    assert _split(batch.status[:50]) == [batch.status[:50]]

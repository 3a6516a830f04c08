"""The sink's record checks (sinks/writer.py): what becomes an insert line and what a dead-letter row."""

from __future__ import annotations

import dataclasses

import orjson

from schemas.models import StatusChange
from sinks.writer import Batch

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
    row = orjson.loads(batch.status[0])
    assert row == {**orjson.loads(value), "_topic": "status-changes", "_partition": 3, "_offset": 42}
    # A reported open is also an engagement row; an inferred one is not.
    assert [orjson.loads(e)["event_id"] for e in batch.engagement] == ["e1"]
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
    rows = [orjson.loads(d) for d in batch.dead]
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
    assert orjson.loads(batch.dead[0]) == good
    assert "offset must be int" in orjson.loads(batch.dead[1])["error"]

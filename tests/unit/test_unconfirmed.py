"""Unconfirmed messages (migration 0010, sinks/expectations.py, reports.unconfirmed): past the
expected time to a provider's receipt without one, listed with the status they have."""

from __future__ import annotations

import dataclasses
import time

import orjson
import pytest

from sendtrack.settings import Settings
from sinks import expectations, reports
from sinks.clickhouse import ClickHouse
from sinks.writer import Batch
from tests.unit.test_sink_inserts import CHANGE, rows

HOUR_MS = 3_600_000




def publish(ch: ClickHouse, messages: list[tuple[str, str, float, list[str]]]) -> None:
    """(message_id, action, hours since the request, statuses reached in order)."""
    now = int(time.time() * 1000)
    batch, offset = Batch(), 0
    for mid, action, hours_ago, statuses in messages:
        requested = now - int(hours_ago * HOUR_MS)
        previous = ""
        for i, status in enumerate(statuses):
            change = dataclasses.replace(CHANGE, message_id=mid, change_id=f"{mid}-{status}", action=action,
                                         status=status, previous_status=previous, current_status=status,
                                         requested_at=requested, occurred_at=requested + i * 1000)
            batch.add_status_change(orjson.dumps(change), "status-changes", 0, offset)
            offset, previous = offset + 1, status
    batch.write(ch)


def test_messages_past_the_expected_time_without_a_receipt_are_listed_with_their_status(ch):
    publish(ch, [
        ("sms-late", "sms", 100, ["sent"]),  # 72 h expected: late
        ("sms-late-processing", "sms", 80, ["sent", "processing"]),  # accepted, never reported: late
        ("sms-delivered", "sms", 100, ["sent", "delivered"]),  # has its receipt
        ("sms-failed", "sms", 100, ["sent", "failed"]),  # a failure is a receipt too
        ("sms-recent", "sms", 10, ["sent"]),  # still within 72 h
        ("email-late", "email", 30, ["sent", "processing"]),  # 24 h expected
        ("email-opened", "email", 30, ["sent", "opened"]),  # an open implies delivery
        ("timer-old", "timer", 500, ["sent"]),  # a timer expects no receipt
    ])
    assert expectations.apply(ch, Settings(), log=lambda *_: None)["sms"] == 72
    assert expectations.apply(ch, Settings(), log=lambda *_: None) == {}  # unchanged: nothing written

    report = reports.run(ch, "unconfirmed", reports.Filters())
    listed = {r[0]: r[7] for r in report.rows}
    assert listed == {"sms-late": "sent", "sms-late-processing": "processing", "email-late": "processing"}
    assert report.title.startswith("Unconfirmed: 3 messages") and "email 1, sms 2" in report.title
    oldest = report.rows[0]
    assert oldest[0] == "sms-late" and 99.5 < oldest[8] < 100.5 and oldest[9] == 72
    # Filters apply; the statuses themselves are untouched (no status is invented).
    assert [r[0] for r in reports.run(ch, "unconfirmed", reports.Filters(action="email")).rows] == ["email-late"]
    assert rows(ch, "SELECT current_status FROM {db}.messages WHERE message_id = 'sms-late'") == [("sent",)]

    # The settings change the expectation: SMS within 5 h makes the recent one late too.
    assert expectations.apply(ch, Settings(receipt_expected_hours="sms:5"), log=lambda *_: None) == {"sms": 5.0}
    late = {r[0] for r in reports.run(ch, "unconfirmed", reports.Filters()).rows}
    assert late == {"sms-late", "sms-late-processing", "sms-recent", "email-late"}


def test_an_empty_database_has_no_unconfirmed_messages(ch):
    expectations.apply(ch, Settings(), log=lambda *_: None)
    report = reports.run(ch, "unconfirmed", reports.Filters())
    assert report.rows == [] and report.title.startswith("Unconfirmed: 0 messages")


def test_bad_expectations_are_refused_at_start():
    with pytest.raises(ValueError, match="unknown action 'fax'"):
        Settings(receipt_expected_hours="fax:3")
    with pytest.raises(ValueError, match="not action:hours"):
        Settings(receipt_expected_hours="sms")
    for bad in ("sms:-1", "sms:inf", "sms:nan", "sms:9000"):
        with pytest.raises(ValueError, match="from 0 to 8784"):
            Settings(receipt_expected_hours=bad)

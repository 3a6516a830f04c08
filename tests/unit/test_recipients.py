"""Mailbox provider and carrier (sendtrack/recipients.py, migration 0012, reports.recipients):
table-driven in Python, the same in ClickHouse's view, and the report's rates."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from sendtrack import recipients
from sinks import reports
from sinks.clickhouse import ClickHouse
from sinks.writer import Batch
from tests.unit.test_sink_inserts import CHANGE

EXAMPLES = [
    # recipient, mailbox provider, carrier
    ("an@gmail.com", "gmail", ""),
    ("An.Nguyen@GMAIL.COM", "gmail", ""),
    ("b@googlemail.com", "gmail", ""),
    ("c@yahoo.com.vn", "yahoo", ""),
    ("d@hotmail.com", "outlook", ""),
    ("e@icloud.com", "icloud", ""),
    ("f@shop.example.vn", "other", ""),
    ("g@yahoo.co.u\u212a", "other", ""),  # a Kelvin sign: not ASCII, left as it is (ClickHouse's lower() too)
    ("0987654321", "", "viettel"),
    ("+84 912 345 678", "", "vinaphone"),
    ("84901234567", "", "mobifone"),
    ("0921234567", "", "vietnamobile"),
    ("0991234567", "", "gmobile"),
    ("0871234567", "", "itelecom"),
    ("0551234567", "", "reddi"),
    ("0241234567", "", "other"),  # a landline prefix: a Vietnamese number, no mobile carrier
    ("12345", "", ""),  # not a Vietnamese mobile number
    ("PSID-778899", "", ""),  # a Messenger recipient
    ("", "", ""),
]


@pytest.mark.parametrize("recipient, mailbox, carrier", EXAMPLES)
def test_python_classification(recipient, mailbox, carrier):
    assert (recipients.mailbox_provider(recipient), recipients.carrier(recipient)) == (mailbox, carrier)




def write(ch: ClickHouse, messages: list[tuple[str, str, str, list[str]]]) -> None:
    """(message_id, action, recipient, milestones)."""
    batch, offset = Batch(), 0
    for mid, action, recipient, milestones in messages:
        for status in milestones:
            change = dataclasses.replace(CHANGE, message_id=mid, change_id=f"{mid}-{status}", action=action,
                                         recipient=recipient, status=status, current_status=status)
            batch.add_status_change(orjson.dumps(change), "status-changes", 0, offset)
            offset += 1
    batch.write(ch)


def test_clickhouse_classifies_as_python_does(ch):
    """The view's SQL and the Python functions agree on every example (one message each)."""
    assert recipients.apply(ch, log=lambda *_: None) > 0
    assert recipients.apply(ch, log=lambda *_: None) == 0  # unchanged tables: nothing written
    write(ch, [(f"m{i}", "email" if "@" in r else "sms", r, ["sent"]) for i, (r, _, _) in enumerate(EXAMPLES)])
    _, rows = ch.query(f"SELECT mailbox_provider, carrier, toUInt64(sum(messages)) FROM `{ch.database}`.recipient_health "
                       "GROUP BY mailbox_provider, carrier")
    expected: dict[tuple[str, str], int] = {}
    for r, mailbox, carrier in EXAMPLES:
        expected[(mailbox, carrier)] = expected.get((mailbox, carrier), 0) + 1
    assert {(m, c): n for m, c, n in rows} == expected
    # The same on a session that pads unmatched join rows with NULL.
    _, padded = ch.query(f"SELECT mailbox_provider, carrier, toUInt64(sum(messages)) FROM `{ch.database}`.recipient_health "
                         "GROUP BY mailbox_provider, carrier SETTINGS join_use_nulls = 1")
    assert {(m, c): n for m, c, n in padded} == expected


def test_the_report_gives_rates_per_mailbox_provider_and_carrier(ch):
    recipients.apply(ch, log=lambda *_: None)
    write(ch, [
        ("g1", "email", "a@gmail.com", ["sent", "delivered", "opened"]),
        ("g2", "email", "b@gmail.com", ["sent", "delivered", "complained"]),
        ("g3", "email", "c@gmail.com", ["sent", "failed", "bounced"]),
        ("g4", "email", "d@gmail.com", ["sent", "delivered"]),
        ("y1", "email", "e@yahoo.com", ["sent", "failed", "bounced"]),
        ("v1", "sms", "0987654321", ["sent", "delivered"]),
        ("v2", "sms", "0987654322", ["sent", "failed"]),
    ])
    report = reports.run(ch, "recipients", reports.Filters())
    rows = {(r[1], r[2]): dict(zip(report.columns, r)) for r in report.rows}
    gmail = rows[("gmail", "")]
    assert (gmail["messages"], gmail["delivered"], gmail["bounced"], gmail["opened"], gmail["complained"]) == (4, 3, 1, 1, 1)
    assert (gmail["delivery_rate"], gmail["bounce_rate"], gmail["open_rate"], gmail["complaint_rate"]) == \
        (0.75, 0.25, 0.3333, 0.3333)
    assert rows[("yahoo", "")]["bounce_rate"] == 1.0
    assert rows[("", "viettel")]["delivery_rate"] == 0.5
    assert [r[0] for r in reports.run(ch, "recipients", reports.Filters(action="sms")).rows] == ["sms"]


def test_a_mapping_change_reclassifies(ch, monkeypatch):
    recipients.apply(ch, log=lambda *_: None)
    write(ch, [("m1", "email", "x@fpt.vn", ["sent"])])
    report = reports.run(ch, "recipients", reports.Filters())
    assert [(r[1], r[2]) for r in report.rows] == [("other", "")]
    monkeypatch.setitem(recipients.MAILBOX_PROVIDERS, "fpt.vn", "fpt")
    assert recipients.apply(ch, log=lambda *_: None) == 1
    assert [(r[1], r[2]) for r in reports.run(ch, "recipients", reports.Filters()).rows] == [("fpt", "")]
    monkeypatch.delitem(recipients.MAILBOX_PROVIDERS, "fpt.vn")
    assert recipients.apply(ch, log=lambda *_: None) == 1  # dropped: written as unknown
    assert [(r[1], r[2]) for r in reports.run(ch, "recipients", reports.Filters()).rows] == [("other", "")]

"""Mailbox provider and carrier (sendtrack/recipients.py, migrations 0012 and 0017, reports.recipients):
table-driven in Python, the same in ClickHouse's ingest view, and the report's rates."""

from __future__ import annotations

import dataclasses
import uuid

import orjson
import pytest

from sendtrack import recipients
from sinks import reports
from sinks.clickhouse import ClickHouse
from sinks import writer
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


def classes(ch: ClickHouse, relation: str = "messages") -> dict[str, tuple[str, str]]:
    _, got = ch.query(f"SELECT recipient, mailbox_provider, carrier FROM `{ch.database}`.{relation}")
    return {r: (m, c) for r, m, c in got}


def test_clickhouse_classifies_as_python_does(ch):
    """The ingest view's SQL (migration 0017) and the Python functions agree on every example, kept
    in the raw table, the messages view and recipient_health."""
    assert recipients.apply(ch, log=lambda *_: None) > 0
    assert recipients.apply(ch, log=lambda *_: None) == 0  # unchanged tables: nothing written
    write(ch, [(f"m{i}", "email" if "@" in r else "sms", r, ["sent"]) for i, (r, _, _) in enumerate(EXAMPLES)])
    python = {r: (mailbox, carrier) for r, mailbox, carrier in EXAMPLES}
    assert classes(ch) == python
    assert classes(ch, "status_changes") == python
    _, rows = ch.query(f"SELECT mailbox_provider, carrier, toUInt64(sum(messages)) FROM `{ch.database}`.recipient_health "
                       "GROUP BY mailbox_provider, carrier")
    expected: dict[tuple[str, str], int] = {}
    for r, mailbox, carrier in EXAMPLES:
        expected[(mailbox, carrier)] = expected.get((mailbox, carrier), 0) + 1
    assert {(m, c): n for m, c, n in rows} == expected


def test_the_ingest_view_classifies_on_a_session_that_pads_joins_with_null(ch):
    recipients.apply(ch, log=lambda *_: None)
    ch.command(f"INSERT INTO `{ch.database}`.status_changes_ingest (change_id, message_id, status, action, recipient) "
               "SETTINGS join_use_nulls = 1 VALUES ('c1', 'n1', 'sent', 'email', 'x@unknown.example'), "
               "('c2', 'n2', 'sent', 'sms', '0241234567'), ('c3', 'n3', 'sent', 'email', 'y@gmail.com')")
    assert classes(ch) == {"x@unknown.example": ("other", ""), "0241234567": ("", "other"), "y@gmail.com": ("gmail", "")}


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


def test_a_mapping_change_applies_to_messages_ingested_after_it(ch, monkeypatch):
    """The classes are stored when a change is ingested: a new mapping classifies the messages that
    come after it, and the past keeps the class it had (a report of last month does not move)."""
    recipients.apply(ch, log=lambda *_: None)
    write(ch, [("m1", "email", "x@fpt.vn", ["sent"])])
    assert [(r[1], r[2]) for r in reports.run(ch, "recipients", reports.Filters()).rows] == [("other", "")]
    monkeypatch.setitem(recipients.MAILBOX_PROVIDERS, "fpt.vn", "fpt")
    assert recipients.apply(ch, log=lambda *_: None) == 1
    write(ch, [("m2", "email", "y@fpt.vn", ["sent"]), ("m1", "email", "x@fpt.vn", ["delivered"])])
    assert classes(ch) == {"x@fpt.vn": ("other", ""), "y@fpt.vn": ("fpt", "")}  # m1: the greater name
    monkeypatch.delitem(recipients.MAILBOX_PROVIDERS, "fpt.vn")
    assert recipients.apply(ch, log=lambda *_: None) == 1  # dropped: written as unknown
    write(ch, [("m3", "email", "z@fpt.vn", ["sent"])])
    assert sorted((r[1], r[3]) for r in reports.run(ch, "recipients", reports.Filters()).rows) == [
        ("fpt", 1), ("other", 2)]


def test_migration_0017_classifies_the_messages_written_before_it(engine_path):
    """Messages written before 0017 (unclassified) get their classes from the lookup tables, which
    prepare() writes before 0017 runs, even on a database that never had them filled; every other
    value of theirs stays, a rerun changes nothing, and a worker on the old code is classified too."""
    from sendtrack.settings import Settings
    from sinks import migrate as migrations

    ch = ClickHouse.connect(Settings(clickhouse_url=f"chdb://{engine_path}"), database=f"rd_{uuid.uuid4().hex[:10]}")
    try:
        migrations.migrate(ch, log=lambda *_: None, up_to=migrations.RECIPIENT_CLASSES_MIGRATION - 1)
        old = [(f"m{i}", "email" if "@" in r else "sms", r, ["sent", "delivered"]) for i, (r, _, _) in enumerate(EXAMPLES)]
        write(ch, old)
        before = ch.query(f"SELECT * FROM `{ch.database}`.messages ORDER BY message_id")[1]
        funnel = ch.query(f"SELECT * FROM `{ch.database}`.funnel_daily ORDER BY ALL")[1]
        assert [m.version for m in migrations.prepare(ch, Settings(), log=lambda *_: None)] == [
            migrations.RECIPIENT_CLASSES_MIGRATION, 18, 19]
        python = {r: (mailbox, carrier) for r, mailbox, carrier in EXAMPLES}
        assert classes(ch) == python
        after = ch.query(f"SELECT * EXCEPT (mailbox_provider, carrier) FROM `{ch.database}`.messages "
                         "ORDER BY message_id")[1]
        assert after == before
        rerun = next(m for m in migrations.available() if m.version == migrations.RECIPIENT_CLASSES_MIGRATION)
        for statement in rerun.statements(ch.database):
            ch.command(statement)
        assert classes(ch) == python
        assert ch.query(f"SELECT * EXCEPT (mailbox_provider, carrier) FROM `{ch.database}`.messages "
                        "ORDER BY message_id")[1] == before
        assert ch.query(f"SELECT * FROM `{ch.database}`.funnel_daily ORDER BY ALL")[1] == funnel
        # A worker still on the code before workspaces names fewer columns: classified all the same.
        old_sink = {**dataclasses.asdict(CHANGE), "message_id": "m-old", "change_id": "c-old",
                    "recipient": "+84 987 000 111"}
        ch.insert_json("status_changes_ingest", writer.STATUS_COLUMNS[:-1], orjson.dumps(old_sink))
        assert classes(ch)["+84 987 000 111"] == ("", "viettel")
    finally:
        ch.command(f"DROP DATABASE IF EXISTS `{ch.database}`")

"""Erasing a customer from ClickHouse (sinks/erasure.py) on the embedded engine: afterwards no table
holds the customer's id or a recipient of theirs, anywhere in any row, while every count (funnels,
current status, failure codes, recipient health) and the other customers' rows are unchanged."""

from __future__ import annotations

import dataclasses

import orjson

from schemas import dead_letters
from sendtrack import recipients
from sinks.erasure import erase_customer
from sinks.writer import Batch
from tests.unit.test_sink_inserts import CHANGE, rows

ALICE, ALICE_MAIL, ALICE_PHONE = "cus-alice-7", "alice.nguyen@gmail.com", "0912345678"
BOB, BOB_MAIL = "cus-bob-8", "bob@yahoo.com"


def load(ch) -> None:
    recipients.apply(ch, log=lambda *_: None)
    batch, offset = Batch(), 0

    def add(mid, customer, recipient, statuses, action="email", **kw):
        nonlocal offset
        previous = ""
        for i, status in enumerate(statuses):
            extra = dict(kw) if status in ("failed", "bounced", "clicked") else {}
            change = dataclasses.replace(CHANGE, message_id=mid, change_id=f"{mid}-{status}", customer_id=customer,
                                         recipient=recipient, action=action, status=status, previous_status=previous,
                                         current_status=status, occurred_at=CHANGE.occurred_at + i * 1000, **extra)
            batch.add_status_change(orjson.dumps(change), "status-changes", 0, offset)
            offset, previous = offset + 1, status

    add("a1", ALICE, ALICE_MAIL, ["sent", "delivered", "opened", "clicked"], event_id="e-a1",
        url=f"https://shop.vn/cart?email={ALICE_MAIL}")
    add("a2", ALICE, ALICE_MAIL, ["sent", "failed", "bounced"], reason_code="550",
        reason=f"550 5.1.1 <{ALICE_MAIL}>: Recipient address rejected", bounce_type="hard", reason_at=CHANGE.occurred_at)
    add("a3", ALICE, ALICE_PHONE, ["sent", "delivered"], action="sms", provider="esms")
    add("b1", BOB, BOB_MAIL, ["sent", "delivered", "clicked"], event_id="e-b1", url="https://shop.vn/p/1")
    add("b2", BOB, BOB_MAIL, ["sent", "failed"], reason_code="421", reason="421 try later",
        reason_at=CHANGE.occurred_at)
    for i, (key, payload) in enumerate([
        (b"a1", b'{"message_id":"a1","event_id":"dup","status":"bogus"}'),  # by message id
        (None, orjson.dumps({"customer_id": ALICE, "message_id": "zz", "action": "teleport"})),  # names her
        (None, orjson.dumps({"to": ALICE_PHONE, "text": "hi"})),  # names a recipient of hers
        (None, b"\xff\xfe to=" + ALICE_MAIL.encode()),  # not UTF-8: kept base64, names her address
        (b"b1", b'{"message_id":"b1","status":"bogus"}'),
        (None, orjson.dumps({"customer_id": BOB + "-other", "note": ALICE[:-1]})),  # similar, not hers
    ]):
        _, value = dead_letters.build(("send-requests", 0, i), key, payload, "invalid_value", "bad", CHANGE.recorded_at)
        batch.add_dead_letter(value, "dead-letters", 0, i)
    batch.write(ch)


def counts(ch) -> dict:
    return {
        "funnel": rows(ch, "SELECT * FROM {db}.funnel_daily ORDER BY ALL"),
        "current": rows(ch, "SELECT * FROM {db}.current_status_daily ORDER BY ALL"),
        "failure_codes": rows(ch, "SELECT day, action, provider, reason_code, sum(messages) FROM {db}.failure_reasons "
                                  "GROUP BY ALL ORDER BY ALL"),
        "health": rows(ch, "SELECT action, mailbox_provider, carrier, sum(messages) FROM {db}.recipient_health "
                           "GROUP BY ALL ORDER BY ALL"),
        "engagement": rows(ch, "SELECT * FROM {db}.engagement_daily ORDER BY ALL"),
        "bob": rows(ch, f"SELECT * FROM {{db}}.messages WHERE customer_id = '{BOB}' ORDER BY ALL"),
        "bob_changes": rows(ch, f"SELECT * EXCEPT _inserted_at FROM {{db}}.status_changes_raw WHERE customer_id = '{BOB}' ORDER BY ALL"),
        "bob_clicks": rows(ch, f"SELECT * FROM {{db}}.engagement_events_raw WHERE customer_id = '{BOB}' ORDER BY ALL"),
    }


def found(ch, needle: str) -> dict[str, int]:
    """Rows of every table of the database (views excluded) where any column holds `needle`."""
    hits = {}
    tables = rows(ch, "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree%'"
                  .replace("currentDatabase()", f"'{ch.database}'"))
    for (table,) in tables:
        columns = rows(ch, f"SELECT name FROM system.columns WHERE database = '{ch.database}' AND table = '{table}' "
                           "AND type NOT LIKE 'AggregateFunction%'")
        where = " OR ".join(f"position(toString(`{c}`), '{needle}') > 0" for (c,) in columns)
        n = rows(ch, f"SELECT count() FROM {{db}}.`{table}` WHERE {where}")[0][0]
        if n:
            hits[table] = n
    return hits


def test_an_erased_customer_is_nowhere_and_every_count_stays(ch):
    load(ch)
    before = counts(ch)
    assert found(ch, ALICE) and found(ch, ALICE_MAIL) and found(ch, ALICE_PHONE)  # the search sees them

    erased = erase_customer(ch, ALICE, log=lambda *_: None)

    for needle in (ALICE, ALICE_MAIL, ALICE_PHONE):
        assert found(ch, needle) == {}, needle
        # The mutations' own texts (system.mutations, which readers can query) name messages only.
        assert rows(ch, f"SELECT count() FROM system.mutations WHERE database = '{ch.database}' "
                        f"AND position(command, '{needle}') > 0") == [(0,)], needle
    assert rows(ch, f"SELECT count() FROM system.mutations WHERE database = '{ch.database}'")[0][0] >= 4
    assert counts(ch) == before
    assert ("email", "gmail", "", 2) in before["health"] and ("sms", "", "vinaphone", 1) in before["health"]
    assert erased.messages == 3 and erased.recipients == 2
    assert erased.rows["dead_letters_raw"] == 4 and erased.rows["messages_by_workspace"] == 3
    assert erased.rows["status_changes_raw"] == 9 and erased.rows["engagement_events_raw"] == 1
    # Bob's dead letters, and the one that only resembles Alice's id, stay.
    assert rows(ch, "SELECT count() FROM {db}.dead_letters_raw")[0][0] == 2
    # The failure's code stays with the message; its text (which named her address) is gone.
    assert rows(ch, "SELECT customer_id, recipient, current_status, reason_code, reason FROM {db}.messages "
                    "WHERE message_id = 'a2'") == [("", "", "bounced", "550", "")]


def test_erasing_again_or_an_unknown_customer_changes_nothing(ch):
    load(ch)
    erase_customer(ch, ALICE, log=lambda *_: None)
    before = counts(ch), rows(ch, "SELECT count() FROM {db}.messages_by_workspace")
    again = erase_customer(ch, ALICE, log=lambda *_: None)
    assert again.messages == 0 and set(again.rows.values()) == {0}
    assert erase_customer(ch, "nobody", log=lambda *_: None).messages == 0
    assert (counts(ch), rows(ch, "SELECT count() FROM {db}.messages_by_workspace")) == before


def test_the_engine_is_told_per_partition_of_each_message():
    from sendtrack.partitions import partition
    from sinks.erasure import engine_records

    ids = [f"msg-{i}" for i in range(150_000)]
    records = engine_records(ids, 8)
    seen = []
    for p, value in records:
        items = orjson.loads(value)["batch"]
        assert len(value) <= 512 * 1024 + 64
        for item in items:
            assert item["kind"] == "erase" and partition(item["message_id"].encode(), 8) == p
            seen.append(item["message_id"])
    assert sorted(seen) == sorted(ids) and len(records) > 8  # large partitions take several records
    assert engine_records([], 8) == []

"""The ClickHouse views in the embedded engine: migrations, schema drift, and duplicates that change nothing."""

from __future__ import annotations

import dataclasses
import uuid

import orjson
import pytest

from schemas.models import DeadLetter, StatusChange
from schemas.validate import parse_callback, parse_send_request
from sendtrack import simulate, status
from sendtrack.settings import Settings
from sinks.clickhouse import ClickHouse
from sinks import writer
from sinks.migrate import available, migrate
from sinks.writer import DEAD_LETTER_COLUMNS, ENGAGEMENT_COLUMNS, RECIPIENT_DIMENSIONS, STATUS_COLUMNS, Batch

VIEWS = {
    "messages": "message_id",
    "status_changes": "message_id, status",
    "funnel_daily": "day, action, flow_id, campaign_id, step_id, status",
    "current_status_daily": "day, action, flow_id, campaign_id, step_id, current_status",
    "failure_reasons": "day, action, provider, reason_code, reason",
    "engagement_events": "message_id, event_id",
    "dead_letters": "source_topic, partition, offset",
}


@pytest.fixture(scope="module")
def engine_path(tmp_path_factory):
    # chDB allows one engine path per process: every test here shares it, each with its own database.
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def ch(engine_path):
    settings = Settings(clickhouse_url=f"chdb://{engine_path}")
    handle = ClickHouse.connect(settings, database=f"t_{uuid.uuid4().hex[:10]}")
    migrate(handle, log=lambda *_: None)
    yield handle
    handle.command(f"DROP DATABASE IF EXISTS `{handle.database}`")


def changes_for(traffic: simulate.Traffic) -> list[StatusChange]:
    """Run the pure core over the traffic, as the engine would (no Kafka needed to make rows)."""
    states: dict[str, dict] = {}
    out: list[StatusChange] = []
    for kind, _, value in traffic.records:
        if kind == "send-requests":
            rec = parse_send_request(value)
            if hasattr(rec, "message_id"):
                out += status.apply_request(states.setdefault(rec.message_id, status.new_state()), rec, 1).changes
        else:
            rec = parse_callback(value)
            if getattr(rec, "message_id", None):
                out += status.apply_callback(states.setdefault(rec.message_id, status.new_state()), rec, 1).changes
    return out


def batch_of(changes: list[StatusChange], letters: list[DeadLetter]) -> Batch:
    batch = Batch()
    for i, c in enumerate(changes):
        batch.add_status_change(orjson.dumps(c), "status-changes", 0, i)
    for i, d in enumerate(letters):
        batch.add_dead_letter(orjson.dumps(d), "dead-letters", 0, i)
    return batch


def snapshot(ch: ClickHouse) -> dict[str, list]:
    return {view: ch.query(f"SELECT * FROM `{ch.database}`.{view} ORDER BY {order}")[1]
            for view, order in VIEWS.items()}


def test_migrations_are_recorded_and_applied_once(ch):
    assert migrate(ch, log=lambda *_: None) == []
    _, rows = ch.query(f"SELECT version FROM `{ch.database}`.schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == [m.version for m in available()]


def test_ddl_columns_match_the_records(ch):
    def columns(table: str) -> list[str]:
        _, rows = ch.query("SELECT name FROM system.columns WHERE database = %(db)s AND table = %(t)s "
                           "AND NOT startsWith(name, '_') ORDER BY position", {"db": ch.database, "t": table})
        return [r[0] for r in rows]

    change_fields = [f.name for f in dataclasses.fields(StatusChange)]
    # ClickHouse adds who receives (migration 0017), classified from the recipient.
    assert set(columns("status_changes_raw")) == set(STATUS_COLUMNS + RECIPIENT_DIMENSIONS)
    assert set(STATUS_COLUMNS) <= set(change_fields) and not set(RECIPIENT_DIMENSIONS) & set(change_fields)
    # What the record has and the milestone table does not is what the engagement table holds.
    assert set(change_fields) - set(STATUS_COLUMNS) == {"kind", "url", "is_machine"}
    assert set(columns("engagement_events_raw")) == set(ENGAGEMENT_COLUMNS) <= set(change_fields)
    assert columns("dead_letters_raw") == list(DEAD_LETTER_COLUMNS) == [f.name for f in dataclasses.fields(DeadLetter)]
    assert set(columns("status_changes")) == set(STATUS_COLUMNS + RECIPIENT_DIMENSIONS) - {"event_id"}


def test_inserting_the_same_changes_twice_changes_no_view(ch):
    traffic = simulate.generate(400, seed=3, run_id="dup")
    changes = changes_for(traffic)
    letters = [DeadLetter("send-requests", 1, i, None, "{bad", "utf-8", "undecodable", "bad json",
                          1_780_000_000_000 + i) for i in range(5)]
    assert any(c.kind == "engagement" for c in changes)
    batch_of(changes, letters).write(ch)
    first = snapshot(ch)
    assert len(first["messages"]) == len({c.message_id for c in changes})
    # The same batch again (a redelivery after a crash), then the second half once more in
    # another order (a replay that overlaps): no view may change.
    batch_of(changes, letters).write(ch)
    batch_of(list(reversed(changes[len(changes) // 2:])), letters[2:]).write(ch)
    assert snapshot(ch) == first
    _, raw = ch.query(f"SELECT count() FROM `{ch.database}`.status_changes_raw")
    assert raw[0][0] > len(first["status_changes"]), "duplicates exist in raw storage only"


def test_messages_view_folds_milestones_and_the_current_status(ch):
    req = {"message_id": "m1", "action": "email", "customer_id": "c1", "requested_at": 1_780_000_000_000}
    st = status.new_state()
    out = status.apply_request(st, parse_send_request(orjson.dumps(req)), 1).changes
    for doc in ({"event_id": "e1", "status": "delivered", "occurred_at": 1_780_000_001_000},
                {"event_id": "e2", "status": "bounced", "occurred_at": 1_780_000_002_000,
                 "reason_code": "550", "reason": "mailbox unavailable", "bounce_type": "hard"}):
        out += status.apply_callback(st, parse_callback(orjson.dumps({**doc, "message_id": "m1"})), 2).changes
    batch_of(out, []).write(ch)
    cols, rows = ch.query("SELECT current_status, reason_code, reason, bounce_type, processing_at IS NOT NULL, "
                          f"opened_at IS NULL FROM `{ch.database}`.messages")
    assert rows == [("bounced", "550", "mailbox unavailable", "hard", True, True)]


@pytest.mark.parametrize("insert_order", ["as emitted", "reversed"])
def test_failure_reason_is_the_earliest_failure_whatever_the_order(ch, insert_order):
    req = {"message_id": "m2", "action": "email", "customer_id": "c1", "requested_at": 1_780_000_000_000}
    st = status.new_state()
    out = status.apply_request(st, parse_send_request(orjson.dumps(req)), 1).changes
    # The later failure is processed first; the earlier bounce arrives after it.
    for doc in ({"event_id": "late", "status": "failed", "occurred_at": 1_780_000_200_000, "reason_code": "timeout"},
                {"event_id": "early", "status": "bounced", "occurred_at": 1_780_000_100_000,
                 "reason_code": "550", "bounce_type": "hard"}):
        out += status.apply_callback(st, parse_callback(orjson.dumps({**doc, "message_id": "m2"})), 2).changes
    rows = out if insert_order == "as emitted" else list(reversed(out))
    for change in rows:  # one insert per row: every order of arrival at the sink
        batch_of([change], []).write(ch)
    _, got = ch.query(f"SELECT reason_code, bounce_type, current_status FROM `{ch.database}`.messages")
    assert got == [("550", "hard", "bounced")]
    _, got = ch.query(f"SELECT reason_code FROM `{ch.database}`.status_changes WHERE status = 'failed'")
    assert got == [("550",)]
    _, got = ch.query(f"SELECT reason_code, messages FROM `{ch.database}`.failure_reasons")
    assert got == [("550", 1)]


def test_aggregating_tables_merge_few_parts_at_a_time(ch):
    # Migrations 0005, 0006 and 0015: a merge of these wide tables holds buffers for every column of every part.
    for table in ("messages_by_workspace", "funnel_daily_by_workspace", "engagement_daily_by_workspace"):
        _, rows = ch.query("SELECT engine_full FROM system.tables WHERE database = %(db)s AND name = %(t)s",
                           {"db": ch.database, "t": table})
        assert "max_parts_to_merge_at_once = 4" in rows[0][0], rows
        assert "max_compress_block_size = 131072" in rows[0][0], rows
    # Migration 0006: a row of the funnel holds a uniqExact state of many message ids, so its merges
    # read and write few rows at a time.
    _, rows = ch.query("SELECT engine_full FROM system.tables WHERE database = %(db)s AND name = %(t)s",
                       {"db": ch.database, "t": "funnel_daily_by_workspace"})
    assert "index_granularity = 64" in rows[0][0], rows
    assert "merge_max_block_size = 8" in rows[0][0], rows


def tables(ch: ClickHouse) -> set[str]:
    _, rows = ch.query("SELECT name FROM system.tables WHERE database = %(db)s", {"db": ch.database})
    return {r[0] for r in rows}


def written_before_0014(batch: Batch, ch: ClickHouse) -> None:
    """Write as the sink did before migration 0014 (no workspace_id column to insert into)."""
    old = {name: getattr(writer, name) for name in ("STATUS", "ENGAGEMENT")}
    try:
        for name, target in old.items():
            setattr(writer, name, target._replace(columns=tuple(c for c in target.columns if c != "workspace_id")))
        batch.write(ch)
    finally:
        for name, target in old.items():
            setattr(writer, name, target)


def test_the_funnel_survives_its_move_to_funnel_daily_states(ch, engine_path):
    # A database written before migration 0006, then upgraded: the funnel it had stays, nothing is
    # counted twice, and the new view counts what comes after. 0006 runs twice (a run interrupted
    # before the ledger recorded it, then the next start), as it may in real life.
    changes = changes_for(simulate.generate(300, seed=11, run_id="mv"))
    first = changes[: len(changes) // 2]
    old = ClickHouse.connect(Settings(clickhouse_url=f"chdb://{engine_path}"),
                             database=f"t_{uuid.uuid4().hex[:10]}")
    try:
        migrate(old, log=lambda *_: None, up_to=5)
        assert {"funnel_daily_agg", "funnel_daily_mv"} <= tables(old)
        written_before_0014(batch_of(first, []), old)
        before = snapshot(old)["funnel_daily"]
        assert before
        six = next(m for m in available() if m.version == 6)
        for statement in six.statements(old.database):
            old.command(statement)
        assert [m.version for m in migrate(old, log=lambda *_: None)][:2] == [6, 7]
        # The same rows, now in workspace '' (migration 0015 put it first).
        assert [row[1:] for row in snapshot(old)["funnel_daily"]] == before
        assert {row[0] for row in snapshot(old)["funnel_daily"]} == {""}
        assert not {"funnel_daily_agg", "funnel_daily_mv"} & tables(old)
        # The rest of the traffic, with the first half redelivered, against a database migrated
        # from scratch that received each change once.
        batch_of(changes, []).write(old)
        batch_of(changes, []).write(ch)
        assert snapshot(old) == snapshot(ch)
    finally:
        old.command(f"DROP DATABASE IF EXISTS `{old.database}`")


def test_the_views_read_from_final_equal_their_group_by_definitions(ch):
    """Migration 0008: current_status_daily and failure_reasons fold messages_agg with FINAL (and
    0013's classified_messages); on traffic with duplicates and reordering they equal the definitions
    over the messages view."""
    changes = changes_for(simulate.generate(400, seed=23, run_id="final"))
    batch_of(changes + changes[::3], []).write(ch)  # a third of the changes delivered twice
    db = f"`{ch.database}`"
    by_view = {
        "current_status_daily": (
            f"SELECT workspace_id, toDate(requested_at) AS day, action, flow_id, campaign_id, step_id, current_status, "
            f"count() AS messages FROM {db}.messages GROUP BY ALL ORDER BY ALL"),
        "failure_reasons": (
            f"SELECT workspace_id, toDate(requested_at) AS day, action, provider, reason_code, reason, count() AS messages "
            f"FROM {db}.messages WHERE failed_at IS NOT NULL GROUP BY ALL ORDER BY ALL"),
    }
    for view, grouped in by_view.items():
        expected = ch.query(grouped)[1]
        assert expected and ch.query(f"SELECT * FROM {db}.{view} ORDER BY ALL")[1] == expected, view
    columns = ("requested_at, action, provider, delivered_at, bounced_at, failed_at, opened_at, clicked_at, "
               "complained_at, unsubscribed_at")
    expected = ch.query(f"SELECT {columns} FROM {db}.messages ORDER BY ALL")[1]
    assert len(expected) == 400 and ch.query(f"SELECT {columns} FROM {db}.classified_messages ORDER BY ALL")[1] == expected

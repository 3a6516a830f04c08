"""Workspaces, first step (issue 17): a send request's optional workspace_id is carried by every
status change into the raw tables and the analysts' views, and migration 0014 keeps what was
written before it (rows without a workspace read '')."""

from __future__ import annotations

import dataclasses
import uuid

import orjson
import pytest

from schemas.models import Invalid
from schemas.validate import ErrorType
from schemas.validate import parse_callback, parse_send_request
from sendtrack import status
from sendtrack.settings import Settings
from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks import writer
from sinks.writer import Batch
from tests.unit.test_sink_inserts import CHANGE, rows

REQUEST = {"message_id": "m-ws", "action": "email", "customer_id": "cus-1", "requested_at": 1_780_000_000_000,
           "provider": "sendgrid", "recipient": "a@example.com"}


def changes_of(request: dict) -> list:
    state = status.new_state()
    req = parse_send_request(orjson.dumps(request))
    assert not isinstance(req, Invalid), req
    out = status.apply_request(state, req, 1_780_000_000_500).changes
    cb = parse_callback(orjson.dumps({"message_id": "m-ws", "event_id": "e-open", "status": "opened",
                                      "occurred_at": 1_780_000_001_000}))
    out += status.apply_callback(state, cb, 1_780_000_001_500).changes
    again = parse_callback(orjson.dumps({"message_id": "m-ws", "event_id": "e-open-2", "status": "opened",
                                         "occurred_at": 1_780_000_002_000}))
    out += status.apply_callback(state, again, 1_780_000_002_500).changes  # an engagement event
    return out


def test_every_status_change_carries_the_requests_workspace():
    changes = changes_of({**REQUEST, "workspace_id": "shop-a"})
    assert {c.kind for c in changes} == {"milestone", "engagement"}
    assert {c.workspace_id for c in changes} == {"shop-a"}


@pytest.mark.parametrize("given", [{}, {"workspace_id": None}, {"workspace_id": ""}])
def test_a_request_without_a_workspace_has_the_empty_one(given):
    assert {c.workspace_id for c in changes_of({**REQUEST, **given})} == {""}


@pytest.mark.parametrize("value, error", [
    (7, ErrorType.WRONG_TYPE),
    ("x" * 129, ErrorType.INVALID_VALUE),
    ("shop\u0000a", ErrorType.INVALID_VALUE),
])
def test_a_bad_workspace_is_refused_with_the_reason(value, error):
    refused = parse_send_request(orjson.dumps({**REQUEST, "workspace_id": value}))
    assert isinstance(refused, Invalid) and refused.error_type == error and "workspace_id" in refused.error


@pytest.mark.parametrize("first, again", [({}, {"workspace_id": ""}), ({"workspace_id": ""}, {}),
                                          ({}, {"workspace_id": None})])
def test_no_workspace_is_the_same_content_however_it_is_said(first, again):
    state = status.new_state()
    status.apply_request(state, parse_send_request(orjson.dumps({**REQUEST, **first})), 1)
    outcome = status.apply_request(state, parse_send_request(orjson.dumps({**REQUEST, **again})), 2)
    assert outcome.duplicate and outcome.invalid is None


def test_a_repeated_request_in_another_workspace_is_a_conflict():
    state = status.new_state()
    status.apply_request(state, parse_send_request(orjson.dumps({**REQUEST, "workspace_id": "shop-a"})), 1)
    outcome = status.apply_request(state, parse_send_request(orjson.dumps({**REQUEST, "workspace_id": "shop-b"})), 2)
    assert outcome.invalid is not None and not outcome.changes


def insert(ch: ClickHouse, offset: int, **fields) -> None:
    batch = Batch()
    value = dataclasses.asdict(dataclasses.replace(CHANGE, change_id=f"c{offset}", message_id=f"m{offset}", **fields))
    if "workspace_id" not in fields:
        value.pop("workspace_id")  # a record written by the code before workspaces
    batch.add_status_change(orjson.dumps(value), "status-changes", 0, offset)
    engaged = {**value, "change_id": f"e{offset}", "kind": "engagement", "status": "opened", "event_id": f"ev{offset}"}
    batch.add_status_change(orjson.dumps(engaged), "status-changes", 0, offset + 1)
    batch.write(ch)


def test_migration_0014_keeps_earlier_rows_and_the_sink_writes_the_workspace(engine_path):
    ch = ClickHouse.connect(Settings(clickhouse_url=f"chdb://{engine_path}"), database=f"ws_{uuid.uuid4().hex[:10]}")
    try:
        migrate(ch, log=lambda *_: None, up_to=13)
        before = dataclasses.asdict(CHANGE)  # a row written before the upgrade, as the sink wrote it then
        for later in ("workspace_id", "kind", "url", "is_machine"):
            before.pop(later)
        ch.command(f"INSERT INTO `{ch.database}`.status_changes_ingest FORMAT JSONEachRow {orjson.dumps(before).decode()}")
        assert [m.version for m in migrate(ch, log=lambda *_: None, up_to=14)] == [14]
        insert(ch, 10)
        insert(ch, 20, workspace_id="shop-a")
        assert rows(ch, "SELECT message_id, workspace_id FROM {db}.status_changes ORDER BY message_id") == [
            ("m", ""), ("m10", ""), ("m20", "shop-a")]
        assert rows(ch, "SELECT message_id, workspace_id FROM {db}.status_changes_raw ORDER BY message_id") == [
            ("m", ""), ("m10", ""), ("m20", "shop-a")]
        assert rows(ch, "SELECT event_id, workspace_id FROM {db}.engagement_events ORDER BY event_id") == [
            ("ev10", ""), ("ev20", "shop-a")]
        # A worker still on the old code names the columns it knows: the rest take their defaults.
        assert writer.STATUS_COLUMNS[-1] == "workspace_id"
        old_sink = {**before, "message_id": "m-old", "change_id": "c-old"}
        ch.insert_json("status_changes_ingest", writer.STATUS_COLUMNS[:-1], orjson.dumps(old_sink))
        assert rows(ch, "SELECT workspace_id FROM {db}.status_changes WHERE message_id = 'm-old'") == [("",)]
    finally:
        ch.command(f"DROP DATABASE IF EXISTS `{ch.database}`")


def test_migration_0015_keys_the_rollups_by_workspace_and_keeps_every_count(engine_path):
    """Rows from before 0014 ('' workspace) and from between 0014 and 0015 (a workspace the old
    rollups did not keep) come out of 0015 in their workspaces, counted once even when 0015 runs
    twice; the new views are fed from then on, and 0016 drops the old tables."""
    ch = ClickHouse.connect(Settings(clickhouse_url=f"chdb://{engine_path}"), database=f"ws_{uuid.uuid4().hex[:10]}")
    try:
        migrate(ch, log=lambda *_: None, up_to=14)
        insert(ch, 10)  # before: no workspace
        insert(ch, 20, workspace_id="shop-a")
        insert(ch, 30, workspace_id="shop-a", requested_at=CHANGE.requested_at - 86_400_000 * 3)
        ch.command(f"INSERT INTO `{ch.database}`.status_changes_ingest FORMAT JSONEachRow "
                   + orjson.dumps({**dataclasses.asdict(CHANGE), "change_id": "c40", "message_id": "m40",
                                   "requested_at": CHANGE.requested_at - 86_400_000 * 9}).decode())
        funnel = "SELECT {w}day, status, sum(messages) FROM {{db}}.funnel_daily GROUP BY ALL ORDER BY ALL"
        before = rows(ch, funnel.format(w=""))
        person = rows(ch, "SELECT day, sum(messages) FROM {db}.engagement_daily GROUP BY day ORDER BY day")
        assert [m.version for m in migrate(ch, log=lambda *_: None, up_to=15)] == [15]
        from sinks.migrate import available
        for statement in next(m for m in available() if m.version == 15).statements(ch.database):
            ch.command(statement)  # a rerun after a partial run
        assert [m.version for m in migrate(ch, log=lambda *_: None, up_to=16)] == [16]
        assert rows(ch, funnel.format(w="")) == before
        assert rows(ch, "SELECT day, sum(messages) FROM {db}.engagement_daily GROUP BY day ORDER BY day") == person
        assert rows(ch, "SELECT message_id, workspace_id FROM {db}.messages ORDER BY message_id") == [
            ("m10", ""), ("m20", "shop-a"), ("m30", "shop-a"), ("m40", "")]
        by_workspace = rows(ch, "SELECT workspace_id, sum(messages) FROM {db}.funnel_daily WHERE status = 'sent' "
                                "GROUP BY workspace_id ORDER BY workspace_id")
        assert by_workspace == [("", 2), ("shop-a", 2)]
        assert rows(ch, "SELECT workspace_id, sum(messages) FROM {db}.engagement_daily GROUP BY workspace_id "
                        "ORDER BY workspace_id") == [("", 1), ("shop-a", 2)]
        insert(ch, 50, workspace_id="shop-b")  # after: through the new views
        assert rows(ch, "SELECT workspace_id, count() FROM {db}.messages GROUP BY workspace_id ORDER BY workspace_id"
                    ) == [("", 2), ("shop-a", 2), ("shop-b", 1)]
        assert rows(ch, "SELECT workspace_id, sum(messages) FROM {db}.current_status_daily GROUP BY workspace_id "
                        "ORDER BY workspace_id") == [("", 2), ("shop-a", 2), ("shop-b", 1)]
        assert rows(ch, "SELECT sum(messages) FROM {db}.engagement_daily WHERE workspace_id = 'shop-b'") == [(1,)]
        assert rows(ch, f"SELECT name FROM system.tables WHERE database = '{ch.database}' AND name IN "
                        "('messages_agg', 'funnel_daily_states', 'engagement_daily_states', 'messages_mv')") == []
        key = rows(ch, f"SELECT name, sorting_key FROM system.tables WHERE database = '{ch.database}' AND "
                       "name LIKE '%by_workspace' ORDER BY name")
        assert [(name, k.split(",")[0]) for name, k in key] == [
            ("engagement_daily_by_workspace", "workspace_id"), ("funnel_daily_by_workspace", "workspace_id"),
            ("messages_by_workspace", "workspace_id")]
    finally:
        ch.command(f"DROP DATABASE IF EXISTS `{ch.database}`")

"""Readers scoped to one workspace (issue 17): two workspaces' data side by side in the embedded
engine; a reader of one sees only its own rows in every table, view, report and statement it can
write, and what would read around the filters is refused. The attacks are real statements run
on real sessions."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from schemas.validate import parse_callback, parse_send_request
from sendtrack import simulate, status
from sendtrack.settings import Settings
from sinks import reports
from sinks.analyst import CATALOG_TABLES, NO_WORKSPACE_TABLES, WORKSPACE_TABLES, Analysts, Refused
from sinks.clickhouse import ClickHouse
from sinks.migrate import prepare
from sinks.writer import Batch

CATALOGS = CATALOG_TABLES


def changes_for(traffic: simulate.Traffic) -> list:
    states: dict[str, dict] = {}
    out = []
    for kind, _, value in traffic.records:
        parse = parse_send_request if kind == "send-requests" else parse_callback
        rec = parse(value)
        if not getattr(rec, "message_id", None):
            continue
        state = states.setdefault(rec.message_id, status.new_state())
        apply = status.apply_request if kind == "send-requests" else status.apply_callback
        out += apply(state, rec, 1).changes
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A database with the traffic of workspaces w1 and w2 (and dead letters, which belong to no
    workspace), an unscoped pool and a pool scoped to w1."""
    already = next(iter(ClickHouse._embedded), None)
    path = already or str(tmp_path_factory.mktemp("scoped"))
    settings = Settings(clickhouse_url=f"chdb://{path}", query_concurrency=1)
    ch = ClickHouse.connect(settings, database=f"scoped_{uuid.uuid4().hex[:8]}")
    prepare(ch, settings, log=lambda *_: None)
    traffic = simulate.generate(400, seed=5, run_id="scoped", workspaces=("w1", "w2"))
    batch = Batch()
    for i, change in enumerate(changes_for(traffic)):
        batch.add_status_change(orjson.dumps(change), "status-changes", 0, i)
    batch.add_dead_letter(orjson.dumps({
        "source_topic": "send-requests", "partition": 0, "offset": 1, "key": None, "payload": "{\"customer_id\": 1",
        "payload_encoding": "utf-8", "error_type": "undecodable", "error": "bad", "failed_at": int(time.time() * 1000)}),
        "dead-letters", 0, 1)
    batch.write(ch)
    every, w1 = Analysts(settings, ch), Analysts(settings, ch, workspace="w1")
    yield ch, every, w1
    every.close()
    w1.close()
    ch.command(f"DROP DATABASE IF EXISTS `{ch.database}`")
    if already is None:
        ClickHouse._embedded.pop(path).close()


def relations(ch: ClickHouse) -> dict[str, tuple[str, bool]]:
    """Each table and view of the database: its engine, and whether it has a workspace_id column."""
    _, rows = ch.query(
        "SELECT t.name, t.engine, countIf(c.name = 'workspace_id') FROM system.tables AS t "
        "LEFT JOIN system.columns AS c ON c.database = t.database AND c.table = t.name "
        "WHERE t.database = %(d)s GROUP BY t.name, t.engine", {"d": ch.database})
    return {name: (engine, bool(has)) for name, engine, has in rows}


def test_every_table_of_customer_rows_is_filtered_by_workspace(two):
    """A table a migration adds must be classified: filtered by workspace, hidden, or a catalog."""
    ch, _, _ = two
    stored = {name: has for name, (engine, has) in relations(ch).items() if "MergeTree" in engine}
    assert set(stored) == set(WORKSPACE_TABLES) | set(NO_WORKSPACE_TABLES) | CATALOGS, (
        "classify the new table in sinks/analyst.py (WORKSPACE_TABLES, NO_WORKSPACE_TABLES or CATALOG_TABLES)")
    assert {name for name, has in stored.items() if has} == set(WORKSPACE_TABLES)


def test_a_scoped_reader_sees_its_workspace_in_every_relation(two):
    ch, every, w1 = two
    db = f"`{ch.database}`"
    seen = 0
    for name, (engine, has_workspace) in sorted(relations(ch).items()):
        if engine in ("MaterializedView", "Null"):  # a view's target or nothing: not for a scoped reader
            with pytest.raises(Refused):
                w1.query(f"SELECT count() FROM {db}.{name}")
            continue
        if has_workspace:
            _, all_rows = every.query(f"SELECT workspace_id, count() FROM {db}.{name} GROUP BY workspace_id "
                                      "ORDER BY workspace_id")
            _, mine = w1.query(f"SELECT workspace_id, count() FROM {db}.{name} GROUP BY workspace_id")
            if all_rows:  # (unconfirmed, health: by the clock, may have no rows)
                assert {w for w, _ in all_rows} == {"w1", "w2"}, (name, all_rows)
                assert mine == [r for r in all_rows if r[0] == "w1"], name
                seen += 1
        elif name not in CATALOGS:
            assert every.query(f"SELECT count() FROM {db}.{name}")[1][0][0] > 0, name
            assert w1.query(f"SELECT count() FROM {db}.{name}")[1] == [(0,)], f"{name}: no workspace, no rows"
    assert seen >= 14


def test_joins_subqueries_and_views_of_views_are_filtered_too(two):
    ch, _, w1 = two
    db = f"`{ch.database}`"
    _, rows = w1.query(
        f"SELECT DISTINCT s.workspace_id FROM {db}.status_changes AS s "
        f"JOIN (SELECT message_id FROM {db}.messages_by_workspace FINAL) AS m USING message_id "
        f"WHERE s.message_id IN (SELECT message_id FROM {db}.engagement_events)")
    assert rows == [("w1",)]
    _, rows = w1.query(f"SELECT DISTINCT workspace_id FROM {db}.unconfirmed UNION DISTINCT "
                       f"SELECT DISTINCT workspace_id FROM {db}.recipient_health")
    assert {r[0] for r in rows} <= {"w1"}
    # A reader who names the other workspace gets nothing, not an error that tells it exists.
    assert w1.query(f"SELECT count() FROM {db}.messages WHERE workspace_id = 'w2'")[1] == [(0,)]


@pytest.mark.parametrize("attack, code", [
    ("SELECT count() FROM merge({db!r}, '^status_changes_raw$') WHERE workspace_id = 'w2'", 497),
    ("SELECT count() FROM merge(currentDatabase(), '.*')", 497),
    ("SELECT count() FROM {db}.messages SETTINGS additional_table_filters = {{}}", 164),
    ("SELECT count() FROM {db}.messages SETTINGS additional_table_filters = {{'x.y': '1'}}", 164),
    ("SELECT query FROM system.processes", 497),
    ("SELECT query FROM system.query_log", 497),
    ("SELECT count() FROM system.parts", 497),
    ("SELECT 1 WHERE 'x' IN system.processes", 497),
    ("SELECT * FROM {db}.messages WHERE message_id IN (SELECT query_id FROM system.processes)", 497),
    ("SELECT * FROM view(SELECT * FROM system.processes)", 497),
    ("SELECT dictGet('d', 'x', 1)", 497),
    ("SELECT * FROM default.anything", 497),
    # Found by review: a materialized view reads its target table under the view's own name.
    ("SELECT customer_id FROM {db}.messages_by_workspace_mv", 497),
    ("SELECT recipient FROM {db}.status_changes_ingest_mv", 497),
    ("SELECT url FROM {db}.engagement_events_ingest_mv", 497),
    ("SELECT * FROM view(SELECT * FROM {db}.funnel_daily_by_workspace_mv)", 497),
    ("SELECT 1 WHERE 'x' IN {db}.messages_by_workspace_mv", 497),
    # PREWHERE runs before the filter: its errors would quote other workspaces' values.
    ("SELECT 1 FROM {db}.status_changes_raw PREWHERE workspace_id = 'w2' AND toUInt64(customer_id) = 0", 497),
    ("SELECT 1 FROM {db}.status_changes_raw prewhere throwIf(workspace_id = 'w2')", 497),
])
def test_what_would_read_around_the_filters_is_refused(two, attack, code):
    ch, every, w1 = two
    sql = attack.format(db=f"`{ch.database}`") if "{db!r}" not in attack else attack.format(db=ch.database)
    with pytest.raises(Refused) as refused:
        w1.query(sql)
    assert refused.value.code == code, refused.value.message


def test_the_http_interfaces_current_database_does_not_open_other_tables(two):
    ch, _, w1 = two
    with pytest.raises(Refused) as refused:
        w1.raw("SELECT query FROM processes", "TSV", database="system")
    assert refused.value.code == 497
    other = f"other_{uuid.uuid4().hex[:8]}"
    ch.command(f"CREATE DATABASE {other}")
    try:
        ch.command(f"CREATE TABLE {other}.secrets (s String) ENGINE = MergeTree ORDER BY s")
        ch.command(f"INSERT INTO {other}.secrets VALUES ('other-db-secret')")
        for sql, params in (("SELECT * FROM secrets", None), ("SELECT * FROM {t:Identifier}", {"t": "secrets"}),
                            (f"SELECT 'other-db-secret' IN {other}.secrets", None),
                            ("SELECT recipient FROM messages_by_workspace_mv", None)):
            with pytest.raises(Refused) as refused:
                w1.raw(sql, "TSV", parameters=params, database=other if "mv" not in sql else ch.database)
            assert refused.value.code == 497, sql
        with pytest.raises(Refused):
            w1.query(f"SELECT 'other-db-secret' IN {other}.secrets")
    finally:
        ch.command(f"DROP DATABASE IF EXISTS {other}")
    # A WITH subquery's name is no table; a column named like a view is a column.
    assert w1.query("WITH t AS (SELECT 1 AS x) SELECT x FROM t")[1] == [(1,)]
    assert w1.raw("SELECT DISTINCT workspace_id FROM status_changes", "TSV", database=ch.database).body == b"w1\n"
    assert w1.raw("SELECT name FROM system.databases WHERE name = currentDatabase()", "TSV",
                  database=ch.database).body == ch.database.encode() + b"\n"


def test_a_scoped_readers_catalog_queries_work(two):
    """What clients' catalogs ask (JDBC, Grafana): databases, tables, columns, settings."""
    ch, _, w1 = two
    _, tables = w1.query("SELECT name FROM system.tables WHERE database = {d:String}", {"d": ch.database})
    assert ("messages",) in tables
    assert w1.query("SELECT count() > 0 FROM system.columns WHERE table = 'messages'")[1] == [(1,)]
    assert w1.query("SELECT count() > 0 FROM information_schema.tables")[1] == [(1,)]


def test_reports_of_a_scoped_reader_count_its_workspace_only(two):
    ch, every, w1 = two
    mine = reports.run(w1.trusted(), "funnel", reports.Filters())
    asked = reports.run(every.trusted(), "funnel", reports.Filters(workspace="w1"))
    both = reports.run(every.trusted(), "funnel", reports.Filters())
    assert mine.rows == asked.rows and mine.rows != both.rows
    sent = mine.columns.index("sent")
    assert 0 < sum(r[sent] for r in mine.rows) < sum(r[sent] for r in both.rows)
    for name in ("status", "failures", "latency", "trend", "unconfirmed", "recipients", "health"):
        assert reports.run(w1.trusted(), name, reports.Filters()).rows == \
            reports.run(every.trusted(), name, reports.Filters(workspace="w1")).rows, name

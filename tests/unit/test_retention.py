"""Retention (sinks/retention.py, docs/retention.md): each table's TTL comes from the settings,
changes only when they change, and ClickHouse deletes the rows past it while the others stay."""

from __future__ import annotations

import dataclasses
import time

import orjson
import pytest

from sendtrack.settings import Settings
from sendtrack.topics import retention_ms
from sinks import retention
from sinks.clickhouse import ClickHouse
from sinks.writer import Batch
from tests.unit.test_sink_inserts import CHANGE, DEAD, rows

DAY_MS = 86_400_000




def ttl_of(ch: ClickHouse, table: str) -> str:
    (query,), = rows(ch, f"SELECT create_table_query FROM system.tables WHERE database = '{ch.database}' "
                         f"AND name = '{table}'")
    return query.partition(" TTL ")[2].partition(" SETTINGS ")[0]


def test_the_settings_become_each_tables_ttl_and_are_applied_once(ch):
    settings = Settings()
    changed = retention.apply(ch, settings, log=lambda *_: None)
    assert changed == {"status_changes_raw": 730, "messages_by_workspace": 730, "message_health": 730,
                       "engagement_events_raw": 730, "funnel_daily_by_workspace": 1095, "engagement_daily_by_workspace": 1095, "dead_letters_raw": 30}
    assert ttl_of(ch, "status_changes_raw") == "toDateTime(requested_at) + toIntervalDay(730)"
    assert ttl_of(ch, "funnel_daily_by_workspace") == "day + toIntervalDay(1095)"
    assert ttl_of(ch, "dead_letters_raw") == "toDateTime(failed_at) + toIntervalDay(30)"
    assert retention.apply(ch, settings, log=lambda *_: None) == {}  # nothing changed: no ALTER
    # A setting changed: only that table's TTL changes; 0 removes it.
    assert retention.apply(ch, Settings(dead_letter_retention_days=0), log=lambda *_: None) == {"dead_letters_raw": 0}
    assert ttl_of(ch, "dead_letters_raw") == ""
    assert ttl_of(ch, "messages_by_workspace") == "toDateTime(requested_at) + toIntervalDay(730)"


def test_rows_past_their_retention_are_deleted_and_the_others_stay(ch):
    now = int(time.time() * 1000)
    batch = Batch()
    for i, age_days in enumerate([500, 450, 20, 1]):
        change = dataclasses.replace(CHANGE, message_id=f"m{age_days}", change_id=f"c{age_days}",
                                     requested_at=now - age_days * DAY_MS, occurred_at=now - age_days * DAY_MS)
        batch.add_status_change(orjson.dumps(change), "status-changes", 0, i)
        opened = dataclasses.replace(change, change_id=f"o{age_days}", status="opened", current_status="opened",
                                     kind="engagement", event_id=f"e{age_days}")
        batch.add_status_change(orjson.dumps(opened), "status-changes", 0, 10 + i)
    for i, age_days in enumerate([40, 2]):
        batch.add_dead_letter(orjson.dumps({**DEAD, "offset": i, "failed_at": now - age_days * DAY_MS}),
                              "dead-letters", 0, i)
    batch.write(ch)
    every = ("status_changes_raw", "messages_by_workspace", "message_health", "engagement_events_raw",
             "funnel_daily_by_workspace", "dead_letters_raw")
    before = {t: rows(ch, f"SELECT count() FROM {{db}}.{t}")[0][0] for t in every}
    assert before["messages_by_workspace"] == 4 and before["message_health"] >= 4 and before["dead_letters_raw"] == 2, before

    retention.apply(ch, Settings(retention_days=365, time_max_age_days=365, aggregate_retention_days=480),
                    log=lambda *_: None)
    for table in every:
        ch.command(f"OPTIMIZE TABLE `{ch.database}`.{table} FINAL")

    assert rows(ch, "SELECT message_id FROM {db}.messages ORDER BY message_id") == [("m1",), ("m20",)]
    assert rows(ch, "SELECT DISTINCT message_id FROM {db}.status_changes_raw ORDER BY message_id") == [("m1",), ("m20",)]
    assert rows(ch, "SELECT message_id FROM {db}.message_health FINAL ORDER BY message_id") == [("m1",), ("m20",)]
    assert rows(ch, "SELECT event_id FROM {db}.engagement_events ORDER BY event_id") == [("e1",), ("e20",)]
    assert rows(ch, "SELECT offset FROM {db}.dead_letters_raw") == [(1,)]
    # The funnel keeps counts longer than identities: 450 days old stays, 500 goes.
    assert rows(ch, "SELECT toUInt64(sum(messages)) FROM {db}.funnel_daily WHERE status = 'sent'") == [(3,)]


def test_topics_sendtrack_creates_get_retention_from_the_settings():
    settings = Settings(topic_retention_days=2, webhook_retention_hours=6)
    assert retention_ms(settings, "status-changes") == 2 * 86_400_000
    assert retention_ms(settings, "sendtrack-routed") == 2 * 86_400_000
    assert retention_ms(settings, "provider-webhooks") == 6 * 3_600_000


def test_a_retention_shorter_than_the_accepted_age_is_refused_at_start():
    with pytest.raises(ValueError, match="SENDTRACK_RETENTION_DAYS \\(90\\) is shorter than SENDTRACK_TIME_MAX_AGE_DAYS"):
        Settings(retention_days=90)
    assert Settings(retention_days=90, time_max_age_days=90).retention_days == 90
    assert Settings(retention_days=0).retention_days == 0  # forever
    with pytest.raises(ValueError, match="SENDTRACK_AGGREGATE_RETENTION_DAYS \\(365\\)"):
        Settings(aggregate_retention_days=365)

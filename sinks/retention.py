"""How long ClickHouse keeps what sendtrack writes: a TTL per table, from the settings.

| table | kept for | counted from | setting (default) |
|---|---|---|---|
| status_changes_raw, messages_by_workspace, message_health, engagement_events_raw (a customer's rows: ids, recipient, reasons, URLs) | `retention_days` | the request's `requested_at` | SENDTRACK_RETENTION_DAYS (730) |
| funnel_daily_by_workspace, engagement_daily_by_workspace (counts per day, no identities) | `aggregate_retention_days` | `day` | SENDTRACK_AGGREGATE_RETENTION_DAYS (1095) |
| dead_letters_raw (whole payloads, raw webhook bodies) | `dead_letter_retention_days` | `failed_at` | SENDTRACK_DEAD_LETTER_RETENTION_DAYS (30) |

0 keeps a table's rows forever. A message's rows all carry its request's `requested_at`, so a message
goes whole, never a part of its timeline. ClickHouse deletes expired rows when it merges (at the
latest `merge_with_ttl_timeout` after they expire, 4 h by default); the views read the tables, so
they stop showing expired rows then. `apply` runs after the migrations at every start of the sink
(and `sendtrack migrate`); it changes a table's TTL only when the setting changed since it was last
applied (ledger: `retention_applied`, migration 0009), and a shortened TTL applies to existing rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sendtrack.settings import Settings
from sinks.clickhouse import ClickHouse


@dataclass(frozen=True)
class Rule:
    table: str
    column: str  # the Date / DateTime the TTL counts from
    setting: str  # the Settings field with the days


RULES = (
    Rule("status_changes_raw", "toDateTime(requested_at)", "retention_days"),
    Rule("messages_by_workspace", "toDateTime(requested_at)", "retention_days"),
    Rule("message_health", "toDateTime(requested_at)", "retention_days"),
    Rule("engagement_events_raw", "toDateTime(requested_at)", "retention_days"),
    Rule("funnel_daily_by_workspace", "day", "aggregate_retention_days"),
    Rule("engagement_daily_by_workspace", "day", "aggregate_retention_days"),
    Rule("dead_letters_raw", "toDateTime(failed_at)", "dead_letter_retention_days"),
)


def wanted(settings: Settings) -> dict[str, int]:
    """Days each table keeps its rows under these settings (0 = forever)."""
    return {rule.table: int(getattr(settings, rule.setting)) for rule in RULES}


def applied(ch: ClickHouse) -> dict[str, int]:
    _, rows = ch.query(f"SELECT table, argMax(days, applied_at) FROM `{ch.database}`.retention_applied GROUP BY table")
    return {table: days for table, days in rows}


def apply(ch: ClickHouse, settings: Settings, log: Callable[[str], None] = print) -> dict[str, int]:
    """Give each table the TTL the settings ask for, where it differs from the last one applied.
    Returns the tables changed, with their days."""
    before = applied(ch)
    changed = {}
    for rule in RULES:
        days = int(getattr(settings, rule.setting))
        if before.get(rule.table) == days:
            continue
        table = f"`{ch.database}`.{rule.table}"
        if days:
            ch.command(f"ALTER TABLE {table} MODIFY TTL {rule.column} + toIntervalDay({days})")
        elif rule.table in before:  # it had a TTL: remove it
            ch.command(f"ALTER TABLE {table} REMOVE TTL")
        ch.insert("retention_applied", [[rule.table], [days]], ["table", "days"])
        log(f"retention: {rule.table} keeps rows {f'{days} days' if days else 'forever'} "
            f"(SENDTRACK_{rule.setting.upper()})")
        changed[rule.table] = days
    return changed

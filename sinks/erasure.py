"""Erase one customer's personal data from ClickHouse, keeping every count exact.

What a customer's rows hold, and what erasure does with them:

| table | personal data | erasure |
|---|---|---|
| status_changes_raw | customer_id, recipient, the failure's free-text reason | set to '' (the reason's code stays) |
| engagement_events_raw | customer_id, recipient, the clicked URL | set to '' |
| messages_agg | customer_id, recipient (in its sorting key), the failure's reason | the row is written again without them, then the original deleted |
| dead_letters_raw | whole payloads | every dead letter of the customer's messages, or whose payload names the customer or a recipient of theirs, is deleted |
| funnel_daily_states, engagement_daily_states | none (counts per day and dimension) | kept |

So the funnels, the current-status and failure counts and the recipient-health counts are the same
after an erasure (the customer's messages count as before; their recipient reads as unknown). The
message ids stay: they are the flow engine's opaque ids, and without the customer's id and
recipient nothing in ClickHouse ties them to a person any more.

Each change is a ClickHouse mutation run synchronously (`mutations_sync = 2`): when `erase` returns,
the parts on disk were rewritten without the data, not just hidden. It is idempotent: a second run
finds nothing and changes nothing.

Kafka records and the engine's state are outside this module (docs/retention.md, "Erasure").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import orjson

from sendtrack import batches
from sendtrack.partitions import partition
from sinks.clickhouse import ClickHouse

SYNC = "SETTINGS mutations_sync = 2"


@dataclass
class Erased:
    """What one erasure found and changed in ClickHouse."""

    customer_id: str
    messages: int = 0  # the customer's messages (by message id)
    recipients: int = 0  # distinct recipients they were sent to
    rows: dict[str, int] = field(default_factory=dict)  # rows changed or deleted, per table
    message_ids: list[str] = field(default_factory=list, repr=False)  # for the engine's state

    def as_dict(self) -> dict:
        return {"customer_id": self.customer_id, "messages": self.messages, "recipients": self.recipients,
                "rows": dict(self.rows)}


def engine_records(message_ids: list[str], partitions: int) -> list[tuple[int, bytes]]:
    """(partition, value) of the `sendtrack-routed` records (under BATCH_KEY) that make the engine
    forget `message_ids` (agents/engine.py `erase_message`)."""
    items: dict[int, list[bytes]] = {}
    for mid in message_ids:
        items.setdefault(partition(mid.encode(), partitions), []).append(
            orjson.dumps({"kind": "erase", "message_id": mid}))
    return [(p, value) for p, encoded in sorted(items.items()) for value in batches.pack(encoded)]


def subject(customer_id: str) -> str:
    """How logs name an erased customer: a digest, so the log does not keep what was erased."""
    return "customer#" + hashlib.sha256(customer_id.encode()).hexdigest()[:12]


def _count(ch: ClickHouse, sql: str, params: dict) -> int:
    return int(ch.query(sql, params)[1][0][0])


def erase_customer(ch: ClickHouse, customer_id: str, log: Callable[[str], None] = print) -> Erased:
    """Erase `customer_id`'s personal data from every ClickHouse table sendtrack writes (above)."""
    if not customer_id:
        raise ValueError("a customer id is required")
    db = f"`{ch.database}`"
    c = {"c": customer_id}
    result = Erased(customer_id)

    # Who and what: the customer's messages and recipients, before anything is changed.
    _, rows = ch.query(
        f"SELECT DISTINCT message_id, recipient FROM ("
        f" SELECT message_id, recipient FROM {db}.messages_agg WHERE customer_id = {{c:String}}"
        f" UNION ALL SELECT message_id, recipient FROM {db}.status_changes_raw WHERE customer_id = {{c:String}}"
        f" UNION ALL SELECT message_id, recipient FROM {db}.engagement_events_raw WHERE customer_id = {{c:String}})", c)
    ids = sorted({m for m, _ in rows})
    recipients = sorted({r for _, r in rows if r})
    result.messages, result.recipients, result.message_ids = len(ids), len(recipients), ids
    log(f"erase: {subject(customer_id)}: {len(ids)} message(s), {len(recipients)} recipient(s)")

    # Dead letters first: the payloads that name the customer are found through the other tables'
    # message ids and recipients, which the next steps erase.
    names = [customer_id] + recipients
    dead = (f"has({{ids:Array(String)}}, ifNull(key, '')) OR "
            f"multiSearchAny(payload, arrayMap(x -> concat('\"', x, '\"'), {{names:Array(String)}}))")
    p = {"ids": ids, "names": names}
    result.rows["dead_letters_raw"] = _count(ch, f"SELECT count() FROM {db}.dead_letters_raw WHERE {dead}", p)
    if result.rows["dead_letters_raw"]:
        ch.command(f"ALTER TABLE {db}.dead_letters_raw DELETE WHERE {dead} {SYNC}", p)

    # messages_agg: the customer id and recipient are in the sorting key, so the row is written
    # again without them (the same aggregate values: counts do not move), then the original goes.
    result.rows["messages_agg"] = _count(ch, f"SELECT count() FROM {db}.messages_agg WHERE customer_id = {{c:String}}", c)
    if result.rows["messages_agg"]:
        _, cols = ch.query(f"SELECT name FROM system.columns WHERE database = {{d:String}} AND table = 'messages_agg' "
                           "ORDER BY position", {"d": ch.database})
        names_ = [n for (n,) in cols]
        # New names for the new values (an alias named like a column would be what WHERE reads).
        replaced = {"customer_id": "'' AS erased_customer_id", "recipient": "'' AS erased_recipient",
                    "failure": "tuple(failure.1, failure.2, '', failure.4) AS erased_failure"}
        select = ", ".join(replaced.get(n, n) for n in names_)
        ch.command(f"INSERT INTO {db}.messages_agg ({', '.join(names_)}) "
                   f"SELECT {select} FROM {db}.messages_agg WHERE customer_id = {{c:String}}", c)
        ch.command(f"ALTER TABLE {db}.messages_agg DELETE WHERE customer_id = {{c:String}} {SYNC}", c)

    for table, blank in (("status_changes_raw", "customer_id = '', recipient = '', reason = ''"),
                         ("engagement_events_raw", "customer_id = '', recipient = '', url = ''")):
        result.rows[table] = _count(ch, f"SELECT count() FROM {db}.{table} WHERE customer_id = {{c:String}}", c)
        if result.rows[table]:
            ch.command(f"ALTER TABLE {db}.{table} UPDATE {blank} WHERE customer_id = {{c:String}} {SYNC}", c)
    log(f"erase: {subject(customer_id)}: rows " + ", ".join(f"{t} {n}" for t, n in result.rows.items()))
    return result


def report(erased: Erased, settings) -> dict:
    """What an erasure did, and what stays (and for how long at most), as `sendtrack erase` and
    POST /admin/erase answer it."""
    topics = settings.topic_retention_days
    return {
        "erased": {
            "clickhouse": erased.as_dict(),
            "engine_state": {
                "messages": len(erased.message_ids),
                "how": "an erase record per message to sendtrack-routed: the engine replaces the message's "
                       "state (request, milestones, held callbacks, engagement URLs) with a marker and deletes "
                       "the provider ids and Messenger recipient it registered; later inputs for those messages "
                       "are dropped",
            },
        },
        "not_erased": [
            {"where": "Kafka: send-requests, provider-callbacks, status-changes, dead-letters",
             "why": "append-only topics: Kafka cannot edit a record",
             "gone_within": f"{topics:g} days (SENDTRACK_TOPIC_RETENTION_DAYS)"},
            {"where": "Kafka: provider-webhooks (raw webhook bodies)", "why": "append-only topic",
             "gone_within": f"{settings.webhook_retention_hours:g} hours (SENDTRACK_WEBHOOK_RETENTION_HOURS)"},
            {"where": "the tables' changelog topics: the values before the erasure",
             "why": "a compacted topic drops a key's older values when Kafka compacts it",
             "gone_within": f"{settings.topic_retention_days:g} days (max.compaction.lag.ms of the changelogs)"},
        ],
    }

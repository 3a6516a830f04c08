"""Erase one customer's personal data from ClickHouse, keeping every count exact.

What a customer's rows hold, and what erasure does with them:

| table | personal data | erasure |
|---|---|---|
| status_changes_raw | customer_id, recipient, the failure's free-text reason | set to '' (the reason's code stays) |
| engagement_events_raw | customer_id, recipient, the clicked URL | set to '' |
| messages_by_workspace | customer_id, recipient (in its sorting key), the failure's reason | the row is written again without them, then the original deleted |
| dead_letters_raw | whole payloads | every dead letter of the customer's messages, or whose payload names the customer or a recipient of theirs, is deleted |
| message_health | none (a message's id, action, provider, mailbox provider and milestones reached) | kept |
| funnel_daily_by_workspace, engagement_daily_by_workspace | none (counts per day and dimension) | kept |

So the funnels, the current-status counts and the failure counts per code are the same after an
erasure (the customer's messages count as before), by mailbox provider and carrier too (classified
when the messages were ingested, migration 0017; not personal data; a message erased before 0017
stays unknown). The message ids stay: they are the flow engine's opaque ids, and without the customer's id and
recipient nothing in ClickHouse ties them to a person any more.

Each change is a ClickHouse mutation run synchronously (`mutations_sync = 2`): when `erase` returns,
the parts on disk were rewritten without the data, not just hidden. It is idempotent: a second run
finds nothing and changes nothing.

Kafka records and the engine's state are outside this module (docs/retention.md, "Erasure").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Optional

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
    workspace: Optional[str] = None  # the customer's workspace, if the erasure named one

    def as_dict(self) -> dict:
        doc = {"customer_id": self.customer_id, "messages": self.messages, "recipients": self.recipients,
               "rows": dict(self.rows)}
        return doc if self.workspace is None else {"workspace": self.workspace, **doc}


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


QUIET = "SETTINGS log_queries = 0"  # the statements that name the customer stay out of query_log


def find(ch: ClickHouse, customer_id: str, workspace: Optional[str] = None) -> tuple[list[str], list[str]]:
    """The customer's message ids and recipients (what ClickHouse has of them); with `workspace`,
    those of the customer of that workspace only (shops number their customers each their own way:
    the same id in another workspace is another person)."""
    if not customer_id:
        raise ValueError("a customer id is required")
    db = f"`{ch.database}`"
    mine = "customer_id = {c:String}" + ("" if workspace is None else " AND workspace_id = {w:String}")
    _, rows = ch.query(
        f"SELECT DISTINCT message_id, recipient FROM ("
        f" SELECT message_id, recipient FROM {db}.messages_by_workspace WHERE {mine}"
        f" UNION ALL SELECT message_id, recipient FROM {db}.status_changes_raw WHERE {mine}"
        f" UNION ALL SELECT message_id, recipient FROM {db}.engagement_events_raw WHERE {mine})"
        f" {QUIET}", {"c": customer_id, "w": workspace or ""})
    return sorted({m for m, _ in rows}), sorted({r for _, r in rows if r})


def _dead_letter_keys(ch: ClickHouse, customer_id: str, ids: list[str], recipients: list[str],
                      workspace: Optional[str] = None) -> list[tuple]:
    """The dead letters that belong to the customer: keyed by one of their messages, or whose
    payload (decoded when it is base64) has their customer id (and, with `workspace`, that
    workspace), one of their messages or recipients in its own field, or names one of their
    recipients anywhere (a webhook body's own fields)."""
    db = f"`{ch.database}`"
    text = "if(payload_encoding = 'base64', ifNull(tryBase64Decode(payload), ''), payload)"
    theirs = "JSONExtractString(t, 'customer_id') = {c:String}" + (
        "" if workspace is None else " AND JSONExtractString(t, 'workspace_id') = {w:String}")
    fields = (f"({theirs}) "
              f"OR has({{ids:Array(String)}}, JSONExtractString(t, 'message_id')) "
              f"OR has({{ids:Array(String)}}, ifNull(key, '')) "
              f"OR has({{rs:Array(String)}}, JSONExtractString(t, 'recipient'))")
    # multiSearchAny takes at most 255 needles: the recipients in groups.
    groups = [recipients[i:i + 200] for i in range(0, len(recipients), 200)]
    named = " OR ".join(f"multiSearchAny(t, {{r{i}:Array(String)}})" for i in range(len(groups)))
    params = {"c": customer_id, "w": workspace or "", "ids": ids, "rs": recipients,
              **{f"r{i}": g for i, g in enumerate(groups)}}
    _, rows = ch.query(
        f"SELECT source_topic, partition, offset FROM (SELECT source_topic, partition, offset, key, {text} AS t "
        f"FROM {db}.dead_letters_raw) WHERE {fields}{' OR ' + named if named else ''} {QUIET}", params)
    return sorted(set(rows))


def erase_customer(ch: ClickHouse, customer_id: str, log: Callable[[str], None] = print,
                   found: Optional[tuple[list[str], list[str]]] = None, workspace: Optional[str] = None) -> Erased:
    """Erase `customer_id`'s personal data from every ClickHouse table sendtrack writes (above);
    with `workspace`, of the customer of that workspace only.

    The changes select rows by message id (and dead letters by position), never by the customer id
    or a recipient: a mutation's text stays in system.mutations, which readers may query. `found`
    is what `find` returned, when the caller already asked (the engine's records go first)."""
    ids, recipients = found if found is not None else find(ch, customer_id, workspace)
    db = f"`{ch.database}`"
    result = Erased(customer_id, messages=len(ids), recipients=len(recipients), message_ids=ids, workspace=workspace)
    log(f"erase: {subject(customer_id)}: {len(ids)} message(s), {len(recipients)} recipient(s)")

    dead = _dead_letter_keys(ch, customer_id, ids, recipients, workspace)
    result.rows["dead_letters_raw"] = len(dead)
    if dead:
        ch.command(f"ALTER TABLE {db}.dead_letters_raw DELETE WHERE (source_topic, partition, offset) IN "
                   f"{{dead:Array(Tuple(String, Int32, Int64))}} {SYNC}", {"dead": dead})

    mine = "has({ids:Array(String)}, message_id) AND (customer_id != '' OR recipient != '')"
    m = {"ids": ids}
    if ids:
        # messages_by_workspace: the customer id and recipient are in the sorting key, so the row is written
        # again without them (the same aggregate values: counts do not move), then the original goes.
        result.rows["messages_by_workspace"] = _count(ch, f"SELECT count() FROM {db}.messages_by_workspace WHERE {mine}", m)
        if result.rows["messages_by_workspace"]:
            _, cols = ch.query(f"SELECT name FROM system.columns WHERE database = {{d:String}} "
                               "AND table = 'messages_by_workspace' ORDER BY position", {"d": ch.database})
            names = [n for (n,) in cols]
            # New names for the new values (an alias named like a column would be what WHERE reads).
            replaced = {"customer_id": "'' AS erased_customer_id", "recipient": "'' AS erased_recipient",
                        "failure": "tuple(failure.1, failure.2, '', failure.4) AS erased_failure"}
            select = ", ".join(replaced.get(n, n) for n in names)
            ch.command(f"INSERT INTO {db}.messages_by_workspace ({', '.join(names)}) "
                       f"SELECT {select} FROM {db}.messages_by_workspace WHERE {mine}", m)
            ch.command(f"ALTER TABLE {db}.messages_by_workspace DELETE WHERE {mine} {SYNC}", m)
        for table, blank in (("status_changes_raw", "customer_id = '', recipient = '', reason = ''"),
                             ("engagement_events_raw", "customer_id = '', recipient = '', url = ''")):
            result.rows[table] = _count(ch, f"SELECT count() FROM {db}.{table} WHERE {mine}", m)
            if result.rows[table]:
                ch.command(f"ALTER TABLE {db}.{table} UPDATE {blank} WHERE {mine} {SYNC}", m)
    log(f"erase: {subject(customer_id)}: rows " + ", ".join(f"{t} {n}" for t, n in result.rows.items()))
    return result


def report(erased: Erased, settings, settled: bool) -> dict:
    """What an erasure did, and what stays (and for how long at most), as `sendtrack erase` and
    POST /admin/erase answer it. `settled`: the engine applied the erase records and the sink wrote
    every status change made before them, before ClickHouse was changed."""
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
                "applied_before_clickhouse": settled,
                "note": "" if settled else "not confirmed before ClickHouse was changed (no worker answered, or "
                        "it took over 120 s): the engine applies the records when a worker reads them; run the "
                        "erasure again once it did, to catch status changes written in between",
            },
        },
        "not_erased": [
            {"where": "Kafka: send-requests, provider-callbacks, status-changes, dead-letters",
             "why": "append-only topics: Kafka cannot edit a record",
             "gone_within": f"{topics:g} days (SENDTRACK_TOPIC_RETENTION_DAYS)"},
            {"where": "Kafka: provider-webhooks (raw webhook bodies)", "why": "append-only topic",
             "gone_within": f"{settings.webhook_retention_hours:g} hours (SENDTRACK_WEBHOOK_RETENTION_HOURS)"},
            {"where": "Kafka: sendtrack-routed, sendtrack-by-provider-id (records between partitions)",
             "why": "append-only topics", "gone_within": f"{topics:g} days (SENDTRACK_TOPIC_RETENTION_DAYS)"},
            {"where": "the tables' changelog topics: the values before the erasure",
             "why": "a compacted topic drops a key's older values when Kafka compacts it",
             "gone_within": f"{settings.topic_retention_days:g} days (max.compaction.lag.ms of changelogs this "
                            "version created) and the next record on the partition"},
        ],
    }

"""Creates the contract and internal topics with one partition count, and checks co-partitioning."""

from __future__ import annotations

from typing import AsyncIterator, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from sendtrack.settings import Settings

CONTRACT = ("send-requests", "provider-callbacks", "status-changes", "dead-letters", "provider-webhooks")
INTERNAL = ("sendtrack-routed", "sendtrack-by-provider-id")
# State changes of deliverability rates (agents/alerts.py): one partition, so one order for all of
# them; compacted, so the last record of every rate stays, which is what a restarted evaluator reads.
ALERTS = "deliverability-alerts"
# The largest record batch the internal and changelog topics take (max.message.bytes), set when
# sendtrack creates them rather than left to the broker's default. The engine keeps every record it
# produces within RECORD_BUDGET_BYTES by construction (agents/engine.py, sendtrack/status.py), and
# its producer batches are at most RECORD_MAX_BYTES (agents/app.py), so the broker never refuses one.
RECORD_MAX_BYTES = 1024 * 1024
# Key and value of one record: the rest of a one-record batch is its header (61 bytes) and the
# record's framing (under 40).
RECORD_BUDGET_BYTES = RECORD_MAX_BYTES - 1024
_RECORD_LIMIT = {"max.message.bytes": str(RECORD_MAX_BYTES)}
# Raw webhook requests (base64 bodies up to SENDTRACK_MAX_PAYLOAD_BYTES) exceed Kafka's 1 MB default.
TOPIC_CONFIGS = {
    "provider-webhooks": {"max.message.bytes": str(4 * 1024 * 1024)},
    **{name: _RECORD_LIMIT for name in INTERNAL},
}


def retention_ms(settings: Settings, name: str) -> int:
    """retention.ms of a topic sendtrack creates (docs/retention.md): raw webhook requests are kept
    SENDTRACK_WEBHOOK_RETENTION_HOURS, every other non-compacted topic SENDTRACK_TOPIC_RETENTION_DAYS."""
    if name == "provider-webhooks":
        return int(settings.webhook_retention_hours * 3_600_000)
    return int(settings.topic_retention_days * 86_400_000)


class TopicMismatch(RuntimeError):
    """A topic exists with another partition count: the join per message id would be wrong."""


async def ensure_topics(settings: Settings, changelogs: Sequence[str] = ()) -> list[str]:
    """Create missing topics; returns the names created. Existing ones must match the partition count.

    `changelogs` are the tables' changelog topics (compacted). Creating them here, before the Faust
    consumer first fetches metadata, avoids a start-up race: a table first written while the
    consumer still saw its new changelog with 0 partitions crashed its agent (PartitionsMismatch).
    """
    names = [settings.topic(n) for n in CONTRACT + INTERNAL] + list(changelogs)
    # A changelog's older values (an erased customer's, an evicted message's) are compacted away
    # within max.compaction.lag.ms: Kafka rolls and compacts a segment once it is that old.
    configs = {t: {"cleanup.policy": "compact", "max.compaction.lag.ms": str(retention_ms(settings, "changelog")),
                   **_RECORD_LIMIT} for t in changelogs}
    configs.update({settings.topic(n): {**TOPIC_CONFIGS.get(n, {}), "retention.ms": str(retention_ms(settings, n))}
                    for n in CONTRACT + INTERNAL})
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_broker, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = {}
        for meta in await admin.describe_topics(names):
            if meta.get("error_code", 0) == 0:
                existing[meta["topic"]] = len(meta["partitions"])
        wrong = {t: n for t, n in existing.items() if n != settings.partitions}
        if wrong:
            detail = ", ".join(f"{t} has {n}" for t, n in sorted(wrong.items()))
            raise TopicMismatch(
                f"topics must all have SENDTRACK_PARTITIONS={settings.partitions} partitions "
                f"(co-partitioned by message id), but {detail}"
            )
        missing = [t for t in names if t not in existing]
        if missing:
            try:
                await admin.create_topics([
                    NewTopic(t, settings.partitions, 1, topic_configs=configs.get(t, {}))
                    for t in missing
                ])
            except TopicAlreadyExistsError:
                pass
        return missing
    finally:
        await admin.close()


async def ensure_alerts_topic(settings: Settings) -> bool:
    """Create the deliverability-alerts topic if missing (one partition, compacted); True if created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_broker, request_timeout_ms=15000)
    await admin.start()
    try:
        name = settings.topic(ALERTS)
        if any(meta.get("error_code", 0) == 0 for meta in await admin.describe_topics([name])):
            return False
        try:
            await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "compact"})])
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        await admin.close()


async def committed_records(settings: Settings, topic: str, follow: bool = False
                            ) -> AsyncIterator[tuple[bytes, bytes]]:
    """(key, value) of the committed records of a one-partition topic (read_committed: a transaction
    aborted or still open is never read), from its start to its end; with `follow`, then each new one
    as it is committed. A missing topic has none."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_broker, group_id=None,
                                enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while follow or await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                for record in records:
                    if record.key is not None and record.value is not None:
                        yield record.key, record.value
    finally:
        await consumer.stop()

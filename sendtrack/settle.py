"""Waiting for the pipeline to have applied records (an erasure's): the engine's consumer group
past them, then the ClickHouse sink past every status change produced until then."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from sendtrack.settings import Settings

SINK_GROUP = "{app_id}-clickhouse-sink"  # agents/sink.py


async def _committed_past(admin: AIOKafkaAdminClient, group: str, targets: dict[TopicPartition, int],
                          deadline: float) -> bool:
    """Wait until `group` committed at least the target offset of every partition."""
    while True:
        committed = await admin.list_consumer_group_offsets(group, partitions=list(targets))
        if all((committed.get(tp).offset if committed.get(tp) else -1) >= end for tp, end in targets.items()):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)


async def settled(settings: Settings, sent: dict[int, int], timeout: float = 120.0) -> bool:
    """True once the engine applied the records at `sent` (partition -> offset on sendtrack-routed)
    and the sink wrote every status change produced before; False when `timeout` passed first."""
    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_broker, request_timeout_ms=15000)
    await admin.start()
    try:
        routed = settings.topic("sendtrack-routed")
        if not await _committed_past(admin, settings.app_id,
                                     {TopicPartition(routed, p): o + 1 for p, o in sent.items()}, deadline):
            return False
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_broker)
        await consumer.start()
        try:
            tps = [TopicPartition(settings.topic("status-changes"), p) for p in range(settings.partitions)]
            ends = {tp: end for tp, end in (await consumer.end_offsets(tps)).items() if end > 0}
        finally:
            await consumer.stop()
        return await _committed_past(admin, SINK_GROUP.format(app_id=settings.app_id), ends, deadline)
    finally:
        await admin.close()

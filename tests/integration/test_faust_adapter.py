"""The adapter's batch delivery and commit ordering (agents/faust_adapter.py), on the real broker.

An in-process Faust app with the batch transport, on a fresh topic and group per test: a handler
receives whole fetches in offset order per partition, and an offset becomes committed only after
the handler that was given its record returned.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.faust_adapter import BatchApp, RecordEvent, batch_agent
from tests.integration.conftest import BROKER

PARTITIONS = 2
PER_PARTITION = 600


class Harness:
    """A BatchApp on one fresh input topic, with one batch handler the test drives."""

    def __init__(self, tmp: Path) -> None:
        self.run = f"adapter-{uuid.uuid4().hex[:8]}"
        self.topic = f"{self.run}.input"
        self.app = BatchApp(
            self.run, broker=f"kafka://{BROKER}", store="memory://", datadir=str(tmp / "faust"),
            web_enabled=False, topic_partitions=PARTITIONS, topic_replication_factor=1,
            key_serializer="raw", value_serializer="raw", consumer_auto_offset_reset="earliest",
            broker_max_poll_records=250, broker_commit_interval=60.0,  # commits: when the test asks
        )
        self.calls: list[list[tuple[int, int]]] = []  # (partition, offset) of each call's records
        self.gate = asyncio.Event()  # a handler call waits for it
        self.gate.set()
        self.entered = asyncio.Event()
        self.returned: list[float] = []  # when each call returned (monotonic)
        channel = self.app.topic(self.topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                                 value_serializer="raw", partitions=PARTITIONS)
        batch_agent(self.app, channel, name=f"{self.run}-handler")(self.handle)

    async def handle(self, events: list[RecordEvent]) -> None:
        self.calls.append([(e.message.partition, e.message.offset) for e in events])
        self.entered.set()
        await self.gate.wait()
        self.returned.append(time.monotonic())

    def handled(self) -> int:
        return sum(len(call) for call in self.calls)

    async def publish(self, n: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=BROKER, linger_ms=5)
        await producer.start()
        try:
            for i in range(n):
                for p in range(PARTITIONS):
                    await producer.send(self.topic, b'{"i":%d}' % i, key=b"k%d" % i, partition=p)
            await producer.flush()
        finally:
            await producer.stop()

    async def committed(self) -> dict[int, int]:
        """The group's committed offset per partition of the input topic, as the broker has it."""
        admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self.run)
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items()
                if tp.topic == self.topic and meta.offset >= 0}

    async def wait(self, condition, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; calls so far: {[len(c) for c in self.calls]}"
            await asyncio.sleep(0.05)


@pytest.fixture
async def harness(tmp_path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(h.topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    h.app.finalize()
    yield h
    h.gate.set()
    await h.app.stop()


async def test_a_handler_gets_whole_fetches_in_offset_order_per_partition(harness: Harness):
    await harness.publish(PER_PARTITION)  # all of it waits in Kafka before the consumer starts
    await harness.app.start()
    await harness.wait(lambda: harness.handled() >= PARTITIONS * PER_PARTITION)

    per_partition: dict[int, list[int]] = {}
    for call in harness.calls:
        seen: dict[int, list[int]] = {}
        for partition, offset in call:
            seen.setdefault(partition, []).append(offset)
        for partition, offsets in seen.items():
            # Within a call a partition's records are one run of consecutive offsets...
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), (partition, offsets[:20])
            # ... that starts where the previous call's run of that partition ended.
            before = per_partition.setdefault(partition, [])
            assert offsets[0] == (before[-1] + 1 if before else 0), (partition, before[-1:], offsets[0])
            before.extend(offsets)
    assert per_partition == {p: list(range(PER_PARTITION)) for p in range(PARTITIONS)}
    # Whole fetches, not records one by one: a few calls, each with many records.
    assert len(harness.calls) <= PARTITIONS * PER_PARTITION // 50, [len(c) for c in harness.calls]
    assert max(len(c) for c in harness.calls) >= 100
    # Once every call returned, a commit is one past the last record of each partition.
    await harness.wait(lambda: len(harness.returned) == len(harness.calls))
    await harness.app.consumer.commit()
    assert await harness.committed() == {p: PER_PARTITION for p in range(PARTITIONS)}


async def test_offsets_are_committed_only_after_the_handler_returned(harness: Harness):
    await harness.publish(PER_PARTITION)
    harness.gate.clear()  # the first call is held
    await harness.app.start()
    await asyncio.wait_for(harness.entered.wait(), 20)
    first = harness.calls[0]
    ends = {}
    for partition, offset in first:
        ends[partition] = max(ends.get(partition, 0), offset + 1)

    # While the handler runs, a commit (Faust's, or the one before a revocation) commits none of it.
    # (The revocation is a rebalance's first half: nothing is assigned after it, so the test ends.)
    await harness.app.consumer.commit()
    assert await harness.committed() == {}
    revoking = asyncio.ensure_future(harness.app.consumer.on_partitions_revoked(set()))
    await asyncio.sleep(0.5)
    assert not revoking.done(), "partitions were given up while a batch was in flight"
    assert await harness.committed() == {}
    assert len(harness.calls) == 1  # the next batch waits for this one

    harness.gate.set()
    await asyncio.wait_for(revoking, 10)
    # The revocation waited for the batch to return, then committed exactly what it handled.
    assert harness.returned, "the revocation finished before the handler returned"
    assert await harness.committed() == ends


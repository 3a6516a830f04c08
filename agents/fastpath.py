"""Batch delivery: the records of a fetch go straight from Faust's consumer to sendtrack's handlers.

Faust delivers records one at a time: consumer → conductor → channel queue → stream → agent, with
an acknowledgement per record. On two cores that machinery tops out near 4,000 records/s before the
engine does any work (docs/performance.md). sendtrack's handlers process batches anyway, so
`BatchConsumer` hands them every fetched record of their topics at once:

* Faust still owns everything around the records: the consumer group and its co-partitioned
  assignment, pausing partitions while tables recover from their changelogs, the tables
  (RocksDB + changelog), and committing offsets (after flushing the producer, so changelog writes
  are in Kafka before the inputs that made them are committed).
* A handler is called with all records of one fetch for its topics, in offset order per partition.
  When it returns, its outputs were acknowledged by the broker and its table writes applied; only
  then do those offsets become committable. A crash before that re-reads the batch.
* The offsets to commit are "one past the last record handled" per partition. Nothing is skipped:
  records are handled strictly in the order fetched, and a fetch interrupted by a rebalance is
  dropped whole — Faust seeks every partition back to its committed offset once the rebalance and
  table recovery finish. (Faust's own bookkeeping of acknowledged offsets has known gaps: a record
  dropped after a restart, and commits advancing one offset at a time after a rebalance;
  docs/reliability-tests.md.)
* A partition is revoked only after the batch in flight finished and its offsets were committed.

Each handler also has a Faust agent on its topics, so the app subscribes to them and Faust assigns
their partitions together with the tables'; the agent's stream receives a record only if one ever
reaches Faust's per-record path, and it then hands that record to the same handler.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Awaitable, Callable, Iterable, Optional

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from sendtrack.metrics import metrics

log = logging.getLogger(__name__)


class RecordMessage:
    """The parts of a Kafka record the engine and Faust tables read (`event.message.*`)."""

    __slots__ = ("topic", "partition", "offset", "tp", "key", "value", "timestamp")

    def __init__(self, tp: TP, offset: int, key: Optional[bytes], value: Optional[bytes], timestamp: int) -> None:
        self.topic = tp.topic
        self.partition = tp.partition
        self.tp = tp
        self.offset = offset
        self.key = key
        self.value = value
        self.timestamp = timestamp


class RecordEvent:
    """A record as a handler sees it; it can be made Faust's current event, which tables read to
    pick the partition of a write (its store and its changelog partition)."""

    __slots__ = ("message", "key", "value", "__weakref__")

    def __init__(self, message: Any, key: Optional[bytes], value: Optional[bytes]) -> None:
        self.message = message
        self.key = key
        self.value = value


BatchHandler = Callable[[list[RecordEvent]], Awaitable[None]]
_handlers: dict[str, BatchHandler] = {}


def register(topics: Iterable[str], handler: BatchHandler) -> None:
    for topic in topics:
        if topic in _handlers:
            raise ValueError(f"topic {topic!r} already has a batch handler")
        _handlers[topic] = handler


def batch_agent(app: Any, topic: Any, name: str) -> Callable[[BatchHandler], BatchHandler]:
    """Register `handler` for `topic`'s topics, with a Faust agent that subscribes to them."""

    def decorate(handler: BatchHandler) -> BatchHandler:
        register(list(topic.topics), handler)

        async def per_record(stream: Any) -> None:
            # Only reached if a record is delivered the per-record way: apply it the same way.
            async for event in stream.events():
                await handler([event])

        per_record.__name__ = per_record.__qualname__ = name.replace("-", "_")
        app.agent(topic, name=name)(per_record)
        return handler

    return decorate


FETCH_MAX_WAIT_MS = 100
# Per fetch response (aiokafka's default is 50 MB). The fetcher buffers what a response brought for
# every partition until the engine takes it: 8 MiB is still ten full engine batches.
FETCH_MAX_BYTES = 8 * 1024 * 1024


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust fixes the broker's long-poll at 1.5 s. A partition drained by the engine is fetched
        # again only after the fetch in flight returns, which, when the other partitions it names
        # are idle, is that long: records then waited up to 1.5 s at every switch of busy partitions.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        consumer._fetch_max_bytes = FETCH_MAX_BYTES
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering the records of registered topics in batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handled: dict[TP, int] = {}  # next offset to commit, per partition handled in batches
        self._batch_lock = asyncio.Lock()

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs under Faust
        stopping = self._stopped.is_set
        fetcher_stopping = fetcher._stopped.is_set
        try:
            while not (stopping() or fetcher_stopping()):
                records, active = await self._wait_next_records(timeout=1.0)
                await self.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    # Fetched while a rebalance began: read again from the committed offsets.
                    await self.perform_seek()
                    continue
                await self._deliver(records, active)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception:
            # A handler turns every bad record into a dead letter, so this is a fault of the worker
            # itself. Without a fetcher it would stay up doing nothing: exit instead, so the
            # supervisor restarts it (nothing handled since the last commit is lost: it is re-read).
            log.critical("the batch consumer failed; exiting", exc_info=True)
            os._exit(70)

    async def _deliver(self, records: dict, active: Optional[set]) -> None:
        generation = self.app.consumer_generation_id
        batches: dict[BatchHandler, list[RecordEvent]] = {}
        ends: dict[TP, int] = {}
        rest: list[tuple[TP, Any]] = []
        for tp, recs in records.items():
            if not recs or (active is not None and tp not in active):
                continue
            handler = _handlers.get(tp.topic)
            if handler is None:
                rest.extend((tp, r) for r in recs)
                continue
            batch = batches.setdefault(handler, [])
            for r in recs:
                batch.append(RecordEvent(RecordMessage(tp, r.offset, r.key, r.value, r.timestamp), r.key, r.value))
            ends[tp] = recs[-1].offset + 1
        if batches:
            # Shielded: a fetcher cancelled by a rebalance still finishes the batch (its outputs,
            # then its table writes) before the partitions can be revoked.
            await asyncio.shield(self._handle(batches, ends, generation))
        for tp, record in rest:  # topics without a batch handler: Faust's per-record path
            if self.app.consumer_generation_id != generation or not self.flow_active:
                return
            await self.wait_first(self.callback(self._to_message(tp, record)), self.suspend_flow.wait())

    async def _handle(self, batches: dict, ends: dict[TP, int], generation: int) -> None:
        async with self._batch_lock:
            if self.app.consumer_generation_id != generation or not self.flow_active:
                return  # a rebalance began: the partitions are sought back to their commits
            started = time.perf_counter()
            for handler, events in batches.items():
                await handler(events)
            self._handled.update(ends)
            metrics.observe("engine_batch_seconds", time.perf_counter() - started)

    # Commits: the handled offsets join the ones Faust's per-record path acknowledged.

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterable[TP]:
        tps = set(self._acked) | set(self._handled)
        return (tp for tp in tps if topics is None or tp in topics or tp.topic in topics)

    def _new_offset(self, tp: TP) -> Optional[int]:
        handled = self._handled.get(tp)
        if handled is not None:
            return handled
        return super()._new_offset(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # Let the batch in flight finish, and commit what was handled, before giving partitions up.
        async with self._batch_lock:
            try:
                await asyncio.wait_for(self.commit(), timeout=5.0)
            except Exception as exc:  # the next owner re-reads from the last commit: nothing is lost
                log.warning("commit before revoking %d partitions failed: %r", len(revoked), exc)
            for tp in revoked:
                self._handled.pop(tp, None)
            await super().on_partitions_revoked(revoked)


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer

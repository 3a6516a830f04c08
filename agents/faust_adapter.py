"""The one door to Faust's and aiokafka's internals: batch delivery, the table write protocol, store access.

Faust's public API is not enough for two things sendtrack needs: handing the engine whole fetches
(Faust delivers records one at a time) and applying a batch's table writes in one produce round
(Faust sends one changelog record per `table[key] = value`, each with its own callback). Every
private Faust, aiokafka or mode name the project relies on is used here and nowhere else
(tests/unit/test_faust_contract.py checks each against the installed versions, and that no other
module touches one; docs/architecture.md, "The Faust boundary", says what each is for).

What the rest of sendtrack uses:

* `BatchApp`, `batch_agent`, `RecordEvent`: batch delivery (below).
* `register_codec(name, dumps, loads)`, `reset_changelog(table)`: table serialization.
* `produce(app, groups)`: send records as producer batches and wait for their acknowledgements.
* `write_partition(table, partition, items, changelog_offset)`: a batch's writes to one table
  partition's RocksDB, with the changelog offset they include.
* `table_db(table, partition)`, `open_db(table, partition)`, `offset_key(table)`: read a table
  partition's RocksDB directly (the sweep's scans).

Batch delivery. Faust delivers records one at a time: consumer → conductor → channel queue → stream →
agent, with an acknowledgement per record. On two cores that machinery tops out near 4,000 records/s
before the engine does any work (docs/performance.md). sendtrack's handlers process batches anyway,
so `BatchConsumer` hands them every fetched record of their topics at once:

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

import faust
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from faust.serializers import codecs
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from rocksdict import WriteBatch

from agents import store

from sendtrack.metrics import metrics

log = logging.getLogger(__name__)


class RecordMessage:
    """The parts of a Kafka record the engine reads (`event.message.*`)."""

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
    """A record as a handler sees it. The engine reads and writes its tables through its Outbox
    (agents/transaction.py), which takes the partition from the record: it is never made Faust's
    current event, which only Faust's own table API (`table[key]`) reads."""

    __slots__ = ("message", "key", "value")

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

    async def _drain_messages(self, fetcher: Any) -> None:
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
        recovery = self.app.tables.recovery
        restoring = recovery.active_tps if recovery.in_recovery else ()
        if not restoring and store.bulk_loads():
            # A recovery that ended before a partition reached its last record (a revoked
            # partition's bulk load ends in agents/store.py).
            store.end_all_bulk_loads()
        for tp, recs in records.items():
            if not recs or (active is not None and tp not in active):
                continue
            if tp in restoring:
                recs = restore_bulk(recovery, tp, recs)
                if not recs:
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


def restore_bulk(recovery: Any, tp: TP, recs: list) -> list:
    """Apply a fetch of one changelog partition's records to its table's RocksDB in one write batch,
    during recovery; returns the records left for Faust's own recovery path.

    Faust recovers a table one record at a time (consumer callback, an event, the changelog queue,
    a buffer of 1,000 events per table): about 10,000 changelog records/s on two cores, so 12 minutes
    per million messages. Here every record before the partition's last one (its highwater, read by
    Faust when recovery began) is written as it comes: the same puts and deletes Faust's
    `apply_changelog_batch` makes, with the persisted offset, in one RocksDB write batch, and the
    recovery's offset for the partition advances past them. The last record still takes Faust's path,
    so Faust sees the partition reach its highwater and ends recovery itself. Nothing else reaches
    Faust's path for the partition before it: its buffer never holds a record older than one written
    here."""
    highwater = recovery.active_highwaters.get(tp)
    if highwater is None:
        return recs
    seen = recovery.active_offsets.get(tp)
    bulk = [r for r in recs if r.offset < highwater and (seen is None or r.offset > seen)]
    table = recovery.tp_to_table[tp]
    if bulk:
        store.begin_bulk_load(table_db(table, tp.partition))
        write_partition(table, tp.partition, [(r.key, r.value) for r in bulk], bulk[-1].offset, wal=False)
        recovery.active_offsets[tp] = bulk[-1].offset
        # What Faust's own path would note: an event arrived for the partition, and its writes are
        # flushed. Without it Faust warns every 5 s that no event came and no buffer was flushed.
        now = time.monotonic()
        recovery._active_events_received_at[tp] = now
        recovery._last_flush_at = now
        metrics.inc("state_restored_records_total", len(bulk))
        _restore_progress(recovery, len(bulk))
    rest = [r for r in recs if r.offset >= highwater]
    if rest:  # the partition's last record: Faust's own path writes it, with the write-ahead log
        store.end_bulk_load(table_db(table, tp.partition))
    return rest


_progress: dict[str, Any] = {"recovery": None, "started": 0.0, "logged": 0.0, "records": 0}


def _restore_progress(recovery: Any, n: int) -> None:
    """Log the restore's progress every 10 s: a worker rebuilding millions of messages says so."""
    now = time.monotonic()
    if _progress["recovery"] != recovery._recovery_started_at:  # a new recovery (a rebalance restarts it)
        _progress.update(recovery=recovery._recovery_started_at, started=now, logged=now, records=0)
    _progress["records"] += n
    if now - _progress["logged"] >= 10:
        _progress["logged"] = now
        rate = _progress["records"] / max(now - _progress["started"], 1e-9)
        remaining = sum(max(hw - (recovery.active_offsets.get(tp) or 0), 0)
                        for tp, hw in recovery.active_highwaters.items() if hw is not None)
        log.info("restoring tables from their changelogs: %d records so far (%.0f/s), %d to go (about %.0f s)",
                 _progress["records"], rate, remaining, remaining / rate if rate else 0)


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A Faust app whose transport hands the batch handlers whole fetches (BatchConsumer)."""

    def _new_transport(self) -> BatchTransport:
        return BatchTransport(self.conf.broker_consumer, self)


# ---------------------------------------------------------------------------------------------
# Tables: serialization, and the write protocol's two halves (produce, store)


def register_codec(name: str, dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any]) -> None:
    """Register a Faust codec (a `value_serializer` name) that encodes with `dumps`, decodes with `loads`.

    Faust's codecs implement `_dumps`/`_loads`; the functions are bound as they are (no wrapper
    frame: tables decode every value they read through them)."""
    codec = type(f"{name.title()}Codec", (codecs.Codec,),
                 {"_dumps": staticmethod(dumps), "_loads": staticmethod(loads)})
    codecs.register(name, codec())


def reset_changelog(table: Any) -> Any:
    """Forget `table`'s changelog topic so it is built again, from the table's serializers as they
    are now: recovery decodes the changelog with the topic's serializers. Returns the new topic."""
    table._changelog_topic = None
    return table.changelog_topic


# How the broker (or the client) refuses a record for its size: retrying cannot help.
SIZE_REFUSALS = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)

Records = list[tuple[Optional[bytes], Optional[bytes]]]


async def produce(app: Any, groups: dict[tuple[str, int], Records]) -> dict[tuple[str, int], int]:
    """Send each (topic, partition)'s records, in order, as aiokafka producer batches through the
    app's producer (one produce round, no callback per record); returns the offset of the last
    record per (topic, partition).

    Every producer batch settles before the round is judged: a refusal is told apart from the
    broker being away, and nothing of a refused round is still in flight when it is isolated. On
    failure raises the first SIZE_REFUSALS error, else the first error."""
    producer = app.producer._ensure_producer()  # aiokafka's producer under Faust's
    sent: list[tuple[str, int, int, Any]] = []
    for (topic, partition), items in groups.items():
        batch, n = producer.create_batch(), 0
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:
                sent.append((topic, partition, n, await producer.send_batch(batch, topic, partition=partition)))
                batch, n = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)  # a first record always fits
            n += 1
        sent.append((topic, partition, n, await producer.send_batch(batch, topic, partition=partition)))
    results = await asyncio.gather(*(fut for *_, fut in sent), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise next((f for f in failures if isinstance(f, SIZE_REFUSALS)), failures[0])
    last: dict[tuple[str, int], int] = {}
    for (topic, partition, n, _), meta in zip(sent, results):
        end = meta.offset + n - 1
        if end > last.get((topic, partition), -1):
            last[(topic, partition)] = end
    return last


def table_db(table: Any, partition: int) -> Any:
    """The RocksDB (rocksdict `Rdict`, raw bytes) of one partition of a Faust table, opened if needed."""
    return table.data._db_for_partition(partition)


def open_db(table: Any, partition: int) -> Optional[Any]:
    """The RocksDB of one partition of a table if this worker has it open, else None: Faust keeps
    one per table partition, so a scan walks one partition in key order without the others."""
    return getattr(table.data, "_dbs", {}).get(partition)


def offset_key(table: Any) -> bytes:
    """The key under which Faust keeps, in each partition's RocksDB, the changelog offset the
    partition's data includes (where its recovery resumes). It is no table entry."""
    return table.data.offset_key


def write_partition(table: Any, partition: int, items: list[tuple[bytes, Optional[bytes]]],
                    changelog_offset: Optional[int], wal: bool = True) -> None:
    """Apply `items` (key, value; None deletes) to one table partition's RocksDB in one atomic write
    batch that also records `changelog_offset`, the offset of the last changelog record they
    include, as Faust's `set_persisted_offset` does: a recovery resumes after it. Without `wal`
    (a restore's bulk load, agents/store.py) the batch skips RocksDB's write-ahead log."""
    batch = WriteBatch(raw_mode=True)
    for k, v in items:
        if v is None:
            batch.delete(k)
        else:
            batch.put(k, v)
    if changelog_offset is not None:
        batch.put(table.data.offset_key, str(changelog_offset).encode())
    db = table.data._db_for_partition(partition)
    if wal:
        db.write(batch)
    else:
        db.write(batch, store.NO_WAL)

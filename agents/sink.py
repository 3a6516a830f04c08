"""The ClickHouse sink: status-changes and dead-letters in large batches, offsets committed after the insert."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import deque
from typing import Optional

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from mode import Service

from agents.app import app, dead_letters_topic, settings, status_changes_topic
from sendtrack.metrics import metrics
from sinks.clickhouse import ClickHouse, is_retriable
from sendtrack.settle import SINK_GROUP
from sinks.migrate import prepare
from sinks.writer import REJECTED_BY_CLICKHOUSE, Batch, Unwritable

log = logging.getLogger(__name__)

# An early batch (the sink has caught up) gathers at least this many times as long as an insert
# takes: the median of the last INSERTS_REMEMBERED inserts, so that one slow insert does not hold
# the next batch open for three times its duration (what records waited longest for at half load).
EARLY_BATCH_INSERT_FACTOR = 3
INSERTS_REMEMBERED = 5


class ClickHouseSink(Service):
    """Consumes its own group (not the Faust one), so a slow or unavailable ClickHouse holds only
    the sink's offsets: rows are delayed, never dropped, and the status engine keeps running."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ch: Optional[ClickHouse] = None
        self.status_topic = status_changes_topic.get_topic_name()
        self.dead_topic = dead_letters_topic.get_topic_name()
        self.ready = asyncio.Event()
        # Set after each insert: the deliverability alerts judge the rates again (agents/alerts.py).
        self.written = asyncio.Event()
        # Why the sink stopped for good (ClickHouse refused what it cannot set aside); None while it
        # runs. Its offsets stay where they were: nothing acknowledged is lost.
        self.failed: Optional[str] = None
        self._committed: dict[TopicPartition, int] = {}
        self._consumer: Optional[AIOKafkaConsumer] = None
        self._insert_seconds: deque[float] = deque(maxlen=INSERTS_REMEMBERED)  # the last inserts' durations

    def owns_first_partition(self) -> bool:
        """Whether this sink reads partition 0 of status-changes now (one worker of the app does:
        the one that publishes deliverability alerts, agents/alerts.py)."""
        consumer = self._consumer
        return consumer is not None and TopicPartition(self.status_topic, 0) in consumer.assignment()

    async def _open(self) -> None:
        """Connect and apply the migrations, retrying while ClickHouse is unavailable (a server that
        refuses connections, say): the engine runs meanwhile, and status changes wait in Kafka."""
        delay = 0.5
        while not self.should_stop:
            try:
                ch = await asyncio.to_thread(ClickHouse.connect, settings)
                await asyncio.to_thread(prepare, ch, settings, log.info)
            except Exception as exc:
                if not is_retriable(exc):
                    log.error("ClickHouse refused the connection or a migration: %r", exc)
                metrics.inc("clickhouse_connect_errors_total", 1, retriable=str(is_retriable(exc)).lower())
                metrics.set("sink_retrying", 1)
                log.warning("ClickHouse is not available (%s); retrying in %.1f s", exc, delay)
                await self.sleep(delay)
                delay = min(delay * 2, settings.sink_retry_max_seconds)
                continue
            metrics.set("sink_retrying", 0)
            self.ch = ch
            return

    @Service.task
    async def _run(self) -> None:
        await self._open()
        if self.should_stop:
            return
        consumer = AIOKafkaConsumer(
            self.status_topic, self.dead_topic,
            bootstrap_servers=settings.kafka_broker,
            group_id=SINK_GROUP.format(app_id=settings.app_id),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The sink stops polling while ClickHouse is down; it must not be thrown out of the group.
            max_poll_interval_ms=7 * 86_400_000,
            # What one fetch may bring (and the fetcher holds until the batch takes it): 4 MiB is
            # about 7,000 status changes, so a full batch is a few fetches.
            max_partition_fetch_bytes=1024 * 1024,
            fetch_max_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        self._consumer = consumer
        metrics.set("sink_failed", 0)
        self.ready.set()
        # One insert in flight while the next batch gathers: a record that arrives during an insert
        # waits for the batch time, not for the insert and then the batch time. Offsets are
        # committed in order, each after its own insert.
        writing: Optional[tuple[asyncio.Future, dict[TopicPartition, int]]] = None
        try:
            while not self.should_stop:
                batch, offsets = await self._collect(consumer)
                if writing is not None:
                    await self._finish(consumer, *writing)
                    writing = None
                if self.failed is not None:
                    return  # the batch just gathered is not written: its offsets stay uncommitted
                if batch.records:
                    writing = (asyncio.ensure_future(self._write(batch)), offsets)
            if writing is not None:
                await self._finish(consumer, *writing)
        finally:
            if writing is not None:
                writing[0].cancel()
            self._consumer = None
            await consumer.stop()

    async def _finish(self, consumer: AIOKafkaConsumer, write: asyncio.Future,
                      offsets: dict[TopicPartition, int]) -> None:
        if await write:
            await self._commit(consumer, offsets)
            self._report_lag(consumer, offsets)

    def insert_seconds(self) -> float:
        """How long an insert takes now: the median of the last few (0 before the first)."""
        return statistics.median(self._insert_seconds) if self._insert_seconds else 0.0

    async def _collect(self, consumer: AIOKafkaConsumer) -> tuple[Batch, dict[TopicPartition, int]]:
        """Gather records until the batch is full or its time is up: SENDTRACK_SINK_BATCH_SECONDS, or
        less once the sink has read everything its partitions hold (a record under a steady load then
        waits less). Such an early batch still gathers for SENDTRACK_SINK_CAUGHT_UP_SECONDS and for
        three times as long as an insert takes (the median of the last five), so inserting takes at
        most about a quarter of the time: while the engine drains a backlog the sink keeps reaching
        the end of what the engine has written, but its inserts are slow then, and its batches stay
        large (an insert's cost is mostly per insert)."""
        batch, offsets = Batch(), {}
        started = time.monotonic()
        deadline = started + settings.sink_batch_seconds
        early = min(deadline, started + max(settings.sink_caught_up_seconds,
                                            EARLY_BATCH_INSERT_FACTOR * self.insert_seconds()))
        ended = "stopping"
        while not self.should_stop:
            if batch.rows >= settings.sink_batch_rows:
                ended = "full"
                break
            now = time.monotonic()
            if now >= deadline:
                ended = "deadline"
                break
            if now >= early and batch.records:
                if await self._caught_up(consumer):
                    ended = "caught_up"
                    break
                until = min(deadline, now + 0.1)  # look again soon, new records or not
            else:
                until = early if now < early else deadline
            data = await consumer.getmany(timeout_ms=max(1, int((until - now) * 1000)),
                                          max_records=settings.sink_batch_rows - batch.rows)
            for tp, records in data.items():
                add = batch.add_status_change if tp.topic == self.status_topic else batch.add_dead_letter
                for r in records:
                    add(r.value or b"", r.topic, r.partition, r.offset)
                offsets[tp] = records[-1].offset + 1
        if batch.records:
            # How long a batch gathered, and why it stopped: a record waits up to that long here.
            metrics.observe("sink_batch_gather_seconds", time.monotonic() - started)
            metrics.inc("sink_batches_total", 1, ended=ended)
        return batch, offsets

    @staticmethod
    async def _caught_up(consumer: AIOKafkaConsumer) -> bool:
        """True when every partition's next record to read is past its end at the last fetch."""
        try:
            for tp in consumer.assignment():
                high = consumer.highwater(tp)  # None until a fetch answered for the partition
                # A position being looked up (a rebalance under way) is waited for only briefly.
                if high is None or await asyncio.wait_for(consumer.position(tp), 0.05) < high:
                    return False
        except (IllegalStateError, AssertionError, asyncio.TimeoutError):  # the assignment changed under it
            return False
        return True

    async def _write(self, batch: Batch) -> bool:
        """Insert the batch (rows ClickHouse refuses become dead letters, see Batch.write), retrying
        while ClickHouse is unavailable. False when the sink had to stop: offsets are then held."""
        delay = 0.2
        while True:
            try:
                started = time.perf_counter()
                written = await asyncio.to_thread(batch.write, self.ch)
                took = time.perf_counter() - started
                self._insert_seconds.append(took)
                metrics.observe("clickhouse_insert_seconds", took)
            except Exception as exc:
                if not is_retriable(exc):
                    # Not an outage, and nothing a dead letter can hold (Unwritable: a table missing,
                    # a permission), or a bug. Retrying cannot fix it; committing would lose rows.
                    metrics.inc("clickhouse_insert_errors_total", 1, retriable="false")
                    self._fail(str(exc) if isinstance(exc, Unwritable) else repr(exc))
                    return False
                metrics.inc("clickhouse_insert_errors_total", 1, retriable="true")
                metrics.set("sink_retrying", 1)
                log.warning("ClickHouse insert failed (%s); retrying in %.1f s, offsets held", exc, delay)
                await self.sleep(delay)
                if self.should_stop:
                    raise asyncio.CancelledError
                delay = min(delay * 2, settings.sink_retry_max_seconds)
                continue
            metrics.set("sink_retrying", 0)
            self.written.set()
            for table, rows in written.items():
                metrics.inc("clickhouse_inserts_total", batch.inserts[table], table=table)
                metrics.inc("clickhouse_rows_total", rows, table=table)
            if batch.rejected:
                metrics.inc("clickhouse_rejected_records_total", batch.rejected)
                log.warning("ClickHouse refused %d record(s), kept as dead letters (%s); first: %s",
                            batch.rejected, REJECTED_BY_CLICKHOUSE, batch.first_rejection)
            return True

    def _fail(self, reason: str) -> None:
        self.failed = reason
        metrics.set("sink_failed", 1)
        metrics.set("sink_retrying", 0)
        log.error("ClickHouse sink stopped, offsets held (restart the worker once the cause is fixed): %s",
                  reason)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions away: the new owner re-reads this batch, and the
            # views fold the duplicate rows. Nothing is lost.
            log.warning("sink commit failed after a successful insert (%r); rows will be re-read", exc)

    def _report_lag(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)
        lag = sum(max(0, (consumer.highwater(tp) or 0) - self._committed.get(tp, 0))
                  for tp in consumer.assignment())
        metrics.set("sink_lag_records", lag)


sink = ClickHouseSink()
if settings.sink_enabled:
    app.service(sink)

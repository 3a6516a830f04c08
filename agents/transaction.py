"""The per-batch state transaction of the engine (`Outbox`): everything one batch changes — records
to produce and table writes — staged with savepoints, read back by the batch itself, and committed
in the order that loses nothing (produce and wait for acknowledgements, then write each table
partition's RocksDB with the changelog offset it includes; only then are the inputs committable).

It reaches Kafka and the stores only through agents/faust_adapter.py (`produce`, `write_partition`,
`table_db`). docs/architecture.md, "The Faust boundary", compares it with quix-streams'
PartitionTransaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextvars import ContextVar
from typing import Any, Optional

import orjson
from aiokafka.errors import KafkaError, KafkaTimeoutError
from faust.exceptions import ProducerSendError
from faust.types import EventT

from agents.app import app, settings
from agents.faust_adapter import SIZE_REFUSALS, produce, table_db, write_partition
from sendtrack import batches
from sendtrack.batches import BATCH_KEY
from sendtrack.metrics import metrics
from sendtrack.partitions import Placement, partition as key_partition
from sendtrack.topics import RECORD_BUDGET_BYTES

log = logging.getLogger(__name__)

N = settings.partitions

# The partition Kafka's default partitioner gives a key (murmur2, as the Java client), remembered
# for the last keys: a message's callbacks and routed records come soon after its request. The
# engine places a batch's input keys together before applying it (`Placement.prime`), and an
# internal item staged for a key is placed when the batch commits, with the batch's other new keys.
placement = Placement(N)


def shown_key(key: str) -> str:
    """A table key as an error message shows it (a provider id's separator as ':', at most 200 chars)."""
    return repr(key.replace("\x1f", ":")[:200])


_DELETED = object()


class TooLarge(Exception):
    """What an input would produce or store does not fit in a Kafka record (RECORD_BUDGET_BYTES):
    the input is refused as too_large and nothing of it stays."""


class Refused(Exception):
    """The broker refused records of a batch for what they are (over a topic's max.message.bytes).
    Nothing of the batch was written to the tables."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class Outbox:
    """Everything one batch changes: records to produce and table writes.

    Commit order is what makes a crash lose nothing. First every record is produced and
    acknowledged by the broker (retried until it is, unless the broker refuses records for their
    size: see _apply_one_at_a_time): the outputs (status changes, dead letters,
    internal records) and the tables' changelog records for this batch's writes. Then the writes are
    applied to the tables' local RocksDB, each partition in one atomic write batch that also records
    the changelog offset it now includes (what Faust reads at start-up to know where recovery
    resumes). Only after that are the inputs' offsets committable (agents/faust_adapter.py). A crash
    before then leaves the inputs uncommitted and re-read; a crash between the changelog and the
    RocksDB write is repaired by Faust's recovery from the changelog. Reads within the batch see its
    own staged writes.

    The table writes are those Faust makes on `table[key] = value` (a changelog record to the
    partition of the current event, then the store), batched: one produce round for the whole
    batch instead of a buffered send and an acknowledgement callback per key.

    Every record is sized when it is staged: a record (key and value, a table value with its key,
    an internal item in its batch envelope) over RECORD_BUDGET_BYTES raises TooLarge, and the input
    that staged it is rolled back to its savepoint (_apply_one, for_each_item). So the broker never
    refuses one of the topics sendtrack creates.
    """

    def __init__(self) -> None:
        self.records: list[tuple[str, Optional[bytes], Optional[bytes], Optional[int]]] = []
        # Internal items (routed envelopes, provider-id operations), encoded, with their (topic,
        # partition, or the key whose partition it goes to): a batch sends one record per partition
        # holding all of them, not one per item.
        self.items: list[tuple[str, int | str, bytes]] = []
        # (table name, key) -> (table, encoded value or _DELETED, partition). Values are encoded when
        # staged, to be sized; a read of a staged value decodes them, unless it takes the value put
        # (_lent).
        self.writes: dict[tuple[str, str], tuple[Any, Any, int]] = {}
        # The value last put for a key, not handed out since: the next read of that key takes it
        # instead of decoding the staged bytes (a message's records often share a batch). Handed
        # out once, it is the caller's; a later read decodes again (see get).
        self._lent: dict[tuple[str, str], Any] = {}
        self._committed: dict[tuple[str, str], tuple[Any, Any, int]] = {}  # the writes of the last commit
        self._undo: list[tuple[tuple[str, str], Optional[tuple[Any, Any, int]]]] = []  # for rollback
        self.event: Optional[EventT] = None  # the event being applied: table writes belong to its partition
        self.produced = 0  # records acknowledged by the broker
        self.sent: dict[str, int] = {}  # the same, per topic
        # Seconds per phase of the commit: produce (serializing, then the broker's acknowledgements)
        # and tables (the RocksDB writes).
        self.timings: dict[str, float] = {}

    def add(self, topic: str, key: Optional[bytes], value: bytes, partition: Optional[int] = None) -> None:
        size = len(value) + (len(key) if key is not None else 0)
        if size > RECORD_BUDGET_BYTES:
            raise TooLarge(f"a record to {topic} would take {size} bytes, over {RECORD_BUDGET_BYTES}")
        self.records.append((topic, key, value, partition))

    def add_internal(self, topic: str, partition: int | str, item: dict[str, Any] | bytes) -> None:
        """Stage an item for `topic`'s `partition`, or for the partition of the key `partition`
        names (placed when the batch commits). An encoded item is taken as it is."""
        raw = item if isinstance(item, bytes) else orjson.dumps(item)
        if len(raw) + batches.ENVELOPE > RECORD_BUDGET_BYTES:
            raise TooLarge(f"an internal record to {topic} would take {len(raw) + batches.ENVELOPE} bytes, "
                           f"over {RECORD_BUDGET_BYTES}")
        self.items.append((topic, partition, raw))

    def savepoint(self) -> tuple[int, int, int]:
        return len(self.records), len(self.items), len(self._undo)

    def rollback(self, savepoint: tuple[int, int, int]) -> None:
        """Forget every record, item and table write staged since `savepoint`."""
        records, items, undo = savepoint
        del self.records[records:]
        del self.items[items:]
        self._lent.clear()  # the staged bytes stay what reads decode
        while len(self._undo) > undo:
            key, previous = self._undo.pop()
            if previous is None:
                del self.writes[key]
            else:
                self.writes[key] = previous

    def _pack_internal(self) -> None:
        """Turn the internal items into records `{"batch": [item, ...]}`, each under BATCH_RECORD_MAX
        of items unless it holds a single larger item."""
        placement.prime(partition for _, partition, _ in self.items if isinstance(partition, str))
        groups: dict[tuple[str, int], list[bytes]] = {}
        for topic, partition, raw in self.items:
            if isinstance(partition, str):
                partition = placement(partition)
            groups.setdefault((topic, partition), []).append(raw)
        for (topic, partition), items in groups.items():
            for value in batches.pack(items):
                self.add(topic, BATCH_KEY, value, partition)
        self.items.clear()

    def get(self, table: Any, key: str) -> Any:
        """The value of `key`: as staged in this batch, else as the table holds it. The caller may
        change what it gets: that stays out of the batch unless it puts the value back."""
        name = (table.name, key)
        staged = self.writes.get(name)
        if staged is not None:
            lent = self._lent.pop(name, _DELETED)
            if lent is not _DELETED:
                return lent  # the object put, unchanged since (put encoded it), handed out once
            return None if staged[1] is _DELETED else orjson.loads(staged[1])
        # The partition's RocksDB itself: one lookup where Faust's `table.get` takes two on a miss
        # (get, then contains), through five layers (the keys are raw, the values orjson).
        raw = table_db(table, self._partition()).get(key.encode())
        return None if raw is None else orjson.loads(raw)

    def put(self, table: Any, key: str, value: Any) -> None:
        """Stage `value` for `key`. The caller must not change `value` afterwards (get it again)."""
        raw = orjson.dumps(value)
        size = len(raw) + len(key.encode())
        if size > RECORD_BUDGET_BYTES:
            raise TooLarge(f"the {table.name} entry of {shown_key(key)} would take {size} bytes, "
                           f"over {RECORD_BUDGET_BYTES}")
        name = (table.name, key)
        self._stage(name, (table, raw, self._partition()))
        self._lent[name] = value

    def delete(self, table: Any, key: str) -> None:
        self._stage((table.name, key), (table, _DELETED, self._partition()))

    def _stage(self, key: tuple[str, str], write: tuple[Any, Any, int]) -> None:
        self._undo.append((key, self.writes.get(key)))
        self.writes[key] = write
        self._lent.pop(key, None)

    def touched(self, committed: bool = False) -> list[tuple[Any, str, int]]:
        """(table, key, partition) of every table write staged; with `committed`, of every write
        of a commit the broker refused (what it may have left in a changelog)."""
        writes = self._committed if committed else self.writes
        return [(table, key, partition) for (_, key), (table, _, partition) in writes.items()]

    def restage(self, table: Any, key: str, partition: int) -> None:
        """Stage `key` again with the value its table holds now (a deletion when none)."""
        raw = table_db(table, partition).get(key.encode())
        self.writes[(table.name, key)] = (table, _DELETED if raw is None else raw, partition)
        self._lent.pop((table.name, key), None)

    def partition(self) -> int:
        """The partition of the record being applied: it owns the record's message (or provider id)."""
        return self._partition()

    def _partition(self) -> int:
        if self.event is None:
            raise RuntimeError("a table write outside of a record's context has no partition")
        return self.event.message.partition

    def staged(self, table: Any, key: str) -> bool:
        return (table.name, key) in self.writes

    async def commit(self, refusable: bool = False) -> None:
        """Produce, then write the tables (see the class docstring). Shielded: a batch cancelled
        mid-commit (shutdown, rebalance) still finishes producing before it writes its tables.

        With `refusable`, records the broker refuses for their size raise Refused before any
        table is written (apply_batch then isolates the inputs); without, they are retried."""
        await asyncio.shield(self._commit(refusable))

    async def _commit(self, refusable: bool) -> None:
        started = time.perf_counter()
        self._pack_internal()
        # The changelog records of this batch's writes, in write order per partition.
        stores: dict[tuple[Any, int], list[tuple[bytes, Optional[bytes]]]] = {}
        self._committed, self.writes = self.writes, {}
        for (_, key), (table, value, partition) in self._committed.items():
            k = key.encode()
            v = None if value is _DELETED else value
            stores.setdefault((table, partition), []).append((k, v))
            self.records.append((_changelog(table), k, v, partition))
        self._undo.clear()
        self._lent.clear()
        last = await self._produce(refusable)
        self._committed = {}  # acknowledged: only a refused commit needs them (touched)
        produced = time.perf_counter()
        self.timings["produce"] = produced - started
        for (table, partition), items in stores.items():
            write_partition(table, partition, items, last.get((_changelog(table), partition)))
        self.timings["tables"] = time.perf_counter() - produced

    async def _produce(self, refusable: bool) -> dict[tuple[str, int], int]:
        """Produce every record, one producer batch per (topic, partition); returns the offset of
        the last record per (topic, partition).

        Only a refusal of records for their size (SIZE_REFUSALS), with `refusable`, ends the retries. Any other
        error is retried, including the ones aiokafka marks not retriable: a broker that is away
        fails the batches that waited past the request timeout with KafkaTimeoutError (retriable =
        False), a stopping producer with ProducerClosed, and neither says anything about the records."""
        delay = 0.2
        while True:
            try:
                return await self._produce_once()
            except SIZE_REFUSALS as exc:
                if refusable:
                    raise Refused(exc) from exc
                # Only records sized by construction come here (dead letters, outputs of the
                # webhook adapter): a topic's max.message.bytes is below RECORD_MAX_BYTES.
                log.error("the broker refused %d records for their size (%r); retrying in %.1f s",
                          len(self.records), exc, delay)
            except (KafkaError, ProducerSendError, OSError) as exc:
                # The broker is away: retry the whole batch (duplicates are folded downstream). An
                # error aiokafka marks not retriable that is no refusal of the records (a topic
                # deleted, an authorization lost) is retried too, loudly: nothing is dropped.
                level = logging.WARNING if getattr(exc, "retriable", True) or isinstance(
                    exc, KafkaTimeoutError) else logging.ERROR
                log.log(level, "producing %d records failed (%r); retrying in %.1f s", len(self.records), exc, delay)
            metrics.inc("produce_retries_total", 1)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _produce_once(self) -> dict[tuple[str, int], int]:
        if not self.records:
            return {}
        groups: dict[tuple[str, int], list[tuple[Optional[bytes], Optional[bytes]]]] = {}
        for topic, key, value, partition in self.records:
            if partition is None:  # keyed by message id, as Kafka's default partitioner would place it
                partition = _key_partition(key)
            groups.setdefault((topic, partition), []).append((key, value))
        last = await produce(app, groups)
        self.produced += len(self.records)
        sent = self.sent
        for (topic, _), items in groups.items():
            sent[topic] = sent.get(topic, 0) + len(items)
        self.records = []
        return last


_changelogs: dict[str, str] = {}


def _changelog(table: Any) -> str:
    name = _changelogs.get(table.name)
    if name is None:
        name = _changelogs[table.name] = table.changelog_topic.get_topic_name()
    return name


def _key_partition(key: Optional[bytes]) -> int:
    if key is None:
        return random.randrange(N)
    return key_partition(key, N)


# Each batch gets its own outbox (a context variable: batches of different tasks never share one).
_outbox: ContextVar[Outbox] = ContextVar("sendtrack_outbox")


def outbox() -> Outbox:
    return _outbox.get()


def new_outbox() -> Outbox:
    box = Outbox()
    _outbox.set(box)
    return box

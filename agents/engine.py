"""The status engine: joins requests and callbacks per message id in Faust tables (CONTRACT §2)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import random
import time
from contextvars import ContextVar
from typing import Any, Callable, Optional

import orjson
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.partitioner import murmur2
from faust.exceptions import ProducerSendError
from faust.types import EventT

from agents.faust_adapter import (SIZE_REFUSALS, batch_agent, offset_key, open_db, produce, table_db, use_event,
                                  write_partition)
from agents.app import (
    app,
    by_provider_id_topic,
    callbacks_topic,
    dead_letters_topic,
    held_index,
    messages_table,
    messenger_recipients,
    provider_held_table,
    provider_ids_table,
    routed_topic,
    send_requests_topic,
    settings,
    status_changes_topic,
)
from schemas.models import Callback, DeadLetter, Invalid, SendRequest
from schemas.validate import ErrorType, TimeWindow, judged_at, parse_callback, parse_send_request
from sendtrack import status
from sendtrack.metrics import metrics
from sendtrack.topics import RECORD_BUDGET_BYTES

log = logging.getLogger(__name__)

# A batch that takes this long is logged with the time each of its phases took.
SLOW_BATCH_SECONDS = 0.5

N = settings.partitions
REQUESTS = send_requests_topic.get_topic_name()
CALLBACKS = callbacks_topic.get_topic_name()
ROUTED = routed_topic.get_topic_name()
BY_PID = by_provider_id_topic.get_topic_name()
DEAD_LETTERS = dead_letters_topic.get_topic_name()
STATUS_CHANGES = status_changes_topic.get_topic_name()
ORPHAN_TTL_MS = settings.orphan_ttl_seconds * 1000
TIME_WINDOW = TimeWindow(max_age_ms=int(settings.time_max_age_days * 86_400_000),
                         max_ahead_ms=int(settings.time_max_ahead_seconds * 1000))
RETENTION_MS = int(settings.state_retention_days * 86_400_000)
# The sweep scans each partition's tables for stale state, SWEEP_BATCH keys per table at a time,
# SWEEP_TICKS times per SENDTRACK_SWEEP_INTERVAL_SECONDS: 20,000 keys per interval. The ticks go to
# one partition at a time, spread evenly over the interval: a tick is a few milliseconds of work
# in one engine batch, where a tick to every partition at once held a batch for over a second.
SWEEP_BATCH = 5_000
SWEEP_TICKS = 4
MAX_WATCHED = 256  # Messenger messages tracked per recipient for delivery/read watermarks
TICK_KEY = b"\x00tick"
BATCH_KEY = b"\x00batch"  # key of an internal record carrying a batch of items for one partition
BATCH_RECORD_MAX = 512 * 1024  # bytes of items per internal record; a larger item travels alone
_BATCH_ENVELOPE = len(BATCH_KEY) + len(b'{"batch":[]}')


def now_ms() -> int:
    return int(time.time() * 1000)


def partition_for(key: str) -> int:
    """The partition Kafka's default partitioner gives this key (murmur2, as the Java client)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % N


def provider_key(provider: str, provider_message_id: str) -> str:
    return f"{provider}\x1f{provider_message_id}"


def recipient_key(psid: str) -> str:
    return f"messenger-recipient\x1f{psid}"


def send_by_provider_id(key: str, doc: dict[str, Any]) -> None:
    """Send to the partition of the provider-id side that owns `key`."""
    outbox().add_internal(BY_PID, partition_for(key), dict(doc, k=key))


# ---------------------------------------------------------------------------------------------
# Output


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
        # partition): a batch sends one record per partition holding all of them, not one per item.
        self.items: list[tuple[str, int, bytes]] = []
        # (table name, key) -> (table, encoded value or _DELETED, partition). Values are encoded when
        # staged, to be sized; a read of a staged value decodes a copy of it.
        self.writes: dict[tuple[str, str], tuple[Any, Any, int]] = {}
        self._undo: list[tuple[tuple[str, str], Optional[tuple[Any, Any, int]]]] = []  # for rollback
        self.event: Optional[EventT] = None  # the event being applied: table writes belong to its partition
        self.produced = 0  # records acknowledged by the broker
        # Seconds per phase of the commit: produce (serializing, then the broker's acknowledgements)
        # and tables (the RocksDB writes).
        self.timings: dict[str, float] = {}

    def add(self, topic: str, key: Optional[bytes], value: bytes, partition: Optional[int] = None) -> None:
        size = len(value) + (len(key) if key is not None else 0)
        if size > RECORD_BUDGET_BYTES:
            raise TooLarge(f"a record to {topic} would take {size} bytes, over {RECORD_BUDGET_BYTES}")
        self.records.append((topic, key, value, partition))

    def add_internal(self, topic: str, partition: int, item: dict[str, Any] | bytes) -> None:
        """Stage an item for `topic`'s `partition` (an encoded item is taken as it is)."""
        raw = item if isinstance(item, bytes) else orjson.dumps(item)
        if len(raw) + _BATCH_ENVELOPE > RECORD_BUDGET_BYTES:
            raise TooLarge(f"an internal record to {topic} would take {len(raw) + _BATCH_ENVELOPE} bytes, "
                           f"over {RECORD_BUDGET_BYTES}")
        self.items.append((topic, partition, raw))

    def savepoint(self) -> tuple[int, int, int]:
        return len(self.records), len(self.items), len(self._undo)

    def rollback(self, savepoint: tuple[int, int, int]) -> None:
        """Forget every record, item and table write staged since `savepoint`."""
        records, items, undo = savepoint
        del self.records[records:]
        del self.items[items:]
        while len(self._undo) > undo:
            key, previous = self._undo.pop()
            if previous is None:
                del self.writes[key]
            else:
                self.writes[key] = previous

    def _pack_internal(self) -> None:
        """Turn the internal items into records `{"batch": [item, ...]}`, each under BATCH_RECORD_MAX
        of items unless it holds a single larger item."""
        groups: dict[tuple[str, int], list[bytes]] = {}
        for topic, partition, raw in self.items:
            groups.setdefault((topic, partition), []).append(raw)
        for (topic, partition), items in groups.items():
            chunk: list[bytes] = []
            size = 0
            for item in items:
                if chunk and size + len(item) > BATCH_RECORD_MAX:
                    self.add(topic, BATCH_KEY, b'{"batch":[' + b",".join(chunk) + b"]}", partition)
                    chunk, size = [], 0
                chunk.append(item)
                size += len(item) + 1
            self.add(topic, BATCH_KEY, b'{"batch":[' + b",".join(chunk) + b"]}", partition)
        self.items.clear()

    def get(self, table: Any, key: str) -> Any:
        staged = self.writes.get((table.name, key))
        if staged is not None:
            # A copy: what an input changes in it stays out of the batch unless the input puts it.
            return None if staged[1] is _DELETED else orjson.loads(staged[1])
        return table.get(key)

    def put(self, table: Any, key: str, value: Any) -> None:
        raw = orjson.dumps(value)
        size = len(raw) + len(key.encode())
        if size > RECORD_BUDGET_BYTES:
            raise TooLarge(f"the {table.name} entry of {_shown(key)} would take {size} bytes, "
                           f"over {RECORD_BUDGET_BYTES}")
        self._stage((table.name, key), (table, raw, self._partition()))

    def delete(self, table: Any, key: str) -> None:
        self._stage((table.name, key), (table, _DELETED, self._partition()))

    def _stage(self, key: tuple[str, str], write: tuple[Any, Any, int]) -> None:
        self._undo.append((key, self.writes.get(key)))
        self.writes[key] = write

    def touched(self) -> list[tuple[Any, str, int]]:
        """(table, key, partition) of every table write staged."""
        return [(table, key, partition) for (_, key), (table, _, partition) in self.writes.items()]

    def restage(self, table: Any, key: str, partition: int) -> None:
        """Stage `key` again with the value its table holds now (a deletion when none)."""
        raw = table_db(table, partition).get(key.encode())
        self.writes[(table.name, key)] = (table, _DELETED if raw is None else raw, partition)

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
        for (_, key), (table, value, partition) in self.writes.items():
            k = key.encode()
            v = None if value is _DELETED else value
            stores.setdefault((table, partition), []).append((k, v))
            self.records.append((_changelog(table), k, v, partition))
        self.writes.clear()
        self._undo.clear()
        last = await self._produce(refusable)
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
    return (murmur2(key) & 0x7FFFFFFF) % N


# Each batch gets its own outbox (a context variable: batches of different tasks never share one).
_outbox: ContextVar[Outbox] = ContextVar("sendtrack_outbox")


def outbox() -> Outbox:
    return _outbox.get()


def new_outbox() -> Outbox:
    box = Outbox()
    _outbox.set(box)
    return box


def emit_changes(changes: list) -> None:
    box = outbox()
    for change in changes:
        box.add(STATUS_CHANGES, change.message_id.encode(), orjson.dumps(change))
    metrics.inc("status_changes_total", len(changes))


DEAD_LETTER_PAYLOAD_MAX = 512 * 1024  # original bytes kept per dead letter (fits a 1 MB record)
DEAD_LETTER_ERROR_MAX = 2000
DEAD_LETTER_KEY_MAX = 64 * 1024
DEAD_LETTER_RECORD_MAX = 900_000  # under Kafka's default 1 MB record limit
# A dead letter always fits its record (with its key): it can never be refused itself.
assert DEAD_LETTER_RECORD_MAX + DEAD_LETTER_KEY_MAX <= RECORD_BUDGET_BYTES


def emit_dead_letter(origin: tuple[str, int, int], key: Optional[bytes], payload: bytes,
                     invalid: Invalid) -> None:
    """Send a refused record to dead-letters with its original bytes and position.

    A payload longer than DEAD_LETTER_PAYLOAD_MAX keeps its first bytes and says so in the error:
    the record is still accounted for, and it stays at its topic/partition/offset in Kafka."""
    error = invalid.error[:DEAD_LETTER_ERROR_MAX]
    if len(payload) > DEAD_LETTER_PAYLOAD_MAX:
        error += f" (payload truncated to its first {DEAD_LETTER_PAYLOAD_MAX} of {len(payload)} bytes)"
        payload = payload[:DEAD_LETTER_PAYLOAD_MAX]
    if key is not None and len(key) > DEAD_LETTER_KEY_MAX:
        error += f" (key truncated to its first {DEAD_LETTER_KEY_MAX} of {len(key)} bytes)"
        key = key[:DEAD_LETTER_KEY_MAX]
    try:
        text, encoding = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(payload).decode(), "base64"
    try:
        key_text = key.decode("utf-8") if key is not None else None
    except UnicodeDecodeError:
        key_text = base64.b64encode(key).decode()
    letter = DeadLetter(
        source_topic=origin[0], partition=origin[1], offset=origin[2], key=key_text,
        payload=text, payload_encoding=encoding, error_type=str(invalid.error_type),
        error=error, failed_at=now_ms(),
    )
    value = orjson.dumps(letter)
    while len(value) > DEAD_LETTER_RECORD_MAX:
        # JSON escaping can make a payload several times longer: keep cutting until it fits.
        letter.payload = letter.payload[: len(letter.payload) // 2]
        letter.error = error + f" (payload truncated to fit a {DEAD_LETTER_RECORD_MAX}-byte record)"
        value = orjson.dumps(letter)
    outbox().add(DEAD_LETTERS, key, value)
    metrics.inc("dead_letters_total", 1, error_type=str(invalid.error_type))


def route(message_id: str, envelope: dict[str, Any]) -> None:
    """Send an envelope to the partition that owns `message_id` (through Kafka, never a lookup)."""
    outbox().add_internal(ROUTED, partition_for(message_id), envelope)


def route_request(message_id: str, origin: tuple[str, int, int], payload: bytes) -> None:
    """Send a request to the partition that owns it as the bytes it was published as: they parsed
    as one JSON object, so they are valid JSON inside the envelope. Re-encoded it could be several
    times longer (1e15 is written 1000000000000000.0) and outgrow the internal topic's records."""
    item = b'{"kind":"request","origin":' + orjson.dumps(origin) + b',"raw":' + payload + b"}"
    outbox().add_internal(ROUTED, partition_for(message_id), item)


# ---------------------------------------------------------------------------------------------
# The message-keyed side: requests, callbacks, routed envelopes


def _origin(event: EventT) -> tuple[str, int, int]:
    m = event.message
    return (m.topic, m.partition, m.offset)


def _state_of(message_id: str) -> dict[str, Any]:
    return outbox().get(messages_table, message_id) or status.new_state()


def _reread(state: dict[str, Any], position: tuple[str, int, int]) -> bool:
    """True when the record at `position` may be a re-read after a crash: some record of this message
    at or after it on the same topic was applied before.

    Only a hint, used to produce an applied record's changes again (same change_id). Whether a record
    is applied is decided by its identity (the event id, the request's content), never by its offset:
    Faust can hand the engine a later record without an earlier one (the earlier one is then re-read
    after a restart), so "below the highest applied offset" does not mean "applied".
    """
    seen = state.get("off", {}).get(position[0])
    return seen is not None and position[2] <= seen


def _save(message_id: str, state: dict[str, Any], position: tuple[str, int, int], now: int) -> None:
    # Only forward: a re-read of an earlier record must not hide that later ones were applied.
    seen = state.setdefault("off", {})
    seen[position[0]] = max(seen.get(position[0], -1), position[2])
    state["t"] = now
    outbox().put(messages_table, message_id, state)


def _after_apply(message_id: str, state: dict[str, Any], outcome: status.Outcome, origin: tuple[str, int, int],
                 position: tuple[str, int, int], key: Optional[bytes], payload: bytes, now: int) -> None:
    if outcome.invalid is not None:
        emit_dead_letter(origin, key, payload, outcome.invalid)
    for entry, invalid in outcome.rejected:
        emit_dead_letter(tuple(entry["origin"]), key, orjson.dumps(entry["cb"]), invalid)
    emit_changes(outcome.changes)
    # The held index lists messages with held callbacks, so the orphan sweep never walks all state.
    if state["held"] and not state.get("hi"):
        outbox().put(held_index, message_id, now)
        state["hi"] = True
    elif not state["held"] and state.pop("hi", False):
        outbox().delete(held_index, message_id)
    _save(message_id, state, position, now)


def handle_request(req: SendRequest, origin: tuple[str, int, int], position: tuple[str, int, int],
                   key: Optional[bytes], payload: bytes, now: int) -> None:
    state = _state_of(req.message_id)
    outcome = status.apply_request(state, req, now)
    if outcome.duplicate:
        if _reread(state, position):  # its changes may not have reached the topic before a crash
            emit_changes(status.replay_changes(state, status.REQUEST_SOURCE, now))
        _save(req.message_id, state, position, now)
        return
    if req.action == "messenger" and req.recipient and outcome.changes:
        # Messenger receipts are watermarks per recipient: register the message in that index.
        send_by_provider_id(recipient_key(req.recipient), {
            "op": "watch", "message_id": req.message_id, "requested_at": req.requested_at})
    _after_apply(req.message_id, state, outcome, origin, position, key, payload, now)


def handle_callback(cb: Callback, origin: tuple[str, int, int], position: tuple[str, int, int],
                    key: Optional[bytes], payload: bytes, now: int) -> None:
    message_id = cb.message_id
    assert message_id is not None
    state = _state_of(message_id)
    outcome = status.apply_callback(state, cb, now, origin=list(origin))
    if outcome.duplicate:
        if _reread(state, position):
            emit_changes(status.replay_changes(state, cb.event_id, now))
        _save(message_id, state, position, now)
        return
    if cb.provider and cb.provider_message_id:
        # A callback with both ids registers the mapping, once per message and provider id.
        pkey = provider_key(cb.provider, cb.provider_message_id)
        registered = state.setdefault("pm", [])
        if pkey not in registered:
            if len(registered) < 8:  # a message has one or two provider ids; past that, just send
                registered.append(pkey)
            send_by_provider_id(pkey, {"op": "map", "message_id": message_id})
    _after_apply(message_id, state, outcome, origin, position, key, payload, now)


def _misrouted(message_id: str, event: EventT) -> bool:
    return partition_for(message_id) != event.message.partition


def record_time_ms(event: EventT) -> Optional[int]:
    """The Kafka timestamp of the event's record, in milliseconds (agents/faust_adapter.py keeps Kafka's
    milliseconds; Faust's per-record path gives seconds): what validate.judged_at takes."""
    ts = getattr(event.message, "timestamp", None)
    if ts is None:
        return None
    return int(ts) if ts > 100_000_000_000 else int(ts * 1000)


def process(event: EventT, now: int) -> None:
    """Apply one record of send-requests, provider-callbacks or the routed topic."""
    msg = event.message
    origin = position = (msg.topic, msg.partition, msg.offset)
    payload: bytes = event.value if event.value is not None else b""
    key = event.key
    if msg.topic == ROUTED:
        envelope = orjson.loads(payload)
        if "batch" in envelope:
            for_each_item(event, envelope["batch"], lambda item: apply_routed(item, position, now))
        else:  # one envelope per record (ticks, and records written before batching)
            apply_routed(envelope, position, now)
        return
    metrics.inc("records_in_total", 1, topic=msg.topic)
    # Event times must be plausible when the input is first validated, here, and only here: what is
    # rebuilt from the state or routed between partitions later is not judged again. They are judged
    # at the record's Kafka timestamp (validate.judged_at), which a re-read after a crash, hours
    # later, finds unchanged: the verdict is the same.
    at = judged_at(record_time_ms(event), now)
    if msg.topic == REQUESTS:
        req = parse_send_request(payload, settings.max_payload_bytes, now_ms=at, window=TIME_WINDOW)
        if isinstance(req, Invalid):
            emit_dead_letter(origin, key, payload, req)
        elif _misrouted(req.message_id, event):
            route_request(req.message_id, origin, payload)
        else:
            handle_request(req, origin, position, key, payload, now)
        return
    cb = parse_callback(payload, settings.max_payload_bytes, now_ms=at, window=TIME_WINDOW)
    if isinstance(cb, Invalid):
        emit_dead_letter(origin, key, payload, cb)
        return
    if cb.message_id is None:
        # Only the provider's id: resolve it on the partition that owns that id.
        pkey = provider_key(cb.provider, cb.provider_message_id)
        send_by_provider_id(pkey, {"op": "resolve", "origin": origin, "body": _plain(cb)})
        return
    if _misrouted(cb.message_id, event):
        route(cb.message_id, {"kind": "callback", "origin": origin, "body": _plain(cb)})
    else:
        handle_callback(cb, origin, position, key, payload, now)


def apply_routed(envelope: dict[str, Any], position: tuple[str, int, int], now: int) -> None:
    kind = envelope["kind"]
    if kind == "tick":
        sweep(position[1], envelope["now"])
        return
    origin = tuple(envelope["origin"])
    body = envelope["raw"] if "raw" in envelope else envelope["body"]  # a request's own bytes (route_request)
    key = body["message_id"].encode()
    if kind == "request":
        handle_request(SendRequest(**body), origin, position, key, orjson.dumps(body), now)
    else:
        handle_callback(Callback(**body), origin, position, key, orjson.dumps(body), now)


def for_each_item(event: EventT, items: list[dict[str, Any]], apply) -> None:
    """Apply each item of an internal batch record; an item that fails changes nothing and becomes
    a dead letter (too large: with the position of the record it came from), and the others are
    still applied."""
    box = outbox()
    for item in items:
        savepoint = box.savepoint()
        try:
            apply(item)
        except TooLarge as exc:
            box.rollback(savepoint)
            body = item.get("raw") or item.get("body") or item
            origin = tuple(item["origin"]) if isinstance(item.get("origin"), list) else _origin(event)
            emit_dead_letter(origin, event.key, orjson.dumps(body), Invalid(ErrorType.TOO_LARGE, str(exc)))
        except Exception as exc:
            log.exception("an item of internal record %s failed", _origin(event))
            box.rollback(savepoint)
            emit_dead_letter(_origin(event), event.key, orjson.dumps(item),
                             Invalid(ErrorType.PROCESSING_ERROR, f"processing failed: {exc!r}"))


def _plain(record: Any) -> dict[str, Any]:
    return {name: v for name in record.__slots__ if (v := getattr(record, name)) is not None}


def sweep(partition: int, now: int) -> None:
    """Expire held callbacks past the orphan TTL and evict state untouched past the retention."""
    for message_id, _ in _scan(held_index, partition):
        held_since = outbox().get(held_index, message_id)  # a write staged in this batch wins
        if held_since is None or now - held_since < ORPHAN_TTL_MS:
            continue
        state = outbox().get(messages_table, message_id)
        if state is not None and state["req"] is None:
            for entry in state["held"]:
                emit_dead_letter(tuple(entry["origin"]), message_id.encode(), orjson.dumps(entry["cb"]), Invalid(
                    ErrorType.ORPHAN,
                    f"no send request for message {message_id!r} arrived within "
                    f"{settings.orphan_ttl_seconds} s",
                ))
            outbox().delete(messages_table, message_id)
        outbox().delete(held_index, message_id)
    # A state holding callbacks is the orphan sweep's, whatever its age: it ends as dead letters,
    # never evicted silently (the two scans walk their tables independently).
    evicted = _evict(messages_table, partition, now, lambda s: now if s.get("held") else s.get("t", 0))
    if evicted:
        metrics.inc("state_evicted_total", evicted, table="messages")


_cursors: dict[tuple[str, int], Optional[bytes]] = {}


def _scan(table: Any, partition: int) -> list[tuple[str, Any]]:
    """The next SWEEP_BATCH keys (and decoded values) of one partition of a table, in key order from
    where its last scan stopped; after the last key the next scan starts over."""
    db = open_db(table, partition)
    if db is None:
        return []
    cursor_key = (table.name, partition)
    skipped = offset_key(table)  # Faust keeps its changelog offset in the same RocksDB
    it = db.iter()
    start = _cursors.get(cursor_key)
    it.seek(start) if start else it.seek_to_first()
    items, seen = [], 0
    while it.valid() and seen < SWEEP_BATCH:
        key = it.key()
        if key != skipped:
            items.append((key.decode(), orjson.loads(it.value())))
        seen += 1
        it.next()
    _cursors[cursor_key] = it.key() if it.valid() else None
    return items


def _evict(table: Any, partition: int, now: int, touched) -> int:
    """Delete the stale entries among the next keys of one partition's scan (see _scan)."""
    stale = [key for key, value in _scan(table, partition)
             if now - touched(value) > RETENTION_MS and not outbox().staged(table, key)]
    for key in stale:
        outbox().delete(table, key)
    return len(stale)


def _apply_one(box: Outbox, event: EventT, apply: Callable[[Any, int], None], now: int) -> None:
    """Apply one record in its own event context (its table writes belong to its partition). A
    record that fails changes nothing (its staged effects are rolled back) and becomes a dead
    letter: too_large when its effect would not fit in a Kafka record, processing_error otherwise."""
    use_event(event)
    box.event = event
    savepoint = box.savepoint()
    try:
        apply(event, now)
    except TooLarge as exc:
        box.rollback(savepoint)
        emit_dead_letter(_origin(event), event.key, event.value or b"", Invalid(ErrorType.TOO_LARGE, str(exc)))
    except Exception as exc:  # the one boundary that turns a failure into a dead letter
        log.exception("record %s failed", _origin(event))
        box.rollback(savepoint)
        emit_dead_letter(_origin(event), event.key, event.value or b"",
                         Invalid(ErrorType.PROCESSING_ERROR, f"processing failed: {exc!r}"))
    box.event = None


async def _apply_one_at_a_time(events: list, apply: Callable[[Any, int], None], now: int,
                               touched: list[tuple[Any, str, int]], error: BaseException) -> None:
    """The last line of defence when the broker refused records of a batch for their size (every
    record fits RECORD_BUDGET_BYTES by construction, so a topic's max.message.bytes is lower).

    None of the batch's table writes were applied (that happens only once every record is
    acknowledged); some of its records may have been: outputs are then duplicated (folded
    downstream by change_id), internal operations applied twice (idempotent: the same event id,
    the same request). Each input is applied again alone and committed alone, in order; one whose
    records are refused again changes nothing and becomes a dead letter with the broker's error.
    Last, every key a refused commit wrote is written again with the value its table holds now:
    the changelog may hold records of that commit, and a recovery from it must end where the
    tables are."""
    log.error("the broker refused records of a batch of %d inputs (%r): applying them one at a time",
              len(events), error)
    metrics.inc("engine_batches_refused_total", 1)
    rewrite = {(table.name, key): (table, key, partition) for table, key, partition in touched}
    for event in events:
        box = new_outbox()
        _apply_one(box, event, apply, now)
        writes = box.touched()
        try:
            await box.commit(refusable=True)
        except Refused as refused:
            rewrite.update(((table.name, key), (table, key, partition)) for table, key, partition in writes)
            box = new_outbox()
            emit_dead_letter(_origin(event), event.key, event.value or b"", Invalid(
                ErrorType.TOO_LARGE, f"the broker refused what this record produced: {refused.error!r}"))
            await box.commit()
    box = new_outbox()
    for table, key, partition in rewrite.values():
        box.restage(table, key, partition)
    await box.commit()


async def apply_batch(events: list, apply: Callable[[Any, int], None]) -> None:
    """Apply each record (_apply_one), then commit the batch's outputs and table writes (Outbox)."""
    box = new_outbox()
    now = now_ms()
    started = time.perf_counter()
    for event in events:
        _apply_one(box, event, apply, now)
    applied = time.perf_counter() - started
    touched = box.touched()
    try:
        await box.commit(refusable=True)
    except Refused as refused:
        await _apply_one_at_a_time(events, apply, now, touched, refused.error)
    produce, tables = box.timings.get("produce", 0.0), box.timings.get("tables", 0.0)
    metrics.observe("engine_apply_seconds", applied)
    metrics.observe("engine_produce_seconds", produce)
    metrics.observe("engine_table_write_seconds", tables)
    total = time.perf_counter() - started
    if total >= SLOW_BATCH_SECONDS:
        # What a slow batch spent its time on: applying (status rules, table reads; also any thread
        # holding the GIL meanwhile), waiting for the broker's acknowledgements, or writing RocksDB.
        log.warning("slow engine batch: %.3f s for %d records (apply %.3f s, produce %d records %.3f s, "
                    "table writes %.3f s)", total, len(events), applied, box.produced, produce, tables)


@batch_agent(app, app.topic(REQUESTS, CALLBACKS, ROUTED, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw"), name="status-engine")
async def status_engine(events: list) -> None:
    """Apply a batch of requests, callbacks and routed records.

    Requests first (a stable sort: each partition keeps its order): a callback fetched together
    with its request then finds the request applied instead of being held for it."""
    events.sort(key=lambda event: event.message.topic != REQUESTS)
    await apply_batch(events, process)
    metrics.inc("engine_events_total", len(events))


# ---------------------------------------------------------------------------------------------
# The provider-id side: mappings and callbacks that name only the provider's id


def handle_by_provider_id(event: EventT, now: int) -> None:
    doc = orjson.loads(event.value)
    if "batch" in doc:
        for_each_item(event, doc["batch"], lambda item: apply_by_provider_id(item.pop("k"), item, event, now))
    else:  # one operation per record (ticks, and records written before batching)
        apply_by_provider_id(event.key.decode(), doc, event, now)


def apply_by_provider_id(pkey: str, doc: dict[str, Any], event: EventT, now: int) -> None:
    op = doc["op"]
    if op == "tick":
        sweep_provider_ids(event.message.partition, doc["now"])
        return
    if op in ("watch", "watermark"):
        apply_watermarks(pkey, doc, now)
        return
    box = outbox()
    mapping = box.get(provider_ids_table, pkey)
    if op == "map":
        if mapping is None or mapping[0] != doc["message_id"] or now - mapping[1] > 3_600_000:
            box.put(provider_ids_table, pkey, [mapping[0] if mapping else doc["message_id"], now])
        message_id = (mapping or [doc["message_id"]])[0]
        held = box.get(provider_held_table, pkey)
        if held:
            for item in held["cbs"]:
                body = dict(item["body"], message_id=message_id)
                route(message_id, {"kind": "callback", "origin": item["origin"], "body": body})
            box.delete(provider_held_table, pkey)
        return
    # op == "resolve"
    if mapping is not None:
        body = dict(doc["body"], message_id=mapping[0])
        route(mapping[0], {"kind": "callback", "origin": doc["origin"], "body": body})
        return
    held = box.get(provider_held_table, pkey) or {"since": now, "cbs": []}
    if any(item["body"]["event_id"] == doc["body"]["event_id"] for item in held["cbs"]):
        return
    entry = {"origin": doc["origin"], "body": doc["body"]}
    refused = status.hold_refusal(held["cbs"], entry, f"provider id {_shown(pkey)}")
    if refused is not None:
        emit_dead_letter(tuple(doc["origin"]), pkey.encode(), orjson.dumps(doc["body"]), refused)
        return
    held["cbs"].append(entry)
    box.put(provider_held_table, pkey, held)


def apply_watermarks(rkey: str, doc: dict[str, Any], now: int) -> None:
    """A Messenger delivery/read watermark covers every message to that recipient requested at or
    before it, including messages whose request is seen after the watermark. The index is per
    recipient, so a receipt touches only that recipient's messages."""
    entry = outbox().get(messenger_recipients, rkey) or {"msgs": [], "marks": {}, "t": now}
    if doc["op"] == "watch":
        if all(m[0] != doc["message_id"] for m in entry["msgs"]):
            entry["msgs"].append([doc["message_id"], doc["requested_at"], []])
    else:
        mark = entry["marks"].get(doc["status"])
        if mark is None or doc["watermark"] > mark[0]:
            entry["marks"][doc["status"]] = [doc["watermark"], doc["event_id"], doc["occurred_at"]]
    for msg in entry["msgs"]:
        for status_name, (watermark, event_id, occurred_at) in entry["marks"].items():
            if msg[1] <= watermark and status_name not in msg[2]:
                msg[2].append(status_name)
                body = {"event_id": f"{event_id}:{msg[0]}", "status": status_name, "occurred_at": occurred_at,
                        "message_id": msg[0], "provider": "messenger"}
                route(msg[0], {"kind": "callback", "origin": doc.get("origin", [BY_PID, -1, -1]), "body": body})
    # A message that every kind of receipt has covered needs no more tracking; nor does one older
    # than the retention, and the index keeps at most the newest MAX_WATCHED messages.
    horizon = now - RETENTION_MS
    entry["msgs"] = [m for m in entry["msgs"] if len(m[2]) < 2 and m[1] >= horizon][-MAX_WATCHED:]
    entry["t"] = now
    outbox().put(messenger_recipients, rkey, entry)


def _shown(pkey: str) -> str:
    return repr(pkey.replace("\x1f", ":")[:200])


def sweep_provider_ids(partition: int, now: int) -> None:
    for pkey, _ in _scan(provider_held_table, partition):
        held = outbox().get(provider_held_table, pkey)  # a write staged in this batch wins
        if held is None or now - held["since"] < ORPHAN_TTL_MS:
            continue
        for item in held["cbs"]:
            emit_dead_letter(tuple(item["origin"]), pkey.encode(), orjson.dumps(item["body"]), Invalid(
                ErrorType.ORPHAN,
                f"no message is known for provider id {_shown(pkey)} after {settings.orphan_ttl_seconds} s",
            ))
        outbox().delete(provider_held_table, pkey)
    _evict(provider_ids_table, partition, now, lambda m: m[1])
    _evict(messenger_recipients, partition, now, lambda e: e["t"])


@batch_agent(app, by_provider_id_topic, name="provider-id-resolver")
async def provider_id_resolver(events: list) -> None:
    """Keep provider id -> message id, and re-key callbacks that name only the provider id."""
    await apply_batch(events, handle_by_provider_id)


_tick_order = itertools.cycle(range(N))


@app.timer(settings.sweep_interval_seconds / (N * SWEEP_TICKS))
async def send_sweep_ticks() -> None:
    """Ask the next partition, in turn, to sweep; the sweep runs in that partition's own event
    context. Each partition is asked SWEEP_TICKS times per interval."""
    partition = next(_tick_order)
    tick = orjson.dumps({"kind": "tick", "op": "tick", "now": now_ms()})
    try:
        await routed_topic.send(key=TICK_KEY, value=tick, partition=partition)
        await by_provider_id_topic.send(key=TICK_KEY, value=tick, partition=partition)
    except (KafkaError, ProducerSendError, OSError) as exc:  # the broker is away: the next tick retries
        log.warning("sending a sweep tick to partition %d failed: %r", partition, exc)

"""The status engine: joins requests and callbacks per message id in Faust tables (CONTRACT §2)."""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from typing import Any, Callable, Optional

import orjson
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.types import EventT

from agents.faust_adapter import batch_agent, offset_key, open_db
from agents.transaction import Outbox, Refused, TooLarge, new_outbox, outbox, placement, shown_key
from agents.app import (
    app,
    by_provider_id_topic,
    callbacks_topic,
    dead_letters_topic,
    engine_only,
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
from schemas import dead_letters
from schemas.models import Callback, Invalid, SendRequest
from schemas.validate import ErrorType, TimeWindow, judged_at, parse_callback, parse_send_request
from sendtrack import provider_ids, status, sweeps, watermarks
from sendtrack import state as state_mod
from sendtrack.state import MessageState
from sendtrack.metrics import metrics
from sendtrack.batches import BATCH_KEY
from sinks import erasure
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
# The sweep scans each partition's tables for stale state, SWEEP_TICKS times per
# SENDTRACK_SWEEP_INTERVAL_SECONDS. The ticks go to one partition at a time, spread evenly over the
# interval: a tick is a few milliseconds of work in one engine batch, where a tick to every
# partition at once held a batch for over a second.
# - Expiry walks the tables of held callbacks (small: only what waits for a request), SWEEP_BATCH
#   keys per tick, so an orphan is found soon after its TTL.
# - Eviction walks everything else, EVICT_BATCH keys per tick: 4,000 keys per partition and interval.
#   At 5 M messages (625,000 per partition) a pass takes 156 intervals, under three hours at the
#   default 60 s: late by that against a retention of 30 days, for a fifth of the keys a tick walked
#   before (late in a 5 M backlog the scans took 6.4% of the engine's thread, then 2.1%).
SWEEP_BATCH = 5_000
EVICT_BATCH = 1_000
SWEEP_TICKS = 4
TICK_KEY = b"\x00tick"


def now_ms() -> int:
    return int(time.time() * 1000)


# The partition Kafka's default partitioner gives a key (agents/transaction.py, `placement`).
partition_for = placement


def provider_key(provider: str, provider_message_id: str) -> str:
    return f"{provider}\x1f{provider_message_id}"


def recipient_key(psid: str) -> str:
    return f"messenger-recipient\x1f{psid}"


def send_by_provider_id(key: str, doc: dict[str, Any]) -> None:
    """Send to the partition of the provider-id side that owns `key` (placed when the batch commits)."""
    outbox().add_internal(BY_PID, key, dict(doc, k=key))


def emit_changes(changes: list) -> None:
    """Stage one message's status changes for the partition of the record being applied: the one
    that owns the message, where Kafka's default partitioner puts its id (each topic has N
    partitions), so the id is not hashed again."""
    if not changes:
        return
    box = outbox()
    partition = box.partition()
    for change in changes:
        box.add(STATUS_CHANGES, change.message_id.encode(), orjson.dumps(change), partition)


# A dead letter always fits its record (with its key): it can never be refused itself.
assert dead_letters.RECORD_MAX + dead_letters.KEY_MAX <= RECORD_BUDGET_BYTES


def emit_dead_letter(origin: tuple[str, int, int], key: Optional[bytes], payload: bytes,
                     invalid: Invalid) -> None:
    """Send a refused record to dead-letters with its original bytes and position (schemas/dead_letters.py)."""
    key, value = dead_letters.build(origin, key, payload, str(invalid.error_type), invalid.error, now_ms())
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


def _state_of(message_id: str) -> MessageState:
    return outbox().get(messages_table, message_id) or status.new_state()


def _reread(state: MessageState, position: tuple[str, int, int]) -> bool:
    return state_mod.is_reread(state, position[0], position[2])


def _save(message_id: str, state: MessageState, position: tuple[str, int, int], now: int) -> None:
    state_mod.mark_applied(state, position[0], position[2], now)
    outbox().put(messages_table, message_id, state)


def _after_apply(message_id: str, state: MessageState, outcome: status.Outcome, origin: tuple[str, int, int],
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


def _drop_erased() -> None:
    """An input for a message whose customer was erased changes nothing (until the marker is evicted)."""
    metrics.inc("erased_inputs_total", 1)


def handle_request(req: SendRequest, origin: tuple[str, int, int], position: tuple[str, int, int],
                   key: Optional[bytes], payload: bytes, now: int) -> None:
    state = _state_of(req.message_id)
    if "erased" in state:
        return _drop_erased()
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
    if "erased" in state:
        return _drop_erased()
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
    if kind == "erase":
        erase_message(envelope["message_id"], now)
        return
    origin = tuple(envelope["origin"])
    body = envelope["raw"] if "raw" in envelope else envelope["body"]  # a request's own bytes (route_request)
    key = body["message_id"].encode()
    if kind == "request":
        handle_request(SendRequest(**body), origin, position, key, orjson.dumps(body), now)
    else:
        handle_callback(Callback(**body), origin, position, key, orjson.dumps(body), now)


def erase_message(message_id: str, now: int) -> None:
    """Forget what the state holds of an erased customer's message (`sendtrack erase`): the request,
    milestones, held callbacks, engagement URLs, and the provider ids and Messenger recipient it
    registered. A marker takes its place, so a late callback or a replayed request for it changes
    nothing, until the marker is evicted like any state. Every write is a changelog record: the old
    values leave the compacted changelog when Kafka compacts it."""
    box = outbox()
    state = box.get(messages_table, message_id)
    if state is not None and "erased" in state:
        return
    for pkey in (state or {}).get("pm", []):
        send_by_provider_id(pkey, {"op": "forget"})
    req = (state or {}).get("req") or {}
    if req.get("action") == "messenger" and req.get("recipient"):
        send_by_provider_id(recipient_key(req["recipient"]), {"op": "forget"})
    box.put(messages_table, message_id, state_mod.erased(now))
    if state is not None and state.get("hi"):
        box.delete(held_index, message_id)
    metrics.inc("erased_messages_total", 1)


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
        if not sweeps.orphan_due(held_since, now, ORPHAN_TTL_MS):
            continue
        state = outbox().get(messages_table, message_id)
        if sweeps.drop_orphaned_state(state):
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
    evicted = _evict(messages_table, partition, now, lambda state: sweeps.message_touched(state, now))
    if evicted:
        metrics.inc("state_evicted_total", evicted, table="messages")


_cursors: dict[tuple[str, int], Optional[bytes]] = {}


def _scan(table: Any, partition: int, batch: int = SWEEP_BATCH) -> list[tuple[str, Any]]:
    """The next `batch` keys (and decoded values) of one partition of a table, in key order from
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
    while it.valid() and seen < batch:
        key = it.key()
        if key != skipped:
            items.append((key.decode(), orjson.loads(it.value())))
        seen += 1
        it.next()
    _cursors[cursor_key] = it.key() if it.valid() else None
    return items


def _evict(table: Any, partition: int, now: int, touched) -> int:
    """Delete the stale entries among the next EVICT_BATCH keys of one partition (see _scan)."""
    stale = [key for key, value in _scan(table, partition, EVICT_BATCH)
             if sweeps.stale(value, touched, now, RETENTION_MS) and not outbox().staged(table, key)]
    for key in stale:
        outbox().delete(table, key)
    return len(stale)


def _apply_one(box: Outbox, event: EventT, apply: Callable[[Any, int], None], now: int) -> None:
    """Apply one record in its own event context (its table writes belong to its partition). A
    record that fails changes nothing (its staged effects are rolled back) and becomes a dead
    letter: too_large when its effect would not fit in a Kafka record, processing_error otherwise."""
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


def _count_changes(box: Outbox) -> None:
    """Count the status changes a commit published (once per batch, not per record)."""
    changes = box.sent.get(STATUS_CHANGES, 0)
    if changes:
        metrics.inc("status_changes_total", changes)


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
        try:
            await box.commit(refusable=True)
            _count_changes(box)
        except Refused as refused:
            rewrite.update(((table.name, key), (table, key, partition))
                           for table, key, partition in box.touched(committed=True))
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
    try:
        await box.commit(refusable=True)
        _count_changes(box)
    except Refused as refused:
        await _apply_one_at_a_time(events, apply, now, box.touched(committed=True), refused.error)
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


def _place_keys(events: list) -> None:
    """Place the batch's input keys together (murmur2_many): producers key requests and callbacks
    by message id, so the misrouting check of each record is then a lookup."""
    keys = []
    for event in events:
        key = event.key
        if key is not None and event.message.topic != ROUTED:
            try:
                keys.append(key.decode())
            except UnicodeDecodeError:
                pass  # not a message id: the record says which, once parsed
    partition_for.prime(keys)


@engine_only(batch_agent(app, app.topic(REQUESTS, CALLBACKS, ROUTED, key_type=bytes, value_type=bytes,
                                        key_serializer="raw", value_serializer="raw"), name="status-engine"))
async def status_engine(events: list) -> None:
    """Apply a batch of requests, callbacks and routed records.

    Requests first (a stable sort: each partition keeps its order): a callback fetched together
    with its request then finds the request applied instead of being held for it."""
    events.sort(key=lambda event: event.message.topic != REQUESTS)
    _place_keys(events)
    await apply_batch(events, process)
    metrics.inc("engine_events_total", len(events))
    for topic, count in Counter(event.message.topic for event in events).items():
        if topic != ROUTED:
            metrics.inc("records_in_total", count, topic=topic)


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
    if op == "forget":
        # An erased customer's provider id: the mapping to the message id stays (it names no one,
        # and routes a late callback to the message's marker, which drops it); callbacks held for
        # it go. A Messenger recipient's entry (keyed by the person's page-scoped id) goes.
        for table in (provider_held_table, messenger_recipients):
            if outbox().get(table, pkey) is not None:
                outbox().delete(table, pkey)
        return
    box = outbox()
    mapping, held = box.get(provider_ids_table, pkey), box.get(provider_held_table, pkey)
    if op == "map":
        decision = provider_ids.on_map(mapping, held, doc["message_id"], now)
    else:  # "resolve"
        decision = provider_ids.on_resolve(mapping, held, doc["origin"], doc["body"], now, f"provider id {shown_key(pkey)}")
    if decision.refused is not None:
        emit_dead_letter(tuple(doc["origin"]), pkey.encode(), orjson.dumps(doc["body"]), decision.refused)
    if decision.mapping is not None:
        box.put(provider_ids_table, pkey, decision.mapping)
    for message_id, envelope in decision.routes:
        route(message_id, envelope)
    if decision.held is not None:
        box.put(provider_held_table, pkey, decision.held)
    elif decision.delete_held:
        box.delete(provider_held_table, pkey)


def apply_watermarks(rkey: str, doc: dict[str, Any], now: int) -> None:
    """A Messenger watermark, or a message to watch, for one recipient (sendtrack/watermarks.py)."""
    entry, routes = watermarks.apply(outbox().get(messenger_recipients, rkey), doc, now, RETENTION_MS,
                                     origin=doc.get("origin", [BY_PID, -1, -1]))
    for message_id, envelope in routes:
        route(message_id, envelope)
    outbox().put(messenger_recipients, rkey, entry)


def sweep_provider_ids(partition: int, now: int) -> None:
    for pkey, _ in _scan(provider_held_table, partition):
        held = outbox().get(provider_held_table, pkey)  # a write staged in this batch wins
        if not provider_ids.orphaned(held, now, ORPHAN_TTL_MS):
            continue
        for item in held["cbs"]:
            emit_dead_letter(tuple(item["origin"]), pkey.encode(), orjson.dumps(item["body"]), Invalid(
                ErrorType.ORPHAN,
                f"no message is known for provider id {shown_key(pkey)} after {settings.orphan_ttl_seconds} s",
            ))
        outbox().delete(provider_held_table, pkey)
    _evict(provider_ids_table, partition, now, sweeps.mapping_touched)
    _evict(messenger_recipients, partition, now, sweeps.recipient_touched)


@engine_only(batch_agent(app, by_provider_id_topic, name="provider-id-resolver"))
async def provider_id_resolver(events: list) -> None:
    """Keep provider id -> message id, and re-key callbacks that name only the provider id."""
    await apply_batch(events, handle_by_provider_id)


async def request_erasure(message_ids: list[str]) -> dict[int, int]:
    """Send the engine the records that make it forget `message_ids` (`erase_message`, on each
    message's partition); returns the offset of the last one per partition, once acknowledged."""
    last: dict[int, int] = {}
    for partition, value in erasure.engine_records(message_ids, N):
        sent = await routed_topic.send(key=BATCH_KEY, value=value, partition=partition)
        last[partition] = (await sent).offset
    return last


_tick_order = itertools.cycle(range(N))


@engine_only(app.timer(settings.sweep_interval_seconds / (N * SWEEP_TICKS)))
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

"""The worker on the real broker: dead letters, the status join, orphans, and a restart with wiped state."""

from __future__ import annotations

import shutil
import time
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2

from tests.integration.conftest import BROKER, Worker, cb, consume, produce, req


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("pipeline"), "pipe", orphan_ttl_seconds=3, sweep_interval_seconds=1)
    w.start()
    yield w
    w.stop()


async def consume_until(worker, done, topic: str = "status-changes", timeout: float = 45):
    """Re-read a topic until `done(records)` holds: other tests share the worker's topics, so a
    record count alone does not say that this test's records have arrived."""
    deadline = time.monotonic() + timeout
    while True:
        records = await consume(worker.topic(topic), 0, timeout=5, settle=1)
        if done(records) or time.monotonic() > deadline:
            return records


def milestones(changes, mid):
    return {c["status"]: c for c in changes if c["message_id"] == mid and c["kind"] == "milestone"}


async def test_invalid_records_reach_dead_letters_and_the_worker_keeps_consuming(worker):
    bad = [
        (b"m-bad-1", b"{not json"),
        (b"m-bad-2", orjson.dumps({"action": "email", "customer_id": "c", "requested_at": 1_780_000_000_000})),
        (b"m-bad-3", orjson.dumps({"message_id": "m-bad-3", "action": "fax", "customer_id": "c",
                                   "requested_at": 1_780_000_000_000})),
        (b"m-bad-4", orjson.dumps({"message_id": "m-bad-4", "action": "email", "customer_id": "c",
                                   "requested_at": "yesterday"})),
        (b"m-bad-5", b"\xff\xfe\x00garbage"),
    ]
    await produce(worker.topic("send-requests"), bad + [req("m-after-bad")])
    letters = await consume(worker.topic("dead-letters"), 5)
    by_key = {d["key"]: d for d in letters}
    assert by_key["m-bad-1"]["error_type"] == "undecodable"
    assert by_key["m-bad-2"]["error_type"] == "missing_field"
    assert "message_id" in by_key["m-bad-2"]["error"]
    assert by_key["m-bad-3"]["error_type"] == "unknown_action"
    assert by_key["m-bad-4"]["error_type"] == "wrong_type"
    assert by_key["m-bad-5"]["payload_encoding"] == "base64"
    first = by_key["m-bad-1"]
    assert first["source_topic"] == worker.topic("send-requests")
    assert first["payload"] == "{not json" and first["offset"] >= 0 and first["partition"] >= 0
    # The good record after them is processed: the partition is not stuck.
    changes = await consume(worker.topic("status-changes"), 1)
    assert "sent" in milestones(changes, "m-after-bad")


async def test_email_journey_out_of_order_with_duplicates_and_provider_ids(worker):
    mid = "m-journey"
    # Callback before its request, a duplicate, a provider-id-only callback before the mapping
    # exists, then the mapping (a callback carrying both ids), then one after the mapping.
    await produce(worker.topic("provider-callbacks"), [
        cb(mid, "e-open", "opened", at=1_780_000_050_000),
        cb(mid, "e-open", "opened", at=1_780_000_050_000),
        cb(None, "e-click", "clicked", at=1_780_000_060_000, provider="sendgrid", provider_message_id="sg-1",
           url="https://shop.example/a"),
    ])
    await produce(worker.topic("send-requests"), [req(mid)])
    await produce(worker.topic("provider-callbacks"), [
        cb(mid, "e-proc", "processing", at=1_780_000_010_000, provider="sendgrid", provider_message_id="sg-1"),
        cb(None, "e-open-2", "opened", at=1_780_000_070_000, provider="sendgrid", provider_message_id="sg-1"),
        cb(mid, "e-proc", "processing", at=1_780_000_010_000),
    ])
    want = {"sent", "processing", "delivered", "opened", "clicked"}
    changes = await consume_until(worker, lambda cs: set(milestones(cs, mid)) == want and any(
        c["message_id"] == mid and c["kind"] == "engagement" for c in cs))
    ms = milestones(changes, mid)
    assert set(ms) == want
    assert ms["delivered"]["inferred"] is True
    assert ms["opened"]["inferred"] is False and ms["opened"]["event_id"] == "e-open"
    assert ms["clicked"]["url"] == "https://shop.example/a"
    per_status = Counter(c["status"] for c in changes if c["message_id"] == mid and c["kind"] == "milestone")
    mine = [(c["status"], c["kind"], c["recorded_at"], c["current_status"]) for c in changes if c["message_id"] == mid]
    assert all(n == 1 for n in per_status.values()), (per_status, mine)
    engagement = [c for c in changes if c["message_id"] == mid and c["kind"] == "engagement"]
    assert [c["event_id"] for c in engagement] == ["e-open-2"]
    # Changes applied in one batch share recorded_at: the latest ones must include "clicked".
    last_at = max(c["recorded_at"] for c in changes if c["message_id"] == mid)
    assert "clicked" in {c["current_status"] for c in changes if c["message_id"] == mid and c["recorded_at"] == last_at}


async def test_status_changes_are_placed_by_message_id_as_kafkas_default_partitioner(worker):
    """The engine writes a message's status changes to the partition of the record it applies
    (the one that owns the message) without hashing the id again: requests and callbacks keyed by
    message id, callbacks resolved from a provider id and routed, all must land where Kafka's
    default partitioner places the key (CONTRACT: status-changes, key message_id)."""
    mid = "m-placed"
    await produce(worker.topic("send-requests"), [req(mid, provider="sendgrid")])
    await produce(worker.topic("provider-callbacks"), [
        cb(mid, "e-placed-proc", "processing", provider="sendgrid", provider_message_id="sg-placed"),
        cb(None, "e-placed-open", "opened", at=1_780_000_050_000, provider="sendgrid", provider_message_id="sg-placed"),
        (b"not-the-message-id", cb(mid, "e-placed-click", "clicked", at=1_780_000_060_000)[1]),
    ])
    partitions = int(worker.env["SENDTRACK_PARTITIONS"])
    placed_by = lambda key: (murmur2(key) & 0x7FFFFFFF) % partitions  # noqa: E731
    assert placed_by(b"not-the-message-id") != placed_by(mid.encode())  # so that record is routed
    # The open, named by the provider id only, takes two hops: its change is an engagement event
    # ("clicked" already implied "opened").
    await consume_until(worker, lambda cs: {"sent", "processing", "opened", "clicked"} <= set(milestones(cs, mid))
                        and any(c["event_id"] == "e-placed-open" for c in cs))
    consumer = AIOKafkaConsumer(worker.topic("status-changes"), bootstrap_servers=BROKER,
                                auto_offset_reset="earliest", group_id=None, enable_auto_commit=False)
    await consumer.start()
    placed: list[tuple[bytes, int]] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=2_000)
            if not batch:
                break
            placed += [(r.key, r.partition) for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    assert sum(key == mid.encode() for key, _ in placed) >= 5
    wrong = [(key, p) for key, p in placed if p != placed_by(key)]
    assert not wrong


async def test_status_not_allowed_goes_to_dead_letters(worker):
    await produce(worker.topic("send-requests"), [req("m-zns", action="zns", provider="zalo")])
    await produce(worker.topic("provider-callbacks"), [cb("m-zns", "e-zns-open", "opened")])
    letters = await consume_until(worker, lambda ds: any(d["key"] == "m-zns" for d in ds), "dead-letters")
    mine = [d for d in letters if d["key"] == "m-zns"]
    assert mine and mine[0]["error_type"] == "status_not_allowed"
    assert "zns" in mine[0]["error"]


async def test_conflicting_request_keeps_the_first(worker):
    await produce(worker.topic("send-requests"), [req("m-conf"), req("m-conf", customer_id="someone-else")])
    letters = await consume_until(worker, lambda ds: any(d["key"] == "m-conf" for d in ds), "dead-letters")
    assert any(d["key"] == "m-conf" and d["error_type"] == "conflicting_request" for d in letters)
    changes = await consume_until(worker, lambda cs: "sent" in milestones(cs, "m-conf"))
    sent = milestones(changes, "m-conf")["sent"]
    assert sent["customer_id"] == "cus-1"


async def test_http_request_status_from_http_code(worker):
    await produce(worker.topic("send-requests"), [req("m-http", action="http_request", provider="webhook")])
    await produce(worker.topic("provider-callbacks"), [cb("m-http", "e-http", http_status=503)])
    changes = await consume_until(worker, lambda cs: "failed" in milestones(cs, "m-http"))
    ms = milestones(changes, "m-http")
    assert set(ms) == {"failed"} and ms["failed"]["current_status"] == "failed"


async def test_unresolved_callbacks_expire_as_orphans(worker):
    await produce(worker.topic("provider-callbacks"), [
        cb("m-never-requested", "e-orphan-1", "delivered"),
        cb(None, "e-orphan-2", "delivered", provider="zalo", provider_message_id="z-unknown"),
    ])
    deadline = time.monotonic() + 30
    orphans = []
    while time.monotonic() < deadline and len(orphans) < 2:
        letters = await consume(worker.topic("dead-letters"), 0, timeout=5, settle=1)
        orphans = [d for d in letters if d["error_type"] == "orphan"]
    assert sorted(orjson.loads(d["payload"])["event_id"] for d in orphans) == ["e-orphan-1", "e-orphan-2"]
    assert all(d["source_topic"] == worker.topic("provider-callbacks") for d in orphans)


async def test_state_untouched_past_the_retention_is_evicted_and_forgotten(tmp_path_factory):
    # Retention 0.0001 day (8.64 s), longer than the orphan TTL as the settings require; the sweep
    # ticks each partition SWEEP_TICKS times per 1 s interval.
    w = Worker(tmp_path_factory.mktemp("evict"), "evict", orphan_ttl_seconds=3, sweep_interval_seconds=1,
               state_retention_days=0.0001).start()
    try:
        published = time.monotonic()
        await produce(w.topic("send-requests"), [req("m-evicted")])
        assert milestones(await consume(w.topic("status-changes"), 1), "m-evicted").keys() == {"sent"}
        deadline = time.monotonic() + 60
        evicted = 0.0
        while time.monotonic() < deadline and evicted < 1:
            time.sleep(0.25)
            evicted = w.metrics().get('sendtrack_state_evicted_total{table="messages"}', 0.0)
        assert evicted == 1
        # ...and not before its retention: the state was touched after its request was published.
        assert time.monotonic() - published >= 0.0001 * 86_400
        # Forgotten: a callback for it now waits for a request, and expires as an orphan.
        await produce(w.topic("provider-callbacks"), [cb("m-evicted", "e-after-eviction", "delivered")])
        orphans = []
        while time.monotonic() < deadline + 30 and not orphans:
            letters = await consume(w.topic("dead-letters"), 0, timeout=5, settle=1)
            orphans = [d for d in letters if d["error_type"] == "orphan"]
        assert [orjson.loads(d["payload"])["event_id"] for d in orphans] == ["e-after-eviction"]
    finally:
        w.stop()


async def test_restart_with_wiped_state_rebuilds_from_changelog_without_duplicates(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("restart"), "restart").start()
    try:
        await produce(w.topic("send-requests"), [req("m-r1"), req("m-r2", action="sms", provider="esms")])
        await produce(w.topic("provider-callbacks"), [cb("m-r1", "r1-d", "delivered")])
        await consume(w.topic("status-changes"), 4)
        w.stop()
        shutil.rmtree(w.data_dir / "faust")
        w.start()
        # Old inputs again (as a producer retry would), plus one new milestone.
        await produce(w.topic("send-requests"), [req("m-r1")])
        await produce(w.topic("provider-callbacks"), [cb("m-r1", "r1-d", "delivered"),
                                                      cb("m-r1", "r1-o", "opened")])
        changes = await consume(w.topic("status-changes"), 5, settle=3)
        per = Counter((c["message_id"], c["status"]) for c in changes if c["kind"] == "milestone")
        assert per == Counter({("m-r1", "sent"): 1, ("m-r1", "processing"): 1, ("m-r1", "delivered"): 1,
                               ("m-r1", "opened"): 1, ("m-r2", "sent"): 1})
    finally:
        w.stop()

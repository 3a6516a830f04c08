"""Hostile input on the real broker (CONTRACT §2.7, §3, §6): every bad record becomes exactly one dead
letter, good records interleaved with them all reach ClickHouse, the worker stays healthy, and forged
webhooks never reach provider-webhooks.

Records bigger than the pipeline's limits are tested last, each against a worker of its own: when one
of them stops the worker, the others still say what they do.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import itertools
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import murmur2

from schemas.validate import ErrorType
from tests.integration.conftest import BROKER, Worker, cb, consume, req

ERROR_TYPES = {e.value for e in ErrorType}
N_GOOD = 30
DAY_MS = 86_400_000
# Yesterday, midnight UTC: event times must lie within SENDTRACK_TIME_MAX_AGE_DAYS of their record's.
T0 = (int(time.time() * 1000) // DAY_MS - 1) * DAY_MS
GOOD_ACTIONS = ["email", "sms", "zalo_oa", "zns", "messenger", "ai_call", "voucher"]  # all reach delivered
REQUESTS, CALLBACKS = "send-requests", "provider-callbacks"

Key = Optional[bytes]
Value = Optional[bytes]


def good_id(i: int) -> str:
    return f"hostile-good-{i:03d}"


def doc_request(**kw: Any) -> dict[str, Any]:
    return {"message_id": "bad-req", "action": "email", "customer_id": "cus-1", "requested_at": T0, **kw}


def doc_callback(**kw: Any) -> dict[str, Any]:
    return {"event_id": "bad-ev", "occurred_at": T0 + 1000, "status": "delivered", "message_id": "bad-cb", **kw}


def without(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != name}


def raw_with(doc: dict[str, Any], name: str, token: bytes) -> bytes:
    """`doc` as JSON with the value of `name` replaced by raw JSON text (NaN, lone surrogates, ...)."""
    raw = orjson.dumps({**doc, name: "\x00RAW\x00"})
    return raw.replace(b'"\\u0000RAW\\u0000"', token)


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]", leaf: bytes = b"") -> bytes:
    return open_ * depth + leaf + close * depth


# (label, key, value, expected error_type or None for "any member of ErrorType")
Hostile = tuple[str, Key, Value, Optional[str]]


def hostile_requests(rng: random.Random) -> list[Hostile]:
    j = orjson.dumps
    out: list[Hostile] = []
    for i in range(5):
        out.append((f"req-random-{i}", rng.randbytes(rng.randint(1, 16)), rng.randbytes(rng.randint(1, 400)), None))
    out += [
        ("req-empty-value", b"bad-empty", b"", "undecodable"),
        ("req-null-value", b"bad-tombstone", None, "undecodable"),
        ("req-null-key-garbage", None, b"{not json", "undecodable"),
        ("req-null-key-not-utf8", None, b"\xff\xfe\xfd", "undecodable"),
        ("req-deep-arrays-10000", b"bad-deep", nested(10_000), "undecodable"),
        ("req-deep-objects-10000", b"bad-deep", nested(10_000, b'{"a":', b"}", b"1"), "undecodable"),
        ("req-deep-attributes-10000", b"bad-deep",
         raw_with(doc_request(message_id="bad-deep-attr"), "attributes", nested(10_000, b'{"a":', b"}", b"1")),
         "undecodable"),
        # Past orjson's writer (255 levels), which keeps the state and routes records between partitions.
        ("req-deep-attributes-300", b"bad-deep-attr-300",
         raw_with(doc_request(message_id="bad-deep-attr-300"), "attributes", nested(300, b'{"a":', b"}", b"1")),
         None),
        ("req-array", b"bad-array", b"[1,2,3]", "not_an_object"),
        ("req-string", b"bad-string", b'"message_id"', "not_an_object"),
        ("req-number", b"bad-number", b"42", "not_an_object"),
        ("req-json-null", b"bad-null", b"null", "not_an_object"),
        ("req-message-id-int", b"bad-mid-int", j(doc_request(message_id=12345)), "wrong_type"),
        ("req-requested-at-string", b"bad-req", j(doc_request(requested_at="2026-06-01T00:00:00Z")), "wrong_type"),
        ("req-requested-at-float", b"bad-req", j(doc_request(requested_at=1_780_000_000_000.5)), "wrong_type"),
        ("req-requested-at-bool", b"bad-req", j(doc_request(requested_at=True)), "wrong_type"),
        ("req-requested-at-seconds", b"bad-req", j(doc_request(requested_at=1_780_000_000)), "invalid_value"),
        ("req-requested-at-nan", b"bad-req", raw_with(doc_request(), "requested_at", b"NaN"), "undecodable"),
        ("req-requested-at-1e400", b"bad-req", raw_with(doc_request(), "requested_at", b"1e400"), "undecodable"),
        ("req-attributes-list", b"bad-req", j(doc_request(attributes=["a"])), "wrong_type"),
        ("req-customer-id-bool", b"bad-req", j(doc_request(customer_id=False)), "wrong_type"),
        ("req-customer-id-empty", b"bad-req", j(doc_request(customer_id="")), "invalid_value"),
        ("req-action-null", b"bad-req", j(doc_request(action=None)), "missing_field"),
        ("req-missing-message-id", b"bad-req", j(without(doc_request(), "message_id")), "missing_field"),
        ("req-unknown-field", b"bad-req", j(doc_request(priority="high")), "unknown_field"),
        ("req-callback-shaped", b"bad-cb", j(doc_callback()), "unknown_field"),
        ("req-unknown-action", b"bad-req", j(doc_request(action="fax")), "unknown_action"),
        ("req-message-id-empty", b"", j(doc_request(message_id="")), "invalid_value"),
        ("req-huge-message-id", b"h" * 10_000, j(doc_request(message_id="h" * 10_000)), "invalid_value"),
        ("req-lone-surrogate-id", b"bad-surrogate",
         raw_with(doc_request(), "message_id", b'"bad-\\ud800"'), "undecodable"),
        ("req-invalid-utf8-in-string", b"bad-utf8", j(doc_request()).replace(b"cus-1", b"cus-\xc0\xaf"),
         "undecodable"),
        # Times outside the plausible window (ClickHouse's toDate would count 2286 on a day of 2107).
        ("req-requested-at-2286", b"bad-req", j(doc_request(requested_at=9_999_999_999_999)), "invalid_value"),
        ("req-requested-at-800-days-old", b"bad-req",
         j(doc_request(requested_at=int(time.time() * 1000) - 800 * DAY_MS)), "invalid_value"),
        # Control characters in ids: "\x1f" is the separator of the provider-id key.
        ("req-message-id-unit-separator", b"bad-req", j(doc_request(message_id="bad-\x1f-req")), "invalid_value"),
        ("req-customer-id-nul", b"bad-req", j(doc_request(customer_id="cus-\x00")), "invalid_value"),
        ("req-campaign-id-newline", b"bad-req", j(doc_request(campaign_id="camp\nforged")), "invalid_value"),
        # Same message id and a different content than the good request published before it (same key:
        # same partition, so the good one is first): conflicting_request, the first stands.
        ("req-conflicting", good_id(1).encode(),
         orjson.dumps({**orjson.loads(req(good_id(1), action=GOOD_ACTIONS[1])[1]), "customer_id": "intruder"}),
         "conflicting_request"),
    ]
    return out


def hostile_callbacks(rng: random.Random) -> list[Hostile]:
    j = orjson.dumps
    out: list[Hostile] = []
    for i in range(4):
        out.append((f"cb-random-{i}", rng.randbytes(rng.randint(1, 16)), rng.randbytes(rng.randint(1, 400)), None))
    out += [
        ("cb-empty-value", b"bad-empty", b"", "undecodable"),
        ("cb-null-value", b"bad-tombstone", None, "undecodable"),
        ("cb-null-key-garbage", None, b"\x00\x01\x02", "undecodable"),
        ("cb-deep-10000", b"bad-deep", nested(10_000, b'{"a":', b"}", b"1"), "undecodable"),
        ("cb-deep-mixed-10000", None, b'[{"a":' * 5_000 + b"1" + b"}]" * 5_000, "undecodable"),
        ("cb-array", b"bad-array", j([doc_callback()]), "not_an_object"),
        ("cb-missing-event-id", b"bad-cb", j(without(doc_callback(), "event_id")), "missing_field"),
        ("cb-empty-event-id", b"bad-cb", j(doc_callback(event_id="")), "invalid_value"),
        ("cb-occurred-at-seconds", b"bad-cb", j(doc_callback(occurred_at=1_780_000_001)), "invalid_value"),
        ("cb-occurred-at-string", b"bad-cb", j(doc_callback(occurred_at="now")), "wrong_type"),
        ("cb-occurred-at-infinity", b"bad-cb", raw_with(doc_callback(), "occurred_at", b"Infinity"), "undecodable"),
        ("cb-unknown-status", b"bad-cb", j(doc_callback(status="read")), "unknown_status"),
        ("cb-no-status", b"bad-cb", j(without(doc_callback(), "status")), "missing_field"),
        ("cb-http-status-700", b"bad-cb", j(without(doc_callback(http_status=700), "status")), "invalid_value"),
        ("cb-http-status-string", b"bad-cb", j(without(doc_callback(http_status="200"), "status")), "wrong_type"),
        ("cb-http-status-bool", b"bad-cb", j(without(doc_callback(http_status=True), "status")), "wrong_type"),
        ("cb-bounce-type", b"bad-cb", j(doc_callback(status="bounced", bounce_type="medium")), "invalid_value"),
        ("cb-is-machine-string", b"bad-cb", j(doc_callback(is_machine="yes")), "wrong_type"),
        ("cb-provider-only", None, j(without(doc_callback(provider="sendgrid"), "message_id")), "missing_field"),
        ("cb-unknown-field", b"bad-cb", j(doc_callback(signature="x")), "unknown_field"),
        ("cb-request-shaped", b"bad-req", j(doc_request()), "unknown_field"),
        ("cb-huge-message-id", b"c" * 10_000, j(doc_callback(message_id="c" * 10_000)), "invalid_value"),
        ("cb-occurred-at-2286", b"bad-cb", j(doc_callback(occurred_at=9_999_999_999_999)), "invalid_value"),
        ("cb-occurred-at-2-days-ahead", b"bad-cb",
         j(doc_callback(occurred_at=int(time.time() * 1000) + 2 * DAY_MS)), "invalid_value"),
        # provider "a\x1fb" + id "c" and provider "a" + id "b\x1fc" would share one provider-id key.
        ("cb-provider-unit-separator", None,
         j(without(doc_callback(provider="sendgrid\x1fx", provider_message_id="y"), "message_id")), "invalid_value"),
        ("cb-provider-message-id-unit-separator", None,
         j(without(doc_callback(provider="sendgrid", provider_message_id="x\x1fy"), "message_id")), "invalid_value"),
        ("cb-event-id-newline", b"bad-cb", j(doc_callback(event_id="ev\nforged")), "invalid_value"),
        ("cb-lone-surrogate-event-id", b"bad-cb",
         raw_with(doc_callback(), "event_id", b'"\\udc00\\ud800"'), "undecodable"),
        # Valid records the status table refuses for this message's action (held or not: the letter
        # names the callback's own position).
        ("cb-status-not-allowed", good_id(0).encode(),
         j(doc_callback(message_id=good_id(0), event_id="bad-answered", status="answered")), "status_not_allowed"),
        ("cb-http-status-on-email", good_id(7).encode(),
         j(without(doc_callback(message_id=good_id(7), event_id="bad-http", http_status=200), "status")),
         "status_not_allowed"),
    ]
    return out


def good_request(i: int) -> tuple[Key, bytes]:
    key, value = req(good_id(i), action=GOOD_ACTIONS[i % len(GOOD_ACTIONS)], requested_at=T0 + i,
                     recipient=f"r{i}@example.vn", attributes={"i": i, "note": "khách hàng ✓"})
    return (None if i % 7 == 3 else key), value  # some without a key: routed to their partition


def good_callback(i: int) -> tuple[Key, bytes]:
    key, value = cb(good_id(i), f"hostile-ev-{i}", "delivered", at=T0 + 60_000 + i)
    return (None if i % 7 == 5 else key), value


# ---------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------


async def publish(records: list[tuple[str, Key, Value]], max_request_size: int = 1 << 20
                  ) -> list[tuple[str, int, int]]:
    """Publish (topic, key, value) in order; returns each record's (topic, partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, acks="all", max_request_size=max_request_size)
    await producer.start()
    try:
        out = []
        for topic, key, value in records:
            meta = await producer.send_and_wait(topic, key=key, value=value)
            out.append((topic, meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


async def raise_topic_limit(topic: str, max_bytes: int) -> None:
    """Let the broker take records over its default 1 MB on this (test-owned) topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                  configs={"max.message.bytes": str(max_bytes)})])
    finally:
        await admin.close()


def position(letter: dict[str, Any]) -> tuple[str, int, int]:
    return (letter["source_topic"], letter["partition"], letter["offset"])


def original_bytes(letter: dict[str, Any]) -> bytes:
    if letter["payload_encoding"] == "base64":
        return base64.b64decode(letter["payload"])
    return letter["payload"].encode("utf-8")


def alive(w: Worker) -> bool:
    return w.proc is not None and w.proc.poll() is None


def why_it_stopped(w: Worker) -> str:
    """The first error line of the worker's log (the full log is at w.log_path)."""
    lines = w.log_path.read_text(errors="replace").splitlines()
    errors = [line for line in lines if "[ERROR]" in line or "[CRITICAL]" in line or "Error:" in line]
    return "\n".join(errors[:3]) or w.tail(15)


# ---------------------------------------------------------------------------------------------
# Fixtures: the main worker and, started alongside it, one worker per oversized case
# ---------------------------------------------------------------------------------------------

ESMS_TOKEN = "tok-hostile-0123456789"
SIZE_CASES = ["two-megabytes-too-large", "random-bytes-900k-under-limit", "valid-request-999990-bytes"]


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    all_workers = {"main": Worker(tmp, "hostile", orphan_ttl_seconds=3600)}
    for i, case in enumerate(SIZE_CASES):
        all_workers[case] = Worker(tmp, f"hostile-size{i}", orphan_ttl_seconds=3600)
    # eSMS authenticates with a URL token: the one configured provider, to see what the ingress publishes.
    all_workers["ingress"] = Worker(tmp, "hostile-ingress", orphan_ttl_seconds=3600, esms_token=ESMS_TOKEN)
    try:
        with ThreadPoolExecutor(len(all_workers)) as pool:
            for future in [pool.submit(w.start, 150) for w in all_workers.values()]:
                future.result()
        yield all_workers
    finally:
        for w in all_workers.values():
            w.stop()


@pytest.fixture(scope="module")
def worker(workers) -> Worker:
    return workers["main"]


@pytest.fixture(scope="module")
def published(worker) -> dict[str, Any]:
    """Hostile records of both topics interleaved with N_GOOD requests and their delivered callbacks."""
    rng = random.Random(20240601)
    hostile_req, hostile_cb = hostile_requests(rng), hostile_callbacks(rng)
    records: list[tuple[str, Key, Value]] = []
    labels: list[Optional[Hostile]] = []  # parallel to records: None for a good record
    for i in range(N_GOOD):
        records.append((worker.topic(REQUESTS), *good_request(i)))
        labels.append(None)
        for pool, topic in ((hostile_req, REQUESTS), (hostile_cb, CALLBACKS)):
            # Spread the hostile records over the run, a few after each good request.
            share = pool[i * len(pool) // N_GOOD:(i + 1) * len(pool) // N_GOOD]
            for h in share:
                records.append((worker.topic(topic), h[1], h[2]))
                labels.append(h)
        records.append((worker.topic(CALLBACKS), *good_callback(i)))
        labels.append(None)
    positions = asyncio.run(publish(records))
    hostile = {pos: h for pos, h in zip(positions, labels) if h is not None}
    good = {pos for pos, h in zip(positions, labels) if h is None}
    assert len(hostile) == len(hostile_req) + len(hostile_cb)
    return {"hostile": hostile, "good": good}


# ---------------------------------------------------------------------------------------------
# The mix
# ---------------------------------------------------------------------------------------------


async def test_every_hostile_record_becomes_exactly_one_dead_letter(worker, published):
    hostile: dict[tuple[str, int, int], Hostile] = published["hostile"]
    letters = await consume(worker.topic("dead-letters"), len(hostile), timeout=60, settle=3)
    by_position: dict[tuple[str, int, int], list[dict]] = {}
    for d in letters:
        by_position.setdefault(position(d), []).append(d)

    missing = {h[0]: pos for pos, h in hostile.items() if pos not in by_position}
    unexpected = {pos: [d["error_type"] for d in ds] for pos, ds in by_position.items() if pos not in hostile}
    assert not missing, f"hostile records with no dead letter: {missing}\n{worker.tail()}"
    assert not unexpected, f"dead letters for good records: {unexpected}"
    assert len(by_position) == len(hostile)

    wrong = {}
    for pos, (label, key, value, expected) in hostile.items():
        kinds = {d["error_type"] for d in by_position[pos]}
        assert kinds <= ERROR_TYPES, (label, kinds)
        if len(kinds) != 1 or (expected is not None and kinds != {expected}):
            wrong[label] = (expected, sorted(kinds))
        for d in by_position[pos]:
            assert d["error"], label
            # The original bytes and key come back as they were sent; a callback held for its request
            # and refused when the request arrived carries its canonical JSON instead (docs/contract.md
            # §3: the engine keeps the parsed callback while it waits), the same fields and values.
            if expected == "status_not_allowed" and original_bytes(d) != value:
                assert orjson.loads(original_bytes(d)) == orjson.loads(value), label
            else:
                assert original_bytes(d) == (value or b""), label
            if key is None:
                assert d["key"] is None, label
            else:
                try:
                    assert d["key"] == key.decode("utf-8"), label
                except UnicodeDecodeError:
                    assert base64.b64decode(d["key"]) == key, label
    assert not wrong, f"label: (expected error_type, got): {wrong}"


async def test_good_records_interleaved_with_hostile_ones_all_reach_clickhouse(worker, published):
    worker.wait_for(
        "SELECT count(), countIf(sent_at IS NOT NULL), countIf(delivered_at IS NOT NULL), "
        "countIf(current_status = 'delivered') FROM sendtrack.messages WHERE message_id LIKE 'hostile-%'",
        [[N_GOOD, N_GOOD, N_GOOD, N_GOOD]], timeout=60)
    # The conflicting request did not replace the first.
    assert worker.sql(f"SELECT customer_id FROM sendtrack.messages WHERE message_id = '{good_id(1)}'") == \
        [["cus-1"]]
    # No hostile record created a message.
    assert worker.sql("SELECT count() FROM sendtrack.messages WHERE message_id LIKE 'bad-%' "
                      "OR length(message_id) > 128") == [[0]]


async def test_dead_letters_are_queryable_in_clickhouse(worker, published):
    n = len(published["hostile"])
    worker.wait_for(
        f"SELECT count(DISTINCT (source_topic, partition, offset)) FROM sendtrack.dead_letters "
        f"WHERE source_topic IN ('{worker.topic(REQUESTS)}', '{worker.topic(CALLBACKS)}')",
        [[n]], timeout=60)


async def test_worker_is_healthy_and_processes_a_new_record_after_all_that(worker, published):
    assert alive(worker), worker.tail()
    assert worker.get("/health").get("status") == "ok"
    await publish([(worker.topic(REQUESTS), *req("late-after-hostile", action="sms", provider="esms")),
                   (worker.topic(CALLBACKS), *cb("late-after-hostile", "late-ev", "clicked"))])
    worker.wait_for("SELECT current_status, delivered_at IS NOT NULL FROM sendtrack.messages "
                    "WHERE message_id = 'late-after-hostile'", [["clicked", True]], timeout=60)
    assert worker.get("/health").get("status") == "ok"


# ---------------------------------------------------------------------------------------------
# Webhook ingress: no secret is configured on this worker
# ---------------------------------------------------------------------------------------------


def http_post(port: int, path: str, body: bytes, headers: dict[str, str], chunked: bool = False) -> Any:
    """The status code, or the connection error's name when the server closed before answering."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        try:
            if chunked:
                pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
                conn.request("POST", path, body=iter(pieces), headers=headers, encode_chunked=True)
            else:
                conn.request("POST", path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413) before reading the whole body
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected) as exc:
        return type(exc).__name__
    finally:
        conn.close()


def webhook_attempts() -> list[tuple[str, str, bytes, dict[str, str], bool]]:
    now = int(time.time())
    sg_body = orjson.dumps([{"email": "a@example.vn", "timestamp": now, "event": "delivered",
                             "sg_event_id": "forged-1", "sg_message_id": "x.1", "message_id": good_id(2)}])
    tw_body = b"MessageSid=SM1&MessageStatus=delivered&To=%2B84900000000"
    zalo_body = orjson.dumps({"app_id": "1", "event_name": "user_received_message", "timestamp": str(now * 1000),
                              "message": {"msg_id": "z1"}})
    big = b'{"pad":"' + b"x" * 1_500_000 + b'"}'
    json_headers = {"Content-Type": "application/json"}
    out = []
    for provider, body, forged, ctype in (
        ("sendgrid", sg_body, {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(b"\x30" * 70).decode(),
                               "X-Twilio-Email-Event-Webhook-Timestamp": str(now)}, "application/json"),
        ("twilio", tw_body, {"X-Twilio-Signature": base64.b64encode(b"f" * 20).decode()},
         "application/x-www-form-urlencoded"),
        ("zalo", zalo_body, {"X-ZEvent-Signature": "mac=" + "0" * 64}, "application/json"),
    ):
        path = f"/webhooks/{provider}"
        out.append((f"{provider}-unsigned", path, body, {"Content-Type": ctype}, False))
        out.append((f"{provider}-forged", path, body, {"Content-Type": ctype, **forged}, False))
        out.append((f"{provider}-garbage", path, bytes(range(256)) * 4, {"Content-Type": ctype, **forged}, False))
        out.append((f"{provider}-oversized", path, big, {**json_headers, **forged}, False))
        out.append((f"{provider}-oversized-chunked", path, big, {**json_headers, **forged}, True))
    return out


async def test_forged_unsigned_and_oversized_webhooks_are_refused_and_never_published(worker):
    results = {label: http_post(worker.port, path, body, headers, chunked)
               for label, path, body, headers, chunked in webhook_attempts()}
    wrong = {label: status for label, status in results.items()
             if not (status == 403 or (label.endswith(("oversized", "oversized-chunked")) and status == 413))}
    assert not wrong, f"expected 403 (413 allowed when oversized): {wrong}"
    assert alive(worker) and worker.get("/health").get("status") == "ok"
    published_webhooks = await consume(worker.topic("provider-webhooks"), 0, timeout=6, settle=3)
    assert published_webhooks == []


# ---------------------------------------------------------------------------------------------
# Records bigger than the limits: each on a worker of its own (started with the main one)
# ---------------------------------------------------------------------------------------------


def _valid_request_of_size(mid: str, size: int) -> bytes:
    doc = doc_request(message_id=mid, attributes={"pad": ""})
    doc["attributes"]["pad"] = "v" * (size - len(orjson.dumps(doc)))
    raw = orjson.dumps(doc)
    assert len(raw) == size
    return raw


@pytest.mark.parametrize("case", SIZE_CASES)
async def test_records_over_the_size_limits_do_not_stop_the_worker(workers, case):
    """A 2 MB record (the topic accepts it) is too_large; 900 KB of random bytes (under the 1 MB limit,
    so undecodable) is dead-lettered although its base64 letter is bigger; a valid request just under
    the limit is processed. In each case the worker stays up and a good record after it gets through."""
    w = workers[case]
    topic = w.topic(REQUESTS)
    if case == "two-megabytes-too-large":
        await raise_topic_limit(topic, 8 << 20)
        bad, expected = orjson.dumps(doc_request(message_id="bad-2mb", pad="z" * 2_000_000)), "too_large"
    elif case == "random-bytes-900k-under-limit":
        bad, expected = random.Random(900).randbytes(900_000), "undecodable"
    else:
        bad, expected = _valid_request_of_size("hostile-big-valid", 999_990), None
    after = req("late-after-oversized")
    positions = await publish([(topic, b"bad-big" if expected else b"hostile-big-valid", bad),
                               (topic, *after)], max_request_size=8 << 20)
    deadline = time.monotonic() + 45
    seen = []
    while time.monotonic() < deadline and alive(w):
        try:
            seen = w.sql("SELECT message_id FROM sendtrack.messages WHERE message_id IN "
                         "('late-after-oversized', 'hostile-big-valid') ORDER BY message_id")
        except OSError:  # the web server went away: the worker is stopping
            await asyncio.sleep(1)
            continue
        if len(seen) == (1 if expected else 2):
            break
        await asyncio.sleep(0.5)
    assert alive(w), (f"the worker stopped after a {len(bad)}-byte record ({case}); log {w.log_path}:\n"
                      f"{why_it_stopped(w)}")
    assert w.get("/health").get("status") == "ok"
    if expected is None:
        assert seen == [["hostile-big-valid"], ["late-after-oversized"]], seen
    else:
        assert seen == [["late-after-oversized"]], seen
        letters = await consume(w.topic("dead-letters"), 1, timeout=20, settle=2)
        mine = [d for d in letters if position(d) == positions[0]]
        assert [d["error_type"] for d in mine] == [expected], letters


@pytest.mark.parametrize("size", [100_000, 700_000, 900_000])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_large_accepted_webhook_is_published_whole_or_refused(workers, size, chunked):
    """Under the 1 MB limit the ingress must publish exactly the bytes it verified, or refuse with 413
    (a body whose record would not fit); never a truncated body with 200."""
    w = workers["ingress"]
    tag = f"big-{size}-{'chunked' if chunked else 'length'}"
    body = b"SMSID=" + tag.encode() + b"&SendStatus=5&pad=" + b"p" * size
    status = http_post(w.port, f"/webhooks/esms?token={ESMS_TOKEN}", body,
                       {"Content-Type": "application/x-www-form-urlencoded"}, chunked)
    assert alive(w), why_it_stopped(w)
    assert status in (200, 413), status
    records = await consume(w.topic("provider-webhooks"), 0, timeout=10, settle=2)
    mine = [base64.b64decode(r["body"]) for r in records if tag.encode() in base64.b64decode(r["body"])[:64]]
    if status == 413:
        assert mine == []
    else:
        assert [len(b) for b in mine] == [len(body)], f"sent {len(body)} bytes, 200, published {[len(b) for b in mine]}"
        assert mine == [body]


# ---------------------------------------------------------------------------------------------
# Valid input whose effect outgrows a Kafka record: the engine must keep going (an engine-only
# worker; what it did is read from its output topics)
# ---------------------------------------------------------------------------------------------

PARTITIONS = 4  # SENDTRACK_PARTITIONS of the Worker fixture
VIETNAMESE = "Người nhận không tồn tại, hộp thư đã đầy. "
EMOJI = "📨🚫😡🔥"
CONTROL = "\x01\x07\x1b\x7f"


def partition_of(key: str) -> int:
    """The partition Kafka's default partitioner gives this key."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def id_on(partition: int, prefix: str) -> str:
    """An id that Kafka's default partitioner puts on `partition`."""
    return next(f"{prefix}-{i}" for i in itertools.count() if partition_of(f"{prefix}-{i}") == partition)


def text(kind: str, n: int) -> str:
    """`n` characters of multi-byte or control-character text (each escaped as 6 bytes in JSON)."""
    unit = {"vi": VIETNAMESE, "emoji": EMOJI, "control": CONTROL}[kind]
    return (unit * (n // len(unit) + 1))[:n]


def request_of_numbers(mid: str, size: int) -> bytes:
    """A valid request of exactly `size` bytes whose attributes are mostly the number 1e15: re-encoded
    (1000000000000000.0) it is almost four times as long."""
    head = orjson.dumps(doc_request(message_id=mid))[:-1] + b',"attributes":{"pad":"'
    middle, end = b'","n":[', b"1e15]}}"
    room = size - len(head) - len(middle) - len(end)
    raw = head + b"p" * (room % 5) + middle + b"1e15," * (room // 5) + end
    assert len(raw) == size and len(orjson.dumps(orjson.loads(raw))) > 3_500_000
    return raw


@pytest.fixture(scope="module")
def engine_worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("outgrow"), "hostile-outgrow", sink_enabled=0, orphan_ttl_seconds=3600)
    w.start(150, engine_only=True)
    try:
        yield w
    finally:
        w.stop()


async def publish_at(records: list[tuple[str, Key, Value, Optional[int]]]) -> list[tuple[str, int, int]]:
    """Publish (topic, key, value, Kafka timestamp or None) in order; returns their positions."""
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, acks="all", max_request_size=8 << 20)
    await producer.start()
    try:
        out = []
        for topic, key, value, timestamp_ms in records:
            meta = await producer.send_and_wait(topic, key=key, value=value, timestamp_ms=timestamp_ms)
            out.append((topic, meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


def reader(topic: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(topic, bootstrap_servers=BROKER, auto_offset_reset="earliest", group_id=None,
                            enable_auto_commit=False, fetch_max_bytes=16 << 20, max_partition_fetch_bytes=16 << 20)


async def read_until(topic: str, done, timeout: float = 45) -> list[dict[str, Any]]:
    """Read `topic` from its start until done(records) holds (or the timeout); returns the records."""
    consumer = reader(topic)
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(out):
            batch = await consumer.getmany(timeout_ms=300)
            out.extend(orjson.loads(r.value) for recs in batch.values() for r in recs)
        return out
    finally:
        await consumer.stop()


async def read_to_end(topic: str) -> list[dict[str, Any]]:
    """Every record `topic` holds now."""
    consumer = reader(topic)
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        partitions = consumer.assignment() or set()
        while not partitions:
            await asyncio.sleep(0.1)
            partitions = consumer.assignment()
        ends = await consumer.end_offsets(list(partitions))
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=300)
            out.extend(orjson.loads(r.value) for recs in batch.values() for r in recs)
        return out
    finally:
        await consumer.stop()


async def handled(w: Worker, pos: tuple[str, int, int], timeout: float = 45) -> None:
    """Wait until the engine committed its consumer offset past the record at `pos`. Its outputs
    alone prove nothing: a batch retried forever produces them again on every attempt."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    committed = None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            offsets = await admin.list_consumer_group_offsets(w.env["SENDTRACK_APP_ID"])
            committed = offsets.get(TopicPartition(pos[0], pos[1]))
            if committed is not None and committed.offset > pos[2]:
                return
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    raise AssertionError(f"the engine did not get past {pos} within {timeout} s (committed: {committed}): "
                         f"it is stuck; log {w.log_path}:\n{w.tail(6) if alive(w) else why_it_stopped(w)}")


async def processed(w: Worker, message_id: str, status: str = "sent", timeout: float = 45) -> list[dict[str, Any]]:
    """The status changes of the run once `message_id` reached `status` (fails after the timeout)."""
    def reached(changes):
        return any(c["message_id"] == message_id and c["status"] == status for c in changes)
    changes = await read_until(w.topic("status-changes"), reached, timeout)
    assert reached(changes), (f"{message_id!r} did not reach {status!r} within {timeout} s: the engine is "
                              f"stuck; log {w.log_path}:\n{why_it_stopped(w) if not alive(w) else w.tail(8)}")
    return changes


async def letters_at(w: Worker, positions: list[tuple[str, int, int]], timeout: float = 20) -> dict:
    """Dead letters of the records at `positions`, by position (waits until each has one)."""
    wanted = set(positions)
    letters = await read_until(w.topic("dead-letters"), lambda ds: wanted <= {position(d) for d in ds}, timeout)
    out: dict[tuple[str, int, int], list[dict]] = {}
    for d in letters:
        if position(d) in wanted:
            out.setdefault(position(d), []).append(d)
    return out


async def test_a_misrouted_request_that_grows_when_re_encoded_does_not_stop_its_partition(engine_worker):
    """999,905 bytes of 1e15 pass validation; published on a key of another partition the request is
    routed to its own, where re-encoded it was 3.8 MB: over the internal topic's 1 MiB, refused by
    the broker, and retried forever with the partition's batch."""
    w = engine_worker
    mid, key = id_on(1, "big-1e15"), id_on(2, "other-key")
    after = id_on(2, "after-big-1e15")
    assert partition_of(mid) != partition_of(key) == partition_of(after)
    positions = await publish_at([(w.topic(REQUESTS), key.encode(), request_of_numbers(mid, 999_905), None),
                                  (w.topic(REQUESTS), *req(after), None)])
    assert positions[0][:2] == positions[1][:2]
    await handled(w, positions[1])
    await processed(w, after)
    assert alive(w)
    # It is the record's own bytes that travel, so the request is applied on its partition like any other.
    changes = await processed(w, mid)
    assert [c["status"] for c in changes if c["message_id"] == mid] == ["sent"]


async def test_64_held_callbacks_of_long_multibyte_text_do_not_stop_their_partition(engine_worker):
    """64 callbacks waiting for their request, each with 2,048 + 4,096 characters of Vietnamese, emoji
    or control characters (counted in characters, each up to 6 bytes encoded), made a 1.3-2.6 MB state."""
    w = engine_worker
    mid = id_on(3, "held-multibyte")
    after = id_on(3, "after-held")  # its callback follows the hostile ones on their topic's partition
    await publish_at([(w.topic(REQUESTS), *req(after), None)])
    await processed(w, after)
    records = []
    for i in range(64):
        kind = ("vi", "emoji", "control")[i % 3]
        doc = doc_callback(message_id=mid, event_id=f"{i:02d}-" + text("vi" if kind == "control" else kind, 250),
                           occurred_at=T0 + 1000 + i, reason_code=text(kind, 256), reason=text(kind, 2048),
                           url=text(kind, 4096), provider="sendgrid", provider_message_id=text("vi", 256))
        records.append((w.topic(CALLBACKS), mid.encode(), orjson.dumps(doc), None))
    positions = await publish_at(records + [(w.topic(CALLBACKS), *cb(after, "after-held-ev", "delivered"), None)])
    assert len({p[:2] for p in positions}) == 1  # one topic partition
    await handled(w, positions[-1])
    await processed(w, after, "delivered")
    # The callbacks the state can hold wait for the request; the others are dead letters, never dropped.
    mine = {position(d): d for d in await read_to_end(w.topic("dead-letters")) if position(d) in positions[:64]}
    assert mine, "every callback was held: the state would be over 1 MB"
    assert {d["error_type"] for d in mine.values()} == {"too_many_held"}, mine
    assert len(mine) < 64
    # The request applies the held ones.
    await publish_at([(w.topic(REQUESTS), *req(mid), None)])
    changes = await processed(w, mid, "delivered")
    assert sorted(c["status"] for c in changes if c["message_id"] == mid) == ["delivered", "processing", "sent"]


async def test_70_clicks_after_a_request_do_not_stop_their_partition(engine_worker):
    """Each repeated click is an engagement event kept in the state for re-production after a crash:
    64 of them with 4,096-character URLs of control characters made a 1.6 MB state."""
    w = engine_worker
    mid = id_on(0, "clicks")
    after = id_on(0, "after-clicks")  # its callback follows the clicks on their topic's partition
    await publish_at([(w.topic(REQUESTS), *req(mid), None), (w.topic(REQUESTS), *req(after), None)])
    await processed(w, after)
    records = []
    for i in range(70):
        doc = doc_callback(message_id=mid, event_id=f"click-{i:02d}-" + text("vi", 240), status="clicked",
                           occurred_at=T0 + 10_000 + i, url=text("control", 4096))
        records.append((w.topic(CALLBACKS), mid.encode(), orjson.dumps(doc), None))
    positions = await publish_at(records + [(w.topic(CALLBACKS), *cb(after, "after-clicks-ev", "delivered"), None)])
    assert len({p[:2] for p in positions}) == 1  # one topic partition
    await handled(w, positions[-1])
    await processed(w, after, "delivered")
    changes = await read_until(
        w.topic("status-changes"),
        lambda cs: sum(c["message_id"] == mid and c["kind"] == "engagement" for c in cs) >= 69, timeout=20)
    clicks = [c for c in changes if c["message_id"] == mid and c["status"] == "clicked"]
    assert sorted(c["kind"] for c in clicks) == ["engagement"] * 69 + ["milestone"]
    assert all(c["url"] == text("control", 4096) for c in clicks)


async def test_the_time_window_is_judged_at_the_records_kafka_timestamp(engine_worker):
    """An input is judged against the time it was published, not the time it is read: a re-read after
    a crash hours later gives the same answer, and a backlog is not refused for being late."""
    w = engine_worker
    now = int(time.time() * 1000)
    old = now - 3 * 365 * DAY_MS  # older than the 730-day window, but so is the record
    late, fresh = id_on(2, "published-long-ago"), id_on(2, "bogus-kafka-time")
    positions = await publish_at([
        (w.topic(REQUESTS), *req(late, requested_at=old), old + 60_000),
        (w.topic(REQUESTS), *req(fresh, requested_at=now), old),  # 3 years after its record's time
    ])
    letters = await letters_at(w, positions[1:])
    assert positions[1] in letters, "a request 3 years ahead of its record's time was accepted"
    assert [d["error_type"] for d in letters[positions[1]]] == ["invalid_value"]
    assert "requested_at" in letters[positions[1]][0]["error"]
    await processed(w, late)


async def set_topic_limit(topic: str, max_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                  configs={"max.message.bytes": str(max_bytes)})])
    finally:
        await admin.close()


async def test_records_the_broker_refuses_become_dead_letters_and_the_partition_goes_on(tmp_path):
    """The last line of defence. Every record the engine produces fits the 1 MiB its topics are
    created with, but an operator may lower a topic's max.message.bytes (done here by hand): the
    broker then refuses a batch's records, which used to be retried forever. The batch's inputs are
    applied again one at a time: the one whose records are refused changes nothing and becomes a
    dead letter (too_large, with the broker's error); the others are applied."""
    w = Worker(tmp_path, "hostile-refused", sink_enabled=0, orphan_ttl_seconds=3600).start(150, engine_only=True)
    try:
        await set_topic_limit(f"{w.env['SENDTRACK_APP_ID']}-messages-changelog", 4096)
        await set_topic_limit(w.topic("sendtrack-routed"), 16384)
        before, after = id_on(1, "refused-before"), id_on(1, "refused-after")
        held, routed = id_on(1, "refused-held"), id_on(2, "refused-routed")
        await publish_at([(w.topic(REQUESTS), *req(before), None)])
        await processed(w, before)
        big_state = doc_callback(message_id=held, event_id="refused-ev", reason="\x01" * 2048)  # a 12 KB state
        big_route = orjson.loads(req(routed, attributes={"pad": "p" * 40_000})[1])  # a 40 KB routed record
        positions = await publish_at([
            (w.topic(CALLBACKS), held.encode(), orjson.dumps(big_state), None),
            (w.topic(REQUESTS), before.encode(), orjson.dumps(big_route), None),  # partition 1: misrouted
            (w.topic(CALLBACKS), *cb(before, "refused-before-ev", "delivered"), None),
            (w.topic(REQUESTS), *req(after), None),
        ])
        for pos in positions:
            await handled(w, pos)
        await processed(w, before, "delivered")
        await processed(w, after)
        letters = await letters_at(w, positions[:2])
        for pos in positions[:2]:
            assert [d["error_type"] for d in letters[pos]] == ["too_large"], letters[pos]
            assert "MessageSizeTooLargeError" in letters[pos][0]["error"]
        # The refused callback left nothing behind: its message's request finds nothing held.
        await publish_at([(w.topic(REQUESTS), *req(held), None)])
        changes = await processed(w, held)
        assert [c["status"] for c in changes if c["message_id"] == held] == ["sent"]
        assert alive(w)
    finally:
        w.stop()


async def test_internal_and_changelog_topics_are_created_with_the_engines_record_limit(engine_worker):
    """The engine sizes its records against RECORD_MAX_BYTES: the topics it writes them to say so."""
    from sendtrack.topics import RECORD_MAX_BYTES
    w = engine_worker
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    try:
        app_id = w.env["SENDTRACK_APP_ID"]
        mine = [t for t in await admin.list_topics()
                if t.startswith(w.prefix) or (t.startswith(f"{app_id}-") and t.endswith("-changelog"))]
        configs = {}
        for topic in mine:
            for response in await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]):
                for resource in response.resources:
                    configs[topic] = {name: value for name, value, *_ in resource[4]}
    finally:
        await admin.close()
    engine_written = {t: c["max.message.bytes"] for t, c in configs.items()
                      if t in (w.topic("sendtrack-routed"), w.topic("sendtrack-by-provider-id")) or t.endswith("-changelog")}
    assert len(engine_written) == 7, engine_written  # two internal topics, five tables
    assert set(engine_written.values()) == {str(RECORD_MAX_BYTES)}, engine_written
    # Retention (docs/retention.md): the defaults on every topic the worker created; changelogs compacted.
    week, three_days = str(7 * 86_400_000), str(72 * 3_600_000)
    retention = {t: (c["cleanup.policy"], c["retention.ms"]) for t, c in configs.items()}
    assert retention.pop(w.topic("provider-webhooks")) == ("delete", three_days)
    changelogs = {t: r for t, r in retention.items() if t.endswith("-changelog")}
    assert len(changelogs) == 5 and {policy for policy, _ in changelogs.values()} == {"compact"}, changelogs
    # An erased customer's old values leave a changelog within a week (docs/retention.md, "Erasure").
    assert {configs[t]["max.compaction.lag.ms"] for t in changelogs} == {week}
    others = {t: r for t, r in retention.items() if t not in changelogs}
    assert len(others) == 6 and set(others.values()) == {("delete", week)}, others

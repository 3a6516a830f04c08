"""The sink's batch time on a real worker: a long batch while a backlog drains, a short one once the
sink has caught up (SENDTRACK_SINK_BATCH_SECONDS, SENDTRACK_SINK_CAUGHT_UP_SECONDS)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import BROKER, Worker
from tests.integration.test_sink_limits import change, publish

BATCH_SECONDS = 20  # the time a batch may gather while there is more to read
SPACING = 2.5  # between the records of a steady trickle
BACKLOG = 15_000  # under SENDTRACK_SINK_BATCH_ROWS (20,000): one batch can hold them


async def publish_many(topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, acks="all", linger_ms=20)
    await producer.start()
    try:
        sent = [await producer.send(topic, value=v, key=orjson.loads(v)["message_id"].encode()) for v in values]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("batching"), "batching", sink_batch_seconds=BATCH_SECONDS,
               sink_caught_up_seconds=0.2)
    w.start()
    yield w
    w.stop()


def visible_after(w: Worker, mid: str, timeout: float) -> float:
    """Publish one status change, then the seconds until the messages view shows it."""
    asyncio.run(publish(w.topic("status-changes"), [change(mid, campaign_id="batching")]))
    published = time.monotonic()
    while time.monotonic() - published < timeout:
        if w.sql(f"SELECT count() FROM sendtrack.messages WHERE message_id = '{mid}'") == [[1]]:
            return time.monotonic() - published
        time.sleep(0.05)
    raise AssertionError(f"{mid} not in the view after {timeout} s\n{w.tail()}")


def test_a_caught_up_sink_does_not_wait_out_the_batch_time(worker):
    # Three records at least 2.5 s apart, each published once the one before is in the view. Were a
    # batch to gather for its whole 20 s, each would wait for most of a batch (seen: 20 s).
    visible_after(worker, "trickle-warm-up", timeout=BATCH_SECONDS + 30)  # the sink has joined its group
    waits = []
    for i in range(3):
        waits.append(visible_after(worker, f"trickle-{i}", timeout=BATCH_SECONDS + 10))
        time.sleep(max(0.0, SPACING - waits[-1]))
    assert max(waits) < 3.0, waits
    assert status_inserts(worker) >= 3, worker.metrics()


def status_inserts(w: Worker) -> float:
    return sum(v for k, v in w.metrics().items()
               if k.startswith("sendtrack_clickhouse_inserts_total") and "status_changes" in k)


def test_a_backlog_is_read_whole_before_it_is_inserted(worker):
    # Published while the worker is down: on its start the sink finds 15,000 records (about 10 MB)
    # waiting, several fetches' worth (4 MiB a fetch, 1 MiB a partition). It is not caught up until
    # it has read them all, so they make one insert, and that insert does not wait out the 20 s.
    worker.stop()
    asyncio.run(publish_many(worker.topic("status-changes"),
                             [change(f"backlog-{i}", campaign_id="backlog", recipient="x" * 500)
                              for i in range(BACKLOG)]))
    worker.start()
    started = time.monotonic()
    worker.wait_for("SELECT count() FROM sendtrack.messages WHERE campaign_id = 'backlog'", [[BACKLOG]],
                    timeout=BATCH_SECONDS + 30)
    assert time.monotonic() - started < BATCH_SECONDS / 2
    assert status_inserts(worker) == 1, worker.metrics()

"""A ClickHouse server that refuses connections (the HTTP path): the engine runs, the sink holds.

No ClickHouse server runs on the build machines, so this covers the outage half of the HTTP path:
a real clickhouse-connect HTTP client against a port where nothing listens. That the rows drain
once a server answers is shown for the embedded engine (test_clickhouse.py's injected outage), whose
sink code path after the connection is the same.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.conftest import BROKER, Worker, consume, free_port, produce


async def _committed(group: str) -> dict:
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    try:
        return await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()


async def test_refused_clickhouse_server_holds_the_sink_offsets_while_the_engine_runs(tmp_data):
    w = Worker(tmp_data, "chdown", clickhouse_url=f"http://127.0.0.1:{free_port()}")
    w.start(engine_only=True)
    try:
        request = {"message_id": "m-chdown", "action": "sms", "customer_id": "c",
                   "requested_at": 1_780_000_000_000, "provider": "esms"}
        await produce(w.topic("send-requests"), [(b"m-chdown", orjson.dumps(request))])
        # The engine is not held up by the sink: the status change is produced.
        changes = await consume(w.topic("status-changes"), 1)
        assert [(c["message_id"], c["status"]) for c in changes] == [("m-chdown", "sent")]
        # The sink keeps trying, says so, and acknowledges nothing: the change waits in Kafka.
        deadline = time.monotonic() + 30
        metrics = w.metrics()
        while time.monotonic() < deadline and metrics.get(
                'sendtrack_clickhouse_connect_errors_total{retriable="true"}', 0) < 2:
            await asyncio.sleep(0.5)
            metrics = w.metrics()
        assert metrics.get('sendtrack_clickhouse_connect_errors_total{retriable="true"}', 0) >= 2, metrics
        assert metrics.get("sendtrack_sink_retrying") == 1
        health = w.get("/health")
        assert health["engine"] == "ready" and health["sink"] == "starting" and health["status"] == "starting"
        assert await _committed(f"{w.env['SENDTRACK_APP_ID']}-clickhouse-sink") == {}
        assert w.proc is not None and w.proc.poll() is None, w.tail()
    finally:
        w.stop()

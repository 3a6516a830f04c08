"""Integration fixtures: the real broker `make test` started, and sendtrack workers as subprocesses."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

BROKER = os.environ.get("SENDTRACK_KAFKA_BROKER", "localhost:9092")
ROOT = Path(__file__).resolve().parents[2]


def _broker_answers() -> bool:
    host, port = BROKER.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def broker() -> str:
    if not _broker_answers():
        pytest.fail(f"no Kafka broker answers on {BROKER}: run `make kafka-up` (or `make test`)")
    return BROKER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """A `sendtrack worker` subprocess with its own topics, group, data dir and web port."""

    def __init__(self, tmp: Path, name: str, faults: bool = False, **env: Any) -> None:
        run = f"{name}-{uuid.uuid4().hex[:8]}"
        self.prefix = f"{run}."
        self.data_dir = tmp / run
        self.port = free_port()
        self.env = {
            **os.environ,
            "SENDTRACK_KAFKA_BROKER": BROKER,
            "SENDTRACK_TOPIC_PREFIX": self.prefix,
            "SENDTRACK_APP_ID": run,
            "SENDTRACK_DATA_DIR": str(self.data_dir),
            "SENDTRACK_WEB_PORT": str(self.port),
            "SENDTRACK_PARTITIONS": "4",
            "SENDTRACK_SINK_BATCH_SECONDS": "0.3",
            # The ClickHouse HTTP interface binds 8123 by default: off unless a test asks for it.
            "SENDTRACK_CLICKHOUSE_HTTP_PORT": "0",
            **{f"SENDTRACK_{k.upper()}": str(v) for k, v in env.items()},
        }
        # With `faults`, the worker runs through tests/faults.py (POST /debug/clickhouse-outage).
        self.command = [sys.executable, "-m", "tests.faults" if faults else "sendtrack.cli"]
        self.proc: Optional[subprocess.Popen] = None
        # The reader this test client presents, when the worker has SENDTRACK_READERS.
        self.auth: Optional[tuple[str, str]] = None
        readers = self.env.get("SENDTRACK_READERS", "")
        if readers:
            name, _, password = readers.split(",")[0].partition(":")
            self.auth = (name, password)
        self.log_path = tmp / f"{run}.log"

    def topic(self, name: str) -> str:
        return self.prefix + name

    def start(self, timeout: float = 90, engine_only: bool = False) -> "Worker":
        """Start and wait until healthy (with `engine_only`, until the engine is, whatever the sink)."""
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.command, "worker"], env=self.env,
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.tail()}")
            try:
                health = self.get("/health")
                if health.get("status") == "ok" or (engine_only and health.get("engine") == "ready"):
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        tail = self.tail()
        self.stop()  # a worker left running would go on using the cores the next tests need
        raise RuntimeError(f"worker not healthy within {timeout} s: {tail}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, **params)[1]

    def post(self, path: str, **params: Any) -> Any:
        return self.request("POST", path, **params)[1]

    def request(self, method: str, path: str, headers: Optional[dict[str, str]] = None,
                **params: Any) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body) of a request to the worker, as the configured reader
        (`self.auth`, a (name, password) pair) unless `headers` says otherwise."""
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        if self.auth and not (headers and "Authorization" in headers):
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body)
            except ValueError:
                return exc.code, {"error": body.decode(errors="replace")}

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        return {name: float(value) for name, _, value in
                (line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#"))}

    def sql(self, q: str) -> list[list[Any]]:
        doc = self.get("/query", q=q)
        if "error" in doc:
            raise AssertionError(f"{q}: {doc['error']}")
        return doc["rows"]

    def wait_for(self, q: str, expected: Any, timeout: float = 60) -> Any:
        """Poll a query until it returns `expected` (or fail with the last value)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.sql(q)
            if last == expected:
                return last
            time.sleep(0.5)
        raise AssertionError(f"{q}: expected {expected!r}, last {last!r}\n{self.tail()}")


@pytest.fixture
def tmp_data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sendtrack")


async def produce(topic: str, records: list[tuple[Optional[bytes], bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, key=key, value=value)
    finally:
        await producer.stop()


async def consume(topic: str, min_count: int, timeout: float = 60, settle: float = 2.0) -> list[Any]:
    """Read a topic from the start until `min_count` records arrived and `settle` s passed quietly."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=BROKER, auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            got = [orjson.loads(r.value) for recs in batch.values() for r in recs]
            if got:
                out.extend(got)
                quiet_since = time.monotonic()
            elif len(out) >= min_count and time.monotonic() - quiet_since >= settle:
                break
        return out
    finally:
        await consumer.stop()


def req(mid: str, action: str = "email", **kw: Any) -> tuple[bytes, bytes]:
    doc = {"message_id": mid, "action": action, "customer_id": "cus-1", "requested_at": 1_780_000_000_000,
           "campaign_id": "camp-a", "flow_id": "flow-a", "step_id": "s1", "provider": "sendgrid", **kw}
    return mid.encode(), orjson.dumps(doc)


def cb(mid: Optional[str], event_id: str, status: Optional[str] = None, at: int = 1_780_000_001_000,
       **kw: Any) -> tuple[Optional[bytes], bytes]:
    doc: dict[str, Any] = {"event_id": event_id, "occurred_at": at, **kw}
    if status:
        doc["status"] = status
    if mid:
        doc["message_id"] = mid
    return (mid.encode() if mid else None), orjson.dumps(doc)

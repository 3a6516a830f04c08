"""Reliability under crashes, rebalances and a broker bounce, checked against a model.

In the style of the Kafka Streams system tests (shared/reference/peers-and-limits.md §(c)): a driver
publishes known traffic (`sendtrack.simulate.generate`), worker processes are SIGKILLed while they
apply batches, write changelogs and insert into ClickHouse, a member of the group dies and comes
back, or the broker goes away and returns; then a verifier recomputes what every view must show
from the simulator's truth and requires it exactly. Kafka delivery is at-least-once, so the raw
change log may hold MORE than was generated (duplicates are counted and printed) but never less,
and no view may show a duplicate.

The worker's session timeout is 10 s (agents/app.py): with Faust's default of 60 s, a worker
restarted after SIGKILL waited for the dead member's session to expire before it got partitions
(measured: ~60 s per restart).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import orjson
import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from sendtrack import simulate
from sendtrack.settings import Settings
from tests.integration.conftest import BROKER, ROOT, Worker, free_port
from tests.integration.test_clickhouse import expected_current

PARTITIONS = 4
WORKER_SETTINGS = dict(partitions=PARTITIONS, orphan_ttl_seconds=3600)
KAFKA_SH = ROOT / "scripts" / "kafka" / "kafka.sh"


# ---------------------------------------------------------------------------------------------
# The model and the verifier


@dataclass
class Model:
    """What the views must show for a simulated run, computed from the simulator's truth only."""

    n_messages: int
    funnel: list[list[Any]]  # [action, status, messages], sorted
    current: list[list[Any]]  # [action, current_status, messages], sorted
    milestones: set[tuple[str, str]]  # (message_id, status)
    engagement: set[str]  # event ids of applied opened/clicked callbacks


def build_model(traffic: simulate.Traffic) -> Model:
    funnel = Counter((m.action, s) for m in traffic.messages for s in m.expected)
    current = Counter((m.action, expected_current(m.expected)) for m in traffic.messages)
    # Every reported open/click is one engagement row (the first open of a message included);
    # an open reached only by implication (a click without a tracked open) has no event id.
    engagement = set()
    for kind, _, value in traffic.records:
        if kind == "provider-callbacks":
            doc = orjson.loads(value)
            if doc.get("status") in ("opened", "clicked"):
                engagement.add(doc["event_id"])
    return Model(
        n_messages=len(traffic.messages),
        funnel=sorted([a, s, n] for (a, s), n in funnel.items()),
        current=sorted([a, s, n] for (a, s), n in current.items()),
        milestones={(m.message_id, s) for m in traffic.messages for s in m.expected},
        engagement=engagement,
    )


def alive(w: Worker) -> None:
    """The worker process must still run: report its exit code and log tail if not."""
    assert w.proc is not None, "the worker is not started"
    code = w.proc.poll()
    if code is not None:
        raise AssertionError(f"the worker {w.prefix} exited with code {code} "
                             f"({'signal ' + signal.Signals(-code).name if code < 0 else 'status'}):\n{w.tail(60)}")


def wait_equal(w: Worker, q: str, expected: Any, timeout: float) -> None:
    """Poll `q` until it returns `expected`; fail with the last value, or at once if the worker died."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        alive(w)
        try:
            last = w.sql(q)
        except OSError as exc:
            last = exc
        if last == expected:
            return
        time.sleep(0.5)
    alive(w)
    raise AssertionError(f"{q}\nexpected {expected!r}\nlast     {last!r}")


def diagnose(bootstrap: str, w: Worker, model: Model) -> str:
    """Where the missing milestones were lost: never produced to the status-changes topic (the
    engine), produced but not in status_changes_raw (the sink), or in raw but not in the view."""
    out = []
    try:
        records = asyncio.run(read_topic(bootstrap, w.topic("status-changes")))
        topic = {(r["message_id"], r["status"]) for r in records if r["kind"] == "milestone"}
        out.append(f"missing from the status-changes topic: {len(model.milestones - topic)} "
                   f"{sorted(model.milestones - topic)[:20]}")
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure
        out.append(f"(topic not read: {exc!r})")
    try:
        alive(w)
        raw = {tuple(r) for r in w.sql("SELECT DISTINCT message_id, status FROM sendtrack.status_changes_raw "
                                       "WHERE status != ''")}
        view = {tuple(r) for r in w.sql("SELECT message_id, status FROM sendtrack.status_changes")}
        out.append(f"missing from status_changes_raw: {len(model.milestones - raw)} "
                   f"{sorted(model.milestones - raw)[:20]}")
        out.append(f"missing from the status_changes view: {len(model.milestones - view)} "
                   f"{sorted(model.milestones - view)[:20]}; not in the model: "
                   f"{sorted((raw | view) - model.milestones)[:20]}")
    except (AssertionError, OSError) as exc:
        out.append(f"(ClickHouse not read: {exc})")
    return "\n".join(out)


def verify_views(bootstrap: str, w: Worker, model: Model, timeout: float = 90) -> None:
    """Every view equals the model exactly (waiting up to `timeout` for the sink to catch up)."""
    try:
        _verify_views(w, model, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(bootstrap, w, model)}\n--- worker log tail ---\n"
                             f"{w.tail(30)}") from None


def _verify_views(w: Worker, model: Model, timeout: float) -> None:
    total = len(model.milestones)
    wait_equal(w, "SELECT action, status, toUInt64(sum(messages)) FROM sendtrack.funnel_daily "
               "GROUP BY action, status ORDER BY action, status", model.funnel, timeout)
    wait_equal(w, "SELECT action, current_status, toUInt64(sum(messages)) FROM sendtrack.current_status_daily "
               "GROUP BY action, current_status ORDER BY action, current_status", model.current, 30)
    wait_equal(w, "SELECT count(), uniqExact(message_id) FROM sendtrack.messages",
               [[model.n_messages, model.n_messages]], 30)
    wait_equal(w, "SELECT count(), uniqExact(message_id, status) FROM sendtrack.status_changes",
               [[total, total]], 30)
    got = {(mid, s) for mid, s in w.sql("SELECT message_id, status FROM sendtrack.status_changes")}
    assert got == model.milestones, (sorted(model.milestones - got)[:20], sorted(got - model.milestones)[:20])
    n_eng = len(model.engagement)
    wait_equal(w, "SELECT count(), uniqExact(event_id) FROM sendtrack.engagement_events", [[n_eng, n_eng]], 30)
    got_eng = {r[0] for r in w.sql("SELECT event_id FROM sendtrack.engagement_events")}
    assert got_eng == model.engagement, (sorted(model.engagement - got_eng)[:20], sorted(got_eng - model.engagement)[:20])


def raw_duplicates(w: Worker) -> dict[str, int]:
    """Rows of the raw tables beyond one per change (allowed there, never in a view). A lower
    bound: ReplacingMergeTree may already have merged some of them away."""
    (rows, changes), = w.sql("SELECT count(), uniqExact(change_id) FROM sendtrack.status_changes_raw")
    (erows, events), = w.sql("SELECT count(), uniqExact(message_id, event_id) FROM sendtrack.engagement_events_raw")
    return {"status_changes_raw_rows": rows, "status_changes_raw_duplicates": rows - changes,
            "engagement_events_raw_duplicates": erows - events}


async def read_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> list[dict[str, Any]]:
    """Every record of `topic`, from the beginning to the end offsets taken when reading starts."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, f"could not read {topic} to its end offsets {end}"
            batch = await consumer.getmany(*tps, timeout_ms=500)
            out.extend(orjson.loads(r.value) for recs in batch.values() for r in recs)
        return out
    finally:
        await consumer.stop()


def verify_change_log(bootstrap: str, w: Worker, model: Model) -> dict[str, int]:
    """PROCESSED-MORE-THAN-GENERATED is fine, fewer is a failure: every expected (message_id,
    status) is on the status-changes topic at least once, and nothing the model never reached."""
    records = asyncio.run(read_topic(bootstrap, w.topic("status-changes")))
    milestones = [r for r in records if r["kind"] == "milestone"]
    got = {(r["message_id"], r["status"]) for r in milestones}
    missing = model.milestones - got
    assert not missing, f"{len(missing)} expected status changes never produced, e.g. {sorted(missing)[:20]}"
    extra = got - model.milestones
    assert not extra, f"status changes the model never reached: {sorted(extra)[:20]}"
    return {"topic_records": len(records), "topic_milestone_records": len(milestones),
            "topic_duplicate_records": len(records) - len({r["change_id"] for r in records}),
            "topic_duplicate_milestones": len(milestones) - len(got)}


# ---------------------------------------------------------------------------------------------
# Driving: publishing in the background, killing, restarting


class Publisher(threading.Thread):
    """Publishes records (at `rate` records/s) while the test kills and restarts workers."""

    def __init__(self, settings: Settings, records: list, rate: Optional[float] = None,
                 retry_until: Optional[float] = None) -> None:
        super().__init__(daemon=True)
        self.settings, self.records, self.rate, self.retry_until = settings, records, rate, retry_until
        self.error: Optional[BaseException] = None
        self.attempts = 0

    def run(self) -> None:
        while True:
            self.attempts += 1
            try:
                asyncio.run(simulate.publish(self.settings, simulate.Traffic(records=self.records),
                                             rate=self.rate, progress=False))
                return
            except Exception as exc:  # noqa: BLE001 - reported by finish()
                if self.retry_until is None or time.monotonic() > self.retry_until:
                    self.error = exc
                    return
                # The broker is not answering yet: publish the whole chunk again (duplicates are
                # part of the traffic the engine must fold anyway).
                time.sleep(1)

    def finish(self, timeout: float = 120) -> None:
        self.join(timeout)
        assert not self.is_alive(), "publishing did not finish"
        if self.error is not None:
            raise self.error


def chunks(records: list, n: int) -> list[list]:
    size = -(-len(records) // n)
    return [records[i:i + size] for i in range(0, len(records), size)]


def engine_counters(w: Worker) -> dict[str, float]:
    """This incarnation's engine and sink counters (evidence of where a kill landed)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=3) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for name in ("engine_events_total", "status_changes_total", "clickhouse_rows_total"):
        full = f"sendtrack_{name}"
        out[name] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith(full + "{") or line.startswith(full + " "))
    return out


def sigkill(w: Worker) -> None:
    alive(w)
    w.stop(signal.SIGKILL)
    w.log.close()


def new_worker(tmp: Path, name: str, **settings: Any) -> Worker:
    return Worker(tmp, name, **{**WORKER_SETTINGS, **settings})


def same_app(b: Worker, a: Worker) -> None:
    """Make `b` a worker of `a`'s app: the same app id and topics, its own data dir and web port."""
    b.env["SENDTRACK_TOPIC_PREFIX"] = a.prefix
    b.env["SENDTRACK_APP_ID"] = a.env["SENDTRACK_APP_ID"]
    b.prefix = a.prefix


def wait_healthy(w: Worker, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    doc: Any = None
    while time.monotonic() < deadline:
        alive(w)
        try:
            doc = w.get("/health")
            if doc.get("status") == "ok":
                return
        except OSError as exc:
            doc = exc
        time.sleep(0.5)
    raise AssertionError(f"worker not healthy within {timeout} s (last {doc!r}): {w.tail()}")


async def _group_state(bootstrap: str, group: str) -> tuple[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (resp,) = await admin.describe_consumer_groups([group])
        (desc,) = resp.to_object()["groups"]
        return desc["state"], len(desc["members"])
    finally:
        await admin.close()


def wait_group(bootstrap: str, group: str, members: int, timeout: float = 60) -> float:
    """Wait until the consumer group is Stable with `members` members; returns the seconds waited."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < timeout:
        last = asyncio.run(_group_state(bootstrap, group))
        if last == ("Stable", members):
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"group {group} not Stable with {members} member(s) within {timeout} s: {last}")


async def _lag(bootstrap: str, group: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        end = await consumer.end_offsets(tps)
        return {f"{tp.topic}/{tp.partition}": end[tp] - (committed[tp].offset if tp in committed else 0)
                for tp in tps}
    finally:
        await consumer.stop()
        await admin.close()


def wait_committed(bootstrap: str, group: str, topics: list[str], timeout: float = 60) -> float:
    """Wait until the group has committed every input record of `topics` (processed, outputs acked)."""
    started = time.monotonic()
    first: Any = None
    lag: Any = None
    while time.monotonic() - started < timeout:
        lag = asyncio.run(_lag(bootstrap, group, topics))
        first = first or lag
        if not any(lag.values()):
            return time.monotonic() - started
        time.sleep(0.5)
    stuck = {tp: (first[tp], n) for tp, n in lag.items() if n}
    raise AssertionError(f"group {group} still has uncommitted input after {timeout} s "
                         f"(partition: (uncommitted at the start, at the end)): {stuck}")


def wait_idle(w: Worker, quiet: float = 3, timeout: float = 60) -> float:
    """Wait until the worker's engine has applied nothing new for `quiet` s (it drained its input)."""
    started = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - started < timeout:
        alive(w)
        now = engine_counters(w).get("engine_events_total")
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"the worker never went idle within {timeout} s: {w.tail()}")


# ---------------------------------------------------------------------------------------------
# 1. SIGKILL during traffic


def test_sigkill_during_traffic_loses_and_double_counts_nothing(tmp_data):
    started = time.monotonic()
    rnd = random.Random(20260501)
    traffic = simulate.generate(3000, seed=41, run_id=f"kill-{os.getpid()}", malformed_rate=0, orphan_rate=0)
    model = build_model(traffic)
    w = new_worker(tmp_data, "kill")
    settings = Settings(kafka_broker=BROKER, topic_prefix=w.prefix, partitions=PARTITIONS)
    parts = chunks(traffic.records, 6)
    kill_in = {0, 1, 2, 3, 4}  # every chunk but the last has a kill
    kills: list[dict[str, Any]] = []
    w.start()
    try:
        for i, part in enumerate(parts):
            # ~2.5 s per chunk, so a kill 0-2 s after publishing starts lands while records arrive,
            # batches are applied, changelogs written and the sink inserts.
            pub = Publisher(settings, part, rate=len(part) / 2.5)
            pub.start()
            if i in kill_in:
                delay = rnd.uniform(0, 2)
                time.sleep(delay)
                counters = engine_counters(w)
                sigkill(w)
                kills.append({"chunk": i, "after_s": round(delay, 2), **counters})
                print(f"\nkill {len(kills)} in chunk {i}, {delay:.2f} s after publishing started; "
                      f"this incarnation had {counters}")
                t = time.monotonic()
                w.start()
                print(f"restarted and healthy in {time.monotonic() - t:.1f} s")
            pub.finish()
        assert len(kills) >= 3
        verify_views(BROKER, w, model, timeout=90)
        dups = raw_duplicates(w)
        log = verify_change_log(BROKER, w, model)
        print(f"\nkills: {len(kills)}; {len(traffic.records)} records, {model.n_messages} messages, "
              f"{len(model.milestones)} milestones, {len(model.engagement)} engagement events")
        print(f"raw duplicates: {dups}")
        print(f"status-changes topic: {log}")
        inputs = [w.topic("send-requests"), w.topic("provider-callbacks")]
        print(f"group committed all input {wait_committed(BROKER, w.env['SENDTRACK_APP_ID'], inputs, timeout=30):.1f} s "
              "after the check")
        print(f"test 1 took {time.monotonic() - started:.1f} s")
    finally:
        w.stop()


# ---------------------------------------------------------------------------------------------
# 2. A rebalance: two workers in one group, one killed and restarted


def test_rebalance_two_workers_one_killed_and_restarted(tmp_data):
    started = time.monotonic()
    rnd = random.Random(20260502)
    traffic = simulate.generate(3000, seed=42, run_id=f"reb-{os.getpid()}", malformed_rate=0, orphan_rate=0)
    model = build_model(traffic)
    a = new_worker(tmp_data, "rebA")
    b = new_worker(tmp_data, "rebB", sink_enabled=False)
    # The same group and topics; no sink (embedded ClickHouse is one per process: A's holds the views).
    same_app(b, a)
    settings = Settings(kafka_broker=BROKER, topic_prefix=a.prefix, partitions=PARTITIONS)
    parts = chunks(traffic.records, 5)
    group = a.env["SENDTRACK_APP_ID"]
    inputs = [a.topic("send-requests"), a.topic("provider-callbacks")]
    a.start()
    try:
        b.start()
        print(f"\ngroup Stable with A and B after {wait_group(BROKER, group, 2):.1f} s more")
        wait_healthy(a)
        # Chunk 0 with both members.
        pub = Publisher(settings, parts[0], rate=len(parts[0]) / 2.5)
        pub.start()
        pub.finish()
        # Chunk 1: B is killed while it applies its share.
        pub = Publisher(settings, parts[1], rate=len(parts[1]) / 2.5)
        pub.start()
        delay = rnd.uniform(0.3, 2)
        time.sleep(delay)
        counters = engine_counters(b)
        sigkill(b)
        print(f"B killed {delay:.2f} s into chunk 1; B's incarnation had {counters}")
        pub.finish()
        # Chunk 2 while B is dead: A takes B's partitions once B's session expires, and
        # processes B's unacknowledged records again.
        pub = Publisher(settings, parts[2], rate=len(parts[2]) / 2.5)
        pub.start()
        pub.finish()
        print(f"A alone in the group {wait_group(BROKER, group, 1):.1f} s after chunk 2 was published")
        print(f"A drained its input {wait_idle(a):.1f} s later; uncommitted input records: "
              f"{asyncio.run(_lag(BROKER, group, inputs))}")
        t = time.monotonic()
        b.start()
        wait_group(BROKER, group, 2)
        wait_healthy(a, timeout=60)
        print(f"B restarted, group Stable with both and A healthy in {time.monotonic() - t:.1f} s")
        for part in parts[3:]:
            pub = Publisher(settings, part, rate=len(part) / 2.5)
            pub.start()
            pub.finish()
        verify_views(BROKER, a, model, timeout=90)
        alive(a)
        alive(b)
        dups = raw_duplicates(a)
        log = verify_change_log(BROKER, a, model)
        print(f"raw duplicates: {dups}")
        print(f"status-changes topic: {log}")
        # Liveness of at-least-once: everything processed must eventually be committed, else every
        # restart or rebalance re-reads from the stale offset and the consumer lag never drains.
        print(f"group committed all input {wait_committed(BROKER, group, inputs, timeout=60):.1f} s after the check")
        print(f"test 2 took {time.monotonic() - started:.1f} s")
    finally:
        b.stop()
        a.stop()


# ---------------------------------------------------------------------------------------------
# 2b. The pipeline as two processes: an engine-only worker and a sink worker, each killed once


def test_engine_and_sink_in_two_processes_each_killed_mid_stream(tmp_data):
    """SENDTRACK_ENGINE_ENABLED=false: a worker of the sink and the readers only, beside an
    engine-only worker under the same app id. Each is SIGKILLed once while records flow and
    restarted; the views are exact, and the sink worker never joined the engine's group."""
    started = time.monotonic()
    rnd = random.Random(20261203)
    traffic = simulate.generate(3000, seed=11, run_id=f"split-{os.getpid()}", malformed_rate=0, orphan_rate=0)
    model = build_model(traffic)
    engine = new_worker(tmp_data, "splitE", sink_enabled=False)
    sink = new_worker(tmp_data, "splitS", engine_enabled=False)
    same_app(sink, engine)
    settings = Settings(kafka_broker=BROKER, topic_prefix=engine.prefix, partitions=PARTITIONS)
    parts = chunks(traffic.records, 4)
    group = engine.env["SENDTRACK_APP_ID"]
    engine.start()
    try:
        sink.start()
        health = sink.get("/health")
        assert health["engine"] == "off" and health["sink"] == "ready", health
        assert engine.get("/health")["clickhouse"] is None
        # Reads go to the sink's worker; the engine's says so rather than "not open yet" for ever.
        status, body = engine.request("GET", "/query", q="SELECT 1")
        assert status == 503 and "runs no sink" in body["error"], (status, body)
        wait_group(BROKER, group, 1)  # the engine alone: the sink worker has a group of its own
        pub = Publisher(settings, parts[0], rate=len(parts[0]) / 2.5)
        pub.start()
        pub.finish()
        for victim in (engine, sink):  # chunk 1: the engine is killed, chunk 2: the sink
            part = parts[1] if victim is engine else parts[2]
            pub = Publisher(settings, part, rate=len(part) / 2.5)
            pub.start()
            delay = rnd.uniform(0.3, 2)
            time.sleep(delay)
            counters = engine_counters(victim)
            sigkill(victim)
            print(f"\n{'engine' if victim is engine else 'sink'} worker killed {delay:.2f} s into a chunk; "
                  f"its incarnation had {counters}")
            pub.finish()
            victim.start()
        pub = Publisher(settings, parts[3], rate=len(parts[3]) / 2.5)
        pub.start()
        pub.finish()
        verify_views(BROKER, sink, model, timeout=90)
        alive(engine)
        assert asyncio.run(_group_state(BROKER, group))[1] == 1, "the sink worker joined the engine's group"
        # The sink worker opened no table's RocksDB; the engine worker no ClickHouse.
        tables = [p for p in (sink.data_dir / "faust").rglob("*") if p.name.startswith(
            ("messages", "held-index", "provider-", "messenger-"))] if (sink.data_dir / "faust").exists() else []
        assert not tables, tables
        assert (engine.data_dir / "faust").exists() and not (engine.data_dir / "clickhouse").exists()
        inputs = [engine.topic("send-requests"), engine.topic("provider-callbacks")]
        print(f"group committed all input {wait_committed(BROKER, group, inputs, timeout=30):.1f} s after the check")
        print(f"raw duplicates: {raw_duplicates(sink)}")
        print(f"status-changes topic: {verify_change_log(BROKER, sink, model)}")
        print(f"test 2b took {time.monotonic() - started:.1f} s")
    finally:
        sink.stop()
        engine.stop()


# ---------------------------------------------------------------------------------------------
# 3. The broker restarts mid-stream


def free_port_pair() -> int:
    """A port whose successor is free too (kafka.sh puts the controller on port + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def kafka_sh(command: str, env: dict[str, str]) -> str:
    out = subprocess.run(["bash", str(KAFKA_SH), command], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, f"kafka.sh {command} failed: {out.stdout}{out.stderr}"
    return out.stdout.strip()


def test_broker_restart_mid_stream(tmp_data):
    started = time.monotonic()
    port = free_port_pair()
    broker = f"localhost:{port}"
    kafka_home = tmp_data / "kafka"
    env = {**os.environ, "SENDTRACK_KAFKA_BROKER": broker, "KAFKA_HOME_DIR": str(kafka_home)}
    traffic = simulate.generate(2000, seed=43, run_id=f"bounce-{os.getpid()}", malformed_rate=0, orphan_rate=0)
    model = build_model(traffic)
    first, second = chunks(traffic.records, 2)
    w: Optional[Worker] = None
    try:
        t = time.monotonic()
        print("\n" + kafka_sh("up", env))
        print(f"private broker up in {time.monotonic() - t:.1f} s")
        w = new_worker(tmp_data, "bounce", kafka_broker=broker)
        settings = Settings(kafka_broker=broker, topic_prefix=w.prefix, partitions=PARTITIONS)
        w.start()
        pub = Publisher(settings, first, rate=len(first) / 2)
        pub.start()
        pub.finish()
        time.sleep(0.5)  # the worker is still applying and the sink inserting
        print(f"before the bounce the worker had {engine_counters(w)}")
        t = time.monotonic()
        print(kafka_sh("down", env))
        print(f"broker stopped in {time.monotonic() - t:.1f} s")
        time.sleep(5)
        alive(w)  # it may log errors while the broker is away; it must not exit
        t = time.monotonic()
        print(kafka_sh("up", env))
        print(f"broker up again in {time.monotonic() - t:.1f} s")
        pub = Publisher(settings, second, retry_until=time.monotonic() + 60)
        pub.start()
        pub.finish(timeout=120)
        print(f"second half published after {pub.attempts} attempt(s)")
        t = time.monotonic()
        verify_views(broker, w, model, timeout=120)
        print(f"views equal the model {time.monotonic() - t:.1f} s after the second half was published")
        alive(w)  # it recovered by itself, without a restart
        dups = raw_duplicates(w)
        log = verify_change_log(broker, w, model)
        print(f"raw duplicates: {dups}")
        print(f"status-changes topic: {log}")
        inputs = [w.topic("send-requests"), w.topic("provider-callbacks")]
        print(f"group committed all input {wait_committed(broker, w.env['SENDTRACK_APP_ID'], inputs, timeout=30):.1f} s "
              "after the check")
        print(f"test 3 took {time.monotonic() - started:.1f} s")
    except BaseException:
        if w is not None:
            print(f"--- worker log tail ---\n{w.tail(60)}")
        server_log = kafka_home / str(port) / "logs" / "server.log"
        if server_log.exists():
            print("--- broker server.log tail ---\n" + "\n".join(
                server_log.read_text(errors="replace").splitlines()[-20:]))
        raise
    finally:
        if w is not None:
            w.stop()
        subprocess.run(["bash", str(KAFKA_SH), "down"], env=env, cwd=ROOT, capture_output=True, timeout=120)


# ---------------------------------------------------------------------------------------------
# 4. Local state lost mid-stream: rebuilt from the changelogs (bulk), the same bytes, views exact


def table_state(data_dir: Path) -> dict[str, dict[bytes, bytes]]:
    """Every key and value of every table partition's RocksDB under a stopped worker's data dir."""
    out: dict[str, dict[bytes, bytes]] = {}
    for db in sorted((data_dir / "faust").rglob("*.db")):
        options = rocksdict.Options(raw_mode=True)
        rdict = rocksdict.Rdict(str(db), options=options, access_type=rocksdict.AccessType.read_only())
        try:
            out[db.name] = dict(rdict.items())
        finally:
            rdict.close()
    return out


def test_state_wiped_mid_stream_is_restored_from_the_changelogs_and_views_stay_exact(tmp_data):
    """A worker that loses its table state (the RocksDB directory deleted) rebuilds it from the
    changelogs through the adapter's bulk restore: the same keys and values, byte for byte, as
    before the loss. It then goes on exactly: callbacks that arrive afterwards (half of them, many
    naming only the provider's id) find their requests, mappings and milestones; none applies twice."""
    traffic = simulate.generate(3000, seed=44, run_id=f"wipe-{os.getpid()}", malformed_rate=0, orphan_rate=0)
    model = build_model(traffic)
    requests = [r for r in traffic.records if r[0] == "send-requests"]
    callbacks = [r for r in traffic.records if r[0] == "provider-callbacks"]
    before, after = requests + callbacks[:len(callbacks) // 2], callbacks[len(callbacks) // 2:]
    w = new_worker(tmp_data, "wipe")
    settings = Settings(kafka_broker=BROKER, topic_prefix=w.prefix, partitions=PARTITIONS)
    w.start()
    try:
        Publisher(settings, before).run()
        wait_idle(w)
        w.stop()
        state = table_state(w.data_dir)
        assert sum(map(len, state.values())) > len(requests), "the tables hold less than one entry per request"
        shutil.rmtree(w.data_dir / "faust")
        started = time.monotonic()
        w.start()
        print(f"restored and healthy in {time.monotonic() - started:.1f} s")
        restored = w.metrics().get("sendtrack_state_restored_records_total", 0.0)
        assert restored >= len(requests), f"the changelogs were not restored in bulk ({restored} records)"
        w.stop()
        again = table_state(w.data_dir)
        assert again.keys() == state.keys()
        for name in state:
            lost = {k for k in state[name] if k not in again[name]}
            changed = {k for k in state[name].keys() & again[name].keys() if state[name][k] != again[name][k]}
            assert not lost and not changed and again[name].keys() == state[name].keys(), (
                f"{name}: {len(lost)} keys lost, {len(changed)} changed, "
                f"{len(again[name].keys() - state[name].keys())} new; e.g. {sorted(lost | changed)[:5]}")
        w.start()
        # The rest of the callbacks, and a replay of some already applied (a producer's retry).
        Publisher(settings, after + callbacks[:500]).run()
        verify_views(BROKER, w, model, timeout=90)
        print(f"raw duplicates: {raw_duplicates(w)}; status-changes topic: {verify_change_log(BROKER, w, model)}")
    finally:
        w.stop()

"""The floor of the engine's design on this machine: what a Python consume -> state -> produce loop
reaches with no Faust, no sink and no ClickHouse, against the same-run passthrough (issue 19).

The engine applies each input record with one RocksDB read, its status rules, the status changes
produced, the state written back (a changelog record, then RocksDB) and the input's offset
committed. This bench runs that shape on plain aiokafka and rocksdict (in its own process), over the
same simulated workload `make bench` publishes (fresh topics), in four loops one after the other:

  passthrough  consume -> produce each record (bench/run.py's baseline);
  io           the engine's Kafka and RocksDB work without its rules: per record the value decoded,
               the state read, decoded, changed, encoded, one status-change-sized record produced;
               per batch the changelog records (one per key written), one produce round per
               (topic, partition) with aiokafka's batch builder (as agents/faust_adapter.produce),
               one RocksDB write batch per partition, the offsets committed;
  rules        the same with the engine's real validation and status rules (schemas/validate.py,
               sendtrack/status.py) in place of the made-up change, each message's state on the
               partition that owns it. A callback naming only the provider's id (no key: any
               partition) is resolved through a dict and applied on its message's partition, where
               the engine routes it through Kafka; one whose mapping comes later is dropped (counted
               as `unresolved`), where the engine holds it. So this is an upper bound for an engine
               with these rules, not a runtime with the engine's guarantees;
  engine       the real engine (a worker with SENDTRACK_SINK_ENABLED=false: Faust, its tables, the
               routing and the provider-id side, no sink and no ClickHouse) on the same topics as an
               app of its own, measured as bench/run.py's --engine-alone: its rate once warm and its
               CPU over the whole run; and the CPU of each of its threads over --profile-seconds from
               SAMPLE_DELAY s after it starts (`threads.total` compares with the loops' CPU), with
               py-spy over that window if --profile is given.

Each loop prints records/s, its ratio to the passthrough and its CPU seconds per million input
records (this process only; the broker's share is printed apart from /proc).

    make bench-floor BENCH_ARGS="--messages 300000 [--profile engine.speedscope.json]"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import threading
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rocksdict import Options, Rdict, WriteBatch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))
from run import BROKER, baseline, delete_topics, engine_alone, log, publish_workload, recorded_settings  # noqa: E402
from schemas.models import Invalid, SendRequest  # noqa: E402
from schemas.validate import parse_callback, parse_send_request  # noqa: E402
from sendtrack import state as state_mod, status  # noqa: E402
from sendtrack.partitions import partition as key_partition  # noqa: E402
from sendtrack.settings import Settings  # noqa: E402
from sendtrack.topics import ensure_topics  # noqa: E402

BATCH = 2000  # records per fetch, as SENDTRACK_ENGINE_BATCH_EVENTS
SAMPLE_DELAY = 20  # seconds after the engine's worker appears before its threads are sampled (start-up, warm-up)

# A status change as the engine encodes it (sendtrack/status.py, StatusChange): the io loop
# produces one of this size per input record, the real engine 0.93 per input in the 5 M run.
CHANGE_TEMPLATE = {
    "change_id": "0" * 32, "kind": "milestone", "message_id": "", "status": "delivered",
    "previous_status": "accepted", "current_status": "delivered", "inferred": False,
    "occurred_at": 0, "recorded_at": 0, "action": "email", "provider": "sendgrid",
    "customer_id": "customer-000000", "recipient": "", "flow_id": "flow-00", "campaign_id": "campaign-00",
    "step_id": "step-00", "requested_at": 0, "reason_code": "", "reason": "", "bounce_type": "",
    "reason_at": 0, "event_id": "", "url": "", "is_machine": False, "workspace_id": "",
}


def cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_cpu_seconds() -> float:
    """CPU seconds of the Kafka broker's JVM so far (0 when it is not found on this machine)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"kafka.Kafka" not in cmd and b"kafka-server" not in cmd:
                continue
            return cpu_seconds(Path(f"/proc/{pid}/stat"))
        except OSError:
            continue
    return 0.0


class Loop:
    """One consume -> state -> produce loop over the input topics, applying `apply` to each record."""

    def __init__(self, settings: Settings, name: str, data: Path) -> None:
        self.settings = settings
        self.name = name
        self.changes_topic = settings.topic(f"floor-{name}-changes")
        self.changelog_topic = settings.topic(f"floor-{name}-changelog")
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self.dbs = [Rdict(str(data / f"{name}-{p}"), options) for p in range(settings.partitions)]
        self.pids: dict[str, str] = {}
        self.changes = 0
        self.refused = 0
        self.unresolved = 0  # callbacks naming only a provider id not mapped yet (the engine holds them)
        # What the fetch being applied stages, per partition: records to produce, state writes.
        self.out: dict[int, list[tuple[bytes, bytes]]] = {}
        self.writes: dict[int, dict[bytes, bytes]] = {}

    def apply_fetch(self, fetched: Iterable[tuple[str, int, list]], apply: Callable, now: int) -> int:
        """Apply every record of one fetch ((topic, partition, records with .key and .value), in
        offset order per partition); returns how many. What it stages is in `out` and `writes`."""
        self.out, self.writes = {}, {}
        n = 0
        for topic, partition, recs in fetched:
            for r in recs:
                apply(self, topic, partition, r.key, r.value, now)
            n += len(recs)
        return n

    def write_states(self) -> None:
        """The fetch's state writes, one RocksDB write batch per partition (after its records are produced)."""
        for partition, staged in self.writes.items():
            batch = WriteBatch(raw_mode=True)
            for k, v in staged.items():
                batch.put(k, v)
            self.dbs[partition].write(batch)

    def state(self, partition: int, key: bytes) -> Optional[bytes]:
        """A state as this fetch left it, else as the partition's RocksDB holds it."""
        raw = self.writes.get(partition, {}).get(key)
        return raw if raw is not None else self.dbs[partition].get(key)

    def stage(self, partition: int, key: bytes, state: bytes, changes: list[bytes]) -> None:
        self.writes.setdefault(partition, {})[key] = state
        self.out.setdefault(partition, []).extend((key, change) for change in changes)

    async def topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
        await admin.start()
        try:
            await admin.create_topics([
                NewTopic(self.changes_topic, self.settings.partitions, 1),
                NewTopic(self.changelog_topic, self.settings.partitions, 1,
                         topic_configs={"cleanup.policy": "compact"}),
            ])
        finally:
            await admin.close()

    async def run(self, records: int, apply: Callable) -> dict:
        await self.topics()
        consumer = AIOKafkaConsumer(self.settings.topic("send-requests"), self.settings.topic("provider-callbacks"),
                                    bootstrap_servers=BROKER, group_id=f"bench-floor-{self.name}-{uuid.uuid4().hex[:6]}",
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    max_partition_fetch_bytes=2 * 1024 * 1024)
        producer = AIOKafkaProducer(bootstrap_servers=BROKER, linger_ms=5, max_batch_size=1024 * 1024, acks="all")
        await consumer.start()
        await producer.start()
        cpu0, broker0 = time.process_time(), broker_cpu_seconds()
        seen, produced, started = 0, 0, None
        now = int(time.time() * 1000)
        try:
            while seen < records:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
                if not fetched:
                    continue
                if started is None:
                    started = time.monotonic()
                seen += self.apply_fetch(((tp.topic, tp.partition, recs) for tp, recs in fetched.items()), apply, now)
                groups = {(self.changes_topic, partition): items for partition, items in self.out.items()}
                groups.update(((self.changelog_topic, partition), list(staged.items()))
                              for partition, staged in self.writes.items())
                produced += sum(len(items) for items in groups.values())
                await produce(producer, groups)
                self.write_states()
                await consumer.commit()
            elapsed = time.monotonic() - started
            cpu1, broker1 = time.process_time(), broker_cpu_seconds()
        finally:
            await consumer.stop()
            await producer.stop()
            for db in self.dbs:
                db.close()
        return {"records": seen, "seconds": round(elapsed, 2), "records_per_s": round(seen / elapsed),
                "produced_per_input": round(produced / seen, 3),
                "cpu_s_per_million": round((cpu1 - cpu0) / seen * 1e6, 1),
                "broker_cpu_s_per_million": round((broker1 - broker0) / seen * 1e6, 1),
                "status_changes": self.changes, "refused": self.refused, "unresolved": self.unresolved}


async def produce(producer: AIOKafkaProducer, groups: dict[tuple[str, int], list]) -> None:
    """One produce round, one aiokafka batch per (topic, partition), as agents/faust_adapter.produce."""
    futures = []
    for (topic, partition), items in groups.items():
        batch = producer.create_batch()
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*futures)


def apply_io(loop: Loop, topic: str, partition: int, key: Optional[bytes], value: bytes, now: int) -> None:
    """The engine's Kafka and RocksDB work for one record, with a made-up state change."""
    doc = orjson.loads(value)
    mid = (doc.get("message_id") or doc.get("provider_message_id") or "").encode() or (key or b"")
    raw = loop.state(partition, mid)
    state = orjson.loads(raw) if raw is not None else {"req": None, "ms": {}, "ev": [], "held": []}
    state["ms"][doc.get("status") or "sent"] = [doc.get("occurred_at") or now, False, doc.get("event_id", "")]
    state["ev"].append(doc.get("event_id", ""))
    change = dict(CHANGE_TEMPLATE, message_id=mid.decode(), recorded_at=now)
    loop.stage(partition, mid, orjson.dumps(state), [orjson.dumps(change)])
    loop.changes += 1


def apply_rules(loop: Loop, topic: str, partition: int, key: Optional[bytes], value: bytes, now: int) -> None:
    """The engine's validation and status rules for one record, with its state in RocksDB on the
    partition that owns its message. Producers key requests and callbacks by message id, so that is
    the partition the record came from; a callback naming only the provider's id came with no key
    (any partition): its message's partition is computed, where the engine routes it through Kafka."""
    if topic.endswith("send-requests"):
        rec = parse_send_request(value, now_ms=now)
        if isinstance(rec, Invalid):
            loop.refused += 1
            return
        message_id = rec.message_id
    else:
        rec = parse_callback(value, now_ms=now)
        if isinstance(rec, Invalid):
            loop.refused += 1
            return
        message_id = rec.message_id
        if message_id is None:
            message_id = loop.pids.get(f"{rec.provider}\x1f{rec.provider_message_id}")
            if message_id is None:
                loop.unresolved += 1
                return
        elif rec.provider and rec.provider_message_id:
            loop.pids.setdefault(f"{rec.provider}\x1f{rec.provider_message_id}", message_id)
    mid = message_id.encode()
    if key != mid:
        partition = key_partition(mid, len(loop.dbs))
    raw = loop.state(partition, mid)
    state = orjson.loads(raw) if raw is not None else status.new_state()
    if isinstance(rec, SendRequest):
        outcome = status.apply_request(state, rec, now)
    else:
        outcome = status.apply_callback(state, rec, now, origin=[topic, 0, 0])
    loop.changes += len(outcome.changes)
    state_mod.mark_applied(state, topic, 0, now)
    loop.stage(partition, mid, orjson.dumps(state), [orjson.dumps(change) for change in outcome.changes])


async def run_engine(run: str, records: int, data: Path, profile: Optional[Path], seconds: int) -> dict:
    """The real engine on the run's topics (bench/run.py's engine_alone), its threads' CPU sampled
    over a window from SAMPLE_DELAY s after it starts (Sampler), and py-spied meanwhile if asked."""
    env = {"SENDTRACK_KAFKA_BROKER": BROKER}
    sampler = Sampler(run, seconds, profile)
    sampler.start()
    broker0 = broker_cpu_seconds()
    try:
        alone = engine_alone(env, f"{run}.", data, records, timeout=3600)
        broker = broker_cpu_seconds() - broker0
    finally:
        sampler.join(timeout=sampler.longest)
    steady = alone["steady"].get("records_per_s") or round(records / alone["seconds"])
    # The run's topics: its inputs and outputs (`run.*`) and the engine's changelogs (`run-*`).
    topics = await topic_records(run)
    produced = {t: n for t, n in topics.items()
                if not t.endswith((".send-requests", ".provider-callbacks", ".bench-passthrough")) and ".floor-" not in t}
    return {"produced_per_input": round(sum(produced.values()) / records, 3),
            "records_by_topic": {t[len(run) + 1:]: n for t, n in sorted(produced.items()) if n},
            "records": records, "records_per_s": steady, "cpu_s_per_million": alone["cpu_s_per_million"],
            "broker_cpu_s_per_million": round(broker / records * 1e6, 1), "peak_rss_mb": alone["peak_rss_mb"],
            "steady": alone["steady"], "threads": sampler.result}


async def topic_records(prefix: str) -> dict[str, int]:
    """Records written to each topic whose name starts with `prefix` (end minus start offsets)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=BROKER)
    await consumer.start()
    try:
        ends, starts = await consumer.end_offsets(tps), await consumer.beginning_offsets(tps)
    finally:
        await consumer.stop()
    out = dict.fromkeys(names, 0)
    for tp in tps:
        out[tp.topic] += ends[tp] - starts[tp]
    return out


class Sampler(threading.Thread):
    """Beside the engine's worker: finds its process (its environment names the run's app id), waits
    SAMPLE_DELAY seconds after finding it (past its start-up and warm-up), then for `seconds` takes
    the CPU of each of its threads (/proc/<pid>/task) and the input records it applied meanwhile (its
    /metrics), running py-spy over the same window when asked. `result` holds CPU microseconds per
    input record by thread: the main thread (the engine's batches, the event loop), the other Python
    threads (Faust's consumer thread, executors), RocksDB's, and the rest; `total`, their sum, is the
    engine's CPU per record once warm (its whole-run figure also counts start-up and the tail)."""

    FIND_SECONDS = 300

    def __init__(self, run: str, seconds: int, profile: Optional[Path]) -> None:
        super().__init__(daemon=True)
        self.run_id, self.seconds, self.profile = run, seconds, profile
        self.result: dict[str, Any] = {}

    @property
    def longest(self) -> float:
        """How long the sampling can take, at most."""
        return self.FIND_SECONDS + SAMPLE_DELAY + self.seconds + 60

    def run(self) -> None:
        try:
            self.result = self._sample()
        except (FileNotFoundError, ProcessLookupError, ConnectionError, urllib.error.URLError):
            self.result = {"error": f"the engine's worker ended before the sampling window did (it starts "
                                    f"{SAMPLE_DELAY} s after the worker and lasts {self.seconds} s): "
                                    f"use a longer backlog (--messages)"}
        except Exception as exc:  # the engine's own figures stand without it
            self.result = {"error": repr(exc)}

    def _find(self) -> tuple[int, int]:
        deadline = time.time() + self.FIND_SECONDS
        while time.time() < deadline:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    if (b"sendtrack.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()
                            and f"SENDTRACK_APP_ID={self.run_id}".encode() in environ):
                        port = next(v.split(b"=", 1)[1] for v in environ if v.startswith(b"SENDTRACK_WEB_PORT="))
                        return int(pid), int(port)
                except (OSError, StopIteration):
                    continue
            time.sleep(0.2)
        raise RuntimeError("the engine's worker was not found")

    @staticmethod
    def _threads(pid: int) -> dict[int, tuple[str, float]]:
        """tid -> (its group, its CPU seconds so far). A thread that ends within the window is not counted."""
        out: dict[int, tuple[str, float]] = {}
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                used = cpu_seconds(Path(f"/proc/{pid}/task/{tid}/stat"))
            except OSError:
                continue  # the thread ended meanwhile
            group = ("main" if int(tid) == pid else "python" if comm.startswith("python")
                     else "rocksdb" if comm.startswith("rocksdb") else "other")
            out[int(tid)] = (group, used)
        return out

    @staticmethod
    def _applied(port: int) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("sendtrack_records_in_total"))

    def _sample(self) -> dict[str, Any]:
        spy = Path(sys.executable).parent / "py-spy"
        if self.profile is not None and not spy.exists():
            return {"error": f"--profile needs py-spy ({spy} not found: pip install py-spy)"}
        pid, port = self._find()
        time.sleep(SAMPLE_DELAY)
        cpu0, n0, t0 = self._threads(pid), self._applied(port), time.monotonic()
        problem = None
        if self.profile is not None:
            done = subprocess.run([str(spy), "record", "-p", str(pid), "-d", str(self.seconds), "-r", "50",
                                   "-f", "speedscope", "-o", str(self.profile), "--threads"],
                                  check=False, capture_output=True, text=True)
            if done.returncode != 0:
                problem = f"py-spy failed ({done.returncode}): {done.stderr.strip()[-300:]}"
        else:
            time.sleep(self.seconds)
        cpu1, n1, t1 = self._threads(pid), self._applied(port), time.monotonic()
        applied = n1 - n0
        if applied <= 0:
            return {"error": "no input applied in the window (the backlog ended before it)"}
        # A thread's CPU in the window: what it used since the window began, or since it started.
        used: dict[str, float] = {}
        for tid, (group, seconds) in cpu1.items():
            used[group] = used.get(group, 0.0) + seconds - cpu0.get(tid, (group, 0.0))[1]
        used["total"] = sum(used.values())
        result = {"window_s": round(t1 - t0, 1), "records": int(applied), "records_per_s": round(applied / (t1 - t0)),
                  "cpu_us_per_record": {g: round(v / applied * 1e6, 1) for g, v in sorted(used.items())},
                  "cores": {g: round(v / (t1 - t0), 2) for g, v in sorted(used.items())}}
        if problem:
            result["profile_error"] = problem
        return result


# How the main thread's py-spy samples are grouped (docs/performance.md, "Twentieth session"): a sample
# under a record's application goes to the innermost sendtrack part it is in; one under the commit
# (Outbox._commit) to the commit; the rest by the first frame, innermost first, that names a part.
_ENGINE_FILES = ("engine.py", "faust_adapter.py", "partitions.py", "metrics.py", "state.py", "provider_ids.py",
                 "watermarks.py", "batches.py", "models.py", "dead_letters.py", "transaction.py")


def _group(stack: list[tuple[str, str]]) -> str:
    """The part of the engine a sample of the main thread is in (stack: (function, file), outermost
    first). A function is named as py-spy 0.3 names it (`Outbox.get`) or 0.4 (`get`): by its last part."""
    stack = [(name.rsplit(".", 1)[-1], path) for name, path in stack]
    names = {name for name, _ in stack}
    if "process" in names or "apply_by_provider_id" in names:
        for name, path in reversed(stack):
            if path in ("status.py", "validate.py"):
                return {"status.py": "status rules", "validate.py": "validation"}[path]
            if path == "transaction.py":
                return "RocksDB reads (Outbox.get)" if name == "get" else "staging (Outbox)"
            if name == "emit_changes":
                return "status changes encoded"
            if path in _ENGINE_FILES:
                return "the rest of the engine's own code"
        return "the rest of the engine's own code"
    if "_commit" in names:
        return "the commit"
    for name, path in reversed(stack):
        if path in ("engine.py", "transaction.py", "partitions.py", "metrics.py"):
            return "the rest of the engine's own code"  # the batch loop, savepoints, placing a batch's keys
        if path == "faust_adapter.py":
            return "the adapter"
    if any("aiokafka" in path or path in ("selectors.py", "base_events.py", "events.py", "selector_events.py")
           for _, path in stack):
        return "aiokafka and the event loop"
    return "other"


def summarize(profile: Path) -> dict[str, float]:
    """Share of the main thread's samples per part (a py-spy speedscope file recorded with --threads)."""
    doc = json.loads(profile.read_text())
    frames = doc["shared"]["frames"]
    main = max(doc["profiles"], key=lambda p: len(p["samples"]))
    counts: dict[str, int] = {}
    for sample in main["samples"]:
        stack = [(frames[i]["name"], Path(frames[i].get("file", "")).name) for i in sample]
        group = _group(stack)
        counts[group] = counts.get(group, 0) + 1
    total = len(main["samples"])
    return {group: round(100 * n / total, 1) for group, n in sorted(counts.items(), key=lambda kv: -kv[1])}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--out", type=Path, help="write the result as JSON here (default: bench/results/<run>.json)")
    parser.add_argument("--skip-engine", action="store_true", help="without the real engine's loop")
    parser.add_argument("--profile", type=Path, help="py-spy the real engine's loop into this file (speedscope)")
    parser.add_argument("--summarize", type=Path, metavar="SPEEDSCOPE",
                        help="only print the main thread's samples of a --profile file, grouped by part")
    parser.add_argument("--profile-seconds", type=int, default=30,
                        help="the window of the engine's thread sampling (and py-spy)")
    args = parser.parse_args()
    if args.summarize:
        for group, share in summarize(args.summarize).items():
            print(f"{share:5.1f}%  {group}")
        return 0
    run = f"floor-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    settings = Settings(kafka_broker=BROKER, topic_prefix=f"{run}.", partitions=Settings().partitions)
    await ensure_topics(settings)
    data = Path(tempfile.mkdtemp(prefix="sendtrack-floor-"))
    # Settings given to this process's environment reach the engine's worker too (bench/run.py's Worker).
    result: dict[str, Any] = {"run": run, "messages": args.messages, "settings": recorded_settings()}
    try:
        workload = await publish_workload(settings, args.messages)
        records = workload["records"]
        result["records"] = records
        log("passthrough")
        b0 = broker_cpu_seconds()
        result["passthrough"] = await baseline(settings, records)
        result["passthrough"]["broker_cpu_s_per_million"] = round((broker_cpu_seconds() - b0) / records * 1e6, 1)
        for name, apply in (("io", apply_io), ("rules", apply_rules)):
            log(f"{name} loop")
            result[name] = await Loop(settings, name, data).run(records, apply)
            result[name]["ratio"] = round(result[name]["records_per_s"] / result["passthrough"]["records_per_s"], 3)
        if not args.skip_engine:
            log("engine loop: a worker without the sink")
            result["engine"] = await run_engine(run, records, data / "engine", args.profile, args.profile_seconds)
            result["engine"]["ratio"] = round(result["engine"]["records_per_s"] / result["passthrough"]["records_per_s"], 3)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        await delete_topics(run)
    print(json.dumps(result, indent=2))
    for name in ("passthrough", "io", "rules", "engine"):
        r = result.get(name)
        if r:
            print(f"{name:12} {r['records_per_s']:>8,} records/s  ratio {r.get('ratio', 1.0):5}  "
                  f"CPU {r['cpu_s_per_million']:6.1f} s/M  broker {r['broker_cpu_s_per_million']:5.1f} s/M")
    out = args.out or ROOT / "bench" / "results" / f"{run}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"result: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

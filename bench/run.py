"""`make bench`: end-to-end throughput, freshness, CPU, memory, storage, inserts, and a same-run baseline.

Every figure is measured in this run on this machine against the real broker:
  1. a realistic workload (all twelve actions, ~30% requests / 70% callbacks, duplicates,
     reordering, provider-id-only callbacks) is published to fresh topics;
  2. baseline: a plain aiokafka consumer -> producer passthrough of the same input topics;
  3. sendtrack: a worker (embedded ClickHouse) processes the backlog; throughput counts input
     records fully reflected in the ClickHouse views;
  4. freshness: callbacks published at about half that throughput; p50/p99 from publication to
     the status being visible in ClickHouse;
  5. funnel query: `funnel_daily` for one campaign over 30 days, on a synthetic table of
     --funnel-messages messages in embedded ClickHouse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Optional

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sendtrack import simulate  # noqa: E402
from sendtrack.settings import Settings  # noqa: E402
from sendtrack.topics import ensure_topics  # noqa: E402

BROKER = os.environ.get("SENDTRACK_KAFKA_BROKER", "localhost:9092")


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- workload

async def publish_workload(settings: Settings, messages: int, chunk: int = 50_000) -> dict:
    """Publish `messages` simulated sends in chunks; returns counts the pipeline must reach."""
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, linger_ms=20, max_batch_size=1024 * 1024,
                                acks="all")
    await producer.start()
    records = milestones = 0
    started = time.monotonic()
    try:
        for i, start in enumerate(range(0, messages, chunk)):
            n = min(chunk, messages - start)
            traffic = simulate.generate(n, seed=1000 + i, run_id=f"b{i}", orphan_rate=0, malformed_rate=0)
            futures = [await producer.send(settings.topic(kind), key=key, value=value)
                       for kind, key, value in traffic.records]
            await asyncio.gather(*futures)
            records += len(traffic.records)
            milestones += sum(len(m.expected) for m in traffic.messages)
            log(f"published {start + n:,}/{messages:,} messages ({records:,} records, "
                f"{records / (time.monotonic() - started):,.0f} rec/s)")
    finally:
        await producer.stop()
    return {"messages": messages, "records": records, "milestones": milestones}


async def delete_topics(run: str) -> None:
    """Delete the run's topics (its inputs, outputs and changelogs: every name starts with `run.` or
    `run-`): a 5 M run leaves about 13 GB on the broker otherwise. Never raises: the results (and
    the error that ended a failed run) matter more than the cleanup."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith((f"{run}.", f"{run}-"))]
        failed = []
        if names:
            response = await admin.delete_topics(names)
            failed = [name for name, code, *_ in response.topic_error_codes if code]
        log(f"deleted {len(names) - len(failed)} of the run's {len(names)} topics"
            + (f"; not {', '.join(failed)}" if failed else ""))
    except Exception as exc:
        log(f"could not delete the run's topics ({exc!r}); they expire with the broker's retention")
    finally:
        await admin.close()


# --------------------------------------------------------------------------------------------- baseline

async def baseline(settings: Settings, records: int) -> dict:
    """A plain aiokafka consumer -> producer passthrough of the same input topics."""
    out_topic = settings.topic("bench-passthrough")
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(out_topic, settings.partitions, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(settings.topic("send-requests"), settings.topic("provider-callbacks"),
                                bootstrap_servers=BROKER, group_id=f"bench-baseline-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, linger_ms=5, max_batch_size=1024 * 1024)
    await consumer.start()
    await producer.start()
    cpu0 = time.process_time()
    seen, started = 0, None
    try:
        while seen < records:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if started is None and batch:
                started = time.monotonic()
            futures = []
            for tp, recs in batch.items():
                for r in recs:
                    futures.append(await producer.send(out_topic, key=r.key, value=r.value))
                seen += len(recs)
            await asyncio.gather(*futures)
            if batch:
                await consumer.commit()
        elapsed = time.monotonic() - started
    finally:
        await consumer.stop()
        await producer.stop()
    return {"records": seen, "seconds": round(elapsed, 2), "records_per_s": round(seen / elapsed),
            "cpu_s_per_million": round((time.process_time() - cpu0) / seen * 1e6, 1)}


# --------------------------------------------------------------------------------------------- worker

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    def __init__(self, settings_env: dict[str, str], data_dir: Path) -> None:
        self.env = {**os.environ, **settings_env}
        self.port = int(settings_env["SENDTRACK_WEB_PORT"])
        self.data_dir = data_dir
        self.proc: subprocess.Popen | None = None
        self.peak_rss = 0

    def start(self) -> None:
        self.log = open(self.data_dir / "worker.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "sendtrack.cli", "worker"], env=self.env, cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            # The worker's answer says why (a reader's limit, the statement's error): keep it in
            # the exception's message, which a run that ends on it prints.
            try:
                exc.body = exc.read().decode(errors="replace")[:300]
            except Exception:  # the answer's body is lost; the status is still the error
                exc.body = ""
            exc.msg = f"{exc.msg}: {exc.body}"
            raise

    def sql(self, q: str):
        return self.get("/query", q=q)["rows"]

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def applied(self, metrics: Optional[dict[str, float]] = None) -> float:
        """Input records the engine has applied (its records_in_total counters), from `metrics` if given."""
        return sum(v for k, v in (metrics or self.metrics()).items() if k.startswith("sendtrack_records_in_total"))

    def sample(self) -> int:
        """Update the peak RSS (VmHWM) of the worker process; return its current RSS (VmRSS), bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = 0
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        return rss

    def reset_peak(self) -> None:
        """Reset the kernel's high-water mark (VmHWM) to the current RSS (Linux clear_refs 5)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        self.peak_rss = 0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_healthy(self, timeout: float = 180, applied: Optional[list] = None) -> None:
        """Wait for /health; with `applied`, sample the engine's input count meanwhile (it starts on
        the backlog before the worker reports healthy: a quick run's backlog is mostly applied by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: the worker exited; see {self.data_dir / 'worker.log'}")
            try:
                if applied is not None:
                    count = self.applied()
                    applied.append((time.time(), count))
                if self.get("/health").get("status") == "ok":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2 if applied is not None else 0.5)
        raise SystemExit("bench: the worker did not become healthy")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Pair:
    """The pipeline as two processes (`--split`): an engine-only worker (SENDTRACK_SINK_ENABLED=false)
    and a worker of the sink, the readers and the alerts (SENDTRACK_ENGINE_ENABLED=false), under the
    same app id and topics. Reads as one Worker: SQL and health from the sink's, the input count
    from the engine's, counters summed, CPU summed, peak RSS the sum of the two processes' peaks
    (no less than the peak of their sum), each process's kept apart too."""

    def __init__(self, settings_env: dict[str, str], data_dir: Path) -> None:
        (data_dir / "sink").mkdir(parents=True, exist_ok=True)
        self.engine = Worker({**settings_env, "SENDTRACK_SINK_ENABLED": "false"}, data_dir)
        self.sink = Worker({**settings_env, "SENDTRACK_ENGINE_ENABLED": "false",
                            "SENDTRACK_DATA_DIR": str(data_dir / "sink"), "SENDTRACK_WEB_PORT": str(free_port())},
                           data_dir / "sink")
        self.data_dir = data_dir  # the engine's: its log has the slow batches, its faust/ the tables
        self.port = self.sink.port
        self.peaks: dict[str, dict[str, int]] = {}

    @property
    def peak_rss(self) -> int:
        """The sum of the two processes' peaks: at least the peak of their sum, maybe more."""
        return self.engine.peak_rss + self.sink.peak_rss

    def note_peaks(self, phase: str) -> None:
        """Keep each process's peak (MiB) in `phase` (the kernel's marks are reset between phases)."""
        seen = self.peaks.setdefault(phase, {"engine": 0, "sink": 0})
        for name, worker in (("engine", self.engine), ("sink", self.sink)):
            seen[name] = max(seen[name], round(worker.peak_rss / 2**20))

    def metrics_by_process(self) -> dict[str, dict[str, float]]:
        return {"engine": self.engine.metrics(), "sink": self.sink.metrics()}

    def start(self) -> None:
        self.engine.start()
        self.sink.start()

    def get(self, path: str, **params) -> dict:
        return self.sink.get(path, **params)

    def sql(self, q: str):
        return self.sink.sql(q)

    def metrics(self) -> dict[str, float]:
        out = dict(self.engine.metrics())
        for name, value in self.sink.metrics().items():
            out[name] = out.get(name, 0.0) + value
        return out

    def applied(self, metrics: Optional[dict[str, float]] = None) -> float:
        return self.engine.applied()  # only the engine counts input records

    def sample(self) -> int:
        return self.engine.sample() + self.sink.sample()

    def reset_peak(self) -> None:
        self.engine.reset_peak()
        self.sink.reset_peak()

    def cpu_seconds(self) -> float:
        return self.engine.cpu_seconds() + self.sink.cpu_seconds()

    def wait_healthy(self, timeout: float = 180, applied: Optional[list] = None) -> None:
        deadline = time.monotonic() + timeout
        self.engine.wait_healthy(timeout, applied)
        while True:  # the engine goes on meanwhile: keep sampling its input count
            try:
                self.sink.wait_healthy(timeout=0.5)
                return
            except SystemExit:
                if time.monotonic() > deadline or self.sink.proc.poll() is not None:
                    raise
            if applied is not None:
                applied.append((time.time(), self.engine.applied()))

    def stop(self) -> None:
        self.engine.stop()
        self.sink.stop()


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def pipeline(worker: Worker, expect: dict, timeout: float, progress: Optional[dict] = None) -> dict:
    """Throughput: from the engine's first status change until every milestone is in the ClickHouse
    views. The engine starts on the backlog before the worker reports healthy; its first change's
    `recorded_at` is when the work began. `progress` gets the figures known once every milestone is
    in (before the exact check), for a run that ends there."""
    started = time.monotonic()
    applied: list[tuple[float, float]] = []  # (time, input records the engine applied)
    worker.start()
    worker.wait_healthy(applied=applied)
    ready = time.monotonic()
    last_report, rows, done_wall, cpu = 0.0, 0, 0.0, 0.0
    pipeline_peak = check_peak = 0
    check_seconds = 0.0
    check_refusals: list[str] = []
    # (seconds since healthy, RSS MiB, peak so far MiB, input records applied, alert evaluations,
    # active parts of messages_by_workspace and of message_health, which the alerts' evaluation reads
    # with FINAL): where in the backlog the peak is reached, and what the worker was doing then.
    timeline: list[tuple] = []
    parts = (-1, -1)
    while True:
        # Milestone rows of the raw table (it also holds request rows, status ''). The deduplicating
        # view (FINAL) and the funnel (uniqExact states of every message) are checked only once
        # this count is reached: polled every 0.5 s over millions of rows, they were the heaviest
        # queries in the worker's process. Their memory is measured apart: the kernel's high-water
        # mark is reset before and after each check.
        rows = worker.sql("SELECT count() FROM sendtrack.status_changes_raw WHERE status != ''")[0][0]
        rss = worker.sample()
        metrics = worker.metrics()
        count = worker.applied(metrics)
        applied.append((time.time(), count))
        pipeline_peak = max(pipeline_peak, worker.peak_rss)
        if len(timeline) % 10 == 0:  # a FINAL's memory grows with the parts it reads
            try:
                parts = tuple(worker.sql(
                    "SELECT countIf(table = 'messages_by_workspace'), countIf(table = 'message_health') "
                    "FROM system.parts WHERE database = 'sendtrack' AND active")[0])
            except (OSError, ValueError, KeyError, IndexError):
                parts = (-1, -1)
        timeline.append((round(time.monotonic() - ready, 1), round(rss / 2**20), round(worker.peak_rss / 2**20),
                         int(count), int(metrics.get("sendtrack_alert_evaluation_seconds_count", 0)), *parts))
        if isinstance(worker, Pair) and rows < expect["milestones"]:
            worker.note_peaks("backlog")
        now = time.monotonic()
        if now - last_report > 5:
            log(f"pipeline: {rows:,}/{expect['milestones']:,} milestones in ClickHouse "
                f"({rows / max(now - ready, 1e-9):,.0f}/s)")
            last_report = now
        if rows >= expect["milestones"]:
            if not done_wall:
                done_wall, cpu = time.time(), worker.cpu_seconds()
                if progress is not None:
                    progress.update({"milestones_in_at": done_wall, "seconds_since_healthy": round(now - ready, 1),
                                     # the worker's start included: a little under the run's rate
                                     "records_per_s_from_start": round(expect["records"] / (now - started)),
                                     "cpu_s_per_million": round(cpu / expect["records"] * 1e6, 1),
                                     "peak_rss_mb": round(pipeline_peak / 2**20)})
            worker.reset_peak()
            check_started = time.monotonic()
            try:
                exact = exact_counts(worker)
            except urllib.error.HTTPError as exc:
                # The worker refused the check as it refuses any reader's statement past its limits
                # (SENDTRACK_QUERY_MAX_SECONDS, the readers' memory): right after a backlog its
                # FINAL reads many unmerged parts. The milestones are in; the check waits for merges.
                detail = getattr(exc, "body", "")
                check_refusals.append(detail)
                log(f"pipeline: the check query was refused ({exc.code}: {detail}); again in 15 s")
                if len(check_refusals) >= 20:
                    raise
                time.sleep(15)
                continue
            check_seconds = time.monotonic() - check_started
            worker.sample()
            check_peak = max(check_peak, worker.peak_rss)
            # The query's memory stays resident until the worker's next malloc_trim (every 2 s):
            # reset the mark only once it is gone, or the reset keeps the query's peak.
            time.sleep(3)
            worker.reset_peak()
            if exact == (expect["milestones"],) * 2:
                break
            log(f"pipeline: deduplicated view and funnel at {exact[0]:,} and {exact[1]:,}")
            done_wall = 0.0
        if now - ready > timeout:
            raise SystemExit(f"bench: pipeline did not finish within {timeout} s ({rows:,} rows)")
        time.sleep(0.5)
    first_ms = worker.sql("SELECT toUnixTimestamp64Milli(min(recorded_at)) FROM sendtrack.status_changes_raw")[0][0]
    elapsed = done_wall - first_ms / 1000
    steady = steady_rate(applied, expect["records"], first_ms / 1000, done_wall)
    metrics = worker.metrics()
    inserts = {k.split('table="')[1].rstrip('"}'): v for k, v in metrics.items()
               if k.startswith("sendtrack_clickhouse_inserts_total")}
    return {
        "input_records": expect["records"], "seconds": round(elapsed, 2),
        "startup_seconds": round(ready - started, 2),
        "records_per_s": round(expect["records"] / elapsed),
        "steady": steady,
        # The process's whole CPU time, its start (imports, opening chDB) included.
        "cpu_s_per_million": round(cpu / expect["records"] * 1e6, 1),
        "cpu_utilisation_cores": round(cpu / elapsed, 2),
        "inserts_per_s": {t: round(n / elapsed, 2) for t, n in inserts.items()},
        "worker_timings": timings({}, metrics),
        # Two processes: their histograms apart (the event loop's lag of each, not of both summed).
        **({"worker_timings_by_process": {name: timings({}, m) for name, m in worker.metrics_by_process().items()}}
           if isinstance(worker, Pair) else {}),
        "peak_rss_mb": round(pipeline_peak / 2**20),  # then the max with the freshness phase's
        "backlog_peak_rss_mb": round(pipeline_peak / 2**20),
        "check_query": {"seconds": round(check_seconds, 2), "peak_rss_mb": round(check_peak / 2**20),
                        "refused": check_refusals},
        "rss_timeline": {"columns": ["seconds", "rss_mb", "peak_mb", "records_applied", "alert_evaluations",
                                     "messages_by_workspace_parts", "message_health_parts"],
                         "rows": timeline[::max(1, len(timeline) // 200)]},
        "rows_per_insert": {t: round(metrics.get(f'sendtrack_clickhouse_rows_total{{table="{t}"}}', 0) / n)
                            for t, n in inserts.items() if n},
        "records_per_s_by_fifth": rate_by_fifth(timeline, expect["records"]),
    }


def rate_by_fifth(timeline: list, records: int) -> list[Optional[int]]:
    """The engine's rate in each fifth of the backlog (input records applied per second between the
    first and the last sample inside that fifth), from the timeline's rows (seconds first, records
    applied fourth): how the rate moves as the state grows. None for a fifth with fewer than two
    samples in it (a short run)."""
    done = next((i for i, row in enumerate(timeline) if row[3] >= records), len(timeline) - 1)
    timeline = timeline[:done + 1]  # not the waits after the last record (for the views, the checks)
    rates: list[Optional[int]] = []
    for k in range(5):
        low, high = records * k / 5, records * (k + 1) / 5
        inside = [(row[0], row[3]) for row in timeline if low <= row[3] <= high]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            rates.append(None)
            continue
        rates.append(round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])))
    return rates


# The freshness phase reads its callbacks back in parts of at most this many (a reader's answer
# holds at most SENDTRACK_QUERY_MAX_RESULT_ROWS rows).
FRESH_ROWS_PER_QUERY = 50_000


async def freshness(worker: Worker, settings: Settings, rate: float, seconds: float) -> dict:
    """Publish requests then callbacks at `rate` records/s; publication -> visible in ClickHouse."""
    n = int(rate * seconds / 2)
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, linger_ms=5, acks="all")
    await producer.start()
    run = uuid.uuid4().hex[:6]
    before = worker.metrics()
    before_each = worker.metrics_by_process() if isinstance(worker, Pair) else {}
    log_from = (worker.data_dir / "worker.log").stat().st_size
    published: dict[str, float] = {}
    now_ms = int(time.time() * 1000)
    started, started_wall = time.monotonic(), time.time()
    sampler = BusySampler(worker)
    sampler.start()
    try:
        for i in range(2 * n):
            mid = f"fresh-{run}-{i % n}"
            if i < n:
                value = {"message_id": mid, "action": "sms", "customer_id": "c", "requested_at": now_ms,
                         "provider": "esms", "campaign_id": "fresh"}
                await producer.send(settings.topic("send-requests"), key=mid.encode(), value=orjson.dumps(value))
            else:
                published[mid] = time.time()
                value = {"event_id": f"{mid}-d", "status": "delivered", "occurred_at": now_ms + 1000,
                         "message_id": mid}
                await producer.send(settings.topic("provider-callbacks"), key=mid.encode(), value=orjson.dumps(value))
            ahead = (i + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = worker.sql(f"SELECT count() FROM sendtrack.status_changes_raw WHERE message_id LIKE 'fresh-{run}-%' "
                         "AND status = 'delivered'")[0][0]
        if got >= n:
            break
        time.sleep(1)
    sampler.stop()
    # In parts (FRESH_ROWS_PER_QUERY): a fast run has more callbacks than one answer may hold (100,000).
    parts = -(-len(published) // FRESH_ROWS_PER_QUERY)
    rows = [row for part in range(parts) for row in worker.sql(
        f"SELECT message_id, toUnixTimestamp64Milli(min(_inserted_at)), "
        f"toUnixTimestamp64Milli(min(recorded_at)) FROM sendtrack.status_changes_raw "
        f"WHERE message_id LIKE 'fresh-{run}-%' AND status = 'delivered' "
        f"AND cityHash64(message_id) % {parts} = {part} GROUP BY message_id")]
    lat = sorted(ms / 1000 - published[mid] for mid, ms, _ in rows)
    # The two halves: publication -> the engine records the change (recorded_at), then -> ClickHouse.
    engine = sorted(rec / 1000 - published[mid] for mid, _, rec in rows)
    sink_ = sorted((ms - rec) / 1000 for _, ms, rec in rows)
    q = statistics.quantiles(lat, n=100)
    qe, qs = statistics.quantiles(engine, n=100), statistics.quantiles(sink_, n=100)
    return {"rate_records_per_s": round(rate), "callbacks": len(lat), "p50_s": round(q[49], 3),
            "p99_s": round(q[98], 3), "max_s": round(lat[-1], 3),
            "to_engine": {"p50_s": round(qe[49], 3), "p99_s": round(qe[98], 3), "max_s": round(engine[-1], 3)},
            "engine_to_clickhouse": {"p50_s": round(qs[49], 3), "p99_s": round(qs[98], 3),
                                     "max_s": round(sink_[-1], 3)},
            "worker_timings": timings(before, after := worker.metrics()),
            # The sink's batches by what ended them (agents/sink.py, _collect).
            "sink_batches": {k.split('ended="')[1].rstrip('"}'): int(v - before.get(k, 0.0))
                             for k, v in after.items() if k.startswith("sendtrack_sink_batches_total{")},
            **({"worker_timings_by_process": {name: timings(before_each[name], m)
                                              for name, m in worker.metrics_by_process().items()}}
               if isinstance(worker, Pair) else {}),
            "slow_engine_batches": slow_batches(worker.data_dir / "worker.log", log_from),
            "alert_evaluations": sampler.overlap(
                "alert_evaluation_seconds", [(published[mid], ms / 1000) for mid, ms, _ in rows]),
            "by_second": sampler.by_second(started_wall, [(published[mid], ms / 1000, rec / 1000)
                                                          for mid, ms, rec in rows])}


class BusySampler(threading.Thread):
    """Samples the worker's duration histograms every SAMPLE_SECONDS while a phase runs, so that
    what a callback waited for can be set beside what the worker was doing meanwhile: each
    observation of a histogram (an alert evaluation, an insert) ended between two samples and took
    what its sum grew by, so it ran within [previous sample - duration, sample] (see intervals)."""

    SAMPLE_SECONDS = 0.25

    def __init__(self, worker: Worker) -> None:
        super().__init__(daemon=True)
        self.worker = worker
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        self.sample()  # at the phase's start, so that its first quarter second counts too
        while not self.done.wait(self.SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        try:
            metrics = self.worker.metrics()
        except Exception:  # noqa: BLE001 - a sample missed (the worker busy, a partial answer): the next one covers it
            return
        # Stamped once the worker answered: a slow answer (a busy worker) would otherwise put what it
        # reports in an earlier second than the one it ended in.
        self.samples.append((time.time(), metrics))

    def stop(self) -> None:
        self.done.set()
        self.join()

    def intervals(self, name: str) -> list[tuple[float, float]]:
        """(start, end) wall times within which each observation of histogram `name` ran: it ended
        between two samples and lasted what the sum grew by, so it lies within [previous sample -
        duration, sample] (several ending between the same two samples: their summed duration)."""
        out = []
        key_n, key_s = f"sendtrack_{name}_count", f"sendtrack_{name}_sum"
        for (t0, before), (t, after) in zip(self.samples, self.samples[1:]):
            if after.get(key_n, 0.0) > before.get(key_n, 0.0):
                out.append((t0 - (after.get(key_s, 0.0) - before.get(key_s, 0.0)), t))
        return out

    def overlap(self, name: str, waits: list[tuple[float, float]]) -> dict:
        """How the waits (published, visible) that overlapped an observation of `name` compare with
        the others: their share and their p99."""
        spans = self.intervals(name)
        hit = [end - start for start, end in waits if any(s < end and start < e for s, e in spans)]
        rest = [end - start for start, end in waits if not any(s < end and start < e for s, e in spans)]

        def p99(xs: list[float]) -> Optional[float]:
            return round(statistics.quantiles(xs, n=100)[98], 3) if len(xs) >= 2 else None
        # Each observation's span is widened by the sampling interval (see intervals).
        return {"sample_seconds": self.SAMPLE_SECONDS,
                "observations": [[round(s, 2), round(e - s, 2)] for s, e in spans],
                "waits_overlapping": len(hit), "waits_other": len(rest),
                "p99_overlapping_s": p99(hit), "p99_other_s": p99(rest)}

    # What by_second sums for each second of the phase: the sink's batches by what ended them, and
    # the seconds the worker's histograms grew by (the inserts, the engine's batches, ...).
    SECOND_COUNTERS = {"deadline": 'sendtrack_sink_batches_total{ended="deadline"}',
                       "caught_up": 'sendtrack_sink_batches_total{ended="caught_up"}',
                       "inserts": "sendtrack_clickhouse_insert_seconds_count",
                       # Python's younger collections (the full ones are gc_s below).
                       "gc0_s": 'sendtrack_gc_collection_seconds_total{generation="0"}',
                       "gc1_s": 'sendtrack_gc_collection_seconds_total{generation="1"}'}
    SECOND_SUMS = {"insert_s": "clickhouse_insert_seconds", "gather_s": "sink_batch_gather_seconds",
                   "engine_s": "engine_batch_seconds", "alerts_s": "alert_evaluation_seconds",
                   "loop_lag_s": "event_loop_lag_seconds", "gc_s": "gc_full_collection_seconds"}

    def by_second(self, t0: float, waits: list[tuple[float, float, float]]) -> dict:
        """Each second of the phase from `t0` (its start; the requests come first, then the
        callbacks): how many callbacks were published in it, their p99 wait (to ClickHouse, and to
        the engine), and what the worker's counters and histograms grew by between the samples that
        ended in it; so a tail can be set beside what the sink and the engine did when it formed. A
        duration counts whole in the second it ended (an evaluation of 4 s shows as 4 s there), and
        a callback's wait in the second it was published: what held it shows in that row and the
        next ones."""
        if not waits or len(self.samples) < 2:
            return {}
        # Every second with a publication, and the five after the last one (its callbacks on their way).
        seconds = int(max(p for p, _, _ in waits) - t0) + 1 + 5
        slots: list[list[tuple[float, float]]] = [[] for _ in range(seconds)]
        for published, visible, recorded in waits:
            slots[max(0, int(published - t0))].append((visible - published, recorded - published))
        keys = [*self.SECOND_COUNTERS, *self.SECOND_SUMS]
        grew = [dict.fromkeys(keys, 0.0) for _ in range(seconds)]
        for (_, before), (t, after) in zip(self.samples, self.samples[1:]):
            i = int(t - t0)
            if not 0 <= i < len(grew):
                continue
            for key, name in self.SECOND_COUNTERS.items():
                grew[i][key] += after.get(name, 0.0) - before.get(name, 0.0)
            for key, name in self.SECOND_SUMS.items():
                grew[i][key] += after.get(f"sendtrack_{name}_sum", 0.0) - before.get(f"sendtrack_{name}_sum", 0.0)

        def p99(xs: list[float]) -> Optional[float]:
            xs = sorted(xs)
            return round(xs[min(len(xs) - 1, int(0.99 * len(xs)))], 3) if xs else None
        rows = [[i, len(slot), p99([w for w, _ in slot]), p99([e for _, e in slot]),
                 *(round(grew[i][k], 3) for k in keys)] for i, slot in enumerate(slots)]
        return {"columns": ["second", "callbacks", "p99_s", "p99_to_engine_s", *keys], "rows": rows}


def slow_batches(path: Path, offset: int, keep: int = 20) -> list[str]:
    """The worker's "slow engine batch" lines (with their phases) written since `offset`."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines = [line.decode(errors="replace").strip() for line in f if b"slow engine batch" in line]
    return lines[:keep]


TIMINGS = ("engine_batch_seconds", "engine_apply_seconds", "engine_produce_seconds", "engine_table_write_seconds",
           "clickhouse_insert_seconds", "event_loop_lag_seconds", "malloc_trim_seconds",
           "gc_full_collection_seconds", "alert_evaluation_seconds", "sink_batch_gather_seconds")


# Settings whose values the results always show, set or not: what the runs compare.
RECORDED_ALWAYS = ("gc_young_threshold", "background_nice", "engine_batch_events", "sink_batch_seconds",
                   "state_compression")


def recorded_settings(environ: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The settings a run's JSON keeps: every SENDTRACK_ variable of this process's environment
    (they reach the worker too, Worker), and the values of RECORDED_ALWAYS as the worker resolves
    them. Never a secret: a setting the project hides (repr=False: passwords, keys, the readers'
    URL) is left out, and a URL's user and password are masked. Results are committed."""
    environ = dict(os.environ if environ is None else environ)
    fields = Settings.model_fields
    out = {}
    for name, value in sorted(environ.items()):
        if not name.startswith("SENDTRACK_"):
            continue
        field = fields.get(name[len("SENDTRACK_"):].lower())
        if field is not None and field.repr is False:
            continue
        parts = urllib.parse.urlsplit(value)
        if parts.scheme and (parts.username or parts.password):
            value = urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
        out[name] = value
    resolved = Settings(**{k: v for k, v in ((f, environ.get(f"SENDTRACK_{f.upper()}")) for f in RECORDED_ALWAYS)
                           if v is not None})
    for name in RECORDED_ALWAYS:
        out.setdefault(f"SENDTRACK_{name.upper()}", str(getattr(resolved, name)))
    return out


def _commit() -> str:
    """The commit the bench runs, with `+` when the working tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+" if dirty else "")


def timings(before: dict[str, float], after: dict[str, float]) -> dict:
    """The worker's duration histograms over a phase: how many, the mean, and how many were long."""
    out = {}
    for name in TIMINGS:
        def delta(suffix: str) -> float:
            key = f"sendtrack_{name}{suffix}"
            return after.get(key, 0.0) - before.get(key, 0.0)
        n = delta("_count")
        out[name] = {"count": int(n), "mean_s": round(delta("_sum") / n, 4) if n else None,
                     **{f"over_{b}_s": int(n - delta(f'_bucket{{le="{b}"}}')) for b in ("0.25", "0.5", "1.0")}}
    # Python's garbage collector, every generation: seconds and collections over the phase.
    for generation in ("0", "1", "2"):
        def total(name: str) -> float:
            key = f'sendtrack_{name}{{generation="{generation}"}}'
            return after.get(key, 0.0) - before.get(key, 0.0)
        out[f"gc_generation_{generation}"] = {"count": int(total("gc_collections_total")),
                                              "seconds": round(total("gc_collection_seconds_total"), 2)}
    return out


def exact_counts(worker: Worker) -> tuple[int, int]:
    """Milestones in the deduplicated view, and in the funnel. The funnel is summed one (send day,
    action, status) at a time: over a whole day its uniqExact states of millions of message ids pass
    a reader's memory budget (SENDTRACK_QUERY_MEMORY_MB, 256 MB: refused at 3.8 M ids in one query,
    docs/performance.md), which a dashboard's query, one campaign at a time, never reads."""
    groups = worker.sql("SELECT DISTINCT day, action, status FROM sendtrack.funnel_daily_by_workspace")
    funnel = sum(worker.sql(f"SELECT toUInt64(sum(messages)) FROM sendtrack.funnel_daily "
                            f"WHERE day = '{d}' AND action = '{a}' AND status = '{s}'")[0][0]
                 for d, a, s in groups)
    return worker.sql("SELECT count() FROM sendtrack.status_changes")[0][0], funnel


def wait_for_merges(merges: Callable[[], int], limit: float) -> tuple[float, bool]:
    """Wait (at most `limit` s) until `merges()`, ClickHouse's count of running merges, is 0; returns
    the seconds waited and whether it got there."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if merges() == 0:
            return round(time.monotonic() - started, 1), True
        time.sleep(1)
    return round(time.monotonic() - started, 1), False


def settle_merges(worker: Worker, limit: float = 180.0) -> float:
    """Wait (at most `limit` s) until ClickHouse runs no merge. Right after a backlog of millions of
    records it is still merging what the backlog inserted, for minutes; freshness is measured at
    half the maximum rate in a steady state, not during that catch-up."""
    waited, _ = wait_for_merges(lambda: worker.sql("SELECT count() FROM system.merges")[0][0], limit)
    log(f"freshness: ClickHouse merges settled after {waited} s")
    return waited


def cold_restore(worker: Worker, data: Path, warm_start: float, messages: int) -> dict:
    """Delete the worker's local table state and time its rebuild from the changelogs."""
    log("cold restore: local table state deleted, worker restarted")
    shutil.rmtree(data / "faust")
    started = time.monotonic()
    worker.start()
    worker.wait_healthy(timeout=6 * 3600)
    restore = time.monotonic() - started
    # A worker start costs a few seconds whatever the state; the rest is the rebuild.
    rebuild = max(restore - warm_start, 0.0)
    # How many changelog records it read: more where the broker's log cleaner has not yet compacted
    # what later records replaced (kafka.sh throttles it), so the rebuild's time depends on it too.
    restored = int(sum(v for k, v in worker.metrics().items() if k.startswith("sendtrack_state_restored_records_total")))
    return {"seconds": round(restore, 1), "warm_start_seconds": warm_start, "messages": messages,
            "seconds_per_million_messages": round(rebuild / messages * 1e6, 1),
            "restored_records": restored, "restored_records_per_message": round(restored / messages, 2)}


def funnel_query(messages: int, path: Path) -> dict:
    """funnel_daily for one campaign over 30 days, on `messages` synthetic messages (embedded)."""
    from sinks.clickhouse import ClickHouse
    from sinks.migrate import migrate

    ch = ClickHouse.connect(Settings(clickhouse_url=f"chdb://{path}"), database="bench_funnel")
    migrate(ch, log=lambda *_: None)
    log(f"funnel query: generating {messages:,} synthetic messages (30 days, 20 campaigns)")
    started = time.monotonic()
    per = 2_000_000
    for offset in range(0, messages, per):
        n = min(per, messages - offset)
        # Each message reaches sent, then delivered with 80%, opened with 40%, clicked with 10%.
        ch.command(
            f"INSERT INTO `{ch.database}`.status_changes_raw (change_id, message_id, status, previous_status, "
            "current_status, inferred, occurred_at, recorded_at, action, provider, customer_id, recipient, "
            "flow_id, campaign_id, step_id, requested_at, reason_code, reason, bounce_type, reason_at, event_id) "
            "SELECT hex(sipHash128(mid, st)), mid, st, '', st, false, t, t, 'email', 'sendgrid', "
            "concat('c', toString(n % 100000)), '', concat('flow-', toString(n % 7)), "
            "concat('camp-', toString(n % 20)), concat('step-', toString(n % 5)), t, '', '', '', "
            "toDateTime64(0, 3, 'UTC'), '' "
            f"FROM (SELECT number + {offset} AS n, concat('m', toString(n)) AS mid, "
            "toDateTime64('2026-10-01 00:00:00', 3, 'UTC') + toIntervalSecond(n % (30 * 86400)) AS t, "
            "arrayFilter(s -> (s.2), [('sent', true), ('delivered', n % 10 < 8), ('opened', n % 10 < 4), "
            "('clicked', n % 10 < 1)]) AS reached "
            f"FROM numbers({n})) ARRAY JOIN arrayMap(x -> x.1, reached) AS st"
        )
        log(f"funnel query: {offset + n:,}/{messages:,} messages")
    ch.command(f"OPTIMIZE TABLE `{ch.database}`.funnel_daily_by_workspace FINAL")
    gen = time.monotonic() - started
    sql = (f"SELECT day, status, messages FROM `{ch.database}`.funnel_daily WHERE campaign_id = 'camp-3' "
           "AND day BETWEEN '2026-10-01' AND '2026-10-30' ORDER BY day, status")

    def timed() -> tuple[list[float], list]:
        times = []
        for _ in range(7):
            t = time.monotonic()
            _, rows = ch.query(sql)
            times.append(time.monotonic() - t)
        total = sum(r[2] for r in rows if r[1] == "sent")
        assert total == messages // 20, (total, messages // 20)
        return times, rows

    # Right after the generation, ClickHouse still merges the other tables its 10 M messages filled
    # (status_changes_raw, messages_by_workspace: tens of seconds on two cores), and the query shares
    # the cores with those merges. Timed then (as before the twenty-eighth session), and again once
    # no merge runs, as a dashboard reads a table that is not being bulk-loaded (the freshness phase
    # waits for the same reason, settle_merges).
    busy, _ = timed()
    settled, quiet = wait_for_merges(lambda: ch.query("SELECT count() FROM system.merges")[1][0][0], 300)
    times, rows = timed()
    log(f"funnel query: {statistics.median(busy) * 1000:.1f} ms while the generation's merges ran, "
        f"{statistics.median(times) * 1000:.1f} ms " + (f"once they settled (after {settled} s)" if quiet
                                                         else f"with merges still running after {settled} s"))
    return {"messages": messages, "generate_seconds": round(gen, 1), "query_ms_median": round(statistics.median(times) * 1000, 1),
            "query_ms_max": round(max(times) * 1000, 1), "rows": len(rows), "merges_settled_seconds": settled, "merges_settled": quiet,
            "while_merging": {"query_ms_median": round(statistics.median(busy) * 1000, 1),
                              "query_ms_max": round(max(busy) * 1000, 1)}}


def steady_rate(applied: list[tuple[float, float]], records: int, first: float, done_wall: float) -> dict:
    """The engine's rate once warm, reported apart from the end-to-end rate (issue 19: a short
    backlog is mostly start-up and warm-up). From the worker's count of input records applied,
    sampled every fifth of a second until it is healthy and every half second after: the times it
    passed a tenth and nine tenths of the backlog, each interpolated between the two samples around
    it, and the rate between them. `warmup_s` is the time from the first status change to a tenth,
    `tail_s` from nine tenths to the last milestone in the views (the last tenth and the sink
    catching up). None, with the reason, when the samples do not bracket both points (the worker
    answered its first sample with more than a tenth applied) or lie less than a second apart."""
    def when(share: float) -> Optional[float]:
        target = share * records
        for (t0, n0), (t1, n1) in zip(applied, applied[1:]):
            if n0 < target <= n1:
                return t0 + (t1 - t0) * (target - n0) / (n1 - n0)
        return None
    t10, t90 = when(0.1), when(0.9)
    if t10 is None or t90 is None or t90 - t10 < 1.0:
        return {"records_per_s": None, "reason": "too few samples around a tenth and nine tenths of the backlog",
                "samples": len(applied)}
    return {"records_per_s": round(0.8 * records / (t90 - t10)), "seconds": round(t90 - t10, 2),
            "warmup_s": round(t10 - first, 2), "tail_s": round(done_wall - t90, 2), "samples": len(applied)}


def engine_alone(env: dict[str, str], prefix: str, data: Path, records: int, timeout: float) -> dict:
    """The engine without the sink (`SENDTRACK_SINK_ENABLED=false`) as a new app on its own copy of
    the backlog (topics under `prefix`, published like the pipeline's: the same records), after
    the pipeline: its rate once warm, measured as the pipeline's (steady_rate), and its CPU per input
    record. What the sink and the embedded ClickHouse cost the engine's process (issue 19: the sink in
    a process of its own). Its own topics, internal ones included: on the pipeline's it would also
    read the pipeline's routed and provider-id records (a first version did, and measured that)."""
    env = {**env, "SENDTRACK_APP_ID": prefix.rstrip("."), "SENDTRACK_TOPIC_PREFIX": prefix,
           "SENDTRACK_SINK_ENABLED": "false", "SENDTRACK_DATA_DIR": str(data), "SENDTRACK_WEB_PORT": str(free_port())}
    data.mkdir(parents=True, exist_ok=True)
    worker = Worker(env, data)
    applied: list[tuple[float, float]] = []
    started = time.time()
    worker.start()
    try:
        worker.wait_healthy(applied=applied)
        while True:
            count = worker.applied()
            applied.append((time.time(), count))
            worker.sample()
            if count >= records:
                break
            if time.time() - started > timeout:
                raise SystemExit(f"bench: the engine alone did not finish within {timeout} s ({count:,.0f} records)")
            time.sleep(0.5)
        done, cpu = time.time(), worker.cpu_seconds()
    finally:
        worker.stop()
    return {"input_records": records, "seconds": round(done - started, 2),
            "steady": steady_rate(applied, records, started, done),
            "cpu_s_per_million": round(cpu / records * 1e6, 1), "peak_rss_mb": round(worker.peak_rss / 2**20)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a run of under two minutes")
    parser.add_argument("--messages", type=int, help="simulated sends (default 2,000,000; --quick 20,000)")
    parser.add_argument("--funnel-messages", type=int, help="synthetic messages for the funnel query "
                        "(default 10,000,000; --quick 1,000,000)")
    parser.add_argument("--freshness-seconds", type=float, default=None)
    parser.add_argument("--freshness-rate", type=float, default=None, metavar="RATE",
                        help="records/s of the freshness phase (default: half the run's end-to-end rate); "
                             "a fixed rate compares layouts or code at the same load")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and the run's topics")
    parser.add_argument("--skip-cold-restore", action="store_true",
                        help="do not measure the cold restore (about 25 s per million messages since "
                             "the bulk restore; it was 740 s before)")
    parser.add_argument("--split", action="store_true",
                        help="run the pipeline as two processes: an engine-only worker and a worker of the "
                             "sink and the readers (SENDTRACK_ENGINE_ENABLED=false); no cold restore")
    parser.add_argument("--engine-alone", action="store_true",
                        help="then run the engine without the sink on a copy of the same inputs (what the "
                             "sink costs the engine's process)")
    parser.add_argument("--by-fifth", metavar="RESULT", type=Path,
                        help="print the rate in each fifth of the backlog of a kept result (from the timeline rows it "
                             "keeps, about 200) and exit")
    args = parser.parse_args()
    if args.by_fifth:
        kept = json.loads(args.by_fifth.read_text())
        if "rss_timeline" not in kept.get("pipeline", {}):
            print(f"{args.by_fifth}: no timeline of the backlog in this result (runs before 2026-12-03 kept none)")
            return 1
        rows = kept["pipeline"]["rss_timeline"]["rows"]
        print(f"{kept['run']}: input records/s in each fifth of the backlog: "
              f"{rate_by_fifth(rows, kept['workload']['records'])}")
        return 0
    if args.freshness_rate is not None and args.freshness_rate <= 0:
        parser.error("--freshness-rate must be above 0")
    messages = args.messages or (20_000 if args.quick else 2_000_000)
    funnel_messages = args.funnel_messages or (1_000_000 if args.quick else 10_000_000)
    fresh_seconds = args.freshness_seconds or (15 if args.quick else 60)

    run = f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    data = Path(tempfile.mkdtemp(prefix=f"{run}-"))
    env = {"SENDTRACK_KAFKA_BROKER": BROKER, "SENDTRACK_TOPIC_PREFIX": f"{run}.", "SENDTRACK_APP_ID": run,
           "SENDTRACK_DATA_DIR": str(data), "SENDTRACK_WEB_PORT": str(free_port())}
    settings = Settings(kafka_broker=BROKER, topic_prefix=f"{run}.", partitions=Settings().partitions)
    result: dict = {"run": run, "quick": args.quick, "machine": {"cpus": os.cpu_count(),
                    "python": platform.python_version(), "platform": platform.platform()},
                    "settings": recorded_settings(), "commit": _commit()}
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(ensure_topics(settings))
        log(f"workload: {messages:,} messages into fresh topics ({run}.*)")
        expect = asyncio.run(publish_workload(settings, messages))
        result["workload"] = expect
        alone_settings = Settings(kafka_broker=BROKER, topic_prefix=f"{run}-alone.", partitions=settings.partitions)
        if args.engine_alone:
            log(f"engine alone: a copy of the workload into {run}-alone.*")
            asyncio.run(ensure_topics(alone_settings))
            copy = asyncio.run(publish_workload(alone_settings, messages))
            assert copy == expect, (copy, expect)
        log("baseline: aiokafka consumer -> producer passthrough of the same topics")
        result["baseline"] = asyncio.run(baseline(settings, expect["records"]))
        log(f"baseline: {result['baseline']['records_per_s']:,} records/s")
        worker = Pair(env, data) if args.split else Worker(env, data)
        result["split"] = args.split
        try:
            log("pipeline: " + ("an engine-only worker and a sink worker with embedded ClickHouse" if args.split
                                else "worker with embedded ClickHouse") + " on the backlog")
            result["pipeline"] = {"incomplete": True}
            result["pipeline"] = pipeline(worker, expect, timeout=6 * 3600, progress=result["pipeline"])
            result["ratio_pipeline_to_baseline"] = round(
                result["pipeline"]["records_per_s"] / result["baseline"]["records_per_s"], 3)
            steady = result["pipeline"]["steady"]["records_per_s"]
            result["steady_ratio_to_baseline"] = (round(steady / result["baseline"]["records_per_s"], 3)
                                                  if steady else None)
            rate = args.freshness_rate if args.freshness_rate is not None else result["pipeline"]["records_per_s"] / 2
            result["merges_settled_seconds"] = settle_merges(worker)
            log(f"freshness: callbacks at {rate:,.0f} records/s for {fresh_seconds:.0f} s")
            result["freshness"] = asyncio.run(freshness(worker, settings, rate, fresh_seconds))
            worker.sample()
            result["freshness"]["peak_rss_mb"] = round(worker.peak_rss / 2**20)
            # The worker's own peak: the backlog and the freshness phase, not the check query.
            result["pipeline"]["peak_rss_mb"] = max(result["pipeline"]["peak_rss_mb"],
                                                    result["freshness"]["peak_rss_mb"])
            if args.split:
                worker.note_peaks("freshness")
                result["pipeline"]["peak_rss_mb_per_process"] = worker.peaks
            worker.stop()
            rocksdb_bytes = du(data / "faust")
            if not args.skip_cold_restore and not args.split:
                result["cold_restore"] = cold_restore(worker, data, result["pipeline"]["startup_seconds"], messages)
        finally:
            worker.stop()
        if args.engine_alone:
            log(f"engine alone: the engine without the sink on its copy of the {expect['records']:,} input records")
            alone = result["engine_alone"] = engine_alone(env, alone_settings.topic_prefix, data / "engine-alone",
                                                          expect["records"], timeout=6 * 3600)
            steady, ours = alone["steady"]["records_per_s"], result["pipeline"]["steady"]["records_per_s"]
            alone["steady_ratio_to_pipeline"] = round(steady / ours, 3) if steady and ours else None
            log(f"engine alone: once warm {steady or 0:,}/s ({alone['steady_ratio_to_pipeline']} of the "
                f"pipeline's), {alone['cpu_s_per_million']} CPU s per million records")
        result["storage"] = {
            "rocksdb_mb_per_million_messages": round(rocksdb_bytes / 2**20 / messages * 1e6, 1),
            "clickhouse_mb_per_million_messages": round(du(data / ("sink/clickhouse" if args.split else "clickhouse"))
                                                        / 2**20 / messages * 1e6, 1),
            "tracked_messages": messages,
        }
        result["funnel_query"] = funnel_query(funnel_messages, data / "funnel-chdb")
    except BaseException as exc:
        # What the run measured until then is kept (an hour of a 5 M run), marked as incomplete.
        result["error"] = f"{type(exc).__name__}: {exc}"
        try:
            (out_dir / f"{run}.incomplete.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
            log(f"the run ended early ({result['error']}); what it measured: bench/results/{run}.incomplete.json")
        except Exception as failed:  # the run's own error is the one to raise
            log(f"the run ended early ({result['error']}); its figures could not be written: {failed}")
        raise
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
            asyncio.run(delete_topics(run))
    text = json.dumps(result, indent=2)
    (out_dir / f"{run}.json").write_text(text + "\n")
    # latest.json is the latest full run (at least 2 million messages, as issue 7 defines it).
    if args.quick or messages >= 2_000_000:
        (out_dir / ("latest-quick.json" if args.quick else "latest.json")).write_text(text + "\n")
    print(text)
    p, b = result["pipeline"], result["baseline"]
    print(f"\nsendtrack: {p['records_per_s']:,} input records/s end to end "
          f"(baseline passthrough {b['records_per_s']:,}/s, ratio {result['ratio_pipeline_to_baseline']}; "
          + (f"once warm {p['steady']['records_per_s']:,}/s, ratio {result['steady_ratio_to_baseline']}, "
             f"after a warm-up of {p['steady']['warmup_s']} s); " if p["steady"]["records_per_s"]
             else f"once warm: not measured, {p['steady']['reason']}); ")
          +
          f"freshness p50 {result['freshness']['p50_s']} s, p99 {result['freshness']['p99_s']} s at "
          f"{result['freshness']['rate_records_per_s']:,}/s; peak RSS {p['peak_rss_mb']} MB "
          f"({p['check_query']['peak_rss_mb']} MB during the whole-dataset check query); "
          f"input records/s in each fifth of the backlog {p['records_per_s_by_fifth']}; "
          f"funnel query {result['funnel_query']['query_ms_median']} ms over "
          f"{result['funnel_query']['messages']:,} messages; cold restore "
          + cold_restore_summary(result.get("cold_restore"), args.split))
    return 0


def cold_restore_summary(restore: Optional[dict], split: bool = False) -> str:
    if restore is None:
        return "not measured (" + ("--split" if split else "--skip-cold-restore") + ")"
    if restore["seconds_per_million_messages"] == 0:
        # A small state restores within the time a worker takes to start at all.
        return (f"{restore['seconds']} s, no longer than a warm start ({restore['warm_start_seconds']} s): "
                f"too few messages ({restore['messages']:,}) to measure a rate")
    read = (f" ({restore['restored_records_per_message']} changelog records per message)"
            if "restored_records_per_message" in restore else "")
    return f"{restore['seconds_per_million_messages']} s per million messages{read}"


if __name__ == "__main__":
    sys.exit(main())

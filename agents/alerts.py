"""Deliverability alerts: each state change of a judged rate, on the `deliverability-alerts` topic
(sendtrack/alerts.py says what is published; docs/contract.md §3 the records).

One worker of the app publishes them: the one whose sink reads partition 0 of status-changes (with a
ClickHouse server every sink writes the same database; with the embedded engine one worker holds
it). After each of its sink's inserts, and when the windows slide with no insert (at most a minute
plus the pause below), it reads the rates as the `deliverability_health` view judges them, exact
under duplicates, and publishes the changes since the last records on the topic.

Exactly once, across crashes and between workers:
- The records of one evaluation are published in one Kafka transaction, under one transactional id
  per app, each acknowledged before the commit. Starting the producer fences any other producer with
  that id (an older worker, a zombie) and aborts its open transaction.
- Only then is the topic read back, committed records only, to the end: the last state and sequence
  of every rate. Nothing else is kept, so a worker killed at any point publishes, when it starts
  again, the changes from what the topic holds, once.
- Any failure of the producer (fenced, a transaction that failed, the broker gone) ends that
  producer: after a pause a new one fences the others and reads the topic back again.
An evaluation costs a query over the last 7 days of messages: on one of ClickHouse's threads, about
1 s at 5 M messages in the week since migration 0019 counts each message once (2 s before; docs/
performance.md "Twenty-fourth session"). The next one waits at least SENDTRACK_ALERT_INTERVAL_SECONDS
and nine times the last one's duration: evaluating takes at most a tenth of a core, however many
messages the week holds. In the embedded engine that thread runs nicer than the event loop while it
evaluates, with CAP_SYS_NICE and a worker at nice 0 (sinks/analyst.py, evaluation_pool): it takes
the CPU the records leave. Its memory grows with the parts of
message_health (migration 0018) that ClickHouse has not merged yet (sinks/analyst.py, EVALUATION_BLOCK_ROWS).
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerFenced
from mode import Service

from agents.app import app, settings
from agents.sink import sink
from sendtrack import alerts
from sendtrack.metrics import metrics
from sendtrack.threads import evaluating
from sendtrack.topics import ALERTS, committed_records, ensure_alerts_topic
from sinks import reports
from sinks.analyst import Analysts, Refused, evaluation_pool

log = logging.getLogger(__name__)

RECHECK_SECONDS = 60.0  # without inserts, the windows still slide
RETRY_SECONDS = 10.0  # after the producer failed or was fenced
# The evaluation's share of the time at most: the next one waits this many times the last one's duration.
COST_FACTOR = 9


class AlertService(Service):
    """Evaluates the rates after the sink's inserts and publishes their state changes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.topic = settings.topic(ALERTS)
        self.last: dict[bytes, alerts.Published] = {}

    @Service.task
    async def _run(self) -> None:
        while sink.ch is None or not sink.ready.is_set():
            if self.should_stop or sink.failed:
                return
            await self.sleep(0.5)
        pool = evaluation_pool(settings, sink.ch)
        try:
            while not self.should_stop:
                if not sink.owns_first_partition():
                    # One evaluator per app: the worker whose sink reads status-changes' partition 0
                    # (with a ClickHouse server every sink writes the same database).
                    await self.sleep(5)
                    continue
                try:
                    await self._publish(pool)
                except ProducerFenced:
                    log.warning("alerts: another worker's producer took over; this one tries again in %d s",
                                int(RETRY_SECONDS))
                    metrics.inc("alert_restarts_total")
                    await self.sleep(RETRY_SECONDS)
                except Exception as exc:  # noqa: BLE001 - the producer is started afresh and the topic read again
                    log.warning("alerts: %r; starting again in %d s", exc, int(RETRY_SECONDS))
                    metrics.inc("alert_restarts_total")
                    await self.sleep(RETRY_SECONDS)
        finally:
            pool.close()

    async def _publish(self, pool: Analysts) -> None:
        """One producer's life: fence the others, read the topic back, then evaluate after each insert
        until an error, which ends it (the caller starts a new producer: a transaction that failed
        leaves aiokafka's producer unusable, and the topic says what was committed)."""
        await ensure_alerts_topic(settings)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_broker, acks="all", enable_idempotence=True,
            transactional_id=f"{settings.app_id}-deliverability-alerts")
        try:
            await producer.start()  # fences an older producer of this id; its open transaction is aborted
            self.last = await self._read_back()
            log.info("alerts: %d rate(s) on %s, %d not ok", len(self.last), self.topic,
                     sum(1 for p in self.last.values() if p.state != "ok"))
            metrics.set("alert_evaluator", 1)
            while not self.should_stop and sink.owns_first_partition():
                sink.written.clear()
                started = time.monotonic()
                try:
                    with evaluating():  # its threads' nice value is left to it meanwhile
                        rows = await pool.run(_judged, pool)
                except (Refused, ValueError) as exc:  # ClickHouse refused or is down: not the producer's fault
                    log.warning("alerts: the rates could not be read (%s); again at the next insert", exc)
                else:
                    await self._send(producer, rows)
                took = time.monotonic() - started
                metrics.observe("alert_evaluation_seconds", took)
                pause = max(settings.alert_interval_seconds, COST_FACTOR * took)
                await self.sleep(pause)
                # Then the next insert, or the windows' slide; the worker's stop ends either wait.
                await self.wait(sink.written, timeout=max(RECHECK_SECONDS - pause, 0.001))
        finally:
            metrics.set("alert_evaluator", 0)
            await producer.stop()

    async def _read_back(self) -> dict[bytes, alerts.Published]:
        """The last committed record of every rate on the topic."""
        return {key: alerts.read(value) async for key, value in committed_records(settings, self.topic)}

    async def _send(self, producer: AIOKafkaProducer, rows: list[dict]) -> None:
        """Publish the changes since the last records, in one transaction."""
        changes = alerts.changes(self.last, rows, int(time.time() * 1000))
        if not changes:
            return
        async with producer.transaction():
            sent = [await producer.send(self.topic, key=key, value=orjson.dumps(value), partition=0)
                    for key, value in changes]
            # Every record acknowledged before the commit: a record the broker refused must not
            # commit the others (aiokafka does not abort the transaction for it).
            await asyncio.gather(*sent)
        for key, value in changes:
            self.last[key] = alerts.Published(value["state"], value["sequence"])
            metrics.inc("deliverability_alerts_total", 1, state=value["state"])
            log.warning("alert: %s %s %s/%s/%s %s rate %.2f%% over %s (%s of %s; was %s)", value["state"].upper(),
                        value["workspace_id"] or "(no workspace)", value["action"], value["provider"],
                        value["mailbox_provider"], value["metric"], 100 * value["rate"], value["period"],
                        value["events"], value["volume"], value["previous_state"])


def _judged(pool: Analysts) -> list[dict]:
    """The rates as the health report gives them (blocking: runs on the readers' threads)."""
    report = reports.run(pool.trusted(), "health", reports.Filters())
    return [dict(zip(report.columns, row)) for row in report.rows]


if settings.sink_enabled and settings.alert_interval_seconds > 0:
    app.service(AlertService())

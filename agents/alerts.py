"""Deliverability alerts: each state change of a judged rate, on the `deliverability-alerts` topic
(sendtrack/alerts.py says what is published; docs/contract.md §3 the records).

Runs in a worker whose sink writes ClickHouse. After each of the sink's inserts (and at least once a
minute, since the 24-hour and 7-day windows slide), it reads the rates as the `deliverability_health`
view judges them, exact under duplicates, and publishes the changes since the last records on the
topic: so an alert follows the insert of the event that crossed a threshold by the time of one
evaluation.

Exactly once, across crashes and between workers:
- The records of one evaluation are published in one Kafka transaction, under one transactional id
  per app. Starting the producer fences any other producer with that id (an older worker, a zombie)
  and aborts its open transaction.
- Only then is the topic read back, committed records only, to the end: the last state and sequence
  of every rate. Nothing else is kept, so a worker killed at any point publishes, when it starts
  again, the changes from what the topic holds, once.
- A fenced evaluator stops: the worker that fenced it publishes from then on.
An evaluation costs a query over the last 7 days of messages (1.7 s at 10 M messages over 30 days,
docs/dashboard.md); the next one waits at least SENDTRACK_ALERT_INTERVAL_SECONDS and nine times the
last one's duration, so evaluating takes at most a tenth of a core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from mode import Service

from agents.app import app, settings
from agents.sink import sink
from sendtrack import alerts
from sendtrack.metrics import metrics
from sendtrack.topics import ALERTS, ensure_alerts_topic
from sinks import reports
from sinks.analyst import Analysts, Refused

log = logging.getLogger(__name__)

RECHECK_SECONDS = 60.0  # without inserts, the windows still slide
# The evaluation's share of a core at most: the next one waits this many times the last one's duration.
COST_FACTOR = 9


class AlertService(Service):
    """Evaluates the rates after the sink's inserts and publishes their state changes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.topic = settings.topic(ALERTS)
        self.last: dict[bytes, alerts.Published] = {}
        self.fenced = False

    @Service.task
    async def _run(self) -> None:
        while sink.ch is None or not sink.ready.is_set():
            if self.should_stop or sink.failed:
                return
            await self.sleep(0.5)
        await ensure_alerts_topic(settings)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_broker, acks="all", enable_idempotence=True,
            transactional_id=f"{settings.app_id}-deliverability-alerts")
        await producer.start()  # fences an older producer of this id; its open transaction is aborted
        pool = Analysts(settings, sink.ch)
        try:
            self.last = await self._read_back()
            log.info("alerts: %d rate(s) on %s, %d not ok", len(self.last), self.topic,
                     sum(1 for p in self.last.values() if p.state != "ok"))
            waited_for = 0.0
            while not self.should_stop and not self.fenced:
                sink.written.clear()
                started = time.monotonic()
                try:
                    await self._evaluate(producer, pool)
                except ProducerFenced:
                    self.fenced = True
                    log.warning("alerts: another worker publishes deliverability alerts now (this one was fenced)")
                    return
                except (Refused, KafkaError, ValueError) as exc:
                    log.warning("alerts: evaluation failed (%s); next at the next insert", exc)
                took = time.monotonic() - started
                metrics.observe("alert_evaluation_seconds", took)
                waited_for = max(settings.alert_interval_seconds, COST_FACTOR * took)
                await self.sleep(waited_for)
                try:  # then the next insert, or the windows' slide
                    await asyncio.wait_for(sink.written.wait(), RECHECK_SECONDS - waited_for
                                           if waited_for < RECHECK_SECONDS else 0.001)
                except asyncio.TimeoutError:
                    pass
        finally:
            pool.close()
            await producer.stop()

    async def _read_back(self) -> dict[bytes, alerts.Published]:
        """The last committed record of every rate on the topic."""
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_broker, group_id=None,
                                    enable_auto_commit=False, isolation_level="read_committed")
        await consumer.start()
        last: dict[bytes, alerts.Published] = {}
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while await consumer.position(tp) < end:
                for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                    for record in records:
                        if record.key is not None and record.value is not None:
                            last[record.key] = alerts.read(record.value)
        finally:
            await consumer.stop()
        return last

    async def _evaluate(self, producer: AIOKafkaProducer, pool: Analysts) -> None:
        def judged() -> list[dict]:
            report = reports.run(pool.trusted(), "health", reports.Filters())
            return [dict(zip(report.columns, row)) for row in report.rows]

        rows = await pool.run(judged)
        changes = alerts.changes(self.last, rows, int(time.time() * 1000))
        if not changes:
            return
        async with producer.transaction():
            for key, value in changes:
                await producer.send(self.topic, key=key, value=orjson.dumps(value), partition=0)
        for key, value in changes:
            self.last[key] = alerts.Published(value["state"], value["sequence"])
            metrics.inc("deliverability_alerts_total", 1, state=value["state"])
            log.warning("alert: %s %s %s/%s/%s %s rate %.2f%% over %s (%s of %s; was %s)", value["state"].upper(),
                        value["workspace_id"] or "(no workspace)", value["action"], value["provider"],
                        value["mailbox_provider"], value["metric"], 100 * value["rate"], value["period"],
                        value["events"], value["volume"], value["previous_state"])


alert_service: Optional[AlertService] = None
if settings.sink_enabled and settings.alert_interval_seconds > 0:
    alert_service = AlertService()
    app.service(alert_service)

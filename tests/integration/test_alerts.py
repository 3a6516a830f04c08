"""Deliverability alerts through a running worker (agents/alerts.py): a workspace's bounce rate goes
critical, back to ok, then to warning, with the worker SIGKILLed at a random moment after each
change of traffic. The `deliverability-alerts` topic must hold each state change exactly once, in
order, numbered without gaps: no repeat and no loss across the kills."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.conftest import BROKER, Worker, cb, produce, req

pytestmark = pytest.mark.integration

BOUNCE_24H = ["shop-a", "24h", "email", "sendgrid", "*", "bounce"]


def committed(topic: str) -> list[tuple[list, dict]]:
    """Every committed record of the alerts topic, in order."""

    async def read() -> list[tuple[list, dict]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=BROKER, group_id=None, enable_auto_commit=False,
                                    isolation_level="read_committed")
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            out = []
            while await consumer.position(tp) < end:
                for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                    out += [(orjson.loads(r.key), orjson.loads(r.value)) for r in records]
            return out
        finally:
            await consumer.stop()

    try:
        return asyncio.run(read())
    except Exception:  # the topic does not exist yet
        return []


def send(prefix: str, n: int, bounced: bool, now: int) -> tuple[list, list]:
    requests = [req(f"{prefix}-{i}", workspace_id="shop-a", recipient=f"u{i}@gmail.com", requested_at=now - 3_600_000)
                for i in range(n)]
    status = "bounced" if bounced else "delivered"
    callbacks = [cb(f"{prefix}-{i}", f"{prefix}-{i}-{status}", status, at=now - 3_500_000,
                    **({"reason_code": "550 5.1.1", "bounce_type": "hard"} if bounced else {})) for i in range(n)]
    return requests, callbacks


def states_of(records: list[tuple[list, dict]], key: list) -> list[str]:
    return [value["state"] for k, value in records if k == key]


def wait_for_state(w: Worker, key: list, state: str, timeout: float = 90) -> list:
    deadline = time.monotonic() + timeout
    records: list[Any] = []
    while time.monotonic() < deadline:
        records = committed(w.topic("deliverability-alerts"))
        seen = states_of(records, key)
        if (seen[-1] if seen else "ok") == state:
            return records
        time.sleep(0.5)
    raise AssertionError(f"{key} never became {state}: {states_of(records, key)}\n{w.tail()}")


def view_state(w: Worker, key: list) -> str:
    rows = w.sql("SELECT state FROM sendtrack.deliverability_health WHERE workspace_id = '{}' AND period = '{}' "
                 "AND action = '{}' AND provider = '{}' AND mailbox_provider = '{}' AND metric = '{}'".format(*key))
    return rows[0][0] if rows else "ok"


def each_published_once(records: list[tuple[list, dict]]) -> dict[tuple, list[dict]]:
    """Per rate: numbered 1, 2, … without gap or repeat, each record moving away from the state
    before it (the first from ok). Returns the records per rate."""
    by_key: dict[tuple, list[dict]] = {}
    for key, value in records:
        by_key.setdefault(tuple(key), []).append(value)
    for key, values in by_key.items():
        assert [v["sequence"] for v in values] == list(range(1, len(values) + 1)), (key, values)
        previous = "ok"
        for v in values:
            assert v["previous_state"] == previous and v["state"] != previous, (key, values)
            previous = v["state"]
    return by_key


def test_each_state_change_is_published_once_across_kills(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("alerts"), "alerts", health_min_messages=10, alert_interval_seconds=0.5)
    rnd = random.Random(17)
    now = int(time.time() * 1000)
    # (traffic, messages in ClickHouse after it, the state the 24-hour bounce rate of shop-a's emails ends in)
    phases = [
        (send("clean-1", 20, False, now), 20, "ok"),  # 0 of 20
        (send("bad-1", 10, True, now), 30, "critical"),  # 10 of 30: 33 % (critical at 10 %)
        (send("clean-2", 300, False, now), 330, "ok"),  # 10 of 330: 3 %
        (send("bad-2", 10, True, now), 340, "warning"),  # 20 of 340: 5.9 % (warning at 5 %)
    ]
    ended_in = []
    try:
        w.start()
        for (requests, callbacks), messages, state in phases:
            asyncio.run(produce(w.topic("send-requests"), requests))
            asyncio.run(produce(w.topic("provider-callbacks"), callbacks))
            time.sleep(rnd.uniform(0, 2.5))  # before, during or after an evaluation and its transaction
            w.stop(signal.SIGKILL)
            w.start()
            w.wait_for("SELECT count(), countIf(bounced_at IS NOT NULL) + countIf(delivered_at IS NOT NULL) "
                       "FROM sendtrack.messages WHERE workspace_id = 'shop-a'", [[messages, messages]], timeout=90)
            assert view_state(w, BOUNCE_24H) == state
            records = wait_for_state(w, BOUNCE_24H, state)
            ended_in.append(states_of(records, BOUNCE_24H)[-1] if states_of(records, BOUNCE_24H) else "ok")
        time.sleep(3)  # a few more evaluations: nothing more may come
        records = committed(w.topic("deliverability-alerts"))
        stopping = time.monotonic()
        w.stop()  # SIGTERM: the evaluator's waits end with the worker (it once held the stop for a minute)
        assert time.monotonic() - stopping < 15
    finally:
        w.stop()
    # While a phase's requests are in ClickHouse before their outcomes the rate passes through other
    # values, and each state it passes through is a change: the states in between may vary, not
    # where each phase ends, and never a repeat.
    assert ended_in == ["ok", "critical", "ok", "warning"]
    by_key = each_published_once(records)
    assert "critical" in states_of(records, BOUNCE_24H)
    last = by_key[tuple(BOUNCE_24H)][-1]
    assert last["volume"] == 340 and 17 <= last["events"] <= 20 and (last["warning"], last["critical"]) == (0.05, 0.1)
    assert states_of(records, ["shop-a", "7d", "email", "sendgrid", "*", "bounce"])[-1] == "warning"
    assert "critical" in states_of(records, ["shop-a", "24h", "email", "sendgrid", "*", "failure"])


def evaluator(w: Worker) -> bool:
    """Whether this worker judges the rates now (its alerts producer is live: the gauge)."""
    if w.proc is None or w.proc.poll() is not None:
        return False
    try:
        return w.metrics().get("sendtrack_alert_evaluator", 0) == 1
    except OSError:  # a worker between its start and its web server
        return False


def stable_evaluator(a: Worker, b: Worker, seconds: float = 5, timeout: float = 120) -> Worker:
    """The one worker that judges, once exactly one has for `seconds` (a worker that lost partition
    0 stops its producer only at its next evaluation)."""
    deadline, since, judge = time.monotonic() + timeout, None, None
    while time.monotonic() < deadline:
        now = [w for w in (a, b) if evaluator(w)]
        if len(now) == 1 and now[0] is judge:
            if time.monotonic() - since >= seconds:
                return judge
        else:
            judge, since = (now[0] if len(now) == 1 else None), time.monotonic()
        time.sleep(0.5)
    raise AssertionError(f"no single evaluator: {a.tail()}\n{b.tail()}")


def test_two_workers_of_one_app_publish_each_change_once(tmp_path_factory):
    """Two live workers of one app: a rebalance moves the evaluator (the worker whose sink reads
    status-changes' partition 0) or not; then the evaluator is SIGKILLed and the other takes over,
    its producer fencing the killed one's. The survivor must go on from the last state published
    (read back from the topic), whoever published it: its first record's previous state is that
    state and its sequence the next number. With embedded ClickHouse each worker's database holds the
    partitions its sink read, so the states themselves are each evaluator's own view."""
    tmp = tmp_path_factory.mktemp("alerts-two")
    a = Worker(tmp, "alerts-two", health_min_messages=10, alert_interval_seconds=0.5)
    b = Worker(tmp, "alerts-two-b", health_min_messages=10, alert_interval_seconds=0.5)
    b.prefix = a.prefix  # the same app: topics, consumer groups, transactional id
    b.env.update(SENDTRACK_TOPIC_PREFIX=a.env["SENDTRACK_TOPIC_PREFIX"], SENDTRACK_APP_ID=a.env["SENDTRACK_APP_ID"])
    now = int(time.time() * 1000)

    def traffic(*rounds: tuple[list, list]) -> None:
        for requests, callbacks in rounds:
            asyncio.run(produce(a.topic("send-requests"), requests))
            asyncio.run(produce(a.topic("provider-callbacks"), callbacks))

    try:
        a.start()
        traffic(send("bad-1", 12, True, now), send("clean-1", 20, False, now))
        wait_for_state(a, BOUNCE_24H, "critical")
        b.start()  # a rebalance of the engine's and the sink's groups
        traffic(send("clean-2", 200, False, now), send("bad-2", 40, True, now))
        judge = stable_evaluator(a, b)
        other = b if judge is a else a
        time.sleep(3)  # its evaluations of the traffic above
        judge.stop(signal.SIGKILL)
        killed_at = time.time()
        before = committed(a.topic("deliverability-alerts"))
        last = [v for k, v in before if k == BOUNCE_24H][-1]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not evaluator(other):
            time.sleep(0.5)
        assert evaluator(other), other.tail()
        # Move the survivor's view away from the last published state: it must publish, from there.
        if last["state"] == "critical":
            traffic(send("clean-3", 3000, False, now))
            target = "ok"
        else:
            traffic(send("bad-3", 400, True, now))
            target = "critical"
        records = wait_for_state(other, BOUNCE_24H, target, timeout=120)
    finally:
        a.stop()
        b.stop()
    after = [v for k, v in records if k == BOUNCE_24H and v["evaluated_at"] / 1000 >= killed_at]
    assert after, "the survivor published nothing"
    assert (after[0]["previous_state"], after[0]["sequence"]) == (last["state"], last["sequence"] + 1), (last, after)
    each_published_once(records)

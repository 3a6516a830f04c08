"""How soon a deliverability alert follows the callbacks that cross a threshold.

One worker (the test harness's, on the running broker: `make kafka-up`) gets rounds of traffic for
one shop's emails, each round's requests first and then its callbacks, alternating clean rounds and
rounds that bounce. After each round's callbacks are published, the `deliverability-alerts` topic is
read until a new record for the shop's 24-hour email bounce rate appears: the time from the last
callback published to the record read, and to its `evaluated_at`. The default settings apply
(`SENDTRACK_ALERT_INTERVAL_SECONDS` 5) except the minimum volume (10 messages).

    .venv/bin/python bench/alert_latency.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.conftest import Worker, produce  # noqa: E402
from tests.integration.test_alerts import BOUNCE_24H, committed, send  # noqa: E402

ROUNDS = [("clean-0", 200, False), ("bad-0", 40, True), ("clean-1", 1500, False), ("bad-1", 60, True),
          ("clean-2", 3000, False), ("bad-2", 150, True)]


def main() -> int:
    worker = Worker(Path(tempfile.mkdtemp(prefix="alert-latency-")), "alert-latency", health_min_messages=10)
    now = int(time.time() * 1000)
    try:
        worker.start()
        topic = worker.topic("deliverability-alerts")
        for name, n, bounced in ROUNDS:
            before = len(committed(topic))
            requests, callbacks = send(name, n, bounced, now)
            asyncio.run(produce(worker.topic("send-requests"), requests))
            asyncio.run(produce(worker.topic("provider-callbacks"), callbacks))
            published = time.time()
            deadline = published + 60
            while time.time() < deadline:
                new = [value for key, value in committed(topic)[before:] if key == BOUNCE_24H]
                if new:
                    evaluated = new[0]["evaluated_at"] / 1000 - published
                    print(f"{name:8} -> {new[-1]['state']:8} read {time.time() - published:5.2f} s after the last "
                          f"callback was published; evaluated {evaluated:+6.2f} s"
                          + (" (the round's requests alone had changed the rate)" if evaluated < 0 else ""))
                    break
                time.sleep(0.2)
            else:
                print(f"{name:8} -> no change of state")
            time.sleep(8)
    finally:
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

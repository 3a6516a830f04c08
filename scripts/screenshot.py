"""`make screenshot`: the README's picture of the dashboard, from a worker fed simulated traffic.

Starts a worker (its own topics and data dir, on the broker of `make kafka-up`), publishes
`--messages` simulated sends (all twelve actions, failures, a few malformed records), waits until
ClickHouse has every message, and saves a full-page screenshot taken by headless chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sendtrack import simulate  # noqa: E402
from sendtrack.settings import Settings  # noqa: E402
from tests.integration import browser  # noqa: E402
from tests.integration.conftest import BROKER, Worker  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "dashboard.png"))
    parser.add_argument("--query", default="refresh=0", help="the dashboard's query string, e.g. lang=vi")
    parser.add_argument("--customer", help="also look up this customer (default: the busiest one)")
    args = parser.parse_args()
    if browser.missing():
        raise SystemExit(f"screenshot: {browser.missing()}")
    with tempfile.TemporaryDirectory(prefix="sendtrack-screenshot-") as tmp:
        worker = Worker(Path(tmp), "screenshot", readers="analyst:screenshot")
        worker.start()
        try:
            # The demo's three shops, one sending to a bad list (scripts/demo.sh).
            traffic = simulate.generate(args.messages, seed=11, run_id="demo",
                                        workspaces=("shop-hanoi", "shop-saigon", "shop-danang"), bouncy="shop-danang")
            settings = Settings(kafka_broker=BROKER, topic_prefix=worker.prefix)
            asyncio.run(simulate.publish(settings, traffic, progress=False))
            deadline = time.monotonic() + 180
            while worker.sql("SELECT count() FROM sendtrack.messages") != [[args.messages]]:
                if time.monotonic() > deadline:
                    raise SystemExit(f"screenshot: ClickHouse did not get every message\n{worker.tail()}")
                time.sleep(1)
            time.sleep(2)  # the dead letters' sink batch
            customers: dict[str, int] = {}
            for m in traffic.messages:
                customers[m.customer_id] = customers.get(m.customer_id, 0) + 1
            customer = args.customer or max(customers, key=lambda c: (customers[c], c))
            with browser.chromium() as b:
                page = browser.open_dashboard(b, worker.port, worker.auth, f"{args.query}&customer={customer}",
                                              viewport=(1400, 1000))
                page.wait_for_timeout(500)  # plotly's transitions
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.out, full_page=True)
        finally:
            worker.stop()
    print(f"screenshot: {args.out} ({args.messages} simulated messages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench-dashboard`: the dashboard's API on a large embedded database.

1. In a process of its own (chDB allows one engine per process), fills a fresh data directory's
   embedded ClickHouse with `--messages` synthetic messages, the way the sink does: rows into
   `status_changes_raw`, whose materialized views fill `messages_by_workspace` and `funnel_daily_by_workspace`
   (the tables behind every view the dashboard reads). Each message is sent; 80% are delivered,
   40% opened, 10% clicked and 10% failed (one of six reasons); six actions, 30 send days, 20
   campaigns, 7 flows, 5 steps, one customer per 10 messages; plus `--dead-letters` dead letters.
   Then merges the aggregating tables (OPTIMIZE FINAL), as the background merges would in time.
2. Starts a worker on that data directory (the broker of `make kafka-up`; its own topics) with a
   reader configured, and times each of the dashboard's API calls (`--repeat` times, one at a time)
   with no filter, with one campaign, with the last 7 send days, and a customer lookup; then the
   page's whole refresh (every panel at once, as the browser asks for them).

Prints p50/p95 per call and saves bench/results/dashboard-<time>.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import datetime
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The 30 days up to today (UTC): the deliverability health panel reads the last 7 days.
DAYS = 30
FIRST_DAY = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=DAYS - 1)).isoformat()
CHUNK = 2_000_000
READER = ("bench", "bench-dashboard")

# One row per (message, status reached). n is the message number; the dimensions derive from it.
FILL = """
INSERT INTO `{db}`.status_changes_raw (change_id, message_id, status, previous_status, current_status, inferred,
  occurred_at, recorded_at, action, provider, customer_id, recipient, flow_id, campaign_id, step_id, requested_at,
  reason_code, reason, bounce_type, reason_at, event_id)
SELECT hex(sipHash128(mid, st.1)), mid, st.1, '', st.1, false, t + toIntervalSecond(st.2), t + toIntervalSecond(st.2),
  action, provider, concat('cus-', toString(n % {customers})), concat('r', toString(n)),
  concat('flow-', toString(n % 7)), concat('camp-', toString(n % 20)), concat('step-', toString(n % 5)), t,
  if(st.1 = 'failed', reason.1, ''), if(st.1 = 'failed', reason.2, ''), '',
  if(st.1 = 'failed', t + toIntervalSecond(st.2), toDateTime64(0, 3, 'UTC')), concat(mid, '-', st.1)
FROM (
  SELECT number + {offset} AS n, concat('m', toString(n)) AS mid,
    toDateTime64('{first_day} 00:00:00', 3, 'UTC') + toIntervalSecond(intHash32(n) % ({days} * 86400)) AS t,
    ['email', 'zalo_oa', 'zns', 'messenger', 'sms', 'ai_call'][n % 6 + 1] AS action,
    ['sendgrid', 'zalo', 'zalo', 'messenger', 'esms', 'retell'][n % 6 + 1] AS provider,
    [('550 5.1.1', 'The email account does not exist'), ('-213', 'User has not followed the OA'),
     ('-124', 'Phone number is invalid'), ('551', 'This person is not available'), ('99', 'Unknown error'),
     ('dial_no_answer', 'The customer did not pick up')][intHash32(n * 7) % 6 + 1] AS reason,
    arrayFilter(s -> s.3, [('sent', 0, true), ('delivered', 5 + n % 60, n % 10 < 8), ('opened', 600 + n % 3600, n % 10 < 4),
      ('clicked', 1200 + n % 3600, n % 10 < 1), ('failed', 3, n % 10 = 9)]) AS reached
  FROM numbers({count})
) ARRAY JOIN arrayMap(x -> (x.1, x.2), reached) AS st
"""

DEAD = """
INSERT INTO `{db}`.dead_letters_raw (source_topic, partition, offset, key, payload, payload_encoding, error_type, error, failed_at)
SELECT ['send-requests', 'provider-callbacks'][number % 2 + 1], toInt32(number % 4), toInt64(number), NULL,
  concat('{{"n": ', toString(number), '}}'), 'utf-8',
  ['undecodable', 'missing_field', 'unknown_action', 'not_allowed', 'orphan'][number % 5 + 1], 'synthetic',
  toDateTime64('{first_day} 00:00:00', 3, 'UTC') + toIntervalSecond(number % ({days} * 86400))
FROM numbers({count})
"""


def log(msg: str) -> None:
    print(f"bench-dashboard: {msg}", file=sys.stderr, flush=True)


def generate(data_dir: str, messages: int, dead_letters: int) -> dict:
    """Fill the embedded engine under `data_dir` (run in its own process)."""
    from sendtrack.settings import Settings
    from sinks.clickhouse import ClickHouse
    from sinks.migrate import migrate

    ch = ClickHouse.connect(Settings(data_dir=data_dir))
    migrate(ch, lambda *a: None)
    started = time.monotonic()
    for offset in range(0, messages, CHUNK):
        count = min(CHUNK, messages - offset)
        ch.command(FILL.format(db=ch.database, offset=offset, count=count, customers=max(messages // 10, 1),
                               first_day=FIRST_DAY, days=DAYS))
        log(f"{offset + count:,}/{messages:,} messages")
    ch.command(DEAD.format(db=ch.database, count=dead_letters, first_day=FIRST_DAY, days=DAYS))
    filled = time.monotonic() - started
    for table in ("funnel_daily_by_workspace", "messages_by_workspace", "message_health"):
        ch.command(f"OPTIMIZE TABLE `{ch.database}`.{table} FINAL")
    merged = time.monotonic() - started - filled
    _, [(raw, agg, states, size)] = ch.query(
        "SELECT sumIf(rows, table = 'status_changes_raw'), sumIf(rows, table = 'messages_by_workspace'), "
        "sumIf(rows, table = 'funnel_daily_by_workspace'), sum(bytes_on_disk) FROM system.parts "
        f"WHERE database = '{ch.database}' AND active")
    return {"messages": messages, "status_change_rows": raw, "messages_by_workspace_rows": agg,
            "funnel_daily_by_workspace_rows": states, "bytes_on_disk": size, "dead_letters": dead_letters,
            "fill_seconds": round(filled, 1), "optimize_seconds": round(merged, 1), "first_day": FIRST_DAY}


def call(port: int, path: str, params: dict) -> tuple[float, int, dict]:
    url = f"http://127.0.0.1:{port}{path}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{READER[0]}:{READER[1]}".encode()).decode())
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            status, body = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        status, body = exc.code, json.loads(exc.read() or b"{}")
    return time.perf_counter() - started, status, body


def percentiles(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, max(0, round(0.95 * len(ms)) - 1))]
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(p95, 1), "max_ms": round(ms[-1], 1),
            "n": len(ms)}


def measure(port: int, repeat: int, messages: int, first_day: str) -> dict:
    from agents.dashboard import PANELS

    first = datetime.date.fromisoformat(first_day)
    week = {"since": (first + datetime.timedelta(days=DAYS - 7)).isoformat(),
            "until": (first + datetime.timedelta(days=DAYS - 1)).isoformat()}
    scenarios = {"all": {}, "campaign": {"campaign": "camp-3"}, "last-7-days": week}
    results: dict = {}
    for scenario, params in scenarios.items():
        for panel in ("choices", *PANELS):
            extra = {"customer": f"cus-{123 % max(messages // 10, 1)}"} if panel == "customer" else {}
            times, statuses, error = [], set(), None
            for _ in range(repeat):
                seconds, status, body = call(port, f"/dashboard/api/{panel}", {**params, **extra})
                times.append(seconds)
                statuses.add(status)
                if status != 200:
                    error = body.get("error")
            results[f"{scenario}/{panel}"] = {**percentiles(times), "statuses": sorted(statuses),
                                              **({"error": error[:200]} if error else {})}
            r = results[f"{scenario}/{panel}"]
            log(f"{scenario:>11} {panel:<12} p50 {r['p50_ms']:>8} ms  p95 {r['p95_ms']:>8} ms  {r['statuses']}"
                + (f"  {r['error']}" if error else ""))
        # The page's refresh: every panel at once, as the browser asks for them.
        times = []
        with ThreadPoolExecutor(len(PANELS) + 1) as pool:
            for _ in range(repeat):
                started = time.perf_counter()
                list(pool.map(lambda p: call(port, f"/dashboard/api/{p}", params), ("choices", *PANELS)))
                times.append(time.perf_counter() - started)
        results[f"{scenario}/refresh"] = percentiles(times)
        r = results[f"{scenario}/refresh"]
        log(f"{scenario:>11} {'REFRESH':<12} p50 {r['p50_ms']:>8} ms  p95 {r['p95_ms']:>8} ms")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--dead-letters", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--data-dir", help="keep the data here (reused when it holds a filled database)")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_only:
        print(json.dumps(generate(args.data_dir, args.messages, args.dead_letters)))
        return 0
    from tests.integration.conftest import Worker

    tmp = tempfile.TemporaryDirectory(prefix="sendtrack-bench-dashboard-")
    data_dir = Path(args.data_dir or tmp.name) / "data"
    stamp = data_dir / "bench-dashboard.json"
    if stamp.exists():
        data = json.loads(stamp.read_text())
        log(f"reusing {data['messages']:,} messages in {data_dir}")
    else:
        log(f"generating {args.messages:,} messages in {data_dir}")
        data_dir.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([sys.executable, __file__, "--generate-only", "--data-dir", str(data_dir),
                              "--messages", str(args.messages), "--dead-letters", str(args.dead_letters)],
                             check=True, capture_output=True, text=True, cwd=ROOT)
        data = json.loads(out.stdout.strip().splitlines()[-1])
        stamp.write_text(json.dumps(data))
        log(f"generated in {data['fill_seconds']} s, merged in {data['optimize_seconds']} s: "
            f"{data['status_change_rows']:,} status changes, {data['bytes_on_disk'] / 2**20:,.0f} MiB on disk")
    worker = Worker(Path(tmp.name), "bench-dashboard", data_dir=data_dir, readers=f"{READER[0]}:{READER[1]}",
                    sink_batch_seconds=1)
    worker.start(timeout=180)
    try:
        # A reused database keeps the days it was generated for.
        results = measure(worker.port, args.repeat, data["messages"], data.get("first_day", "2026-10-01"))
    finally:
        worker.stop()
        tmp.cleanup()
    run_id = time.strftime("dashboard-%Y%m%d-%H%M%S")
    out_path = ROOT / "bench" / "results" / f"{run_id}.json"
    out_path.write_text(json.dumps({"run_id": run_id, "data": data, "repeat": args.repeat, "results": results},
                                   indent=2) + "\n")
    log(f"saved {out_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

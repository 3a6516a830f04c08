"""What one background merge of each large table costs the embedded engine in memory.

The worker's peak RSS at 5 M messages is a burst of a few hundred MB between two of the bench's
samples (docs/performance.md, "Twenty-third session"). This fills a fresh embedded engine (the
worker's allocator and server settings, sendtrack's migrations) with `--messages` messages' status
changes (sent, delivered for 80%, opened for 40%; one month of send days) in `--chunks` inserts with
every table's merges stopped, so each table holds `--chunks` parts of equal size. Then, one table at
a time, it starts that table's merges and waits until its parts stop changing, sampling
`system.merges` every 50 ms. For each table it prints the merges' parts and their largest
`memory_usage` (ClickHouse's own tracking), and the process's VmHWM growth over its RSS before them
(two merges run at once on the worker's settings). `--set table:setting = value` changes a table's
settings before the inserts (to measure a change before a migration makes it).

    .venv/bin/python bench/merge_memory.py --messages 5000000 --chunks 40

With equal parts, a table that merges at most four parts at once never merges before a partition
holds many parts (ClickHouse's merge selector wants the parts of a merge to sum to several times the
largest), hence 40 chunks. The results are kept in bench/results/merge-memory-*.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_memory import status as memory_mb  # noqa: E402  (VmHWM and VmRSS, MiB)

TABLES = ("message_health", "messages_by_workspace", "funnel_daily_by_workspace", "status_changes_raw")

INSERT = """
INSERT INTO {db}.status_changes_raw (change_id, message_id, status, previous_status, current_status,
  inferred, occurred_at, recorded_at, action, provider, customer_id, recipient, flow_id, campaign_id,
  step_id, requested_at, reason_code, reason, bounce_type, reason_at, event_id, mailbox_provider)
SELECT hex(sipHash128(mid, st)), mid, st, '', st, false, t, t, 'email', 'sendgrid',
  concat('c', toString(n % 100000)), concat('r', toString(n), '@example.com'), concat('flow-', toString(n % 7)),
  concat('camp-', toString(n % 20)), concat('step-', toString(n % 5)), t, '', '', '',
  toDateTime64(0, 3, 'UTC'), concat('ev-', toString(n)), 'gmail'
FROM (SELECT number + {offset} AS n, concat('m', toString(cityHash64(n))) AS mid,
             toDateTime64('2026-10-01 00:00:00', 3, 'UTC') + toIntervalSecond(n % (28 * 86400)) AS t,
             arrayFilter(s -> (s.2), [('sent', true), ('delivered', n % 10 < 8), ('opened', n % 10 < 4)]) AS reached
      FROM numbers({count}))
ARRAY JOIN arrayMap(x -> x.1, reached) AS st
"""


def parts(ch, table: str) -> int:
    return ch.query(f"SELECT count() FROM system.parts WHERE database = '{ch.database}' AND table = '{table}' "
                    "AND active")[1][0][0]


def merge_table(ch, table: str, quiet_s: float = 8.0, limit_s: float = 600.0) -> dict:
    """Start `table`'s merges and follow them until its parts have not changed for `quiet_s`."""
    before, merges = parts(ch, table), {}
    time.sleep(2)  # the allocator returns what the last table's merges freed
    rss = memory_mb()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
    ch.command(f"SYSTEM START MERGES {ch.database}.{table}")
    started, quiet, last = time.monotonic(), None, before
    while time.monotonic() - started < limit_s:
        running = ch.query(f"SELECT result_part_name, num_parts, memory_usage, elapsed FROM system.merges "
                           f"WHERE database = '{ch.database}' AND table = '{table}'")[1]
        for name, n, used, elapsed in running:
            seen = merges.setdefault(name, [n, 0, 0.0])
            seen[1], seen[2] = max(seen[1], used), elapsed
        now = parts(ch, table)
        if running or now != last:
            quiet, last = None, now
        elif quiet is None:
            quiet = time.monotonic()
        elif time.monotonic() - quiet > quiet_s:
            break
        time.sleep(0.05)
    ch.command(f"SYSTEM STOP MERGES {ch.database}.{table}")
    return {"parts_before": before, "parts_after": parts(ch, table), "rss_before_mb": rss,
            "hwm_growth_mb": memory_mb()["VmHWM"] - rss,
            # [parts merged, largest memory_usage MiB, seconds], the largest first
            "merges": sorted(([n, round(used / 2**20), round(s, 1)] for n, used, s in merges.values()),
                             reverse=True)[:8]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5_000_000)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], metavar="TABLE:SETTINGS",
                        help="e.g. 'status_changes_raw:max_parts_to_merge_at_once = 10'")
    args = parser.parse_args()

    from sendtrack.settings import Settings
    from sinks.clickhouse import ClickHouse
    from sinks.migrate import migrate

    with tempfile.TemporaryDirectory(prefix="merge-memory-") as path:
        ch = ClickHouse.connect(Settings(clickhouse_url=f"chdb://{path}"), database="merge_memory")
        migrate(ch, log=lambda *_: None)
        for table in TABLES:
            ch.command(f"SYSTEM STOP MERGES {ch.database}.{table}")
        for change in args.set:
            table, settings = change.split(":", 1)
            ch.command(f"ALTER TABLE {ch.database}.{table} MODIFY SETTING {settings}")
        started, per = time.monotonic(), args.messages // args.chunks
        for chunk in range(args.chunks):
            ch.command(INSERT.format(db=ch.database, offset=chunk * per, count=per))
        print(f"merge memory: {per * args.chunks:,} messages in {args.chunks} parts per table, "
              f"{time.monotonic() - started:.0f} s", file=sys.stderr)
        results = {}
        for table in TABLES:
            results[table] = merge_table(ch, table)
            print(f"merge memory: {table} {json.dumps(results[table])}", file=sys.stderr)
    out = ROOT / "bench" / "results" / f"merge-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"messages": args.messages, "chunks": args.chunks, "set": args.set,
                               "results": results}, indent=2) + "\n")
    print(f"merge memory: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

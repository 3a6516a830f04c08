"""`make bench-funnel-merge`: the memory of the daily funnel's last merge, before and after migration 0006.

A row of the funnel holds a uniqExact state: the hashes of every message id that reached one (day,
dimensions, status). When the parts holding a large funnel merge, the merge deserializes a granule of
each part and builds its output block of merged states in memory. This fills the funnel's states
table with `--parts` parts (default 4, the most a merge takes: migration 0005), each the states of an
equal share of `--messages` synthetic messages (three statuses each, 30 send days, 50 campaigns, the
keys of `make bench-engine-memory`), then merges them into one and reports the process's VmHWM above
its RSS just before the merge. Each configuration runs in its own process (chDB allows one engine
per process) on a fresh data directory, with the worker's engine settings:
  - `before-0006`: migrations up to 0005, so `funnel_daily_agg` (8,192-row granules and blocks);
  - `sendtrack`: every migration, so `funnel_daily_by_workspace` (64-row granules, 8-row merge blocks,
    as `funnel_daily_states` of 0006 had; keyed by workspace first since 0015, all rows in workspace '').
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine_memory import measure_apart, status  # noqa: E402

CONFIGS = {"before-0006": (5, "funnel_daily_agg"), "sendtrack": (None, "funnel_daily_by_workspace")}

STATES = """
INSERT INTO {table} (day, action, flow_id, campaign_id, step_id, status, messages)
SELECT toDate('2025-11-01') + msg % 30 AS day,
  ['email', 'zalo_oa', 'zns', 'messenger', 'sms', 'ai_call', 'http_request', 'timer', 'voucher',
   'crm_sync', 'start_flow', 'other'][msg % 12 + 1] AS action,
  concat('f', toString(msg % 20)) AS flow_id, concat('c', toString(msg % 50)) AS campaign_id,
  concat('s', toString(msg % 7)) AS step_id, status,
  uniqExactState(concat('m-', toString(cityHash64(msg)))) AS messages
FROM (SELECT number AS msg, arrayJoin(['sent', 'delivered', 'opened']) AS status FROM numbers({start}, {count}))
GROUP BY day, action, flow_id, campaign_id, step_id, status
"""


def measure(config: str, messages: int, parts: int, data_dir: str) -> dict:
    """Fill the funnel's states table with `parts` parts, then merge them; runs in its own process."""
    import sinks.clickhouse as clickhouse
    from sendtrack import memory
    from sendtrack.settings import Settings
    from sinks.migrate import migrate

    memory.tune_allocator()
    up_to, name = CONFIGS[config]
    ch = clickhouse.ClickHouse.connect(Settings(data_dir=data_dir))
    migrate(ch, lambda *a: None, up_to=up_to)
    table = f"`{ch.database}`.{name}"
    ch.command(f"SYSTEM STOP MERGES {table}")
    bounds = [messages * p // parts for p in range(parts + 1)]
    for p in range(parts):
        ch.command(STATES.format(table=table, start=bounds[p], count=bounds[p + 1] - bounds[p]))
        print(f"funnel-merge: {config}: part {p + 1}/{parts} written", file=sys.stderr, flush=True)
    where = f"database = '{ch.database}' AND table = '{name}' AND active"
    _, [(n_parts, rows, size)] = ch.query(f"SELECT count(), sum(rows), sum(bytes_on_disk) FROM system.parts WHERE {where}")
    time.sleep(3)  # the engine's allocator returns the fill's freed pages (dirty_decay_ms: 1000)
    memory.trim()
    Path("/proc/self/clear_refs").write_text("5")  # the kernel's high-water mark starts again from RSS
    before, started = status()["VmRSS"], time.perf_counter()
    ch.command(f"SYSTEM START MERGES {table}")
    ch.command(f"OPTIMIZE TABLE {table} FINAL")  # a background merge may have taken the parts first
    while ch.query(f"SELECT count() FROM system.parts WHERE {where}")[1][0][0] > 1:
        time.sleep(0.1)
    seconds, peak = time.perf_counter() - started, status()["VmHWM"]
    return {"config": config, "table": name, "messages": messages, "parts": n_parts, "rows": rows,
            "bytes_on_disk": size, "merge_seconds": round(seconds, 2), "rss_before_mb": before,
            "peak_rss_mb": peak, "growth_mb": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5_000_000)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--config", choices=CONFIGS, help="measure one configuration, in this process")
    parser.add_argument("--data-dir", help="with --config: the engine's data directory")
    args = parser.parse_args()
    if args.config:
        print(json.dumps(measure(args.config, args.messages, args.parts,
                                 args.data_dir or tempfile.mkdtemp(prefix="sendtrack-funnel-merge-"))))
        return
    results = {}
    for config in CONFIGS:
        r = results[config] = measure_apart(__file__, config, ["--messages", str(args.messages), "--parts", str(args.parts)],
                                             "sendtrack-funnel-merge-")
        print(f"funnel-merge: {config}: merging {r['parts']} parts of {r['table']} ({r['rows']:,} rows, "
              f"{r['bytes_on_disk'] / 2**20:,.0f} MiB) took {r['merge_seconds']} s and +{r['growth_mb']} MiB "
              f"(peak RSS {r['peak_rss_mb']} MiB)", flush=True)
    base, ours = results["before-0006"], results["sendtrack"]
    ratio = round(ours["growth_mb"] / max(base["growth_mb"], 1), 2)
    run_id = time.strftime("funnel-merge-%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"{run_id}.json"
    out.write_text(json.dumps({"run_id": run_id, "results": results, "growth_ratio": ratio}, indent=2) + "\n")
    print(f"funnel-merge: +{ours['growth_mb']} MiB with funnel_daily_by_workspace against +{base['growth_mb']} MiB "
          f"with funnel_daily_agg (ratio {ratio:.2f}); saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

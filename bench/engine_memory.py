"""`make bench-engine-memory`: the embedded engine's own memory while it ingests status changes.

The worker's peak RSS is its Python and RocksDB memory plus what embedded ClickHouse holds; this
measures the second part alone. Each configuration runs in its own process (chDB allows one engine
per process) on a fresh data directory, with sendtrack's migrations and server budgets:
  - `clickhouse-build`: the allocator as ClickHouse builds it (freed pages kept 5 s and returned only
    when their arena allocates again) and two merges per background thread;
  - `sendtrack`: the allocator and merge concurrency the worker sets (sinks/clickhouse.py).
Synthetic status changes (three per message, the later ones of a message arriving 60,000 messages
after its first, 30 send days, 50 campaigns) are inserted in batches of the sink's size through the
sink's JSON ingest tables, so every materialized view and merge of the worker runs. The peak is the
process's VmHWM above its RSS after the migrations; memory is also read from the engine's jemalloc.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ("clickhouse-build", "sendtrack")
CALLBACK_LAG = 60_000  # messages between a message's first status change and its later ones

ROWS = """
SELECT concat('ch-', toString(n)) AS change_id, concat('m-', toString(cityHash64(msg))) AS message_id,
  ['sent', 'delivered', 'opened'][phase + 1] AS status, '' AS previous_status,
  ['sent', 'delivered', 'opened'][phase + 1] AS current_status, false AS inferred,
  1764000000000 + n AS occurred_at, 1764000000000 + n AS recorded_at,
  ['email', 'zalo_oa', 'zns', 'messenger', 'sms', 'ai_call', 'http_request', 'timer', 'voucher',
   'crm_sync', 'start_flow', 'other'][msg % 12 + 1] AS action,
  'provider' AS provider, concat('cust-', toString(msg % 1000000)) AS customer_id,
  concat('r-', toString(msg % 1000000)) AS recipient, concat('f', toString(msg % 20)) AS flow_id,
  concat('c', toString(msg % 50)) AS campaign_id, concat('s', toString(msg % 7)) AS step_id,
  1761955200000 + (msg % 30) * 86400000 AS requested_at, '' AS reason_code, '' AS reason,
  '' AS bounce_type, 0 AS reason_at, '' AS event_id, '' AS workspace_id, 'status-changes' AS _topic, 0 AS _partition,
  n AS _offset
FROM (SELECT number AS n, n % 3 AS phase, intDiv(n, 3) - phase * {lag} AS msg
      FROM numbers({start}, {count}))
WHERE msg >= 0
"""


def status() -> dict[str, int]:
    """VmHWM and VmRSS of this process, in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def jemalloc(client) -> dict[str, int]:
    """The engine's jemalloc: allocated and resident MiB."""
    text = client.query("SELECT * FROM system.jemalloc_stats").result_rows[0][0]
    line = next(line for line in text.splitlines() if line.startswith("Allocated:"))
    return {k: int(v) // 2**20 for k, v in re.findall(r"(\w+): (\d+)", line) if k in ("Allocated", "resident")}


def measure(config: str, messages: int, batch: int, data_dir: str) -> dict:
    """Ingest `messages` messages' status changes into a fresh engine; runs in its own process."""
    if config == "clickhouse-build":
        os.environ["JE_MALLOC_CONF"] = ""  # before chDB loads: the build's own options
    import sinks.clickhouse as clickhouse
    from sendtrack import memory
    from sendtrack.settings import Settings
    from sinks.migrate import migrate

    memory.tune_allocator()
    if config == "clickhouse-build":
        options = clickhouse.embedded_options  # without the merge concurrency: the build's default
        clickhouse.embedded_options = lambda s: {
            k: v for k, v in options(s).items() if k != "background_merges_mutations_concurrency_ratio"}
    ch = clickhouse.ClickHouse.connect(Settings(data_dir=data_dir))
    migrate(ch, lambda *a: None)
    client, db = ch._client, ch.database
    idle = status()["VmRSS"]
    total_rows, started, resident_max = messages * 3, time.perf_counter(), 0
    for start in range(0, total_rows, batch):
        client.command(f"INSERT INTO {db}.status_changes_ingest "
                       + ROWS.format(lag=CALLBACK_LAG, start=start, count=min(batch, total_rows - start)))
        if (start // batch) % 50 == 0:
            resident_max = max(resident_max, jemalloc(client)["resident"])
            print(f"engine-memory: {config}: {start / total_rows:4.0%} of {total_rows:,} rows, "
                  f"RSS {status()['VmRSS']} MiB", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    parts = dict(client.query(f"SELECT table, count() FROM system.parts WHERE active AND database = '{db}' "
                              "GROUP BY table").result_rows)
    return {"config": config, "messages": messages, "rows": total_rows, "seconds": round(seconds, 1),
            "rows_per_s": round(total_rows / seconds), "idle_rss_mb": idle, "peak_rss_mb": status()["VmHWM"],
            "growth_mb": status()["VmHWM"] - idle, "jemalloc_resident_max_mb": resident_max,
            "jemalloc_end_mb": jemalloc(client), "active_parts": parts}


def measure_apart(script: str, config: str, args: list[str], prefix: str) -> dict:
    """Run `script --config config *args` in its own process (chDB allows one engine per process) on
    a fresh data directory, with the worker's allocator options; returns the JSON it prints."""
    env = {k: v for k, v in os.environ.items() if k != "JE_MALLOC_CONF"}
    # Removed by this process once the engine's process is gone (its background threads write to
    # the directory until then).
    data_dir = tempfile.mkdtemp(prefix=prefix)
    try:
        out = subprocess.run([sys.executable, script, "--config", config, *args, "--data-dir", data_dir],
                             env=env, stdout=subprocess.PIPE, text=True, check=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=9_000, help="rows per insert (the sink's is ~9,000)")
    parser.add_argument("--config", choices=CONFIGS, help="measure one configuration, in this process")
    parser.add_argument("--data-dir", help="with --config: the engine's data directory")
    args = parser.parse_args()
    if args.config:
        print(json.dumps(measure(args.config, args.messages, args.batch,
                                 args.data_dir or tempfile.mkdtemp(prefix="sendtrack-engine-memory-"))))
        return
    results = {}
    for config in CONFIGS:
        results[config] = measure_apart(__file__, config, ["--messages", str(args.messages), "--batch", str(args.batch)],
                                        "sendtrack-engine-memory-")
        r = results[config]
        print(f"engine-memory: {config}: peak RSS {r['peak_rss_mb']} MiB (+{r['growth_mb']} MiB over "
              f"{r['idle_rss_mb']} MiB idle), jemalloc resident max {r['jemalloc_resident_max_mb']} MiB, "
              f"{r['rows_per_s']:,} rows/s, active parts {r['active_parts']}", flush=True)
    base, ours = results["clickhouse-build"], results["sendtrack"]
    summary = {"growth_ratio": round(ours["growth_mb"] / base["growth_mb"], 2),
               "throughput_ratio": round(ours["rows_per_s"] / base["rows_per_s"], 2)}
    run_id = time.strftime("engine-memory-%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"{run_id}.json"
    out.write_text(json.dumps({"run_id": run_id, "results": results, **summary}, indent=2) + "\n")
    print(f"engine-memory: growth {ours['growth_mb']} MiB with sendtrack's settings against "
          f"{base['growth_mb']} MiB with ClickHouse's build (ratio {summary['growth_ratio']:.2f}); "
          f"throughput ratio {summary['throughput_ratio']:.2f}; saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

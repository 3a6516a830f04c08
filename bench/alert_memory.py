"""How much memory the deliverability alerts' evaluation takes in the worker's process.

The alerts evaluate the `health` report (deliverability_health over the last 7 days of
message_health FINAL; of messages_by_workspace FINAL before migration 0018) on the worker's embedded
ClickHouse, in the worker's own process: the memory it takes adds to the engine's and the sink's. This builds a dataset of `--messages` messages
sent in the last week (in `--inserts` inserts, as a sink's batches leave it: many parts, merging),
then, in a fresh process per variant, evaluates the report the way agents/alerts.py does and prints
the process's RSS before and its high-water mark after.

    .venv/bin/python bench/alert_memory.py --messages 1000000 --inserts 300
    .venv/bin/python bench/alert_memory.py --messages 5000000 --variants '[{"view": 18}, {"view": 19}]'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def parts(ch) -> dict[str, int]:
    _, rows = ch.query(f"SELECT table, count() FROM system.parts WHERE database = '{ch.database}' AND active "
                       "AND table IN ('messages_by_workspace', 'message_health') GROUP BY table")
    return dict(rows)


# The rates' counts as the view before migration 0018 read them (messages_by_workspace FINAL), and as
# it reads them since (message_health FINAL): `{"query": "wide"}` or `{"query": "narrow"}` runs one
# of them alone on the evaluation's sessions, instead of the whole evaluation.
COUNTS = {
    "wide": "SELECT workspace_id, action, provider, mailbox_provider, count(), countIf(delivered_at IS NOT NULL), "
            "countIf(bounced_at IS NOT NULL), countIf(failed_at IS NOT NULL), countIf(complained_at IS NOT NULL), "
            "countIf(unsubscribed_at IS NOT NULL) FROM sendtrack.messages_by_workspace FINAL "
            "WHERE requested_at >= now64(3) - toIntervalDay(7) GROUP BY ALL",
    "narrow": "SELECT workspace_id, action, provider, mailbox_provider, count(), sum(delivered), sum(bounced), "
              "sum(failed), sum(complained), sum(unsubscribed) FROM sendtrack.message_health FINAL "
              "WHERE requested_at >= now64(3) - toIntervalDay(7) GROUP BY ALL",
}


def build(path: Path, messages: int, inserts: int, table_settings: str = "") -> None:
    from sendtrack.settings import Settings
    from sinks.clickhouse import ClickHouse
    from sinks.migrate import prepare

    settings = Settings(clickhouse_url=f"chdb://{path}")
    ch = ClickHouse.connect(settings)
    prepare(ch, settings, log=lambda *_: None)
    if table_settings:  # e.g. "max_compress_block_size = 32768": applies to the parts written from here on
        ch.command(f"ALTER TABLE `{ch.database}`.messages_by_workspace MODIFY SETTING {table_settings}")
    per = -(-messages // inserts)
    started = time.monotonic()
    for offset in range(0, messages, per):
        n = min(per, messages - offset)
        # Each message: sent, then delivered (85%) or bounced (5%) or failed (10%), from 3 workspaces,
        # to addresses of a few mailbox providers, requested over the last six days.
        ch.command(
            f"INSERT INTO `{ch.database}`.status_changes_raw (change_id, message_id, status, previous_status, "
            "current_status, inferred, occurred_at, recorded_at, action, provider, customer_id, recipient, "
            "flow_id, campaign_id, step_id, requested_at, reason_code, reason, bounce_type, reason_at, event_id, "
            "workspace_id, mailbox_provider) "
            "SELECT hex(sipHash128(mid, st)), mid, st, '', st, false, t, t, 'email', 'sendgrid', "
            "concat('c', toString(n % 100000)), concat('u', toString(n % 100000), '@', dom), "
            "concat('flow-', toString(n % 7)), concat('camp-', toString(n % 20)), concat('step-', toString(n % 5)), "
            "t, '', '', '', toDateTime64(0, 3, 'UTC'), '', concat('shop-', toString(n % 3)), mb "
            f"FROM (SELECT number + {offset} AS n, concat('m', toString(n)) AS mid, "
            "now64(3) - toIntervalSecond(n % (6 * 86400)) AS t, "
            "['gmail.com', 'yahoo.com', 'outlook.com', 'example.vn'][n % 4 + 1] AS dom, "
            "['gmail', 'yahoo', 'microsoft', 'other'][n % 4 + 1] AS mb, "
            "arrayFilter(s -> (s.2), [('sent', true), ('delivered', n % 20 < 17), ('bounced', n % 20 = 17), "
            "('failed', n % 20 > 17)]) AS reached "
            f"FROM numbers({n})) ARRAY JOIN arrayMap(x -> x.1, reached) AS st")
    print(f"built {messages:,} messages in {inserts} inserts, {time.monotonic() - started:.1f} s, in {path} "
          f"(again with --path; delete it when done); active parts: {parts(ch)}", flush=True)
    ch._client.close()


def health_view(ch, version: Optional[int]) -> None:
    """Replace deliverability_health with the view as migration `version` (None: the latest that
    defines it) defines it."""
    from sinks.migrate import available

    defining = [(m.version, s) for m in available() for s in m.statements(ch.database)
                if "VIEW" in s and "deliverability_health AS" in s and (version is None or m.version == version)]
    if not defining:
        raise SystemExit(f"no migration {version} defines deliverability_health")
    ch.command(defining[-1][1])


def evaluate(path: Path, variant: dict) -> dict:
    """One evaluation as agents/alerts.py runs it (the health report on its sessions), with `variant`'s
    settings changed."""
    from sendtrack.settings import Settings
    from sinks.analyst import evaluation_pool
    from sinks import reports
    from sinks.clickhouse import ClickHouse

    settings = Settings(clickhouse_url=f"chdb://{path}", **variant.get("settings", {}))
    ch = ClickHouse.connect(settings)
    ch.query("SELECT 1")
    pool = evaluation_pool(settings, ch)
    if variant.get("clickhouse"):  # ClickHouse settings of the session, set before readonly
        readonly = pool.limits.pop("readonly")
        pool.limits.update(variant["clickhouse"])
        pool.limits["readonly"] = readonly
    if variant.get("view"):  # deliverability_health as migration `view` defines it (18: one row per window)
        health_view(ch, variant["view"])
    seen = parts(ch)
    before = status_kb("VmRSS")
    started = time.monotonic()
    rows = pool.trusted_query(COUNTS[variant["query"]])[1] if variant.get("query") else reports.run(pool.trusted(), "health", reports.Filters()).rows
    took = time.monotonic() - started
    if variant.get("view"):
        health_view(ch, None)  # the dataset's view is the latest migration's again
    return {"variant": variant, "parts": seen, "rows": len(rows), "seconds": round(took, 2),
            "rss_before_mb": before // 1024,
            "peak_mb": status_kb("VmHWM") // 1024, "added_mb": (status_kb("VmHWM") - before) // 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--inserts", type=int, default=300)
    parser.add_argument("--table-settings", default="", help="messages_by_workspace's settings to build with")
    parser.add_argument("--path", type=Path, help="an existing dataset (built by a previous run)")
    parser.add_argument("--variants", default='[{}]',
                        help="JSON list of {settings: {...}, clickhouse: {...}, query: wide|narrow, view: N}: "
                             "sendtrack's and ClickHouse's settings changed, one of the two counts alone, or the "
                             "view as migration N defines it for that evaluation (the latest migration's afterwards)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(evaluate(args.path, json.loads(args.one))), flush=True)
        return
    path = args.path or Path(tempfile.mkdtemp(prefix="alert-memory-")) / "clickhouse"
    if not args.path:
        build(path, args.messages, args.inserts, args.table_settings)
    for variant in json.loads(args.variants):
        out = subprocess.run([sys.executable, __file__, "--path", str(path), "--one", json.dumps(variant)],
                             capture_output=True, text=True, cwd=ROOT)
        print(out.stdout.strip() or out.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()

"""The worker's web server: /health, /metrics, the report API, and fault injection for tests."""

from __future__ import annotations

import asyncio
import sys
from datetime import date

from agents import store
from agents.app import app, settings
from agents.sink import sink
from sendtrack import memory
from sendtrack.metrics import metrics
from sinks import reports


def engine_ready() -> bool:
    """Partitions assigned, tables recovered, not rebalancing: the engine is applying records."""
    try:
        assigned = bool(app.consumer.assignment())
    except Exception:  # the consumer does not exist before the worker starts it
        return False
    return assigned and app.tables.recovery.completed.is_set() and not app.rebalancing \
        and not app.tables.recovery.in_recovery


@app.page("/health")
async def health(web, request):
    sink_ready = (sink.ch is not None and sink.ready.is_set()) or not settings.sink_enabled
    engine = engine_ready()
    ok = sink_ready and engine
    return web.json({"status": "ok" if ok else "starting", "engine": "ready" if engine else "starting",
                     "sink": "ready" if sink_ready else "starting",
                     "clickhouse": sink.ch.where if sink.ch else None},
                    status=200 if ok else 503)


def _memory_gauges() -> None:
    """Where the worker's memory is: resident set, Python's small objects, RocksDB, glibc's heap."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name = "process_resident_bytes" if line.startswith("VmRSS") else "process_peak_resident_bytes"
                    metrics.set(name, int(line.split()[1]) * 1024)
    except OSError:  # not Linux
        pass
    metrics.set("python_allocated_blocks", sys.getallocatedblocks())
    for part, used in store.memory_usage().items():
        metrics.set("rocksdb_memory_bytes", used, part=part)
    for part, used in memory.allocator().items():
        metrics.set("malloc_bytes", used, part=part)


@app.page("/metrics")
async def metrics_page(web, request):
    _memory_gauges()
    return web.text(metrics.render(), content_type="text/plain; version=0.0.4")


@app.page("/reports/{name}")
async def report_page(web, request, name: str):
    """The same reports as `sendtrack report`, as JSON: {title, columns, rows}."""
    if sink.ch is None:
        return web.json({"error": "ClickHouse is not open yet"}, status=503)
    q = request.query
    try:
        filters = reports.Filters(
            flow=q.get("flow"), campaign=q.get("campaign"), step=q.get("step"), action=q.get("action"),
            since=date.fromisoformat(q["since"]) if q.get("since") else None,
            until=date.fromisoformat(q["until"]) if q.get("until") else None,
        )
        report = await asyncio.to_thread(
            reports.run, sink.ch, name, filters, customer_id=q.get("customer"), by=q.get("by", "action"),
            vietnamese=q.get("lang") == "vi",
        )
    except (ValueError, KeyError) as exc:
        return web.json({"error": str(exc)}, status=400)
    rows = [[v.isoformat() if hasattr(v, "isoformat") else v for v in row] for row in report.rows]
    return web.json({"title": report.title, "columns": report.columns, "rows": rows})


@app.page("/debug/clickhouse-outage")
async def clickhouse_outage(web, request):
    """Make the sink's inserts fail for ?seconds=N (only with SENDTRACK_FAULT_INJECTION=1)."""
    if not settings.fault_injection:
        return web.json({"error": "fault injection is disabled"}, status=404)
    seconds = float(request.query.get("seconds", "10"))
    sink.inject_outage(seconds)
    return web.json({"outage_seconds": seconds})


READ_ONLY_PREFIXES = ("select", "with", "show", "describe", "desc", "explain", "exists")


@app.page("/query")
async def query_page(web, request):
    """Read-only SQL for analysts while the worker holds the embedded database: ?q=SELECT ..."""
    if sink.ch is None:
        return web.json({"error": "ClickHouse is not open yet"}, status=503)
    sql = request.query.get("q", "").strip()
    if not sql.lower().startswith(READ_ONLY_PREFIXES) or ";" in sql.rstrip(";"):
        return web.json({"error": "only one read-only statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN)"},
                        status=400)
    try:
        columns, rows = await asyncio.to_thread(sink.ch.query, sql)
    except Exception as exc:  # the analyst's SQL error goes back to the analyst
        return web.json({"error": str(exc).splitlines()[0][:500]}, status=400)
    rows = [[v.isoformat() if hasattr(v, "isoformat") else v for v in row] for row in rows]
    return web.json({"columns": columns, "rows": rows})

"""The worker's web server: /health, /metrics, the readers' report and SQL API, and fault injection for tests."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import date
from typing import Any, Optional

from faust.utils import json as _json
from faust.web import View

from agents import engine, store
from agents.app import app, settings
from agents.sink import sink
from sendtrack import auth, memory, settle
from sendtrack.metrics import metrics
from sinks import reports
from sinks.analyst import Analysts, Refused
from sinks import erasure
from sinks.erasure import erase_customer

readers = auth.Readers(settings.readers, workspaces=settings.reader_workspaces)
admins = auth.Readers(settings.admins, "SENDTRACK_ADMINS")
log = logging.getLogger(__name__)


@app.task
async def say_who_reads() -> None:
    """Say at start who may read customer data (docs/security.md)."""
    where = f"http://{settings.web_host}:{settings.web_port}"
    log.warning("dashboard: %s/dashboard", where)
    if readers.configured:
        log.warning("readers: %d configured (SENDTRACK_READERS); reports and SQL at %s need their "
                    "credentials", len(readers), where)
    else:
        log.warning("readers: none configured (SENDTRACK_READERS): reports and SQL at %s answer loopback "
                    "clients only", where)


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
    """Whether the worker is applying records and writing them. Open to all (load balancers,
    orchestrators): it names no host, path or customer."""
    sink_ready = (sink.ch is not None and sink.ready.is_set()) or not settings.sink_enabled
    engine_ok = not settings.engine_enabled or engine_ready()
    failed = getattr(sink, "failed", None)
    ok = sink_ready and engine_ok and not failed
    body = {"status": "ok" if ok else ("failed" if failed else "starting"),
            "engine": ("ready" if engine_ok else "starting") if settings.engine_enabled else "off",
            "sink": "failed" if failed else ("ready" if sink_ready else "starting"),
            "clickhouse": ("embedded" if settings.clickhouse_is_embedded else "server") if sink.ch else None}
    if failed:
        body["sink_error"] = failed
    return web.json(body, status=200 if ok else 503)


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
    for part, used in memory.latest_allocator().items():
        metrics.set("malloc_bytes", used, part=part)


@app.page("/metrics")
async def metrics_page(web, request):
    _memory_gauges()
    return web.text(metrics.render(), content_type="text/plain; version=0.0.4")


def refuse(web, denied: auth.Denied, page: bool = False):
    """The refusal of a reading request: 401 with a basic-auth challenge (a browser asks once, then
    sends the credentials itself), or 403. As text for a page, else as JSON."""
    headers = {"WWW-Authenticate": 'Basic realm="sendtrack"'} if denied.status == 401 else None
    if page:
        return web.text(f"{denied.status}: {denied.message}\n", status=denied.status, headers=headers)
    return web.json({"error": denied.message}, status=denied.status, headers=headers)


def reader_of(request) -> auth.Reader | auth.Denied:
    """The reader making a request to a reading endpoint (docs/security.md)."""
    return readers.authenticate(request.headers, request.remote)


# Why a read cannot be answered while ClickHouse is not open here: not yet, or never on this worker.
NOT_OPEN = ("ClickHouse is not open yet" if settings.sink_enabled else
            "this worker runs no sink (SENDTRACK_SINK_ENABLED=false) and has no ClickHouse: read from "
            "the worker that runs it")
_analysts: dict[Optional[str], Analysts] = {}


def analysts(workspace: Optional[str] = None) -> Optional[Analysts]:
    """The read-only sessions for readers of every workspace (None) or of one, once ClickHouse is
    open. A workspace's sessions see only its rows (sinks/analyst.py); each scoped workspace has
    its own few sessions, opened when its first reader asks."""
    if workspace not in _analysts and sink.ch is not None:
        _analysts[workspace] = Analysts(settings, sink.ch, workspace)
    return _analysts.get(workspace)


def reader_pool(web, request) -> tuple[Optional[Analysts], Any]:
    """(the sessions of the request's reader, None), or (None, the response that refuses it: no
    credentials, or ClickHouse not open yet). The sessions are scoped to the reader's workspace
    if it has one (`Analysts.workspace`)."""
    reader = reader_of(request)
    if isinstance(reader, auth.Denied):
        return None, refuse(web, reader)
    pool = analysts(reader.workspace)
    if pool is None:
        return None, web.json({"error": NOT_OPEN}, status=503)
    return pool, None


def _jsonable(rows: list) -> list:
    return [[v.isoformat() if hasattr(v, "isoformat") else v for v in row] for row in rows]


def _json_body(value: object) -> bytes:
    """`value` as JSON, in the readers' thread: serializing a large result on the event loop held
    the engine's consumer and the sink for seconds."""
    body = _json.dumps(value)
    return body if isinstance(body, bytes) else body.encode()


def _json_response(web, body: bytes):
    response = web.bytes(body, content_type="application/json")
    response.charset = "utf-8"
    return response


@app.page("/reports/{name}")
async def report_page(web, request, name: str):
    """The same reports as `sendtrack report`, as JSON: {title, columns, rows}. Readers only."""
    pool, refused = reader_pool(web, request)
    if refused is not None:
        return refused
    q = request.query
    try:
        filters = reports.scoped(name, reports.Filters(
            workspace=q.get("workspace"), flow=q.get("flow"), campaign=q.get("campaign"), step=q.get("step"),
            action=q.get("action"), provider=q.get("provider"),
            since=date.fromisoformat(q["since"]) if q.get("since") else None,
            until=date.fromisoformat(q["until"]) if q.get("until") else None,
        ), pool.workspace)

        def run() -> bytes:
            report = reports.run(pool.trusted(), name, filters, customer_id=q.get("customer"), by=q.get("by", "action"),
                                 vietnamese=q.get("lang") == "vi")
            return _json_body({"title": report.title, "columns": report.columns, "rows": _jsonable(report.rows)})

        body = await pool.run(run)
    except reports.OutOfScope as exc:
        return web.json({"error": str(exc)}, status=403)
    except (ValueError, KeyError) as exc:
        return web.json({"error": str(exc)}, status=400)
    except Refused as exc:
        return web.json({"error": exc.message, "code": exc.code}, status=exc.http_status)
    return _json_response(web, body)


@app.page("/query")
async def query_page(web, request):
    """One read-only statement for a reader: ?q=SELECT ... Runs as sinks/analyst.py says: parsed by
    ClickHouse, checked, on a readonly session with limits, off the event loop."""
    pool, refused = reader_pool(web, request)
    if refused is not None:
        return refused
    sql = request.query.get("q", "")

    def run() -> bytes:
        columns, rows = pool.query(sql)
        return _json_body({"columns": columns, "rows": _jsonable(rows)})

    try:
        body = await pool.run(run)
    except Refused as exc:  # the analyst's error goes back to the analyst, with ClickHouse's code
        return web.json({"error": exc.message, "code": exc.code}, status=exc.http_status)
    return _json_response(web, body)


@app.page("/admin/erase")
class Erase(View):
    """POST /admin/erase?customer=ID: erase a customer's personal data (sinks/erasure.py). Admins
    only (SENDTRACK_ADMINS); answers with what was erased and what stays until retention."""

    async def post(self, request):
        admin = auth.authenticate_admin(admins, request.headers)
        if isinstance(admin, auth.Denied):
            return refuse(self.web, admin)
        customer = request.query.get("customer", "")
        workspace = request.query.get("workspace")  # absent: the customer id in every workspace
        if not customer:
            return self.web.json({"error": "customer is required (?customer=ID[&workspace=W])"}, status=400)
        if sink.ch is None:
            return self.web.json({"error": NOT_OPEN}, status=503)
        log.warning("erase: admin %r erases %s%s", admin.name, erasure.subject(customer),
                    "" if workspace is None else f" of workspace {workspace!r}")
        # The engine first: once it applied the erase records and the sink wrote every status change
        # made before, nothing of the customer arrives after ClickHouse is changed.
        ids, recipients = await asyncio.to_thread(erasure.find, sink.ch, customer, workspace)
        done = await settle.settled(settings, await engine.request_erasure(ids)) if ids else True
        more, more_recipients = await asyncio.to_thread(erasure.find, sink.ch, customer, workspace)
        late = sorted(set(more) - set(ids))  # in the sink's backlog when first asked
        if late:
            await engine.request_erasure(late)
        found = (sorted(set(ids) | set(more)), sorted(set(recipients) | set(more_recipients)))
        erased = await asyncio.to_thread(erase_customer, sink.ch, customer, log.info, found, workspace)
        return self.web.json(erasure.report(erased, settings, settled=done))

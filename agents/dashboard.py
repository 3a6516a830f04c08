"""The live funnel dashboard: a page, its static files and its JSON API, for readers only (docs/dashboard.md)."""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import replace
from datetime import date
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from agents.app import app
from agents.web import reader_of, reader_pool, refuse
from sendtrack import auth
from sinks import reports
from sinks.analyst import Refused

STATIC = Path(__file__).with_name("static")
# The page's own files, served from the package; the charting library comes from the plotly wheel.
OWN_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
PLOTLY = "plotly.min.js"
PANELS = ("funnel", "trend", "status", "failures", "health", "recipients", "dead_letters", "latency", "customer")

try:
    PLOTLY_VERSION = metadata.version("plotly")
except metadata.PackageNotFoundError:  # the page still works, with tables only
    PLOTLY_VERSION = ""

_plotly: dict[str, bytes] = {}


def filters_of(query: Any) -> reports.Filters:
    """The dashboard's filters from its query string; empty fields are no filter."""
    value = lambda name: query.get(name) or None  # noqa: E731
    return reports.Filters(
        workspace=value("workspace"), flow=value("flow"), campaign=value("campaign"), step=value("step"), action=value("action"),
        provider=value("provider"),
        since=date.fromisoformat(query["since"]) if value("since") else None,
        until=date.fromisoformat(query["until"]) if value("until") else None,
    )


def _jsonable(rows: list) -> list:
    return [[v.isoformat() if hasattr(v, "isoformat") else v for v in row] for row in rows]


def panel(pool: Any, name: str, query: Any) -> dict[str, Any]:
    """One panel's data: a report of sinks/reports.py run on the filters its view can apply, and the
    filters it could not (blocking: call it from a thread)."""
    vietnamese = query.get("lang") == "vi"
    labels = reports.VI_LABELS if vietnamese else {}
    if name not in PANELS and name != "choices":
        raise ValueError(f"unknown panel {name!r}; expected one of {', '.join(PANELS)} or choices")
    if name == "dead_letters" and pool.workspace is not None:
        return {"title": "Dead letters by type", "columns": [], "rows": [], "unapplied": [], "labels": labels,
                "scoped": "Dead letters belong to no workspace: a reader of one workspace does not see them."}
    f = reports.scoped(name, filters_of(query), pool.workspace)
    if name == "choices":
        return {**reports.choices(pool.trusted(), f), "scope": pool.workspace}
    if name == "customer" and not query.get("customer"):
        return {"title": "Customer activity", "columns": [], "rows": [], "unapplied": [], "labels": labels}
    by = query.get("by") or "action"
    if by not in reports.GROUP_COLUMNS:
        raise ValueError(f"by must be one of {', '.join(reports.GROUP_COLUMNS)}")
    if name == "health":  # the last 24 hours and 7 days, whatever dates the page has
        f = replace(f, since=None, until=None)
    report = reports.run(pool.trusted(), name, f.only(name), customer_id=query.get("customer"), by=by,
                         vietnamese=vietnamese)
    return {"title": report.title, "columns": report.columns, "rows": _jsonable(report.rows),
            "unapplied": f.unapplied(name), "labels": labels}


@app.page("/dashboard")
async def dashboard_page(web, request):
    """The dashboard's page. Readers only, like /reports."""
    reader = reader_of(request)
    if isinstance(reader, auth.Denied):
        return refuse(web, reader, page=True)
    html = await asyncio.to_thread((STATIC / "dashboard.html").read_text)
    return web.html(html.replace("__PLOTLY_VERSION__", PLOTLY_VERSION), headers={"Cache-Control": "no-cache"})


@app.page("/dashboard/static/{name}")
async def dashboard_static(web, request, name: str):
    """The page's script and style, and the charting library (gzip-compressed when the browser takes it)."""
    reader = reader_of(request)
    if isinstance(reader, auth.Denied):
        return refuse(web, reader)
    if name in OWN_FILES:
        body = await asyncio.to_thread((STATIC / name).read_bytes)
        return web.bytes(body, content_type=OWN_FILES[name], headers={"Cache-Control": "no-cache"})
    if name != PLOTLY:
        return web.json({"error": "not found"}, status=404)
    if not _plotly:
        try:
            plain = await asyncio.to_thread(
                (resources.files("plotly") / "package_data" / PLOTLY).read_bytes)
        except (ModuleNotFoundError, FileNotFoundError):
            return web.json({"error": "plotly is not installed: charts are off, tables still work"}, status=404)
        _plotly["plain"] = plain
        _plotly["gzip"] = await asyncio.to_thread(gzip.compress, plain, 6)
    # The file changes only with the plotly package; the page asks for it with that version in the URL.
    headers = {"Cache-Control": "private, max-age=31536000, immutable", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return web.bytes(_plotly["gzip"], content_type="text/javascript", headers=headers)
    return web.bytes(_plotly["plain"], content_type="text/javascript", headers=headers)


@app.page("/dashboard/api/{name}")
async def dashboard_api(web, request, name: str):
    """One panel's data as JSON ({title, columns, rows, unapplied, labels}), or the filter choices."""
    pool, refused = reader_pool(web, request)
    if refused is not None:
        return refused
    try:
        body = await pool.run(panel, pool, name, request.query)  # the readers' threads, not the sink's
    except reports.OutOfScope as exc:
        return web.json({"error": str(exc)}, status=403)
    except (ValueError, KeyError) as exc:
        return web.json({"error": str(exc)}, status=400)
    except Refused as exc:
        return web.json({"error": exc.message, "code": exc.code}, status=exc.http_status)
    return web.json(body, headers={"Cache-Control": "no-store"})


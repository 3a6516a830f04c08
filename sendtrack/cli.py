"""The `sendtrack` command: worker, migrate, topics, report, simulate."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import date
from typing import Any, Optional

from sendtrack.auth import basic_auth_header
from sendtrack.settings import SettingsError, get_settings


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    from sendtrack import memory

    memory.tune_allocator()
    memory.tune_collector(settings.gc_young_threshold)
    from agents.app import app

    sys.argv = ["sendtrack", "worker", "-l", args.loglevel or settings.log_level]
    app.main()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from sinks.clickhouse import ClickHouse
    from sinks.migrate import prepare

    settings = get_settings()
    ch = ClickHouse.connect(settings)
    ran = prepare(ch, settings)
    print(f"migrate: {len(ran)} migration(s) applied to {ch.database} ({ch.where})")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from sendtrack.topics import ensure_topics

    created = asyncio.run(ensure_topics(get_settings()))
    print(f"topics: created {', '.join(created) if created else 'nothing (all exist)'}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from sendtrack import simulate

    settings = get_settings()
    workspaces = tuple(w.strip() for w in args.workspaces.split(",") if w.strip())
    if args.bouncy and args.bouncy not in workspaces:
        raise SystemExit(f"simulate: --bouncy {args.bouncy!r} is not one of --workspaces")
    traffic = simulate.generate(args.messages, seed=args.seed, run_id=args.run_id, workspaces=workspaces,
                                bouncy=args.bouncy)
    print(f"simulate: {args.messages} messages -> {len(traffic.records)} records "
          f"({traffic.orphans} orphans, {traffic.malformed} malformed) to {settings.kafka_broker}"
          + (f", in workspaces {', '.join(workspaces)}" if workspaces else ""), file=sys.stderr)
    rate = len(traffic.records) / args.duration if args.duration else None
    seconds = asyncio.run(simulate.publish(settings, traffic, rate=rate))
    print(f"simulate: published {len(traffic.records)} records in {seconds:.1f} s", file=sys.stderr)
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """Print the deliverability alerts the deliverability-alerts topic holds (committed records,
    oldest first; compaction keeps at least the last of each rate); with --follow, then each new one
    as it comes."""
    import orjson

    from sendtrack.topics import ALERTS, committed_records

    settings = get_settings()

    def show(value: bytes) -> None:
        a = orjson.loads(value)
        if args.format == "json":
            print(value.decode(), flush=True)
            return
        figures = (f"{a['rate']:.2%} ({a['events']:,} of {a['volume']:,})" if a["measured"]
                   else "not judged (no or too few messages)")
        print(f"#{a['sequence']:<3} {a['state'].upper():<8} was {a['previous_state']:<8} "
              f"{a['workspace_id'] or '(no workspace)'}: {a['action']} via {a['provider']}"
              f"{'' if a['mailbox_provider'] == '*' else ' to ' + a['mailbox_provider']}, {a['metric']} rate "
              f"over {a['period']} {figures}", flush=True)

    async def read() -> int:
        shown = 0
        async for _, value in committed_records(settings, settings.topic(ALERTS), follow=args.follow):
            show(value)
            shown += 1
        if not shown:
            print("alerts: none on the topic: every judged rate has been within its thresholds (or no worker "
                  "with a sink has started yet)", file=sys.stderr)
        return 0

    try:
        return asyncio.run(read())
    except KeyboardInterrupt:
        return 0


def _worker_api(what: str, method: str, path: str, params: dict[str, str], credentials: str,
                timeout: float) -> Optional[dict[str, Any]]:
    """A running worker's answer (embedded mode: the worker holds the database), presenting the
    first pair of `credentials`; None when no worker answers. A refusal ends the command."""
    settings = get_settings()
    url = f"http://{settings.web_host}:{settings.web_port}{path}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    if method == "POST":
        request.add_header("Content-Type", "application/json")
    header = basic_auth_header(credentials)
    if header:
        request.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read() or b"{}").get("error", str(exc))
        except ValueError:
            message = str(exc)
        raise SystemExit(f"{what}: the worker refused: {message}")
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return None  # no worker: the command runs on its own
        raise SystemExit(f"{what}: the worker did not answer ({exc.reason}); nothing was run here")
    except ConnectionRefusedError:
        return None
    except (ConnectionError, TimeoutError) as exc:
        # A worker that is there but slow still holds the database: never open it here as well.
        raise SystemExit(f"{what}: the worker did not answer in time ({exc!r}); nothing was run here")


def _report_from_api(name: str, params: dict[str, str]) -> Optional[dict[str, Any]]:
    return _worker_api("report", "GET", f"/reports/{name}", params, get_settings().readers, 60)


def cmd_erase(args: argparse.Namespace) -> int:
    """Erase a customer's personal data (sinks/erasure.py). With embedded ClickHouse a running
    worker holds the database: the erasure goes through its API as the first SENDTRACK_ADMINS pair;
    with no worker running, or with a server, it runs here."""
    settings = get_settings()
    doc = _erase_through_api(args.customer, args.workspace) if settings.clickhouse_is_embedded else None
    if doc is None:
        from sinks.clickhouse import ClickHouse
        from sinks.erasure import erase_customer, find, report
        from sinks.migrate import prepare

        ch = ClickHouse.connect(settings)
        prepare(ch, settings, log=lambda *_: None)
        found = find(ch, args.customer, args.workspace)
        asyncio.run(_send_to_engine(settings, found[0]))  # the engine's part first: it is idempotent
        erased = erase_customer(ch, args.customer, log=lambda line: print(line, file=sys.stderr), found=found,
                                workspace=args.workspace)
        doc = report(erased, settings, settled=False)
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    return 0


async def _send_to_engine(settings: Any, message_ids: list[str]) -> None:
    """The engine's part of an erasure, when no worker took the request: the records its workers
    apply when they read them (sinks.erasure.engine_records)."""
    from aiokafka import AIOKafkaProducer

    from sendtrack.batches import BATCH_KEY
    from sinks.erasure import engine_records

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_broker, acks="all", max_request_size=1024 * 1024)
    await producer.start()
    try:
        for partition, value in engine_records(message_ids, settings.partitions):
            await producer.send_and_wait(settings.topic("sendtrack-routed"), value, key=BATCH_KEY, partition=partition)
    finally:
        await producer.stop()


def _erase_through_api(customer: str, workspace: Optional[str]) -> Optional[dict[str, Any]]:
    """The erasure by a running worker (POST /admin/erase), or None when no worker answers."""
    params = {"customer": customer} if workspace is None else {"customer": customer, "workspace": workspace}
    return _worker_api("erase", "POST", "/admin/erase", params, get_settings().admins, 600)


def cmd_report(args: argparse.Namespace) -> int:
    from sinks import reports

    settings = get_settings()
    params = {k: v for k, v in {
        "flow": args.flow, "campaign": args.campaign, "step": args.step, "action": args.action,
        "provider": args.provider, "since": args.since, "until": args.until, "customer": args.customer_id, "by": args.by,
        "lang": args.lang,
    }.items() if v}
    if args.workspace is not None:  # '' is a workspace: that of requests that named none
        params["workspace"] = args.workspace
    doc = _report_from_api(args.name, params) if settings.clickhouse_is_embedded else None
    if doc is None:
        from sinks.clickhouse import ClickHouse

        filters = reports.Filters(
            workspace=args.workspace, flow=args.flow, campaign=args.campaign, step=args.step, action=args.action,
            provider=args.provider, since=date.fromisoformat(args.since) if args.since else None,
            until=date.fromisoformat(args.until) if args.until else None,
        )
        from clickhouse_connect.driver.exceptions import DatabaseError

        ch = ClickHouse.connect(settings)
        try:
            report = reports.run(ch, args.name, filters,
                                 customer_id=args.customer_id, by=args.by, vietnamese=args.lang == "vi")
        except ValueError as exc:
            raise SystemExit(f"report: {exc}")
        except DatabaseError as exc:
            if getattr(exc, "code", None) in (60, 81):  # UNKNOWN_TABLE, UNKNOWN_DATABASE
                raise SystemExit(f"report: no sendtrack tables in {ch.database} ({ch.where}); "
                                 "start the worker or run `sendtrack migrate` first")
            raise
        doc = {"title": report.title, "columns": report.columns,
               "rows": [[v.isoformat() if hasattr(v, "isoformat") else v for v in r] for r in report.rows]}
    sys.stdout.write(render(doc, args.format))
    return 0


def render(doc: dict[str, Any], fmt: str) -> str:
    """A report as an aligned table, JSON (list of objects) or CSV."""
    columns, rows = doc["columns"], doc["rows"]
    if fmt == "json":
        return json.dumps([dict(zip(columns, r)) for r in rows], ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
        return out.getvalue()
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [doc["title"], "  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    if not rows:
        lines.append("(no rows)")
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1%}" if v <= 1 else f"{v:,.3f}"
    return str(v)


def _numeric(v: str) -> bool:
    return v.replace(",", "").replace(".", "").replace("%", "").replace("-", "").isdigit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sendtrack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run the pipeline (status engine, ClickHouse sink, web server)")
    p.add_argument("-l", "--loglevel", choices=["crit", "error", "warn", "info", "debug"])
    p.set_defaults(func=cmd_worker)

    sub.add_parser("migrate", help="apply pending ClickHouse migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("topics", help="create the Kafka topics").set_defaults(func=cmd_topics)

    p = sub.add_parser("report", help="print an analytics report")
    p.add_argument("name", choices=["funnel", "status", "failures", "customer", "latency", "trend", "dead_letters",
                                    "unconfirmed", "recipients", "health"])
    p.add_argument("customer_id", nargs="?", help="for `customer`: the customer id")
    p.add_argument("--workspace", help="one workspace's numbers ('' for requests that named none); not for "
                                       "dead_letters, which belong to none")
    p.add_argument("--flow")
    p.add_argument("--campaign")
    p.add_argument("--step")
    p.add_argument("--action")
    p.add_argument("--provider", help="not for funnel, trend and status: their views have no provider column")
    p.add_argument("--since", help="first send date, YYYY-MM-DD (UTC)")
    p.add_argument("--until", help="last send date, YYYY-MM-DD (UTC)")
    p.add_argument("--by", choices=["action", "flow", "campaign", "step"], default="action",
                   help="funnel: group rows by this dimension (and action)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--lang", choices=["en", "vi"], default="en", help="vi: Vietnamese status labels")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("alerts", help="print the deliverability alerts (state changes of bounce, complaint, "
                                      "failure and unsubscribe rates) that deliverability-alerts holds")
    p.add_argument("--follow", action="store_true", help="keep printing new alerts as they come")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("erase", help="erase a customer's personal data (prints what was erased and what stays)")
    p.add_argument("--customer", required=True, help="the customer id, as send requests carry it")
    p.add_argument("--workspace", help="only the customer of this workspace (the same id in another workspace "
                                       "is another customer); absent: the id in every workspace")
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser("simulate", help="publish realistic traffic for all twelve actions")
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--duration", type=float, default=0, help="spread publication over this many seconds")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--run-id", default="sim", help="prefix of the generated message ids")
    p.add_argument("--workspaces", default="", help="comma-separated workspaces the messages are sent in, in turn")
    p.add_argument("--bouncy", help="one of --workspaces whose emails bounce a third of the time (a bad list)")
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report" and args.name == "customer" and not args.customer_id:
        raise SystemExit("report: `sendtrack report customer` needs a customer id")
    try:
        return args.func(args)
    except SettingsError as exc:  # a wrong environment: say which setting and why, not a traceback
        raise SystemExit(f"sendtrack: cannot start with these settings: {exc}")


if __name__ == "__main__":
    sys.exit(main())

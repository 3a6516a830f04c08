"""Analysts' SQL: one statement, read-only, limited, on sessions of its own (docs/security.md).

Every read that a reader asks for (`/query`, `/reports`, the ClickHouse HTTP interface) runs here,
never on the sink's connection:

- ClickHouse parses the text (`formatQuerySingleLine`): one statement, or a syntax error. The
  canonical text it returns is what runs, so nothing hides after a `;` or in a comment.
- ClickHouse's own parse tree is checked: the statement must read (SELECT, SHOW, DESCRIBE, EXPLAIN,
  EXISTS), write no file (`INTO OUTFILE`), call no function that reaches outside the database
  (`file()` reads any file of the worker's machine even in readonly mode) and use only table
  functions that generate data (`numbers()` …).
- It runs on a session that was made `readonly=1` after its limits were set: time, memory, result
  rows and bytes, rows read. In readonly mode no query can change a setting, so none can lift them.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

import clickhouse_connect
from clickhouse_connect.driver.binding import bind_query
from clickhouse_connect.driver.ctypes import RespBuffCls
from clickhouse_connect.driver.exceptions import DatabaseError
from clickhouse_connect.driver.transform import NativeTransform

from sendtrack.settings import Settings
from sendtrack.threads import evaluation_nice
from sinks.clickhouse import MIB, ClickHouse, embedded_options

# ClickHouse's exception codes for what the analyst did (ErrorCodes.cpp).
SYNTAX_ERROR = 62
READONLY = 164
ACCESS_DENIED = 497
UNKNOWN_FUNCTION = 46
UNKNOWN_SETTING = 115
UNKNOWN_FORMAT = 73
UNKNOWN_QUERY_PARAMETER = 456
TOO_MANY_ROWS_OR_BYTES = 396

# Functions that read or write outside the database: files, URLs, other servers, programs, the
# worker's Python objects. Refused anywhere in a statement, as scalar or as table functions.
OUTSIDE_FUNCTIONS = frozenset(name.lower() for name in (
    "file", "fileCluster", "url", "urlCluster", "remote", "remoteSecure", "cluster", "clusterAllReplicas",
    "s3", "s3Cluster", "gcs", "oss", "cosn", "hdfs", "hdfsCluster", "azureBlobStorage",
    "azureBlobStorageCluster", "mysql", "postgresql", "mongodb", "redis", "sqlite", "jdbc", "odbc",
    "executable", "executablePool", "python", "input", "dictionary", "loop", "arrowFlight", "arrowflight",
    "iceberg", "icebergS3", "icebergAzure", "icebergHDFS", "icebergLocal", "icebergS3Cluster",
    "icebergAzureCluster", "icebergHDFSCluster", "deltaLake", "deltaLakeAzure", "deltaLakeLocal",
    "deltaLakeCluster", "hudi", "hudiCluster", "paimon", "paimonS3", "paimonAzure", "paimonHDFS",
    "paimonLocal", "ytsaurus", "fuzzJSON", "fuzzQuery", "mergeTreeIndex", "mergeTreeProjection",
    "mergeTreeAnalyzeIndexes", "timeSeriesData", "timeSeriesMetrics", "timeSeriesTags", "prometheusQuery",
    "prometheusQueryRange", "addressToLine", "addressToLineWithInlines", "addressToSymbol",
    "demangle", "getServerSetting", "getMacro", "filesystemAvailable", "filesystemCapacity",
    "filesystemUnreserved", "currentProfiles", "currentRoles", "enabledProfiles", "enabledRoles",
    "defaultRoles", "defaultProfiles",
))
# Table functions that only generate data.
GENERATING_TABLE_FUNCTIONS = frozenset(name.lower() for name in (
    "numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series", "generateSeries",
    "generateRandom", "null", "view", "viewIfPermitted", "merge", "format",
))
# The kinds of statement a reader may run (the root of ClickHouse's parse tree).
READING_STATEMENTS = ("SelectWithUnionQuery", "SelectIntersectExceptQuery", "ShowTables", "ShowColumns",
                      "ShowCreate", "DescribeQuery", "Explain", "ExistsTable", "ExistsDatabase",
                      "ExistsView", "ExistsDictionary", "ShowDatabases")

# What a reader scoped to one workspace (SENDTRACK_READER_WORKSPACES) sees, enforced by ClickHouse:
# its sessions filter every table that holds customers' rows on the workspace (the setting
# additional_table_filters, set before readonly=1, applies to each read of the table, through views,
# subqueries and joins, and no statement can change it), and see nothing of the tables that belong to
# no workspace. A table of customer rows that a migration adds must be named here
# (tests/unit/test_scoped_readers.py fails otherwise).
WORKSPACE_TABLES = ("status_changes_raw", "engagement_events_raw", "messages_by_workspace", "message_health",
                    "funnel_daily_by_workspace", "engagement_daily_by_workspace")
NO_WORKSPACE_TABLES = ("dead_letters_raw",)  # a refused record may not even name a message
# The system tables a scoped reader may read: catalogs that clients (JDBC, Grafana, DBeaver) query,
# with no rows of any customer. Others show every session's statements (processes, query_log) or
# data (merge() over a table is not filtered, hence refused too).
# Tables without any customer's rows: the migration ledger, settings the sink writes, lookup tables.
CATALOG_TABLES = frozenset({"schema_migrations", "retention_applied", "receipt_expectations", "health_thresholds",
                            "mailbox_domains", "carrier_prefixes"})
SCOPED_SYSTEM_TABLES = frozenset({
    "one", "numbers", "numbers_mt", "zeros", "zeros_mt", "databases", "tables", "columns", "functions",
    "settings", "formats", "data_type_families", "table_engines", "table_functions", "time_zones",
    "collations", "keywords", "build_options", "aggregate_function_combinators", "contributors", "licenses",
    "current_roles", "enabled_roles",
})
_TABLE = re.compile(r"^ *(TableIdentifier|Identifier) ([^ ]+)")

T = TypeVar("T")
_FUNCTION = re.compile(r"^( *)Function (\w+)")
# Names that raw() puts into SQL text itself: a format after FORMAT, a setting in a SETTINGS clause.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A `{name:Type}` placeholder in ClickHouse's canonical text of a statement.
_PLACEHOLDER = re.compile(r"\{(\w+):")


@dataclass(frozen=True)
class RawResult:
    """A reader's statement's result as ClickHouse wrote it, and the format it is in."""

    body: bytes
    format: str


class _EscapedText:
    """A query parameter's value in ClickHouse's escaped text form (what the HTTP interface's
    `param_name=` carries), handed to ClickHouse unchanged: clickhouse-connect renders values of a
    type it does not know with str(), where it would escape a str a second time."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class _Body:
    """A whole Native result as the byte source clickhouse-connect's parser reads."""

    __slots__ = ("data", "last_message", "exception_tag")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.last_message: Optional[bytes] = None
        self.exception_tag: Optional[str] = None

    @property
    def gen(self) -> Iterator[bytes]:
        return iter((self.data,))

    def close(self) -> None:
        pass


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Refused(Exception):
    """A statement a reader may not run, or ClickHouse's error for it: code and message."""

    def __init__(self, code: int, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status

    def clickhouse_text(self) -> str:
        """The error as ClickHouse's HTTP interface writes it (clients parse the code from it)."""
        return f"Code: {self.code}. DB::Exception: {self.message}. (sendtrack)\n"


class EngineRefusal(Refused):
    """ClickHouse's own error for a reader's statement, with the error's name (READONLY, UNKNOWN_TABLE…)."""

    def __init__(self, code: int, message: str, name: Optional[str]) -> None:
        super().__init__(code, message)
        self.name = name


def workspace_filters(database: str, workspace: str) -> str:
    """additional_table_filters for a reader of one workspace (a Map literal: 'db.table' -> filter)."""
    only = f"workspace_id = {_quote(workspace)}"
    pairs = [f"{_quote(f'{database}.{t}')}: {_quote(only)}" for t in WORKSPACE_TABLES]
    pairs += [f"{_quote(f'{database}.{t}')}: '0'" for t in NO_WORKSPACE_TABLES]
    return "{" + ", ".join(pairs) + "}"


def analyst_limits(settings: Settings, database: Optional[str] = None, workspace: Optional[str] = None,
                   threads: Optional[int] = None, block_rows: Optional[int] = None,
                   nice: Optional[int] = None) -> dict[str, Any]:
    """Session settings of a reader's connection; `readonly` last, so the others can be set first.
    With a workspace, the session sees only that workspace's rows of `database`; with `threads`, a
    statement runs on at most that many of ClickHouse's threads; with `block_rows`, it reads blocks
    of at most that many rows (less memory for a FINAL over many parts, which holds a block of each);
    with `nice`, its threads run at that nice value while it runs (ClickHouse's os_thread_priority)."""
    limits: dict[str, Any] = {
        "max_execution_time": settings.query_max_seconds,
        "max_result_rows": settings.query_max_result_rows,
        "max_result_bytes": settings.query_max_result_bytes,
        "result_overflow_mode": "throw",
        "max_rows_to_read": settings.query_max_rows_to_read,
        "allow_introspection_functions": 0,
        "allow_ddl": 0,
    }
    if settings.query_memory_mb > 0:
        limits.update({
            "max_memory_usage": settings.query_memory_mb * MIB,
            "max_bytes_before_external_group_by": settings.query_memory_mb * MIB // 2,
            "max_bytes_before_external_sort": settings.query_memory_mb * MIB // 2,
        })
    if workspace is not None:
        assert database is not None, "a workspace's filters name the database's tables"
        limits["additional_table_filters"] = workspace_filters(database, workspace)
    if threads is not None:
        limits["max_threads"] = threads
    if block_rows is not None:
        limits["max_block_size"] = block_rows
    if nice is not None:
        limits["os_thread_priority"] = nice
    limits["readonly"] = 1
    return limits


@dataclass(frozen=True)
class Scope:
    """Where a scoped reader's statement may read. `database` is sendtrack's, whose tables its session
    filters; `current` the database of unqualified names; `relations` the engine of each relation of
    those two databases, by (database, name), as system.tables lists them."""

    database: str
    current: str
    relations: Mapping[tuple[str, str], str]
    databases: frozenset[str] = frozenset()  # every database's name: `db.t` after IN is a table, `a.c` a column

    def readable(self, database: str, name: str) -> bool:
        """Whether a reader of one workspace may read this relation. In sendtrack's database: the
        tables its session filters (or hides), the catalogs, and plain views, which read those tables
        by name and so through the filters. Not a materialized view (reading one reads its target
        table under the view's name, which no filter names) nor a Null ingest table. In system: the
        catalogs of SCOPED_SYSTEM_TABLES. information_schema's views read system's catalogs."""
        if database == self.database:
            return name in WORKSPACE_TABLES or name in NO_WORKSPACE_TABLES or name in CATALOG_TABLES or \
                self.relations.get((database, name)) == "View"
        if database == "system":
            return name in SCOPED_SYSTEM_TABLES
        return database.lower() == "information_schema"


_PREWHERE = re.compile(r"\bPREWHERE\b", re.I)


def check_scope(tree: list[str], canonical: str, scope: Scope) -> None:
    """Refuse, for a reader of one workspace, what its session's filters do not cover: relations
    `Scope.readable` does not allow (other databases, materialized views, system tables with rows of
    every workspace or other sessions' statements), merge() (which reads tables without their
    filters), dictionaries and Join tables, and PREWHERE (which ClickHouse runs before the filter: an
    error it raises could quote another workspace's values)."""
    if _PREWHERE.search(canonical):
        raise Refused(ACCESS_DENIED, "PREWHERE is not allowed for a reader of one workspace: use WHERE")
    for line in tree:
        match = _FUNCTION.match(line)
        if match:
            name = match.group(2).lower()
            if name == "merge" or name.startswith(("dictget", "joinget")):
                raise Refused(ACCESS_DENIED, f"{match.group(2)}() is not allowed for a reader of one workspace")
            continue
        match = _TABLE.match(line)
        if not match:
            continue
        kind, name = match.groups()
        database, dot, table = name.rpartition(".")
        if not dot:
            # An unqualified name: a relation of the current database, else a column (Identifier) or
            # a WITH subquery's name (TableIdentifier), which read nothing by themselves.
            database = scope.current
            if (database, table) not in scope.relations and database != "system":
                continue
        elif kind == "Identifier" and database not in scope.databases and database != "system" and \
                database.lower() != "information_schema":
            continue  # alias.column
        if not scope.readable(database, table):
            raise Refused(ACCESS_DENIED, f"{database}.{table} is not readable by a reader of one workspace: read "
                                         f"the {scope.database} database's tables and views")


def check_tree(tree: list[str]) -> None:
    """Refuse a parsed statement (ClickHouse's `EXPLAIN AST` lines) that does not only read."""
    if not tree or not tree[0].startswith(READING_STATEMENTS):
        kind = tree[0].split(" ")[0] if tree else "nothing"
        raise Refused(READONLY, f"only reading statements are allowed (SELECT, SHOW, DESCRIBE, EXPLAIN, "
                                f"EXISTS), not {kind}")
    parents: list[str] = []
    for line in tree:
        depth = len(line) - len(line.lstrip(" "))
        node = line.strip()
        del parents[depth:]
        if depth == 1 and node.startswith("Literal"):
            # The root's own literal child is the target of INTO OUTFILE (a file on the worker).
            raise Refused(READONLY, "INTO OUTFILE is not allowed: results come back to the client")
        match = _FUNCTION.match(line)
        if match:
            name = match.group(2).lower()
            in_from = bool(parents) and parents[-1].startswith("TableExpression")
            if name in OUTSIDE_FUNCTIONS:
                raise Refused(ACCESS_DENIED, f"function {match.group(2)}() reaches outside the database "
                                             "and is not allowed")
            if in_from and name not in GENERATING_TABLE_FUNCTIONS:
                raise Refused(ACCESS_DENIED, f"table function {match.group(2)}() is not allowed; read the "
                                             "sendtrack database's tables and views")
        parents.append(node)


class Analysts:
    """A few read-only sessions for readers' statements (SENDTRACK_QUERY_CONCURRENCY at once), of
    every workspace or, with `workspace`, of that one only."""

    def __init__(self, settings: Settings, engine: ClickHouse, workspace: Optional[str] = None,
                 threads: Optional[int] = None, block_rows: Optional[int] = None,
                 nice: Optional[int] = None) -> None:
        self.settings = settings
        self.database = engine.database
        self.workspace = workspace
        self.limits = analyst_limits(settings, engine.database, workspace, threads, block_rows, nice)
        self._idle: "queue.LifoQueue[Any]" = queue.LifoQueue()
        self._opened = 0
        self._lock = threading.Lock()
        # Readers' work runs on threads of its own: a burst of readers waiting for a session must
        # not take the event loop's default threads, on which the sink writes to ClickHouse.
        self._executor = ThreadPoolExecutor(max_workers=settings.query_concurrency + 2,
                                            thread_name_prefix="readers")

    def close(self) -> None:
        """Close the idle sessions (an open chDB handle keeps its engine open)."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break
        self._executor.shutdown(wait=False)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` (a reader's query and the conversion of its rows) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def _open(self) -> Any:
        s = self.settings
        if s.clickhouse_is_embedded:
            # A handle of its own on the worker's engine: its session settings (readonly) and its
            # lock are not the sink's.
            return clickhouse_connect.get_client(
                interface="chdb", path=str(s.embedded_clickhouse_path), chdb_options=embedded_options(s),
                settings=self.limits)
        from urllib.parse import unquote, urlparse

        url = urlparse(s.clickhouse_reader_url or s.clickhouse_url)
        return clickhouse_connect.get_client(
            host=url.hostname or "localhost", port=url.port or (8443 if url.scheme == "https" else 8123),
            username=unquote(url.username or "default"), password=unquote(url.password or ""),
            secure=url.scheme == "https", connect_timeout=5,
            send_receive_timeout=int(s.query_max_seconds) + 10,
            autogenerate_session_id=False, settings=self.limits)

    @contextmanager
    def session(self) -> Iterator[Any]:
        """One read-only session, waiting for one to be free (each runs one statement at a time)."""
        try:
            client = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = self._opened < self.settings.query_concurrency
                if grow:
                    self._opened += 1
            if grow:
                try:
                    client = self._open()
                except Exception:
                    with self._lock:
                        self._opened -= 1
                    raise
            else:
                client = self._idle.get(timeout=self.settings.query_max_seconds + 30)
        try:
            yield client
        finally:
            self._idle.put(client)

    def prepare(self, client: Any, sql: str, parameters: Optional[dict[str, Any]] = None) -> str:
        """The canonical text of one reading statement, or Refused (see the module docstring)."""
        sql = sql.strip()
        if not sql:
            raise Refused(SYNTAX_ERROR, "empty query")
        try:
            canonical = client.query("SELECT formatQuerySingleLine({q:String})", parameters={"q": sql}
                                     ).result_rows[0][0]
            tree = [row[0] for row in client.query(f"EXPLAIN AST {canonical}", parameters=parameters).result_rows]
        except DatabaseError as exc:
            raise _refused(exc) from None
        check_tree(tree)
        if self.workspace is not None:
            check_scope(tree, canonical, self._scope(client, client.database or "default"))
        return canonical

    def _scope(self, client: Any, current: str) -> Scope:
        """What a statement of this scoped session may read, with the relations of sendtrack's and
        the current database as they are now."""
        try:
            rows = client.query("SELECT database, name, engine FROM system.tables WHERE database IN "
                                "({d:String}, {c:String})", parameters={"d": self.database, "c": current}).result_rows
            databases = frozenset(name for (name,) in client.query("SELECT name FROM system.databases").result_rows)
        except DatabaseError as exc:
            raise _refused(exc) from None
        return Scope(self.database, current, {(db, name): engine for db, name, engine in rows}, databases)

    def query(self, sql: str, parameters: Optional[dict[str, Any]] = None) -> tuple[list[str], list[tuple]]:
        """Column names and rows of a reader's statement (blocking: call it from a thread)."""
        with self.session() as client:
            canonical = self.prepare(client, sql, parameters)
            try:
                # ClickHouse's bytes first, bounded, then Python's rows: max_result_bytes counts a
                # constant column once, however many rows repeat it, and a row of Python objects is
                # 10 to 40 times its Native bytes (a 256 MiB result was 5 GiB of dates in Python).
                context = client.create_query_context(query=canonical, parameters=parameters)
                body = client.raw_query(canonical, parameters=parameters, fmt="Native")
            except DatabaseError as exc:
                raise _refused(exc) from None
        limit = self.settings.query_max_result_bytes
        if limit and len(body) > limit:
            raise Refused(TOO_MANY_ROWS_OR_BYTES, f"Limit for result exceeded, max bytes: {limit}, "
                                                  f"current bytes: {len(body)}")
        result = NativeTransform.parse_response(RespBuffCls(_Body(body)), context)
        return list(result.column_names), result.result_rows

    def trusted_query(self, sql: str, parameters: Optional[dict[str, Any]] = None) -> tuple[list[str], list[tuple]]:
        """sendtrack's own report SQL, under the same session limits (no parse-tree check needed)."""
        with self.session() as client:
            try:
                result = client.query(sql, parameters=parameters)
            except DatabaseError as exc:
                raise _refused(exc) from None
        return list(result.column_names), result.result_rows

    def prepare_raw(self, client: Any, sql: str, parameters: Mapping[str, str], current: str = "default"
                    ) -> tuple[str, dict[str, Any], Optional[str]]:
        """`prepare` for a statement that may have `{name:Type}` placeholders and a FORMAT clause:
        its canonical text, the parameters it uses (ClickHouse substitutes them before the tree is
        checked) and the format its FORMAT clause names, if any."""
        sql = sql.strip()
        if not sql:
            raise Refused(SYNTAX_ERROR, "empty query")
        bound: dict[str, Any] = {}
        try:
            canonical = client.query("SELECT formatQuerySingleLine({q:String})", parameters={"q": sql}
                                     ).result_rows[0][0]
            try:
                tree = [row[0] for row in client.query(f"EXPLAIN AST {canonical}").result_rows]
            except DatabaseError as exc:
                if _refused(exc).code != UNKNOWN_QUERY_PARAMETER:
                    raise
                # Only names ClickHouse parsed as placeholders are passed, and only if the client
                # binds them server-side: a client-side substitution would change the text checked.
                bound = {name: _EscapedText(parameters[name]) for name in set(_PLACEHOLDER.findall(canonical))
                         if name in parameters}
                if bind_query(canonical, bound)[0] != canonical:
                    raise Refused(UNKNOWN_QUERY_PARAMETER, "query parameters could not be bound server-side")
                tree = [row[0] for row in client.query(f"EXPLAIN AST {canonical}", parameters=bound).result_rows]
        except DatabaseError as exc:
            raise _engine_refusal(exc) from None
        check_tree(tree)
        if self.workspace is not None:
            check_scope(tree, canonical, self._scope(client, current))
        # A FORMAT clause is the root's last identifier child (before SETTINGS); SHOW and EXISTS have
        # identifier children of their own, so the canonical text must end with it too.
        children = [line[1:] for line in tree[1:] if line.startswith(" ") and not line.startswith("  ")]
        names = [child[len("Identifier "):] for child in children if child.startswith("Identifier ")]
        fmt = None
        if names and re.search(rf" FORMAT {re.escape(names[-1])}(?: SETTINGS .*)?$", canonical):
            fmt = names[-1]
        return canonical, bound, fmt

    def raw(self, sql: str, fmt: str, parameters: Optional[Mapping[str, str]] = None,
            settings: Optional[Mapping[str, str]] = None, database: Optional[str] = None) -> RawResult:
        """A reader's statement as ClickHouse's own bytes, for the HTTP interface (blocking: call it
        from a thread). Checked as `query` is; in the statement's FORMAT or else in `fmt`;
        `parameters` are `{name:Type}` values as the HTTP interface's `param_name` carries them;
        each of `settings` is refused by ClickHouse unless it equals the session's value (readonly=1);
        `database` is the current database for unqualified names."""
        if not _NAME.match(fmt):
            raise Refused(UNKNOWN_FORMAT, f"Unknown output format {fmt!r}")
        with self.session() as client:
            canonical, bound, query_format = self.prepare_raw(client, sql, parameters or {}, database or "default")
            if settings:
                bad = next((name for name in settings if not _NAME.match(name)), None)
                if bad is not None:
                    raise Refused(UNKNOWN_SETTING, f"Unknown setting {bad!r}")
                clause = ", ".join(f"{name} = {_quote(str(value))}" for name, value in settings.items())
                try:
                    client.raw_query(f"SELECT 1 SETTINGS {clause} FORMAT Null")
                except DatabaseError as exc:
                    raise _engine_refusal(exc) from None
            # An embedded session's handle keeps the database of its last statement: the other
            # reads on it expect `default`.
            saved = client.database
            client.database = database or ("default" if self.settings.clickhouse_is_embedded else None)
            try:
                body = client.raw_query(canonical, parameters=bound or None,
                                        fmt=None if query_format else fmt)
            except DatabaseError as exc:
                raise _engine_refusal(exc) from None
            finally:
                client.database = saved if saved is not None or not self.settings.clickhouse_is_embedded \
                    else "default"
        return RawResult(body, query_format or fmt)

    def trusted(self) -> "TrustedReads":
        """What sinks/reports.py reads through: its own SQL, on these sessions and limits."""
        return TrustedReads(self)


# The deliverability alerts' evaluation (agents/alerts.py) reads message_health FINAL (migration
# 0018), which holds a block of every part's columns at once. At 1 M messages in 7 parts it added
# 59-85 MB to the process's peak with ClickHouse's default blocks (65,409 rows) and 24-29 MB with
# blocks of 1,024 rows, a little slower (bench/alert_memory.py, docs/performance.md "Eighteenth
# session"; before 0018 the view read messages_by_workspace FINAL: 175-244 MB in 42-45 parts).
EVALUATION_BLOCK_ROWS = 1024
# The evaluation is sendtrack's own query, at a lower priority: it may run this many times a reader's
# time limit before it is cut (a busy machine gives it only the CPU the records leave).
EVALUATION_TIME_FACTOR = 10


def evaluation_pool(settings: Settings, engine: ClickHouse) -> Analysts:
    """The sessions the alerts' evaluation reads through: the readers' limits, but room for every
    rate (about 1,000 workspaces' rates are 100,000 rows); one of ClickHouse's threads (with the
    evaluator's pause, at most a tenth of a core) and small blocks. In the embedded engine that
    thread is the worker's own: it runs nicer than the event loop and the background threads
    (sendtrack/threads.py, evaluation_nice), so that an evaluation takes only the CPU the records
    leave. With either engine it may run EVALUATION_TIME_FACTOR times a reader's time limit: a busy
    machine or server stretches it, and a cut evaluation sends no alert."""
    return Analysts(settings.model_copy(update={"query_max_result_rows": 10_000_000,
                                                "query_max_result_bytes": 1024 ** 3,
                                                "query_max_seconds": EVALUATION_TIME_FACTOR * settings.query_max_seconds}),
                    engine,
                    threads=1, block_rows=EVALUATION_BLOCK_ROWS,
                    nice=evaluation_nice(settings.background_nice) if settings.clickhouse_is_embedded else None)


class TrustedReads:
    """The `database` and `query` that sinks/reports.py uses, on the readers' sessions."""

    def __init__(self, pool: Analysts) -> None:
        self.database = pool.database
        self.query = pool.trusted_query


_CODE = re.compile(r"Code: (\d+)\. DB::Exception: (.*?)(?: \(version [^)]*\))?(?:\. \([A-Z_]+\))?$", re.S)


_ERROR_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")


def _engine_refusal(exc: DatabaseError) -> EngineRefusal:
    """`_refused`, keeping the error's name for a client that reads it (ClickHouse's HTTP interface)."""
    refused = _refused(exc)
    names = _ERROR_NAME.findall(str(exc))
    return EngineRefusal(refused.code, refused.message, getattr(exc, "name", None) or (names[-1] if names else None))


def _refused(exc: DatabaseError) -> Refused:
    """ClickHouse's error for a reader's statement, with its code."""
    text = str(exc).strip()
    code = getattr(exc, "code", None)
    found = _CODE.search(text.splitlines()[0] if text else "")
    if found:
        code = code or int(found.group(1))
        text = found.group(2)
    message = text.splitlines()[0][:1000] if text else "query failed"
    return Refused(int(code) if code else 1000, message)

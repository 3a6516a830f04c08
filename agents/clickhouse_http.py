"""ClickHouse's HTTP interface, read-only, over the analysts' sessions (docs/clickhouse-http.md)."""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import logging
import queue
import re
import struct
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Optional

import lz4.block
import lz4.frame
from aiohttp import web
from clickhouse_cityhash.cityhash import CityHash128
from mode import Service
from multidict import CIMultiDict

from agents.app import app, settings
from agents.web import analysts, readers
from sendtrack import auth
from sinks import native
from sinks.analyst import Analysts, Refused

logger = logging.getLogger(__name__)

# Request parameters the HTTP layer consumes (ClickHouse's HTTPHandler reserves the same names);
# the engine never sees them as settings.
TRANSPORT_PARAMETERS = frozenset({
    "query", "user", "password", "quota_key", "query_id", "database", "default_format", "compress",
    "decompress", "session_id", "session_timeout", "session_check", "close_session", "stacktrace", "role",
    "client_protocol_version", "buffer_size", "wait_end_of_query", "http_wait_end_of_query",
    "http_response_buffer_size", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "enable_http_compression", "http_zlib_compression_level", "cancel_http_readonly_queries_on_client_close",
    "add_http_cors_header", "http_native_compression_disable_checksumming_on_decompress",
    # The method of compress=1 blocks (clickhouse-go sends it): answered with LZ4, which its readers all
    # take (each block names its method).
    "network_compression_method", "network_zstd_compression_level",
})

# The names of the error codes that sendtrack writes itself (the engine's errors carry their own).
ERROR_NAMES = {1: "UNSUPPORTED_METHOD", 48: "NOT_IMPLEMENTED", 62: "SYNTAX_ERROR", 73: "UNKNOWN_FORMAT",
               115: "UNKNOWN_SETTING", 164: "READONLY", 202: "TOO_MANY_SIMULTANEOUS_QUERIES",
               271: "CANNOT_DECOMPRESS", 439: "CANNOT_SCHEDULE_TASK", 456: "UNKNOWN_QUERY_PARAMETER",
               497: "ACCESS_DENIED", 516: "AUTHENTICATION_FAILED", 1002: "UNKNOWN_EXCEPTION"}


def http_status(name: str) -> int:
    """The HTTP status of a ClickHouse error, as ClickHouse's HTTPHandler gives it
    (exceptionCodeToHTTPStatus); READONLY and ACCESS_DENIED are 403 here: the reader asked for
    what a reader may not do."""
    if name in ("UNKNOWN_USER", "WRONG_PASSWORD", "REQUIRED_PASSWORD", "AUTHENTICATION_FAILED"):
        return 401
    if name in ("ACCESS_DENIED", "READONLY"):
        return 403
    if name.startswith("CANNOT_PARSE_") or name in (
            "DUPLICATE_COLUMN", "ILLEGAL_COLUMN", "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE",
            "TOO_DEEP_AST", "TOO_BIG_AST", "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA",
            "TYPE_MISMATCH", "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE", "UNKNOWN_QUERY_PARAMETER",
            "BAD_QUERY_PARAMETER"):
        return 400
    if name in ("UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
                "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING",
                "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE",
                "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"):
        return 404
    return {"QUERY_IS_TOO_LARGE": 413, "NOT_IMPLEMENTED": 501, "TIMEOUT_EXCEEDED": 408,
            "UNSUPPORTED_METHOD": 405, "SOCKET_TIMEOUT": 503, "CANNOT_SCHEDULE_TASK": 503,
            "TOO_MANY_SIMULTANEOUS_QUERIES": 503}.get(name, 500)


_BINARY_FORMATS = ("Native", "RowBinary", "Parquet", "Arrow", "ArrowStream", "ORC", "Avro", "Protobuf",
                   "CapnProto", "MsgPack", "BSONEachRow", "Npy", "RawBLOB", "Buffers", "One")


def content_type(fmt: str) -> str:
    """The Content-Type ClickHouse sends with a result in `fmt`."""
    if fmt.startswith(_BINARY_FORMATS):
        return "application/octet-stream"
    if fmt.startswith(("JSON", "NDJSON")) and not fmt.startswith("JSONLines"):
        return "application/json; charset=UTF-8"
    if fmt.startswith(("TabSeparated", "TSV")):
        return "text/tab-separated-values; charset=UTF-8"
    if fmt.startswith("CSV"):
        return f"text/csv; charset=UTF-8; header={'present' if 'WithNames' in fmt else 'absent'}"
    if fmt == "XML":
        return "application/xml; charset=UTF-8"
    return "text/plain; charset=UTF-8"


_CODE_PREFIX = re.compile(r"^(?:Code: \d+\. DB::Exception: )+")
_TRAILER = re.compile(r"(?:\.? \([A-Z][A-Z0-9_]*\))?(?: \(version [^)]*\))?(?:\. \([A-Z][A-Z0-9_]*\))?\.?$")


class Errors:
    """ClickHouse's error text, `Code: N. DB::Exception: message. (NAME) (version V)`, and status."""

    def __init__(self) -> None:
        self.version = ""

    def response(self, code: int, message: str, name: Optional[str] = None, status: Optional[int] = None,
                 headers: Optional[Mapping[str, str]] = None) -> web.Response:
        name = name or ERROR_NAMES.get(code, "UNKNOWN_EXCEPTION")
        message = _TRAILER.sub("", _CODE_PREFIX.sub("", message.strip())).rstrip(".")
        version = f" (version {self.version})" if self.version else ""
        return web.Response(
            status=status or http_status(name), text=f"Code: {code}. DB::Exception: {message}. ({name}){version}\n",
            content_type="text/plain", charset="utf-8",
            headers={"X-ClickHouse-Exception-Code": str(code), **(headers or {})})

    def refusal(self, exc: Refused, headers: Mapping[str, str]) -> web.Response:
        return self.response(exc.code, exc.message, name=getattr(exc, "name", None), headers=headers)


class Request:
    """What one HTTP request asks ClickHouse for, read as ClickHouse's HTTP interface reads it."""

    def __init__(self, params: Mapping[str, str], headers: Mapping[str, str], body: str) -> None:
        url_query = params.get("query", "")
        # ClickHouse runs the URL's query followed by the body (INSERT ... VALUES data comes there).
        self.sql = f"{url_query}\n{body}" if url_query and body else url_query or body
        self.format = params.get("default_format") or headers.get("X-ClickHouse-Format") or "TabSeparated"
        self.database = params.get("database") or headers.get("X-ClickHouse-Database") or None
        self.query_id = params.get("query_id") or headers.get("X-ClickHouse-Query-Id") or str(uuid.uuid4())
        self.parameters = {name[len("param_"):]: value for name, value in params.items()
                           if name.startswith("param_")}
        self.settings = {name: value for name, value in params.items()
                         if name not in TRANSPORT_PARAMETERS and not name.startswith("param_")}
        # Clients send their own timeout as max_execution_time with every query (Grafana's data source
        # its query timeout, clickhouse-go its read timeout, 300 s by default), which readonly=1
        # refuses unless equal. Any positive one is accepted and ignored: the query runs under the
        # session's limit, SENDTRACK_QUERY_MAX_SECONDS; 0 (no limit) is refused.
        timeout = _seconds(self.settings.get("max_execution_time"))
        if timeout is not None and timeout > 0:
            del self.settings["max_execution_time"]
        self.compression = params.get("enable_http_compression", "1") not in ("0", "false")
        self.native_compression = params.get("compress", "0") not in ("0", "false", "")
        # Native is written for this protocol revision (clickhouse-go names its own): sinks/native.py.
        try:
            self.revision = int(params.get("client_protocol_version") or 0)
        except ValueError:
            self.revision = 0


def _seconds(value: Optional[str]) -> Optional[float]:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def credentials_headers(params: Mapping[str, str], headers: Mapping[str, str]) -> Mapping[str, str] | str:
    """The headers `auth.Readers` reads, with `?user=&password=` as ClickHouse allows them; or why not."""
    if "user" not in params and "password" not in params:
        return headers
    if "Authorization" in headers or "X-ClickHouse-User" in headers:
        return "credentials in both the URL and the headers"
    merged = CIMultiDict(headers)
    merged["X-ClickHouse-User"] = params.get("user", "default")
    merged["X-ClickHouse-Key"] = params.get("password", "")
    return merged


_ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, compresslevel=3),
    "deflate": lambda data: zlib.compress(data, 3),
}
_ENCODINGS["lz4"] = lambda data: lz4.frame.compress(data)  # clickhouse-connect asks for lz4 first


# ClickHouse's own compression of a response (`compress=1`) or request body (`decompress=1`): blocks
# of a CityHash128 (v1.0.2) checksum, method 0x82 (LZ4), compressed and plain sizes, LZ4 data.
_LZ4_METHOD = 0x82
_BLOCK_BYTES = 1024 * 1024
# ClickHouse's max_query_size is 256 KiB; a request body past 1 MiB, compressed or not, is no reader's
# statement. A decompressed body is held to the same bound: 1 MiB of LZ4 expands to 255 MiB, and LZ4
# blocks inside an LZ4 frame to 255 times that.
MAX_BODY_BYTES = 1024 * 1024


def _checksum(block: bytes) -> bytes:
    # The binding's integer holds the halves swapped: its high 64 bits are the checksum's first word.
    value = CityHash128(block)
    return struct.pack("<QQ", value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF)


def native_compress(data: bytes) -> bytes:
    out = bytearray()
    for start in range(0, len(data), _BLOCK_BYTES):
        plain = data[start:start + _BLOCK_BYTES]
        packed = lz4.block.compress(plain, store_size=False)
        block = struct.pack("<BII", _LZ4_METHOD, 9 + len(packed), len(plain)) + packed
        out += _checksum(block) + block
    return bytes(out)


def native_decompress(data: bytes, limit: int = MAX_BODY_BYTES) -> bytes:
    out = bytearray()
    at = 0
    while at < len(data):
        if len(data) - at < 25:
            raise ValueError("truncated compressed block")
        checksum, (method, size, plain_size) = data[at:at + 16], struct.unpack_from("<BII", data, at + 16)
        if len(out) + plain_size > limit:
            raise ValueError(f"the decompressed body would exceed {limit} bytes")
        block = data[at + 16:at + 16 + size]
        if len(block) != size or _checksum(block) != checksum:
            raise ValueError("checksum mismatch in a compressed block")
        if method == _LZ4_METHOD:
            out += lz4.block.decompress(block[9:], uncompressed_size=plain_size)
        elif method == 0x02:  # NONE
            out += block[9:]
        else:
            raise ValueError(f"unsupported compression method 0x{method:02x}")
        at += 16 + size
    return bytes(out)


def lz4_frame_decompress(data: bytes, limit: int = MAX_BODY_BYTES) -> bytes:
    """An LZ4 frame's content, or RuntimeError past `limit` bytes (never decompressed whole)."""
    decompressor = lz4.frame.LZ4FrameDecompressor()
    out = decompressor.decompress(data, max_length=limit + 1)
    if len(out) > limit:
        raise RuntimeError(f"the decompressed body would exceed {limit} bytes")
    if not decompressor.eof:
        raise RuntimeError("truncated LZ4 frame")
    return out


def chosen_encoding(accept: str) -> Optional[str]:
    """The first encoding of an Accept-Encoding header that this server writes (q=0 excluded)."""
    for item in accept.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        if name in _ENCODINGS and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return name
    return None


class ClickHouseHTTP:
    """The aiohttp application: `/`, `/ping`, `/replicas_status`."""

    def __init__(self, pool: Callable[[Optional[str]], Optional[Analysts]], readers: auth.Readers,
                 threads: int) -> None:
        self.pool = pool
        self.readers = readers
        self.errors = Errors()
        self.server_info: dict[str, str] = {}
        # Threads of its own: requests waiting for a reader's session must not take the default
        # executor's threads, on which the sink writes to ClickHouse.
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clickhouse-http")

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    def application(self) -> web.Application:
        application = web.Application(client_max_size=MAX_BODY_BYTES)
        application.router.add_route("GET", "/ping", self.ping)
        application.router.add_route("GET", "/replicas_status", self.ping)
        application.router.add_route("*", "/", self.root)
        return application

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n", content_type="text/plain", charset="utf-8")

    async def root(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "POST", "HEAD"):
            return self.errors.response(1, f"HTTP method {request.method} is not supported")
        params: dict[str, str] = dict(request.query)
        body = ""
        if request.method == "POST" and not request.content_type.startswith("multipart/") and (
                "query" in params or request.content_length != 0):
            # Who asks is known before the body is read or decompressed: a client that may not read
            # (a browser's cross-site request, a wrong password) costs no decompression.
            reader = self._reader(params, request)
            if isinstance(reader, web.Response):
                return reader
        if request.method == "POST":
            if request.content_type.startswith("multipart/"):
                form = await request.post()
                if any(not isinstance(value, str) for value in form.values()):
                    return self.errors.response(48, "external data (tables sent with the query) is not supported")
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
            else:
                data = await request.read()  # aiohttp has undone gzip, deflate, br and zstd
                if request.headers.get("Content-Encoding", "").lower() == "lz4":
                    try:
                        data = lz4_frame_decompress(data)
                    except RuntimeError as exc:
                        return self.errors.response(271, f"Cannot decompress the request body: {exc}",
                                                    status=400)
                if params.get("decompress", "0") not in ("0", "false", ""):
                    try:
                        data = native_decompress(data)
                    except ValueError as exc:
                        return self.errors.response(271, f"Cannot decompress the request body: {exc}",
                                                    status=400)
                body = data.decode("utf-8", errors="replace")
        if "query" not in params and not body:
            return await self.ping(request)  # ClickHouse answers `/` with Ok. too
        reader = self._reader(params, request)
        if isinstance(reader, web.Response):
            return reader
        pool = self.pool(reader.workspace)  # a reader of one workspace reads on its sessions
        if pool is None:
            return self.errors.response(439, "ClickHouse is not open yet: the worker is starting")
        asked = Request(params, request.headers, body)
        started = time.monotonic_ns()
        try:
            if not self.server_info:
                await self._in_thread(self._load, pool)
            result = await self._in_thread(pool.raw, asked.sql, asked.format, asked.parameters, asked.settings,
                                           asked.database)
        except Refused as exc:
            return self.errors.refusal(exc, {"X-ClickHouse-Query-Id": asked.query_id, **self.server_info})
        except queue.Empty:  # Analysts.session waited its time for a free session
            return self.errors.response(202, f"all {pool.settings.query_concurrency} reader sessions stayed busy "
                                             "(SENDTRACK_QUERY_CONCURRENCY)")
        except Exception as exc:  # the one boundary: any other failure is the client's 500, and logged
            logger.exception("ClickHouse HTTP interface: %s", asked.sql[:200])
            return self.errors.response(1002, f"{type(exc).__name__}: {exc}")
        headers = {
            "X-ClickHouse-Query-Id": asked.query_id,
            "X-ClickHouse-Format": result.format,
            # What is known of a statement run on a session: it wrote nothing, and how long it took.
            "X-ClickHouse-Summary": json.dumps({"written_rows": "0", "written_bytes": "0",
                                                "elapsed_ns": str(time.monotonic_ns() - started)},
                                               separators=(",", ":")),
            **self.server_info,
        }
        payload = result.body
        if result.format.lower() == "native" and asked.revision:
            try:
                payload = await self._in_thread(native.upgrade, payload, asked.revision)
            except native.Unsupported as exc:
                return self.errors.response(48, f"Native for client_protocol_version={asked.revision} is not "
                                                f"available for {exc}: ask for another format (JSON, "
                                                "RowBinaryWithNamesAndTypes, Arrow)")
            except Exception as exc:  # a layout misread: the client gets ClickHouse's kind of error
                logger.exception("ClickHouse HTTP interface: Native for revision %d: %s", asked.revision, asked.sql[:200])
                return self.errors.response(1002, f"Native for client_protocol_version={asked.revision} failed "
                                                  f"({type(exc).__name__}: {exc}): ask for another format")
        if asked.native_compression:
            payload = await self._in_thread(native_compress, payload)
        else:
            encoding = chosen_encoding(request.headers.get("Accept-Encoding", "")) if asked.compression else None
            if encoding:  # whatever the size: a client that asked decodes what it asked for
                payload = await self._in_thread(_ENCODINGS[encoding], payload)
                headers["Content-Encoding"] = encoding
        response = web.Response(body=payload, headers=headers)
        kind = content_type(result.format)
        response.content_type = kind.split(";")[0]
        if "charset=" in kind:
            response.charset = "UTF-8"
        return response

    def _reader(self, params: Mapping[str, str], request: web.Request) -> auth.Reader | web.Response:
        """The request's reader, or the refusal of a client that may not read."""
        creds = credentials_headers(params, request.headers)
        if isinstance(creds, str):
            return self.errors.response(516, creds)
        reader = self.readers.authenticate(creds, request.remote)
        if isinstance(reader, auth.Denied):
            code = 516 if reader.status == 401 else 497
            headers = {"WWW-Authenticate": 'Basic realm="sendtrack"'} if reader.status == 401 else None
            return self.errors.response(code, reader.message, status=reader.status, headers=headers)
        return reader

    def _load(self, pool: Analysts) -> None:
        """The headers ClickHouse sends with every answer, and its version for error texts."""
        _, rows = pool.trusted_query("SELECT displayName(), timezone(), version()")
        self.errors.version = rows[0][2]
        self.server_info = {"X-ClickHouse-Server-Display-Name": rows[0][0], "X-ClickHouse-Timezone": rows[0][1]}


class ClickHouseHTTPService(Service):
    """Serves ClickHouseHTTP on SENDTRACK_CLICKHOUSE_HTTP_HOST:PORT while the worker runs."""

    _runner: Optional[web.AppRunner] = None
    _server: Optional[ClickHouseHTTP] = None

    async def on_start(self) -> None:
        self._server = ClickHouseHTTP(analysts, readers, settings.query_concurrency)
        runner = web.AppRunner(self._server.application(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.clickhouse_http_host, settings.clickhouse_http_port).start()
        except OSError as exc:
            # The pipeline goes on without it: the interface is for readers, the worker is for writes.
            logger.error("ClickHouse HTTP interface not started on %s:%s: %s", settings.clickhouse_http_host,
                         settings.clickhouse_http_port, exc)
            await runner.cleanup()
            return
        self._runner = runner

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            self._server.executor.shutdown(wait=False, cancel_futures=True)


# Only a worker with the sink has ClickHouse open to read; an engine-only worker beside it on the
# same machine would otherwise take the port and answer every query with an error.
if settings.clickhouse_http_port and settings.sink_enabled:
    app.service(ClickHouseHTTPService)

"""One ClickHouse connection, embedded (chDB) or a server over HTTP, and what its errors mean."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Optional, Sequence
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from sendtrack.settings import Settings

# Server error codes that mean "not now" rather than "not this data" (ClickHouse ErrorCodes.cpp).
RETRIABLE_CODES = frozenset({
    159,  # TIMEOUT_EXCEEDED
    164,  # READONLY
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    203,  # NO_FREE_CONNECTION
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY
    252,  # TOO_MANY_PARTS (but see TOO_MANY_PARTITIONS)
    319,  # UNKNOWN_STATUS_OF_INSERT
    425,  # SYSTEM_ERROR
    999,  # KEEPER_EXCEPTION
})

# Server error codes that mean "not this data": ClickHouse refused the rows for what they are, so
# the same rows fail every time. The sink sets such rows aside as dead letters (sinks/writer.py).
REJECTED_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    25,   # CANNOT_PARSE_ESCAPE_SEQUENCE
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,   # ATTEMPT_TO_READ_AFTER_EOF
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA (a JSON line with a field twice, say)
    131,  # TOO_LARGE_STRING_SIZE
    306,  # TOO_DEEP_RECURSION
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    395,  # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    407,  # DECIMAL_OVERFLOW
    467,  # CANNOT_PARSE_BOOL
    632,  # UNEXPECTED_DATA_AFTER_PARSED_VALUE
})

# TOO_MANY_PARTS (252) has three messages, and only the code reaches the client, hence the text.
# "Too many parts (N). Merges are processing significantly slower than inserts" and "Too many parts
# (N) in all partitions in total" describe the table: retry later. "Too many partitions for single
# INSERT block (more than N)" describes the rows (their partition keys span more than
# max_partitions_per_insert_block): the same rows fail every time, so it is a refusal of this data,
# which the writer answers by splitting the insert further. The writer keeps an insert within half
# the default limit, so on a default server that refusal no longer happens and a 252 is the table's.
TOO_MANY_PARTITIONS = "partitions for single insert block"


def is_retriable(exc: BaseException) -> bool:
    """True when ClickHouse is unavailable or overloaded: retry later and hold the offsets."""
    if isinstance(exc, (OperationalError, ConnectionError, TimeoutError, OSError)):
        return True
    if isinstance(exc, DatabaseError):
        code = getattr(exc, "code", None)
        return code is None or (code in RETRIABLE_CODES and not is_rejection(exc))
    return False


def is_rejection(exc: BaseException) -> bool:
    """True when ClickHouse refused the rows themselves: retrying them cannot succeed."""
    if not isinstance(exc, DatabaseError) or isinstance(exc, OperationalError):
        return False
    code = getattr(exc, "code", None)
    return code in REJECTED_CODES or (code == 252 and TOO_MANY_PARTITIONS in str(exc).lower())


MIB = 1 << 20


def query_limits(memory_mb: int) -> dict[str, int]:
    """Settings that bound one read: past half the budget GROUP BY and ORDER BY spill to disk, past
    the budget the query fails (MEMORY_LIMIT_EXCEEDED) instead of growing the process. Embedded, the
    process is the worker: a funnel over every message id merges millions of uniqExact states."""
    if memory_mb <= 0:
        return {}
    return {"max_memory_usage": memory_mb * MIB,
            "max_bytes_before_external_group_by": memory_mb * MIB // 2,
            "max_bytes_before_external_sort": memory_mb * MIB // 2}


# The embedded engine's allocator (chDB links its own jemalloc, which reads JE_MALLOC_CONF once, when
# chDB loads). ClickHouse builds it to keep freed pages for 5 s and to return them only when the same
# arena allocates again; merges free a few hundred MB at a time, so those pages stayed in the
# worker's RSS. Here background threads return them within about a second (docs/performance.md).
EMBEDDED_JEMALLOC_CONF = "dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true"


def configure_embedded_allocator() -> None:
    """Set the embedded engine's allocator options, unless the user set JE_MALLOC_CONF or chDB is
    already loaded (then it is too late, and the engine keeps what it has)."""
    if "chdb" not in sys.modules:
        os.environ.setdefault("JE_MALLOC_CONF", EMBEDDED_JEMALLOC_CONF)


def embedded_options(settings: Settings) -> dict[str, str]:
    """Server settings of the embedded engine, sized for a worker that shares its process. ClickHouse
    sizes its caches for a server that owns the machine (5 GiB each), lets merges take half the RAM
    and runs two merges per background thread; here they would grow the worker's RSS with the data.
    One merge per thread (two at a time): concurrent merges of the raw and aggregating tables were
    the engine's peaks (docs/performance.md)."""
    return {
        "background_merges_mutations_concurrency_ratio": "1",
        "mark_cache_size": str(64 * MIB),
        "index_mark_cache_size": str(16 * MIB),
        "primary_index_cache_size": str(64 * MIB),
        "merges_mutations_memory_usage_soft_limit": str(settings.merge_memory_mb * MIB),
    }


class ClickHouse:
    """A thread-safe handle on one ClickHouse database; the embedded engine is one per process."""

    _embedded: dict[str, Any] = {}
    _embedded_lock = threading.Lock()

    def __init__(self, client: Any, database: str, embedded: bool, where: str,
                 query_memory_mb: int = 0) -> None:
        self._client = client
        self.database = database
        self.embedded = embedded
        self.where = where
        self._lock = threading.Lock()
        self.query_settings = query_limits(query_memory_mb)

    @classmethod
    def connect(cls, settings: Settings, database: Optional[str] = None) -> "ClickHouse":
        """Open the database named by the settings: chDB under the data dir, or a server by URL."""
        database = database or settings.clickhouse_database
        if settings.clickhouse_is_embedded:
            path = str(settings.embedded_clickhouse_path)
            with cls._embedded_lock:
                client = cls._embedded.get(path)
                if client is None:
                    settings.embedded_clickhouse_path.mkdir(parents=True, exist_ok=True)
                    configure_embedded_allocator()
                    client = clickhouse_connect.get_client(interface="chdb", path=path,
                                                           chdb_options=embedded_options(settings))
                    cls._embedded[path] = client
            return cls(client, database, True, f"embedded ClickHouse at {path}", settings.query_memory_mb)
        url = urlparse(settings.clickhouse_url)
        if url.path.strip("/") and database == settings.clickhouse_database:
            database = url.path.strip("/")
        client = clickhouse_connect.get_client(
            host=url.hostname or "localhost",
            port=url.port or (8443 if url.scheme == "https" else 8123),
            username=unquote(url.username or "default"),
            password=unquote(url.password or ""),
            secure=url.scheme == "https",
            connect_timeout=5,
            send_receive_timeout=60,
            autogenerate_session_id=False,
        )
        return cls(client, database, False, f"ClickHouse server at {url.hostname}:{url.port or 8123}",
                   settings.query_memory_mb)

    def command(self, sql: str, parameters: Optional[dict[str, Any]] = None) -> Any:
        with self._lock:
            return self._client.command(sql, parameters=parameters)

    def query(self, sql: str, parameters: Optional[dict[str, Any]] = None) -> tuple[list[str], list[tuple]]:
        """Column names and rows of a SELECT, within the memory one query may use (`query_limits`)."""
        with self._lock:
            result = self._client.query(sql, parameters=parameters, settings=self.query_settings)
        return list(result.column_names), result.result_rows

    def insert(self, table: str, columns: Sequence[Sequence[Any]], column_names: Sequence[str],
               dedup_token: Optional[str] = None) -> None:
        """Insert columnar data: one list per column."""
        settings = {"insert_deduplication_token": dedup_token} if dedup_token else None
        with self._lock:
            self._client.insert(f"{self.database}.{table}", list(columns), column_names=list(column_names),
                                column_oriented=True, settings=settings)

    def insert_json(self, table: str, column_names: Sequence[str], lines: bytes) -> None:
        """Insert JSON lines (FORMAT JSONEachRow); fields that are not columns are ignored."""
        with self._lock:
            self._client.raw_insert(f"{self.database}.{table}", list(column_names), insert_block=lines,
                                    fmt="JSONEachRow", settings={"input_format_skip_unknown_fields": 1})


"""One ClickHouse connection, embedded (chDB) or a server over HTTP, and what its errors mean."""

from __future__ import annotations

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
    252,  # TOO_MANY_PARTS
    319,  # UNKNOWN_STATUS_OF_INSERT
    425,  # SYSTEM_ERROR
    999,  # KEEPER_EXCEPTION
})


def is_retriable(exc: BaseException) -> bool:
    """True when ClickHouse is unavailable or overloaded: retry later and hold the offsets."""
    if isinstance(exc, (OperationalError, ConnectionError, TimeoutError, OSError)):
        return True
    if isinstance(exc, DatabaseError):
        code = getattr(exc, "code", None)
        return code is None or code in RETRIABLE_CODES
    return False


class ClickHouse:
    """A thread-safe handle on one ClickHouse database; the embedded engine is one per process."""

    _embedded: dict[str, Any] = {}
    _embedded_lock = threading.Lock()

    def __init__(self, client: Any, database: str, embedded: bool, where: str) -> None:
        self._client = client
        self.database = database
        self.embedded = embedded
        self.where = where
        self._lock = threading.Lock()

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
                    client = clickhouse_connect.get_client(interface="chdb", path=path)
                    cls._embedded[path] = client
            return cls(client, database, True, f"embedded ClickHouse at {path}")
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
        return cls(client, database, False, f"ClickHouse server at {url.hostname}:{url.port or 8123}")

    def command(self, sql: str, parameters: Optional[dict[str, Any]] = None) -> Any:
        with self._lock:
            return self._client.command(sql, parameters=parameters)

    def query(self, sql: str, parameters: Optional[dict[str, Any]] = None) -> tuple[list[str], list[tuple]]:
        """Column names and rows of a SELECT."""
        with self._lock:
            result = self._client.query(sql, parameters=parameters)
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


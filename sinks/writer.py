"""Turns batches of status-changes and dead-letters records into columnar ClickHouse inserts."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from sinks.clickhouse import ClickHouse

STATUS_COLUMNS = (
    "change_id", "message_id", "status", "previous_status", "current_status", "inferred",
    "occurred_at", "recorded_at", "action", "provider", "customer_id", "recipient", "flow_id",
    "campaign_id", "step_id", "requested_at", "reason_code", "reason", "bounce_type", "reason_at",
    "event_id",
)
ENGAGEMENT_COLUMNS = (
    "event_id", "message_id", "status", "occurred_at", "url", "is_machine", "action", "provider",
    "customer_id", "recipient", "flow_id", "campaign_id", "step_id", "requested_at",
)
DEAD_LETTER_COLUMNS = (
    "source_topic", "partition", "offset", "key", "payload", "payload_encoding", "error_type",
    "error", "failed_at",
)
PROVENANCE = ("_topic", "_partition", "_offset")


_TIMES = {"occurred_at", "recorded_at", "requested_at", "reason_at", "failed_at"}
_BOOLS = {"inferred", "is_machine"}
_INTS = {"partition", "offset"}
_NULLABLE = {"key"}


def _types(columns: tuple[str, ...]) -> list[tuple[str, tuple[type, ...]]]:
    """The JSON type each column's value must have (ints for epoch-millisecond times)."""
    out = []
    for c in columns:
        if c in _TIMES or c in _INTS:
            out.append((c, (int,)))
        elif c in _BOOLS:
            out.append((c, (bool,)))
        elif c in _NULLABLE:
            out.append((c, (str, type(None))))
        else:
            out.append((c, (str,)))
    return out


STATUS_TYPES = _types(STATUS_COLUMNS)
ENGAGEMENT_TYPES = _types(ENGAGEMENT_COLUMNS)
DEAD_LETTER_TYPES = _types(DEAD_LETTER_COLUMNS)


def _check(doc: Any, types: list[tuple[str, tuple[type, ...]]]) -> None:
    if not isinstance(doc, dict):
        raise TypeError(f"a JSON object is required, not {type(doc).__name__}")
    for column, allowed in types:
        v = doc[column]
        # bool is an int in Python: a time or offset must be a real integer.
        if type(v) not in allowed:
            raise TypeError(f"{column} must be {'/'.join(t.__name__ for t in allowed)}, not {type(v).__name__}")


@dataclass
class Batch:
    """Rows bound for each table, as JSON lines: the records' own bytes, checked here.

    ClickHouse parses the lines (FORMAT JSONEachRow into the *_ingest tables, whose materialized
    views convert the epoch-millisecond times). Python only checks each record and keeps its bytes.
    """

    status: list[bytes] = field(default_factory=list)
    engagement: list[bytes] = field(default_factory=list)
    dead: list[bytes] = field(default_factory=list)
    records: int = 0

    @property
    def rows(self) -> int:
        return len(self.status) + len(self.engagement) + len(self.dead)

    def add_status_change(self, value: bytes, topic: str, partition: int, offset: int) -> None:
        self.records += 1
        try:
            doc = orjson.loads(value)
            _check(doc, STATUS_TYPES)
            kind = doc["kind"]
            engaged = doc["status"] in ("opened", "clicked") and doc["event_id"] and not doc["inferred"]
            if engaged:
                _check(doc, ENGAGEMENT_TYPES)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self._unreadable(value, topic, partition, offset, f"unreadable status change: {exc!r}")
            return
        body = value.rstrip()
        if kind != "engagement":
            self.status.append(body[:-1] + b',"_topic":' + orjson.dumps(topic)
                               + b',"_partition":%d,"_offset":%d}' % (partition, offset))
        if engaged:
            self.engagement.append(body)

    def add_dead_letter(self, value: bytes, topic: str, partition: int, offset: int) -> None:
        self.records += 1
        try:
            _check(orjson.loads(value), DEAD_LETTER_TYPES)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self._unreadable(value, topic, partition, offset, f"unreadable dead letter: {exc!r}")
            return
        self.dead.append(value.rstrip())

    def _unreadable(self, value: bytes, topic: str, partition: int, offset: int, error: str) -> None:
        """A record the sink cannot read is kept as a dead letter row, never dropped."""
        try:
            text, encoding = value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(value).decode(), "base64"
        row = [topic, partition, offset, None, text, encoding, "undecodable", error, int(time.time() * 1000)]
        self.dead.append(orjson.dumps(dict(zip(DEAD_LETTER_COLUMNS, row))))

    def write(self, ch: ClickHouse) -> dict[str, int]:
        """Insert every non-empty table of the batch; returns rows per (raw) table."""
        written = {}
        if self.status:
            ch.insert_json("status_changes_ingest", STATUS_COLUMNS + PROVENANCE, b"\n".join(self.status))
            written["status_changes_raw"] = len(self.status)
        if self.engagement:
            ch.insert_json("engagement_events_ingest", ENGAGEMENT_COLUMNS, b"\n".join(self.engagement))
            written["engagement_events_raw"] = len(self.engagement)
        if self.dead:
            ch.insert_json("dead_letters_ingest", DEAD_LETTER_COLUMNS, b"\n".join(self.dead))
            written["dead_letters_raw"] = len(self.dead)
        return written

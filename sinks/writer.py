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


@dataclass
class Batch:
    """Rows bound for each table, column by column, plus the records that could not be read."""

    status: list[list[Any]] = field(default_factory=lambda: [[] for _ in STATUS_COLUMNS + PROVENANCE])
    engagement: list[list[Any]] = field(default_factory=lambda: [[] for _ in ENGAGEMENT_COLUMNS])
    dead: list[list[Any]] = field(default_factory=lambda: [[] for _ in DEAD_LETTER_COLUMNS])
    records: int = 0

    @property
    def rows(self) -> int:
        return len(self.status[0]) + len(self.engagement[0]) + len(self.dead[0])

    def add_status_change(self, value: bytes, topic: str, partition: int, offset: int) -> None:
        self.records += 1
        try:
            doc = orjson.loads(value)
            if doc["kind"] != "engagement":
                row = [doc[c] for c in STATUS_COLUMNS] + [topic, partition, offset]
            else:
                row = None
            engaged = doc["status"] in ("opened", "clicked") and doc["event_id"] and not doc["inferred"]
            erow = [doc[c] for c in ENGAGEMENT_COLUMNS] if engaged else None
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self._unreadable(value, topic, partition, offset, f"unreadable status change: {exc!r}")
            return
        if row is not None:
            for col, v in zip(self.status, row):
                col.append(v)
        if erow is not None:
            for col, v in zip(self.engagement, erow):
                col.append(v)

    def add_dead_letter(self, value: bytes, topic: str, partition: int, offset: int) -> None:
        self.records += 1
        try:
            doc = orjson.loads(value)
            row = [doc[c] for c in DEAD_LETTER_COLUMNS]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self._unreadable(value, topic, partition, offset, f"unreadable dead letter: {exc!r}")
            return
        for col, v in zip(self.dead, row):
            col.append(v)

    def _unreadable(self, value: bytes, topic: str, partition: int, offset: int, error: str) -> None:
        """A record the sink cannot read is kept as a dead letter row, never dropped."""
        try:
            text, encoding = value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(value).decode(), "base64"
        row = [topic, partition, offset, None, text, encoding, "undecodable", error, int(time.time() * 1000)]
        for col, v in zip(self.dead, row):
            col.append(v)

    def write(self, ch: ClickHouse) -> dict[str, int]:
        """Insert every non-empty table of the batch; returns rows per table."""
        written = {}
        if self.status[0]:
            ch.insert("status_changes_raw", self.status, STATUS_COLUMNS + PROVENANCE)
            written["status_changes_raw"] = len(self.status[0])
        if self.engagement[0]:
            ch.insert("engagement_events_raw", self.engagement, ENGAGEMENT_COLUMNS)
            written["engagement_events_raw"] = len(self.engagement[0])
        if self.dead[0]:
            ch.insert("dead_letters_raw", self.dead, DEAD_LETTER_COLUMNS)
            written["dead_letters_raw"] = len(self.dead[0])
        return written

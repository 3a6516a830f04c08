"""Turns batches of status-changes and dead-letters records into ClickHouse inserts, and inserts them."""

from __future__ import annotations

import calendar
import operator
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import orjson

from schemas import dead_letters
from schemas.models import DeadLetter, StatusChange
from schemas.validate import field_specs
from sendtrack.status import ENGAGEMENT as ENGAGEMENT_STATUSES
from sinks.clickhouse import ClickHouse, is_rejection, is_retriable

# The columns of each table the sink writes: projections of the records (tests/unit/test_vocabulary.py
# checks them against the models and the migrations' ingest tables).

STATUS_COLUMNS = (
    "change_id", "message_id", "status", "previous_status", "current_status", "inferred",
    "occurred_at", "recorded_at", "action", "provider", "customer_id", "recipient", "flow_id",
    "campaign_id", "step_id", "requested_at", "reason_code", "reason", "bounce_type", "reason_at",
    "event_id", "workspace_id",
)
ENGAGEMENT_COLUMNS = (
    "event_id", "message_id", "status", "occurred_at", "url", "is_machine", "action", "provider",
    "customer_id", "recipient", "flow_id", "campaign_id", "step_id", "requested_at", "workspace_id",
)
DEAD_LETTER_COLUMNS = (
    "source_topic", "partition", "offset", "key", "payload", "payload_encoding", "error_type",
    "error", "failed_at",
)
PROVENANCE = ("_topic", "_partition", "_offset")
# What ClickHouse's ingest view adds to each status change from its recipient (migration 0017,
# sendtrack/recipients.py): the records do not carry them.
RECIPIENT_DIMENSIONS = ("mailbox_provider", "carrier")


def _types(model: type, columns: tuple[str, ...]) -> list[tuple[str, tuple[type, ...]]]:
    """The JSON type each column's value must have: its field's in the record (times are
    epoch-millisecond ints), and null too where the field is Optional."""
    specs = {spec.name: spec for spec in field_specs(model)}
    return [(c, (specs[c].type, type(None)) if specs[c].nullable else (specs[c].type,)) for c in columns]


class Types:
    """The JSON type each of some columns must have (see _types), checked per record.

    A record's column types form a signature; the signatures already found good are remembered (a
    few: the nullable columns' combinations), so most records are checked with two calls into C
    (fetch the values, take their types) and one set lookup instead of a loop over the columns."""

    def __init__(self, model: type, columns: tuple[str, ...]) -> None:
        self.types = _types(model, columns)
        self._values = operator.itemgetter(*columns)
        self._good: set[tuple[type, ...]] = set()

    def __iter__(self):
        return iter(self.types)

    def check(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            raise TypeError(f"a JSON object is required, not {type(doc).__name__}")
        signature = tuple(map(type, self._values(doc)))  # KeyError: a column is missing
        if signature in self._good:
            return
        for (column, allowed), t in zip(self.types, signature):
            # bool is an int in Python: a time or offset must be a real integer.
            if t not in allowed:
                raise TypeError(f"{column} must be {'/'.join(a.__name__ for a in allowed)}, not {t.__name__}")
        if len(self._good) < 1024:
            self._good.add(signature)


STATUS_TYPES = Types(StatusChange, STATUS_COLUMNS)
ENGAGEMENT_TYPES = Types(StatusChange, ENGAGEMENT_COLUMNS)
DEAD_LETTER_TYPES = Types(DeadLetter, DEAD_LETTER_COLUMNS)


# The dead letter of a record ClickHouse refused to insert (the error holds its code and message).
REJECTED_BY_CLICKHOUSE = "rejected_by_clickhouse"

# ClickHouse refuses an insert whose rows fall in more than max_partitions_per_insert_block (100 by
# default) partitions of one table (TOO_MANY_PARTS): a backfill of a few years did, on every retry.
# Every partitioned table an insert reaches is partitioned by the month of requested_at:
# status_changes_raw, messages_by_workspace, message_health and engagement_events_raw by toYYYYMM(requested_at),
# funnel_daily_by_workspace by toYYYYMM(day) where day = toDate(requested_at); dead_letters_raw has one
# partition. So an insert of at most this many months of requested_at stays within the limit in
# each of them, with room for a server configured lower.
MAX_PARTITIONS_PER_INSERT = 50

# Where ClickHouse's Date and DateTime64 both hold a time exactly, so toYYYYMM is the calendar month.
_MONTHS_FROM, _MONTHS_TO = 0, calendar.timegm((2149, 1, 1, 0, 0, 0)) * 1000

# A dead letter keeps at most this much of ClickHouse's message.
_ERROR_MAX = 2000


def partition_month(ms: int) -> int:
    """The partition an epoch-millisecond requested_at falls in: its month as YYYYMM. A time outside
    1970-2148 is its own key (never a YYYYMM): ClickHouse clamps or wraps such a time, but one time
    is one partition whatever it makes of it."""
    if not _MONTHS_FROM <= ms < _MONTHS_TO:
        return ms
    day = ms // 86_400_000
    month = _month_of_day.get(day)
    if month is None:
        if len(_month_of_day) > 10_000:
            _month_of_day.clear()
        year, mon = time.gmtime(day * 86_400)[:2]
        month = _month_of_day[day] = year * 100 + mon
    return month


_month_of_day: dict[int, int] = {}  # days since the epoch -> YYYYMM, for the days seen lately


class Line(NamedTuple):
    """One JSON line of an insert, with its partition and the record it came from."""

    data: bytes
    month: int  # partition_month(requested_at); 0 for dead letters
    topic: str
    partition: int
    offset: int
    own: bool = False  # a dead-letter row the sink made, not a record's bytes: nothing to set aside


class Target(NamedTuple):
    """A table the sink inserts into (a Null table) and the raw table its view writes."""

    ingest: str
    raw: str
    columns: tuple[str, ...]
    derived: tuple[str, ...] = ()  # columns the ingest view adds to the raw table


STATUS = Target("status_changes_ingest", "status_changes_raw", STATUS_COLUMNS + PROVENANCE, RECIPIENT_DIMENSIONS)
ENGAGEMENT = Target("engagement_events_ingest", "engagement_events_raw", ENGAGEMENT_COLUMNS)
DEAD = Target("dead_letters_ingest", "dead_letters_raw", DEAD_LETTER_COLUMNS)


class Unwritable(Exception):
    """ClickHouse refused what the sink cannot set aside: its own dead-letter rows, or an insert for
    a reason that is not the rows' (a missing table, a permission). Retrying will not help."""


def _provenance(topic: str, partition: int, offset: int) -> bytes:
    """What the sink appends to a status change: the record's position (it closes the object)."""
    head = _topic_field.get(topic)
    if head is None:
        head = _topic_field[topic] = b',"_topic":' + orjson.dumps(topic)
    return head + b',"_partition":%d,"_offset":%d}' % (partition, offset)


_topic_field: dict[str, bytes] = {}


def _describe(exc: BaseException) -> str:
    """ClickHouse's code and message on one line, for a dead letter's error or the sink's failure."""
    code, name = getattr(exc, "code", None), getattr(exc, "name", None)
    head = type(exc).__name__ if code is None else f"ClickHouse error {code}" + (f" ({name})" if name else "")
    return f"{head}: {' '.join(str(exc).split())}"[:_ERROR_MAX]


def _dead_row(value: bytes, topic: str, partition: int, offset: int, error_type: str, error: str) -> bytes:
    return dead_letters.build((topic, partition, offset), None, value, error_type, error, int(time.time() * 1000))[1]


def _split(lines: list[Line]) -> list[list[Line]]:
    """The lines as inserts of at most MAX_PARTITIONS_PER_INSERT months each. A month's lines stay
    in one insert, in their order: rows that replace each other share a partition, and among equal
    versions ReplacingMergeTree keeps the last inserted."""
    insert_of: dict[int, int] = {}
    for line in lines:
        if line.month not in insert_of:
            insert_of[line.month] = len(insert_of) // MAX_PARTITIONS_PER_INSERT
    if len(insert_of) <= MAX_PARTITIONS_PER_INSERT:
        return [lines] if lines else []
    inserts: list[list[Line]] = [[] for _ in range(max(insert_of.values()) + 1)]
    for line in lines:
        inserts[insert_of[line.month]].append(line)
    return inserts


@dataclass
class Batch:
    """Rows bound for each table, as JSON lines: the records' own bytes, checked here.

    ClickHouse parses the lines (FORMAT JSONEachRow into the *_ingest tables, whose materialized
    views convert the epoch-millisecond times). Python only checks each record and keeps its bytes.
    """

    status: list[Line] = field(default_factory=list)
    engagement: list[Line] = field(default_factory=list)
    dead: list[Line] = field(default_factory=list)
    records: int = 0
    # What write() did so far (it resumes after a retriable error): rows and inserts per raw table,
    # and how many records ClickHouse refused (now dead letters), the first with its error.
    written: Counter = field(default_factory=Counter)
    inserts: Counter = field(default_factory=Counter)
    rejected: int = 0
    first_rejection: str = ""
    _pending: Optional[deque] = field(default=None, repr=False)  # (Target, lines) inserts to make
    _refused: list[Line] = field(default_factory=list, repr=False)  # their dead letters, inserted last
    _set_aside: set[tuple[str, int, int]] = field(default_factory=set, repr=False)  # refused records

    @property
    def rows(self) -> int:
        return len(self.status) + len(self.engagement) + len(self.dead)

    def add_status_change(self, value: bytes, topic: str, partition: int, offset: int) -> None:
        self.records += 1
        try:
            doc = orjson.loads(value)
            if "workspace_id" not in doc:  # written before workspaces: ClickHouse fills in ''
                doc["workspace_id"] = ""
            STATUS_TYPES.check(doc)
            kind = doc["kind"]
            engaged = doc["status"] in ENGAGEMENT_STATUSES and doc["event_id"] and not doc["inferred"]
            if engaged:
                ENGAGEMENT_TYPES.check(doc)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self._unreadable(value, topic, partition, offset, f"unreadable status change: {exc!r}")
            return
        body = value.rstrip()
        month = partition_month(doc["requested_at"])
        if kind != "engagement":
            self.status.append(Line(body[:-1] + _provenance(topic, partition, offset), month, topic, partition, offset))
        if engaged:
            self.engagement.append(Line(body, month, topic, partition, offset))

    def add_dead_letter(self, value: bytes, topic: str, partition: int, offset: int) -> None:
        self.records += 1
        try:
            DEAD_LETTER_TYPES.check(orjson.loads(value))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self._unreadable(value, topic, partition, offset, f"unreadable dead letter: {exc!r}")
            return
        self.dead.append(Line(value.rstrip(), 0, topic, partition, offset))

    def _unreadable(self, value: bytes, topic: str, partition: int, offset: int, error: str) -> None:
        """A record the sink cannot read is kept as a dead letter row, never dropped."""
        row = _dead_row(value, topic, partition, offset, "undecodable", error)
        self.dead.append(Line(row, 0, topic, partition, offset, own=True))

    def write(self, ch: ClickHouse) -> dict[str, int]:
        """Insert every line; returns rows per raw table.

        Each table's lines go in inserts of at most MAX_PARTITIONS_PER_INSERT months. An insert that
        ClickHouse refuses for its rows (`is_rejection`) is halved until each refused line is alone;
        its record becomes a dead-letter row (REJECTED_BY_CLICKHOUSE, with ClickHouse's code and
        message) and its neighbours are inserted. A retriable error propagates: calling write again
        resumes with the insert that failed (one that partly landed is inserted again, and the
        views fold the duplicate rows). Anything else raises Unwritable.
        """
        if self._pending is None:
            self._pending = deque([(STATUS, lines) for lines in _split(self.status)]
                                  + [(ENGAGEMENT, lines) for lines in _split(self.engagement)]
                                  + ([(DEAD, self.dead)] if self.dead else []))
        while self._pending or self._refused:
            if not self._pending:
                self._pending.append((DEAD, self._refused))
                self._refused = []
            target, lines = self._pending[0]
            if target is ENGAGEMENT and self._set_aside:
                # A record whose milestone line was refused is set aside whole.
                lines = [line for line in lines if (line.topic, line.partition, line.offset) not in self._set_aside]
                if not lines:
                    self._pending.popleft()
                    continue
            try:
                ch.insert_json(target.ingest, target.columns, b"\n".join(line.data for line in lines))
            except Exception as exc:
                if is_retriable(exc):
                    raise
                if not is_rejection(exc):
                    raise Unwritable(f"ClickHouse refused an insert into {target.ingest}: {_describe(exc)}") from exc
                self._pending.popleft()
                if len(lines) > 1:
                    half = len(lines) // 2
                    self._pending.extendleft([(target, lines[half:]), (target, lines[:half])])
                else:
                    self._refuse(target, lines[0], exc)
                continue
            self._pending.popleft()
            self.written[target.raw] += len(lines)
            self.inserts[target.raw] += 1
        return dict(self.written)

    def _refuse(self, target: Target, line: Line, exc: BaseException) -> None:
        """Set aside the record of a line ClickHouse refused, as a dead-letter row."""
        where = f"{line.topic} partition {line.partition} offset {line.offset}"
        if line.own:
            raise Unwritable(f"ClickHouse refused the sink's dead-letter row for {where}: {_describe(exc)}") from exc
        self._set_aside.add((line.topic, line.partition, line.offset))
        record = line.data  # the record's bytes (less trailing whitespace, which the line dropped)
        if target is STATUS:
            record = record[:-len(_provenance(line.topic, line.partition, line.offset))] + b"}"
        error = _describe(exc)
        self._refused.append(Line(_dead_row(record, line.topic, line.partition, line.offset,
                                            REJECTED_BY_CLICKHOUSE, error),
                                  0, line.topic, line.partition, line.offset, own=True))
        self.rejected += 1
        self.first_rejection = self.first_rejection or f"{where}: {error}"

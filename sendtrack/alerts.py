"""Deliverability alerts: the state changes of each judged rate, as records of the
`deliverability-alerts` topic (docs/contract.md §3). Pure: what to publish, given the last state
published per rate and the rates as the `deliverability_health` view judges them now.

A rate is one (workspace, period, action, provider, mailbox provider, metric). Its state is `ok`,
`warning` or `critical`; a rate the view does not list (no message in the period) or does not judge
(under the minimum volume) is `ok`. A record is published when the state differs from the last one
published for the rate, never while it holds; the first state of every rate is `ok`, so `ok` itself
is published only as a return to it. Each record carries the figures that caused it and the rate's
`sequence` (1, 2, … per rate), so a reader sees a gap or a repeat at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import orjson

STATES = ("ok", "warning", "critical")
KEY_FIELDS = ("workspace_id", "period", "action", "provider", "mailbox_provider", "metric")
FIGURES = ("events", "volume", "rate", "warning", "critical", "measured")


@dataclass(frozen=True, slots=True)
class Published:
    """The last record published for a rate: its state and sequence number."""

    state: str
    sequence: int


def key_of(fields: Mapping[str, Any]) -> bytes:
    """The record key of a rate: its six key fields as a JSON array (compaction keeps the last record
    per key)."""
    return orjson.dumps([fields[name] for name in KEY_FIELDS])


def changes(last: Mapping[bytes, Published], rates: Iterable[Mapping[str, Any]], at_ms: int
            ) -> list[tuple[bytes, dict[str, Any]]]:
    """(key, value) of the records to publish: one per rate whose state is not the last published
    one. `rates` are rows of the health report (sinks/reports.health) as {column: value}, with the
    workspace under `workspace`; rates published before and no longer listed return to `ok`."""
    out = []
    seen = set()
    for row in rates:
        fields = {**{name: row.get(name) for name in KEY_FIELDS}, "workspace_id": row["workspace"]}
        key = key_of(fields)
        seen.add(key)
        state = row["state"] if row["measured"] else "ok"
        before = last.get(key, Published("ok", 0))
        if state != before.state:
            out.append((key, {**fields, "state": state, "previous_state": before.state,
                              **{name: row[name] for name in FIGURES}, "evaluated_at": at_ms,
                              "sequence": before.sequence + 1}))
    for key, before in last.items():
        if key not in seen and before.state != "ok":  # no message left in its period
            fields = dict(zip(KEY_FIELDS, orjson.loads(key)))
            out.append((key, {**fields, "state": "ok", "previous_state": before.state, "events": 0, "volume": 0,
                              "rate": 0.0, "warning": None, "critical": None, "measured": False,
                              "evaluated_at": at_ms, "sequence": before.sequence + 1}))
    return out


def read(value: bytes) -> Published:
    """The state and sequence of a record read back from the topic."""
    doc = orjson.loads(value)
    return Published(doc["state"], int(doc["sequence"]))

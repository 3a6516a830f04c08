"""Opened by a person (migration 0011, reports.funnel): opens and clicks that no machine made
(Apple Mail Privacy Protection, link scanners: `is_machine`) are counted apart from all opens."""

from __future__ import annotations

import dataclasses

import orjson

from sinks import reports
from sinks.clickhouse import ClickHouse
from sinks.writer import Batch
from tests.unit.test_sink_inserts import CHANGE




def changes(mid: str, milestones: list[str], events: list[tuple[str, bool]], campaign: str = "c") -> list[bytes]:
    """A message's milestones and its engagement events (status, made by a machine)."""
    out = []
    for status in milestones:
        out.append(dataclasses.replace(CHANGE, message_id=mid, change_id=f"{mid}-{status}", status=status,
                                       current_status=status, campaign_id=campaign))
    for i, (status, machine) in enumerate(events):
        out.append(dataclasses.replace(CHANGE, message_id=mid, change_id=f"{mid}-e{i}", kind="engagement",
                                       status=status, current_status=status, event_id=f"{mid}-e{i}",
                                       is_machine=machine, campaign_id=campaign))
    return [orjson.dumps(c) for c in out]


def write(ch: ClickHouse, records: list[bytes]) -> None:
    batch = Batch()
    for offset, value in enumerate(records):
        batch.add_status_change(value, "status-changes", 0, offset)
    batch.write(ch)


def test_the_funnel_counts_opens_by_people_apart_from_machine_opens(ch):
    write(ch, [
        *changes("m-machine", ["sent", "delivered", "opened"], [("opened", True)]),
        *changes("m-person", ["sent", "delivered", "opened"], [("opened", False)]),
        *changes("m-click", ["sent", "delivered", "opened", "clicked"], [("clicked", False)]),
        *changes("m-both", ["sent", "delivered", "opened"], [("opened", True), ("opened", False), ("opened", False)]),
        *changes("m-scanner", ["sent", "delivered", "opened", "clicked"], [("opened", True), ("clicked", True)]),
        *changes("m-none", ["sent"], []),
    ])
    report = reports.run(ch, "funnel", reports.Filters())
    row = dict(zip(report.columns, report.rows[0]))
    assert (row["delivered"], row["opened"], row["opened_by_person"]) == (5, 5, 3)
    assert row["open_rate"] == 1.0 and row["person_open_rate"] == 0.6
    # The same counts after the same events again (at-least-once delivery): exact.
    write(ch, changes("m-person", [], [("opened", False)]) + changes("m-machine", [], [("opened", True)]))
    row = dict(zip(report.columns, reports.run(ch, "funnel", reports.Filters()).rows[0]))
    assert row["opened_by_person"] == 3


def test_filters_and_groups_apply_to_opens_by_people(ch):
    write(ch, [*changes("a1", ["sent", "delivered", "opened"], [("opened", False)], campaign="A"),
               *changes("a2", ["sent", "delivered", "opened"], [("opened", True)], campaign="A"),
               *changes("b1", ["sent", "delivered", "opened"], [("opened", False)], campaign="B")])
    grouped = reports.run(ch, "funnel", reports.Filters(), by="campaign")
    by = {r[0]: dict(zip(grouped.columns, r)) for r in grouped.rows}
    assert {c: r["opened_by_person"] for c, r in by.items()} == {"A": 1, "B": 1}
    only_b = reports.run(ch, "funnel", reports.Filters(campaign="B"))
    assert dict(zip(only_b.columns, only_b.rows[0]))["opened_by_person"] == 1


def test_an_action_without_opens_has_no_person_open_rate(ch):
    write(ch, [orjson.dumps(dataclasses.replace(CHANGE, action="zns", message_id="z", change_id="z"))])
    report = reports.run(ch, "funnel", reports.Filters())
    row = dict(zip(report.columns, report.rows[0]))
    assert row["opened_by_person"] == 0 and row["person_open_rate"] is None

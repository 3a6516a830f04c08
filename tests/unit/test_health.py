"""Deliverability health (migration 0013, sinks/expectations.py, reports.health): rolling 24-hour and
7-day rates per action, provider and mailbox provider, judged against the settings' thresholds."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from typing import Iterator

import orjson
import pytest

from sendtrack import recipients
from sendtrack.cli import build_parser
from sendtrack.settings import Settings
from sinks import expectations, reports
from sinks import migrate as migrations
from sinks.clickhouse import ClickHouse
from sinks.writer import Batch
from tests.unit.test_sink_inserts import CHANGE

HOUR_MS = 3_600_000
DELIVERED, BOUNCED, COMPLAINED, UNSUBSCRIBED = (["sent", "delivered"], ["sent", "failed", "bounced"],
                                                ["sent", "delivered", "complained"], ["sent", "delivered", "unsubscribed"])


def publish(ch: ClickHouse, groups: list[tuple[str, str, str, float, int, list[str]]], action: str = "email",
            now: int = 0) -> None:
    """(id prefix, provider, recipient domain, hours before `now` (default: now) of the request, how
    many, statuses reached); a domain without a dot is a phone number's prefix."""
    now = now or int(time.time() * 1000)
    batch, offset = Batch(), 0
    for prefix, provider, domain, hours_ago, count, statuses in groups:
        requested = now - int(hours_ago * HOUR_MS)
        for n in range(count):
            mid = f"{prefix}-{n}"
            recipient = f"u{n}@{domain}" if "." in domain else f"{domain}{n:07d}"
            for status in statuses:
                change = dataclasses.replace(CHANGE, message_id=mid, change_id=f"{mid}-{status}", action=action,
                                             provider=provider, recipient=recipient, status=status,
                                             current_status=status, requested_at=requested, occurred_at=requested)
                batch.add_status_change(orjson.dumps(change), "status-changes", 0, offset)
                offset += 1
    batch.write(ch)


def health(ch: ClickHouse, settings: Settings = Settings(), **filters) -> dict[tuple, dict]:
    expectations.apply_thresholds(ch, settings, log=lambda *_: None)
    report = reports.run(ch, "health", reports.Filters(**filters))
    # Keyed by (period, action, provider, mailbox provider, metric), with the workspace first unless it is ''.
    return {tuple(r[1:6]) if r[0] == "" else tuple(r[:6]): dict(zip(report.columns, r)) for r in report.rows}


@pytest.fixture
def classified(ch):
    recipients.apply(ch, log=lambda *_: None)
    return ch


def test_rates_and_states_per_provider_and_mailbox_provider(classified):
    publish(classified, [
        ("g-ok", "sendgrid", "gmail.com", 1, 186, DELIVERED),
        ("g-bounce", "sendgrid", "gmail.com", 2, 14, BOUNCED),  # 14 of 200: 7 %, a warning (5 %)
        ("y-ok", "sendgrid", "yahoo.com", 3, 88, DELIVERED),
        ("y-bounce", "sendgrid", "yahoo.com", 3, 12, BOUNCED),  # 12 of 100: 12 %, critical (10 %)
        ("o-bounce", "sendgrid", "outlook.com", 1, 2, BOUNCED),  # 2 of 3: 67 %, but too few to judge
        ("o-ok", "sendgrid", "outlook.com", 1, 1, DELIVERED),
        ("s-ok", "ses", "gmail.com", 1, 997, DELIVERED),
        ("s-spam", "ses", "gmail.com", 1, 4, COMPLAINED),  # 4 of 1,007 delivered: 0.4 %, critical (0.3 %)
        ("s-unsub", "ses", "gmail.com", 1, 6, UNSUBSCRIBED),  # 6 of 1,007 delivered: 0.6 %, a warning
    ])
    rows = health(classified)
    gmail = rows[("24h", "email", "sendgrid", "gmail", "bounce")]
    assert (gmail["events"], gmail["volume"], gmail["rate"], gmail["state"]) == (14, 200, 0.07, "warning")
    failure = rows[("24h", "email", "sendgrid", "gmail", "failure")]
    assert (failure["events"], failure["state"]) == (14, "ok")  # the bounces failed too; 7 % < 10 %
    yahoo = rows[("24h", "email", "sendgrid", "yahoo", "bounce")]
    assert (yahoo["rate"], yahoo["state"], yahoo["measured"]) == (0.12, "critical", True)
    outlook = rows[("24h", "email", "sendgrid", "outlook", "bounce")]
    assert (outlook["volume"], outlook["rate"], outlook["measured"], outlook["state"]) == (3, 0.666667, False, "ok")
    # '*': the provider over all its recipients (28 bounces of 303 sends: 9.2 %, a warning).
    total = rows[("24h", "email", "sendgrid", "*", "bounce")]
    assert (total["events"], total["volume"], total["state"]) == (28, 303, "warning")
    # Complaints and unsubscribes are over messages delivered: 4 and 6 of 1,007.
    spam = rows[("24h", "email", "ses", "gmail", "complaint")]
    assert (spam["events"], spam["volume"], spam["state"]) == (4, 1007, "critical")
    assert rows[("24h", "email", "ses", "gmail", "unsubscribe")]["state"] == "warning"
    assert rows[("24h", "email", "ses", "*", "bounce")]["state"] == "ok"
    # The thresholds are in every row, as fractions.
    assert (gmail["warning"], gmail["critical"], spam["warning"], spam["critical"]) == (0.05, 0.1, 0.001, 0.003)


def test_the_periods_are_the_last_24_hours_and_the_last_7_days(classified):
    publish(classified, [
        ("recent", "sendgrid", "gmail.com", 1, 100, DELIVERED),
        ("two-days", "sendgrid", "gmail.com", 48, 100, BOUNCED),
        ("old", "sendgrid", "gmail.com", 8 * 24, 100, BOUNCED),  # outside both
    ])
    rows = health(classified)
    day, week = rows[("24h", "email", "sendgrid", "*", "bounce")], rows[("7d", "email", "sendgrid", "*", "bounce")]
    assert (day["events"], day["volume"], day["state"]) == (0, 100, "ok")
    assert (week["events"], week["volume"], week["rate"], week["state"]) == (100, 200, 0.5, "critical")


def test_the_report_lists_the_worst_first_and_narrows_by_provider(classified):
    publish(classified, [
        ("a", "sendgrid", "gmail.com", 1, 100, DELIVERED),
        ("b", "ses", "gmail.com", 1, 80, DELIVERED),
        ("c", "ses", "gmail.com", 1, 20, BOUNCED),
    ])
    expectations.apply_thresholds(classified, Settings(), log=lambda *_: None)
    report = reports.run(classified, "health", reports.Filters())
    states = [r[-1] for r in report.rows]
    assert states == sorted(states, key=reports.HEALTH_STATES.index) and states[0] == "critical"
    # SES's 80 deliveries are too few to judge its complaints and unsubscribes.
    assert report.title == ("Deliverability health, last 24 hours and 7 days: 8 critical, 0 warning, 16 ok, "
                            "8 not judged (under the minimum volume)")
    narrowed = reports.run(classified, "health", reports.Filters(provider="sendgrid"))
    assert narrowed.rows and {r[3] for r in narrowed.rows} == {"sendgrid"}
    assert all(r[-1] == "ok" for r in narrowed.rows)
    with pytest.raises(ValueError, match="takes no dates"):
        reports.run(classified, "health", reports.Filters(since=reports.date(2026, 1, 1)))


def test_worst_first_is_by_how_far_past_the_threshold(classified):
    publish(classified, [
        ("a", "sendgrid", "gmail.com", 1, 88, DELIVERED), ("b", "sendgrid", "gmail.com", 1, 12, BOUNCED),  # 12 %: 1.2 x 10 %
        ("c", "ses", "gmail.com", 1, 70, DELIVERED), ("d", "ses", "gmail.com", 1, 30, BOUNCED),  # 30 %: 3 x 10 %
        ("e", "mailgun", "gmail.com", 1, 94, DELIVERED), ("f", "mailgun", "gmail.com", 1, 6, BOUNCED),  # 6 %: 1.2 x 5 %
        ("g", "postmark", "gmail.com", 1, 91, DELIVERED), ("h", "postmark", "gmail.com", 1, 9, BOUNCED),  # 9 %: 1.8 x 5 %
    ])
    expectations.apply_thresholds(classified, Settings(), log=lambda *_: None)
    rows = reports.run(classified, "health", reports.Filters()).rows
    bounces = [(r[3], r[-1]) for r in rows if r[1] == "24h" and r[4] == "*" and r[5] == "bounce"]
    assert bounces == [("ses", "critical"), ("sendgrid", "critical"), ("postmark", "warning"), ("mailgun", "warning")]


def test_thresholds_and_minimum_volume_come_from_the_settings(classified):
    publish(classified, [("a", "sendgrid", "gmail.com", 1, 48, DELIVERED), ("b", "sendgrid", "gmail.com", 1, 2, BOUNCED)])
    assert health(classified)[("24h", "email", "sendgrid", "*", "bounce")]["measured"] is False  # 50 < 100
    assert expectations.apply_thresholds(classified, Settings(), log=lambda *_: None) == {}  # unchanged: nothing written
    stricter = Settings(health_thresholds="bounce:1/3.5", health_min_messages=50)
    row = health(classified, stricter)[("24h", "email", "sendgrid", "*", "bounce")]
    assert (row["rate"], row["measured"], row["state"], row["warning"], row["critical"]) == (0.04, True, "critical", 0.01, 0.035)
    assert set(expectations.apply_thresholds(classified, Settings(), log=lambda *_: None)) == {
        "bounce", "complaint", "failure", "unsubscribe"}  # the minimum volume changed back for every rate
    assert health(classified)[("24h", "email", "sendgrid", "*", "bounce")]["state"] == "ok"


def test_a_rate_at_its_threshold_is_past_it(classified):
    publish(classified, [("a", "sendgrid", "gmail.com", 1, 95, DELIVERED), ("b", "sendgrid", "gmail.com", 1, 5, BOUNCED)])
    assert health(classified)[("24h", "email", "sendgrid", "*", "bounce")]["state"] == "warning"  # 5 of 100
    # 7 in 10,000 against 0.07 %: not missed for 0.07 / 100 = 0.0007000000000000001.
    publish(classified, [("c", "sendgrid", "gmail.com", 1, 9_898, DELIVERED), ("d", "sendgrid", "gmail.com", 1, 2, BOUNCED)])
    row = health(classified, Settings(health_thresholds="bounce:0.07/50"))[("24h", "email", "sendgrid", "*", "bounce")]
    assert (row["events"], row["volume"], row["state"]) == (7, 10_000, "warning")


def test_each_action_has_the_rates_it_can_reach_and_sms_no_mailbox(classified):
    publish(classified, [("s", "esms", "0987", 1, 150, ["sent", "delivered"]), ("f", "esms", "0987", 1, 50, ["sent", "failed"])],
            action="sms")
    rows = health(classified)
    assert {(k[3], k[4]) for k in rows} == {("*", "failure")}  # no bounce, complaint or unsubscribe for SMS
    assert rows[("24h", "sms", "esms", "*", "failure")]["state"] == "critical"  # 50 of 200: 25 %


def test_a_database_without_thresholds_says_so(ch):
    with pytest.raises(ValueError, match="no deliverability health thresholds"):
        reports.run(ch, "health", reports.Filters())


def test_bad_thresholds_are_refused_at_start():
    with pytest.raises(ValueError, match="unknown rate 'spam'"):
        Settings(health_thresholds="spam:1/2")
    with pytest.raises(ValueError, match="not rate:warning/critical"):
        Settings(health_thresholds="bounce:5")
    with pytest.raises(ValueError, match="given twice"):
        Settings(health_thresholds="bounce:1/2,complaint:1/2,bounce:3/4")
    for bad in ("bounce:10/5", "bounce:0/5", "bounce:-1/5", "bounce:5/101", "bounce:nan/5", "bounce:5/inf"):
        with pytest.raises(ValueError, match="warning must be above 0"):
            Settings(health_thresholds=bad)
    with pytest.raises(ValueError):
        Settings(health_min_messages=0)


def test_the_cli_offers_every_report():
    report = next(a for a in build_parser()._subparsers._group_actions[0].choices["report"]._actions
                  if a.dest == "name")
    assert tuple(report.choices) == reports.REPORTS


def test_each_workspace_is_judged_on_its_own_messages(classified):
    """A shop sending to a bad list is critical; the clean shop beside it is not dragged up, and the
    bad one's rate is not diluted by the clean one's volume."""
    now = int(time.time() * 1000)
    batch, offset = Batch(), 0
    for workspace, count, bounced in (("shop-bad", 100, 30), ("shop-clean", 1000, 10)):
        for n in range(count):
            mid = f"{workspace}-{n}"
            for status in BOUNCED if n < bounced else DELIVERED:
                change = dataclasses.replace(CHANGE, message_id=mid, change_id=f"{mid}-{status}", recipient=f"u{n}@gmail.com",
                                             status=status, requested_at=now - HOUR_MS, occurred_at=now - HOUR_MS,
                                             workspace_id=workspace)
                batch.add_status_change(orjson.dumps(change), "status-changes", 0, offset)
                offset += 1
    batch.write(classified)
    rows = health(classified)
    bad, clean = (rows[(w, "24h", "email", "sendgrid", "*", "bounce")] for w in ("shop-bad", "shop-clean"))
    assert (bad["events"], bad["volume"], bad["state"]) == (30, 100, "critical")
    assert (clean["events"], clean["volume"], clean["state"]) == (10, 1000, "ok")
    assert {key[0] for key in rows} == {"shop-bad", "shop-clean"}  # no row mixes them
    only = health(classified, workspace="shop-clean")
    assert {key[0] for key in only} == {"shop-clean"}


@contextlib.contextmanager
def migrated_to(engine_path, version: int) -> Iterator[ClickHouse]:
    """A database of its own on the test's engine, migrated up to `version`, recipients classified;
    dropped afterwards."""
    ch = ClickHouse.connect(Settings(clickhouse_url=f"chdb://{engine_path}"), database=f"mh_{uuid.uuid4().hex[:10]}")
    try:
        migrations.migrate(ch, log=lambda *_: None, up_to=version)
        recipients.apply(ch, log=lambda *_: None)
        yield ch
    finally:
        ch.command(f"DROP DATABASE IF EXISTS `{ch.database}`")


def test_migration_0018_counts_the_messages_written_before_it_once(engine_path):
    """The view reads message_health from 0018 on: the messages written before it are copied in, a
    message written both ways and a duplicate status change count once, and the rates, volumes and
    states are those the view gave over messages_by_workspace before."""
    with migrated_to(engine_path, 17) as ch:
        groups = [("g-ok", "sendgrid", "gmail.com", 1, 186, DELIVERED), ("g-bounce", "sendgrid", "gmail.com", 30, 14, BOUNCED),
                  ("y-bounce", "sendgrid", "yahoo.com", 3, 12, BOUNCED), ("s-spam", "ses", "gmail.com", 100, 40, COMPLAINED),
                  ("s-unsub", "ses", "gmail.com", 1, 6, UNSUBSCRIBED), ("old", "ses", "gmail.com", 24 * 8, 50, BOUNCED)]
        now = int(time.time() * 1000)
        publish(ch, groups, now=now)
        publish(ch, groups[:2], now=now)  # redelivered: the same status changes again
        before = health(ch)
        assert before[("24h", "email", "sendgrid", "gmail", "bounce")]["volume"] == 186
        assert before[("7d", "email", "sendgrid", "gmail", "bounce")]["events"] == 14
        assert [m.version for m in migrations.migrate(ch, log=lambda *_: None, up_to=18)] == [18]
        assert ch.query(f"SELECT count() FROM `{ch.database}`.message_health FINAL")[1] == [(308,)]
        assert health(ch) == before
        # Written again (a rerun after a partial run) and through the new view: still once each.
        rerun = next(m for m in migrations.available() if m.version == 18)
        for statement in rerun.statements(ch.database):
            ch.command(statement)
        publish(ch, groups, now=now)
        assert health(ch) == before
        publish(ch, [("new", "sendgrid", "gmail.com", 1, 10, BOUNCED)])
        after = health(ch)
        assert after[("24h", "email", "sendgrid", "gmail", "bounce")]["volume"] == 196
        assert after[("24h", "email", "sendgrid", "gmail", "bounce")]["events"] == 10
        # The view reads message_health alone: without messages_by_workspace it says the same.
        ch.command(f"ALTER TABLE `{ch.database}`.messages_by_workspace DELETE WHERE 1 SETTINGS mutations_sync = 2")
        assert health(ch) == after


def test_the_health_reads_only_the_months_of_the_last_7_days(classified):
    # ClickHouse prunes partitions under FINAL only by sorting key columns: message_health keeps the
    # request time in its key, or every evaluation would read all the months kept (730 days).
    publish(classified, [("old", "sendgrid", "gmail.com", 24 * 70, 1000, BOUNCED),
                         ("new", "sendgrid", "gmail.com", 1, 10, DELIVERED)])
    db = f"`{classified.database}`"
    with pytest.raises(Exception, match="(?i)limit for rows"):
        classified.query(f"SELECT count() FROM {db}.message_health FINAL SETTINGS max_rows_to_read = 500")
    expectations.apply_thresholds(classified, Settings(), log=lambda *_: None)
    assert classified.query(f"SELECT sum(volume) FROM {db}.deliverability_health WHERE period = '7d' "
                            "AND metric = 'bounce' AND mailbox_provider = '*' SETTINGS max_rows_to_read = 500")[1] == [(10,)]


def test_migration_0019_counts_each_message_once_and_gives_the_same_rates(engine_path):
    """0019 counts each message once per group before spreading the groups over the two windows and
    '*' (0018 spread every message first): the view's rows, values and column types are unchanged,
    across the 24-hour and 7-day edges, mailbox providers, a message without one, and workspaces."""
    with migrated_to(engine_path, 18) as ch:
        groups = [("g-ok", "sendgrid", "gmail.com", 1, 186, DELIVERED), ("g-bounce", "sendgrid", "gmail.com", 30, 14, BOUNCED),
                  ("y-bounce", "sendgrid", "yahoo.com", 3, 12, BOUNCED), ("y-old", "sendgrid", "yahoo.com", 23.5, 9, DELIVERED),
                  ("s-spam", "ses", "gmail.com", 100, 40, COMPLAINED), ("s-unsub", "ses", "gmail.com", 24.5, 6, UNSUBSCRIBED),
                  ("old", "ses", "gmail.com", 24 * 8, 50, BOUNCED), ("edge", "ses", "outlook.com", 24 * 7 - 1, 5, BOUNCED)]
        publish(ch, groups)
        publish(ch, [("sms", "esms", "+8490", 2, 20, ["sent", "delivered"]), ("sms-f", "esms", "+8490", 50, 3,
                                                                             ["sent", "failed"])], action="sms")
        publish(ch, groups[:3])  # redelivered: the same status changes again
        for shop, n in (("shop-a", 7), ("shop-b", 11)):
            batch = Batch()
            for i in range(n):
                change = dataclasses.replace(CHANGE, message_id=f"{shop}-{i}", change_id=f"{shop}-{i}-b",
                                             workspace_id=shop, status="bounced", current_status="bounced",
                                             requested_at=int(time.time() * 1000) - HOUR_MS)
                batch.add_status_change(orjson.dumps(change), "status-changes", 0, i)
            batch.write(ch)
        every = f"SELECT * FROM `{ch.database}`.deliverability_health ORDER BY ALL"
        before = health(ch)  # the thresholds written first: the view has no rows without them
        types, rows = ch.query(f"DESCRIBE TABLE `{ch.database}`.deliverability_health")[1], ch.query(every)[1]
        assert len(before) > 40 and {k[0] for k in before} >= {"24h", "7d", "shop-a", "shop-b"}
        assert [m.version for m in migrations.migrate(ch, log=lambda *_: None)] == [19]
        assert health(ch) == before
        # Every row of the view, those the report leaves out (an SMS's bounce rate) and duplicates included.
        assert ch.query(every)[1] == rows and len(rows) > len(before)
        assert ch.query(f"DESCRIBE TABLE `{ch.database}`.deliverability_health")[1] == types

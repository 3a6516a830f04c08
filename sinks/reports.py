"""The analyst reports: funnel, trend, current status, failures, dead letters, customer activity and latency."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, Optional

from schemas.models import ACTIONS
from sinks.clickhouse import ClickHouse

FUNNEL_STATUSES = ("sent", "processing", "delivered", "opened", "clicked", "answered", "succeeded",
                   "failed", "bounced", "unsubscribed", "complained")

# Messages opened or clicked by a person: an engagement event no machine made (is_machine false).
PERSON = "opened_by_person"

VI_LABELS = {
    "sent": "Đã gửi", "processing": "Đang xử lý", "delivered": "Đã nhận", "failed": "Đã thất bại",
    "opened": "Đã mở", "clicked": "Đã click", "unsubscribed": "Hủy đăng ký", "complained": "Báo xấu",
    "bounced": "Bị trả về", "answered": "Đã nghe", "succeeded": "Gửi thành công", "": "Chờ kết quả",
}

GROUP_COLUMNS = {"flow": "flow_id", "campaign": "campaign_id", "step": "step_id", "action": "action"}

# The filters a report's view has columns for. A view without a dimension cannot be narrowed by it:
# funnel_daily and current_status_daily have no provider, failure_reasons has no flow, campaign or
# step, and dead_letters has none of them (a refused record may not even name a message).
# Every view but dead_letters has the workspace (migration 0015).
DIMENSIONS = ("workspace", "flow", "campaign", "step", "action", "provider")
FILTERABLE = {
    "funnel": ("workspace", "flow", "campaign", "step", "action"),
    "trend": ("workspace", "flow", "campaign", "step", "action"),
    "status": ("workspace", "flow", "campaign", "step", "action"),
    "failures": ("workspace", "action", "provider"),
    "dead_letters": (),
    "customer": ("workspace", "flow", "campaign", "step", "action", "provider"),
    "latency": ("workspace", "flow", "campaign", "step", "action", "provider"),
    "unconfirmed": ("workspace", "flow", "campaign", "step", "action", "provider"),
    "recipients": ("workspace", "action", "provider"),
    "health": ("workspace", "action", "provider"),
}


@dataclass
class Filters:
    """What the analyst narrowed the report to. Dates are send dates (UTC), inclusive. `workspace`
    '' is the workspace of requests that named none."""

    workspace: Optional[str] = None
    flow: Optional[str] = None
    campaign: Optional[str] = None
    step: Optional[str] = None
    action: Optional[str] = None
    since: Optional[date] = None
    until: Optional[date] = None
    provider: Optional[str] = None

    def where(self, day_expr: str = "day", prefix: str = "") -> tuple[str, dict[str, Any]]:
        clauses, params = ["1"], {}
        for name, column in (("workspace", "workspace_id"), ("flow", "flow_id"), ("campaign", "campaign_id"),
                             ("step", "step_id"),
                             ("action", "action"), ("provider", "provider")):
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"{prefix}{column} = %({name})s")
                params[name] = value
        if self.since:
            clauses.append(f"{day_expr} >= %(since)s")
            params["since"] = self.since
        if self.until:
            clauses.append(f"{day_expr} <= %(until)s")
            params["until"] = self.until
        return " AND ".join(clauses), params

    def unapplied(self, report: str) -> list[str]:
        """The filters set here that the report's view has no column for."""
        return [d for d in DIMENSIONS if getattr(self, d) is not None and d not in FILTERABLE[report]]

    def only(self, report: str) -> "Filters":
        """These filters without the ones the report's view cannot apply (`unapplied`)."""
        return replace(self, **{d: None for d in self.unapplied(report)})


class OutOfScope(PermissionError):
    """A reader of one workspace asked for another's rows, or for what belongs to no workspace."""


def scoped(name: str, f: Filters, workspace: Optional[str]) -> Filters:
    """The filters of report `name` for a reader of `workspace` (None: every workspace): narrowed to
    it; another workspace, or dead letters (which belong to none), are OutOfScope. ClickHouse
    enforces the scope on the reader's sessions anyway (sinks/analyst.py): this makes it an error
    the reader can read rather than an empty report."""
    if workspace is None:
        return f
    if name == "dead_letters":
        raise OutOfScope("dead letters belong to no workspace: a reader of one workspace cannot read them")
    if f.workspace is not None and f.workspace != workspace:
        raise OutOfScope(f"this reader sees workspace {workspace!r} only")
    return replace(f, workspace=workspace)


@dataclass
class Report:
    """A titled table: column names and rows, ready for any output format."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)


def _rate(part: int, whole: int) -> Optional[float]:
    return round(part / whole, 4) if whole else None


def funnel(ch: ClickHouse, f: Filters, by: str = "action") -> Report:
    """Distinct messages reaching each milestone, with delivery, open and click rates."""
    where, params = f.where()
    group = GROUP_COLUMNS[by]
    cols, rows = ch.query(
        f"SELECT {group} AS g, action, status, sum(messages) FROM `{ch.database}`.funnel_daily "
        f"WHERE {where} GROUP BY g, action, status ORDER BY g, action",
        params,
    )
    table: dict[tuple[str, str], dict[str, int]] = {}
    for g, action, status, n in rows:
        table.setdefault((g, action), {})[status] = int(n)
    # Opens and clicks by people, not by machines (mail privacy prefetches, link scanners).
    _, rows = ch.query(
        f"SELECT {group} AS g, action, sum(messages) FROM `{ch.database}`.engagement_daily "
        f"WHERE {where} AND kind = 'opened_by_person' GROUP BY g, action", params)
    for g, action, n in rows:
        table.setdefault((g, action), {})[PERSON] = int(n)
    out = Report(
        "Funnel: distinct messages that reached each status",
        ([by] if by != "action" else []) + ["action", "messages", *FUNNEL_STATUSES, PERSON,
                                            "delivery_rate", "open_rate", "click_rate", "person_open_rate"],
    )
    for (g, action), counts in sorted(table.items()):
        base = counts.get("sent") or counts.get("succeeded", 0) + counts.get("failed", 0)
        delivered = counts.get("delivered", 0)
        can = ACTIONS.get(action, frozenset())
        rate = lambda status, part, whole: _rate(part, whole) if status in can else None  # noqa: E731
        out.rows.append(
            ([g] if by != "action" else [])
            + [action, base, *(counts.get(s, 0) for s in FUNNEL_STATUSES), counts.get(PERSON, 0),
               rate("delivered", delivered, base), rate("opened", counts.get("opened", 0), delivered),
               rate("clicked", counts.get("clicked", 0), delivered), rate("opened", counts.get(PERSON, 0), delivered)]
        )
    return out


def current_status(ch: ClickHouse, f: Filters, vietnamese: bool = False) -> Report:
    """Messages by their current status."""
    where, params = f.where()
    _, rows = ch.query(
        f"SELECT action, current_status, sum(messages) AS n FROM `{ch.database}`.current_status_daily "
        f"WHERE {where} GROUP BY action, current_status ORDER BY action, n DESC",
        params,
    )
    out = Report("Messages by current status", ["action", "current_status", "messages", "share"])
    totals: dict[str, int] = {}
    for action, _, n in rows:
        totals[action] = totals.get(action, 0) + int(n)
    for action, status, n in rows:
        label = VI_LABELS.get(status, status) if vietnamese else (status or "(awaiting result)")
        out.rows.append([action, label, int(n), _rate(int(n), totals[action])])
    return out


def failures(ch: ClickHouse, f: Filters, limit: int = 50) -> Report:
    """Failed messages by reason, most frequent first."""
    where, params = f.where()
    params["limit"] = limit
    _, rows = ch.query(
        f"SELECT action, provider, reason_code, reason, sum(messages) AS n "
        f"FROM `{ch.database}`.failure_reasons WHERE {where} "
        f"GROUP BY action, provider, reason_code, reason ORDER BY n DESC, action LIMIT %(limit)s",
        params,
    )
    out = Report("Failures by reason", ["action", "provider", "reason_code", "reason", "messages"])
    out.rows = [[a, p, rc, r, int(n)] for a, p, rc, r, n in rows]
    return out


def customer(ch: ClickHouse, customer_id: str, f: Filters, vietnamese: bool = False) -> Report:
    """The Customer Activity report: every message of a customer with its timeline and failure reason."""
    where, params = f.where("toDate(m.requested_at)", prefix="m.")
    params["customer"] = customer_id
    _, rows = ch.query(
        f"SELECT m.message_id, m.action, m.provider, m.flow_id, m.campaign_id, m.step_id, m.requested_at, "
        f"m.current_status, m.reason_code, m.reason, "
        f"arrayStringConcat(arrayMap(x -> concat(x.2, if(x.3, '*', ''), ' ', "
        f"formatDateTime(x.1, '%%H:%%i:%%S')), arraySort(x -> x.1, groupArray((c.occurred_at, c.status, c.inferred)))), ' > ') "
        f"FROM `{ch.database}`.messages AS m "
        # Only this customer's milestones: the join's right side is held in memory, and the whole
        # status_changes log (millions of rows) went past the query's memory limit. The message ids
        # select granules through status_changes_raw's primary key.
        f"LEFT JOIN (SELECT message_id, occurred_at, status, inferred FROM `{ch.database}`.status_changes "
        f"  WHERE message_id IN (SELECT message_id FROM `{ch.database}`.messages WHERE customer_id = %(customer)s)"
        f") AS c ON c.message_id = m.message_id "
        f"WHERE m.customer_id = %(customer)s AND {where} "
        f"GROUP BY m.message_id, m.action, m.provider, m.flow_id, m.campaign_id, m.step_id, m.requested_at, "
        f"m.current_status, m.reason_code, m.reason ORDER BY m.requested_at",
        params,
    )
    out = Report(
        f"Customer activity of {customer_id} (* = inferred milestone)",
        ["message_id", "action", "provider", "flow_id", "campaign_id", "step_id", "requested_at",
         "current_status", "reason_code", "reason", "timeline"],
    )
    for r in rows:
        r = list(r)
        if vietnamese:
            r[7] = VI_LABELS.get(r[7], r[7])
        r[6] = r[6].strftime("%Y-%m-%d %H:%M:%S")
        out.rows.append(r)
    return out


def latency(ch: ClickHouse, f: Filters) -> Report:
    """Seconds from sent to delivered and from delivered to opened, as quantiles per action."""
    where, params = f.where("toDate(requested_at)")
    _, rows = ch.query(
        "SELECT action, "
        "countIf(delivered_at IS NOT NULL AND sent_at IS NOT NULL) AS n_d, "
        "quantilesExactIf(0.5, 0.9, 0.99)(dateDiff('millisecond', sent_at, delivered_at) / 1000, "
        "  delivered_at IS NOT NULL AND sent_at IS NOT NULL) AS q_d, "
        "countIf(opened_at IS NOT NULL AND delivered_at IS NOT NULL) AS n_o, "
        "quantilesExactIf(0.5, 0.9, 0.99)(dateDiff('millisecond', delivered_at, opened_at) / 1000, "
        "  opened_at IS NOT NULL AND delivered_at IS NOT NULL) AS q_o "
        # messages_by_workspace FINAL folds each message's rows as the messages view does, merging in key
        # order instead of holding every message's key in memory (migration 0008).
        f"FROM `{ch.database}`.messages_by_workspace FINAL WHERE {where} GROUP BY action ORDER BY action",
        params,
    )
    out = Report(
        "Latency in seconds (p50 / p90 / p99)",
        ["action", "sent_to_delivered_n", "sent_to_delivered_p50", "sent_to_delivered_p90",
         "sent_to_delivered_p99", "delivered_to_opened_n", "delivered_to_opened_p50",
         "delivered_to_opened_p90", "delivered_to_opened_p99"],
    )
    for action, n_d, q_d, n_o, q_o in rows:
        qd = [round(x, 3) for x in q_d] if n_d else [None] * 3
        qo = [round(x, 3) for x in q_o] if n_o else [None] * 3
        out.rows.append([action, int(n_d), *qd, int(n_o), *qo])
    return out


TREND_STATUSES = ("sent", "delivered", "opened", "clicked", "failed")


def trend(ch: ClickHouse, f: Filters) -> Report:
    """Distinct messages per send day that reached sent, delivered, opened, clicked and failed."""
    where, params = f.where()
    _, rows = ch.query(
        f"SELECT day, status, sum(messages) FROM `{ch.database}`.funnel_daily "
        f"WHERE {where} AND status IN %(statuses)s GROUP BY day, status ORDER BY day",
        {**params, "statuses": TREND_STATUSES},
    )
    days: dict[date, dict[str, int]] = {}
    for day, status, n in rows:
        days.setdefault(day, {})[status] = int(n)
    out = Report("Daily trend: distinct messages per send day", ["day", *TREND_STATUSES])
    out.rows = [[day, *(counts.get(s, 0) for s in TREND_STATUSES)] for day, counts in sorted(days.items())]
    return out


def dead_letters(ch: ClickHouse, f: Filters) -> Report:
    """Refused records by source topic and error type; dates are the day of the refusal (UTC)."""
    where, params = f.where("toDate(failed_at)")
    _, rows = ch.query(
        f"SELECT source_topic, error_type, count() AS n, max(failed_at) "
        f"FROM `{ch.database}`.dead_letters WHERE {where} "
        f"GROUP BY source_topic, error_type ORDER BY n DESC, source_topic, error_type",
        params,
    )
    out = Report("Dead letters by type", ["source_topic", "error_type", "records", "last_failed_at"])
    out.rows = [[topic, kind, int(n), last] for topic, kind, n, last in rows]
    return out


def choices(ch: ClickHouse, f: Filters) -> dict[str, list[str]]:
    """The workspaces, flows, campaigns, steps and actions that sent anything in the date range (in
    the workspace, if one is chosen; funnel_daily's keys only: ClickHouse leaves its distinct-message
    states unmerged). '' (no workspace named) is not listed."""
    where, params = replace(f, flow=None, campaign=None, step=None, action=None, provider=None).where()
    everywhere, _ = replace(f, workspace=None, flow=None, campaign=None, step=None, action=None, provider=None).where()
    _, rows = ch.query(
        f"SELECT groupUniqArrayIf(1000)(workspace_id, {everywhere}), groupUniqArrayIf(1000)(flow_id, {where}), "
        f"groupUniqArrayIf(1000)(campaign_id, {where}), groupUniqArrayIf(1000)(step_id, {where}), "
        f"groupUniqArrayIf(100)(action, {where}) "
        f"FROM (SELECT DISTINCT workspace_id, day, flow_id, campaign_id, step_id, action FROM "
        f"`{ch.database}`.funnel_daily WHERE {everywhere})",
        params,
    )
    names = ("workspace", "flow", "campaign", "step", "action")
    return {name: sorted(v for v in values if v) for name, values in zip(names, rows[0])} if rows else \
        {name: [] for name in names}


def unconfirmed(ch: ClickHouse, f: Filters, limit: int = 1000) -> Report:
    """Messages past the expected time to a provider's receipt without one (the `unconfirmed` view):
    counted per action in the title, the oldest `limit` listed. Their status stays what it is."""
    where, params = f.where("toDate(requested_at)")
    params["limit"] = limit
    view = f"`{ch.database}`.unconfirmed"
    _, counts = ch.query(f"SELECT action, count() FROM {view} WHERE {where} GROUP BY action ORDER BY action", params)
    _, rows = ch.query(
        f"SELECT message_id, action, provider, flow_id, campaign_id, step_id, requested_at, current_status, "
        f"waiting_hours, expected_hours FROM {view} WHERE {where} "
        f"ORDER BY requested_at, message_id LIMIT %(limit)s", params)
    total = sum(int(n) for _, n in counts)
    per = ", ".join(f"{a} {int(n):,}" for a, n in counts)
    title = (f"Unconfirmed: {total:,} messages without a provider receipt in the expected time"
             + (f" ({per}); the oldest {len(rows):,} listed" if total else ""))
    out = Report(title, ["message_id", "action", "provider", "flow_id", "campaign_id", "step_id", "requested_at",
                         "current_status", "waiting_hours", "expected_hours"])
    out.rows = [list(r) for r in rows]
    return out


def recipients(ch: ClickHouse, f: Filters) -> Report:
    """Deliverability by mailbox provider (email domain) and Vietnamese carrier (phone prefix): where
    delivery problems show (the `recipient_health` view, sendtrack/recipients.py)."""
    where, params = f.where()
    _, rows = ch.query(
        f"SELECT action, mailbox_provider, carrier, sum(messages) AS n, sum(delivered), sum(bounced), sum(opened), "
        f"sum(complained) FROM `{ch.database}`.recipient_health WHERE {where} "
        f"GROUP BY action, mailbox_provider, carrier ORDER BY n DESC, action, mailbox_provider, carrier", params)
    out = Report("Deliverability by mailbox provider and carrier",
                 ["action", "mailbox_provider", "carrier", "messages", "delivered", "bounced", "opened", "complained",
                  "delivery_rate", "bounce_rate", "open_rate", "complaint_rate"])
    for action, mailbox, carrier, n, delivered, bounced, opened, complained in rows:
        n, delivered, bounced, opened, complained = map(int, (n, delivered, bounced, opened, complained))
        out.rows.append([action, mailbox, carrier, n, delivered, bounced, opened, complained,
                         _rate(delivered, n), _rate(bounced, n), _rate(opened, delivered), _rate(complained, delivered)])
    return out


HEALTH_STATES = ("critical", "warning", "ok")
# The status each rate of the deliverability_health view counts: a rate is shown for the actions
# that can reach it (an SMS cannot bounce, a timer cannot fail).
HEALTH_METRICS = {"bounce": "bounced", "complaint": "complained", "failure": "failed", "unsubscribe": "unsubscribed"}


def health(ch: ClickHouse, f: Filters) -> Report:
    """Deliverability health (the `deliverability_health` view): bounce, complaint, failure and
    unsubscribe rates over the last 24 hours and 7 days per workspace, action, provider and mailbox
    provider ('*': all of them), judged against the thresholds in the settings; each action with the
    rates it can reach. A sender's reputation is its own: one workspace's rates are never mixed with
    another's. Worst first (by state, then by how far past its threshold); a rate over fewer
    messages than the minimum volume is listed, not judged (`measured` false)."""
    if f.since or f.until:
        raise ValueError("the health report covers the last 24 hours and 7 days: it takes no dates")
    where, params = f.where()
    params["states"] = list(HEALTH_STATES)
    _, rows = ch.query(
        f"SELECT workspace_id, period, action, provider, mailbox_provider, metric, events, volume, rate, warning, "
        f"critical, measured, state FROM `{ch.database}`.deliverability_health WHERE {where} "
        f"ORDER BY indexOf(%(states)s, state), measured DESC, "
        f"rate / if(state = 'critical', critical, warning) DESC, workspace_id, period, action, provider, "
        f"mailbox_provider = '*' DESC, mailbox_provider, metric", params)
    if not rows:  # no message in the last 7 days, or no thresholds to join them with
        _, limits = ch.query(f"SELECT count() FROM `{ch.database}`.health_thresholds")
        if not limits[0][0]:
            raise ValueError("no deliverability health thresholds in ClickHouse: run `sendtrack migrate` "
                             "or start the worker, which write them from the settings")
    out = Report("", ["workspace", "period", "action", "provider", "mailbox_provider", "metric", "events", "volume",
                      "rate", "warning", "critical", "measured", "state"])
    for workspace, period, action, provider, mailbox, metric, events, volume, rate, warning, critical, measured, \
            state in rows:
        if action in ACTIONS and HEALTH_METRICS[metric] not in ACTIONS[action]:
            continue
        out.rows.append([workspace, period, action, provider, mailbox, metric, int(events), int(volume),
                         round(float(rate), 6), float(warning), float(critical), bool(measured), state])
    judged = [r for r in out.rows if r[-2]]
    count = {state: sum(1 for r in judged if r[-1] == state) for state in HEALTH_STATES}
    out.title = (f"Deliverability health, last 24 hours and 7 days: {count['critical']} critical, "
                 f"{count['warning']} warning, {count['ok']} ok, {len(out.rows) - len(judged)} not judged "
                 f"(under the minimum volume)")
    return out


REPORTS = ("funnel", "status", "failures", "customer", "latency", "trend", "dead_letters", "unconfirmed", "recipients",
           "health")


def run(ch: ClickHouse, name: str, f: Filters, *, customer_id: Optional[str] = None, by: str = "action",
        vietnamese: bool = False) -> Report:
    """One report by name (the CLI, the report API and the dashboard all come through here). A filter
    the report's view has no column for is refused (the dashboard drops it first, with `Filters.only`,
    and says so)."""
    if name in FILTERABLE and f.unapplied(name):
        raise ValueError(f"the {name} report cannot be filtered by {', '.join(f.unapplied(name))}: "
                         f"its view has no such column")
    if name == "trend":
        return trend(ch, f)
    if name == "dead_letters":
        return dead_letters(ch, f)
    if name == "funnel":
        return funnel(ch, f, by)
    if name == "status":
        return current_status(ch, f, vietnamese)
    if name == "failures":
        return failures(ch, f)
    if name == "customer":
        if not customer_id:
            raise ValueError("the customer report needs a customer id")
        return customer(ch, customer_id, f, vietnamese)
    if name == "latency":
        return latency(ch, f)
    if name == "unconfirmed":
        return unconfirmed(ch, f)
    if name == "recipients":
        return recipients(ch, f)
    if name == "health":
        return health(ch, f)
    raise ValueError(f"unknown report {name!r}; expected one of {', '.join(REPORTS)}")

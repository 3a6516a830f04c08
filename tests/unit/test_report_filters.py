"""Report filters: a view is narrowed only by the columns it has, and says which filters it cannot apply."""

from __future__ import annotations

from datetime import date

import pytest

from sinks import reports


class Recorder:
    """Stands in for ClickHouse: keeps the SQL and parameters of each query, answers no rows."""

    database = "sendtrack"

    def __init__(self) -> None:
        self.queries: list[tuple[str, dict]] = []

    def query(self, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
        self.queries.append((sql, dict(parameters or {})))
        return [], []


@pytest.mark.parametrize("report,unapplied", [
    ("funnel", ["provider"]), ("trend", ["provider"]), ("status", ["provider"]),
    ("failures", ["flow", "campaign"]), ("dead_letters", ["flow", "campaign", "provider"]),
    ("latency", []), ("customer", []),
])
def test_each_report_names_the_filters_its_view_cannot_apply(report, unapplied):
    f = reports.Filters(flow="f1", campaign="c1", provider="esms", since=date(2026, 5, 1))
    assert f.unapplied(report) == unapplied
    narrowed = f.only(report)
    assert narrowed.unapplied(report) == [] and narrowed.since == date(2026, 5, 1)
    ch = Recorder()
    reports.run(ch, report, narrowed, customer_id="cus-1")
    sql, params = ch.queries[-1]
    for name in ("flow", "campaign", "provider"):
        assert (f"%({name})s" in sql) == (name not in unapplied), (report, name, sql)
    assert params["since"] == date(2026, 5, 1)


def test_run_refuses_a_filter_the_view_cannot_apply():
    with pytest.raises(ValueError, match="cannot be filtered by provider"):
        reports.run(Recorder(), "funnel", reports.Filters(provider="esms"))
    with pytest.raises(ValueError, match="cannot be filtered by flow"):
        reports.run(Recorder(), "failures", reports.Filters(flow="f1"))


def test_the_trend_has_a_row_per_send_day():
    class Answers(Recorder):
        def query(self, sql, parameters=None):
            super().query(sql, parameters)
            return [], [(date(2026, 5, 29), "sent", 4), (date(2026, 5, 28), "sent", 3),
                        (date(2026, 5, 28), "failed", 1)]

    out = reports.trend(Answers(), reports.Filters())
    assert out.columns == ["day", "sent", "delivered", "opened", "clicked", "failed"]
    assert out.rows == [[date(2026, 5, 28), 3, 0, 0, 0, 1], [date(2026, 5, 29), 4, 0, 0, 0, 0]]

"""Attacks from the security review on readers' SQL (sinks/analyst.py), on the embedded engine."""

from __future__ import annotations

import uuid

import pytest

from sendtrack.settings import Settings
from sinks.analyst import Analysts, Refused
from sinks.clickhouse import ClickHouse


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Readers' sessions with a 1 MiB result bound (the engine as tests/unit/test_analyst.py opens it)."""
    already = next(iter(ClickHouse._embedded), None)
    path = already or str(tmp_path_factory.mktemp("analyst_review"))
    settings = Settings(clickhouse_url=f"chdb://{path}", query_max_seconds=10, query_max_result_rows=1000,
                        query_max_result_bytes=1 << 20, query_concurrency=1)
    ch = ClickHouse.connect(settings, database=f"review_{uuid.uuid4().hex[:8]}")
    analysts = Analysts(settings, ch)
    yield analysts
    analysts.close()
    if already is None:
        ClickHouse._embedded.pop(path).close()


@pytest.mark.parametrize("sql", [
    # A constant column counts once against max_result_bytes, however many rows repeat it: 4 MB of
    # Native dates here, 2 million Python date objects (at 100,000 rows: 5 GiB in the worker, and
    # seconds of JSON on the event loop).
    "SELECT arrayWithConstant(2000, toDate(0)) AS d FROM numbers(1000)",
    "SELECT arrayWithConstant(4000000, NULL) AS n",
])
def test_a_result_past_its_byte_limit_is_not_built_in_python(pool, sql):
    with pytest.raises(Refused) as refused:
        pool.query(sql)
    assert refused.value.code == 396, refused.value.message


def test_results_within_the_limit_are_unchanged(pool):
    columns, rows = pool.query("SELECT toDate(0) AS d, [1, 2] AS a, map('k', 1) AS m, NULL AS n, "
                               "toDateTime64(0, 3, 'UTC') AS t, {v:UInt64} AS v", {"v": 7})
    assert columns == ["d", "a", "m", "n", "t", "v"]
    assert rows[0][1:4] == ([1, 2], {"k": 1}, None) and rows[0][5] == 7
    assert pool.query("SELECT arrayWithConstant(100, toDate(0)) AS d FROM numbers(10)")[1][0][0][0].year == 1970

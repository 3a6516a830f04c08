"""Native blocks for a client's protocol revision (sinks/native.py). That clickhouse-go reads what
`upgrade` writes is shown against a real worker (tests/integration/test_grafana_panels.py); these
check the type grammar, the byte layout, and the refusals."""

from __future__ import annotations

import pytest

from sinks import native
from sinks.clickhouse import ClickHouse
from sendtrack.settings import Settings


@pytest.mark.parametrize("text, parsed", [
    ("String", ("String", [])),
    ("Nullable(Float64)", ("Nullable", [("Float64", [])])),
    ("LowCardinality(Nullable(String))", ("LowCardinality", [("Nullable", [("String", [])])])),
    ("Array(Array(UInt8))", ("Array", [("Array", [("UInt8", [])])])),
    ("DateTime64(3, 'UTC')", ("DateTime64", ["3", "'UTC'"])),
    ("Map(String, Array(UInt64))", ("Map", [("String", []), ("Array", [("UInt64", [])])])),
    ("Tuple(a String, b Nullable(UInt8))", ("Tuple", [("String", []), ("Nullable", [("UInt8", [])])])),
    ("Tuple(String, DateTime('Asia/Ho_Chi_Minh'))", ("Tuple", [("String", []), ("DateTime", ["'Asia/Ho_Chi_Minh'"])])),
    ("Enum8('a,b' = 1, 'c' = 2)", ("Enum8", ["'a,b' = 1", "'c' = 2"])),
    ("SimpleAggregateFunction(sum, UInt64)", ("UInt64", [])),
])
def test_type_grammar(text, parsed):
    assert native.parse_type(text) == parsed


@pytest.fixture(scope="module")
def ch(engine_path):  # the engine's default database: these tests read no table
    yield ClickHouse.connect(Settings(clickhouse_url=f"chdb://{engine_path}"), database="default")


def native_of(ch: ClickHouse, sql: str) -> bytes:
    """The statement's result as chDB writes Native (protocol revision 0)."""
    return ch._client.raw_query(sql, fmt="Native")


SQL = ("SELECT number AS n, toString(number) AS s, toLowCardinality(toString(number % 3)) AS lc, "
       "[number, number] AS a, if(number % 2, NULL, number) AS nul, map('k', number) AS m, "
       "tuple(number, 'x') AS t, toDecimal128(number, 3) AS d, toFixedString('ab', 2) AS fs FROM numbers(5)")


def test_block_info_and_one_byte_per_column_are_inserted_and_the_data_is_kept(ch):
    v0 = native_of(ch, SQL)
    v54460 = native.upgrade(v0, 54460)
    # 8 bytes of block info per block, 1 per column: nothing else changes.
    assert len(v54460) == len(v0) + 8 + 9
    assert v54460.startswith(b"\x01\x00\x02\xff\xff\xff\xff\x00")
    assert v54460[8:].replace(b"\x00", b"") == v0.replace(b"\x00", b"")
    # Block info only, for a client between the two revisions; nothing for revision 0.
    assert len(native.upgrade(v0, 54000)) == len(v0) + 8
    assert native.upgrade(v0, 0) is v0


def test_an_empty_result_and_several_blocks(ch):
    assert native.upgrade(native_of(ch, "SELECT 1 AS x WHERE 0"), 54460) in (b"", b"\x01\x00\x02\xff\xff\xff\xff\x00\x01\x00\x01x\x05UInt8\x00")
    many = native_of(ch, "SELECT number FROM numbers(200000) SETTINGS max_block_size = 65536")
    upgraded = native.upgrade(many, 54460)
    assert upgraded.count(b"\x01\x00\x02\xff\xff\xff\xff\x00\x01") >= 4


def test_unknown_layouts_and_cut_data_are_refused(ch):
    with pytest.raises(native.Unsupported, match="AggregateFunction"):
        native.upgrade(native_of(ch, "SELECT uniqState(number) AS u FROM numbers(3)"), 54460)
    data = native_of(ch, SQL)
    with pytest.raises(native.Truncated):
        native.upgrade(data[:-3], 54460)


@pytest.mark.parametrize("sql", [
    # An empty array of LowCardinality: its elements take no bytes, not even the flags.
    "SELECT CAST([] AS Array(LowCardinality(String))) AS a, 1 AS z FROM numbers(2)",
    "SELECT CAST(map() AS Map(LowCardinality(String), UInt8)) AS m, 1 AS z FROM numbers(2)",
    "SELECT [toLowCardinality(toNullable('x'))] AS a, map(toLowCardinality('k'), [NULL, 1::UInt8]) AS m "
    "FROM numbers(3)",
    # An enum name ending in a backslash, then another column.
    "SELECT CAST(tuple(number % 2, 1) AS Tuple(Enum8('a\\\\' = 0, 'b' = 1), Enum8('c' = 1))) AS t, 7 AS z "
    "FROM numbers(2)",
    # Backquoted element names, and an empty tuple.
    "SELECT CAST(tuple(1, 'x') AS Tuple(`a b` UInt8, `f(x)` String)) AS t, () AS e, 2 AS z",
])
def test_nested_layouts_are_walked_to_their_end(ch, sql):
    v0 = native_of(ch, sql)
    columns = v0[0]
    assert len(native.upgrade(v0, 54460)) == len(v0) + 8 + columns


def test_nested_is_an_array_of_tuples():
    assert native.parse_type("Nested(a String, b UInt8)") == \
        ("Array", [("Tuple", [("String", []), ("UInt8", [])])])

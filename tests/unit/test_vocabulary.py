"""One vocabulary: statuses, ranks, actions and columns are defined once in Python, and the SQL
migrations (rank arrays, milestone columns, ingest tables, view projections) agree with them.

The migrations are read as text: each test names the table, view or entry that drifted."""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from pathlib import Path

import pytest

from schemas.models import ACTIONS, STATUSES, DeadLetter, StatusChange
from sendtrack import status as core
from sendtrack.providers import canonical
from sinks import reports, writer

MIGRATIONS = sorted((Path(writer.__file__).parent / "migrations").glob("*.sql"))
SQL = re.sub(r"--[^\n]*", "", "\n".join(p.read_text() for p in MIGRATIONS))  # comments out


def split_top_level(text: str) -> list[str]:
    """Split at the commas that are outside parentheses, brackets and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "([":
            depth += 1
        elif not quoted and ch in ")]":
            depth -= 1
        elif not quoted and ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def balanced(text: str, open_at: int) -> str:
    """What is inside the parenthesis opening at `open_at`."""
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_at + 1:i]
    raise AssertionError("unbalanced parentheses")


def table_columns(name: str) -> dict[str, str]:
    """Column -> type of the table as the migrations create it (MATERIALIZED/DEFAULT clauses cut)."""
    found = list(re.finditer(r"CREATE TABLE IF NOT EXISTS \{db\}\.%s\s*\(" % re.escape(name), SQL))
    assert found, f"no migration creates the table {name}"
    body = balanced(SQL, found[-1].end() - 1)
    columns = {}
    for entry in split_top_level(body):
        column, kind = entry.split(None, 1)
        columns[column] = re.split(r"\s+(?:MATERIALIZED|DEFAULT|ALIAS)\s", kind)[0].strip()
    # Columns later migrations add (ALTER TABLE ... ADD COLUMN [IF NOT EXISTS] name type ... [AFTER c]).
    for added in re.finditer(r"ALTER TABLE \{db\}\.%s ADD COLUMN (?:IF NOT EXISTS )?(\w+) ([^;]*);" % re.escape(name),
                             SQL[found[-1].end():]):
        column, rest = added.group(1), added.group(2)
        kind = re.split(r"\s+(?:MATERIALIZED|DEFAULT|ALIAS|AFTER)\s", rest)[0].strip()
        after = re.search(r"\bAFTER (\w+)\s*$", rest)
        items = list(columns.items())
        at = [c for c, _ in items].index(after.group(1)) + 1 if after else len(items)
        columns = dict(items[:at] + [(column, kind)] + items[at:])
    return columns


def view_query(name: str) -> str:
    """The SELECT of the view's last definition across the migrations, up to its first FROM."""
    found = list(re.finditer(
        r"(?:CREATE (?:OR REPLACE )?(?:MATERIALIZED )?VIEW (?:IF NOT EXISTS )?\{db\}\.%s\b[^;]*?\bAS"
        r"|ALTER TABLE \{db\}\.%s MODIFY QUERY)\s+SELECT\b" % (re.escape(name), re.escape(name)), SQL))
    assert found, f"no migration creates the view {name}"
    rest = SQL[found[-1].end():]
    return rest[:re.search(r"\bFROM\b", rest).start()]


def view_columns(name: str) -> list[str]:
    """The output names of a view: each expression's alias, or the column it names."""
    names = []
    for expr in split_top_level(view_query(name)):
        alias = re.search(r"\bAS\s+(\w+)$", expr)
        names.append(alias.group(1) if alias else expr)
    return names


def strings(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


def ints(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def differences(expected: dict, found: dict) -> str:
    keys = sorted(set(expected) | set(found), key=str)
    return ", ".join(f"{k}: Python {expected.get(k)!r}, SQL {found.get(k)!r}"
                     for k in keys if expected.get(k) != found.get(k))


# ---------------------------------------------------------------------------------------------
# The Python definitions agree with each other


def test_every_status_list_is_the_models_statuses():
    assert set(canonical.STATUSES) == set(STATUSES), "sendtrack/providers/canonical.py STATUSES"
    assert sorted(reports.FUNNEL_STATUSES) == sorted(STATUSES), "sinks/reports.py FUNNEL_STATUSES"
    assert set(reports.VI_LABELS) == set(STATUSES) | {""}, "sinks/reports.py VI_LABELS"
    assert set().union(*ACTIONS.values()) == set(STATUSES), "schemas/models.py ACTIONS reach other statuses"


def test_the_status_rules_name_only_known_statuses():
    named = {"CURRENT_RANK": set(core.CURRENT_RANK), "IMPLIES": set(core.IMPLIES).union(*core.IMPLIES.values()),
             "ENGAGEMENT": set(core.ENGAGEMENT), "FAILURE": set(core.FAILURE)}
    unknown = {name: sorted(statuses - set(STATUSES)) for name, statuses in named.items() if statuses - set(STATUSES)}
    assert not unknown, f"sendtrack/status.py names statuses schemas/models.py does not: {unknown}"


def test_the_writers_columns_are_fields_of_the_records():
    fields = {model: [f.name for f in dataclasses.fields(model)] for model in (StatusChange, DeadLetter)}
    for columns, model in ((writer.STATUS_COLUMNS, StatusChange), (writer.ENGAGEMENT_COLUMNS, StatusChange),
                           (writer.DEAD_LETTER_COLUMNS, DeadLetter)):
        extra = set(columns) - set(fields[model])
        assert not extra, f"writer columns that are no fields of {model.__name__}: {sorted(extra)}"
    assert list(writer.DEAD_LETTER_COLUMNS) == fields[DeadLetter]
    # Every field of a status change lands in a table, except `kind` (which table it goes to).
    assert set(fields[StatusChange]) - set(writer.STATUS_COLUMNS) - set(writer.ENGAGEMENT_COLUMNS) == {"kind"}


def test_the_writer_checks_each_column_with_its_fields_type():
    """The writer's JSON types are read from the models (schemas.validate.field_specs)."""
    assert dict(writer.STATUS_TYPES)["occurred_at"] == (int,)
    assert dict(writer.STATUS_TYPES)["inferred"] == (bool,)
    assert dict(writer.ENGAGEMENT_TYPES)["is_machine"] == (bool,)
    assert dict(writer.DEAD_LETTER_TYPES)["key"] == (str, type(None))
    assert dict(writer.DEAD_LETTER_TYPES)["partition"] == (int,)
    assert [c for c, _ in writer.STATUS_TYPES] == list(writer.STATUS_COLUMNS)


# ---------------------------------------------------------------------------------------------
# The migrations agree with the Python definitions


def test_the_sql_rank_is_current_rank():
    """messages_mv ranks each status as sendtrack.status.CURRENT_RANK does."""
    match = re.search(r"transform\(status,\s*(\[[^\]]*\]),\s*(\[[^\]]*\]),\s*0\)", view_query("messages_mv"))
    assert match, "messages_mv no longer ranks with transform(status, [statuses], [ranks], 0)"
    names, ranks = strings(match.group(1)), ints(match.group(2))
    assert len(names) == len(ranks), "messages_mv: the rank arrays differ in length"
    sql_rank = dict(zip(names, ranks))
    assert sql_rank == core.CURRENT_RANK, f"messages_mv's rank drifted: {differences(core.CURRENT_RANK, sql_rank)}"


def test_the_messages_view_names_each_rank_as_current_rank_does():
    """The messages view turns the highest rank back into a status: one status per rank, and for
    the rank several statuses share, the one each action can reach."""
    query = view_query("messages")
    match = re.search(r"transform\(max\(current_rank\),\s*(\[[^\]]*\]),\s*(\[[^\]]*\]),\s*"
                      r"if\(max\(current_rank\) = (\d+), if\(action = '(\w+)', '(\w+)', '(\w+)'\), ''\)\)", query)
    assert match, "the messages view no longer names the rank with transform(max(current_rank), ...)"
    named = dict(zip(ints(match.group(1)), strings(match.group(2))))
    shared_rank, action, for_action, otherwise = int(match.group(3)), match.group(4), match.group(5), match.group(6)
    by_rank: dict[int, set[str]] = defaultdict(set)
    for name, rank in core.CURRENT_RANK.items():
        by_rank[rank].add(name)
    expected = {rank: next(iter(names)) for rank, names in by_rank.items() if len(names) == 1}
    assert named == expected, f"the messages view's rank names drifted: {differences(expected, named)}"
    shared = {rank: names for rank, names in by_rank.items() if len(names) > 1}
    assert set(shared) == {shared_rank}, f"ranks shared by several statuses: {shared}; the view handles {shared_rank}"
    assert {for_action, otherwise} == shared[shared_rank]
    for name, reached in ACTIONS.items():
        at_rank = reached & shared[shared_rank]
        assert at_rank <= {for_action if name == action else otherwise}, (
            f"action {name} reaches {sorted(at_rank)} at rank {shared_rank}; the messages view would call it "
            f"{for_action if name == action else otherwise}")


@pytest.mark.parametrize("relation", ["messages_by_workspace", "messages_by_workspace_mv", "messages"])
def test_every_status_has_its_milestone_column(relation):
    names = table_columns(relation) if relation == "messages_by_workspace" else view_columns(relation)
    milestones = {n[:-3] for n in names if n.endswith("_at")} - {"requested", "updated"}
    assert milestones == set(STATUSES), (
        f"{relation}: missing {sorted(set(STATUSES) - milestones)}, unknown {sorted(milestones - set(STATUSES))}")
    if relation.endswith("_mv"):
        query = view_query(relation)
        for status in STATUSES:
            assert f"if(status = '{status}', occurred_at, NULL) AS {status}_at" in query, f"{relation}: {status}_at"


TARGETS = {target.ingest: target for target in (writer.STATUS, writer.ENGAGEMENT, writer.DEAD)}


@pytest.mark.parametrize("ingest", TARGETS)
def test_the_ingest_table_has_the_writers_columns(ingest):
    columns = list(table_columns(ingest))
    expected = list(TARGETS[ingest].columns)
    assert columns == expected, (f"{ingest}: missing {sorted(set(expected) - set(columns))}, "
                                 f"not written {sorted(set(columns) - set(expected))}, or in another order")


SQL_JSON_TYPES = {"String": (str,), "Nullable(String)": (str, type(None)), "Bool": (bool,)}


@pytest.mark.parametrize("ingest", TARGETS)
def test_the_ingest_tables_types_take_the_writers_json_types(ingest):
    checked = {writer.STATUS: writer.STATUS_TYPES, writer.ENGAGEMENT: writer.ENGAGEMENT_TYPES,
               writer.DEAD: writer.DEAD_LETTER_TYPES}[TARGETS[ingest]]
    columns = table_columns(ingest)
    for column, allowed in checked:
        sql = columns[column]
        json = (int,) if re.fullmatch(r"U?Int\d+", sql) else SQL_JSON_TYPES.get(sql)
        assert json == allowed, f"{ingest}.{column} is {sql}; the writer checks {allowed}"


@pytest.mark.parametrize("ingest", TARGETS)
def test_the_ingest_view_carries_every_column_to_the_raw_table(ingest):
    target = TARGETS[ingest]
    assert view_columns(f"{ingest}_mv") == list(target.columns + target.derived), f"{ingest}_mv"
    raw = [c for c in table_columns(target.raw) if not c.startswith("_") or c in writer.PROVENANCE]
    assert raw == list(target.columns + target.derived), f"{target.raw}: {raw}"


@pytest.mark.parametrize("view, model, columns", [
    ("status_changes", StatusChange, None),
    ("engagement_events", StatusChange, writer.ENGAGEMENT_COLUMNS),
    ("dead_letters", DeadLetter, writer.DEAD_LETTER_COLUMNS),
])
def test_the_views_project_the_records_fields(view, model, columns):
    projected = view_columns(view)
    fields = {f.name for f in dataclasses.fields(model)} | set(writer.RECIPIENT_DIMENSIONS)
    extra = set(projected) - fields
    assert not extra, f"the {view} view shows columns {model.__name__} lacks: {sorted(extra)}"
    if columns is not None:
        assert projected == list(columns), f"the {view} view"


def test_the_parser_reads_what_it_is_meant_to():
    """The helpers are not vacuous: a known table, view and rank are read as written."""
    assert list(table_columns("dead_letters_ingest"))[:3] == ["source_topic", "partition", "offset"]
    assert table_columns("status_changes_raw")["_version"] == "UInt64"
    assert view_columns("funnel_daily")[-1] == "messages"  # 0006's CREATE OR REPLACE wins over 0002
    assert "funnel_daily_by_workspace" in SQL[SQL.rindex("VIEW {db}.funnel_daily AS"):][:400]  # 0015 wins


def test_current_status_daily_names_the_rank_as_the_messages_view_does():
    """current_status_daily (migrations 0008, 0015) reads messages_by_workspace FINAL: its rank naming is the
    messages view's, on the folded current_rank."""
    naming = re.compile(r"transform\((?:max\()?current_rank\)?,.*?''\)\)", re.S)
    in_view = naming.search(view_query("messages"))
    in_daily = naming.search(view_query("current_status_daily"))
    assert in_view and in_daily, "a view no longer names the rank with transform(current_rank, ...)"
    assert " ".join(in_daily.group(0).split()) == " ".join(in_view.group(0).replace("max(current_rank)",
                                                                                   "current_rank").split())

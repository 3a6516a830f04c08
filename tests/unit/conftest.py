"""Fixtures for unit tests that need ClickHouse: the embedded engine (one per process) and a fresh,
migrated database on it per test."""

from __future__ import annotations

import uuid

import pytest

from sendtrack.settings import Settings
from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate


@pytest.fixture(scope="module")
def engine_path(tmp_path_factory):
    """chDB runs one engine per process: use the one an earlier test module opened (it stays open),
    else open one here and close it afterwards, so that a later module can open its own."""
    already = next(iter(ClickHouse._embedded), None)
    if already is not None:
        yield already
        return
    path = str(tmp_path_factory.mktemp("chdb"))
    yield path
    client = ClickHouse._embedded.pop(path, None)
    if client is not None:
        client.close()


@pytest.fixture
def ch(engine_path, request):
    """A migrated database of its own on the embedded engine, dropped after the test."""
    prefix = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:12]
    handle = ClickHouse.connect(Settings(clickhouse_url=f"chdb://{engine_path}"),
                                database=f"{prefix}_{uuid.uuid4().hex[:10]}")
    migrate(handle, log=lambda *_: None)
    yield handle
    handle.command(f"DROP DATABASE IF EXISTS `{handle.database}`")

"""The migration files and the server version they need (no ClickHouse: the runner is tested against
the embedded engine in tests/integration/test_views_idempotent.py)."""

from __future__ import annotations

import pytest

from sinks.migrate import MIN_SERVER_VERSION, available, check_server_version


@pytest.mark.parametrize("version", ["24.4.1.2048", "24.10.1", "26.8.1.1", "26.9.2.1"])
def test_a_recent_enough_server_is_accepted(version):
    check_server_version(version)


@pytest.mark.parametrize("version", ["23.8.16.40", "24.3.5.46"])
def test_an_older_server_is_refused_with_the_version_it_needs(version):
    with pytest.raises(RuntimeError, match=rf"ClickHouse {version} is too old: .* need 24\.4 or later"):
        check_server_version(version)


def test_an_unreadable_version_is_an_error():
    with pytest.raises(ValueError, match="cannot read"):
        check_server_version("unknown")


def test_the_oldest_version_is_the_one_attach_partition_all_needs():
    statements = next(m for m in available() if m.version == 6).statements("db")
    assert any("ATTACH PARTITION ALL FROM" in s for s in statements)
    assert MIN_SERVER_VERSION == (24, 4)


def test_the_old_funnel_view_is_dropped_before_its_parts_are_attached():
    # Dropping the view waits for the inserts still writing through it; attaching after that takes
    # every part it wrote. The other order loses the parts of an insert in flight.
    statements = next(m for m in available() if m.version == 6).statements("db")
    new_view = next(i for i, s in enumerate(statements) if s.startswith("CREATE MATERIALIZED VIEW"))
    drop = next(i for i, s in enumerate(statements) if s.startswith("DROP VIEW") and "funnel_daily_mv" in s)
    attach = next(i for i, s in enumerate(statements) if "ATTACH PARTITION ALL FROM" in s)
    assert new_view < drop < attach

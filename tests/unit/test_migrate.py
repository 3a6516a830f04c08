"""The migration files and the server version they need, and `sendtrack migrate` on the embedded
engine (the runner's idempotence is tested in tests/integration/test_views_idempotent.py)."""

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


def test_sendtrack_migrate_prepares_a_new_database_and_a_second_run_changes_nothing(tmp_path):
    """`sendtrack migrate` (a real process on the embedded engine): the migrations, the retention
    TTLs, the expected receipt hours and the lookup tables, as the worker's sink prepares them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from sendtrack.settings import Settings
    from sinks.clickhouse import ClickHouse
    from sinks.migrate import applied

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SENDTRACK_DATA_DIR": str(tmp_path), "SENDTRACK_RETENTION_DAYS": "900",
           "SENDTRACK_RECEIPT_EXPECTED_HOURS": "sms:12"}
    env.pop("SENDTRACK_CLICKHOUSE_URL", None)
    run = lambda: subprocess.run([sys.executable, "-m", "sendtrack.cli", "migrate"], cwd=root, env=env,  # noqa: E731
                                 capture_output=True, text=True, timeout=180)
    first = run()
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"{len(available())} migration(s) applied" in first.stdout
    second = run()
    assert second.returncode == 0 and "0 migration(s) applied" in second.stdout, second.stderr[-2000:]

    ch = ClickHouse.connect(Settings(data_dir=tmp_path))
    assert applied(ch) == {m.version for m in available()}
    create = ch.query(f"SHOW CREATE TABLE {ch.database}.status_changes_raw")[1][0][0]
    assert "toIntervalDay(900)" in create.replace(" ", "") or "INTERVAL 900 DAY" in create, create
    hours = dict(ch.query(f"SELECT action, hours FROM {ch.database}.receipt_expectations FINAL")[1])
    assert hours["sms"] == 12
    assert ch.query(f"SELECT count() FROM {ch.database}.mailbox_domains")[1][0][0] > 0

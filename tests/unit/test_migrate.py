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
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

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

    # Read back in a process of its own: chDB runs one engine per process, and this test process
    # may already have one open at another path.
    read = subprocess.run([sys.executable, "-c", READ_BACK], cwd=root, env=env, capture_output=True, text=True,
                          timeout=180)
    assert read.returncode == 0, read.stderr[-2000:]
    got = json.loads(read.stdout)
    assert set(got["applied"]) == {m.version for m in available()}
    create = got["create"]
    assert "toIntervalDay(900)" in create.replace(" ", "") or "INTERVAL 900 DAY" in create, create
    assert got["hours"]["sms"] == 12
    assert got["domains"] > 0


READ_BACK = """
import json
from sendtrack.settings import get_settings
from sinks.clickhouse import ClickHouse
from sinks.migrate import applied
ch = ClickHouse.connect(get_settings())
db = ch.database
print(json.dumps({
    "applied": sorted(applied(ch)),
    "create": ch.query(f"SHOW CREATE TABLE {db}.status_changes_raw")[1][0][0],
    "hours": {a: h for a, h in ch.query(f"SELECT action, hours FROM {db}.receipt_expectations FINAL")[1]},
    "domains": ch.query(f"SELECT count() FROM {db}.mailbox_domains")[1][0][0],
}))
"""

"""Applies the numbered .sql migrations in order and records each in a ledger table."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sinks.clickhouse import ClickHouse

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def statements(self, database: str) -> list[str]:
        text = self.path.read_text().replace("{db}", f"`{database}`")
        body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
        return [s.strip() for s in body.split(";") if s.strip()]


def available() -> list[Migration]:
    """Every migration file, in version order; a misnamed file is an error, not skipped."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {MIGRATIONS_DIR}")
    return found


# The migration that stores each message's mailbox provider and carrier (and classifies those written
# before it from the lookup tables, which `prepare` fills first).
RECIPIENT_CLASSES_MIGRATION = 17

# The oldest ClickHouse the migrations run on: 0006 uses ATTACH PARTITION ALL FROM (ClickHouse 24.4).
MIN_SERVER_VERSION = (24, 4)


def check_server_version(version: str) -> None:
    """Refuse, with the reason, a server older than the migrations need (`version` as version() gives it)."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        raise ValueError(f"cannot read the ClickHouse server's version {version!r}") from None
    if found < MIN_SERVER_VERSION:
        need = ".".join(map(str, MIN_SERVER_VERSION))
        raise RuntimeError(f"ClickHouse {version} is too old: sendtrack's migrations need {need} or later "
                           "(migration 0006 uses ATTACH PARTITION ALL FROM)")


def applied(ch: ClickHouse) -> set[int]:
    _, rows = ch.query(f"SELECT version FROM `{ch.database}`.schema_migrations")
    return {r[0] for r in rows}


def migrate(ch: ClickHouse, log=print, up_to: Optional[int] = None) -> list[Migration]:
    """Apply pending migrations to ch.database, all or those up to version `up_to`; returns what was
    applied now."""
    ch.command(f"CREATE DATABASE IF NOT EXISTS `{ch.database}`")
    ch.command(
        f"CREATE TABLE IF NOT EXISTS `{ch.database}`.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = applied(ch)
    if any(m.version not in done for m in available()):
        check_server_version(ch.query("SELECT version()")[1][0][0])
    ran = []
    for migration in available():
        if migration.version in done or (up_to is not None and migration.version > up_to):
            continue
        log(f"migrate: applying {migration.path.name} to {ch.database} ({ch.where})")
        for statement in migration.statements(ch.database):
            ch.command(statement)
        ch.insert("schema_migrations", [[migration.version], [migration.name]], ["version", "name"])
        ran.append(migration)
    return ran


def prepare(ch: ClickHouse, settings, log=print) -> list[Migration]:
    """Everything a database needs before the sink writes or a reader reads: the migrations, then
    the tables that follow the settings (retention TTLs, expected receipt hours, health thresholds) and the maintained
    lookup tables (mailbox domains, carrier prefixes). Each step writes only what changed. Returns
    the migrations applied now. The worker's sink and `sendtrack migrate` both call it."""
    from sendtrack import recipients
    from sinks import expectations, retention

    # Migration 0017 classifies past messages with the lookup tables: they are written first.
    ran = migrate(ch, log, up_to=RECIPIENT_CLASSES_MIGRATION - 1)
    recipients.apply(ch, log)
    ran += migrate(ch, log)
    retention.apply(ch, settings, log)
    expectations.apply(ch, settings, log)
    expectations.apply_thresholds(ch, settings, log)
    return ran

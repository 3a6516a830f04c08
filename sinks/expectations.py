"""The hours to a provider's receipt per action, from the settings into ClickHouse, where the
`unconfirmed` view (migration 0010) reads them. Written at every start of the sink and on
`sendtrack migrate`, only when they differ from what the table holds."""

from __future__ import annotations

from typing import Callable

from sendtrack.settings import Settings
from sinks.clickhouse import ClickHouse


def current(ch: ClickHouse) -> dict[str, float]:
    _, rows = ch.query(f"SELECT action, argMax(hours, set_at) FROM `{ch.database}`.receipt_expectations GROUP BY action")
    return {action: float(hours) for action, hours in rows}


def apply(ch: ClickHouse, settings: Settings, log: Callable[[str], None] = print) -> dict[str, float]:
    """Write the settings' hours where they differ from the table's; returns what was written."""
    wanted = settings.receipt_hours
    have = current(ch)
    changed = {action: hours for action, hours in wanted.items() if have.get(action) != hours}
    if changed:
        ch.insert("receipt_expectations", [list(changed), list(changed.values())], ["action", "hours"])
        log("unconfirmed: a receipt is expected within " + ", ".join(
            f"{a} {h:g} h" if h else f"{a} (none expected)" for a, h in sorted(changed.items())))
    return changed

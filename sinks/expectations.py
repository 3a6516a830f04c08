"""What the settings expect, from the settings into ClickHouse, where views read it: the hours to a
provider's receipt per action (the `unconfirmed` view, migration 0010) and the deliverability
health thresholds per rate (the `deliverability_health` view, migration 0013). Written at every
start of the sink and on `sendtrack migrate`, only where they differ from what the table holds
(the latest row per key counts)."""

from __future__ import annotations

from typing import Callable

from sendtrack.settings import Settings
from sinks.clickhouse import ClickHouse


def current(ch: ClickHouse) -> dict[str, float]:
    _, rows = ch.query(f"SELECT action, argMax(hours, set_at) FROM `{ch.database}`.receipt_expectations GROUP BY action")
    return {action: float(hours) for action, hours in rows}


def _write_changed(ch: ClickHouse, table: str, columns: list[str], wanted: dict, have: dict) -> dict:
    """Insert a row (key, *values) for each key whose wanted value differs from the table's;
    returns what was written. A value is one column's or a tuple of several."""
    changed = {key: value for key, value in wanted.items() if have.get(key) != value}
    if changed:
        values = [v if isinstance(v, tuple) else (v,) for v in changed.values()]
        ch.insert(table, [list(changed), *map(list, zip(*values))], columns)
    return changed


def apply(ch: ClickHouse, settings: Settings, log: Callable[[str], None] = print) -> dict[str, float]:
    """Write the settings' hours where they differ from the table's; returns what was written."""
    changed = _write_changed(ch, "receipt_expectations", ["action", "hours"], settings.receipt_hours, current(ch))
    if changed:
        log("unconfirmed: a receipt is expected within " + ", ".join(
            f"{a} {h:g} h" if h else f"{a} (none expected)" for a, h in sorted(changed.items())))
    return changed


def current_thresholds(ch: ClickHouse) -> dict[str, tuple[float, float, int]]:
    _, rows = ch.query(f"SELECT metric, argMax(warning, set_at), argMax(critical, set_at), argMax(min_volume, set_at) "
                       f"FROM `{ch.database}`.health_thresholds GROUP BY metric")
    return {metric: (float(w), float(c), int(n)) for metric, w, c, n in rows}


def apply_thresholds(ch: ClickHouse, settings: Settings,
                     log: Callable[[str], None] = print) -> dict[str, tuple[float, float, int]]:
    """Write the settings' health thresholds (fractions) and minimum volume where they differ from
    the table's; returns what was written."""
    wanted = {metric: (w, c, settings.health_min_messages) for metric, (w, c) in settings.health_limits.items()}
    changed = _write_changed(ch, "health_thresholds", ["metric", "warning", "critical", "min_volume"],
                             wanted, current_thresholds(ch))
    if changed:
        log("deliverability health: " + ", ".join(
            f"{m} warning at {w:.2%}, critical at {c:.2%}" for m, (w, c, _) in sorted(changed.items()))
            + f" (rates over at least {settings.health_min_messages} messages)")
    return changed

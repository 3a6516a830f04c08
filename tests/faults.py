"""Faults the tests inject into a real worker, kept out of the product's modules.

`python -m tests.faults worker` runs `sendtrack worker` as it is, plus one page on its web port:
`POST /debug/clickhouse-outage?seconds=N` makes the sink's inserts fail for N seconds (default 10),
as an unreachable ClickHouse makes them fail: the sink retries, holds its offsets, and loses
nothing. `clickhouse_outage(seconds)` does the same in the current process (the sink's unit tests).

The fault sits in front of `sinks.writer.Batch.write`, the one call through which the sink inserts,
so everything from the retry loop outwards is the product's own code.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError

from sinks.writer import Batch

_outage = {"until": 0.0}
_write = Batch.write


def _failing_write(self: Batch, ch: Any) -> Any:
    if time.monotonic() < _outage["until"]:
        raise OperationalError("injected ClickHouse outage")
    return _write(self, ch)


def clickhouse_outage(seconds: float) -> None:
    """Make every insert fail as if ClickHouse were unreachable, for `seconds`."""
    Batch.write = _failing_write  # type: ignore[method-assign]
    _outage["until"] = time.monotonic() + seconds


def main() -> int:
    from faust.web import View

    from agents.app import app
    from sendtrack import cli

    @app.page("/debug/clickhouse-outage")
    class ClickHouseOutage(View):
        async def post(self, request: Any) -> Any:
            seconds = float(request.query.get("seconds", "10"))
            clickhouse_outage(seconds)
            return self.json({"outage_seconds": seconds})

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

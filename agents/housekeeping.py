"""Background upkeep of the worker process: event-loop lag, and memory the allocator kept."""

from __future__ import annotations

import asyncio
import time

from agents.app import app
from agents.sink import sink
from sendtrack import memory
from sendtrack.metrics import metrics

TRIM_INTERVAL_SECONDS = 2.0


@app.task
async def loop_lag() -> None:
    """How late the event loop wakes a 100 ms sleep: time when nothing else could run."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(0.1)
        metrics.observe("event_loop_lag_seconds", max(loop.time() - started - 0.1, 0.0))


@app.timer(TRIM_INTERVAL_SECONDS)
async def trim_memory() -> None:
    """Give the kernel back the pages glibc holds free between allocations (it keeps them
    otherwise: half of the worker's heap was free). Timed, as it holds the
    allocator's lock while it runs."""
    started = time.perf_counter()
    memory.trim()
    metrics.observe("malloc_trim_seconds", time.perf_counter() - started)


@app.timer(TRIM_INTERVAL_SECONDS)
async def purge_clickhouse_memory() -> None:
    """The same for the embedded ClickHouse's own allocator (jemalloc, inside chDB), which glibc's
    trim does not reach: it keeps freed pages for 5 s (57 of its 114 MB resident in a worker with
    1 M messages). It has not lowered the 5 M run's peak (docs/performance.md)."""
    ch = sink.ch
    if ch is None or not ch.embedded:
        return
    started = time.perf_counter()
    try:
        await asyncio.to_thread(ch.purge_memory)
    except Exception:  # an upkeep step; the sink reports ClickHouse's state
        return
    metrics.observe("clickhouse_purge_seconds", time.perf_counter() - started)

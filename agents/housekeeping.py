"""Background upkeep of the worker process: event-loop lag, Python's full collections, and
the memory the allocator kept."""

from __future__ import annotations

import asyncio
import time

from agents.app import app
from sendtrack import memory
from sendtrack.metrics import metrics

TRIM_INTERVAL_SECONDS = 2.0

memory.time_full_collections()


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

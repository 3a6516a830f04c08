"""Background upkeep of the worker process: event-loop lag, Python's full collections, the memory
the allocator kept, and its background threads' priority."""

from __future__ import annotations

import asyncio
import logging
import time

from agents.app import app, settings
from sendtrack import memory
from sendtrack.metrics import metrics
from sendtrack.threads import BackgroundPriority

log = logging.getLogger(__name__)

TRIM_INTERVAL_SECONDS = 2.0
YOUNG_COLLECTION_SECONDS = 30.0
FREEZE_AFTER_SECONDS = 10.0
PRIORITY_INTERVAL_SECONDS = 5.0

memory.time_collections()


@app.task
async def loop_lag() -> None:
    """How late the event loop wakes a 100 ms sleep: time when nothing else could run."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(0.1)
        metrics.observe("event_loop_lag_seconds", max(loop.time() - started - 0.1, 0.0))


@app.task
async def freeze_long_lived() -> None:
    """Once the worker has started (its agents, the sink and the embedded engine are loaded), leave
    what lives for good out of every later full collection."""
    await asyncio.sleep(FREEZE_AFTER_SECONDS)
    started = time.perf_counter()
    frozen = memory.freeze_long_lived()
    log.info("froze %d long-lived objects out of the garbage collector's full collections (%.3f s)",
             frozen, time.perf_counter() - started)


async def upkeep_memory() -> None:
    """Give the kernel back the pages glibc holds free between allocations (it keeps them
    otherwise: half of the worker's heap was free), and read the allocator's figures for /metrics.
    On a thread of its own: each call walks glibc's arenas (a trim took 31 ms on average in a 5 M
    backlog; together they were 4-6% of the event loop's samples in a 5 M run's freshness phase);
    the calls release the GIL. Timed: a trim holds the arena it walks, and the loop's allocations
    from that arena wait for it."""
    took = await asyncio.to_thread(memory.upkeep)
    metrics.observe("malloc_trim_seconds", took)


@app.timer(TRIM_INTERVAL_SECONDS)
async def trim_memory() -> None:
    await upkeep_memory()


@app.timer(YOUNG_COLLECTION_SECONDS)
async def collect_young() -> None:
    """Collect Python's youngest generation at least every 30 s. Under load it is collected far
    more often (every 50,000 new objects, SENDTRACK_GC_YOUNG_THRESHOLD); a quiet worker may take
    hours to allocate that many, and garbage in reference cycles (an exception and its traceback's
    frames, say) would keep what it references until then."""
    memory.collect_young()


_background = BackgroundPriority(settings.background_nice)


@app.timer(PRIORITY_INTERVAL_SECONDS)
async def lower_background_threads() -> None:
    """Keep RocksDB's compactions and ClickHouse's merges nicer than the event loop
    (SENDTRACK_BACKGROUND_NICE; sendtrack/threads.py): their pools start threads as they need them.
    Timed: it reads each of the process's threads' stat on the loop."""
    started = time.perf_counter()
    changed = _background.apply()
    metrics.observe("thread_priority_seconds", time.perf_counter() - started)
    if changed:
        log.debug("set the priority of %d threads", changed)

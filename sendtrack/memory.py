"""The C allocator's view of the worker's memory (glibc), and giving its free pages back."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from typing import Optional

from sendtrack.metrics import metrics


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def _libc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to report or trim
        return None


_LIBC = _libc()


# mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 512 * 1024


def tune_allocator() -> None:
    """Keep glibc from holding on to memory the worker freed. Call before any thread starts.

    - Two arenas: glibc gives each thread that allocates its own, up to 8 per core, and each keeps
      what its thread freed.
    - A fixed mmap threshold: by default glibc raises it up to 32 MB each time a large block is
      freed, so the Kafka clients' fetch buffers and the sink's batches soon come from the heap, and
      the heap, fragmented by them, grew to twice what was in use. Blocks of 512 KB and more are now
      mapped and unmapped on their own (unless free space in the heap already fits them).
    """
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, 2)
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def allocator() -> dict[str, int]:
    """Bytes the C allocator holds: in use, free inside its heaps, and in large mmapped blocks."""
    if _LIBC is None:
        return {}
    info = _LIBC.mallinfo2()
    return {"in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd}


_latest: dict[str, int] = {}


def latest_allocator() -> dict[str, int]:
    """`allocator()`'s figures as the last `upkeep` read them (empty before the first). /metrics
    reports these and never reads them itself: mallinfo2 walks every free chunk of every arena, up to
    tens of milliseconds late in a 5 M backlog, which the event loop would wait for."""
    return dict(_latest)


def upkeep() -> float:
    """Give the free pages back (`trim`), then read the allocator's figures for `latest_allocator`;
    returns the seconds the trim took. Both walk glibc's arenas for milliseconds to tens of
    milliseconds: run this off the event loop (ctypes releases the GIL for the calls, so the loop
    runs Python meanwhile; agents/housekeeping.py)."""
    started = time.perf_counter()
    trim()
    took = time.perf_counter() - started
    _latest.update(allocator())  # the same keys each time: a reader never sees them half gone
    return took


def trim() -> None:
    """Return the free pages of every arena to the kernel (glibc keeps them otherwise)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


_collection_started = [0.0]


def _time_collection(phase: str, info: dict) -> None:
    if phase == "start":
        _collection_started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _collection_started[0]
    generation = _GENERATIONS[info["generation"]]
    metrics.inc("gc_collection_seconds_total", took, generation=generation)
    metrics.inc("gc_collections_total", 1, generation=generation)
    if generation == "2":
        metrics.observe("gc_full_collection_seconds", took)


_GENERATIONS = ("0", "1", "2")


def time_collections() -> None:
    """Time every collection of Python's garbage collector, the thread that triggered it waiting
    (the event loop, mostly): seconds and count per generation (`gc_collection_seconds_total`,
    `gc_collections_total`), and the full (generation 2) ones as `gc_full_collection_seconds`, the
    collection whose pause grows with the heap. Idempotent."""
    if _time_collection not in gc.callbacks:
        for generation in _GENERATIONS:  # every series from the start: none appears mid-scrape
            metrics.inc("gc_collection_seconds_total", 0, generation=generation)
            metrics.inc("gc_collections_total", 0, generation=generation)
        gc.callbacks.append(_time_collection)


def tune_collector(young_threshold: int) -> None:
    """Collect the youngest generation after `young_threshold` new container objects (net of those
    freed since the last collection) instead of Python's 700; the older generations' thresholds
    stay. An engine batch keeps tens of thousands of objects alive for its duration (its records,
    states, staged writes) and the sink's batch as many: at 700, every one of them is promoted to
    the oldest generation before it dies, and the oldest generation's full collections, which walk
    everything in it, came 1.6 times a second in a 5 M backlog (docs/performance.md). 0 leaves
    Python's thresholds as they are."""
    if young_threshold > 0:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)


def collect_young() -> int:
    """Collect the youngest generation now (what survives moves on, as in any collection); returns
    how many unreachable objects were found."""
    return gc.collect(0)


def freeze_long_lived() -> int:
    """Collect, then move every object alive now to the collector's permanent generation, which full
    collections skip; returns how many were frozen. Called once the worker has started: what lives
    then (modules, classes, the clients and their buffers) lives as long as the process, yet each full
    collection walked all of it (about 90 ms each, several per second under load)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

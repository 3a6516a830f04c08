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


_recent: dict[str, object] = {"at": float("-inf"), "figures": {}}
ALLOCATOR_MAX_AGE_SECONDS = 2.0


def recent_allocator() -> dict[str, int]:
    """`allocator()`'s figures, read again only when the last reading is older than
    ALLOCATOR_MAX_AGE_SECONDS. mallinfo2 walks every free chunk of every arena: about 10 ms on the
    event loop late in a 5 M backlog, which /metrics polled four times a second (the bench's
    freshness phase) paid each time; Prometheus, every 15 s or so, pays it once a scrape."""
    now = time.monotonic()
    if now - _recent["at"] >= ALLOCATOR_MAX_AGE_SECONDS:
        _recent["figures"], _recent["at"] = allocator(), now
    return dict(_recent["figures"])


def trim() -> None:
    """Return the free pages of every arena to the kernel (glibc keeps them otherwise)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


_collection_started = [0.0]


def _time_full_collection(phase: str, info: dict) -> None:
    if info.get("generation") != 2:
        return
    if phase == "start":
        _collection_started[0] = time.perf_counter()
    else:
        metrics.observe("gc_full_collection_seconds", time.perf_counter() - _collection_started[0])


def time_full_collections() -> None:
    """Time Python's full (generation 2) collections as `gc_full_collection_seconds`: one walks every
    tracked object while the event loop waits, so it is the collection whose pause grows with the
    heap. Idempotent."""
    if _time_full_collection not in gc.callbacks:
        gc.callbacks.append(_time_full_collection)


def freeze_long_lived() -> int:
    """Collect, then move every object alive now to the collector's permanent generation, which full
    collections skip; returns how many were frozen. Called once the worker has started: what lives
    then (modules, classes, the clients and their buffers) lives as long as the process, yet each full
    collection walked all of it (about 90 ms each, several per second under load)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

"""The worker's background threads at a lower CPU priority than its event loop.

The event loop applies every record and feeds the sink; what it cannot run for, every callback
waits for. Beside it in the same process run RocksDB's compactions (threads named `rocksdb:low`)
and embedded ClickHouse's merges (`MergeMutate`): work that can wait a few seconds, and whose cost
grows with the data (a compaction or a merge rewrites a partition). On two cores shared with the
broker, in the freshness phase of the 5 M bench, the loop's thread was runnable 89% of the time but
ran on about half a core, while those threads and the broker's took the rest
(docs/performance.md, "Twenty-fifth session").

Linux keeps a nice value per thread (`setpriority(PRIO_PROCESS, thread id)`), and raising one needs
no privilege. `BackgroundPriority.apply` sets the threads whose names start with one of
`BACKGROUND_THREAD_NAMES` that much nicer than the process, and returns any other thread it had
lowered to the process's own value: ClickHouse's pools rename their threads for each job, so a
thread is judged by its name each time. Under contention the scheduler then gives them about a
tenth of the loop's share (nice 10); when a core is idle they run at full speed, so nothing is
postponed for good: compactions and merges keep up as before.
"""

from __future__ import annotations

import os
from typing import Iterable

BACKGROUND_THREAD_NAMES = ("rocksdb:low", "MergeMutate")
TASKS = "/proc/self/task"


def _name(tid: str) -> str | None:
    try:
        with open(f"{TASKS}/{tid}/comm") as f:
            return f.read().strip()
    except OSError:  # the thread ended
        return None


class BackgroundPriority:
    """Keeps the background threads `nice` steps below the process (0: leaves every thread as it is)."""

    def __init__(self, nice: int, names: Iterable[str] = BACKGROUND_THREAD_NAMES) -> None:
        self.nice = nice
        self.names = tuple(names)
        self.lowered: set[int] = set()
        self.failed = False

    def apply(self) -> int:
        """Lower the background threads started or renamed since the last call, restore the ones
        renamed to something else; the number of threads lowered now. Where threads have no nice
        value of their own or it cannot be read (not Linux), nothing is done, then or later."""
        if self.nice <= 0 or self.failed:
            return 0
        try:
            tids = os.listdir(TASKS)
            base = os.getpriority(os.PRIO_PROCESS, os.getpid())
        except OSError:
            self.failed = True
            return 0
        lowered = 0
        alive = set()
        for tid in tids:
            name = _name(tid)
            if name is None:
                continue
            thread = int(tid)
            alive.add(thread)
            background = name.startswith(self.names)
            if background == (thread in self.lowered):
                continue
            try:
                os.setpriority(os.PRIO_PROCESS, thread, min(base + self.nice, 19) if background else base)
            except OSError:  # it ended meanwhile; or (restoring) lowering a nice value needs privilege
                continue
            if background:
                self.lowered.add(thread)
                lowered += 1
            else:
                self.lowered.discard(thread)
        self.lowered &= alive
        return lowered


def nice_of(tid: int) -> int:
    """A thread's nice value (field 19 of its stat), for tests and diagnostics."""
    with open(f"{TASKS}/{tid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])

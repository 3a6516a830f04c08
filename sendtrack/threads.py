"""The worker's background threads at a lower CPU priority than its event loop."""

from __future__ import annotations

import errno
import logging
import os
import resource
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)

# RocksDB's compactions; embedded ClickHouse's merges.
BACKGROUND_THREAD_NAMES = ("rocksdb:low", "MergeMutate")
# Threads that never take other work: what is lowered where a lowered thread cannot be restored.
DEDICATED_THREAD_NAMES = ("rocksdb:low",)
TASKS = "/proc/self/task"


def thread_stat(tid: int) -> tuple[str, int] | None:
    """A thread's name and nice value (its stat's comm and 19th field); None once it has ended."""
    try:
        with open(f"{TASKS}/{tid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    head, tail = stat.rsplit(")", 1)
    return head.split("(", 1)[1], int(tail.split()[16])


CAP_SYS_NICE = 23


def has_cap_sys_nice() -> bool:
    """Whether this process has CAP_SYS_NICE (root has it, unless a container dropped it)."""
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        caps = 0
    return bool(caps >> CAP_SYS_NICE & 1)


def can_restore(base: int) -> bool:
    """Whether this process may give a lowered thread back its nice value `base`: with CAP_SYS_NICE,
    or within RLIMIT_NICE (a soft limit of n allows nice values down to 20 - n)."""
    if has_cap_sys_nice():
        return True
    limit = resource.getrlimit(resource.RLIMIT_NICE)[0]
    return limit == resource.RLIM_INFINITY or 20 - limit <= base


def evaluation_nice(background_nice: int) -> int | None:
    """The nice value for the embedded ClickHouse's threads while they evaluate the alerts (its
    os_thread_priority): one step nicer than the background threads, so that an evaluation takes
    the CPU the event loop, RocksDB's compactions and ClickHouse's merges leave; None to leave them.

    ClickHouse applies it only with CAP_SYS_NICE and, when the statement ends, puts the thread back
    at 0 (not at the value it had): so only for a worker at nice 0. BackgroundPriority gives a
    thread at the background threads' value the process's value back; one step more keeps the
    evaluation's apart, which leaves no value for background threads at 19."""
    if not 0 < background_nice < 19 or not has_cap_sys_nice():
        return None
    if os.getpriority(os.PRIO_PROCESS, os.getpid()) != 0:
        return None
    return background_nice + 1


_evaluations = 0  # alerts' evaluations under way (agents/alerts.py): their threads are at evaluation_nice


@contextmanager
def evaluating() -> Iterator[None]:
    """An alerts' evaluation under way: BackgroundPriority leaves threads at evaluation_nice alone
    meanwhile (they may be running it), and gives them the process's value back once none runs (a
    thread ClickHouse's pool started from an evaluation's thread begins at that value, and ClickHouse,
    which did not set it, never puts it back)."""
    global _evaluations
    _evaluations += 1
    try:
        yield
    finally:
        _evaluations -= 1


class BackgroundPriority:
    """Keeps the background threads `nice` steps nicer than the process; 0 leaves every thread as it is.

    The event loop applies every record and feeds the sink: what it cannot run for, every callback
    waits for. RocksDB's compactions and ClickHouse's merges can wait a few seconds, and their cost
    grows with the data. Linux keeps a nice value per thread; under contention a thread at nice 10
    gets about a tenth of the share of one at 0, and on an idle core it runs at full speed.

    Each call judges every thread by its name and its nice value now: ClickHouse's pools rename their
    threads per job, and a thread starts at the nice value of the thread that created it, so any
    other thread found at the lowered value gets the process's value back, as does one at the alerts'
    evaluation's value while no evaluation runs (evaluating); one set otherwise is left. That
    (lowering a nice value) needs CAP_SYS_NICE or RLIMIT_NICE; without either (judged at the first
    call, or found when a restore is refused) only DEDICATED_THREAD_NAMES are lowered, whose threads
    never run other work. docs/performance.md, "Twenty-fifth session"."""

    def __init__(self, nice: int, names: tuple[str, ...] = BACKGROUND_THREAD_NAMES) -> None:
        if not isinstance(names, tuple):
            raise TypeError("names is a tuple of thread name prefixes")
        self.nice = nice
        self.names = names
        self.restricted: bool | None = None  # judged at the first call
        self.unsupported = False

    def apply(self) -> int:
        """Set each thread's nice value to what its name calls for; the number of threads changed.
        With no names, every thread at the lowered value gets the process's value back."""
        if self.nice <= 0 or self.unsupported:
            return 0
        try:
            tids = os.listdir(TASKS)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # no per-thread view (not Linux): nothing to do, ever
                self.unsupported = True
            else:
                log.warning("could not list the worker's threads: %r", exc)
            return 0
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())
        names = self.names
        if self.restricted is None and not can_restore(base):
            self.restrict()
        self.restricted = bool(self.restricted)
        if self.restricted:
            names = tuple(n for n in names if n in DEDICATED_THREAD_NAMES)
        lowered = min(base + self.nice, 19)
        left = None if _evaluations else evaluation_nice(self.nice)  # a value an evaluation left
        changed = 0
        for tid in map(int, tids):
            stat = thread_stat(tid)
            if stat is None:
                continue
            name, nice = stat
            if name.startswith(names):
                target = lowered
            elif nice == lowered or nice == left:  # lowered here, started by a lowered thread, left by an evaluation
                target = base
            else:  # as the process, or set so by someone else: left alone
                continue
            if nice == target:
                continue
            try:
                os.setpriority(os.PRIO_PROCESS, tid, target)
                changed += 1
            except PermissionError:  # restoring refused after all: lower only what needs no restoring
                if not self.restricted:
                    self.restrict()
            except OSError:  # it ended meanwhile
                continue
        return changed

    def restrict(self) -> None:
        self.restricted = True
        kept = [n for n in self.names if n in DEDICATED_THREAD_NAMES]
        log.info("background threads: this process may not give a lowered thread its priority back "
                 "(no CAP_SYS_NICE, RLIMIT_NICE too low), so only %s are lowered",
                 ", ".join(kept) if kept else "none")

"""Background threads nicer than the event loop (sendtrack/threads.py): on real RocksDB threads, and
on a thread renamed the way ClickHouse's pools rename theirs."""

from __future__ import annotations

import ctypes
import os
import threading

import pytest
import rocksdict

from sendtrack.threads import BackgroundPriority, nice_of

PR_SET_NAME = 15
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def names() -> dict[int, str]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[int(tid)] = open(f"/proc/self/task/{tid}/comm").read().strip()
        except OSError:
            pass
    return out


class Named(threading.Thread):
    """A thread that names itself (prctl, as RocksDB and ClickHouse do), then renames itself on demand."""

    def __init__(self, name: str) -> None:
        super().__init__(daemon=True)
        self.os_name = name
        self.tid = 0
        self.ready, self.rename, self.renamed, self.stop = (threading.Event() for _ in range(4))

    def run(self) -> None:
        self.tid = threading.get_native_id()
        libc.prctl(PR_SET_NAME, self.os_name.encode(), 0, 0, 0)
        self.ready.set()
        self.rename.wait()
        libc.prctl(PR_SET_NAME, b"QueryPipelineEx", 0, 0, 0)
        self.renamed.set()
        self.stop.wait()


def test_rocksdb_compaction_threads_are_lowered_and_the_loop_is_not(tmp_path):
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    db = rocksdict.Rdict(str(tmp_path / "db"))
    try:
        for i in range(2000):
            db[f"k{i}"] = "v" * 100
        db.flush()
        db.compact_range(None, None)
        compaction = [tid for tid, name in names().items() if name.startswith("rocksdb:low")]
        assert compaction, names()  # RocksDB started its compaction pool
        priority = BackgroundPriority(10)
        assert priority.apply() >= len(compaction)
        assert {nice_of(tid) for tid in compaction} == {min(base + 10, 19)}
        assert nice_of(threading.get_native_id()) == base  # the calling thread (the event loop) is not
        assert priority.apply() == 0  # already lowered: nothing to do again
    finally:
        db.close()


def test_a_renamed_thread_gets_its_priority_back():
    if os.geteuid() != 0:
        pytest.skip("restoring a lowered nice value needs CAP_SYS_NICE (the worker then leaves it lowered)")
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    merge, other = Named("MergeMutate"), Named("HTTPHandler")
    for thread in (merge, other):
        thread.start()
        thread.ready.wait(5)
    try:
        priority = BackgroundPriority(10)
        priority.apply()
        assert nice_of(merge.tid) == min(base + 10, 19)
        assert nice_of(other.tid) == base
        merge.rename.set()
        merge.renamed.wait(5)
        priority.apply()
        assert nice_of(merge.tid) == base
    finally:
        for thread in (merge, other):
            thread.rename.set()
            thread.stop.set()
            thread.join(5)


def test_zero_leaves_every_thread_as_it_is():
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    merge = Named("MergeMutate")
    merge.start()
    merge.ready.wait(5)
    try:
        assert BackgroundPriority(0).apply() == 0
        assert nice_of(merge.tid) == base
    finally:
        merge.rename.set()
        merge.stop.set()
        merge.join(5)

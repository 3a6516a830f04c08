"""Background threads nicer than the event loop (sendtrack/threads.py): on real RocksDB and ClickHouse
threads, and on threads named, renamed and started the way their pools do it."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import rocksdict

from sendtrack import threads as threads_mod
from sendtrack.threads import BackgroundPriority, thread_stat

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")

PR_SET_NAME = 15
ROOT = threads_mod.can_restore(os.getpriority(os.PRIO_PROCESS, os.getpid()))  # may give values back


def set_name(name: str) -> None:
    ctypes.CDLL("libc.so.6").prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def nice_of(tid: int) -> int:
    return thread_stat(tid)[1]


def base() -> int:
    return os.getpriority(os.PRIO_PROCESS, os.getpid())


def named_tids(prefix: str) -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task") if (thread_stat(int(t)) or ("",))[0].startswith(prefix)]


class Named(threading.Thread):
    """A thread that names itself (prctl, as RocksDB and ClickHouse do); on demand it renames itself,
    or starts a child thread, which begins at its own nice value as any new thread does."""

    def __init__(self, name: str) -> None:
        super().__init__(daemon=True)
        self.os_name, self.tid, self.child = name, 0, None
        self.ready, self.rename, self.spawn, self.done, self.stop = (threading.Event() for _ in range(5))

    def run(self) -> None:
        self.tid = threading.get_native_id()
        set_name(self.os_name)
        self.ready.set()
        while not self.stop.is_set():
            if self.rename.is_set():
                set_name("QueryPipelineEx")
                self.rename.clear()
                self.done.set()
            if self.spawn.is_set():
                self.child = Named("ThreadPool")
                self.child.start()
                self.child.ready.wait(5)
                self.spawn.clear()
                self.done.set()
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        if self.child is not None:
            self.child.finish()
        self.join(5)


@pytest.fixture
def started():
    made: list[Named] = []

    def start(name: str) -> Named:
        thread = Named(name)
        thread.start()
        assert thread.ready.wait(5)
        made.append(thread)
        return thread

    yield start
    for thread in made:
        thread.finish()


@pytest.fixture
def restore_after():
    yield
    if ROOT:  # nothing named, so every thread at the lowered value gets the process's value back
        BackgroundPriority(10, names=()).apply()


def test_rocksdb_compaction_threads_are_lowered_and_the_loop_is_not(tmp_path, restore_after):
    db = rocksdict.Rdict(str(tmp_path / "db"))
    try:
        for i in range(2000):
            db[f"k{i}"] = "v" * 100
        db.flush()
        db.compact_range(None, None)
        compaction = named_tids("rocksdb:low")
        assert compaction  # RocksDB started its compaction pool
        priority = BackgroundPriority(10)
        assert priority.apply() >= len(compaction)
        assert {nice_of(tid) for tid in compaction} == {min(base() + 10, 19)}
        assert nice_of(threading.get_native_id()) == base()  # the calling thread (the event loop) is not
        assert priority.apply() == 0  # already lowered: nothing to do again
    finally:
        db.close()


def test_embedded_clickhouse_names_its_merge_threads_so(ch, restore_after):
    """The name the worker looks for is ClickHouse's: its merge pool's threads exist once the engine
    has MergeTree tables, and they are lowered."""
    assert named_tids("MergeMutate"), sorted({thread_stat(int(t))[0] for t in os.listdir("/proc/self/task")})
    if ROOT:
        BackgroundPriority(10).apply()
        assert {nice_of(tid) for tid in named_tids("MergeMutate")} == {min(base() + 10, 19)}


def test_merge_threads_are_lowered_and_others_left(started, restore_after, monkeypatch):
    monkeypatch.setattr(threads_mod, "can_restore", lambda base: True)
    merge, other = started("MergeMutate"), started("HTTPHandler")
    BackgroundPriority(10).apply()
    assert nice_of(merge.tid) == min(base() + 10, 19)
    assert nice_of(other.tid) == base()


@pytest.mark.skipif(not ROOT, reason="giving a thread its nice value back needs CAP_SYS_NICE or RLIMIT_NICE")
def test_a_renamed_thread_and_one_started_by_a_lowered_thread_get_the_process_value(started, restore_after):
    merge, spawner = started("MergeMutate"), started("MergeMutate")
    priority = BackgroundPriority(10)
    priority.apply()
    spawner.spawn.set()  # a new thread starts at its creator's nice value: the lowered one
    assert spawner.done.wait(5)
    assert nice_of(spawner.child.tid) == min(base() + 10, 19)
    merge.rename.set()
    assert merge.done.wait(5)
    priority.apply()
    assert nice_of(merge.tid) == base()
    assert nice_of(spawner.child.tid) == base()
    assert nice_of(spawner.tid) == min(base() + 10, 19)


def test_where_nothing_can_be_restored_only_dedicated_threads_are_lowered(started, restore_after, monkeypatch):
    monkeypatch.setattr(threads_mod, "can_restore", lambda base: False)
    merge, compaction = started("MergeMutate"), started("rocksdb:low")
    assert BackgroundPriority(10).apply() >= 1
    assert nice_of(merge.tid) == base()
    assert nice_of(compaction.tid) == min(base() + 10, 19)


def test_zero_leaves_every_thread_as_it_is(started):
    merge = started("MergeMutate")
    os.setpriority(os.PRIO_PROCESS, merge.tid, min(base() + 5, 19))  # raising a nice value needs no privilege
    assert BackgroundPriority(0).apply() == 0
    assert nice_of(merge.tid) == min(base() + 5, 19)


CHILD = """
import ctypes, json, os, threading, time
from sendtrack import threads
threads.can_restore = lambda base: True
os.nice({nice})
ready = threading.Event()
def run():
    ctypes.CDLL("libc.so.6").prctl(15, b"MergeMutate", 0, 0, 0)
    ready.set()
    time.sleep(30)
t = threading.Thread(target=run, daemon=True)
t.start()
ready.wait(5)
threads.BackgroundPriority(10).apply()
print(json.dumps([threads.thread_stat(t.native_id)[1], threads.thread_stat(threading.get_native_id())[1]]))
"""


@pytest.mark.parametrize("increment", [3, 15])
def test_steps_are_counted_from_the_process_value(increment):
    """A worker started nice (by `nice`, a unit file) keeps its threads ten steps below it, at most 19."""
    out = subprocess.run([sys.executable, "-c", CHILD.format(nice=increment)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    process = min(base() + increment, 19)
    assert json.loads(out) == [min(process + 10, 19), process]


def test_a_single_string_is_refused():
    with pytest.raises(TypeError):
        BackgroundPriority(10, names="MergeMutate")


def test_a_thread_set_otherwise_is_left_alone(started, restore_after):
    other = started("HTTPHandler")
    os.setpriority(os.PRIO_PROCESS, other.tid, min(base() + 3, 19))
    BackgroundPriority(10).apply()
    assert nice_of(other.tid) == min(base() + 3, 19)


def test_a_refused_restore_restricts_to_dedicated_threads(started, restore_after, monkeypatch):
    """Root without CAP_SYS_NICE (a container's default) passes can_restore's check on paper only:
    the first refusal narrows what is lowered."""
    monkeypatch.setattr(threads_mod, "can_restore", lambda base: True)
    renamed = started("ThreadPool")
    os.setpriority(os.PRIO_PROCESS, renamed.tid, min(base() + 10, 19))  # as if lowered, then renamed
    real = os.setpriority

    def refuse_restores(which, who, value):
        if value < os.getpriority(which, who):
            raise PermissionError(13, "Permission denied")
        real(which, who, value)

    monkeypatch.setattr(threads_mod.os, "setpriority", refuse_restores)
    priority = BackgroundPriority(10)
    priority.apply()
    assert priority.restricted
    merge = started("MergeMutate")
    priority.apply()
    assert nice_of(merge.tid) == base()


def test_the_alerts_evaluation_runs_a_step_nicer_than_the_background_threads(monkeypatch):
    """ClickHouse applies os_thread_priority only with CAP_SYS_NICE and puts the thread back at 0 after
    the statement: a value only for a worker at nice 0, and one the background pass tells apart."""
    monkeypatch.setattr(threads_mod, "has_cap_sys_nice", lambda: True)
    at_zero = base() == 0
    assert threads_mod.evaluation_nice(10) == (11 if at_zero else None)
    assert threads_mod.evaluation_nice(18) == (19 if at_zero else None)
    assert threads_mod.evaluation_nice(19) is None  # no value nicer than the background threads' is left
    assert threads_mod.evaluation_nice(0) is None  # 0 leaves every thread as it is
    monkeypatch.setattr(threads_mod, "has_cap_sys_nice", lambda: False)
    assert threads_mod.evaluation_nice(10) is None  # ClickHouse would not apply it


@pytest.mark.skipif(not ROOT, reason="giving a thread its value back needs CAP_SYS_NICE or RLIMIT_NICE")
def test_a_thread_left_at_the_evaluations_value_gets_the_process_value_once_none_runs(monkeypatch, started,
                                                                                     restore_after):
    """A thread ClickHouse's pool started from an evaluation's thread begins at its value, and
    ClickHouse, which did not set it, never puts it back: the pass does, while no evaluation runs."""
    monkeypatch.setattr(threads_mod, "has_cap_sys_nice", lambda: True)
    if base() != 0:
        assert threads_mod.evaluation_nice(10) is None
        return
    pool = started("ThreadPool")
    os.setpriority(os.PRIO_PROCESS, pool.tid, 11)
    with threads_mod.evaluating():
        BackgroundPriority(10).apply()
        assert nice_of(pool.tid) == 11  # maybe the evaluation's own: left while one runs
    BackgroundPriority(10).apply()
    assert nice_of(pool.tid) == 0


def test_a_nice_worker_leaves_the_evaluation_as_it_is():
    child = ("import os; from sendtrack import threads; threads.has_cap_sys_nice = lambda: True; os.nice(3); "
             "print(threads.evaluation_nice(10))")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "None"

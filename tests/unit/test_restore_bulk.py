"""The bulk cold restore (agents/faust_adapter.restore_bulk) on a real RocksDB: which records of a
fetch it writes, with which persisted offset, and which it leaves to Faust's own recovery path.
Faust's recovery service is stood in by an object with the attributes restore_bulk reads and sets
(tests/unit/test_faust_contract.py checks those against the installed Faust)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import rocksdict
from faust.stores.rocksdb import Store
from faust.types import TP

from agents import store
from agents.faust_adapter import restore_bulk

TOPIC = TP("app-messages-changelog", 3)


def setup(tmp_path, highwater, seen=None):
    db = rocksdict.Rdict(str(tmp_path / "db"), rocksdict.Options(raw_mode=True))
    table = SimpleNamespace(data=SimpleNamespace(offset_key=Store.offset_key, _db_for_partition=lambda _: db))
    recovery = SimpleNamespace(
        active_highwaters={TOPIC: highwater}, active_offsets={TOPIC: seen} if seen is not None else {},
        tp_to_table={TOPIC: table}, _active_events_received_at={}, _last_flush_at=None, _recovery_started_at=1.0)
    return db, recovery


def records(offsets, value=lambda o: f"v{o}".encode()):
    return [SimpleNamespace(offset=o, key=f"k{o % 4}".encode(), value=value(o)) for o in offsets]


def stored(db) -> dict:
    return {k: v for k, v in db.items() if k != Store.offset_key}


def test_everything_before_the_highwater_is_written_with_its_offset(tmp_path):
    db, recovery = setup(tmp_path, highwater=9)
    assert restore_bulk(recovery, TOPIC, records(range(6))) == []
    assert stored(db) == {b"k0": b"v4", b"k1": b"v5", b"k2": b"v2", b"k3": b"v3"}  # the last value per key
    assert db[Store.offset_key] == b"5" and recovery.active_offsets[TOPIC] == 5
    assert TOPIC in recovery._active_events_received_at and recovery._last_flush_at is not None


def test_the_highwater_record_and_later_ones_go_faust_s_way_and_nothing_is_written_twice(tmp_path):
    db, recovery = setup(tmp_path, highwater=9, seen=5)
    left = restore_bulk(recovery, TOPIC, records(range(4, 13)))
    assert [r.offset for r in left] == [9, 10, 11, 12]
    assert stored(db) == {b"k2": b"v6", b"k3": b"v7", b"k0": b"v8"}  # 4 and 5 were already applied
    assert db[Store.offset_key] == b"8" and recovery.active_offsets[TOPIC] == 8


def test_a_tombstone_deletes(tmp_path):
    db, recovery = setup(tmp_path, highwater=9)
    restore_bulk(recovery, TOPIC, records(range(2)))
    restore_bulk(recovery, TOPIC, records([4], value=lambda o: None))  # k0 deleted
    assert stored(db) == {b"k1": b"v1"}


def test_a_partition_faust_has_no_highwater_for_is_left_alone(tmp_path):
    db, recovery = setup(tmp_path, highwater=None)
    recs = records(range(3))
    assert restore_bulk(recovery, TOPIC, recs) is recs
    assert stored(db) == {} and Store.offset_key not in db


def test_a_partition_bulk_loads_until_its_last_record_comes_then_is_flushed(tmp_path):
    db, recovery = setup(tmp_path, highwater=9)
    restore_bulk(recovery, TOPIC, records(range(6)))
    assert store.bulk_loading(db)
    assert db.property_int_value("rocksdb.num-entries-active-mem-table") > 0  # not yet on disk
    left = restore_bulk(recovery, TOPIC, records(range(6, 10)))
    assert [r.offset for r in left] == [9]
    # Before Faust's own path writes the last record (with the write-ahead log), every record
    # written without the log is in a file on disk, and the database has its usual options.
    assert not store.bulk_loading(db)
    assert db.property_int_value("rocksdb.num-entries-active-mem-table") == 0
    assert db.property_int_value("rocksdb.num-immutable-mem-table") == 0


CRASH = """
import os, sys
from types import SimpleNamespace
sys.path.insert(0, {root!r})
import rocksdict
from faust.stores.rocksdb import Store
from faust.types import TP
from agents import store
from agents.faust_adapter import restore_bulk
tp = TP("app-messages-changelog", 3)
db = rocksdict.Rdict({path!r}, rocksdict.Options(raw_mode=True))
table = SimpleNamespace(data=SimpleNamespace(offset_key=Store.offset_key, _db_for_partition=lambda _: db))
recovery = SimpleNamespace(active_highwaters={{tp: 10_000}}, active_offsets={{}}, tp_to_table={{tp: table}},
                           _active_events_received_at={{}}, _last_flush_at=None, _recovery_started_at=1.0)
def fetch(offsets):
    recs = [SimpleNamespace(offset=o, key=b"k%d" % o, value=b"v%d" % o) for o in offsets]
    assert restore_bulk(recovery, tp, recs) == []
fetch(range(0, 100))
fetch(range(100, 200))
db.flush()  # what a full memtable does on its own
fetch(range(200, 300))
os._exit(9)  # killed: no close, nothing else flushed
"""


def test_a_worker_killed_mid_restore_keeps_a_consistent_prefix(tmp_path):
    """Bulk-load writes skip RocksDB's write-ahead log: a crash loses what was not flushed, and
    with it the changelog offset of the same batches, so the next recovery resumes exactly after
    what the disk holds (a real RocksDB, a real process exit)."""
    import subprocess
    import sys
    from pathlib import Path

    path = str(tmp_path / "db")
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", CRASH.format(root=root, path=path)], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    try:
        offset = int(db[Store.offset_key])
        assert offset == 199  # the last flushed batch's; the third fetch was never on disk
        assert stored(db) == {b"k%d" % o: b"v%d" % o for o in range(offset + 1)}
    finally:
        db.close()


def test_a_partition_revoked_mid_restore_is_flushed_and_let_go(tmp_path):
    """Faust drops a revoked partition's database without closing it: the store ends its bulk load
    first (flushed, usual options), so nothing holds it and a later assignment can open it again."""
    db, recovery = setup(tmp_path, highwater=9)
    restore_bulk(recovery, TOPIC, records(range(6)))
    assert store.bulk_loading(db)
    faust_store = object.__new__(store.Store)  # Faust's own revoke_partitions runs on it
    faust_store._dbs = {TOPIC.partition: db}
    table = SimpleNamespace(changelog_topic=SimpleNamespace(topics={TOPIC.topic}), data=faust_store)
    faust_store.revoke_partitions(table, {TOPIC})
    assert faust_store._dbs == {}  # Faust let it go
    assert not store.bulk_loading(db) and store.bulk_loads() == 0
    assert db.property_int_value("rocksdb.num-entries-active-mem-table") == 0  # on disk first


@pytest.fixture(autouse=True)
def no_bulk_load_left():
    yield
    store.end_all_bulk_loads()  # a test's database left in bulk-load mode does not leak into the next

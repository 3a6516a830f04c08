"""The bulk cold restore (agents/faust_adapter.restore_bulk) on a real RocksDB: which records of a
fetch it writes, with which persisted offset, and which it leaves to Faust's own recovery path.
Faust's recovery service is stood in by an object with the attributes restore_bulk reads and sets
(tests/unit/test_faust_contract.py checks those against the installed Faust)."""

from __future__ import annotations

from types import SimpleNamespace

import rocksdict
from faust.stores.rocksdb import Store
from faust.types import TP

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

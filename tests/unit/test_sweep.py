"""The sweep's scans and evictions (agents/engine.py) on a real RocksDB, without Kafka.

The sweep of a partition walks its tables a slice at a time (SWEEP_BATCH keys per tick for expiry,
EVICT_BATCH for eviction), resuming where the last tick stopped, so no engine batch holds a walk of a
whole partition."""

import contextvars
from types import SimpleNamespace

import orjson
import pytest
import rocksdict

from agents import engine, transaction

OFFSET_KEY = b"__faust\x00offset__"
DAY_MS = 86_400_000


@pytest.fixture
def table(tmp_path):
    db = rocksdict.Rdict(str(tmp_path / "t-0.db"), rocksdict.Options(raw_mode=True))
    name = f"test-{tmp_path.name}"
    yield SimpleNamespace(name=name, data=SimpleNamespace(offset_key=OFFSET_KEY, _dbs={0: db}))
    db.close()
    engine._cursors.pop((name, 0), None)


def fill(table, n: int, touched_ms) -> list[str]:
    db = table.data._dbs[0]
    keys = [f"m-{i:06d}" for i in range(n)]
    for i, key in enumerate(keys):
        db[key.encode()] = orjson.dumps({"t": touched_ms(i)})
    db[OFFSET_KEY] = b"123"  # Faust's changelog offset shares the database: never an item
    return keys


def test_a_scan_takes_one_slice_and_the_next_resumes_where_it_stopped(table):
    keys = fill(table, 2 * engine.SWEEP_BATCH + 1_000, lambda i: i)
    slices = [engine._scan(table, 0) for _ in range(3)]
    # A slice is SWEEP_BATCH keys; Faust's offset key sorts first and counts, but is not an item.
    assert [len(s) for s in slices[:2]] == [engine.SWEEP_BATCH - 1, engine.SWEEP_BATCH]
    scanned = [key for s in slices for key, _ in s]
    assert scanned == keys  # every key once, in order, the offset key left out
    assert slices[0][7] == (keys[7], {"t": 7})
    # After the last key the next scan starts over.
    assert engine._scan(table, 0)[0][0] == keys[0]


def test_a_partition_without_a_database_scans_nothing():
    missing = SimpleNamespace(name="no-db", data=SimpleNamespace(offset_key=OFFSET_KEY, _dbs={}))
    assert engine._scan(missing, 3) == []


def test_eviction_deletes_only_stale_unstaged_entries_of_its_slice(table):
    # In a context of its own: the outbox it sets up does not leak into other tests.
    contextvars.copy_context().run(evict_two_slices, table)


def evict_two_slices(table):
    now = 100 * DAY_MS
    stale_at, fresh_at = now - engine.RETENTION_MS - 1, now - engine.RETENTION_MS + DAY_MS
    keys = fill(table, engine.EVICT_BATCH + 10, lambda i: stale_at if i % 2 == 0 else fresh_at)
    box = transaction.new_outbox()
    box.event = SimpleNamespace(message=SimpleNamespace(partition=0))
    box.put(table, keys[0], {"t": now})  # touched in this very batch: kept
    evicted = engine._evict(table, 0, now, lambda value: value["t"])
    first_slice = keys[:engine.EVICT_BATCH - 1]  # the offset key is the slice's first key
    expected = [k for i, k in enumerate(first_slice) if i % 2 == 0 and i != 0]
    assert evicted == len(expected)
    deleted = sorted(key for (_, key), (_, value, _) in box.writes.items() if value is transaction._DELETED)
    assert deleted == expected
    # The next tick's slice holds the rest.
    assert engine._evict(table, 0, now, lambda value: value["t"]) == 5

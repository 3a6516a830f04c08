"""Reads within an engine batch (agents/transaction.py `Outbox.get`), on a real RocksDB, without Kafka.

A read sees the batch's own staged writes. The value last put is handed to the next read as it is
(not decoded again from its staged bytes), once; what a caller changes in a value it read stays out
of the batch unless it puts the value back, and a rollback returns reads to the staged bytes."""

from types import SimpleNamespace

import orjson
import pytest
import rocksdict

from agents import transaction


@pytest.fixture
def table(tmp_path):
    db = rocksdict.Rdict(str(tmp_path / "t-0.db"), rocksdict.Options(raw_mode=True))
    db[b"m-1"] = orjson.dumps({"ms": {"sent": [1]}})
    yield SimpleNamespace(name=f"test-{tmp_path.name}", data=SimpleNamespace(_db_for_partition=lambda p: db))
    db.close()


@pytest.fixture
def box():
    """An outbox applying a record of partition 0."""
    outbox = transaction.Outbox()
    outbox.event = SimpleNamespace(message=SimpleNamespace(partition=0))
    return outbox


def test_reads_see_the_stored_then_the_staged_value(box, table):
    assert box.get(table, "m-1") == {"ms": {"sent": [1]}}
    assert box.get(table, "m-2") is None
    state = box.get(table, "m-1")
    state["ms"]["delivered"] = [2]
    box.put(table, "m-1", state)
    again = box.get(table, "m-1")
    assert again is state  # the object put, not a decoding of its bytes
    assert box.get(table, "m-1") == state and box.get(table, "m-1") is not state  # handed out once
    box.delete(table, "m-1")
    assert box.get(table, "m-1") is None


def test_a_change_not_put_back_stays_out_of_the_batch(box, table):
    state = box.get(table, "m-1")
    state["ms"]["opened"] = [3]
    box.put(table, "m-1", state)
    taken = box.get(table, "m-1")
    taken["ms"]["clicked"] = [4]  # read, changed, never put back
    assert box.get(table, "m-1") == {"ms": {"sent": [1], "opened": [3]}}
    assert orjson.loads(box.writes[(table.name, "m-1")][1]) == {"ms": {"sent": [1], "opened": [3]}}


def test_a_rollback_returns_reads_to_the_value_staged_before(box, table):
    state = box.get(table, "m-1")
    state["ms"]["opened"] = [3]
    box.put(table, "m-1", state)
    savepoint = box.savepoint()
    failing = box.get(table, "m-1")
    failing["ms"]["failed"] = [5]
    box.put(table, "m-1", failing)
    failing["ms"]["bounced"] = [6]  # changed after its put, then the input fails
    box.rollback(savepoint)
    assert box.get(table, "m-1") == {"ms": {"sent": [1], "opened": [3]}}
    box.put(table, "m-3", {"x": 1})
    box.rollback(box.savepoint())  # an empty rollback keeps what is staged
    assert box.get(table, "m-3") == {"x": 1}


def test_a_restaged_key_reads_what_the_table_holds(box, table):
    box.put(table, "m-1", {"changed": True})
    box.restage(table, "m-1", 0)
    assert box.get(table, "m-1") == {"ms": {"sent": [1]}}

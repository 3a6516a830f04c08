"""bench/floor.py's rules loop applies the engine's real rules with its state in RocksDB: over the same
records it makes the same status changes as the per-record path bench/status_path.py measures (state
in a dict), and the io loop makes one change per record. No Kafka: the loops' per-record functions
are called as the loop calls them, one fetch of a partition at a time."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import floor  # noqa: E402
import status_path  # noqa: E402
from rocksdict import Options, Rdict, WriteBatch  # noqa: E402
from sendtrack import simulate  # noqa: E402


class _Loop:
    """The parts of floor.Loop its per-record functions use."""

    def __init__(self) -> None:
        self.pids: dict[str, str] = {}
        self.changes = 0
        self.refused = 0


def _drive(apply, records, db: Rdict, now: int) -> tuple[_Loop, list[tuple[bytes, bytes]]]:
    loop, produced = _Loop(), []
    for start in range(0, len(records), floor.BATCH):
        staged: dict[bytes, bytes] = {}
        for kind, key, value in records[start:start + floor.BATCH]:
            apply(loop, f"run.{kind}", key, value, db, staged, produced, now)
        batch = WriteBatch(raw_mode=True)
        for k, v in staged.items():
            batch.put(k, v)
        db.write(batch)
    return loop, produced


@pytest.fixture()
def db(tmp_path):
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    rdict = Rdict(str(tmp_path / "db"), options)
    yield rdict
    rdict.close()


def test_the_rules_loop_makes_the_engines_changes(db):
    traffic = simulate.generate(800, seed=7, run_id="floor", orphan_rate=0, malformed_rate=0)
    records = [(kind, key, value) for kind, key, value in traffic.records]
    now = int(time.time() * 1000)
    expected, refused = status_path.run(records, now)
    loop, produced = _drive(floor.apply_rules, records, db, now)
    assert expected > len(traffic.messages)  # more than one milestone per message: rules ran
    assert (loop.changes, loop.refused) == (expected, refused)
    assert len(produced) == expected
    # Each change is keyed by its message and says so; the states were written where the loop reads them.
    for key, value in produced:
        assert orjson.loads(value)["message_id"] == key.decode()
    assert sum(1 for _ in db.keys()) == len(traffic.messages)


def test_the_io_loop_makes_one_change_per_record(db):
    traffic = simulate.generate(200, seed=8, run_id="floor", orphan_rate=0, malformed_rate=0)
    loop, produced = _drive(floor.apply_io, list(traffic.records), db, int(time.time() * 1000))
    assert loop.changes == len(produced) == len(traffic.records)
    assert all(orjson.loads(value)["message_id"] == key.decode() for key, value in produced)

"""bench/floor.py's rules loop applies the engine's real rules with each message's state in RocksDB on
the partition that owns the message, as the engine keeps it. No Kafka: its fetches are built as a
consumer would return them (records placed as Kafka's default partitioner places their keys, a
record without a key on any partition) and applied with the loop's own code."""

from __future__ import annotations

import random
import sys
import time
from collections import namedtuple
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import floor  # noqa: E402
import status_path  # noqa: E402
from sendtrack import simulate  # noqa: E402
from sendtrack.partitions import partition as key_partition  # noqa: E402
from sendtrack.settings import Settings  # noqa: E402

Rec = namedtuple("Rec", "key value")
N = 8


def _fetches(records, partitions: int, size: int = 500):
    """The records in publication order, cut into fetches of `size`, each grouped by (topic,
    partition) in order, as getmany returns them; and the order the loop applies them in."""
    spread = random.Random(3)
    placed = [(kind, key_partition(key, partitions) if key is not None else spread.randrange(partitions), key, value)
              for kind, key, value in records]
    fetches, order = [], []
    for start in range(0, len(placed), size):
        groups: dict[tuple[str, int], list] = {}
        for kind, partition, key, value in placed[start:start + size]:
            groups.setdefault((kind, partition), []).append((key, value))
        fetch = [(f"run.{kind}", partition, [Rec(k, v) for k, v in recs]) for (kind, partition), recs in groups.items()]
        fetches.append(fetch)
        order.extend((kind.removeprefix("run."), r.key, r.value) for kind, _, recs in fetch for r in recs)
    return fetches, order


def _run(fetches, partitions: int, data: Path, now: int, flatten: bool = False):
    """Apply the fetches with floor.Loop's code; returns the loop and the change ids it produced.
    With `flatten`, every record is applied as if from partition 0 of a one-partition run."""
    loop = floor.Loop(Settings(partitions=partitions), "rules", data)
    produced = []
    try:
        for fetch in fetches:
            if flatten:
                fetch = [(topic, 0, recs) for topic, _, recs in fetch]
            loop.apply_fetch(fetch, floor.apply_rules, now)
            for partition, items in loop.out.items():
                for key, value in items:
                    change = orjson.loads(value)
                    assert change["message_id"] == key.decode()
                    # Each change is staged on its message's partition, where its state is.
                    assert partition == key_partition(key, partitions)
                    produced.append(change["change_id"] + change["status"] + change["kind"])
            loop.write_states()
    finally:
        for db in loop.dbs:
            db.close()
    return loop, sorted(produced)


def test_the_rules_loop_keeps_each_state_on_its_messages_partition(tmp_path):
    traffic = simulate.generate(1500, seed=7, run_id="floor", orphan_rate=0, malformed_rate=0)
    assert any(key is None for _, key, _ in traffic.records)  # callbacks naming only the provider's id
    now = int(time.time() * 1000)
    fetches, order = _fetches(traffic.records, N)
    loop, changes = _run(fetches, N, tmp_path / "eight", now)
    # The same records in the same order with every state in one database: the same changes.
    single, single_changes = _run(fetches, 1, tmp_path / "one", now, flatten=True)
    assert changes == single_changes
    assert (loop.changes, loop.refused, loop.unresolved) == (single.changes, single.refused, single.unresolved)
    # And as many as the engine's per-record status path makes over that order (bench/status_path.py).
    expected, refused = status_path.run(order, now)
    assert (loop.changes, loop.refused) == (expected, refused)
    assert expected > len(traffic.messages)  # more than one milestone per message: the rules ran

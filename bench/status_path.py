"""The engine's per-record Python path alone, without Kafka, RocksDB or ClickHouse: what issue 19's
"less work per record in validation and rules" is measured with.

For each record of simulated traffic (sendtrack/simulate.py), in publication order: validate it
(schemas/validate.py), place its message id (murmur2, sendtrack/partitions.py), decode the message's
state (orjson, as the engine reads it from RocksDB), apply the status rules (sendtrack/status.py),
encode its status changes and the state again, in batches of 2,000 records whose keys are placed
first, as the engine's are. Callbacks that name only the provider's id are resolved through a dict
(the provider-id side's work is not measured; the new provider ids are placed as the engine stages
them). Prints microseconds per
record, best of `--repeat` runs; `--profile` prints cProfile's top functions of one more run.

    .venv/bin/python bench/status_path.py --messages 50000 --repeat 5 [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
from typing import Optional

import orjson

from schemas.models import Invalid
from schemas.validate import parse_callback, parse_send_request
from sendtrack import simulate, state as state_mod, status
from sendtrack.partitions import Placement


BATCH = 2000  # records per engine batch (SENDTRACK_ENGINE_BATCH_EVENTS)


def run(records: list[tuple[str, Optional[bytes], bytes]], now: int) -> tuple[int, int]:
    """Apply every record; returns (status changes produced, records refused)."""
    states: dict[str, bytes] = {}
    pids: dict[str, str] = {}
    place = Placement(8)
    prime = getattr(place, "prime", lambda keys: None)  # the code before issue 19's second round has none
    changes = refused = 0
    for start in range(0, len(records), BATCH):
        batch = records[start:start + BATCH]
        prime([key.decode() for _, key, _ in batch if key is not None])
        mapped: list[str] = []
        changes, refused = _apply(batch, states, pids, place, mapped, now, changes, refused)
        prime(mapped)  # the provider ids staged, placed when the batch commits
        for pkey in mapped:
            place(pkey)
    return changes, refused


def _apply(batch, states, pids, place, mapped, now, changes, refused):
    for kind, _, raw in batch:
        if kind == "send-requests":
            rec = parse_send_request(raw, now_ms=now)
            if isinstance(rec, Invalid):
                refused += 1
                continue
            message_id = rec.message_id
        else:
            rec = parse_callback(raw, now_ms=now)
            if isinstance(rec, Invalid):
                refused += 1
                continue
            message_id = rec.message_id
            if message_id is None:
                message_id = pids.get(f"{rec.provider}\x1f{rec.provider_message_id}")
                if message_id is None:
                    continue
            elif rec.provider and rec.provider_message_id:
                pkey = f"{rec.provider}\x1f{rec.provider_message_id}"
                if pkey not in pids:
                    pids[pkey] = message_id
                    mapped.append(pkey)
        place(message_id)
        raw_state = states.get(message_id)
        state = orjson.loads(raw_state) if raw_state is not None else status.new_state()
        if kind == "send-requests":
            outcome = status.apply_request(state, rec, now)
        else:
            outcome = status.apply_callback(state, rec, now, origin=["provider-callbacks", 0, 0])
        for change in outcome.changes:
            orjson.dumps(change)
        changes += len(outcome.changes)
        state_mod.mark_applied(state, kind, 0, now)
        states[message_id] = orjson.dumps(state)
    return changes, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    traffic = simulate.generate(args.messages, seed=11)
    records = traffic.records
    now = int(time.time() * 1000)
    best = float("inf")
    for _ in range(args.repeat):
        gc.collect()
        started = time.process_time()
        changes, refused = run(records, now)
        best = min(best, time.process_time() - started)
    print(f"{len(records)} records, {changes} status changes, {refused} refused: "
          f"{best / len(records) * 1e6:.2f} µs per record (best of {args.repeat})")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run, records, now)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()

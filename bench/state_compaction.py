"""What RocksDB's compaction of the engine's state costs, with the worker's options and with others.

The engine keeps each message's state in the `messages` table: one RocksDB database per partition,
all of them under one write buffer manager (agents/store.py), so their memtables are flushed small
and often. This replays the engine's pattern on `--partitions` such databases in a fresh process per
variant: per fetch of 2,000 records, every record reads its message's state (a miss for a new
message) and writes it back, in one write batch per partition; each message is written three times
(its request, a callback soon after, one much later), under a memory budget of `--state-memory-mb`
(16: these databases' share of the worker's 64 MB, which five tables' partitions share). It prints
the main thread's CPU, the CPU of RocksDB's background threads (flushes and compactions, those under
way when the writes end counted to their end), what flushes and compactions wrote, the level-0 files
left for a next compaction, and the databases' size on disk; and keeps them in
bench/results/state-compaction-*.json.

    .venv/bin/python bench/state_compaction.py --messages 2000000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 2000
# level-0 files that start a compaction, that slow writes, that stop them; bloom filter bits per key
VARIANTS = {
    "rocksdb-defaults": (4, 20, 36, 3),  # the worker's before the twenty-second session (Faust's 3 bits)
    "worker": None,  # agents/store.py as it is
    "l0-16-bloom3": (16, 48, 64, 3),
    # RocksDB's universal compaction (sorted runs merged with runs of about their size, so a byte is
    # rewritten about log2(data / flush) times rather than once per compaction of the partition)
    "universal": (4, 48, 64, 10),
    # the worker's before the twenty-third session: each file's index and filter whole (a read loads
    # all of them, where the worker now loads one 4 KB partition of each: agents/store.py)
    "whole-metadata": None,
    # the worker's without compression (LZ4 since the twenty-eighth session, Snappy before): a read
    # of a block not in the cache copies it, not decompresses it
    "no-compression": None,
    # Snappy, RocksDB's default and the worker's before the twenty-eighth session (LZ4 since)
    "snappy": None,
    # the worker's with another base level (RocksDB's default is 256 MB, the worker's 8 MB since the
    # twenty-eighth session): with dynamic level sizes a partition under it has one sorted level,
    # which every level-0 compaction rewrites whole; under a smaller base the level-0 files merge
    # into a level about a tenth of the partition's size
    "level-base-256mb": None,
    "level-base-32mb": None,
    # the worker's options, each fetch's reads made as one MultiGet per partition before its records
    # are applied (the engine reads one key at a time, as the others here)
    "multiget": None,
}


# Variants of the worker's options before the twenty-third session, run as they were then.
HISTORICAL = ("rocksdb-defaults", "l0-16-bloom3", "universal", "whole-metadata")


def value_of(i: int, step: int) -> bytes:
    """A state about the size of the engine's (a request, milestones, event digests)."""
    import orjson

    rnd = random.Random(i * 7 + step)
    return orjson.dumps({
        "req": {"message_id": f"bench-{i:08d}", "action": "email", "customer_id": f"cus-{i % 99991:06d}",
                "provider": "sendgrid", "flow_id": "flow-1", "campaign_id": "camp-2", "step_id": "step-3",
                "requested_at": 1764800000000 + i, "recipient": f"r{i}@example.com"},
        "ms": {s: [1764800000000 + i + k, False] for k, s in enumerate(("sent", "accepted", "delivered")[:step + 1])},
        "ev": [f"{rnd.getrandbits(64):016x}" for _ in range(step + 1)],
        "held": [], "rh": f"{rnd.getrandbits(64):016x}", "off": {"send-requests": i, "callbacks": i * 2}, "t": i,
    })


def schedule(messages: int) -> list[tuple[int, int]]:
    """(message, write number) in the order the engine meets them: a callback follows its request
    within about a fetch, a later one (an open, a click) about a fifth of the run later."""
    rnd = random.Random(7)
    later: dict[int, list[tuple[int, int]]] = {}
    out: list[tuple[int, int]] = []
    for i in range(messages):
        out.append((i, 0))
        later.setdefault(i + rnd.randrange(1, 2 * BATCH), []).append((i, 1))
        later.setdefault(i + rnd.randrange(messages // 10, messages // 3), []).append((i, 2))
        out.extend(later.pop(i, ()))
    for k in sorted(later):
        out.extend(later[k])
    return out


def stats_gb(db, prefix: str) -> float:
    """A cumulative figure of `rocksdb.stats`, e.g. "Flush(GB): cumulative 0.100, interval 0.098" or
    "Cumulative compaction: 1.24 GB write, ..." (RocksDB counts flushes in the latter too)."""
    for line in (db.property_value("rocksdb.stats") or "").splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):].split()[0].rstrip(","))
    return 0.0


def run_variant(name: str, messages: int, partitions: int, memory_mb: int, out: Path) -> dict:
    import rocksdict

    from agents import store

    store.configure(memory_mb)
    if VARIANTS[name]:
        store.L0_COMPACTION_TRIGGER, store.L0_SLOWDOWN_TRIGGER, store.L0_STOP_TRIGGER, store.BLOOM_BITS_PER_KEY = \
            VARIANTS[name]

    class Options(store.SharedRocksDBOptions):
        def as_options(self):
            options = super().as_options()
            if name == "universal":
                options.set_compaction_style(rocksdict.DBCompactionStyle.universal())
            if name == "no-compression":
                options.set_compression_type(rocksdict.DBCompressionType.none())
            if name == "snappy":
                options.set_compression_type(rocksdict.DBCompressionType.snappy())
            if name.startswith("level-base-"):
                options.set_max_bytes_for_level_base(int(name.split("-")[-1][:-2]) * 1024 * 1024)
            if name in HISTORICAL:  # as measured then: before partitioned metadata, LZ4 and small levels
                options.set_block_based_table_factory(store.table_options(partitioned=False))
                options.set_compression_type(rocksdict.DBCompressionType.snappy())
                options.set_max_bytes_for_level_base(256 * 1024 * 1024)
            return options

    options = Options(write_buffer_size=store.NORMAL_WRITE_BUFFER, max_write_buffer_number=2,
                      target_file_size_base=16 * 1024 * 1024, use_rocksdict=True)
    dbs = [options.open(out / f"messages-{p}.db") for p in range(partitions)]
    work = schedule(messages)
    keys = [f"bench-{i:08d}".encode() for i in range(messages)]
    started, cpu0, main0 = time.monotonic(), time.process_time(), time.thread_time()
    misses = 0
    # The reads' time per tenth of the writes: what a read costs as the state grows.
    tenth = max(len(work) // 10, 1)
    read_s = [0.0] * 11
    clock = time.perf_counter
    for b in range(0, len(work), BATCH):
        batches = [rocksdict.WriteBatch(raw_mode=True) for _ in dbs]
        spent = 0.0
        fetch = work[b:b + BATCH]
        if name == "multiget":
            t = clock()
            wanted: list[list[bytes]] = [[] for _ in dbs]
            for i, _ in fetch:
                wanted[hash(keys[i]) % partitions].append(keys[i])
            for p, these in enumerate(wanted):
                if these:
                    misses += dbs[p].get(these).count(None)
            spent += clock() - t
        for i, step in fetch:
            p = hash(keys[i]) % partitions
            if name != "multiget":
                t = clock()
                found = dbs[p].get(keys[i])
                spent += clock() - t
                if found is None:
                    misses += 1
            batches[p].put(keys[i], value_of(i, step))
        read_s[b // tenth] += spent
        for p, db in enumerate(dbs):
            batches[p].put(b"__faust\x00offset__", str(b).encode())
            db.write(batches[p])
    seconds = time.monotonic() - started
    main = time.thread_time() - main0
    # The compactions under way when the writes end are counted to their end; the level-0 files
    # that wait for the next one (fewer than the trigger) are reported as such.
    while any(db.property_int_value("rocksdb.num-running-compactions") for db in dbs):
        time.sleep(0.1)
    total = time.process_time() - cpu0
    flushed = sum(stats_gb(db, "Flush(GB): cumulative") for db in dbs)
    compacted = max(sum(stats_gb(db, "Cumulative compaction:") for db in dbs) - flushed, 0.0)
    level0 = sum(db.property_int_value("rocksdb.num-files-at-level0") for db in dbs)
    # The files of every level, summed over the databases: where the data ended up.
    levels = [sum(db.property_int_value(f"rocksdb.num-files-at-level{n}") for db in dbs) for n in range(7)]
    for db in dbs:
        db.close()
    size = sum(f.stat().st_size for f in out.rglob("*.sst"))
    return {"variant": name, "writes": len(work), "seconds": round(seconds, 1), "reads_missed": misses,
            "main_thread_cpu_s": round(main, 1),
            "read_us_per_tenth": [round(r / tenth * 1e6, 2) for r in read_s[:10]], "background_cpu_s": round(total - main, 1),
            "flushed_gb": round(flushed, 2), "compaction_written_gb": round(compacted, 2),
            "level0_files_left": level0, "files_per_level": levels, "sst_mb": round(size / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--state-memory-mb", type=int, default=16,
                        help="the databases' shared budget (SENDTRACK_STATE_MEMORY_MB); the worker's 64 MB "
                             "serve five tables' partitions, of which the messages table's take most writes")
    parser.add_argument("--variants", default="rocksdb-defaults,worker")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="state-compaction-") as tmp:
            print(json.dumps(run_variant(args.child, args.messages, args.partitions, args.state_memory_mb,
                                         Path(tmp))), flush=True)
        return
    results = []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same keys on the same partitions each time
        out = subprocess.run([sys.executable, __file__, "--messages", str(args.messages),
                              "--partitions", str(args.partitions), "--state-memory-mb", str(args.state_memory_mb),
                               "--child", variant],
                             env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(out.splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    path = ROOT / "bench" / "results" / f"state-compaction-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"messages": args.messages, "partitions": args.partitions,
                                "state_memory_mb": args.state_memory_mb, "results": results},
                               indent=2) + "\n")
    print(f"state compaction: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Faust's RocksDB store with one memory budget for every table and partition.

Faust opens one RocksDB database per table and partition (5 tables x SENDTRACK_PARTITIONS) and gives
each its own block cache and its own write buffers, so the worker's memory grows with the number of
databases, not with the data: 40 databases with 4 MB caches and two 4 MB write buffers each held
about 300 MB of the worker's heap whatever the load. Here all of them share one block cache (which
also holds the index and filter blocks of every open file, instead of keeping them outside any limit)
and one write buffer manager, which flushes the fullest memtables once their total reaches its limit.
`SENDTRACK_STATE_MEMORY_MB` is the sum of the two.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import rocksdict
from faust.stores import rocksdb as faust_rocksdb
from faust.stores import STORES

log = logging.getLogger(__name__)
_shared: dict[str, Any] = {}


# SENDTRACK_STATE_COMPRESSION -> RocksDB's compression of each block of the tables' files. A read
# that misses the block cache (most reads of an older message's state: docs/performance.md) copies
# the block from the OS page cache and decompresses it; LZ4 decompresses faster than Snappy, RocksDB's
# default, at about the same size on disk. Each file records its own: a change applies to files
# written from then on (flushes, compactions), and older files are read as they were written.
COMPRESSION = {
    "lz4": rocksdict.DBCompressionType.lz4,
    "snappy": rocksdict.DBCompressionType.snappy,
    "zstd": rocksdict.DBCompressionType.zstd,
    "none": rocksdict.DBCompressionType.none,
}


def configure(memory_mb: int, restore_memory_mb: int = 256, compression: str = "lz4") -> None:
    """Set the budget before the first database opens: half memtables, half block cache; and the
    compression of the files written from then on."""
    budget = memory_mb * 1024 * 1024
    _shared["compression"] = COMPRESSION[compression]
    _shared["cache"] = rocksdict.Cache(budget // 2)
    _shared["write_buffers"] = rocksdict.WriteBufferManager(budget // 2, False)
    _shared["memtables"] = budget // 2
    _shared["restore_memtables"] = max(restore_memory_mb * 1024 * 1024, budget // 2)


# Bulk loading, for a restore from the changelogs. With the usual 4 MB memtables under a 32 MB
# budget shared by 40 databases, a restore of millions of messages flushes tiny files that RocksDB
# then merges into the partition's growing data again and again: the restore slowed from 24 s to
# 66 s per million messages between 1 M and 5 M messages. While a partition restores, its memtable
# may grow to RESTORE_WRITE_BUFFER and all of them together to SENDTRACK_RESTORE_MEMORY_MB, and the
# restore's writes skip the write-ahead log (see `end_bulk_load` for why that loses nothing).
RESTORE_WRITE_BUFFER = 64 * 1024 * 1024
NORMAL_WRITE_BUFFER = 4 * 1024 * 1024  # agents/app.py ROCKSDB_OPTIONS
NO_WAL = rocksdict.WriteOptions()
NO_WAL.disable_wal = True
_loading: dict[int, Any] = {}  # id(db) -> db, the databases in bulk-load mode


def begin_bulk_load(db: Any) -> None:
    """Put one partition's database in bulk-load mode (large memtable; writes use NO_WAL)."""
    if id(db) in _loading:
        return
    if not _loading and _shared:
        _shared["write_buffers"].set_buffer_size(_shared["restore_memtables"])
    _loading[id(db)] = db
    db.set_options({"write_buffer_size": str(RESTORE_WRITE_BUFFER)})


def bulk_loading(db: Any) -> bool:
    return id(db) in _loading


def bulk_loads() -> int:
    return len(_loading)


def end_bulk_load(db: Any) -> None:
    """Flush what the bulk load wrote and return the database to its usual options.

    Writes without the write-ahead log live only in the memtable until it is flushed. A crash
    before that loses them together with the changelog offset written in the same batches: the
    flushed files hold a prefix of the changelog and the offset up to which they hold it, so the
    next recovery resumes from there. What must never happen is a write *with* the log landing
    after unflushed ones (a replayed log would then record an offset past data that is gone): so
    the database is flushed here, before Faust's own recovery path or the engine writes to it."""
    if id(db) not in _loading:
        return
    try:
        db.flush()
        db.set_options({"write_buffer_size": str(NORMAL_WRITE_BUFFER)})
    except Exception:
        # Writing on with the log after batches that may not be on disk would break the order
        # above; exiting keeps it (the files hold a consistent prefix, the restore resumes there).
        log.critical("flushing a restored table partition failed; exiting", exc_info=True)
        os._exit(70)
    del _loading[id(db)]
    if not _loading and _shared:
        _shared["write_buffers"].set_buffer_size(_shared["memtables"])


def end_all_bulk_loads() -> None:
    for db in list(_loading.values()):
        end_bulk_load(db)


# Compaction. Under the shared write buffer manager a partition's memtable is flushed at well under
# 4 MB (0.4 MB files in the 5 M run), and RocksDB (dynamic level sizes) merges level-0 files straight
# into the partition's one sorted level: with its default trigger of four files, every 1-2 MB of new
# state rewrote the whole partition (11 times what was written at 70 MB, more as it grows; a quarter
# of a core at 5 M messages). More level-0 files per compaction write each byte fewer times; reads
# then check more level-0 files, each behind its bloom filter (10 bits per key: about 1% of the
# misses read a block). bench/state_compaction.py measures both (docs/performance.md).
L0_COMPACTION_TRIGGER = 16
L0_SLOWDOWN_TRIGGER = 48
L0_STOP_TRIGGER = 64
BLOOM_BITS_PER_KEY = 10
# Levels. With dynamic level sizes RocksDB keeps a partition smaller than its base level's size
# (256 MB by default) in one sorted level, so the trigger above still rewrote the whole partition
# for every 16 small files: a quarter to half a core late in a 5 M backlog, as each partition grew
# to 150-200 MB. With a base of 8 MB a partition of that size has three sorted levels, each about a
# tenth of the next, and level-0 files merge into the smallest: bench/state_compaction.py's replay
# (3 M messages on 4 partitions) wrote half the bytes in compactions and spent 42% less CPU on them,
# for 5% more disk (a key's older version waits in an upper level) and reads no dearer.
MAX_BYTES_FOR_LEVEL_BASE = 8 * 1024 * 1024

# Reads. Every file's index and bloom filter live in the shared block cache, which at millions of
# messages is smaller than all of them together (by an estimate, about 24 MB of indexes and filters
# at 5 M messages, against a 32 MB cache shared with the data blocks): a read then loads the whole
# index and filter of a file again (tens to hundreds of KB each). In bench/state_compaction.py's
# replay of 3 M messages a read took 10-15 us in the middle of the run (2 us at its start); 9-10 us
# with the partitioned form (docs/performance.md, "Twenty-third session"). With two-level
# indexes and partitioned filters only each file's top level stays in the cache (pinned), and a read
# loads one METADATA_BLOCK_BYTES partition of the index and of the filter.
METADATA_BLOCK_BYTES = 4096


def table_options(partitioned: bool = True) -> Any:
    """The tables' block options on the shared cache: bloom filters, index and filter blocks in the
    cache (level 0's pinned), partitioned as above (`partitioned=False`: whole, as before the
    twenty-third session, for bench/state_compaction.py)."""
    table = rocksdict.BlockBasedOptions()
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
    table.set_block_cache(_shared["cache"])
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    if not partitioned:
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        return table
    table.set_index_type(rocksdict.BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_metadata_block_size(METADATA_BLOCK_BYTES)
    table.set_pin_top_level_index_and_filter(True)
    return table


class SharedRocksDBOptions(faust_rocksdb.RocksDBOptions):
    """Faust's options, with the process-wide cache and write buffer manager, compaction for small
    flushes into small levels, partitioned indexes and filters, and the configured compression
    (above)."""

    def as_options(self) -> Any:
        options = super().as_options()
        options.set_block_based_table_factory(table_options())
        options.set_write_buffer_manager(_shared["write_buffers"])
        options.set_level_zero_file_num_compaction_trigger(L0_COMPACTION_TRIGGER)
        options.set_level_zero_slowdown_writes_trigger(L0_SLOWDOWN_TRIGGER)
        options.set_level_zero_stop_writes_trigger(L0_STOP_TRIGGER)
        options.set_level_compaction_dynamic_level_bytes(True)
        options.set_max_bytes_for_level_base(MAX_BYTES_FOR_LEVEL_BASE)
        options.set_compression_type(_shared["compression"]())
        return options


class Store(faust_rocksdb.Store):
    """`sendtrack-rocksdb://`: faust's RocksDB store on the shared memory budget, which ends a bulk
    load (a restore) of the partitions it gives up."""

    def revoke_partitions(self, table: Any, tps: Any) -> None:
        # Faust drops a revoked partition's database without closing it. One still restoring is
        # flushed and returned to its usual options first, and no longer held here: a later
        # assignment opens it again (its lock is released when the last reference goes).
        from agents.faust_adapter import open_db  # the adapter imports this module

        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                db = open_db(table, tp.partition)
                if db is not None:
                    end_bulk_load(db)
        super().revoke_partitions(table, tps)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        base = self.rocksdb_options
        self.rocksdb_options = SharedRocksDBOptions(
            max_open_files=base.max_open_files, write_buffer_size=base.write_buffer_size,
            max_write_buffer_number=base.max_write_buffer_number,
            target_file_size_base=base.target_file_size_base,
            use_rocksdict=True, ttl=base.ttl,
        )


STORES.aliases["sendtrack-rocksdb"] = f"{__name__}:Store"


def memory_usage() -> dict[str, int]:
    """Bytes in the shared block cache and in the memtables, for /metrics."""
    if not _shared:
        return {}
    return {"block_cache": _shared["cache"].get_usage(), "write_buffers": _shared["write_buffers"].get_usage()}

"""The memory budgets handed to ClickHouse: pure settings, checked on a live worker in
tests/integration/test_clickhouse.py."""

import os
import sys
import types

from sendtrack.settings import Settings
from sinks.clickhouse import (EMBEDDED_JEMALLOC_CONF, configure_embedded_allocator, embedded_options,
                              query_limits)

MIB = 2**20


def test_one_query_spills_at_half_its_budget_and_fails_past_it():
    assert query_limits(256) == {"max_memory_usage": 256 * MIB,
                                 "max_bytes_before_external_group_by": 128 * MIB,
                                 "max_bytes_before_external_sort": 128 * MIB}


def test_a_zero_budget_means_no_limit():
    assert query_limits(0) == {}


def test_the_embedded_engine_gets_small_caches_and_the_merge_budget():
    options = embedded_options(Settings(merge_memory_mb=128))
    assert options["merges_mutations_memory_usage_soft_limit"] == str(128 * MIB)
    for cache in ("mark_cache_size", "index_mark_cache_size", "primary_index_cache_size"):
        assert int(options[cache]) <= 64 * MIB
    # One merge per background thread: concurrent merges were the engine's peaks.
    assert options["background_merges_mutations_concurrency_ratio"] == "1"


def test_the_engine_allocator_is_configured_before_chdb_loads(monkeypatch):
    monkeypatch.delenv("JE_MALLOC_CONF", raising=False)
    monkeypatch.delitem(sys.modules, "chdb", raising=False)
    configure_embedded_allocator()
    assert os.environ["JE_MALLOC_CONF"] == EMBEDDED_JEMALLOC_CONF
    assert "background_thread:true" in EMBEDDED_JEMALLOC_CONF


def test_a_users_allocator_options_are_kept(monkeypatch):
    monkeypatch.setenv("JE_MALLOC_CONF", "dirty_decay_ms:0")
    monkeypatch.delitem(sys.modules, "chdb", raising=False)
    configure_embedded_allocator()
    assert os.environ["JE_MALLOC_CONF"] == "dirty_decay_ms:0"


def test_once_chdb_is_loaded_the_environment_is_left_alone(monkeypatch):
    # jemalloc read its options when chDB loaded: setting them now would claim what is not in force.
    monkeypatch.delenv("JE_MALLOC_CONF", raising=False)
    monkeypatch.setitem(sys.modules, "chdb", types.ModuleType("chdb"))
    configure_embedded_allocator()
    assert "JE_MALLOC_CONF" not in os.environ

"""The memory budgets handed to ClickHouse: pure settings, checked on a live worker in
tests/integration/test_clickhouse.py."""

from sendtrack.settings import Settings
from sinks.clickhouse import embedded_options, query_limits

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

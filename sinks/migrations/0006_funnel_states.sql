-- The daily funnel's states move to a table that merges them a few rows at a time.
--
-- A row of the funnel holds a uniqExact state: the hashes of every message id that reached one
-- (day, dimensions, status). A merge deserializes a granule of each source part and builds its output
-- block of merged states in memory; with ClickHouse's defaults (8,192-row granules and blocks, and a
-- byte limit that does not see the states' hash tables) the last merge of 4 parts holding 5 M
-- messages' funnel grew the process by 1.1 GiB, inside the worker when ClickHouse is embedded.
-- Granules of 64 rows and output blocks of 8 rows bring it to +43-62 MiB, as fast
-- (`make bench-funnel-merge`, docs/performance.md). index_granularity is fixed when a table is
-- created, hence a new table.
--
-- Nothing is lost while a worker writes: the new view feeds the new table first; dropping the old
-- view waits for the inserts that still write through it; only then are the old table's parts
-- attached to the new one (hard links, no copy), so every part the old view wrote is among them. A
-- row that reaches both tables counts once, since merging uniqExact states is idempotent; rerunning
-- this migration after a partial run is safe for the same reason. 0007 drops the old table.
-- ATTACH PARTITION ALL needs ClickHouse 24.4 or later (sinks/migrate.py checks the server).
CREATE TABLE IF NOT EXISTS {db}.funnel_daily_states
(
    day          Date,
    action       LowCardinality(String),
    flow_id      String,
    campaign_id  String,
    step_id      String,
    status       LowCardinality(String),
    messages     AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (campaign_id, flow_id, day, action, step_id, status)
SETTINGS index_granularity = 64, merge_max_block_size = 8, max_parts_to_merge_at_once = 4,
    min_compress_block_size = 65536, max_compress_block_size = 131072;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.funnel_daily_states_mv TO {db}.funnel_daily_states AS
SELECT toDate(requested_at) AS day, action, flow_id, campaign_id, step_id, status,
       uniqExactState(message_id) AS messages
FROM {db}.status_changes_raw
WHERE status != ''
GROUP BY day, action, flow_id, campaign_id, step_id, status;

DROP VIEW IF EXISTS {db}.funnel_daily_mv;

ALTER TABLE {db}.funnel_daily_states ATTACH PARTITION ALL FROM {db}.funnel_daily_agg;

CREATE OR REPLACE VIEW {db}.funnel_daily AS
SELECT day, action, flow_id, campaign_id, step_id, status, uniqExactMerge(messages) AS messages
FROM {db}.funnel_daily_states
GROUP BY day, action, flow_id, campaign_id, step_id, status;

-- "Opened by a person" (Braze's estimated real opens): distinct messages with an open or a click that
-- no machine made. Apple Mail Privacy Protection prefetches and security scanners open (and click)
-- on their own; the webhook adapters flag those events `is_machine`, and they count here apart.
-- Same days, dimensions and merge settings as funnel_daily_states (0006); `kind` leaves room for
-- other engagement counts. A row that arrives through both the view and the backfill below counts
-- once: merging uniqExact states is idempotent.
CREATE TABLE IF NOT EXISTS {db}.engagement_daily_states
(
    day          Date,
    action       LowCardinality(String),
    flow_id      String,
    campaign_id  String,
    step_id      String,
    kind         LowCardinality(String),
    messages     AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (campaign_id, flow_id, day, action, step_id, kind)
SETTINGS index_granularity = 64, merge_max_block_size = 8, max_parts_to_merge_at_once = 4,
    min_compress_block_size = 65536, max_compress_block_size = 131072;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.engagement_daily_states_mv TO {db}.engagement_daily_states AS
SELECT toDate(requested_at) AS day, action, flow_id, campaign_id, step_id, 'opened_by_person' AS kind,
       uniqExactState(message_id) AS messages
FROM {db}.engagement_events_raw
WHERE NOT is_machine AND status IN ('opened', 'clicked')
GROUP BY day, action, flow_id, campaign_id, step_id;

INSERT INTO {db}.engagement_daily_states
SELECT toDate(requested_at) AS day, action, flow_id, campaign_id, step_id, 'opened_by_person' AS kind,
       uniqExactState(message_id) AS messages
FROM {db}.engagement_events_raw
WHERE NOT is_machine AND status IN ('opened', 'clicked')
GROUP BY day, action, flow_id, campaign_id, step_id;

CREATE VIEW IF NOT EXISTS {db}.engagement_daily AS
SELECT day, action, flow_id, campaign_id, step_id, kind, uniqExactMerge(messages) AS messages
FROM {db}.engagement_daily_states
GROUP BY day, action, flow_id, campaign_id, step_id, kind;

-- Daily funnel, pre-aggregated: distinct messages per (send day, dimensions, status). uniqExact
-- states are idempotent, so a status change inserted twice counts once.
CREATE TABLE IF NOT EXISTS {db}.funnel_daily_agg
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
ORDER BY (campaign_id, flow_id, day, action, step_id, status);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.funnel_daily_mv TO {db}.funnel_daily_agg AS
SELECT toDate(requested_at) AS day, action, flow_id, campaign_id, step_id, status,
       uniqExactState(message_id) AS messages
FROM {db}.status_changes_raw
WHERE status != ''
GROUP BY day, action, flow_id, campaign_id, step_id, status;

CREATE VIEW IF NOT EXISTS {db}.funnel_daily AS
SELECT day, action, flow_id, campaign_id, step_id, status, uniqExactMerge(messages) AS messages
FROM {db}.funnel_daily_agg
GROUP BY day, action, flow_id, campaign_id, step_id, status;

-- Messages by their current status, per send day and dimensions.
CREATE VIEW IF NOT EXISTS {db}.current_status_daily AS
SELECT toDate(requested_at) AS day, action, flow_id, campaign_id, step_id, current_status,
       count() AS messages
FROM {db}.messages
GROUP BY day, action, flow_id, campaign_id, step_id, current_status;

-- Failed messages by reason, per send day, action and provider.
CREATE VIEW IF NOT EXISTS {db}.failure_reasons AS
SELECT toDate(requested_at) AS day, action, provider, reason_code, reason, count() AS messages
FROM {db}.messages
WHERE failed_at IS NOT NULL
GROUP BY day, action, provider, reason_code, reason;

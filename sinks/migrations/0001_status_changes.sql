-- Raw storage: every status change the pipeline produced. Kafka delivery is at-least-once, so a
-- change can be inserted more than once; the views below never show those duplicates.
CREATE TABLE IF NOT EXISTS {db}.status_changes_raw
(
    change_id        String,
    message_id       String,
    status           LowCardinality(String),
    previous_status  LowCardinality(String),
    current_status   LowCardinality(String),
    inferred         Bool,
    occurred_at      DateTime64(3, 'UTC'),
    recorded_at      DateTime64(3, 'UTC'),
    action           LowCardinality(String),
    provider         LowCardinality(String),
    customer_id      String,
    recipient        String,
    flow_id          String,
    campaign_id      String,
    step_id          String,
    requested_at     DateTime64(3, 'UTC'),
    reason_code      String,
    reason           String,
    bounce_type      LowCardinality(String),
    event_id         String,
    _topic           LowCardinality(String),
    _partition       UInt32,
    _offset          UInt64,
    _inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(requested_at)
ORDER BY (message_id, status);

-- One row per (message_id, status): the milestone log.
CREATE VIEW IF NOT EXISTS {db}.status_changes AS
SELECT change_id, message_id, status, previous_status, current_status, inferred, occurred_at,
       recorded_at, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
       requested_at, reason_code, reason, bounce_type
FROM {db}.status_changes_raw FINAL;

-- One row per message, folded by idempotent aggregates (min/max), so a change inserted twice
-- folds to the same values. Dimensions are constant per message and stay in the sorting key.
CREATE TABLE IF NOT EXISTS {db}.messages_agg
(
    message_id       String,
    action           LowCardinality(String),
    provider         LowCardinality(String),
    customer_id      String,
    recipient        String,
    flow_id          String,
    campaign_id      String,
    step_id          String,
    requested_at     DateTime64(3, 'UTC'),
    current_rank     SimpleAggregateFunction(max, UInt8),
    sent_at          SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    processing_at    SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    delivered_at     SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    failed_at        SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    opened_at        SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    clicked_at       SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    unsubscribed_at  SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    complained_at    SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    bounced_at       SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    answered_at      SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    succeeded_at     SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    reason_code      SimpleAggregateFunction(max, String),
    reason           SimpleAggregateFunction(max, String),
    bounce_type      SimpleAggregateFunction(max, String),
    updated_at       SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(requested_at)
ORDER BY (message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id, requested_at);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.messages_mv TO {db}.messages_agg AS
SELECT
    message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id, requested_at,
    -- The current status is the reached milestone ranking highest in this order (sendtrack.status.CURRENT_RANK).
    toUInt8(transform(status,
        ['sent', 'processing', 'delivered', 'succeeded', 'failed', 'bounced', 'opened', 'answered', 'clicked'],
        [1, 2, 3, 4, 5, 6, 7, 7, 8], 0)) AS current_rank,
    if(status = 'sent', occurred_at, NULL) AS sent_at,
    if(status = 'processing', occurred_at, NULL) AS processing_at,
    if(status = 'delivered', occurred_at, NULL) AS delivered_at,
    if(status = 'failed', occurred_at, NULL) AS failed_at,
    if(status = 'opened', occurred_at, NULL) AS opened_at,
    if(status = 'clicked', occurred_at, NULL) AS clicked_at,
    if(status = 'unsubscribed', occurred_at, NULL) AS unsubscribed_at,
    if(status = 'complained', occurred_at, NULL) AS complained_at,
    if(status = 'bounced', occurred_at, NULL) AS bounced_at,
    if(status = 'answered', occurred_at, NULL) AS answered_at,
    if(status = 'succeeded', occurred_at, NULL) AS succeeded_at,
    -- The failure's reason is the one on the 'failed' milestone (bounced implies failed).
    if(status = 'failed', reason_code, '') AS reason_code,
    if(status = 'failed', reason, '') AS reason,
    if(status = 'failed', bounce_type, '') AS bounce_type,
    occurred_at AS updated_at
FROM {db}.status_changes_raw;

CREATE VIEW IF NOT EXISTS {db}.messages AS
SELECT
    message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id, requested_at,
    transform(max(current_rank), [1, 2, 3, 4, 5, 6, 8],
        ['sent', 'processing', 'delivered', 'succeeded', 'failed', 'bounced', 'clicked'],
        if(max(current_rank) = 7, if(action = 'ai_call', 'answered', 'opened'), '')) AS current_status,
    min(sent_at) AS sent_at,
    min(processing_at) AS processing_at,
    min(delivered_at) AS delivered_at,
    min(failed_at) AS failed_at,
    min(opened_at) AS opened_at,
    min(clicked_at) AS clicked_at,
    min(unsubscribed_at) AS unsubscribed_at,
    min(complained_at) AS complained_at,
    min(bounced_at) AS bounced_at,
    min(answered_at) AS answered_at,
    min(succeeded_at) AS succeeded_at,
    max(reason_code) AS reason_code,
    max(reason) AS reason,
    max(bounce_type) AS bounce_type,
    max(updated_at) AS updated_at
FROM {db}.messages_agg
GROUP BY message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id, requested_at;

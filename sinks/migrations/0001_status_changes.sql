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
    reason_at        DateTime64(3, 'UTC'),
    event_id         String,
    -- A failure milestone is produced again when an earlier failure arrives late (its reason
    -- wins); the row with the earliest reason_at has the highest version.
    _version         UInt64 MATERIALIZED if(toUnixTimestamp64Milli(reason_at) = 0, 0,
                                            10000000000000 - toUnixTimestamp64Milli(reason_at)),
    _topic           LowCardinality(String),
    _partition       UInt32,
    _offset          UInt64,
    _inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(requested_at)
ORDER BY (message_id, status);

-- One row per (message_id, status): the milestone log. (status '' rows only announce an
-- http_request awaiting its result, for the messages view.)
CREATE VIEW IF NOT EXISTS {db}.status_changes AS
SELECT change_id, message_id, status, previous_status, current_status, inferred, occurred_at,
       recorded_at, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
       requested_at, reason_code, reason, bounce_type, reason_at
FROM {db}.status_changes_raw FINAL
WHERE status != '';

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
    -- (reason_at, reason_code, reason, bounce_type) of the earliest failure; a far-future
    -- placeholder on rows that are not failures.
    failure          SimpleAggregateFunction(min, Tuple(DateTime64(3, 'UTC'), String, String, String)),
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
    -- The failure reason is the earliest failure event's, carried on the 'failed' milestone
    -- (bounced implies failed), so arrival order does not change it.
    if(status = 'failed', tuple(reason_at, reason_code, reason, bounce_type),
       tuple(toDateTime64('2299-12-31 00:00:00', 3, 'UTC'), '', '', '')) AS failure,
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
    min(failure).2 AS reason_code,
    min(failure).3 AS reason,
    min(failure).4 AS bounce_type,
    max(updated_at) AS updated_at
FROM {db}.messages_agg
GROUP BY message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id, requested_at;

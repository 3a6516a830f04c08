-- One row per applied opened/clicked event id (the first open of a message included).
CREATE TABLE IF NOT EXISTS {db}.engagement_events_raw
(
    event_id     String,
    message_id   String,
    status       LowCardinality(String),
    occurred_at  DateTime64(3, 'UTC'),
    url          String,
    is_machine   Bool,
    action       LowCardinality(String),
    provider     LowCardinality(String),
    customer_id  String,
    recipient    String,
    flow_id      String,
    campaign_id  String,
    step_id      String,
    requested_at DateTime64(3, 'UTC'),
    _inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(requested_at)
ORDER BY (message_id, event_id);

CREATE VIEW IF NOT EXISTS {db}.engagement_events AS
SELECT event_id, message_id, status, occurred_at, url, is_machine, action, provider, customer_id,
       recipient, flow_id, campaign_id, step_id, requested_at
FROM {db}.engagement_events_raw FINAL;

CREATE TABLE IF NOT EXISTS {db}.dead_letters_raw
(
    source_topic     LowCardinality(String),
    partition        Int32,
    offset           Int64,
    key              Nullable(String),
    payload          String,
    payload_encoding LowCardinality(String),
    error_type       LowCardinality(String),
    error            String,
    failed_at        DateTime64(3, 'UTC'),
    _inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (source_topic, partition, offset, error_type, cityHash64(payload));

CREATE VIEW IF NOT EXISTS {db}.dead_letters AS
SELECT source_topic, partition, offset, key, payload, payload_encoding, error_type, error, failed_at
FROM {db}.dead_letters_raw FINAL;

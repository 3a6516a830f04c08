-- The sink's insert path. Records are inserted as they are on Kafka (JSON lines, times in epoch
-- milliseconds) into Null tables, whose materialized views convert the times and write the raw
-- tables (which feed every other view, as before). ClickHouse parses the JSON in C++; building a
-- native columnar block in Python instead held the worker's GIL for most of each insert and stalled
-- the engine in the same process (docs/performance.md).
CREATE TABLE IF NOT EXISTS {db}.status_changes_ingest
(
    change_id        String,
    message_id       String,
    status           String,
    previous_status  String,
    current_status   String,
    inferred         Bool,
    occurred_at      Int64,
    recorded_at      Int64,
    action           String,
    provider         String,
    customer_id      String,
    recipient        String,
    flow_id          String,
    campaign_id      String,
    step_id          String,
    requested_at     Int64,
    reason_code      String,
    reason           String,
    bounce_type      String,
    reason_at        Int64,
    event_id         String,
    _topic           String,
    _partition       UInt32,
    _offset          UInt64
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.status_changes_ingest_mv TO {db}.status_changes_raw AS
SELECT change_id, message_id, status, previous_status, current_status, inferred,
       fromUnixTimestamp64Milli(occurred_at, 'UTC') AS occurred_at,
       fromUnixTimestamp64Milli(recorded_at, 'UTC') AS recorded_at,
       action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
       fromUnixTimestamp64Milli(requested_at, 'UTC') AS requested_at,
       reason_code, reason, bounce_type,
       fromUnixTimestamp64Milli(reason_at, 'UTC') AS reason_at,
       event_id, _topic, _partition, _offset
FROM {db}.status_changes_ingest;

CREATE TABLE IF NOT EXISTS {db}.engagement_events_ingest
(
    event_id     String,
    message_id   String,
    status       String,
    occurred_at  Int64,
    url          String,
    is_machine   Bool,
    action       String,
    provider     String,
    customer_id  String,
    recipient    String,
    flow_id      String,
    campaign_id  String,
    step_id      String,
    requested_at Int64
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.engagement_events_ingest_mv TO {db}.engagement_events_raw AS
SELECT event_id, message_id, status, fromUnixTimestamp64Milli(occurred_at, 'UTC') AS occurred_at, url,
       is_machine, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
       fromUnixTimestamp64Milli(requested_at, 'UTC') AS requested_at
FROM {db}.engagement_events_ingest;

CREATE TABLE IF NOT EXISTS {db}.dead_letters_ingest
(
    source_topic     String,
    partition        Int32,
    offset           Int64,
    key              Nullable(String),
    payload          String,
    payload_encoding String,
    error_type       String,
    error            String,
    failed_at        Int64
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.dead_letters_ingest_mv TO {db}.dead_letters_raw AS
SELECT source_topic, partition, offset, key, payload, payload_encoding, error_type, error,
       fromUnixTimestamp64Milli(failed_at, 'UTC') AS failed_at
FROM {db}.dead_letters_ingest;

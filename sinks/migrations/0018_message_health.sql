-- Deliverability health from a narrow table (issue 19, docs/performance.md "Eighteenth session").
-- deliverability_health read messages_by_workspace FINAL: a FINAL merges every part of the table at
-- once and holds a block of each part's column streams, and messages_by_workspace has ten sorting
-- key columns and five Nullable milestone times to read. In the worker's own process (embedded
-- ClickHouse) the deliverability alerts' evaluation of the view then added 200-300 MB to the peak
-- RSS at 1 M messages in 45-90 parts. message_health keeps, per message, only what the view counts:
-- its workspace, id, action, provider, mailbox provider, request time and a flag per milestone
-- reached. Read with FINAL it takes about 2.5 times less memory for the same parts, and fewer,
-- cheaper parts (narrow rows merge cheaply, so more of them merge at once).
--
-- A message is one row of this table per workspace, message id, request time, action and provider
-- (every row of a message carries the same ones; a message id sent again after the engine forgot it
-- is another row, as in messages_by_workspace); its mailbox provider folds by max, each flag by max:
-- 1 once any status change of the message reached that status. Rows reaching it twice (a row written
-- both by the view and by the copy below, a duplicate status change) fold the same. The request
-- time is in the sorting key so that a FINAL restricted to the last 7 days reads only the months
-- they fall in: ClickHouse prunes partitions under FINAL only by sorting key columns.
-- No personal data: the message ids stay after an erasure as in the other tables (sinks/erasure.py),
-- and it keeps rows as long as messages_by_workspace (sinks/retention.py).
CREATE TABLE IF NOT EXISTS {db}.message_health
(
    workspace_id     LowCardinality(String),
    message_id       String,
    requested_at     DateTime64(3, 'UTC'),
    action           LowCardinality(String),
    provider         LowCardinality(String),
    mailbox_provider SimpleAggregateFunction(max, LowCardinality(String)),
    delivered        SimpleAggregateFunction(max, UInt8),
    bounced          SimpleAggregateFunction(max, UInt8),
    failed           SimpleAggregateFunction(max, UInt8),
    complained       SimpleAggregateFunction(max, UInt8),
    unsubscribed     SimpleAggregateFunction(max, UInt8)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(requested_at)
ORDER BY (workspace_id, message_id, requested_at, action, provider)
SETTINGS max_parts_to_merge_at_once = 16, min_compress_block_size = 65536, max_compress_block_size = 131072;

-- The view feeds the table first; the copy below then brings the messages written before, so a
-- message written meanwhile is in both, and counts once.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.message_health_mv TO {db}.message_health AS
SELECT workspace_id, message_id, action, provider, mailbox_provider, requested_at,
       toUInt8(status = 'delivered') AS delivered,
       toUInt8(status = 'bounced') AS bounced,
       toUInt8(status = 'failed') AS failed,
       toUInt8(status = 'complained') AS complained,
       toUInt8(status = 'unsubscribed') AS unsubscribed
FROM {db}.status_changes_raw;

INSERT INTO {db}.message_health (workspace_id, message_id, action, provider, mailbox_provider, requested_at, delivered,
                                 bounced, failed, complained, unsubscribed)
SELECT workspace_id, message_id, action, provider, mailbox_provider, requested_at,
       toUInt8(delivered_at IS NOT NULL), toUInt8(bounced_at IS NOT NULL), toUInt8(failed_at IS NOT NULL),
       toUInt8(complained_at IS NOT NULL), toUInt8(unsubscribed_at IS NOT NULL)
FROM {db}.messages_by_workspace FINAL;

-- The same rates, thresholds and states as 0015's view, counted from message_health.
CREATE OR REPLACE VIEW {db}.deliverability_health AS
SELECT g.workspace_id AS workspace_id, g.period AS period, g.action AS action, g.provider AS provider,
       g.mailbox AS mailbox_provider, t.metric AS metric,
       multiIf(t.metric = 'bounce', g.bounced, t.metric = 'complaint', g.complained,
               t.metric = 'failure', g.failed, t.metric = 'unsubscribe', g.unsubscribed, 0) AS events,
       if(t.metric IN ('bounce', 'failure'), g.messages, g.delivered) AS volume,
       if(volume = 0, 0, events / volume) AS rate,
       t.warning AS warning, t.critical AS critical, t.min_volume AS min_volume,
       volume >= t.min_volume AS measured,
       multiIf(NOT measured, 'ok', rate >= t.critical, 'critical', rate >= t.warning, 'warning', 'ok') AS state
FROM (
    SELECT workspace_id, w.1 AS period, action, provider, mailbox,
           count() AS messages,
           toUInt64(sum(delivered)) AS delivered,
           toUInt64(sum(bounced)) AS bounced,
           toUInt64(sum(failed)) AS failed,
           toUInt64(sum(complained)) AS complained,
           toUInt64(sum(unsubscribed)) AS unsubscribed
    FROM (
        SELECT arrayJoin([('24h', toUInt32(86400)), ('7d', toUInt32(604800))]) AS w,
               arrayJoin(if(mailbox_provider = '', ['*'], ['*', mailbox_provider])) AS mailbox,
               workspace_id, requested_at, action, provider, delivered, bounced, failed, complained, unsubscribed
        FROM {db}.message_health FINAL
        WHERE requested_at >= now64(3) - toIntervalDay(7)
    )
    WHERE requested_at >= now64(3) - toIntervalSecond(w.2)
    GROUP BY workspace_id, period, action, provider, mailbox
) AS g
CROSS JOIN (
    SELECT metric, argMax(warning, set_at) AS warning, argMax(critical, set_at) AS critical,
           argMax(min_volume, set_at) AS min_volume
    FROM {db}.health_thresholds WHERE metric IN ('bounce', 'complaint', 'failure', 'unsubscribe') GROUP BY metric
) AS t;

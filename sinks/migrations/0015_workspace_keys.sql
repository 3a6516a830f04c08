-- Workspaces, second step: every rollup is keyed by workspace first, and every view shows it first
-- (docs/contract.md, "Workspaces"). One workspace's queries then read only its own ranges of the
-- tables, and a reader scoped to a workspace (sinks/analyst.py) is filtered on the column in every
-- table it can reach. A sorting key cannot be changed in place, hence three new tables:
--
-- | before (dropped by 0016)  | after                          |
-- |---------------------------|--------------------------------|
-- | messages_agg              | messages_by_workspace          |
-- | funnel_daily_states       | funnel_daily_by_workspace      |
-- | engagement_daily_states   | engagement_daily_by_workspace  |
--
-- Nothing is lost while a worker writes (as in 0006): each new view feeds its new table first;
-- dropping an old view waits for the inserts that still write through it; only then are the old
-- table's rows copied. A row that reaches a new table both ways counts once: messages fold by
-- min/max and funnels merge uniqExact states, both idempotent; rerunning this migration after a
-- partial run is safe for the same reason.
--
-- Rows written before 0014 carry workspace ''. Rows written between 0014 and this migration may
-- name a workspace that the old tables did not keep: a message's workspace comes back from
-- status_changes_raw (one per message: another one is a conflicting request), and the funnels of
-- the send days that have any such row are rebuilt from status_changes_raw and
-- engagement_events_raw instead of copied (the raw tables keep every row of a day the aggregates
-- keep, unless SENDTRACK_RETENTION_DAYS was set below the days since 0014 ran).
CREATE TABLE IF NOT EXISTS {db}.messages_by_workspace
(
    workspace_id     LowCardinality(String),
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
    failure          SimpleAggregateFunction(min, Tuple(DateTime64(3, 'UTC'), String, String, String)),
    updated_at       SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(requested_at)
ORDER BY (workspace_id, message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
          requested_at)
SETTINGS max_parts_to_merge_at_once = 4, min_compress_block_size = 65536, max_compress_block_size = 131072;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.messages_by_workspace_mv TO {db}.messages_by_workspace AS
SELECT
    workspace_id, message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
    requested_at,
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
    if(status = 'failed', tuple(reason_at, reason_code, reason, bounce_type),
       tuple(toDateTime64('2299-12-31 00:00:00', 3, 'UTC'), '', '', '')) AS failure,
    occurred_at AS updated_at
FROM {db}.status_changes_raw;

DROP VIEW IF EXISTS {db}.messages_mv;

INSERT INTO {db}.messages_by_workspace
SELECT w.named AS workspace_id, a.message_id, a.action, a.provider, a.customer_id, a.recipient, a.flow_id,
       a.campaign_id, a.step_id, a.requested_at, a.current_rank, a.sent_at, a.processing_at, a.delivered_at,
       a.failed_at, a.opened_at, a.clicked_at, a.unsubscribed_at, a.complained_at, a.bounced_at, a.answered_at,
       a.succeeded_at, a.failure, a.updated_at
FROM {db}.messages_agg AS a
LEFT ANY JOIN (SELECT message_id, any(workspace_id) AS named FROM {db}.status_changes_raw
               WHERE workspace_id != '' GROUP BY message_id) AS w ON w.message_id = a.message_id
SETTINGS join_use_nulls = 0;

CREATE TABLE IF NOT EXISTS {db}.funnel_daily_by_workspace
(
    workspace_id LowCardinality(String),
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
ORDER BY (workspace_id, campaign_id, flow_id, day, action, step_id, status)
SETTINGS index_granularity = 64, merge_max_block_size = 8, max_parts_to_merge_at_once = 4,
    min_compress_block_size = 65536, max_compress_block_size = 131072;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.funnel_daily_by_workspace_mv TO {db}.funnel_daily_by_workspace AS
SELECT workspace_id, toDate(requested_at) AS day, action, flow_id, campaign_id, step_id, status,
       uniqExactState(message_id) AS messages
FROM {db}.status_changes_raw
WHERE status != ''
GROUP BY workspace_id, day, action, flow_id, campaign_id, step_id, status;

DROP VIEW IF EXISTS {db}.funnel_daily_states_mv;

INSERT INTO {db}.funnel_daily_by_workspace
SELECT '' AS workspace_id, day, action, flow_id, campaign_id, step_id, status, messages
FROM {db}.funnel_daily_states
WHERE day NOT IN (SELECT DISTINCT toDate(requested_at) FROM {db}.status_changes_raw WHERE workspace_id != '');

INSERT INTO {db}.funnel_daily_by_workspace
SELECT workspace_id, toDate(requested_at) AS day, action, flow_id, campaign_id, step_id, status,
       uniqExactState(message_id) AS messages
FROM {db}.status_changes_raw
WHERE status != ''
  AND toDate(requested_at) IN (SELECT DISTINCT toDate(requested_at) FROM {db}.status_changes_raw
                               WHERE workspace_id != '')
GROUP BY workspace_id, day, action, flow_id, campaign_id, step_id, status;

CREATE TABLE IF NOT EXISTS {db}.engagement_daily_by_workspace
(
    workspace_id LowCardinality(String),
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
ORDER BY (workspace_id, campaign_id, flow_id, day, action, step_id, kind)
SETTINGS index_granularity = 64, merge_max_block_size = 8, max_parts_to_merge_at_once = 4,
    min_compress_block_size = 65536, max_compress_block_size = 131072;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.engagement_daily_by_workspace_mv TO {db}.engagement_daily_by_workspace AS
SELECT workspace_id, toDate(requested_at) AS day, action, flow_id, campaign_id, step_id,
       'opened_by_person' AS kind, uniqExactState(message_id) AS messages
FROM {db}.engagement_events_raw
WHERE NOT is_machine AND status IN ('opened', 'clicked')
GROUP BY workspace_id, day, action, flow_id, campaign_id, step_id;

DROP VIEW IF EXISTS {db}.engagement_daily_states_mv;

INSERT INTO {db}.engagement_daily_by_workspace
SELECT '' AS workspace_id, day, action, flow_id, campaign_id, step_id, kind, messages
FROM {db}.engagement_daily_states
WHERE day NOT IN (SELECT DISTINCT toDate(requested_at) FROM {db}.engagement_events_raw WHERE workspace_id != '');

INSERT INTO {db}.engagement_daily_by_workspace
SELECT workspace_id, toDate(requested_at) AS day, action, flow_id, campaign_id, step_id,
       'opened_by_person' AS kind, uniqExactState(message_id) AS messages
FROM {db}.engagement_events_raw
WHERE NOT is_machine AND status IN ('opened', 'clicked')
  AND toDate(requested_at) IN (SELECT DISTINCT toDate(requested_at) FROM {db}.engagement_events_raw
                               WHERE workspace_id != '')
GROUP BY workspace_id, day, action, flow_id, campaign_id, step_id;

-- The views read the new tables and show workspace_id first; analysts' queries that name columns
-- keep working (a sum over a view's rows now sums its workspaces too).
CREATE OR REPLACE VIEW {db}.messages AS
SELECT
    workspace_id, message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id, requested_at,
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
FROM {db}.messages_by_workspace
GROUP BY workspace_id, message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
         requested_at;

CREATE OR REPLACE VIEW {db}.funnel_daily AS
SELECT workspace_id, day, action, flow_id, campaign_id, step_id, status, uniqExactMerge(messages) AS messages
FROM {db}.funnel_daily_by_workspace
GROUP BY workspace_id, day, action, flow_id, campaign_id, step_id, status;

CREATE OR REPLACE VIEW {db}.engagement_daily AS
SELECT workspace_id, day, action, flow_id, campaign_id, step_id, kind, uniqExactMerge(messages) AS messages
FROM {db}.engagement_daily_by_workspace
GROUP BY workspace_id, day, action, flow_id, campaign_id, step_id, kind;

CREATE OR REPLACE VIEW {db}.current_status_daily AS
SELECT workspace_id, toDate(requested_at) AS day, action, flow_id, campaign_id, step_id,
       transform(current_rank, [1, 2, 3, 4, 5, 6, 8],
           ['sent', 'processing', 'delivered', 'succeeded', 'failed', 'bounced', 'clicked'],
           if(current_rank = 7, if(action = 'ai_call', 'answered', 'opened'), '')) AS current_status,
       count() AS messages
FROM {db}.messages_by_workspace FINAL
GROUP BY workspace_id, day, action, flow_id, campaign_id, step_id, current_status;

CREATE OR REPLACE VIEW {db}.failure_reasons AS
SELECT workspace_id, toDate(requested_at) AS day, action, provider, failure.2 AS reason_code, failure.3 AS reason,
       count() AS messages
FROM {db}.messages_by_workspace FINAL
WHERE failed_at IS NOT NULL
GROUP BY workspace_id, day, action, provider, reason_code, reason;

CREATE OR REPLACE VIEW {db}.unconfirmed AS
SELECT m.workspace_id, m.message_id, m.action, m.provider, m.customer_id, m.recipient, m.flow_id, m.campaign_id,
       m.step_id, m.requested_at, m.current_status, e.hours AS expected_hours,
       round(dateDiff('second', m.requested_at, now64(3)) / 3600, 1) AS waiting_hours
FROM {db}.messages AS m
INNER JOIN (SELECT action, argMax(hours, set_at) AS hours FROM {db}.receipt_expectations GROUP BY action) AS e
    ON m.action = e.action
WHERE m.current_status IN ('', 'sent', 'processing') AND e.hours > 0
  AND m.requested_at < now64(3) - toIntervalSecond(toInt64(e.hours * 3600));

CREATE OR REPLACE VIEW {db}.classified_messages AS
SELECT m.workspace_id AS workspace_id, m.requested_at AS requested_at, m.action AS action, m.provider AS provider,
       m.delivered_at AS delivered_at, m.bounced_at AS bounced_at, m.failed_at AS failed_at,
       m.opened_at AS opened_at, m.clicked_at AS clicked_at, m.complained_at AS complained_at,
       m.unsubscribed_at AS unsubscribed_at,
       if(m.is_email, if(ifNull(d.provider, '') = '', 'other', ifNull(d.provider, '')), '') AS mailbox_provider,
       if(NOT m.is_email AND length(m.national) = 10 AND startsWith(m.national, '0'),
          if(ifNull(c.carrier, '') = '', 'other', ifNull(c.carrier, '')), '') AS carrier
FROM (
    SELECT workspace_id, requested_at, action, provider, delivered_at, bounced_at, failed_at, opened_at, clicked_at,
           complained_at, unsubscribed_at,
           position(recipient, '@') > 0 AS is_email,
           lower(trimBoth(splitByChar('@', recipient)[-1])) AS domain,
           replaceRegexpAll(recipient, '[^0-9]', '') AS digits,
           if(length(digits) = 11 AND startsWith(digits, '84'), concat('0', substring(digits, 3)), digits) AS national
    FROM {db}.messages_by_workspace FINAL
) AS m
LEFT JOIN (SELECT domain, argMax(provider, set_at) AS provider FROM {db}.mailbox_domains GROUP BY domain) AS d
    ON d.domain = m.domain
LEFT JOIN (SELECT prefix, argMax(carrier, set_at) AS carrier FROM {db}.carrier_prefixes GROUP BY prefix) AS c
    ON c.prefix = substring(m.national, 1, 3);

CREATE OR REPLACE VIEW {db}.recipient_health AS
SELECT workspace_id, toDate(requested_at) AS day, action, provider, mailbox_provider, carrier,
       count() AS messages,
       countIf(delivered_at IS NOT NULL) AS delivered,
       countIf(bounced_at IS NOT NULL) AS bounced,
       countIf(failed_at IS NOT NULL) AS failed,
       countIf(opened_at IS NOT NULL) AS opened,
       countIf(clicked_at IS NOT NULL) AS clicked,
       countIf(complained_at IS NOT NULL) AS complained,
       countIf(unsubscribed_at IS NOT NULL) AS unsubscribed
FROM {db}.classified_messages
GROUP BY workspace_id, day, action, provider, mailbox_provider, carrier;

-- Health per workspace: one shop's bounces do not dilute into, or raise, another's rates.
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
           countIf(delivered_at IS NOT NULL) AS delivered,
           countIf(bounced_at IS NOT NULL) AS bounced,
           countIf(failed_at IS NOT NULL) AS failed,
           countIf(complained_at IS NOT NULL) AS complained,
           countIf(unsubscribed_at IS NOT NULL) AS unsubscribed
    FROM (
        SELECT arrayJoin([('24h', toUInt32(86400)), ('7d', toUInt32(604800))]) AS w,
               arrayJoin(if(mailbox_provider = '', ['*'], ['*', mailbox_provider])) AS mailbox,
               workspace_id, requested_at, action, provider, delivered_at, bounced_at, failed_at, complained_at,
               unsubscribed_at
        FROM {db}.classified_messages
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

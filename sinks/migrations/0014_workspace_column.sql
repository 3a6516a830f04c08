-- Workspaces, first step: the workspace a send belongs to (send requests' optional workspace_id,
-- '' when a producer names none) is carried by every status change and kept in the raw tables, so
-- that the views keyed by workspace that come next (issue 17) find it for every message sent from
-- now on. Rows written before keep ''. The ingest tables are Null tables: the sink inserts JSON lines
-- by column name, so the new column is filled from the records' field. The ingest views take it in
-- place (MODIFY QUERY): a view dropped and created again would let an insert by a worker still
-- running the old code pass through the Null table unseen in between.
ALTER TABLE {db}.status_changes_raw ADD COLUMN IF NOT EXISTS workspace_id LowCardinality(String) DEFAULT '' AFTER event_id;

ALTER TABLE {db}.engagement_events_raw ADD COLUMN IF NOT EXISTS workspace_id LowCardinality(String) DEFAULT '' AFTER requested_at;

ALTER TABLE {db}.status_changes_ingest ADD COLUMN IF NOT EXISTS workspace_id String DEFAULT '' AFTER event_id;

ALTER TABLE {db}.engagement_events_ingest ADD COLUMN IF NOT EXISTS workspace_id String DEFAULT '';

ALTER TABLE {db}.status_changes_ingest_mv MODIFY QUERY
SELECT change_id, message_id, status, previous_status, current_status, inferred,
       fromUnixTimestamp64Milli(occurred_at, 'UTC') AS occurred_at,
       fromUnixTimestamp64Milli(recorded_at, 'UTC') AS recorded_at,
       action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
       fromUnixTimestamp64Milli(requested_at, 'UTC') AS requested_at,
       reason_code, reason, bounce_type,
       fromUnixTimestamp64Milli(reason_at, 'UTC') AS reason_at,
       event_id, workspace_id, _topic, _partition, _offset
FROM {db}.status_changes_ingest;

ALTER TABLE {db}.engagement_events_ingest_mv MODIFY QUERY
SELECT event_id, message_id, status, fromUnixTimestamp64Milli(occurred_at, 'UTC') AS occurred_at, url,
       is_machine, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
       fromUnixTimestamp64Milli(requested_at, 'UTC') AS requested_at, workspace_id
FROM {db}.engagement_events_ingest;

-- The analysts' views of the raw tables show it too.
CREATE OR REPLACE VIEW {db}.status_changes AS
SELECT change_id, message_id, status, previous_status, current_status, inferred, occurred_at,
       recorded_at, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
       requested_at, reason_code, reason, bounce_type, reason_at, workspace_id
FROM {db}.status_changes_raw FINAL
WHERE status != '';

CREATE OR REPLACE VIEW {db}.engagement_events AS
SELECT event_id, message_id, status, occurred_at, url, is_machine, action, provider, customer_id,
       recipient, flow_id, campaign_id, step_id, requested_at, workspace_id
FROM {db}.engagement_events_raw FINAL;

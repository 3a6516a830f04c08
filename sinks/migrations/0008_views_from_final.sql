-- current_status_daily and failure_reasons read messages_agg with FINAL instead of the messages
-- view. Both fold the same rows (FINAL merges rows with equal sorting keys, which are the messages
-- view's GROUP BY keys; the partition key is a function of one of them), but FINAL merges in key
-- order, part by part, where the view's GROUP BY held every message's key in memory: at 10 M
-- messages the dashboard's current-status panel took 14-21 s and the failure reasons ran past the
-- 30 s limit or the 256 MiB query budget (bench/results/dashboard-*.json).
CREATE OR REPLACE VIEW {db}.current_status_daily AS
SELECT toDate(requested_at) AS day, action, flow_id, campaign_id, step_id,
       transform(current_rank, [1, 2, 3, 4, 5, 6, 8],
           ['sent', 'processing', 'delivered', 'succeeded', 'failed', 'bounced', 'clicked'],
           if(current_rank = 7, if(action = 'ai_call', 'answered', 'opened'), '')) AS current_status,
       count() AS messages
FROM {db}.messages_agg FINAL
GROUP BY day, action, flow_id, campaign_id, step_id, current_status;

CREATE OR REPLACE VIEW {db}.failure_reasons AS
SELECT toDate(requested_at) AS day, action, provider, failure.2 AS reason_code, failure.3 AS reason,
       count() AS messages
FROM {db}.messages_agg FINAL
WHERE failed_at IS NOT NULL
GROUP BY day, action, provider, reason_code, reason;

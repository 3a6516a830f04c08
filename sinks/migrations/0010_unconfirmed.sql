-- Unconfirmed messages (docs/contract.md §5): past the expected time to a provider's receipt, still
-- "sent", "processing" or awaiting a first result. No status is invented: the view lists them with
-- the status they have. The hours per action come from the settings (SENDTRACK_RECEIPT_EXPECTED_HOURS),
-- written here by sinks/expectations.py at every start; the latest row per action counts.
CREATE TABLE IF NOT EXISTS {db}.receipt_expectations
(
    action LowCardinality(String),
    hours  Float64,
    set_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(set_at)
ORDER BY action;

CREATE VIEW IF NOT EXISTS {db}.unconfirmed AS
SELECT m.message_id, m.action, m.provider, m.customer_id, m.recipient, m.flow_id, m.campaign_id, m.step_id,
       m.requested_at, m.current_status, e.hours AS expected_hours,
       round(dateDiff('second', m.requested_at, now64(3)) / 3600, 1) AS waiting_hours
FROM {db}.messages AS m
INNER JOIN (SELECT action, argMax(hours, set_at) AS hours FROM {db}.receipt_expectations GROUP BY action) AS e
    ON m.action = e.action
WHERE m.current_status IN ('', 'sent', 'processing') AND e.hours > 0
  AND m.requested_at < now64(3) - toIntervalSecond(toInt64(e.hours * 3600));

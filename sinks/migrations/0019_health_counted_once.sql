-- The deliverability alerts' evaluation, cheaper as the week's messages grow (issue 19,
-- docs/performance.md "Twenty-fourth session"). 0018's view turned every message of the last 7 days
-- into two to four rows (one per window, and one per mailbox provider and '*') before counting them:
-- at 5 M messages a week that is 10-20 M rows through the aggregation on every evaluation. The
-- counts are sums, so this view counts each message once, by workspace, action, provider, mailbox
-- provider and whether it was requested in the last 24 hours, and spreads those few groups over the
-- windows and '*' afterwards. The rows, values and types are 0018's (its 7 days were both 7 calendar
-- days in the engine's time zone and 604,800 s, whichever is shorter: so are these).
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
           toUInt64(sum(n)) AS messages,
           toUInt64(sum(n_delivered)) AS delivered,
           toUInt64(sum(n_bounced)) AS bounced,
           toUInt64(sum(n_failed)) AS failed,
           toUInt64(sum(n_complained)) AS complained,
           toUInt64(sum(n_unsubscribed)) AS unsubscribed
    FROM (
        SELECT arrayJoin([('24h', toUInt8(1)), ('7d', toUInt8(0))]) AS w,
               arrayJoin(if(mailbox_provider = '', ['*'], ['*', mailbox_provider])) AS mailbox,
               workspace_id, action, provider, last_day, n, n_delivered, n_bounced, n_failed, n_complained,
               n_unsubscribed
        FROM (
            SELECT workspace_id, action, provider, mailbox_provider,
                   toUInt8(requested_at >= now64(3) - toIntervalSecond(86400)) AS last_day,
                   count() AS n, sum(delivered) AS n_delivered, sum(bounced) AS n_bounced, sum(failed) AS n_failed,
                   sum(complained) AS n_complained, sum(unsubscribed) AS n_unsubscribed
            FROM {db}.message_health FINAL
            WHERE requested_at >= now64(3) - toIntervalDay(7) AND requested_at >= now64(3) - toIntervalSecond(604800)
            GROUP BY workspace_id, action, provider, mailbox_provider, last_day
        )
    )
    WHERE last_day >= w.2
    GROUP BY workspace_id, period, action, provider, mailbox
) AS g
CROSS JOIN (
    SELECT metric, argMax(warning, set_at) AS warning, argMax(critical, set_at) AS critical,
           argMax(min_volume, set_at) AS min_volume
    FROM {db}.health_thresholds WHERE metric IN ('bounce', 'complaint', 'failure', 'unsubscribe') GROUP BY metric
) AS t;

-- Deliverability health (docs/contract.md): rolling 24-hour and 7-day bounce, complaint, failure and
-- unsubscribe rates per action, provider and mailbox provider, judged against thresholds from the
-- settings (SENDTRACK_HEALTH_THRESHOLDS over sendtrack/settings.py's HEALTH_THRESHOLDS, and
-- SENDTRACK_HEALTH_MIN_MESSAGES), written here by sinks/expectations.py at every start; the latest
-- row per rate counts. Rates are fractions (0.05 = 5 %).
CREATE TABLE IF NOT EXISTS {db}.health_thresholds
(
    metric     LowCardinality(String),
    warning    Float64,
    critical   Float64,
    min_volume UInt64,
    set_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(set_at)
ORDER BY metric;

-- Every message (its time, action, provider and outcome times) with who receives it: the mailbox provider of an email recipient (its domain, from
-- mailbox_domains) and the carrier of a Vietnamese mobile number (its prefix, from carrier_prefixes).
-- Email recipients have a mailbox_provider and carrier ''; Vietnamese mobile numbers the reverse;
-- anything else has both ''. 'other' is a domain or prefix the mappings do not know. ifNull: a
-- reader's session may run with join_use_nulls = 1, where an unmatched row's columns are NULL.
-- It reads messages_agg with FINAL, like the views of migration 0008 (the same rows as the messages
-- view, folded part by part instead of grouped in memory).
CREATE VIEW IF NOT EXISTS {db}.classified_messages AS
SELECT m.requested_at AS requested_at, m.action AS action, m.provider AS provider,
       m.delivered_at AS delivered_at, m.bounced_at AS bounced_at, m.failed_at AS failed_at,
       m.opened_at AS opened_at, m.clicked_at AS clicked_at, m.complained_at AS complained_at,
       m.unsubscribed_at AS unsubscribed_at,
       if(m.is_email, if(ifNull(d.provider, '') = '', 'other', ifNull(d.provider, '')), '') AS mailbox_provider,
       if(NOT m.is_email AND length(m.national) = 10 AND startsWith(m.national, '0'),
          if(ifNull(c.carrier, '') = '', 'other', ifNull(c.carrier, '')), '') AS carrier
FROM (
    SELECT requested_at, action, provider, delivered_at, bounced_at, failed_at, opened_at, clicked_at,
           complained_at, unsubscribed_at,
           position(recipient, '@') > 0 AS is_email,
           lower(trimBoth(splitByChar('@', recipient)[-1])) AS domain,
           replaceRegexpAll(recipient, '[^0-9]', '') AS digits,
           if(length(digits) = 11 AND startsWith(digits, '84'), concat('0', substring(digits, 3)), digits) AS national
    FROM {db}.messages_agg FINAL
) AS m
LEFT JOIN (SELECT domain, argMax(provider, set_at) AS provider FROM {db}.mailbox_domains GROUP BY domain) AS d
    ON d.domain = m.domain
LEFT JOIN (SELECT prefix, argMax(carrier, set_at) AS carrier FROM {db}.carrier_prefixes GROUP BY prefix) AS c
    ON c.prefix = substring(m.national, 1, 3);

-- The same rows as migration 0012's, now read from classified_messages.
CREATE OR REPLACE VIEW {db}.recipient_health AS
SELECT toDate(requested_at) AS day, action, provider, mailbox_provider, carrier,
       count() AS messages,
       countIf(delivered_at IS NOT NULL) AS delivered,
       countIf(bounced_at IS NOT NULL) AS bounced,
       countIf(failed_at IS NOT NULL) AS failed,
       countIf(opened_at IS NOT NULL) AS opened,
       countIf(clicked_at IS NOT NULL) AS clicked,
       countIf(complained_at IS NOT NULL) AS complained,
       countIf(unsubscribed_at IS NOT NULL) AS unsubscribed
FROM {db}.classified_messages
GROUP BY day, action, provider, mailbox_provider, carrier;

-- One row per period ('24h', '7d': messages requested in the last 24 hours or 7 days), action,
-- provider, mailbox provider ('*' = all of the provider's recipients; an email message also counts
-- under its own mailbox provider) and rate (metric). A message counts once per rate: bounced (and
-- failed, which includes bounces) over the messages requested; complained and unsubscribed over the
-- messages delivered. `measured` is false under the minimum volume, and the state is then 'ok'
-- whatever the rate: 1 bounce in 3 sends is not an alert. Every action has the four rates here (the
-- report keeps those its action can reach); a rate with no thresholds row has no row.
CREATE VIEW IF NOT EXISTS {db}.deliverability_health AS
SELECT g.period AS period, g.action AS action, g.provider AS provider, g.mailbox AS mailbox_provider,
       t.metric AS metric,
       multiIf(t.metric = 'bounce', g.bounced, t.metric = 'complaint', g.complained,
               t.metric = 'failure', g.failed, t.metric = 'unsubscribe', g.unsubscribed, 0) AS events,
       if(t.metric IN ('bounce', 'failure'), g.messages, g.delivered) AS volume,
       if(volume = 0, 0, events / volume) AS rate,
       t.warning AS warning, t.critical AS critical, t.min_volume AS min_volume,
       volume >= t.min_volume AS measured,
       multiIf(NOT measured, 'ok', rate >= t.critical, 'critical', rate >= t.warning, 'warning', 'ok') AS state
FROM (
    SELECT w.1 AS period, action, provider, mailbox,
           count() AS messages,
           countIf(delivered_at IS NOT NULL) AS delivered,
           countIf(bounced_at IS NOT NULL) AS bounced,
           countIf(failed_at IS NOT NULL) AS failed,
           countIf(complained_at IS NOT NULL) AS complained,
           countIf(unsubscribed_at IS NOT NULL) AS unsubscribed
    FROM (
        SELECT arrayJoin([('24h', toUInt32(86400)), ('7d', toUInt32(604800))]) AS w,
               arrayJoin(if(mailbox_provider = '', ['*'], ['*', mailbox_provider])) AS mailbox,
               requested_at, action, provider, delivered_at, bounced_at, failed_at, complained_at, unsubscribed_at
        FROM {db}.classified_messages
        WHERE requested_at >= now64(3) - toIntervalDay(7)
    )
    WHERE requested_at >= now64(3) - toIntervalSecond(w.2)
    GROUP BY period, action, provider, mailbox
) AS g
CROSS JOIN (
    SELECT metric, argMax(warning, set_at) AS warning, argMax(critical, set_at) AS critical,
           argMax(min_volume, set_at) AS min_volume
    FROM {db}.health_thresholds WHERE metric IN ('bounce', 'complaint', 'failure', 'unsubscribe') GROUP BY metric
) AS t;

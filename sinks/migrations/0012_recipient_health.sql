-- Deliverability by who receives: mailbox provider (email domain) and Vietnamese carrier (phone
-- prefix). The mappings are maintained in sendtrack/recipients.py and written here by the sink at
-- every start; the latest row per key counts, and '' means unknown.
CREATE TABLE IF NOT EXISTS {db}.mailbox_domains
(
    domain   String,
    provider LowCardinality(String),
    set_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(set_at)
ORDER BY domain;

CREATE TABLE IF NOT EXISTS {db}.carrier_prefixes
(
    prefix  String,
    carrier LowCardinality(String),
    set_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(set_at)
ORDER BY prefix;

-- One row per send day, action, provider, mailbox provider and carrier: messages, and how many were
-- delivered, bounced, failed, opened, clicked, complained about or unsubscribed (distinct messages;
-- a message counts once per column). Email recipients have a mailbox_provider and carrier '';
-- Vietnamese mobile numbers the reverse; anything else has both ''. ifNull: a reader's session may
-- run with join_use_nulls = 1, where an unmatched row's columns are NULL.
CREATE VIEW IF NOT EXISTS {db}.recipient_health AS
SELECT toDate(m.requested_at) AS day, m.action AS action, m.provider AS provider,
       if(m.is_email, if(ifNull(d.provider, '') = '', 'other', ifNull(d.provider, '')), '') AS mailbox_provider,
       if(NOT m.is_email AND length(m.national) = 10 AND startsWith(m.national, '0'),
          if(ifNull(c.carrier, '') = '', 'other', ifNull(c.carrier, '')), '') AS carrier,
       count() AS messages,
       countIf(m.delivered_at IS NOT NULL) AS delivered,
       countIf(m.bounced_at IS NOT NULL) AS bounced,
       countIf(m.failed_at IS NOT NULL) AS failed,
       countIf(m.opened_at IS NOT NULL) AS opened,
       countIf(m.clicked_at IS NOT NULL) AS clicked,
       countIf(m.complained_at IS NOT NULL) AS complained,
       countIf(m.unsubscribed_at IS NOT NULL) AS unsubscribed
FROM (
    SELECT requested_at, action, provider, delivered_at, bounced_at, failed_at, opened_at, clicked_at,
           complained_at, unsubscribed_at,
           position(recipient, '@') > 0 AS is_email,
           lower(trimBoth(splitByChar('@', recipient)[-1])) AS domain,
           replaceRegexpAll(recipient, '[^0-9]', '') AS digits,
           if(length(digits) = 11 AND startsWith(digits, '84'), concat('0', substring(digits, 3)), digits) AS national
    FROM {db}.messages
) AS m
LEFT JOIN (SELECT domain, argMax(provider, set_at) AS provider FROM {db}.mailbox_domains GROUP BY domain) AS d
    ON d.domain = m.domain
LEFT JOIN (SELECT prefix, argMax(carrier, set_at) AS carrier FROM {db}.carrier_prefixes GROUP BY prefix) AS c
    ON c.prefix = substring(m.national, 1, 3)
GROUP BY day, action, provider, mailbox_provider, carrier;

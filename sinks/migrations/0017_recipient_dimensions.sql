-- Mailbox provider and carrier stored at ingestion (issue 17, docs/contract.md "Recipient
-- dimensions"). Until now the views derived them from the recipient each time they were read, so a
-- change to the mappings rewrote history, and an erased recipient's messages moved to "unknown".
-- From here on the ingest view classifies each status change as it arrives, from the recipient and
-- the mappings that sendtrack/recipients.py maintains in mailbox_domains and carrier_prefixes
-- (written by the sink at every start, before it inserts): an email recipient gets its domain's
-- mailbox provider ('other' for a domain not listed) and carrier ''; a Vietnamese mobile number gets
-- its prefix's carrier ('other' for a prefix not listed) and mailbox provider ''; anything else ''
-- for both. The classes are kept in status_changes_raw and folded per message (max) in
-- messages_by_workspace, from where classified_messages, recipient_health and
-- deliverability_health read them. A message classified twice differently (its changes straddle a
-- mapping change) keeps the greater name; a change to the mappings applies to changes ingested after
-- it, and past ones keep their class.
--
-- As in 0014, the ingest view changes in place (MODIFY QUERY): an insert by a worker still running
-- the old code is classified too. The columns come first, then the views that fill them.
ALTER TABLE {db}.status_changes_raw ADD COLUMN IF NOT EXISTS mailbox_provider LowCardinality(String) DEFAULT '';

ALTER TABLE {db}.status_changes_raw ADD COLUMN IF NOT EXISTS carrier LowCardinality(String) DEFAULT '';

ALTER TABLE {db}.messages_by_workspace ADD COLUMN IF NOT EXISTS mailbox_provider SimpleAggregateFunction(max, LowCardinality(String)) DEFAULT '';

ALTER TABLE {db}.messages_by_workspace ADD COLUMN IF NOT EXISTS carrier SimpleAggregateFunction(max, LowCardinality(String)) DEFAULT '';

ALTER TABLE {db}.messages_by_workspace_mv MODIFY QUERY
SELECT
    workspace_id, message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
    requested_at,
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
    occurred_at AS updated_at,
    mailbox_provider, carrier
FROM {db}.status_changes_raw;

-- ifNull: the writer's session could run with join_use_nulls = 1, where an unmatched row's columns
-- are NULL. The recipient is parsed as sendtrack/recipients.py does (tests/unit/test_recipients.py
-- checks both agree on every example). An email address is not searched for digits: a regular
-- expression over every character of every address cost the sink's inserts a tenth more.
ALTER TABLE {db}.status_changes_ingest_mv MODIFY QUERY
SELECT s.change_id AS change_id, s.message_id AS message_id, s.status AS status,
       s.previous_status AS previous_status, s.current_status AS current_status, s.inferred AS inferred,
       fromUnixTimestamp64Milli(s.occurred_at, 'UTC') AS occurred_at,
       fromUnixTimestamp64Milli(s.recorded_at, 'UTC') AS recorded_at,
       s.action AS action, s.provider AS provider, s.customer_id AS customer_id, s.recipient AS recipient,
       s.flow_id AS flow_id, s.campaign_id AS campaign_id, s.step_id AS step_id,
       fromUnixTimestamp64Milli(s.requested_at, 'UTC') AS requested_at,
       s.reason_code AS reason_code, s.reason AS reason, s.bounce_type AS bounce_type,
       fromUnixTimestamp64Milli(s.reason_at, 'UTC') AS reason_at,
       s.event_id AS event_id, s.workspace_id AS workspace_id, s._topic AS _topic, s._partition AS _partition,
       s._offset AS _offset,
       if(s.is_email, if(ifNull(d.provider, '') = '', 'other', ifNull(d.provider, '')), '') AS mailbox_provider,
       if(NOT s.is_email AND length(s.national) = 10 AND startsWith(s.national, '0'),
          if(ifNull(c.carrier, '') = '', 'other', ifNull(c.carrier, '')), '') AS carrier
FROM (
    SELECT *,
           position(recipient, '@') > 0 AS is_email,
           lower(trimBoth(splitByChar('@', recipient)[-1])) AS domain,
           if(position(recipient, '@') > 0, '', replaceRegexpAll(recipient, '[^0-9]+', '')) AS digits,
           if(length(digits) = 11 AND startsWith(digits, '84'), concat('0', substring(digits, 3)), digits) AS national
    FROM {db}.status_changes_ingest
) AS s
LEFT JOIN (SELECT domain, argMax(provider, set_at) AS provider FROM {db}.mailbox_domains GROUP BY domain) AS d
    ON d.domain = s.domain
LEFT JOIN (SELECT prefix, argMax(carrier, set_at) AS carrier FROM {db}.carrier_prefixes GROUP BY prefix) AS c
    ON c.prefix = substring(s.national, 1, 3);

-- Messages written before: one more row each with their classes (every other column neutral under
-- its fold: rank 0, no milestone time, the failure placeholder, the same updated_at), so the folded
-- row gains them and nothing else moves. Rerunning it adds rows that change nothing. Raw rows
-- written before keep '' (only the views below read the classes, from messages_by_workspace).
INSERT INTO {db}.messages_by_workspace (workspace_id, message_id, action, provider, customer_id, recipient, flow_id,
                                        campaign_id, step_id, requested_at, current_rank, failure, updated_at,
                                        mailbox_provider, carrier)
SELECT workspace_id, message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
       requested_at, 0, tuple(toDateTime64('2299-12-31 00:00:00', 3, 'UTC'), '', '', ''), updated_at,
       mailbox, phone_carrier
FROM (
    SELECT m.workspace_id AS workspace_id, m.message_id AS message_id, m.action AS action, m.provider AS provider,
           m.customer_id AS customer_id, m.recipient AS recipient, m.flow_id AS flow_id,
           m.campaign_id AS campaign_id, m.step_id AS step_id, m.requested_at AS requested_at,
           m.updated_at AS updated_at,
           if(m.is_email, if(ifNull(d.provider, '') = '', 'other', ifNull(d.provider, '')), '') AS mailbox,
           if(NOT m.is_email AND length(m.national) = 10 AND startsWith(m.national, '0'),
              if(ifNull(c.carrier, '') = '', 'other', ifNull(c.carrier, '')), '') AS phone_carrier
    FROM (
        SELECT workspace_id, message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
               requested_at, updated_at,
               position(recipient, '@') > 0 AS is_email,
               lower(trimBoth(splitByChar('@', recipient)[-1])) AS domain,
               if(position(recipient, '@') > 0, '', replaceRegexpAll(recipient, '[^0-9]+', '')) AS digits,
               if(length(digits) = 11 AND startsWith(digits, '84'), concat('0', substring(digits, 3)), digits) AS national
        FROM {db}.messages_by_workspace FINAL
        WHERE mailbox_provider = '' AND carrier = '' AND recipient != ''
    ) AS m
    LEFT JOIN (SELECT domain, argMax(provider, set_at) AS provider FROM {db}.mailbox_domains GROUP BY domain) AS d
        ON d.domain = m.domain
    LEFT JOIN (SELECT prefix, argMax(carrier, set_at) AS carrier FROM {db}.carrier_prefixes GROUP BY prefix) AS c
        ON c.prefix = substring(m.national, 1, 3)
)
WHERE mailbox != '' OR phone_carrier != '';

-- The views show the classes, and classify nothing themselves any more.
CREATE OR REPLACE VIEW {db}.status_changes AS
SELECT change_id, message_id, status, previous_status, current_status, inferred, occurred_at,
       recorded_at, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
       requested_at, reason_code, reason, bounce_type, reason_at, workspace_id, mailbox_provider, carrier
FROM {db}.status_changes_raw FINAL
WHERE status != '';

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
    max(updated_at) AS updated_at,
    max(mailbox_provider) AS mailbox_provider,
    max(carrier) AS carrier
FROM {db}.messages_by_workspace
GROUP BY workspace_id, message_id, action, provider, customer_id, recipient, flow_id, campaign_id, step_id,
         requested_at;

CREATE OR REPLACE VIEW {db}.classified_messages AS
SELECT workspace_id, requested_at, action, provider, delivered_at, bounced_at, failed_at, opened_at, clicked_at,
       complained_at, unsubscribed_at, mailbox_provider, carrier
FROM {db}.messages_by_workspace FINAL;

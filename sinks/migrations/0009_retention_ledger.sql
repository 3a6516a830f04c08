-- Retention (docs/retention.md): the TTL each table has, as the settings asked for it when it was
-- last applied. sinks/retention.py compares the settings with this ledger at every start and
-- changes a table's TTL (ALTER TABLE ... MODIFY TTL / REMOVE TTL) only when they differ.
CREATE TABLE IF NOT EXISTS {db}.retention_applied
(
    table      String,
    days       UInt32,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY table;

-- The funnel's old states table, replaced by funnel_daily_states in 0006 (whose parts it now shares
-- through hard links; dropping it frees nothing the new table uses).
DROP TABLE IF EXISTS {db}.funnel_daily_agg;

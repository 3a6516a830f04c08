-- The rollups that 0015 copied into tables keyed by workspace. Apart from 0015 so that a rerun of
-- 0015 after a partial run still finds them (as 0007 after 0006).
DROP TABLE IF EXISTS {db}.messages_agg;

DROP TABLE IF EXISTS {db}.funnel_daily_states;

DROP TABLE IF EXISTS {db}.engagement_daily_states;

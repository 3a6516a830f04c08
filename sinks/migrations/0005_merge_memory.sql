-- Merges of the aggregating tables read every column stream of every part they merge at once, with
-- a read buffer and a decompressed block (up to 1 MiB each) per stream: a merge of 8 parts of
-- messages_agg (about 45 streams: many Nullable columns) held about 200 MB, in the worker's own
-- process when ClickHouse is embedded. Fewer parts per merge and smaller compression blocks bound
-- that; the cost is more merge rounds (write amplification), which these tables can afford.
ALTER TABLE {db}.messages_agg MODIFY SETTING max_parts_to_merge_at_once = 4,
    min_compress_block_size = 65536, max_compress_block_size = 131072;
ALTER TABLE {db}.funnel_daily_agg MODIFY SETTING max_parts_to_merge_at_once = 4,
    min_compress_block_size = 65536, max_compress_block_size = 131072;

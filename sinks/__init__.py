"""Where events land: ClickHouse, its migrations and the report queries."""

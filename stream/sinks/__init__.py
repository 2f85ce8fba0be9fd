"""Where finished windows go: ClickHouse."""

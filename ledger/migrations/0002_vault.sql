-- Encrypted connector credentials (one row per connector). Kept apart from the append-only
-- config_log so an uninstall can really purge them: the sink deletes the row.
CREATE TABLE IF NOT EXISTS vault (
    tenant_id    LowCardinality(String),
    connector_id String,
    at           DateTime64(6, 'UTC'),
    id           String,
    record       String
)
ENGINE = ReplacingMergeTree(at)
ORDER BY (tenant_id, connector_id);

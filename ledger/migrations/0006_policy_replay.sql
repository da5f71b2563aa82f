-- Every receipt cites the policy versions that judged it and, when shadow rules are in force,
-- their would-be verdict (decisions §37). JSON text; null on receipts written before.
ALTER TABLE receipts ADD COLUMN IF NOT EXISTS policy_versions Nullable(String);
ALTER TABLE receipts ADD COLUMN IF NOT EXISTS shadow_verdict Nullable(String);

-- Policy replay jobs (POST /v1/guardrails/replays): one row per version of a job (running →
-- progress → complete/failed); read the newest version. The doc holds the request and result.
CREATE TABLE IF NOT EXISTS guardrail_replays (
    tenant_id   LowCardinality(String),
    livemode    Bool,
    created_at  DateTime64(6, 'UTC'),
    id          String,
    version     UInt32,
    doc         String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant_id, livemode, id);

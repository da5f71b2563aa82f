-- Webhook deliveries (spec §6): one row per version of a delivery (created → each attempt's
-- outcome → a manual retry …); read with FINAL. The body is the exact JSON sent, fixed at
-- creation. Pending rows are the durable queue the api's dispatcher reloads after a restart.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    tenant_id          LowCardinality(String),
    livemode           Bool,
    endpoint_id        String,
    created_at         DateTime64(6, 'UTC'),
    id                 String,
    version            UInt32,
    type               LowCardinality(String),
    lane               String,
    object_id          String,
    occurred_at        DateTime64(6, 'UTC'),
    status             LowCardinality(String),
    attempts           UInt32,
    next_attempt_at    Nullable(DateTime64(6, 'UTC')),
    window_start       DateTime64(6, 'UTC'),
    last_status_code   Nullable(UInt16),
    last_error         Nullable(String),
    last_attempt_at    Nullable(DateTime64(6, 'UTC')),
    body               String CODEC(ZSTD(3)),
    INDEX idx_id id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_status status TYPE set(8) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(created_at)
ORDER BY (tenant_id, livemode, endpoint_id, created_at, id);

-- Every HTTP attempt of a delivery: append-only.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    tenant_id          LowCardinality(String),
    livemode           Bool,
    endpoint_id        String,
    delivery_id        String,
    attempt            UInt32,
    at                 DateTime64(6, 'UTC'),
    status_code        Nullable(UInt16),
    latency_ms         Float64,
    error              Nullable(String),
    response_excerpt   String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (tenant_id, livemode, endpoint_id, delivery_id, attempt);

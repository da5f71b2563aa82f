-- Events, as accepted by the ingest agent. Ordered for "this tenant, newest first" reads;
-- partitioned by month so old months can be dropped or moved wholesale.
-- ReplacingMergeTree is only a backstop: the sink already never inserts an id twice.
CREATE TABLE IF NOT EXISTS events (
    tenant_id       LowCardinality(String),
    livemode        Bool,
    created_at      DateTime64(6, 'UTC'),
    id              String,
    reseller_id     Nullable(String),
    workspace_id    Nullable(String),
    source          LowCardinality(String),
    event_type      LowCardinality(String),
    correlation_id  String,
    entity_key      Nullable(String),
    idempotency_key Nullable(String),
    agent_id        Nullable(String),
    session_id      Nullable(String),
    request_id      Nullable(String),
    payload         String CODEC(ZSTD(3)),
    INDEX idx_id id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_correlation correlation_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (tenant_id, livemode, created_at, id);

-- Refusal records for envelopes that could not be processed (tenant_id '' = no known tenant).
CREATE TABLE IF NOT EXISTS dead_letters (
    tenant_id    LowCardinality(String),
    livemode     Bool,
    created_at   DateTime64(6, 'UTC'),
    id           String,
    reason       LowCardinality(String),
    message      String,
    errors       String,
    raw          String CODEC(ZSTD(3)),
    source_topic LowCardinality(String),
    partition    UInt32,
    offset       UInt64,
    INDEX idx_id id TYPE bloom_filter(0.001) GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (tenant_id, livemode, created_at, id);

-- Every config change (the audit trail), and the copy the embedded stack restores from when
-- its memory-only broker starts empty.
CREATE TABLE IF NOT EXISTS config_log (
    tenant_id  LowCardinality(String),
    at         DateTime64(6, 'UTC'),
    id         String,
    kind       LowCardinality(String),
    version    UInt32,
    actor      String,
    record     String
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, at, id);

-- API Idempotency-Key records: scoped per tenant, mode and route; kept 24 h.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant_id   LowCardinality(String),
    livemode    Bool,
    route       String,
    key         String,
    body_hash   String,
    status      UInt16,
    response    String,
    request_id  String,
    created_at  DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (tenant_id, livemode, route, key)
TTL toDateTime(created_at) + INTERVAL 1 DAY;

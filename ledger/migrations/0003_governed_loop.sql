-- Plans: one row per version (proposed → approved/vetoed/expired …); read with FINAL or argMax.
CREATE TABLE IF NOT EXISTS plans (
    tenant_id          LowCardinality(String),
    livemode           Bool,
    created_at         DateTime64(6, 'UTC'),
    id                 String,
    version            UInt32,
    updated_at         DateTime64(6, 'UTC'),
    operator_id        String,
    operator_name      LowCardinality(String),
    guardrail_version  UInt32,
    event_id           Nullable(String),
    correlation_id     String,
    status             LowCardinality(String),
    approver           Nullable(String),
    expires_at         Nullable(DateTime64(6, 'UTC')),
    doc                String CODEC(ZSTD(3)),
    INDEX idx_id id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_event event_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(created_at)
ORDER BY (tenant_id, livemode, created_at, id);

-- Actions as proposed (immutable); their dispositions are the receipts.
CREATE TABLE IF NOT EXISTS actions (
    tenant_id          LowCardinality(String),
    livemode           Bool,
    proposed_at        DateTime64(6, 'UTC'),
    id                 String,
    plan_id            String,
    operator_id        String,
    event_id           Nullable(String),
    correlation_id     String,
    connector_id       Nullable(String),
    tool               LowCardinality(String),
    entity_key         String,
    idempotency_key    String,
    value              Nullable(Float64),
    undo_of            Nullable(String),
    doc                String CODEC(ZSTD(3)),
    INDEX idx_id id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_plan plan_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(proposed_at)
ORDER BY (tenant_id, livemode, proposed_at, id);

-- Receipts: append-only, one per disposition. Ordered for "this tenant, newest first" and
-- analyst scans by time; every receipt names the operator, its guardrail version and the rule.
CREATE TABLE IF NOT EXISTS receipts (
    tenant_id          LowCardinality(String),
    livemode           Bool,
    created_at         DateTime64(6, 'UTC'),
    id                 String,
    operator_id        String,
    operator_name      LowCardinality(String),
    guardrail_version  UInt32,
    event_id           Nullable(String),
    plan_id            String,
    action_id          Nullable(String),
    correlation_id     String,
    connector_id       Nullable(String),
    connector_name     Nullable(String),
    tool               LowCardinality(Nullable(String)),
    entity_key         Nullable(String),
    idempotency_key    Nullable(String),
    value              Nullable(Float64),
    decision           LowCardinality(String),
    outcome            LowCardinality(String),
    rule               Nullable(String),
    reason             String,
    result             Nullable(String),
    error              Nullable(String),
    approver           Nullable(String),
    request_id         Nullable(String),
    latency_ms         Nullable(Float64),
    proposed_at        Nullable(DateTime64(6, 'UTC')),
    INDEX idx_id id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_action action_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_plan plan_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_entity entity_key TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_corr correlation_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (tenant_id, livemode, created_at, id);

-- Receipt export jobs.
CREATE TABLE IF NOT EXISTS exports (
    tenant_id   LowCardinality(String),
    livemode    Bool,
    created_at  DateTime64(6, 'UTC'),
    id          String,
    version     UInt32,
    doc         String
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant_id, livemode, id);

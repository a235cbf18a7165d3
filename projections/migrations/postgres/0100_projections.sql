-- Read models built from the event log. Versions 1..=99 belong to the relay's own
-- tables; projections use 100 and up in the same database.
-- Portable DDL only (TEXT, BIGINT, PRIMARY KEY/UNIQUE): this file and its PostgreSQL
-- twin are identical. Money is BIGINT nanodollars (1e-9 USD); time is BIGINT epoch ms
-- plus a TEXT UTC day 'YYYY-MM-DD'. Absent ids are stored as '' so they can be part of
-- primary keys.

-- Runner state.
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    projection TEXT PRIMARY KEY,
    last_seq   BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);

-- Projection "usage": one row per usage.recorded event id.
CREATE TABLE IF NOT EXISTS usage_ledger (
    event_id              TEXT PRIMARY KEY,
    position              BIGINT NOT NULL,
    occurred_at_ms        BIGINT NOT NULL,
    day                   TEXT NOT NULL,
    tenant                TEXT NOT NULL,
    api_key               TEXT NOT NULL,
    account               TEXT NOT NULL,
    model                 TEXT NOT NULL,
    request_id            TEXT NOT NULL,
    attempt               BIGINT NOT NULL,
    status                BIGINT NOT NULL,
    stream                BIGINT NOT NULL,
    input_tokens          BIGINT NOT NULL,
    output_tokens         BIGINT NOT NULL,
    cache_read_tokens     BIGINT NOT NULL,
    cache_write_5m_tokens BIGINT NOT NULL,
    cache_write_1h_tokens BIGINT NOT NULL,
    web_search_requests   BIGINT NOT NULL,
    web_fetch_requests    BIGINT NOT NULL,
    service_tier          TEXT NOT NULL,
    speed                 TEXT NOT NULL,
    inference_geo         TEXT NOT NULL,
    completeness          TEXT NOT NULL,
    price_version         TEXT NOT NULL,
    price_key             TEXT NOT NULL,
    priced_by_fallback    BIGINT NOT NULL,
    unit_input            TEXT NOT NULL,
    unit_output           TEXT NOT NULL,
    unit_cache_read       TEXT NOT NULL,
    unit_cache_write_5m   TEXT NOT NULL,
    unit_cache_write_1h   TEXT NOT NULL,
    cost_nanos            BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_ledger_tenant_day ON usage_ledger (tenant, day);
CREATE INDEX IF NOT EXISTS usage_ledger_day ON usage_ledger (day);
CREATE INDEX IF NOT EXISTS usage_ledger_request ON usage_ledger (request_id);
CREATE INDEX IF NOT EXISTS usage_ledger_time ON usage_ledger (occurred_at_ms);

CREATE TABLE IF NOT EXISTS usage_totals (
    day                   TEXT NOT NULL,
    tenant                TEXT NOT NULL,
    api_key               TEXT NOT NULL,
    account               TEXT NOT NULL,
    model                 TEXT NOT NULL,
    requests              BIGINT NOT NULL,
    input_tokens          BIGINT NOT NULL,
    output_tokens         BIGINT NOT NULL,
    cache_read_tokens     BIGINT NOT NULL,
    cache_write_5m_tokens BIGINT NOT NULL,
    cache_write_1h_tokens BIGINT NOT NULL,
    cost_nanos            BIGINT NOT NULL,
    fallback_requests     BIGINT NOT NULL,
    PRIMARY KEY (day, tenant, api_key, account, model)
);

-- Projection "accounts".
CREATE TABLE IF NOT EXISTS account_status (
    account            TEXT PRIMARY KEY,
    state              TEXT NOT NULL,
    reason             TEXT NOT NULL,
    until_ms           BIGINT,
    changed_at_ms      BIGINT,
    last_error_at_ms   BIGINT,
    last_error_status  BIGINT,
    last_error_type    TEXT,
    last_error_message TEXT,
    unified            TEXT NOT NULL,
    unified_at_ms      BIGINT,
    requests           BIGINT NOT NULL,
    errors             BIGINT NOT NULL,
    usage_events       BIGINT NOT NULL,
    input_tokens       BIGINT NOT NULL,
    output_tokens      BIGINT NOT NULL,
    cache_read_tokens  BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    health_changes     BIGINT NOT NULL,
    last_event_at_ms   BIGINT NOT NULL
);

-- Event ids the accounts projection has counted, so a duplicate published at a new
-- position does not count twice or roll the state back.
CREATE TABLE IF NOT EXISTS account_status_events (
    event_id TEXT PRIMARY KEY
);

-- Projection "requests": metadata only, one row per request.finished event id.
CREATE TABLE IF NOT EXISTS request_log (
    event_id            TEXT PRIMARY KEY,
    position            BIGINT NOT NULL,
    occurred_at_ms      BIGINT NOT NULL,
    day                 TEXT NOT NULL,
    request_id          TEXT NOT NULL,
    tenant              TEXT NOT NULL,
    api_key             TEXT NOT NULL,
    account             TEXT NOT NULL,
    model               TEXT NOT NULL,
    endpoint            TEXT NOT NULL,
    status              BIGINT NOT NULL,
    outcome             TEXT NOT NULL,
    stream              BIGINT NOT NULL,
    latency_us          BIGINT NOT NULL,
    ttfb_us             BIGINT,
    upstream_us         BIGINT,
    attempts            BIGINT NOT NULL,
    routing_reason      TEXT NOT NULL,
    error_type          TEXT NOT NULL,
    upstream_request_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS request_log_time ON request_log (occurred_at_ms);
CREATE INDEX IF NOT EXISTS request_log_request ON request_log (request_id);
CREATE INDEX IF NOT EXISTS request_log_tenant_time ON request_log (tenant, occurred_at_ms);

-- Projection "audit": every admin.action and auth.failed, append-only.
CREATE TABLE IF NOT EXISTS audit_log (
    event_id       TEXT PRIMARY KEY,
    position       BIGINT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    day            TEXT NOT NULL,
    kind           TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    api_key        TEXT NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT NOT NULL,
    summary        TEXT NOT NULL,
    reason         TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    key_prefix     TEXT NOT NULL,
    client_addr    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (occurred_at_ms);

-- Read models built from the event log. Versions 1..=99 belong to the relay's own
-- tables; projections use 100 and up in the same database.
-- MySQL/MariaDB version of the portable DDL (SQLite and PostgreSQL twins): VARCHAR(n)
-- for every text column (sqlx's Any driver reads TEXT/BLOB as bytes), except the two
-- that can outgrow a row (account_status.unified, audit_log.summary): MEDIUMTEXT, read
-- through projections::long_text; BIGINT for every integer; InnoDB, utf8mb4 with binary collation so comparisons, ORDER BY and
-- uniqueness follow byte order as in SQLite and PostgreSQL. Money is BIGINT
-- nanodollars (1e-9 USD); time is BIGINT epoch ms plus a UTC day 'YYYY-MM-DD'. Absent
-- ids are stored as '' so they can be part of primary keys.

-- Runner state.
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    projection VARCHAR(128) NOT NULL PRIMARY KEY,
    last_seq   BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS leases (
    name     VARCHAR(128) NOT NULL PRIMARY KEY,
    holder   VARCHAR(255) NOT NULL,
    until_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Projection "usage": one row per usage.recorded event id.
-- model: the relay bounds it to 256 characters (proxy::request::MAX_MODEL_LEN).
CREATE TABLE IF NOT EXISTS usage_ledger (
    event_id              VARCHAR(64) NOT NULL PRIMARY KEY,
    position              BIGINT NOT NULL,
    occurred_at_ms        BIGINT NOT NULL,
    day                   VARCHAR(16) NOT NULL,
    tenant                VARCHAR(64) NOT NULL,
    api_key               VARCHAR(64) NOT NULL,
    account               VARCHAR(64) NOT NULL,
    model                 VARCHAR(256) NOT NULL,
    request_id            VARCHAR(128) NOT NULL,
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
    service_tier          VARCHAR(64) NOT NULL,
    speed                 VARCHAR(64) NOT NULL,
    inference_geo         VARCHAR(64) NOT NULL,
    completeness          VARCHAR(64) NOT NULL,
    price_version         VARCHAR(128) NOT NULL,
    price_key             VARCHAR(255) NOT NULL,
    priced_by_fallback    BIGINT NOT NULL,
    unit_input            VARCHAR(64) NOT NULL,
    unit_output           VARCHAR(64) NOT NULL,
    unit_cache_read       VARCHAR(64) NOT NULL,
    unit_cache_write_5m   VARCHAR(64) NOT NULL,
    unit_cache_write_1h   VARCHAR(64) NOT NULL,
    cost_nanos            BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX usage_ledger_tenant_day ON usage_ledger (tenant, day);
CREATE INDEX usage_ledger_day ON usage_ledger (day);
CREATE INDEX usage_ledger_request ON usage_ledger (request_id);
CREATE INDEX usage_ledger_time ON usage_ledger (occurred_at_ms);

CREATE TABLE IF NOT EXISTS usage_totals (
    day                   VARCHAR(16) NOT NULL,
    tenant                VARCHAR(64) NOT NULL,
    api_key               VARCHAR(64) NOT NULL,
    account               VARCHAR(64) NOT NULL,
    model                 VARCHAR(256) NOT NULL,
    requests              BIGINT NOT NULL,
    input_tokens          BIGINT NOT NULL,
    output_tokens         BIGINT NOT NULL,
    cache_read_tokens     BIGINT NOT NULL,
    cache_write_5m_tokens BIGINT NOT NULL,
    cache_write_1h_tokens BIGINT NOT NULL,
    cost_nanos            BIGINT NOT NULL,
    fallback_requests     BIGINT NOT NULL,
    PRIMARY KEY (day, tenant, api_key, account, model)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Projection "accounts".
-- unified: JSON object of the anthropic-ratelimit-unified-* headers (a few hundred
-- characters in practice).
CREATE TABLE IF NOT EXISTS account_status (
    account            VARCHAR(64) NOT NULL PRIMARY KEY,
    state              VARCHAR(64) NOT NULL,
    reason             VARCHAR(64) NOT NULL,
    until_ms           BIGINT,
    changed_at_ms      BIGINT,
    last_error_at_ms   BIGINT,
    last_error_status  BIGINT,
    last_error_type    VARCHAR(255),
    last_error_message VARCHAR(1024),
    unified            MEDIUMTEXT NOT NULL,
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
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Event ids the accounts projection has counted, so a duplicate published at a new
-- position does not count twice or roll the state back.
CREATE TABLE IF NOT EXISTS account_status_events (
    event_id VARCHAR(64) NOT NULL PRIMARY KEY
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Projection "requests": metadata only, one row per request.finished event id.
CREATE TABLE IF NOT EXISTS request_log (
    event_id            VARCHAR(64) NOT NULL PRIMARY KEY,
    position            BIGINT NOT NULL,
    occurred_at_ms      BIGINT NOT NULL,
    day                 VARCHAR(16) NOT NULL,
    request_id          VARCHAR(128) NOT NULL,
    tenant              VARCHAR(64) NOT NULL,
    api_key             VARCHAR(64) NOT NULL,
    account             VARCHAR(64) NOT NULL,
    model               VARCHAR(256) NOT NULL,
    endpoint            VARCHAR(128) NOT NULL,
    status              BIGINT NOT NULL,
    outcome             VARCHAR(64) NOT NULL,
    stream              BIGINT NOT NULL,
    latency_us          BIGINT NOT NULL,
    ttfb_us             BIGINT,
    upstream_us         BIGINT,
    attempts            BIGINT NOT NULL,
    routing_reason      VARCHAR(128) NOT NULL,
    error_type          VARCHAR(255) NOT NULL,
    upstream_request_id VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX request_log_time ON request_log (occurred_at_ms);
CREATE INDEX request_log_request ON request_log (request_id);
CREATE INDEX request_log_tenant_time ON request_log (tenant, occurred_at_ms);

-- Projection "audit": every admin.action and auth.failed, append-only.
-- summary: free-form admin description (before/after of an account or of a key's limits).
CREATE TABLE IF NOT EXISTS audit_log (
    event_id       VARCHAR(64) NOT NULL PRIMARY KEY,
    position       BIGINT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    day            VARCHAR(16) NOT NULL,
    kind           VARCHAR(64) NOT NULL,
    request_id     VARCHAR(128) NOT NULL,
    tenant         VARCHAR(64) NOT NULL,
    api_key        VARCHAR(64) NOT NULL,
    actor          VARCHAR(255) NOT NULL,
    action         VARCHAR(128) NOT NULL,
    target         VARCHAR(255) NOT NULL,
    summary        MEDIUMTEXT NOT NULL,
    reason         VARCHAR(64) NOT NULL,
    endpoint       VARCHAR(128) NOT NULL,
    key_prefix     VARCHAR(64) NOT NULL,
    client_addr    VARCHAR(64) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX audit_log_time ON audit_log (occurred_at_ms);

-- Relay configuration state: tenant API keys and upstream accounts.
-- Versions 1..99 belong to the relay; projections use 100 and up in the same database.
-- MySQL/MariaDB version: VARCHAR(n) and BIGINT only (no TEXT/BLOB, see the sqlx Any
-- driver), InnoDB, utf8mb4 with binary collation (byte order and case-sensitive
-- uniqueness, as in SQLite and PostgreSQL).
CREATE TABLE IF NOT EXISTS api_keys (
    id            VARCHAR(64) NOT NULL PRIMARY KEY,
    name          VARCHAR(255) NOT NULL,
    tenant        VARCHAR(64) NOT NULL,
    key_hash      VARCHAR(128) NOT NULL UNIQUE,
    key_prefix    VARCHAR(64) NOT NULL,
    group_name    VARCHAR(255),
    enabled       BIGINT NOT NULL DEFAULT 1,
    expires_at_ms BIGINT,
    created_at_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS accounts (
    id             VARCHAR(64) NOT NULL PRIMARY KEY,
    name           VARCHAR(255) NOT NULL UNIQUE,
    kind           VARCHAR(64) NOT NULL,
    base_url       VARCHAR(2048) NOT NULL,
    -- Sealed `v1:<base64>`: a secret of up to 4096 bytes seals to about 5500 characters.
    credential_enc VARCHAR(6000) NOT NULL,
    priority       BIGINT NOT NULL DEFAULT 50,
    weight         BIGINT NOT NULL DEFAULT 1,
    group_name     VARCHAR(255),
    concurrency    BIGINT NOT NULL DEFAULT 0,
    proxy_url      VARCHAR(2048),
    enabled        BIGINT NOT NULL DEFAULT 1,
    created_at_ms  BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Tenant limits. A key's limits are one JSON document (see relay::limits::KeyLimits);
-- a tenant may have a monthly budget in its own zone.
-- MySQL/MariaDB version. limits_json is MEDIUMTEXT (100 model patterns and 100 address
-- ranges outgrow a VARCHAR row), read through projections::long_text.
ALTER TABLE api_keys ADD COLUMN limits_json MEDIUMTEXT;
ALTER TABLE tenants ADD COLUMN monthly_budget_usd VARCHAR(64);
ALTER TABLE tenants ADD COLUMN timezone VARCHAR(64);

-- What each relay holds of each limit scope (budget nanodollars, concurrency slots).
-- A row not renewed within the lease TTL no longer counts.
CREATE TABLE IF NOT EXISTS limit_leases (
    scope         VARCHAR(255) NOT NULL,
    relay         VARCHAR(128) NOT NULL,
    granted       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, relay)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Shared rpm token buckets (milli-tokens, refilled continuously).
CREATE TABLE IF NOT EXISTS limit_buckets (
    scope          VARCHAR(255) NOT NULL PRIMARY KEY,
    tokens_milli   BIGINT NOT NULL,
    refilled_at_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Row locks that serialise lease transactions per scope (PostgreSQL; SELECT ... FOR
-- UPDATE works the same on InnoDB).
CREATE TABLE IF NOT EXISTS limit_locks (
    scope VARCHAR(255) NOT NULL PRIMARY KEY
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

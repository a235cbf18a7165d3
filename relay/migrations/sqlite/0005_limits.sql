-- Tenant limits. A key's limits are one JSON document (see relay::limits::KeyLimits);
-- a tenant may have a monthly budget in its own zone.
ALTER TABLE api_keys ADD COLUMN limits_json TEXT;
ALTER TABLE tenants ADD COLUMN monthly_budget_usd TEXT;
ALTER TABLE tenants ADD COLUMN timezone TEXT;

-- What each relay holds of each limit scope (budget nanodollars, concurrency slots).
-- A row not renewed within the lease TTL no longer counts.
CREATE TABLE IF NOT EXISTS limit_leases (
    scope         TEXT NOT NULL,
    relay         TEXT NOT NULL,
    granted       INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, relay)
);

-- Shared rpm token buckets (milli-tokens, refilled continuously).
CREATE TABLE IF NOT EXISTS limit_buckets (
    scope          TEXT PRIMARY KEY,
    tokens_milli   INTEGER NOT NULL,
    refilled_at_ms INTEGER NOT NULL
);

-- Row locks that serialise lease transactions per scope (PostgreSQL).
CREATE TABLE IF NOT EXISTS limit_locks (
    scope TEXT PRIMARY KEY
);

-- Relay configuration state: tenant API keys and upstream accounts.
-- Versions 1..99 belong to the relay; projections use 100 and up in the same database.
CREATE TABLE IF NOT EXISTS api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    tenant        TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    key_prefix    TEXT NOT NULL,
    group_name    TEXT,
    enabled       INTEGER NOT NULL DEFAULT 1,
    expires_at_ms INTEGER,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS accounts (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    kind           TEXT NOT NULL,
    base_url       TEXT NOT NULL,
    credential_enc TEXT NOT NULL,
    priority       INTEGER NOT NULL DEFAULT 50,
    weight         INTEGER NOT NULL DEFAULT 1,
    group_name     TEXT,
    concurrency    INTEGER NOT NULL DEFAULT 0,
    proxy_url      TEXT,
    enabled        INTEGER NOT NULL DEFAULT 1,
    created_at_ms  INTEGER NOT NULL
);

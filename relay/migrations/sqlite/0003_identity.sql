-- Identity and administration: tenants (billed as one), users who log in, account
-- groups with seed-style integer ids, and key ownership and revocation.
CREATE TABLE IF NOT EXISTS tenants (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1,
    tenant        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    -- Bumped on password change, disable or role change: older tokens stop working.
    token_epoch   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS account_groups (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    remark        TEXT NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL
);

ALTER TABLE api_keys ADD COLUMN user_id TEXT;
ALTER TABLE api_keys ADD COLUMN revoked_at_ms INTEGER;
ALTER TABLE api_keys ADD COLUMN key_last4 TEXT;

-- Existing tenants and groups named by keys and accounts become rows.
INSERT INTO tenants (id, name, created_at_ms)
    SELECT DISTINCT tenant, tenant, 0 FROM api_keys WHERE tenant NOT IN (SELECT id FROM tenants);
INSERT INTO account_groups (name, remark, created_at_ms)
    SELECT DISTINCT group_name, '', 0 FROM (
        SELECT group_name FROM api_keys UNION SELECT group_name FROM accounts
    ) g WHERE group_name IS NOT NULL AND group_name NOT IN (SELECT name FROM account_groups);


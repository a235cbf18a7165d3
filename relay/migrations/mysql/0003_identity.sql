-- Identity and administration: tenants (billed as one), users who log in, account
-- groups with seed-style integer ids, and key ownership and revocation.
-- MySQL/MariaDB version.
CREATE TABLE IF NOT EXISTS tenants (
    id            VARCHAR(64) NOT NULL PRIMARY KEY,
    name          VARCHAR(255) NOT NULL,
    created_at_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS users (
    id            VARCHAR(64) NOT NULL PRIMARY KEY,
    username      VARCHAR(255) NOT NULL UNIQUE,
    email         VARCHAR(255) NOT NULL UNIQUE,
    password_hash VARCHAR(255) NOT NULL,
    role          VARCHAR(64) NOT NULL,
    enabled       BIGINT NOT NULL DEFAULT 1,
    tenant        VARCHAR(64) NOT NULL,
    created_at_ms BIGINT NOT NULL,
    -- Bumped on password change, disable or role change: older tokens stop working.
    token_epoch   BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS account_groups (
    id            BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name          VARCHAR(255) NOT NULL UNIQUE,
    remark        VARCHAR(2048) NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

ALTER TABLE api_keys ADD COLUMN user_id VARCHAR(64);
ALTER TABLE api_keys ADD COLUMN revoked_at_ms BIGINT;
ALTER TABLE api_keys ADD COLUMN key_last4 VARCHAR(16);

-- Existing tenants and groups named by keys and accounts become rows.
INSERT INTO tenants (id, name, created_at_ms)
    SELECT DISTINCT tenant, tenant, 0 FROM api_keys WHERE tenant NOT IN (SELECT id FROM tenants);
INSERT INTO account_groups (name, remark, created_at_ms)
    SELECT DISTINCT group_name, '', 0 FROM (
        SELECT group_name FROM api_keys UNION SELECT group_name FROM accounts
    ) g WHERE group_name IS NOT NULL AND group_name NOT IN (SELECT name FROM account_groups);

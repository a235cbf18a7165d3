-- OAuth onboarding over HTTP and single-flight token refresh across relays.
-- Pending PKCE logins live here (verifier sealed) so every relay process can finish a
-- login another one started; a row is consumed once and lapses after its TTL.
-- MySQL/MariaDB version.
CREATE TABLE IF NOT EXISTS oauth_pending (
    state         VARCHAR(128) NOT NULL PRIMARY KEY,
    verifier_enc  VARCHAR(1024) NOT NULL,
    created_by    VARCHAR(255) NOT NULL,
    expires_at_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- token_version grows with every stored token set: a refresh writes only over the
-- version it read, so a stale refresh token is never written back. refresh_lock_until_ms
-- is the refresh lease: one process refreshes an account at a time.
ALTER TABLE accounts ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN refresh_lock_until_ms BIGINT;
ALTER TABLE accounts ADD COLUMN refreshed_at_ms BIGINT;
ALTER TABLE accounts ADD COLUMN oauth_scopes VARCHAR(1024);
ALTER TABLE accounts ADD COLUMN subscription_type VARCHAR(64);
ALTER TABLE accounts ADD COLUMN oauth_email VARCHAR(255);

-- OAuth (Claude subscription) accounts: a sealed refresh token and the access token's
-- expiry, so the relay can refresh before it lapses.
-- MySQL/MariaDB version.
ALTER TABLE accounts ADD COLUMN refresh_token_enc VARCHAR(2048);
ALTER TABLE accounts ADD COLUMN expires_at_ms BIGINT;

-- OAuth onboarding over HTTP and single-flight token refresh across relays.
-- Pending PKCE logins live here (verifier sealed) so every relay process can finish a
-- login another one started; a row is consumed once and lapses after its TTL.
CREATE TABLE IF NOT EXISTS oauth_pending (
    state         TEXT PRIMARY KEY,
    verifier_enc  TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

-- token_version grows with every stored token set: a refresh writes only over the
-- version it read, so a stale refresh token is never written back. refresh_lock_until_ms
-- is the refresh lease: one process refreshes an account at a time.
ALTER TABLE accounts ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN refresh_lock_until_ms INTEGER;
ALTER TABLE accounts ADD COLUMN refreshed_at_ms INTEGER;
ALTER TABLE accounts ADD COLUMN oauth_scopes TEXT;
ALTER TABLE accounts ADD COLUMN subscription_type TEXT;
ALTER TABLE accounts ADD COLUMN oauth_email TEXT;

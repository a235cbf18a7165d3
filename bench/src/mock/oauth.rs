//! OAuth stubs: the token endpoint (authorization_code with PKCE S256, refresh_token),
//! `/api/oauth/profile` and `/api/oauth/usage`.
//!
//! Codes are registered by the test with their PKCE challenge
//! ([`super::MockUpstream::issue_oauth_code`]); issued refresh tokens rotate on use.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Claude Code's production OAuth client id, the default the mock expects.
pub const CLAUDE_CODE_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

/// Scopes granted by the mock.
pub const GRANTED_SCOPES: &str =
    "user:inference user:mcp_servers user:profile user:sessions:claude_code user:file_upload";

/// Token-endpoint state.
#[derive(Debug, Default)]
pub struct OAuthState {
    /// code → PKCE code_challenge (S256).
    codes: HashMap<String, String>,
    /// Refresh tokens that are currently valid.
    refresh_tokens: HashSet<String>,
    counter: AtomicU64,
}

/// `base64url(sha256(verifier))`, the S256 challenge for a verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl OAuthState {
    /// Registers an authorization code bound to a PKCE challenge.
    pub fn register_code(&mut self, code: &str, challenge: &str) {
        self.codes.insert(code.to_owned(), challenge.to_owned());
    }

    /// Registers a refresh token as valid.
    pub fn register_refresh_token(&mut self, token: &str) {
        self.refresh_tokens.insert(token.to_owned());
    }

    fn mint(&mut self, expires_in: u64) -> Value {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let access = format!("sk-ant-oat01-mock-access-{n:08}");
        let refresh = format!("sk-ant-ort01-mock-refresh-{n:08}");
        self.refresh_tokens.insert(refresh.clone());
        json!({
            "token_type": "Bearer",
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": expires_in,
            "scope": GRANTED_SCOPES,
            "organization": {"uuid": "00000000-0000-4000-8000-000000000001", "name": "Mock Org"},
            "account": {"uuid": "00000000-0000-4000-8000-000000000002", "email_address": "mock@example.com"}
        })
    }

    /// Handles a token request body; `Ok(json)` is a 200, `Err((status, json))` an error.
    pub fn token(
        &mut self,
        body: &[u8],
        client_id: &str,
        expires_in: u64,
    ) -> Result<Value, (u16, Value)> {
        let invalid = |desc: &str| {
            (
                400,
                json!({"error": "invalid_request", "error_description": desc}),
            )
        };
        let grant_err = |desc: &str| {
            (
                400,
                json!({"error": "invalid_grant", "error_description": desc}),
            )
        };
        let req: Value =
            serde_json::from_slice(body).map_err(|_| invalid("Invalid request format"))?;
        let field = |k: &str| req.get(k).and_then(Value::as_str);
        match field("client_id") {
            None => return Err(invalid("Invalid request format")),
            Some(id) if id != client_id => {
                return Err((
                    401,
                    json!({"error": "invalid_client", "error_description": "Invalid client_id"}),
                ))
            }
            Some(_) => {}
        }
        match field("grant_type") {
            Some("authorization_code") => {
                let code = field("code").ok_or_else(|| invalid("Invalid request format"))?;
                let verifier =
                    field("code_verifier").ok_or_else(|| invalid("Invalid request format"))?;
                let Some(challenge) = self.codes.get(code) else {
                    return Err(grant_err("Invalid 'code' in request."));
                };
                if pkce_challenge(verifier) != *challenge {
                    return Err(grant_err("Invalid code_verifier"));
                }
                self.codes.remove(code);
                Ok(self.mint(expires_in))
            }
            Some("refresh_token") => {
                let token =
                    field("refresh_token").ok_or_else(|| invalid("Invalid request format"))?;
                if !self.refresh_tokens.remove(token) {
                    return Err(grant_err("Invalid refresh token"));
                }
                Ok(self.mint(expires_in))
            }
            _ => Err(invalid("Unsupported grant_type")),
        }
    }
}

/// The `/api/oauth/profile` body for a Max subscription.
pub fn profile() -> Value {
    json!({
        "account": {
            "uuid": "00000000-0000-4000-8000-000000000002",
            "email": "mock@example.com",
            "display_name": "Mock User",
            "has_claude_max": true,
            "has_claude_pro": false
        },
        "organization": {
            "uuid": "00000000-0000-4000-8000-000000000001",
            "name": "Mock Org",
            "organization_type": "claude_max",
            "rate_limit_tier": "default_claude_max_20x",
            "billing_type": "stripe_subscription",
            "has_extra_usage_enabled": false
        }
    })
}

/// The `/api/oauth/usage` body (utilization in percent, resets RFC 3339).
pub fn usage(five_hour_reset: &str, seven_day_reset: &str) -> Value {
    json!({
        "five_hour": {"utilization": 42.0, "resets_at": five_hour_reset},
        "seven_day": {"utilization": 30.0, "resets_at": seven_day_reset},
        "seven_day_opus": null,
        "seven_day_sonnet": {"utilization": 12.0, "resets_at": seven_day_reset},
        "extra_usage": {"is_enabled": false, "monthly_limit": null, "used_credits": null, "utilization": null}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn authorization_code_requires_matching_verifier_and_client() {
        let mut s = OAuthState::default();
        let verifier = "v".repeat(43);
        s.register_code("code1", &pkce_challenge(&verifier));
        let bad = s.token(
            &body(json!({"grant_type":"authorization_code","code":"code1","code_verifier":"wrong","client_id":CLAUDE_CODE_CLIENT_ID})),
            CLAUDE_CODE_CLIENT_ID, 28800);
        assert_eq!(bad.unwrap_err().0, 400);
        let wrong_client = s.token(
            &body(json!({"grant_type":"authorization_code","code":"code1","code_verifier":verifier,"client_id":"other"})),
            CLAUDE_CODE_CLIENT_ID, 28800);
        assert_eq!(wrong_client.unwrap_err().0, 401);
        let ok = s
            .token(
                &body(json!({"grant_type":"authorization_code","code":"code1","code_verifier":verifier,"client_id":CLAUDE_CODE_CLIENT_ID})),
                CLAUDE_CODE_CLIENT_ID, 28800)
            .unwrap();
        assert!(ok["access_token"]
            .as_str()
            .unwrap()
            .starts_with("sk-ant-oat01-"));
        // Codes are single-use.
        let again = s.token(
            &body(json!({"grant_type":"authorization_code","code":"code1","code_verifier":verifier,"client_id":CLAUDE_CODE_CLIENT_ID})),
            CLAUDE_CODE_CLIENT_ID, 28800);
        assert!(again.is_err());
    }

    #[test]
    fn refresh_tokens_rotate() {
        let mut s = OAuthState::default();
        s.register_refresh_token("sk-ant-ort01-seed");
        let req = |t: &str| {
            body(
                json!({"grant_type":"refresh_token","refresh_token":t,"client_id":CLAUDE_CODE_CLIENT_ID}),
            )
        };
        let first = s
            .token(&req("sk-ant-ort01-seed"), CLAUDE_CODE_CLIENT_ID, 100)
            .unwrap();
        assert!(s
            .token(&req("sk-ant-ort01-seed"), CLAUDE_CODE_CLIENT_ID, 100)
            .is_err());
        let next = first["refresh_token"].as_str().unwrap();
        assert!(s.token(&req(next), CLAUDE_CODE_CLIENT_ID, 100).is_ok());
        let no_client = s.token(
            &body(json!({"grant_type":"refresh_token","refresh_token":"x"})),
            CLAUDE_CODE_CLIENT_ID,
            100,
        );
        assert_eq!(
            no_client.unwrap_err().1["error_description"],
            "Invalid request format"
        );
    }
}

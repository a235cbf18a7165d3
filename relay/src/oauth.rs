//! Claude Code OAuth (subscription) accounts: the PKCE login an operator performs
//! once, and the token refresh the relay performs before an access token lapses.
//!
//! The flow mirrors the Claude Code CLI: an authorize URL with an S256 challenge, the
//! operator pastes back `code#state` (or the whole callback URL), the code is exchanged
//! for an access token (`sk-ant-oat01-…`) and a refresh token (`sk-ant-ort01-…`).

use crate::crypto::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The Claude Code CLI's public OAuth client id.
pub const CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// Claude.ai login page.
pub const DEFAULT_AUTHORIZE_URL: &str = "https://claude.ai/oauth/authorize";
/// Token endpoint for both grants.
pub const DEFAULT_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";
/// The manual redirect: the page shows `code#state` for the operator to paste.
pub const REDIRECT_URI: &str = "https://platform.claude.com/oauth/code/callback";
/// Scopes of a full Claude Code login.
pub const SCOPES: &str =
    "org:create_api_key user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload";
/// Refresh when less than this remains, as the CLI does.
pub const REFRESH_MARGIN_SECS: i64 = 300;

/// Every OAuth constant, overridable in configuration so tests can point at a mock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// The public client id.
    pub client_id: String,
    /// The login page.
    pub authorize_url: String,
    /// The token endpoint (both grants).
    pub token_url: String,
    /// The redirect URI that shows `code#state` to paste.
    pub redirect_uri: String,
    /// Space-separated scopes.
    pub scopes: String,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            client_id: CLIENT_ID.into(),
            authorize_url: DEFAULT_AUTHORIZE_URL.into(),
            token_url: DEFAULT_TOKEN_URL.into(),
            redirect_uri: REDIRECT_URI.into(),
            scopes: SCOPES.into(),
        }
    }
}

/// Errors of the OAuth flow.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The pasted value holds no usable code.
    #[error("invalid code: paste the whole `code#state` value or the callback URL")]
    BadCode,
    /// The pasted state does not match the one this login started with.
    #[error("state mismatch: the code belongs to another login attempt")]
    StateMismatch,
    /// The token endpoint refused.
    #[error("token endpoint answered {status}: {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Error text from the body (no secrets are echoed by the endpoint).
        message: String,
    },
    /// Network failure.
    #[error("token endpoint unreachable: {0}")]
    Http(#[from] reqwest::Error),
    /// The response lacked fields.
    #[error("token endpoint response is missing {0}")]
    Incomplete(&'static str),
}

/// One login attempt's PKCE material.
#[derive(Debug, Clone)]
pub struct Pkce {
    /// The secret verifier (43 characters).
    pub verifier: Secret,
    /// base64url(SHA-256(verifier)).
    pub challenge: String,
    /// Anti-CSRF state echoed back with the code.
    pub state: String,
}

fn random_b64(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// The S256 challenge of a verifier.
pub fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Pkce {
    /// Fresh verifier, challenge and state.
    pub fn generate() -> Self {
        let verifier = random_b64(32);
        Self {
            challenge: challenge_of(&verifier),
            verifier: Secret::new(verifier),
            state: random_b64(32),
        }
    }

    /// The URL the operator opens to log in.
    pub fn authorize_url(&self, cfg: &OAuthConfig) -> String {
        let q = [
            ("code", "true"),
            ("client_id", cfg.client_id.as_str()),
            ("response_type", "code"),
            ("redirect_uri", cfg.redirect_uri.as_str()),
            ("scope", cfg.scopes.as_str()),
            ("code_challenge", &self.challenge),
            ("code_challenge_method", "S256"),
            ("state", &self.state),
        ];
        let query: Vec<String> = q
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        format!("{}?{}", cfg.authorize_url, query.join("&"))
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Extracts `(code, state)` from what the operator pasted: `code#state`, or a callback
/// URL with `?code=…&state=…`.
pub fn parse_pasted(input: &str) -> Result<(String, Option<String>), OAuthError> {
    let input = input.trim();
    let (code, state) = if let Some(q) = input.split_once('?').map(|(_, q)| q) {
        let mut code = None;
        let mut state = None;
        for pair in q.split(['&', '#']) {
            if let Some(v) = pair.strip_prefix("code=") {
                code = Some(v.to_owned());
            } else if let Some(v) = pair.strip_prefix("state=") {
                state = Some(v.to_owned());
            }
        }
        (code.ok_or(OAuthError::BadCode)?, state)
    } else {
        match input.split_once('#') {
            Some((c, s)) => (c.to_owned(), Some(s.to_owned())),
            None => (input.to_owned(), None),
        }
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !valid(&code) {
        return Err(OAuthError::BadCode);
    }
    Ok((code, state.filter(|s| !s.is_empty())))
}

/// Tokens from a successful exchange or refresh.
#[derive(Debug, Clone)]
pub struct TokenSet {
    /// `sk-ant-oat01-…`.
    pub access_token: Secret,
    /// `sk-ant-ort01-…`; absent on refresh means "keep the old one".
    pub refresh_token: Option<Secret>,
    /// When the access token lapses.
    pub expires_at: DateTime<Utc>,
    /// The account's e-mail, when the endpoint reports it (for display only).
    pub email: Option<String>,
    /// Granted scopes, space-separated, when reported.
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
    account: Option<TokenAccount>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct TokenAccount {
    email_address: Option<String>,
}

async fn post_token(
    http: &reqwest::Client,
    token_url: &str,
    body: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<TokenSet, OAuthError> {
    let resp = http.post(token_url).json(&body).send().await?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(OAuthError::Rejected {
            status: status.as_u16(),
            message: text.chars().take(300).collect(),
        });
    }
    let t: TokenResponse = resp.json().await?;
    let access = t
        .access_token
        .ok_or(OAuthError::Incomplete("access_token"))?;
    let expires_in = t.expires_in.ok_or(OAuthError::Incomplete("expires_in"))?;
    Ok(TokenSet {
        access_token: Secret::new(access),
        refresh_token: t.refresh_token.map(Secret::new),
        expires_at: now + Duration::seconds(expires_in),
        email: t.account.and_then(|a| a.email_address),
        scope: t.scope,
    })
}

/// Exchanges an authorization code (grant `authorization_code`, JSON body).
pub async fn exchange_code(
    http: &reqwest::Client,
    cfg: &OAuthConfig,
    pkce: &Pkce,
    pasted: &str,
    now: DateTime<Utc>,
) -> Result<TokenSet, OAuthError> {
    let (code, state) = parse_pasted(pasted)?;
    if state.as_deref().is_some_and(|s| s != pkce.state) {
        return Err(OAuthError::StateMismatch);
    }
    let body = serde_json::json!({
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": cfg.redirect_uri,
        "client_id": cfg.client_id,
        "code_verifier": pkce.verifier.expose(),
        "state": pkce.state,
    });
    post_token(http, &cfg.token_url, body, now).await
}

/// Refreshes an access token (grant `refresh_token`, JSON body).
pub async fn refresh(
    http: &reqwest::Client,
    cfg: &OAuthConfig,
    refresh_token: &Secret,
    now: DateTime<Utc>,
) -> Result<TokenSet, OAuthError> {
    let body = serde_json::json!({
        "grant_type": "refresh_token",
        "refresh_token": refresh_token.expose(),
        "client_id": cfg.client_id,
    });
    post_token(http, &cfg.token_url, body, now).await
}

/// The subscription type (`max`, `pro`, `team`, `enterprise`) from
/// `GET {base}/api/oauth/profile`; `None` when the token may not read it (setup tokens)
/// or the call fails.
pub async fn subscription_type(
    http: &reqwest::Client,
    base_url: &str,
    access_token: &Secret,
) -> Option<String> {
    let resp = http
        .get(format!(
            "{}/api/oauth/profile",
            base_url.trim_end_matches('/')
        ))
        .bearer_auth(access_token.expose())
        .header("anthropic-beta", "oauth-2025-04-20")
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let v: serde_json::Value = resp.json().await.ok()?;
    let t = v["organization"]["organization_type"].as_str()?;
    Some(
        t.strip_prefix("claude_")
            .unwrap_or(t)
            .chars()
            .take(32)
            .collect(),
    )
}

/// Whether a token expiring at `expires_at` should be refreshed at `now`.
pub fn needs_refresh(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    expires_at.is_some_and(|t| t - now < Duration::seconds(REFRESH_MARGIN_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_s256_of_the_verifier() {
        let p = Pkce::generate();
        assert_eq!(p.verifier.expose().len(), 43);
        assert_eq!(p.challenge, challenge_of(p.verifier.expose()));
        // Expected value computed independently with Python's hashlib and base64:
        // base64.urlsafe_b64encode(sha256(verifier)).rstrip(b"=").
        assert_eq!(
            challenge_of("dBjftJeZ4CVP-mA92tLwb3bqtmdHGwZz05aUzjDqAgM"),
            "6LXLuxD_nK6K_SjfpAkpTtdhYha3ev9VmRWK2-VeeW8"
        );
        let url = p.authorize_url(&OAuthConfig::default());
        assert!(url.contains("code_challenge_method=S256"));
        assert!(url.contains(&format!("state={}", p.state)));
        assert!(url.contains("scope=org%3Acreate_api_key%20user%3Aprofile"));
    }

    #[test]
    fn pasted_codes_parse_in_both_forms() {
        assert_eq!(
            parse_pasted(" abc_DEF-1#st4te \n").unwrap(),
            ("abc_DEF-1".into(), Some("st4te".into()))
        );
        assert_eq!(
            parse_pasted("https://platform.claude.com/oauth/code/callback?code=xyz&state=s1")
                .unwrap(),
            ("xyz".into(), Some("s1".into()))
        );
        assert!(parse_pasted("").is_err());
        assert!(parse_pasted("bad code!#s").is_err());
    }

    #[test]
    fn refresh_is_due_inside_the_margin() {
        let now = Utc::now();
        assert!(needs_refresh(Some(now + Duration::seconds(60)), now));
        assert!(!needs_refresh(Some(now + Duration::hours(2)), now));
        assert!(!needs_refresh(None, now));
    }
}

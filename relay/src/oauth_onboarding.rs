//! OAuth onboarding over HTTP (the seed MVP's paths), for admins:
//!
//! - `POST /oauth/auth-url` starts a PKCE login and keeps the verifier, sealed, in the
//!   database with a TTL, so any relay process can finish it;
//! - `POST /oauth/token` takes the pasted `code#state` (or the callback URL), consumes
//!   the pending login once, exchanges the code and adds the account;
//! - `POST /oauth/setup-token` adds a long-lived setup token (`claude setup-token`);
//! - `GET /oauth/accounts` and `GET /oauth/accounts/{name}/status` show expiry, scopes,
//!   subscription type, last refresh, health and unified utilisation.

use crate::admin::auth::Auth;
use crate::admin::error::{AdminError, Body, Id};
use crate::app::AppState;
use crate::crypto::Secret;
use crate::oauth::{self, Pkce};
use crate::services::accounts::{AccountView, CreateAccount, PlatformType};
use crate::services::{Actor, PageReq, ServiceError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use projections::Dialect as _;
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// The onboarding routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/oauth/auth-url", post(auth_url))
        .route("/oauth/token", post(token))
        .route("/oauth/setup-token", post(setup_token))
        .route("/oauth/accounts", get(accounts))
        .route("/oauth/accounts/{name}/status", get(status))
}

fn admin(actor: &Actor) -> Result<(), AdminError> {
    if actor.is_admin() {
        Ok(())
    } else {
        Err(ServiceError::Forbidden("administrator role required".into()).into())
    }
}

fn internal(e: impl std::fmt::Display) -> AdminError {
    ServiceError::internal(e).into()
}

#[derive(Debug, Serialize)]
struct AuthUrl {
    auth_url: String,
    state: String,
    expires_at: DateTime<Utc>,
}

/// `POST /oauth/auth-url`: a fresh PKCE login.
async fn auth_url(State(s): State<AppState>, Auth(a): Auth) -> Result<Json<AuthUrl>, AdminError> {
    admin(&a)?;
    let pkce = Pkce::generate();
    let now = Utc::now();
    let ttl = i64::try_from(s.config.oauth_state_ttl_secs)
        .unwrap_or(600)
        .clamp(60, 86_400);
    let expires_at = now + Duration::seconds(ttl);
    // Lapsed logins are swept whenever a new one starts.
    sqlx::query(
        &s.db
            .sql("DELETE FROM oauth_pending WHERE expires_at_ms < $1"),
    )
    .bind(now.timestamp_millis())
    .execute(&s.db)
    .await
    .map_err(internal)?;
    sqlx::query(&s.db.sql(
        "INSERT INTO oauth_pending (state, verifier_enc, created_by, expires_at_ms) \
         VALUES ($1, $2, $3, $4)",
    ))
    .bind(&pkce.state)
    .bind(s.accounts.cipher().seal(&pkce.verifier))
    .bind(a.audit_name())
    .bind(expires_at.timestamp_millis())
    .execute(&s.db)
    .await
    .map_err(internal)?;
    Ok(Json(AuthUrl {
        auth_url: pkce.authorize_url(&s.config.oauth()),
        state: pkce.state,
        expires_at,
    }))
}

/// A proxy as the seed MVP sent it (`{type, host, port, username, password}`) or a URL.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ProxyConfig {
    Url(String),
    Parts {
        #[serde(rename = "type")]
        kind: Option<String>,
        host: String,
        port: u16,
        username: Option<String>,
        password: Option<String>,
    },
}

impl ProxyConfig {
    fn url(self) -> Result<String, AdminError> {
        match self {
            ProxyConfig::Url(u) => Ok(u),
            ProxyConfig::Parts {
                kind,
                host,
                port,
                username,
                password,
            } => {
                let scheme = match kind.as_deref().unwrap_or("http") {
                    "socks5" | "socks" => "socks5h",
                    "https" => "https",
                    "http" => "http",
                    _ => {
                        return Err(AdminError::bad_request(
                            "proxy_config.type must be http, https or socks5",
                        ))
                    }
                };
                let auth = match (username, password) {
                    (Some(u), Some(p)) => format!("{u}:{p}@"),
                    (Some(u), None) => format!("{u}@"),
                    _ => String::new(),
                };
                Ok(format!("{scheme}://{auth}{host}:{port}"))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// `code#state`, the bare code, or the callback URL.
    authorization_code: String,
    /// The state from `/oauth/auth-url` (optional when the pasted value carries it).
    state: Option<String>,
    account_name: String,
    proxy_config: Option<ProxyConfig>,
    request_url: Option<String>,
    group_id: Option<i64>,
    priority: Option<i64>,
    weight: Option<i64>,
    concurrency: Option<i64>,
}

/// The new account, or why not; a missing or used state is a 400.
async fn take_pending(s: &AppState, state: &str) -> Result<Pkce, AdminError> {
    let bad = || {
        AdminError::bad_request(
            "unknown or expired OAuth state: start again at POST /oauth/auth-url",
        )
    };
    if state.len() > 128 {
        return Err(bad());
    }
    // Read, then delete: the state is used once, by whoever deletes it (no
    // `DELETE … RETURNING`, which MySQL lacks).
    let row = sqlx::query(
        &s.db
            .sql("SELECT verifier_enc, expires_at_ms FROM oauth_pending WHERE state = $1"),
    )
    .bind(state)
    .fetch_optional(&s.db)
    .await
    .map_err(internal)?
    .ok_or_else(bad)?;
    let taken = sqlx::query(&s.db.sql("DELETE FROM oauth_pending WHERE state = $1"))
        .bind(state)
        .execute(&s.db)
        .await
        .map_err(internal)?;
    if taken.rows_affected() != 1 {
        return Err(bad());
    }
    let expires: i64 = row.try_get("expires_at_ms").map_err(internal)?;
    if expires < Utc::now().timestamp_millis() {
        return Err(bad());
    }
    let sealed: String = row.try_get("verifier_enc").map_err(internal)?;
    let verifier = s.accounts.cipher().open(&sealed).map_err(internal)?;
    Ok(Pkce {
        challenge: oauth::challenge_of(verifier.expose()),
        verifier,
        state: state.to_owned(),
    })
}

fn http_client(proxy: Option<&str>) -> Result<reqwest::Client, AdminError> {
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(20));
    if let Some(p) = proxy {
        b = b.proxy(reqwest::Proxy::all(p).map_err(|_| AdminError::bad_request("invalid proxy"))?);
    }
    b.build().map_err(internal)
}

/// `POST /oauth/token`: finishes a login and adds the account.
async fn token(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body(b): Body<TokenBody>,
) -> Result<Response, AdminError> {
    admin(&a)?;
    // Everything that can be checked without the token endpoint is checked first, so a
    // refusal stores nothing and does not use the login up.
    let name = crate::services::users::check_display_name("account_name", &b.account_name)?;
    if s.accounts
        .name_taken(&name, None)
        .await
        .map_err(ServiceError::from)?
    {
        return Err(AdminError::bad_request(format!("account {name:?} exists")));
    }
    let (_, pasted_state) = oauth::parse_pasted(&b.authorization_code)
        .map_err(|e| AdminError::bad_request(e.to_string()))?;
    let state = match (b.state.as_deref(), pasted_state.as_deref()) {
        (Some(x), Some(y)) if x != y => {
            return Err(AdminError::bad_request(
                oauth::OAuthError::StateMismatch.to_string(),
            ))
        }
        (Some(x), _) | (None, Some(x)) => x.to_owned(),
        (None, None) => {
            return Err(AdminError::bad_request(
                "state is required (or paste code#state)",
            ))
        }
    };
    let proxy = b.proxy_config.map(ProxyConfig::url).transpose()?;
    let pkce = take_pending(&s, &state).await?;
    let global = s.config.global_proxy_url();
    let http = http_client(global.as_deref().or(proxy.as_deref()))?;
    let pasted = format!(
        "{}#{}",
        oauth::parse_pasted(&b.authorization_code)
            .map(|(c, _)| c)
            .unwrap_or_default(),
        state
    );
    let tokens = oauth::exchange_code(&http, &s.config.oauth(), &pkce, &pasted, Utc::now())
        .await
        .map_err(|e| AdminError::bad_request(format!("code exchange failed: {e}")))?;
    let base = b
        .request_url
        .clone()
        .unwrap_or_else(|| "https://api.anthropic.com".into());
    let subscription = oauth::subscription_type(&http, &base, &tokens.access_token).await;
    let view = s
        .services
        .create_account(
            &a,
            CreateAccount {
                name,
                platform_type: Some(PlatformType::Claude),
                request_url: b.request_url,
                secret_key: tokens.access_token.expose().to_owned(),
                group_id: b.group_id,
                group: None,
                priority: b.priority,
                weight: b.weight,
                proxy,
                concurrency: b.concurrency,
                enabled: None,
                refresh_token: tokens.refresh_token.clone(),
                expires_at: Some(tokens.expires_at),
            },
        )
        .await?;
    s.accounts
        .set_oauth_meta(
            &view.id,
            tokens.scope.as_deref(),
            subscription.as_deref(),
            tokens.email.as_deref(),
        )
        .await
        .map_err(ServiceError::from)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupTokenBody {
    /// The `sk-ant-oat01-…` token printed by `claude setup-token`.
    token: String,
    account_name: String,
    /// Its expiry (default: one year from now, the setup token's lifetime).
    expires_at: Option<DateTime<Utc>>,
    proxy_config: Option<ProxyConfig>,
    request_url: Option<String>,
    group_id: Option<i64>,
    priority: Option<i64>,
    weight: Option<i64>,
    concurrency: Option<i64>,
}

/// `POST /oauth/setup-token`: a long-lived inference-only token as an account.
async fn setup_token(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body(b): Body<SetupTokenBody>,
) -> Result<Response, AdminError> {
    admin(&a)?;
    if !b.token.trim().starts_with("sk-ant-oat") {
        return Err(AdminError::bad_request(
            "a setup token starts with sk-ant-oat",
        ));
    }
    let view = s
        .services
        .create_account(
            &a,
            CreateAccount {
                name: b.account_name,
                platform_type: Some(PlatformType::Claude),
                request_url: b.request_url,
                secret_key: b.token,
                group_id: b.group_id,
                group: None,
                priority: b.priority,
                weight: b.weight,
                proxy: b.proxy_config.map(ProxyConfig::url).transpose()?,
                concurrency: b.concurrency,
                enabled: None,
                refresh_token: None::<Secret>,
                expires_at: Some(
                    b.expires_at
                        .unwrap_or_else(|| Utc::now() + Duration::days(365)),
                ),
            },
        )
        .await?;
    s.accounts
        .set_oauth_meta(&view.id, Some("user:inference"), None, None)
        .await
        .map_err(ServiceError::from)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /oauth/accounts`: the subscription accounts.
async fn accounts(
    State(s): State<AppState>,
    Auth(a): Auth,
) -> Result<Json<Vec<AccountView>>, AdminError> {
    admin(&a)?;
    let mut out = Vec::new();
    let mut page = 1;
    loop {
        let p = s
            .services
            .list_accounts(
                &a,
                Some(PlatformType::Claude),
                None,
                None,
                PageReq {
                    page,
                    limit: PageReq::MAX_LIMIT,
                },
            )
            .await?;
        let n = p.items.len();
        out.extend(p.items);
        if n < PageReq::MAX_LIMIT as usize {
            return Ok(Json(out));
        }
        page += 1;
    }
}

#[derive(Debug, Serialize)]
struct OAuthStatus {
    id: String,
    name: String,
    enabled: bool,
    expires_at: Option<DateTime<Utc>>,
    expired: bool,
    has_refresh_token: bool,
    scopes: Option<String>,
    subscription_type: Option<String>,
    email: Option<String>,
    last_refresh: Option<DateTime<Utc>>,
    health: crate::services::accounts::AccountStatusView,
}

/// `GET /oauth/accounts/{name}/status`.
async fn status(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(name): Id<String>,
) -> Result<Json<OAuthStatus>, AdminError> {
    admin(&a)?;
    let all = s.accounts.list().await.map_err(ServiceError::from)?;
    let acc = all
        .into_iter()
        .find(|x| x.name == name && x.kind == crate::accounts::AccountKind::OAuth)
        .ok_or_else(|| AdminError::not_found("OAuth account not found"))?;
    let meta = s
        .accounts
        .oauth_meta(acc.id.as_str())
        .await
        .map_err(ServiceError::from)?
        .ok_or_else(|| AdminError::not_found("OAuth account not found"))?;
    let view = s.services.get_account(&a, acc.id.as_str()).await?;
    Ok(Json(OAuthStatus {
        id: view.id,
        name: view.name,
        enabled: view.enabled,
        expires_at: acc.expires_at,
        expired: acc.expires_at.is_some_and(|t| t <= Utc::now()),
        has_refresh_token: acc.refresh_token.is_some(),
        scopes: meta.scopes,
        subscription_type: meta.subscription_type,
        email: meta.email,
        last_refresh: meta.refreshed_at,
        health: view.status,
    }))
}

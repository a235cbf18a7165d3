//! OAuth access-token refresh, single-flight per account across every relay process.
//!
//! Inside a process, callers for one account queue on one mutex, so 50 concurrent
//! requests that all see a 401 cause one refresh. Across processes, the refresh lease
//! in the account row (`refresh_lock_until_ms`) lets one process call the token
//! endpoint while the others wait for the row's `token_version` to move. The new token
//! set is written only over the version it was refreshed from, so a stale refresh
//! token is never written back.

use crate::accounts::{Account, AccountKind, AccountStore};
use crate::crypto::Secret;
use crate::oauth::{self, OAuthConfig};
use chrono::{DateTime, Utc};
use ingest::publisher::Publisher;
use schema::{AccountId, AdminAction, AdminVerb, Envelope, Event};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use uuid::Uuid;

/// Longest a refresh lease is held (the token endpoint's timeout is shorter).
pub const LEASE: Duration = Duration::from_secs(30);

/// Why a refresh did not give a usable token.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Not an OAuth account with a refresh token.
    #[error("the account has no refresh token")]
    NotRefreshable,
    /// The account is gone.
    #[error("the account no longer exists")]
    Gone,
    /// The token endpoint refused or was unreachable.
    #[error(transparent)]
    OAuth(#[from] oauth::OAuthError),
    /// Another process held the lease and did not finish in time.
    #[error("another relay is refreshing this account and did not finish in time")]
    Busy,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::accounts::AccountStoreError),
}

/// What a caller knows of the token it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Upstream answered 401 to this access token.
    Rejected,
    /// The token lapses soon.
    Expiring,
}

/// Refreshes OAuth tokens.
pub struct TokenRefresher {
    /// The account table.
    accounts: AccountStore,
    /// Endpoint and client id.
    oauth: OAuthConfig,
    /// Proxy for every upstream call, when configured.
    global_proxy: Option<String>,
    /// Where the refresh audit events go.
    publisher: Publisher,
    /// One mutex per account: the in-process single flight.
    flights: Mutex<HashMap<AccountId, Arc<tokio::sync::Mutex<()>>>>,
}

impl TokenRefresher {
    /// A refresher over the account store.
    pub fn new(
        accounts: AccountStore,
        oauth: OAuthConfig,
        global_proxy: Option<String>,
        publisher: Publisher,
    ) -> Self {
        Self {
            accounts,
            oauth,
            global_proxy,
            publisher,
            flights: Mutex::default(),
        }
    }

    fn flight(&self, id: &AccountId) -> Arc<tokio::sync::Mutex<()>> {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.clone())
            .or_default()
            .clone()
    }

    /// Makes sure the account has a token newer than `used` (the access token the
    /// caller holds). Refreshes at most once across every caller and every process;
    /// returns `true` when the stored token is now a different one.
    pub async fn refresh(
        &self,
        account: &Account,
        used: &Secret,
        why: Why,
    ) -> Result<bool, RefreshError> {
        if account.kind != AccountKind::OAuth || account.refresh_token.is_none() {
            return Err(RefreshError::NotRefreshable);
        }
        let flight = self.flight(&account.id);
        let _one = flight.lock().await;
        let id = account.id.as_str();
        // Someone (here or on another relay) may have refreshed while we queued.
        let current = self.accounts.get(id).await?.ok_or(RefreshError::Gone)?;
        let fresh_enough = match why {
            Why::Rejected => current.credential != *used,
            Why::Expiring => !oauth::needs_refresh(current.expires_at, Utc::now()),
        };
        if fresh_enough {
            return Ok(current.credential != *used);
        }
        let seen = self
            .accounts
            .token_version(id)
            .await?
            .ok_or(RefreshError::Gone)?;
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
        if !self.accounts.try_lock_refresh(id, now, until).await? {
            return self.wait_for_other(id, seen).await;
        }
        // Another relay may have stored a new token set between our reads and the
        // lease: then its token is the fresh one and our refresh token may be spent.
        let current = match self.accounts.get(id).await {
            Ok(Some(a)) => a,
            other => {
                let _ = self.accounts.unlock_refresh(id).await;
                return match other {
                    Ok(_) => Err(RefreshError::Gone),
                    Err(e) => Err(e.into()),
                };
            }
        };
        let version = self.accounts.token_version(id).await?;
        if version != Some(seen) || (why == Why::Rejected && current.credential != *used) {
            self.accounts.unlock_refresh(id).await?;
            return Ok(true);
        }
        let result = self.call_endpoint(&current, now).await;
        match result {
            Ok(tokens) => {
                let stored = self
                    .accounts
                    .store_refreshed(
                        id,
                        seen,
                        &tokens.access_token,
                        tokens.refresh_token.as_ref(),
                        tokens.expires_at,
                        Utc::now(),
                    )
                    .await?;
                if !stored {
                    // The version moved under our lease (it lapsed): keep theirs.
                    return Ok(true);
                }
                if tokens.scope.is_some() {
                    self.accounts
                        .set_oauth_meta(id, tokens.scope.as_deref(), None, None)
                        .await?;
                }
                tracing::info!(account = %account.id, "OAuth token refreshed");
                self.audit(
                    account,
                    AdminVerb::AccountTokenRefreshed,
                    format!(
                        "refreshed the access token of {} ({}); expires {}",
                        account.id,
                        match why {
                            Why::Rejected => "after a 401",
                            Why::Expiring => "before expiry",
                        },
                        tokens.expires_at.to_rfc3339()
                    ),
                );
                Ok(true)
            }
            Err(e) => {
                let _ = self.accounts.unlock_refresh(id).await;
                tracing::warn!(account = %account.id, error = %e, "OAuth token refresh failed");
                self.audit(
                    account,
                    AdminVerb::AccountTokenRefreshFailed,
                    format!("token refresh for {} failed: {e}", account.id),
                );
                Err(e)
            }
        }
    }

    async fn call_endpoint(
        &self,
        account: &Account,
        now: DateTime<Utc>,
    ) -> Result<oauth::TokenSet, RefreshError> {
        let refresh_token = account
            .refresh_token
            .as_ref()
            .ok_or(RefreshError::NotRefreshable)?;
        let proxy = self
            .global_proxy
            .clone()
            .or_else(|| account.proxy_url.clone());
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(20));
        if let Some(p) = proxy.as_deref().and_then(|p| reqwest::Proxy::all(p).ok()) {
            builder = builder.proxy(p);
        }
        let http = builder.build().map_err(oauth::OAuthError::Http)?;
        Ok(oauth::refresh(&http, &self.oauth, refresh_token, now).await?)
    }

    /// Waits for another process's refresh: until the version moves, or the lease
    /// lapses.
    async fn wait_for_other(&self, id: &str, seen: i64) -> Result<bool, RefreshError> {
        let deadline = tokio::time::Instant::now() + LEASE + Duration::from_secs(1);
        loop {
            tokio::time::sleep(Duration::from_millis(25)).await;
            match self.accounts.token_version(id).await? {
                None => return Err(RefreshError::Gone),
                Some(v) if v != seen => return Ok(true),
                Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RefreshError::Busy);
            }
        }
    }

    fn audit(&self, account: &Account, verb: AdminVerb, summary: String) {
        self.publisher.publish(
            Envelope::new(
                Uuid::now_v7(),
                Utc::now(),
                Event::AdminAction(AdminAction::new(
                    "relay",
                    verb,
                    format!("account:{}", account.id),
                    summary,
                )),
            )
            .with_account(Some(account.id.clone())),
        );
    }
}

//! Background tasks of `relay serve`: in-process projectors (embedded mode), OAuth
//! token refresh and other housekeeping. All run under the state's `TaskTracker` and
//! stop on shutdown.

use crate::accounts::{Account, AccountKind};
use crate::app::AppState;
use crate::config::OnOff;
use crate::oauth;
use chrono::Utc;
use schema::{AdminAction, AdminVerb, Envelope, Event};
use std::time::Duration;
use uuid::Uuid;

/// Starts every background task for a serving process.
pub fn spawn(state: &AppState) {
    if state.config.projectors == OnOff::On {
        crate::cmd::project::spawn_projectors(
            state.db.clone(),
            state.log.clone(),
            &state.common,
            &state.tracker,
            state.shutdown.clone(),
        );
    }
    crate::cmd::project::spawn_retention(
        state.db.clone(),
        state.config.log_retention_months,
        &state.tracker,
        state.shutdown.clone(),
    );
    state.tracker.spawn(refresh_oauth_tokens(state.clone()));
    crate::proxy::tasks::spawn(state);
}

/// Refreshes OAuth access tokens shortly before they lapse. The pool picks the new
/// token up on its next reload of the account table.
async fn refresh_oauth_tokens(state: AppState) {
    let every = Duration::from_secs(state.config.oauth_refresh_check_secs.max(1));
    loop {
        refresh_due_tokens(&state).await;
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One pass: refresh every OAuth account whose token expires within the margin.
/// Returns how many were refreshed.
pub async fn refresh_due_tokens(state: &AppState) -> usize {
    let accounts = match state.accounts.list().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list accounts for token refresh");
            return 0;
        }
    };
    let now = Utc::now();
    let mut refreshed = 0;
    for account in accounts.iter().filter(|a| {
        a.enabled
            && a.kind == AccountKind::OAuth
            && a.refresh_token.is_some()
            && oauth::needs_refresh(a.expires_at, now)
    }) {
        if refresh_one(state, account).await {
            refreshed += 1;
        }
    }
    refreshed
}

async fn refresh_one(state: &AppState, account: &Account) -> bool {
    let Some(refresh_token) = &account.refresh_token else {
        return false;
    };
    let proxy = state
        .config
        .global_proxy_url()
        .or_else(|| account.proxy_url.clone());
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(p) = proxy.as_deref().and_then(|p| reqwest::Proxy::all(p).ok()) {
        builder = builder.proxy(p);
    }
    let result = match builder.build() {
        Ok(http) => {
            oauth::refresh(
                &http,
                &state.config.oauth_token_url,
                refresh_token,
                Utc::now(),
            )
            .await
        }
        Err(e) => Err(oauth::OAuthError::Http(e)),
    };
    let (action, summary, ok) = match result {
        Ok(tokens) => match state
            .accounts
            .update_tokens(
                &account.id,
                &tokens.access_token,
                tokens.refresh_token.as_ref(),
                tokens.expires_at,
            )
            .await
        {
            Ok(()) => (
                AdminVerb::AccountTokenRefreshed,
                format!(
                    "refreshed the access token of {}; expires {}",
                    account.id,
                    tokens.expires_at.to_rfc3339()
                ),
                true,
            ),
            Err(e) => (
                AdminVerb::AccountTokenRefreshFailed,
                format!("could not store the refreshed token of {}: {e}", account.id),
                false,
            ),
        },
        Err(e) => (
            AdminVerb::AccountTokenRefreshFailed,
            format!("token refresh for {} failed: {e}", account.id),
            false,
        ),
    };
    if ok {
        tracing::info!(account = %account.id, "OAuth token refreshed");
    } else {
        tracing::warn!(account = %account.id, %summary, "OAuth token refresh failed");
    }
    state.publisher.publish(
        Envelope::new(
            Uuid::now_v7(),
            Utc::now(),
            Event::AdminAction(AdminAction::new(
                "relay",
                action,
                format!("account:{}", account.id),
                summary,
            )),
        )
        .with_account(Some(account.id.clone())),
    );
    ok
}

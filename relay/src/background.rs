//! Background tasks of `relay serve`: in-process projectors (embedded mode), OAuth
//! token refresh and other housekeeping. All run under the state's `TaskTracker` and
//! stop on shutdown.

use crate::accounts::AccountKind;
use crate::app::AppState;
use crate::config::OnOff;
use crate::oauth;
use crate::token_refresh::Why;
use chrono::Utc;
use std::time::Duration;

/// Starts every background task for a serving process.
pub fn spawn(state: &AppState) {
    if state.config.projectors == OnOff::On {
        crate::projectors::spawn_projectors(
            state.db.clone(),
            state.log.clone(),
            &state.common,
            &state.tracker,
            state.shutdown.clone(),
        );
    }
    crate::projectors::spawn_retention(
        state.db.clone(),
        state.config.log_retention_months,
        &state.tracker,
        state.shutdown.clone(),
    );
    state.tracker.spawn(refresh_oauth_tokens(state.clone()));
    state
        .tracker
        .spawn(state.limiter.clone().run(state.shutdown.clone()));
    crate::proxy::tasks::spawn(state);
    crate::notify::spawn(state);
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
/// Returns how many were refreshed. Refreshes are single-flight across relays, so
/// several relays running this loop refresh each account once.
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
        if let Ok(true) = state
            .refresher
            .refresh(account, &account.credential, Why::Expiring)
            .await
        {
            refreshed += 1;
        }
    }
    if refreshed > 0 {
        if let Err(e) = crate::proxy::reload_accounts(state).await {
            tracing::warn!(error = %e, "cannot reload accounts after a token refresh");
        }
    }
    refreshed
}

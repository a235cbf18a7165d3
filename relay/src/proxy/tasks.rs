//! Background work of the proxy: periodic account reloads and health housekeeping,
//! and the fold of `account.health_changed` events read back from the log so that
//! several relays sharing a log agree on account health.

use super::ProxyDeps;
use chrono::Utc;
use futures::StreamExt;
use schema::{AdminVerb, Category, Event};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often accounts are reloaded from the database.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Starts the proxy's background tasks on the state's tracker.
pub fn spawn(state: &ProxyDeps) {
    let wake = Arc::new(Notify::new());
    state
        .tracker
        .spawn(reload_loop(state.clone(), wake.clone()));
    state.tracker.spawn(fold_health(state.clone()));
    state.tracker.spawn(watch_admin(state.clone(), wake));
}

async fn reload_loop(state: ProxyDeps, wake: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
            _ = wake.notified() => {}
        }
        if let Err(e) = super::reload_accounts(&state).await {
            tracing::warn!(error = %e, "cannot reload upstream accounts; keeping the previous set");
        }
        state.proxy.pool.sweep(Utc::now());
    }
}

/// Reads every account health event from the start of the log (they are rare) and
/// adopts those this process did not publish itself.
async fn fold_health(state: ProxyDeps) {
    let mut backoff = Duration::from_millis(500);
    let mut after = 0;
    loop {
        let stream = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            s = state.log.subscribe(after, Some(Category::Account)) => s,
        };
        match stream {
            Ok(mut events) => loop {
                let next = tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    n = events.next() => n,
                };
                match next {
                    Some(Ok(stored)) => {
                        after = stored.position;
                        if let Event::AccountHealthChanged(h) = &stored.envelope.event {
                            if !state.proxy.own_events.contains(&stored.envelope.id) {
                                state.proxy.pool.apply_remote(h, Utc::now());
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "account event subscription failed; resubscribing");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to account events"),
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Whether an administrative action changes what the pool must hold.
fn reloads_accounts(verb: AdminVerb) -> bool {
    use AdminVerb as V;
    matches!(
        verb,
        V::AccountAdd
            | V::AccountUpdate
            | V::AccountEnable
            | V::AccountDisable
            | V::AccountRemove
            | V::AccountTokenRefreshed
            | V::GroupUpdate
    )
}

/// Reloads accounts as soon as an administrative change to accounts is logged.
/// Resubscribes after errors from the last position seen.
async fn watch_admin(state: ProxyDeps, wake: Arc<Notify>) {
    let mut after = state
        .proxy
        .accounts_as_of
        .load(std::sync::atomic::Ordering::SeqCst);
    loop {
        if let Ok(mut events) = state.log.subscribe(after, Some(Category::Admin)).await {
            loop {
                let next = tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    n = events.next() => n,
                };
                let Some(Ok(stored)) = next else { break };
                after = stored.position;
                if let Event::AdminAction(a) = &stored.envelope.event {
                    if a.verb().is_some_and(reloads_accounts) {
                        wake.notify_one();
                    }
                }
            }
        }
        // The periodic reload covers the gap until the subscription is back.
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

//! What the proxy needs from the application, and nothing more. The proxy depends on
//! this, never on `app`: `app` builds it and hands it over (axum `FromRef`).

use crate::accounts::AccountStore;
use crate::config::ServeConfig;
use crate::keys::KeyStore;
use ingest::publisher::Publisher;
use ingest::EventLog;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap to clone; everything lives behind one `Arc`.
#[derive(Clone)]
pub struct ProxyDeps(pub Arc<ProxyDepsInner>);

impl std::ops::Deref for ProxyDeps {
    type Target = ProxyDepsInner;
    fn deref(&self) -> &ProxyDepsInner {
        &self.0
    }
}

/// The proxy's dependencies.
pub struct ProxyDepsInner {
    /// `serve` settings.
    pub config: ServeConfig,
    /// The event log (embedded or JetStream), read back for health and admin events.
    pub log: Arc<dyn EventLog>,
    /// Where the request path sends events; never waited on.
    pub publisher: Publisher,
    /// Tenant keys.
    pub keys: KeyStore,
    /// Upstream account configuration.
    pub accounts: AccountStore,
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
    /// Background tasks that must finish before exit.
    pub tracker: TaskTracker,
    /// The account pool, upstream clients, metrics.
    pub proxy: Arc<super::ProxyState>,
    /// Tenant limits.
    pub limiter: Arc<crate::limits::engine::Limiter>,
    /// OAuth token refresh, single-flight across relays.
    pub refresher: Arc<crate::token_refresh::TokenRefresher>,
}

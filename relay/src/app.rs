//! Shared application state handed to every handler.

use crate::accounts::AccountStore;
use crate::config::{CommonConfig, ServeConfig};
use crate::keys::KeyStore;
use ingest::publisher::Publisher;
use ingest::EventLog;
use sqlx::AnyPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap to clone; everything lives behind one `Arc`.
#[derive(Clone)]
pub struct AppState(pub Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// The state itself.
pub struct AppInner {
    /// Shared settings.
    pub common: CommonConfig,
    /// `serve` settings.
    pub config: ServeConfig,
    /// Configuration and read-model database.
    pub db: AnyPool,
    /// The event log (embedded or JetStream).
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
    /// The proxy: account pool, upstream clients, metrics.
    pub proxy: Arc<crate::proxy::ProxyState>,
    /// Tenant limits on the proxy path.
    pub limiter: Arc<crate::limits::engine::Limiter>,
    /// OAuth token refresh, single-flight across relays.
    pub refresher: Arc<crate::token_refresh::TokenRefresher>,
    /// Admin use cases (users, keys, accounts, groups, reads).
    pub services: crate::services::Services,
}

//! Shared application state handed to every handler. `app` is imported by `startup`,
//! `server`, `background` and the admin-side modules; the proxy sees only
//! [`ProxyDeps`], which the state hands out through axum's `FromRef`.

use crate::config::CommonConfig;
use crate::proxy::ProxyDeps;
use axum::extract::FromRef;
use sqlx::AnyPool;
use std::sync::Arc;

/// Cheap to clone; everything lives behind one `Arc`.
#[derive(Clone)]
pub struct AppState(pub Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// The state itself. Fields the proxy shares (keys, accounts, publisher, log, pool,
/// limiter, …) live in [`ProxyDeps`] and are reached through `Deref`.
pub struct AppInner {
    /// Shared settings.
    pub common: CommonConfig,
    /// Configuration and read-model database.
    pub db: AnyPool,
    /// What the proxy uses.
    pub deps: ProxyDeps,
    /// Admin use cases (users, keys, accounts, groups, reads).
    pub services: crate::services::Services,
}

impl std::ops::Deref for AppInner {
    type Target = ProxyDeps;
    fn deref(&self) -> &ProxyDeps {
        &self.deps
    }
}

impl FromRef<AppState> for ProxyDeps {
    fn from_ref(state: &AppState) -> ProxyDeps {
        state.deps.clone()
    }
}

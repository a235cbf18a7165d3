//! HTTP clients for upstream traffic, one per distinct proxy.
//!
//! A `reqwest::Client` owns a connection pool, so clients are built once per proxy URL
//! (and one for direct traffic) and reused. The global proxy, when enabled, wins over
//! an account's own proxy. Environment proxies are ignored so routing depends only on
//! the relay's configuration.

use crate::config::ServeConfig;
use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The proxy URL is not usable.
    #[error("invalid proxy URL for account: {0}")]
    Proxy(String),
    /// The client could not be built.
    #[error("cannot build HTTP client: {0}")]
    Build(String),
}

/// The client cache.
pub struct Upstreams {
    global_proxy: Option<String>,
    /// Where traffic may go (names are checked after resolution).
    egress: std::sync::Arc<crate::egress::EgressPolicy>,
    connect_timeout: Duration,
    clients: RwLock<HashMap<Option<String>, reqwest::Client>>,
}

impl Upstreams {
    /// Reads the proxy and timeout settings.
    pub fn new(config: &ServeConfig, egress: crate::egress::EgressPolicy) -> Self {
        Self {
            global_proxy: config.global_proxy_url(),
            egress: std::sync::Arc::new(egress),
            connect_timeout: Duration::from_secs(config.upstream_connect_timeout_secs),
            clients: RwLock::new(HashMap::new()),
        }
    }

    /// The proxy an account's traffic goes through, if any.
    pub fn effective_proxy<'a>(&'a self, account_proxy: Option<&'a str>) -> Option<&'a str> {
        self.global_proxy
            .as_deref()
            .or(account_proxy.filter(|p| !p.trim().is_empty()))
    }

    /// The client for an account's proxy setting.
    pub fn client(&self, account_proxy: Option<&str>) -> Result<reqwest::Client, UpstreamError> {
        let proxy = self.effective_proxy(account_proxy);
        {
            let clients = self.clients.read().unwrap_or_else(PoisonError::into_inner);
            // The lookup key borrows; a `String` is only built on a miss.
            if let Some(c) = clients
                .iter()
                .find(|(k, _)| k.as_deref() == proxy)
                .map(|(_, c)| c)
            {
                return Ok(c.clone());
            }
        }
        let client = self.build(proxy)?;
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        let c = clients
            .entry(proxy.map(str::to_owned))
            .or_insert(client)
            .clone();
        Ok(c)
    }

    fn build(&self, proxy: Option<&str>) -> Result<reqwest::Client, UpstreamError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(std::sync::Arc::new(crate::egress::GuardedResolver {
                policy: self.egress.clone(),
            }))
            .no_proxy();
        if let Some(url) = proxy {
            // `socks5://` resolves names locally; prefer `socks5h://` for remote DNS.
            let p = reqwest::Proxy::all(url).map_err(|e| UpstreamError::Proxy(redact(url, &e)))?;
            b = b.proxy(p);
        }
        b.build().map_err(|e| UpstreamError::Build(e.to_string()))
    }
}

/// An error message about a proxy URL without its password.
fn redact(url: &str, e: &reqwest::Error) -> String {
    let shown = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    };
    format!("{shown}: {e}")
}

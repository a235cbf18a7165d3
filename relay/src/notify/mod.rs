//! Alerts and webhooks, driven by the event stream.
//!
//! The `notifications` projection (in `projections`) turns events into an outbox, one
//! row per notable event id, with no network and no clock. This module delivers from
//! it: a worker in every `relay serve` process, of which the one holding the
//! `notifier` lease sends. For each outbox row and each enabled target that receives
//! it ([`route`]), it writes one `notification_deliveries` row keyed by (event id,
//! target), then sends the due ones with retries ([`retry`]) in each target's own
//! format ([`payload`]). The delivery record is relay state, not a projection: a
//! rebuild re-creates identical outbox rows, which already have their delivery rows,
//! and nothing that happened before a target was created is ever sent to it, so a
//! replay sends nothing.
//!
//! Layout:
//! - [`route`]: event filters and tenant routing (pure);
//! - [`retry`]: exponential backoff with jitter up to a maximum age (pure);
//! - [`payload`]: the webhook body and signature, Slack, Feishu/Lark, DingTalk and
//!   Telegram messages, and how each receiver says "accepted" (pure);
//! - [`store`]: targets (URL and secret sealed) and the delivery log;
//! - [`worker`]: the lease, the outbox cursor, the sending.

pub mod payload;
pub mod retry;
pub mod route;
pub mod store;
pub mod worker;

pub use payload::TargetKind;
pub use store::{Delivery, NotifyStore, Target};

use crate::config::OnOff;
use std::time::Duration;

/// Settings of alert delivery (flattened into `relay serve`'s).
#[derive(Debug, Clone, clap::Args)]
pub struct NotifyConfig {
    /// Run the alert notifier in this process (`on`); one process sends at a time.
    #[arg(long = "notifier", env = "NOTIFIER", default_value = "on")]
    pub notifier: OnOff,

    /// How often the notifier looks for alerts to send, in milliseconds.
    #[arg(long, env = "NOTIFY_POLL_MS", default_value_t = 1000)]
    pub notify_poll_ms: u64,

    /// Delay before the first retry of a failed delivery, in milliseconds (doubles per
    /// attempt, with jitter).
    #[arg(long, env = "NOTIFY_RETRY_BASE_MS", default_value_t = 5000)]
    pub notify_retry_base_ms: u64,

    /// Longest delay between two attempts, in milliseconds.
    #[arg(long, env = "NOTIFY_RETRY_MAX_MS", default_value_t = 600_000)]
    pub notify_retry_max_ms: u64,

    /// After this many seconds a delivery that keeps failing is marked failed.
    #[arg(long, env = "NOTIFY_MAX_AGE", default_value_t = 86_400)]
    pub notify_max_age_secs: u64,

    /// Timeout of one delivery request, in seconds.
    #[arg(long, env = "NOTIFY_TIMEOUT", default_value_t = 10)]
    pub notify_timeout_secs: u64,
}

impl NotifyConfig {
    /// The retry schedule.
    pub fn retry(&self) -> retry::RetryPolicy {
        retry::RetryPolicy {
            base: Duration::from_millis(self.notify_retry_base_ms.max(1)),
            max_delay: Duration::from_millis(self.notify_retry_max_ms.max(1)),
            max_age: Duration::from_secs(self.notify_max_age_secs),
        }
    }

    /// The poll interval.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.notify_poll_ms.clamp(10, 60_000))
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.notify_timeout_secs.clamp(1, 300))
    }
}

/// Starts the notifier of a serving process (unless `NOTIFIER=off`).
pub fn spawn(state: &crate::app::AppState) {
    let config = &state.config.notify;
    if config.notifier == OnOff::Off {
        return;
    }
    let store = NotifyStore::new(state.db.clone(), state.accounts.cipher().clone());
    match worker::Notifier::new(store, state.common.egress(), config) {
        Ok(n) => {
            state.tracker.spawn(n.run(state.shutdown.clone()));
        }
        Err(e) => tracing::error!(error = %e, "notifier not started"),
    }
}

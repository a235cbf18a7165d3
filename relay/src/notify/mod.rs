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
//! Two kinds of notice are not events the projection sees in time, so the relay writes
//! them into the outbox itself (with their deliveries): ops alerts ([`ops`]; every
//! process watches its own publisher, the lease holder the projectors) and the daily
//! digest per tenant ([`digest`], made by the lease holder). Their ids are
//! deterministic, so a retry, a restart or a rebuild queues nothing twice.
//!
//! Layout:
//! - [`route`]: event filters and tenant routing (pure);
//! - [`retry`]: exponential backoff with jitter up to a maximum age (pure);
//! - [`payload`]: the webhook body and signature, Slack, Feishu/Lark, DingTalk and
//!   Telegram messages, and how each receiver says "accepted" (pure);
//! - [`watch`]: when the spool, the quarantine or the projector lag is worth an alert,
//!   with hysteresis (pure);
//! - [`digest`]: which days are due and the digest's figures (pure);
//! - [`store`]: targets (URL and secret sealed) and the delivery log;
//! - [`ops`]: reading the publisher and the lag, writing and publishing ops alerts;
//! - [`worker`]: the lease, the outbox cursor, the lag watch and the digests, the
//!   sending.

pub mod digest;
pub mod ops;
pub mod payload;
pub mod retry;
pub mod route;
pub mod store;
pub mod watch;
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

    /// Alert (`ops.spool_growing`) when this process's publisher spool holds more than
    /// this many events; all clear (`ops.recovered`) at half of it.
    #[arg(long, env = "NOTIFY_SPOOL_EVENTS", default_value_t = 1000)]
    pub notify_spool_events: u64,

    /// Alert (`ops.projector_lagging`) when a projection is more than this many events
    /// behind the log; all clear at half of it.
    #[arg(long, env = "NOTIFY_LAG_EVENTS", default_value_t = 10_000)]
    pub notify_lag_events: u64,

    /// Alert (`ops.projector_lagging`) when a projection behind the log has not moved
    /// for this many seconds (0: never).
    #[arg(long, env = "NOTIFY_LAG_SECS", default_value_t = 300)]
    pub notify_lag_secs: u64,

    /// Send a daily usage digest per tenant (`digest.daily`).
    #[arg(long = "notify-digest", env = "NOTIFY_DIGEST", default_value = "on")]
    pub notify_digest: OnOff,

    /// The hour (0–23, `BILLING_TIMEZONE`) after which the previous day's digest is
    /// made; the wait lets late events reach the usage read model.
    #[arg(long, env = "NOTIFY_DIGEST_HOUR", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=23))]
    pub notify_digest_hour: u32,
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

/// Starts the watch of this process's publisher, and the notifier (unless
/// `NOTIFIER=off`).
pub fn spawn(state: &crate::app::AppState) {
    let config = &state.config.notify;
    let store = NotifyStore::new(state.db.clone(), state.accounts.cipher().clone());
    let alerts = ops::OpsAlerts::new(store.clone(), state.publisher.clone());
    state.tracker.spawn(
        ops::PublisherWatcher::new(alerts.clone(), config.notify_spool_events)
            .run(state.shutdown.clone(), config.poll()),
    );
    if config.notifier == OnOff::Off {
        return;
    }
    match notifier(state, store, alerts) {
        Ok(n) => {
            state.tracker.spawn(n.run(state.shutdown.clone()));
        }
        Err(e) => tracing::error!(error = %e, "notifier not started"),
    }
}

/// The notifier of a serving process, not started: a test drives its passes with a
/// time of its choosing (e.g. tomorrow, to make a digest due).
pub fn notifier(
    state: &crate::app::AppState,
    store: NotifyStore,
    alerts: ops::OpsAlerts,
) -> Result<worker::Notifier, String> {
    let config = &state.config.notify;
    let digest_tz = match config.notify_digest {
        OnOff::On => Some(state.common.billing_tz()?),
        OnOff::Off => None,
    };
    worker::Notifier::new(
        store,
        state.common.egress(),
        config,
        worker::Sources {
            log: state.log.clone(),
            alerts,
            digest_tz,
        },
    )
    .map_err(|e| e.to_string())
}

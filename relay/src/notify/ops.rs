//! Ops alerts: a relay's publisher spool or quarantine growing, the projectors
//! lagging, and the all-clear. The decisions are in [`super::watch`]; this module
//! reads the measures and writes the notices.
//!
//! An ops alert cannot wait for the event log, which may be what is failing: it is
//! written straight into the outbox (with its deliveries) and also published as an
//! `admin.action` for the audit log. Its id is derived from the process and the
//! episode, and the projection maps the event to the same outbox row, so whichever
//! arrives first wins and nothing is queued twice; a rebuild re-creates the same row.

use super::store::{NotifyStore, NotifyStoreError};
use super::watch::{Backlog, Change, LagReading, LagSummary, PublisherChange, PublisherWatch};
use super::worker::write_direct;
use chrono::{DateTime, Utc};
use ingest::publisher::Publisher;
use schema::{AdminAction, AdminVerb, Envelope, Event};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Least time between two quarantine reports of one process.
pub const QUARANTINE_QUIET: Duration = Duration::from_secs(15 * 60);

/// Writes and publishes the ops notices of one process.
#[derive(Clone)]
pub struct OpsAlerts {
    /// Where the notices go.
    store: NotifyStore,
    /// Where their audit events go.
    publisher: Publisher,
    /// The process, for people: `host/pid`.
    process: String,
    /// This run of the process, for ids: a restarted process (same host, same pid in
    /// a container) starts new episodes.
    run: Uuid,
}

impl OpsAlerts {
    /// Notices of this process.
    pub fn new(store: NotifyStore, publisher: Publisher) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| "relay".to_owned());
        Self {
            store,
            publisher,
            process: format!("{}/{}", host.trim(), std::process::id()),
            run: Uuid::now_v7(),
        }
    }

    /// The process, as notices name it (`host/pid`).
    pub fn process(&self) -> &str {
        &self.process
    }

    /// The id of a notice: this run, what it is about, the verb, the episode.
    pub fn id(&self, verb: AdminVerb, target: &str, episode: u32) -> Uuid {
        Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("relay:{}:{target}:{}:{episode}", self.run, verb.as_str()).as_bytes(),
        )
    }

    /// Publishes one notice as an `admin.action` and writes it to the outbox with its
    /// deliveries. Returns its id.
    pub async fn raise(
        &self,
        now: DateTime<Utc>,
        verb: AdminVerb,
        target: &str,
        summary: String,
        episode: u32,
    ) -> Result<Uuid, NotifyStoreError> {
        let id = self.id(verb, target, episode);
        let env = Envelope::new(
            id,
            now,
            Event::AdminAction(AdminAction::new("relay", verb, target, summary)),
        );
        let row = projections::notifications::outbox_row(&env);
        // The event first: it never waits, and if the database is what fails it still
        // reaches the outbox through the projection.
        self.publisher.publish(env);
        if let Some(row) = row {
            write_direct(&self.store, &[row], now, None).await?;
        }
        tracing::warn!(verb = verb.as_str(), target, %id, "ops alert");
        Ok(id)
    }

    /// The notices of a projector lag change.
    pub async fn lag_changed(
        &self,
        now: DateTime<Utc>,
        change: Change,
        s: &LagSummary,
        threshold: u64,
    ) -> Result<Uuid, NotifyStoreError> {
        let target = "projections";
        match change {
            Change::Raised(n) => {
                let mut summary = format!(
                    "Projection {} is {} events behind the event log (alert above {threshold})",
                    s.projection, s.behind
                );
                if !s.stalled.is_empty() {
                    summary.push_str(&format!(
                        "; not moving while behind: {}",
                        s.stalled.join(", ")
                    ));
                }
                summary.push_str(". Reads, budgets and alerts are late.");
                self.raise(now, AdminVerb::OpsProjectorLagging, target, summary, n)
                    .await
            }
            Change::Recovered(n) => {
                let summary = format!(
                    "The projections caught up ({} events behind at most).",
                    s.behind
                );
                self.raise(now, AdminVerb::OpsRecovered, target, summary, n)
                    .await
            }
        }
    }
}

/// Watches this process's publisher and raises its ops notices.
pub struct PublisherWatcher {
    /// Writes the notices.
    alerts: OpsAlerts,
    /// The decisions.
    watch: PublisherWatch,
    /// The spool threshold, for the text.
    threshold: u64,
}

impl PublisherWatcher {
    /// A watcher alerting above `spool_threshold` spooled events.
    pub fn new(alerts: OpsAlerts, spool_threshold: u64) -> Self {
        Self {
            alerts,
            watch: PublisherWatch::new(spool_threshold, QUARANTINE_QUIET),
            threshold: spool_threshold,
        }
    }

    /// Feeds one reading; returns the ids of the notices raised.
    pub async fn check(
        &mut self,
        now: DateTime<Utc>,
        backlog: Backlog,
    ) -> Result<Vec<Uuid>, NotifyStoreError> {
        let mut ids = Vec::new();
        let process = self.alerts.process().to_owned();
        for change in self.watch.observe(now, backlog) {
            let (verb, target, summary, episode) = match change {
                PublisherChange::Spool(Change::Raised(n)) => (
                    AdminVerb::OpsSpoolGrowing,
                    format!("spool:{process}"),
                    format!(
                        "The publisher spool of {process} holds {} events (alert above {}): \
                         the event log is not taking them. They are kept and sent when it \
                         is back; when the spool is full, requests are refused.",
                        backlog.spool_events, self.threshold
                    ),
                    n,
                ),
                PublisherChange::Spool(Change::Recovered(n)) => (
                    AdminVerb::OpsRecovered,
                    format!("spool:{process}"),
                    format!(
                        "The publisher spool of {process} is down to {} events.",
                        backlog.spool_events
                    ),
                    n,
                ),
                PublisherChange::QuarantineGrew { n, before, now: q } => (
                    AdminVerb::OpsQuarantineGrew,
                    format!("quarantine:{process}"),
                    format!(
                        "{} more events were quarantined by {process} ({q} in all): the event \
                         log refused them for good. They are kept aside in the spool file.",
                        q.saturating_sub(before)
                    ),
                    n,
                ),
            };
            ids.push(
                self.alerts
                    .raise(now, verb, &target, summary, episode)
                    .await?,
            );
        }
        Ok(ids)
    }

    /// Reads the publisher every `poll` until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken, poll: Duration) {
        loop {
            let stats = self.alerts.publisher.stats();
            let backlog = Backlog {
                spool_events: stats.spool_events,
                quarantine_events: stats.quarantine_events,
            };
            if let Err(e) = self.check(Utc::now(), backlog).await {
                tracing::warn!(error = %e, "cannot write an ops alert");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// Projector lag readings from `projections::read::lag`.
pub fn readings(lag: &[projections::read::ProjectionLag]) -> Vec<LagReading> {
    lag.iter()
        .map(|l| LagReading {
            projection: l.projection.clone(),
            checkpoint: l.checkpoint,
            behind: l.behind,
        })
        .collect()
}

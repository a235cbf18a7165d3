//! Operator subcommands. Each takes a [`Context`] with the database and event log
//! already opened, and its own clap arguments.

pub mod accounts;
pub mod events;
pub mod keys;
pub mod project;
pub mod rebuild;
pub mod reprice;
pub mod statement;

use crate::config::CommonConfig;
use crate::startup;
use chrono::Utc;
use ingest::publisher::{Publisher, PublisherConfig};
use ingest::EventLog;
use schema::{AdminAction, Envelope, Event};
use sqlx::AnyPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// What every subcommand gets.
pub struct Context {
    /// Shared settings.
    pub common: CommonConfig,
    /// The database, migrated.
    pub db: AnyPool,
    /// The event log.
    pub log: Arc<dyn EventLog>,
}

impl Context {
    /// Opens the database and the event log.
    pub async fn open(common: CommonConfig) -> anyhow::Result<Self> {
        startup::ensure_data_dir(&common)?;
        let db = startup::open_db(&common).await?;
        let log = startup::open_event_log(&common).await?;
        Ok(Self { common, db, log })
    }

    /// Records an administrative action in the event log. Goes through the publisher
    /// so that an unreachable log spools the event instead of losing it.
    pub async fn record_admin(
        &self,
        action: &str,
        target: &str,
        summary: &str,
    ) -> anyhow::Result<()> {
        let envelope = Envelope::new(
            Uuid::now_v7(),
            Utc::now(),
            Event::AdminAction(AdminAction {
                actor: "cli".into(),
                action: action.into(),
                target: target.into(),
                summary: summary.into(),
            }),
        );
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let publisher = Publisher::start(
            self.log.clone(),
            PublisherConfig::new(self.common.data_dir.join("spool.db")),
            &tracker,
            shutdown.clone(),
        )
        .await?;
        publisher.publish(envelope);
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        Ok(())
    }
}

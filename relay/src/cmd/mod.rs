//! Operator subcommands. Each takes a [`Context`] with the database and event log
//! already opened, and its own clap arguments.

pub mod accounts;
pub mod events;
pub mod keys;
pub mod project;
pub mod rebuild;
pub mod reprice;
pub mod statement;
pub mod users;

use crate::accounts::AccountStore;
use crate::config::CommonConfig;
use crate::keys::KeyStore;
use crate::services::{ServiceError, ServiceSettings, Services};
use crate::startup;
use ingest::publisher::Publisher;
use ingest::EventLog;
use sqlx::AnyPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every subcommand gets.
pub struct Context {
    /// Shared settings.
    pub common: CommonConfig,
    /// The database, migrated.
    pub db: AnyPool,
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// Publishes the commands' audit events (spooled if the log is unreachable).
    publisher: Publisher,
    /// Stops the publisher in [`Context::finish`].
    shutdown: CancellationToken,
    /// The publisher's task.
    tracker: TaskTracker,
}

impl Context {
    /// Opens the database and the event log, and starts a publisher.
    pub async fn open(common: CommonConfig) -> anyhow::Result<Self> {
        startup::ensure_data_dir(&common)?;
        let db = startup::open_db(&common).await?;
        let log = startup::open_event_log(&common).await?;
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let publisher = Publisher::start(
            log.clone(),
            startup::publisher_config(&common),
            &tracker,
            shutdown.clone(),
        )
        .await?;
        Ok(Self {
            common,
            db,
            log,
            publisher,
            shutdown,
            tracker,
        })
    }

    /// The use cases, acting as `cli`.
    pub fn services(&self) -> anyhow::Result<Services> {
        let cipher = startup::cipher(&self.common)?;
        Ok(Services::new(
            self.db.clone(),
            KeyStore::new(self.db.clone(), cipher.key_hasher()),
            AccountStore::new(self.db.clone(), cipher),
            None,
            self.publisher.clone(),
            ServiceSettings {
                billing_tz: self.common.billing_tz().map_err(anyhow::Error::msg)?,
                registration_enabled: false,
                egress: self.common.egress(),
            },
        ))
    }

    /// Flushes the audit events to the log (or the spool) and stops the publisher.
    pub async fn finish(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// A service error as a CLI error: the message, without the HTTP code.
pub fn fail(e: ServiceError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

//! The projectors and the request-log retention job as background tasks, shared by
//! `relay serve` (embedded mode) and `relay project` (scale mode). Depends on
//! nothing above it: `startup`, `background` and `cmd` use it, not the reverse.

use crate::config::CommonConfig;
use anyhow::Context as _;
use ingest::EventLog;
use projections::{PriceTable, Projector, ProjectorOptions};
use sqlx::AnyPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the projectors' lag is logged.
const LAG_REPORT_EVERY: Duration = Duration::from_secs(60);

/// The price table: `PRICE_TABLE` when set, else the one shipped in the binary.
pub fn price_table(common: &CommonConfig) -> anyhow::Result<Arc<PriceTable>> {
    let table = match &common.price_table {
        Some(path) => PriceTable::from_file(path)
            .with_context(|| format!("cannot load PRICE_TABLE {}", path.display()))?,
        None => PriceTable::embedded().context("the embedded price table is invalid")?,
    };
    Ok(Arc::new(table))
}

/// Starts the projectors inside a serving process. A bad `PRICE_TABLE` is logged and
/// the projectors are not started (the proxy keeps serving; events wait in the log).
pub fn spawn_projectors(
    db: AnyPool,
    log: Arc<dyn EventLog>,
    common: &CommonConfig,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    match price_table(common) {
        Ok(prices) => start(db, log, prices, tracker, shutdown),
        Err(e) => tracing::error!(error = %format!("{e:#}"), "projectors not started"),
    }
}

/// Starts the request-log retention job: every hour, deletes request-log rows older
/// than `months` months (30-day months). `months = 0` keeps everything.
pub fn spawn_retention(
    db: AnyPool,
    months: u32,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    if months == 0 {
        return;
    }
    tracker.spawn(async move {
        loop {
            let cutoff = chrono::Utc::now() - chrono::Duration::days(30 * i64::from(months));
            match projections::requests::prune_request_log(&db, cutoff.timestamp_millis()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, months, "request log pruned"),
                Err(e) => tracing::warn!(error = %e, "request-log retention failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
    });
}

pub fn start(
    db: AnyPool,
    log: Arc<dyn EventLog>,
    prices: Arc<PriceTable>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    // One group: the log is read and decoded once for every projection; each keeps
    // its own checkpoint and lease.
    let projector = Projector::group(db, log, projections::all(prices))
        .with_options(ProjectorOptions::default());
    tracker.spawn(async move {
        let mut lag = projector.lag();
        let reporter = async {
            loop {
                tokio::time::sleep(LAG_REPORT_EVERY).await;
                let l = *lag.borrow_and_update();
                tracing::info!(
                    checkpoint = l.checkpoint,
                    head = l.head,
                    behind = l.behind(),
                    "projector lag"
                );
            }
        };
        tokio::select! {
            result = projector.run(shutdown) => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "projectors stopped");
                }
            }
            _ = reporter => {}
        }
    });
}

//! `relay project`: the projectors alone (scale mode: one process beside N relays).

use super::Context;
use crate::cli::ProjectArgs;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::projectors::price_table;

/// Runs the projectors until SIGINT/SIGTERM.
pub async fn run(ctx: &Context, _args: &ProjectArgs) -> anyhow::Result<()> {
    let prices = price_table(&ctx.common)?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(crate::startup::wait_for_signal(shutdown.clone()));
    crate::projectors::start(
        ctx.db.clone(),
        ctx.log.clone(),
        prices,
        &tracker,
        shutdown.clone(),
    );
    tracing::info!(
        backend = ctx.log.backend(),
        projections = ?projections::PROJECTION_NAMES,
        "projectors running"
    );
    shutdown.cancelled().await;
    tracker.close();
    tracker.wait().await;
    Ok(())
}

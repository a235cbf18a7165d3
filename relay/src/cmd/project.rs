//! `relay project` and the in-process projectors of `relay serve`.
//! (Placeholder until the projections crate lands; replaced by the projections work.)

use super::Context;
use crate::cli::ProjectArgs;
use crate::config::CommonConfig;
use ingest::EventLog;
use sqlx::AnyPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs the projectors until SIGINT/SIGTERM.
pub async fn run(_ctx: &Context, _args: &ProjectArgs) -> anyhow::Result<()> {
    anyhow::bail!("relay project is not available in this build yet")
}

/// Starts the projectors inside a serving process.
pub fn spawn_projectors(
    _db: AnyPool,
    _log: Arc<dyn EventLog>,
    _common: &CommonConfig,
    _tracker: &TaskTracker,
    _shutdown: CancellationToken,
) {
    tracing::warn!("projectors are not available in this build yet");
}

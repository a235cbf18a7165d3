//! `relay rebuild`. (Placeholder until the projections crate lands.)

use super::Context;
use crate::cli::RebuildArgs;

/// Runs the command.
pub async fn run(_ctx: &Context, _args: &RebuildArgs) -> anyhow::Result<()> {
    anyhow::bail!("relay rebuild is not available in this build yet")
}

//! `relay events`. (Placeholder until the projections crate lands.)

use super::Context;
use crate::cli::TailArgs;

/// Runs the command.
pub async fn run(_ctx: &Context, _args: &TailArgs) -> anyhow::Result<()> {
    anyhow::bail!("relay events is not available in this build yet")
}

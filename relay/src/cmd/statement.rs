//! `relay statement`. (Placeholder until the projections crate lands.)

use super::Context;
use crate::cli::StatementArgs;

/// Runs the command.
pub async fn run(_ctx: &Context, _args: &StatementArgs) -> anyhow::Result<()> {
    anyhow::bail!("relay statement is not available in this build yet")
}

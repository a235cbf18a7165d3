//! `relay reprice`. (Placeholder until the projections crate lands.)

use super::Context;
use crate::cli::RepriceArgs;

/// Runs the command.
pub async fn run(_ctx: &Context, _args: &RepriceArgs) -> anyhow::Result<()> {
    anyhow::bail!("relay reprice is not available in this build yet")
}

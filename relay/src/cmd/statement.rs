//! `relay statement --tenant T --month YYYY-MM [--format csv|json]`: a tenant's monthly
//! statement from the usage ledger — per model and unit price, the token kinds, unit
//! prices, cost and the usage event ids behind each line, then the totals.

use super::Context;
use crate::cli::{StatementArgs, StatementFormat};
use std::io::Write;

/// Runs the command.
pub async fn run(ctx: &Context, args: &StatementArgs) -> anyhow::Result<()> {
    let statement = projections::read::statement(&ctx.db, &args.tenant, &args.month).await?;
    let text = match args.format {
        StatementFormat::Csv => statement.to_csv(),
        StatementFormat::Json => serde_json::to_string_pretty(&statement)? + "\n",
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

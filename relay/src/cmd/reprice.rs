//! `relay reprice --from DATE`: recomputes the cost of every usage event from DATE
//! (UTC) on with the current price table (`PRICE_TABLE` or the shipped one), rewrites
//! the affected usage totals and prints the difference per tenant. On a terminal it
//! shows progress on stderr (ledger rows done of total, rate, ETA). Stop the usage
//! projector first (it holds a lease), and restart it with the same `PRICE_TABLE`.

use super::Context;
use crate::cli::RepriceArgs;
use anyhow::Context as _;
use chrono::NaiveDate;
use std::io::Write;

/// Runs the command.
pub async fn run(ctx: &Context, args: &RepriceArgs) -> anyhow::Result<()> {
    let from = NaiveDate::parse_from_str(&args.from, "%Y-%m-%d")
        .with_context(|| format!("--from {:?} is not a date (YYYY-MM-DD)", args.from))?;
    let prices = super::project::price_table(&ctx.common)?;
    let mut bar = super::rebuild::Progress::on_stderr();
    let mut progress = |done: u64, total: u64| bar.update("reprice", done, total);
    let diffs = projections::reprice_with(&ctx.db, &prices, from, &mut progress).await;
    bar.finish(diffs.is_ok());
    let diffs = diffs?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>22} {:>22} {:>22}",
        "tenant", "events", "changed", "old_cost_usd", "new_cost_usd", "difference_usd"
    )?;
    let (mut old, mut new, mut events, mut changed) = (
        rust_decimal::Decimal::ZERO,
        rust_decimal::Decimal::ZERO,
        0,
        0,
    );
    for d in &diffs {
        let tenant = if d.tenant.is_empty() {
            "(none)"
        } else {
            &d.tenant
        };
        writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>22} {:>22} {:>22}",
            tenant, d.events, d.changed_events, d.old_cost, d.new_cost, d.difference
        )?;
        old += d.old_cost;
        new += d.new_cost;
        events += d.events;
        changed += d.changed_events;
    }
    writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>22} {:>22} {:>22}",
        "TOTAL",
        events,
        changed,
        old,
        new,
        new - old
    )?;
    Ok(())
}

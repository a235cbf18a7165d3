//! `relay rebuild <projection|all>`: resets a projection and replays the event log
//! into it, with a progress display on stderr. Refuses while another process (e.g. a
//! running `relay serve` with projectors on) holds the projection's lease.

use super::Context;
use crate::cli::RebuildArgs;
use std::io::Write;
use std::time::{Duration, Instant};

/// Runs the command.
pub async fn run(ctx: &Context, args: &RebuildArgs) -> anyhow::Result<()> {
    let which = args.projection.as_str();
    if which != "all" && !projections::PROJECTION_NAMES.contains(&which) {
        anyhow::bail!(
            "unknown projection {which:?}; use one of {} or all",
            projections::PROJECTION_NAMES.join(", ")
        );
    }
    let prices = super::project::price_table(&ctx.common)?;
    let all = projections::all(prices);
    let started = Instant::now();
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut progress = |name: &str, lag: projections::Lag| {
        // Redraw at most ten times a second, and always at the end.
        if lag.checkpoint < lag.head && last_draw.elapsed() < Duration::from_millis(100) {
            return;
        }
        last_draw = Instant::now();
        let _ = write!(
            std::io::stderr().lock(),
            "\r{}",
            progress_line(name, lag.checkpoint, lag.head)
        );
    };
    let done = projections::rebuild(&ctx.db, ctx.log.clone(), &all, which, &mut progress).await;
    let mut err = std::io::stderr().lock();
    writeln!(err)?;
    let done = done?;
    for (name, position) in done {
        writeln!(err, "rebuilt {name} up to position {position}")?;
    }
    writeln!(err, "done in {:.1?}", started.elapsed())?;
    Ok(())
}

/// `name [#####.....]  512/1024  50%`.
pub fn progress_line(name: &str, at: u64, head: u64) -> String {
    const WIDTH: u64 = 30;
    let done = at.min(head);
    let filled = (done * WIDTH).checked_div(head).unwrap_or(WIDTH);
    let pct = (done * 100).checked_div(head).unwrap_or(100);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    format!("{name:<9}[{bar}] {at:>10}/{head:<10} {pct:>3}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_fraction() {
        let l = progress_line("usage", 50, 100);
        assert!(l.contains("50%"), "{l}");
        assert!(l.contains(&format!("[{}{}]", "#".repeat(15), ".".repeat(15))));
        assert!(progress_line("audit", 0, 0).contains("100%"));
    }
}

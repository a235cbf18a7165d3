//! `relay rebuild <projection|all>`: resets a projection and replays the event log
//! into it. On a terminal it shows progress on stderr (events done of total, rate,
//! ETA); elsewhere it prints only the summary at the end. Refuses while another process
//! (e.g. a running `relay serve` with projectors on) holds the projection's lease.

use super::Context;
use crate::cli::RebuildArgs;
use std::io::{IsTerminal, Write};
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
    // The final line was part of this command's summary before it drew progress only on
    // terminals; it stays.
    let mut bar = Progress::on_stderr().with_final_line();
    let mut progress = |name: &str, lag: projections::Lag| {
        bar.update(name, lag.checkpoint, lag.head);
    };
    let done = projections::rebuild(&ctx.db, ctx.log.clone(), &all, which, &mut progress).await;
    bar.finish(done.is_ok());
    let done = done?;
    let mut err = std::io::stderr().lock();
    for (name, position) in done {
        writeln!(err, "rebuilt {name} up to position {position}")?;
    }
    writeln!(err, "done in {:.1?}", started.elapsed())?;
    Ok(())
}

/// A progress line on stderr for a long replay: `done/total`, rate and ETA.
///
/// On a terminal the line is redrawn in place, at most ten times a second. Elsewhere
/// (a pipe, a log file, a test) nothing is written while the work runs, and only
/// [`Progress::with_final_line`] writes the final line after a success.
pub struct Progress {
    /// Draw while running (stderr is a terminal).
    live: bool,
    /// When not live, write the final line after a success.
    final_line: bool,
    /// Start of the work, for the rate.
    started: Instant,
    /// The first `done` reported: a resumed or offset log does not count as work done.
    base: Option<u64>,
    /// When the line was last drawn.
    drawn_at: Option<Instant>,
    /// The latest state: label, done, total.
    last: Option<(String, u64, u64)>,
}

impl Progress {
    /// Draws while running only if stderr is a terminal.
    pub fn on_stderr() -> Self {
        Self::new(std::io::stderr().is_terminal())
    }

    /// Also writes the final line when stderr is not a terminal.
    pub fn with_final_line(mut self) -> Self {
        self.final_line = true;
        self
    }

    fn new(live: bool) -> Self {
        Self {
            live,
            final_line: false,
            started: Instant::now(),
            base: None,
            drawn_at: None,
            last: None,
        }
    }

    /// Records that `done` of `total` are done (positions or counts).
    pub fn update(&mut self, label: &str, done: u64, total: u64) {
        let base = *self.base.get_or_insert(done.min(total));
        let finished = done >= total;
        self.last = Some((
            label.to_owned(),
            done.saturating_sub(base),
            total.saturating_sub(base),
        ));
        if !self.live {
            return;
        }
        let due = self
            .drawn_at
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || finished {
            self.drawn_at = Some(Instant::now());
            self.draw("\r", "\x1b[K");
        }
    }

    /// Ends the line: on a terminal it stays as drawn (or is cleared after a
    /// failure); elsewhere see [`Progress::with_final_line`].
    pub fn finish(&mut self, success: bool) {
        match (self.live, success) {
            (true, true) => self.draw("\r", "\x1b[K\n"),
            (true, false) if self.drawn_at.is_some() => {
                let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
            }
            (false, true) if self.final_line => self.draw("", "\n"),
            _ => {}
        }
        self.last = None;
    }

    fn draw(&self, before: &str, after: &str) {
        if let Some((label, done, total)) = &self.last {
            let line = progress_line(label, *done, *total, self.started.elapsed());
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{before}{line}{after}");
            let _ = err.flush();
        }
    }
}

/// `usage    [#####.........]     512/1024   50%  2,048/s  ETA 0:00:01`.
pub fn progress_line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    const WIDTH: u64 = 30;
    let done = done.min(total);
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let eta = if done >= total {
        "done".to_owned()
    } else if rate >= 1.0 {
        format!(
            "ETA {}",
            clock(((total - done) as f64 / rate).ceil() as u64)
        )
    } else {
        "ETA -".to_owned()
    };
    format!(
        "{label:<9}[{bar}] {done:>10}/{total:<10} {pct:>3}%  {}/s  {eta}",
        thousands(rate.round() as u64)
    )
}

/// `h:mm:ss`.
fn clock(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or_default())
        .collect();
    groups.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_fraction_rate_and_eta() {
        let l = progress_line("usage", 50, 100, Duration::from_secs(10));
        assert!(l.contains("50%"), "{l}");
        assert!(l.contains(&format!("[{}{}]", "#".repeat(15), ".".repeat(15))));
        assert!(l.contains("5/s"), "{l}");
        assert!(l.contains("ETA 0:00:10"), "{l}");
        let l = progress_line("usage", 1_000_000, 1_000_000, Duration::from_secs(20));
        assert!(l.contains("100%") && l.contains("50,000/s") && l.contains("done"));
        assert!(progress_line("audit", 0, 0, Duration::ZERO).contains("100%"));
        assert!(progress_line("usage", 0, 10, Duration::ZERO).contains("ETA -"));
    }

    #[test]
    fn progress_counts_from_the_first_report() {
        let mut p = Progress::new(false);
        p.update("usage", 1_000, 3_000);
        p.update("usage", 2_000, 3_000);
        assert_eq!(p.last, Some(("usage".to_owned(), 1_000, 2_000)));
    }

    #[test]
    fn clock_and_thousands() {
        assert_eq!(clock(3_725), "1:02:05");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}

//! `bench`: measures the relay against the mock upstream directly, in one invocation.
//!
//! `bench all --quick` is the smoke run (< 2 min; CI runs it from the dev profile, as
//! `cargo run -p bench -- all --quick`); `bench all` is the full run recorded in
//! docs/benchmarks.md. The relay runs as a child process (the `relay` next to the bench
//! binary, or `--relay-bin` / `RELAY_BIN`) with a temporary DATA_DIR; the mock runs as
//! another child process (`mock-upstream`, one worker).

mod harness;

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use harness::processes::{sibling_binary, LIMITED_KEY_LIMITS};
use harness::procfs::HostWatch;
use harness::scenarios::{Bench, Sizes};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Relay benchmark harness: relay vs direct, interleaved")]
struct Cli {
    /// Which scenario(s) to run.
    #[command(subcommand)]
    scenario: Scenario,
    /// Small sizes for CI (finishes in under 2 minutes).
    #[arg(long, global = true)]
    quick: bool,
    /// The relay binary (default: `relay` next to this executable).
    #[arg(long, env = "RELAY_BIN", global = true)]
    relay_bin: Option<PathBuf>,
    /// The mock binary (default: `mock-upstream` next to this executable).
    #[arg(long, env = "MOCK_BIN", global = true)]
    mock_bin: Option<PathBuf>,
    /// Measure the mock only (no relay).
    #[arg(long, global = true)]
    direct_only: bool,
    /// Tokio worker threads of the load driver.
    #[arg(long, default_value_t = 1, global = true)]
    driver_threads: usize,
    /// Also write the markdown report to this file.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Scenario 7: the arguments of `relay keys limits <id>` for the `bench-limited` key.
    #[arg(long, global = true, allow_hyphen_values = true, default_value = LIMITED_KEY_LIMITS)]
    key_limits: String,
}

/// Scenarios (numbers as in the benchmark issue).
#[derive(Debug, Clone, Copy, Subcommand, PartialEq, Eq)]
enum Scenario {
    /// 1, 6, 7, 2, 3, 4, 5 and 8.
    All,
    /// 1: added latency at concurrency 1.
    Latency,
    /// 6: 200 KB Claude-Code-sized requests at concurrency 1.
    Large,
    /// 2: throughput at fixed concurrency and fixed rates.
    Throughput,
    /// 3: streaming TTFB, gaps and concurrent streams.
    Streaming,
    /// 4: response end → usage visible in the totals (embedded and JetStream).
    Pipeline,
    /// 5: event-log append and projection replay throughput (no relay needed).
    Replay,
    /// 7: scenario 1 and throughput at c=32 with and without limits on the key
    /// (direct / relay / relay with limits, interleaved on one relay).
    Limits,
    /// 8: the event journal's cost per request, against the publish path without it
    /// (no relay needed).
    Journal,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

async fn run(cli: &Cli) -> Result<String> {
    let mock_bin = match &cli.mock_bin {
        Some(p) => p.clone(),
        None => sibling_binary("mock-upstream")?,
    };
    let relay_bin = if cli.direct_only {
        None
    } else {
        Some(match &cli.relay_bin {
            Some(p) => p.clone(),
            None => sibling_binary("relay")?,
        })
    };
    let sizes = if cli.quick { Sizes::QUICK } else { Sizes::FULL };
    let s = cli.scenario;
    let limited = matches!(s, Scenario::All | Scenario::Limits).then(|| cli.key_limits.clone());
    let mut bench = Bench::start(sizes, mock_bin, relay_bin, limited)
        .await
        .context("start the mock and the relay")?;
    if matches!(s, Scenario::All | Scenario::Latency) {
        let host = HostWatch::start();
        bench.latency(false).await?;
        bench.report.push_str(&host.note());
    }
    if matches!(s, Scenario::All | Scenario::Large) {
        let host = HostWatch::start();
        bench.latency(true).await?;
        bench.report.push_str(&host.note());
    }
    if matches!(s, Scenario::All | Scenario::Limits) {
        let host = HostWatch::start();
        bench.limits().await?;
        bench.report.push_str(&host.note());
    }
    if matches!(s, Scenario::All | Scenario::Throughput) {
        let host = HostWatch::start();
        bench.throughput().await?;
        bench.report.push_str(&host.note());
    }
    if matches!(s, Scenario::All | Scenario::Streaming) {
        let host = HostWatch::start();
        bench.streaming().await?;
        bench.report.push_str(&host.note());
    }
    if matches!(s, Scenario::All | Scenario::Pipeline) {
        let host = HostWatch::start();
        bench.pipeline().await?;
        bench.report.push_str(&host.note());
    }
    if matches!(s, Scenario::All | Scenario::Replay) {
        let n = if cli.quick { 20_000 } else { 1_000_000 };
        let _ = writeln!(std::io::stderr(), "bench: replay over {n} events");
        let host = HostWatch::start();
        match harness::replay::run(n).await {
            Ok(section) => bench.report.push_str(&section),
            Err(e) => bench.report.push_str(&format!(
                "
### 5. Event log and replay throughput

Failed: {e:#}
"
            )),
        }
        bench.report.push_str(&host.note());
    }
    if matches!(s, Scenario::All | Scenario::Journal) {
        let host = HostWatch::start();
        match harness::journal::run(cli.quick).await {
            Ok(section) => bench.report.push_str(&section),
            Err(e) => bench.report.push_str(&format!(
                "\n### 8. The event journal's cost per request\n\nFailed: {e:#}\n"
            )),
        }
        bench.report.push_str(&host.note());
    }
    bench.finish();
    let header = format!(
        "## Run: `bench {}{}` — {}\n\nMachine: {}. Driver: {} tokio worker(s), keep-alive hyper pool. Mock: separate process, 1 worker, pre-rendered bodies.\n",
        format!("{s:?}").to_lowercase(),
        if cli.quick { " --quick" } else { "" },
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine(),
        cli.driver_threads,
    );
    Ok(format!("{header}{}", bench.report))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.driver_threads.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&cli))?;
    if let Some(path) = &cli.out {
        std::fs::write(path, &report).with_context(|| format!("write {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    out.write_all(report.as_bytes())?;
    out.flush()?;
    Ok(())
}

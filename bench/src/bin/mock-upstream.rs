//! Out-of-process mock Anthropic upstream for benchmarks.
//!
//! Prints `MOCK_LISTENING http://ADDR` on stdout once bound, then serves until killed.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bench::mock::{MockConfig, MockUpstream};
use clap::Parser;

/// Command line of the mock.
#[derive(Debug, Parser)]
#[command(about = "Mock Anthropic upstream")]
struct Args {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Full validation, JSON parsing and request logging instead of the fast path.
    #[arg(long)]
    faithful: bool,
    /// Delay before the response head, in microseconds.
    #[arg(long, default_value_t = 0)]
    first_byte_us: u64,
    /// text_delta events per stream.
    #[arg(long, default_value_t = 6)]
    events: usize,
    /// Pacing between deltas, in microseconds (absolute deadlines).
    #[arg(long, default_value_t = 0)]
    interval_us: u64,
    /// Restate usage in message_delta.
    #[arg(long)]
    restate_usage: bool,
    /// Open every SSE event with a `: t=<µs since the Unix epoch>` send-time comment.
    #[arg(long)]
    stamp_events: bool,
    /// Body size limit in bytes.
    #[arg(long, default_value_t = bench::mock::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let base = if args.faithful {
            MockConfig {
                record_requests: false,
                ..MockConfig::default()
            }
        } else {
            MockConfig::fast()
        };
        let config = MockConfig {
            first_byte_delay: Duration::from_micros(args.first_byte_us),
            text_chunks: args.events,
            event_interval: Duration::from_micros(args.interval_us),
            restate_usage: args.restate_usage,
            stamp_events: args.stamp_events,
            max_body_bytes: args.max_body_bytes,
            ..base
        };
        let mock = MockUpstream::bind(args.listen, config).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "MOCK_LISTENING {}", mock.base_url())?;
        out.flush()?;
        drop(out);
        std::future::pending::<()>().await;
        Ok(())
    })
}

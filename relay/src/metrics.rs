//! Prometheus metrics, hand-rolled: atomic counters and fixed-bucket histograms,
//! rendered as text on `GET /metrics`.

use schema::{HealthState, Outcome};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds (in microseconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending, microseconds).
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, us: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| us <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut acc = 0u64;
        for (b, c) in self.bounds.iter().zip(&self.buckets) {
            acc += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {acc}", *b as f64 / 1e6);
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const OVERHEAD_BOUNDS: &[u64] = &[
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000, 100_000, 1_000_000,
];
const UPSTREAM_BOUNDS: &[u64] = &[
    10_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];

const OUTCOMES: [Outcome; 5] = [
    Outcome::Completed,
    Outcome::ClientDisconnected,
    Outcome::UpstreamError,
    Outcome::Rejected,
    Outcome::RelayError,
];

fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Completed => 0,
        Outcome::ClientDisconnected => 1,
        Outcome::UpstreamError => 2,
        Outcome::Rejected => 3,
        Outcome::RelayError => 4,
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Completed => "completed",
        Outcome::ClientDisconnected => "client_disconnected",
        Outcome::UpstreamError => "upstream_error",
        Outcome::Rejected => "rejected",
        Outcome::RelayError => "relay_error",
    }
}

/// Name of a health state as a label value.
pub fn health_name(s: HealthState) -> &'static str {
    match s {
        HealthState::Healthy => "healthy",
        HealthState::RateLimited => "rate_limited",
        HealthState::Overloaded => "overloaded",
        HealthState::Degraded => "degraded",
        HealthState::Unauthorized => "unauthorized",
        HealthState::Banned => "banned",
    }
}

/// Every metric the proxy maintains.
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; 5],
    /// Upstream attempts made.
    pub attempts: AtomicU64,
    /// Attempts that failed over to another account.
    pub failovers: AtomicU64,
    /// Keepalive comments sent.
    pub keepalives: AtomicU64,
    /// Streams drained after a client disconnect.
    pub drains: AtomicU64,
    /// Authentication failures.
    pub auth_failures: AtomicU64,
    /// Total minus upstream time per request.
    pub overhead: Histogram,
    /// Upstream time to response head per attempt.
    pub upstream_head: Histogram,
    /// Upstream time per request (connect to last byte, all attempts).
    pub upstream_total: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Zeroed metrics.
    pub fn new() -> Self {
        Self {
            requests: Default::default(),
            attempts: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            keepalives: AtomicU64::new(0),
            drains: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            overhead: Histogram::new(OVERHEAD_BOUNDS),
            upstream_head: Histogram::new(UPSTREAM_BOUNDS),
            upstream_total: Histogram::new(UPSTREAM_BOUNDS),
        }
    }

    /// Counts a finished request.
    pub fn request(&self, outcome: Outcome) {
        self.requests[outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests so far with `outcome`.
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests[outcome_index(outcome)].load(Ordering::Relaxed)
    }

    /// Renders the process metrics; `extra` is appended (accounts, publisher).
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP relay_requests_total Client requests by outcome.\n");
        out.push_str("# TYPE relay_requests_total counter\n");
        for o in OUTCOMES {
            let _ = writeln!(
                out,
                "relay_requests_total{{outcome=\"{}\"}} {}",
                outcome_name(o),
                self.requests(o)
            );
        }
        for (name, help, v) in [
            (
                "relay_upstream_attempts_total",
                "Upstream attempts.",
                &self.attempts,
            ),
            (
                "relay_failovers_total",
                "Attempts retried on another account.",
                &self.failovers,
            ),
            (
                "relay_sse_keepalives_total",
                "SSE keepalive comments sent.",
                &self.keepalives,
            ),
            (
                "relay_disconnect_drains_total",
                "Streams drained after a client disconnect.",
                &self.drains,
            ),
            (
                "relay_auth_failures_total",
                "Refused client credentials.",
                &self.auth_failures,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        self.overhead.render(
            &mut out,
            "relay_overhead_seconds",
            "Request time not spent waiting on upstream.",
        );
        self.upstream_head.render(
            &mut out,
            "relay_upstream_head_seconds",
            "Upstream time to response head, per attempt.",
        );
        self.upstream_total.render(
            &mut out,
            "relay_upstream_seconds",
            "Upstream time per request, all attempts.",
        );
        out.push_str(extra);
        out
    }
}

/// Escapes a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_buckets() {
        let m = Metrics::new();
        m.request(Outcome::Completed);
        m.overhead.observe(70);
        m.overhead.observe(5_000_000);
        let text = m.render("");
        assert!(text.contains("relay_requests_total{outcome=\"completed\"} 1"));
        assert!(text.contains("relay_overhead_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("relay_overhead_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("relay_overhead_seconds_count 2"));
        assert_eq!(label("a\"b"), "a\\\"b");
    }
}

//! The load driver: closed loop at fixed concurrency and open loop at a fixed rate, over a
//! keep-alive hyper connection pool, recording HDR histograms in microseconds.
//!
//! Open-loop latency is measured from each request's *intended* send time, so a stalled
//! server cannot hide queueing delay (no coordinated omission).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bench::mock::{stamp_micros, unix_micros};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The pooled HTTP/1.1 client every target shares.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive client with TCP_NODELAY and an unbounded idle pool.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

/// Where requests go: the mock directly, or the relay.
#[derive(Clone, Debug)]
pub struct Target {
    /// `direct`, `relay` or `relay+limits`.
    pub name: &'static str,
    /// Full URL of `POST /v1/messages`.
    pub uri: Uri,
    /// Credential sent as `x-api-key`.
    pub key: String,
}

impl Target {
    /// Whether requests go through the relay (`relay`, `relay+limits`), so its CPU and
    /// memory belong to the phase.
    pub fn through_relay(&self) -> bool {
        self.name.starts_with("relay")
    }
}

/// What each request sends and how the answer is checked.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The request body.
    pub body: Bytes,
    /// Extra request headers (Claude Code's, for realism).
    pub headers: Vec<(&'static str, String)>,
    /// Read the answer as an SSE stream.
    pub stream: bool,
    /// Events a complete stream has (`event:` lines); 0 = do not check.
    pub expected_events: usize,
    /// A gap between frames above this counts the stream as stalled.
    pub stall_after: Option<Duration>,
}

/// Results of a run against one target.
pub struct Recorder {
    /// Time to the end of the response (µs).
    pub total: Histogram<u64>,
    /// Streams: time to the first body byte (µs).
    pub ttfb: Histogram<u64>,
    /// Streams: gaps between consecutive event completions (µs).
    pub gap: Histogram<u64>,
    /// Streams: time to the first complete `content_block_delta` event (µs).
    pub first_delta: Histogram<u64>,
    /// Streams from a stamping mock: per event, arrival (complete, at the driver) minus
    /// the mock's send stamp, both on the machine's real-time clock (µs).
    pub event_delay: Histogram<u64>,
    /// Streams: body frames received.
    pub frames: u64,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests (transport error or non-200).
    pub errors: u64,
    /// Streams that ended without all their events or without `message_stop`. Each is
    /// also counted in `errors`, never in `ok`.
    pub lost: u64,
    /// Streams with a gap above the stall threshold.
    pub stalled: u64,
    /// Open loop: requests not sent because too many were in flight.
    pub shed: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

#[expect(
    clippy::expect_used,
    reason = "constant bounds (1 µs .. 10 min, 3 significant digits) are always valid"
)]
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            total: histogram(),
            ttfb: histogram(),
            gap: histogram(),
            first_delta: histogram(),
            event_delay: histogram(),
            frames: 0,
            ok: 0,
            errors: 0,
            lost: 0,
            stalled: 0,
            shed: 0,
            first_error: None,
            elapsed: Duration::ZERO,
        }
    }
}

impl Recorder {
    /// Adds another recorder's counts and samples.
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.total.add(&other.total);
        let _ = self.ttfb.add(&other.ttfb);
        let _ = self.gap.add(&other.gap);
        let _ = self.first_delta.add(&other.first_delta);
        let _ = self.event_delay.add(&other.event_delay);
        self.frames += other.frames;
        self.ok += other.ok;
        self.errors += other.errors;
        self.lost += other.lost;
        self.stalled += other.stalled;
        self.shed += other.shed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Requests attempted.
    pub fn attempts(&self) -> u64 {
        self.ok + self.errors + self.shed
    }

    /// Successful requests per second of wall time.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Failed fraction (errors, lost streams among them, shed) in percent.
    pub fn error_pct(&self) -> f64 {
        let attempts = self.attempts();
        if attempts == 0 {
            return 0.0;
        }
        100.0 * (self.errors + self.shed) as f64 / attempts as f64
    }

    /// Counts a failure, keeping the first message.
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    fn record(&mut self, h: fn(&mut Recorder) -> &mut Histogram<u64>, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = h(self).record(us.min(600_000_000));
    }
}

fn count_events(body: &[u8]) -> usize {
    memchr::memmem::find_iter(body, b"event: ").count()
}

/// What one request produced, recorded into a [`Recorder`] by the caller.
#[derive(Default)]
struct Outcome {
    total: Option<Duration>,
    ttfb: Option<Duration>,
    gaps: Vec<Duration>,
    first_delta: Option<Duration>,
    /// Per stamped event: arrival − send stamp.
    delays: Vec<Duration>,
    frames: u64,
    error: Option<String>,
    lost: bool,
    stalled: bool,
}

impl Recorder {
    fn add(&mut self, o: Outcome) {
        if let Some(t) = o.ttfb {
            self.record(|r| &mut r.ttfb, t);
        }
        for g in o.gaps {
            self.record(|r| &mut r.gap, g);
        }
        if let Some(t) = o.first_delta {
            self.record(|r| &mut r.first_delta, t);
        }
        for d in o.delays {
            self.record(|r| &mut r.event_delay, d);
        }
        self.frames += o.frames;
        self.lost += u64::from(o.lost);
        self.stalled += u64::from(o.stalled);
        match (o.error, o.total) {
            (Some(e), _) => self.error(e),
            (None, Some(t)) => {
                self.record(|r| &mut r.total, t);
                self.ok += 1;
            }
            (None, None) => self.error("no outcome".to_owned()),
        }
    }
}

fn failed(error: String) -> Outcome {
    Outcome {
        error: Some(error),
        ..Outcome::default()
    }
}

/// Sends one request; latency counts from `t0`.
async fn one(client: &HttpClient, target: &Target, work: &Workload, t0: Instant) -> Outcome {
    let mut req = Request::post(target.uri.clone())
        .header("x-api-key", &target.key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json");
    for (k, v) in &work.headers {
        req = req.header(*k, v);
    }
    let req = match req.body(Full::new(work.body.clone())) {
        Ok(r) => r,
        Err(e) => return failed(format!("build request: {e}")),
    };
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(e) => return failed(format!("{}: {e:?}", target.name)),
    };
    let status = resp.status();
    let mut body = resp.into_body();
    let mut out = Outcome::default();
    let mut last_event: Option<Instant> = None;
    let mut buf: Vec<u8> = Vec::new();
    // Where the event being received starts in `buf`.
    let mut event_start = 0;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let mut o = failed(format!("{} body: {e}", target.name));
                o.lost = work.stream;
                return o;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        if work.stream {
            let arrived_us = unix_micros();
            out.frames += 1;
            if out.ttfb.is_none() {
                out.ttfb = Some(now - t0);
            }
            // Gaps are between event completions (a blank line ends an event), so they do
            // not depend on how the bytes were split into frames.
            let from = buf.len().saturating_sub(1);
            buf.extend_from_slice(&data);
            for blank in memchr::memmem::find_iter(&buf[from..], b"\n\n") {
                if let Some(prev) = last_event {
                    out.gaps.push(now - prev);
                }
                last_event = Some(now);
                let end = from + blank + 2;
                let event = &buf[event_start..end];
                event_start = end;
                if out.first_delta.is_none()
                    && memchr::memmem::find(event, b"event: content_block_delta\n").is_some()
                {
                    out.first_delta = Some(now - t0);
                }
                if let Some(sent_us) = stamp_micros(event) {
                    out.delays
                        .push(Duration::from_micros(arrived_us.saturating_sub(sent_us)));
                }
            }
        } else if status != StatusCode::OK && buf.len() < 512 {
            buf.extend_from_slice(&data);
        }
    }
    if status != StatusCode::OK {
        return failed(format!(
            "{} status {status}: {}",
            target.name,
            String::from_utf8_lossy(&buf[..buf.len().min(300)])
        ));
    }
    out.total = Some(Instant::now() - t0);
    if work.stream {
        let complete = buf.ends_with(b"data: {\"type\":\"message_stop\"}\n\n")
            && (work.expected_events == 0 || count_events(&buf) == work.expected_events);
        out.lost = !complete;
        if !complete {
            // Served, but not whole: a failure, not a success that was also lost.
            out.error = Some(format!(
                "{}: stream ended without message_stop or with missing events",
                target.name
            ));
        }
        let max_gap = out.gaps.iter().max().copied().unwrap_or_default();
        out.stalled = work.stall_after.is_some_and(|limit| max_gap > limit);
    }
    out
}

/// When a run stops.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this many requests in total.
    Count(u64),
    /// After this much wall time (requests in flight finish).
    After(Duration),
}

/// `concurrency` workers each sending back-to-back requests; worker i starts after
/// `i × ramp / concurrency`, so connections are not all opened in the same instant.
pub async fn closed_loop(
    client: &HttpClient,
    target: &Target,
    work: &Workload,
    concurrency: usize,
    stop: Stop,
    ramp: Duration,
) -> Recorder {
    let started = Instant::now();
    let remaining = Arc::new(AtomicU64::new(match stop {
        Stop::Count(n) => n,
        Stop::After(_) => u64::MAX,
    }));
    let deadline = match stop {
        Stop::After(d) => Some(started + d),
        Stop::Count(_) => None,
    };
    let mut workers = JoinSet::new();
    let n = concurrency.max(1);
    for i in 0..n {
        let (client, target, work, remaining) = (
            client.clone(),
            target.clone(),
            work.clone(),
            remaining.clone(),
        );
        let start_at = started + ramp.mul_f64(i as f64 / n as f64);
        workers.spawn(async move {
            tokio::time::sleep_until(start_at).await;
            let mut rec = Recorder::default();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let claimed = remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                if claimed.is_err() {
                    break;
                }
                rec.add(one(&client, &target, &work, Instant::now()).await);
            }
            rec
        });
    }
    let mut total = Recorder::default();
    while let Some(done) = workers.join_next().await {
        if let Ok(rec) = done {
            total.merge(&rec);
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// Requests released at `rate` per second for `duration`, each on its own task; at most
/// `max_in_flight` outstanding (the rest are counted as shed).
pub async fn open_loop(
    client: &HttpClient,
    target: &Target,
    work: &Workload,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> Recorder {
    let shared = Arc::new(Mutex::new(Recorder::default()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut shed = 0;
    for i in 0..total {
        let due = started + period.mul_f64(i as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        while tasks.try_join_next().is_some() {}
        if in_flight.load(Ordering::Relaxed) >= max_in_flight {
            shed += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (client, target, work, shared, in_flight) = (
            client.clone(),
            target.clone(),
            work.clone(),
            shared.clone(),
            in_flight.clone(),
        );
        tasks.spawn(async move {
            let outcome = one(&client, &target, &work, due).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Ok(mut s) = shared.lock() {
                s.add(outcome);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut rec = Recorder::default();
    if let Ok(s) = shared.lock() {
        rec.merge(&s);
    }
    rec.shed = shed;
    rec.elapsed = started.elapsed();
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use bench::mock::{MockConfig, MockUpstream, Step};

    const KEY: &str = "sk-ant-api03-driver-test";

    fn stream_work() -> Workload {
        Workload {
            body: super::super::workload::small(true),
            headers: Vec::new(),
            stream: true,
            // message_start, block start, ping, 6 deltas, block stop, message_delta, stop.
            expected_events: 12,
            stall_after: None,
        }
    }

    async fn setup() -> (MockUpstream, HttpClient, Target) {
        setup_with(MockConfig::default()).await
    }

    async fn setup_with(config: MockConfig) -> (MockUpstream, HttpClient, Target) {
        let mock = MockUpstream::start_with(config).await.unwrap();
        let target = Target {
            name: "direct",
            uri: format!("{}/v1/messages", mock.base_url()).parse().unwrap(),
            key: KEY.to_owned(),
        };
        (mock, client(), target)
    }

    #[tokio::test]
    async fn closed_loop_counts_complete_streams_and_detects_lost_ones() {
        let (mock, client, target) = setup().await;
        let rec = closed_loop(
            &client,
            &target,
            &stream_work(),
            4,
            Stop::Count(20),
            Duration::ZERO,
        )
        .await;
        assert_eq!((rec.ok, rec.errors, rec.lost), (20, 0, 0));
        assert_eq!(rec.ttfb.len(), 20);
        assert_eq!(rec.gap.len(), 20 * 11);
        assert_eq!(rec.first_delta.len(), 20);
        assert!(rec.event_delay.is_empty(), "no stamps, no event delays");

        mock.script(KEY, [Step::Drop { after_events: 3 }, Step::overloaded()]);
        let rec = closed_loop(
            &client,
            &target,
            &stream_work(),
            1,
            Stop::Count(3),
            Duration::ZERO,
        )
        .await;
        assert_eq!(rec.ok, 1);
        assert_eq!(rec.errors, 2);
        assert_eq!(
            rec.lost, 1,
            "the dropped stream is lost; the 529 is only an error"
        );

        // A stream that ends cleanly but without `message_stop` is a failure, never
        // also a success.
        mock.script(
            KEY,
            [Step::MidStreamError {
                after_events: 3,
                error_type: "overloaded_error".into(),
            }],
        );
        let rec = closed_loop(
            &client,
            &target,
            &stream_work(),
            1,
            Stop::Count(1),
            Duration::ZERO,
        )
        .await;
        assert_eq!((rec.ok, rec.errors, rec.lost), (0, 1, 1));
        assert!(
            (rec.error_pct() - 100.0).abs() < 1e-9,
            "{}",
            rec.error_pct()
        );
    }

    #[tokio::test]
    async fn stamped_streams_give_every_event_a_delay() {
        let (_mock, client, target) = setup_with(MockConfig {
            stamp_events: true,
            ..MockConfig::default()
        })
        .await;
        let rec = closed_loop(
            &client,
            &target,
            &stream_work(),
            2,
            Stop::Count(10),
            Duration::ZERO,
        )
        .await;
        assert_eq!((rec.ok, rec.errors, rec.lost), (10, 0, 0));
        assert_eq!(rec.first_delta.len(), 10);
        assert_eq!(rec.event_delay.len(), 10 * 12);
    }

    #[tokio::test]
    async fn open_loop_sends_rate_times_duration_requests() {
        let (mock, client, target) = setup().await;
        let work = Workload {
            body: super::super::workload::small(false),
            headers: Vec::new(),
            stream: false,
            expected_events: 0,
            stall_after: None,
        };
        let rec = open_loop(
            &client,
            &target,
            &work,
            200.0,
            Duration::from_millis(250),
            100,
        )
        .await;
        assert_eq!(rec.ok + rec.errors + rec.shed, 50);
        assert_eq!(rec.ok, 50);
        assert_eq!(mock.request_count(), 50);
    }
}

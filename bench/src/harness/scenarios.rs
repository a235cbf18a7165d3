//! The benchmark scenarios: each runs the same workload directly against the mock and
//! through the relay, interleaved, and appends a markdown table to the report.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;

use super::driver::{client, closed_loop, open_loop, HttpClient, Recorder, Stop, Target, Workload};
use super::processes::{
    free_port, start_mock, start_nats, start_relay, Guard, MockSettings, Relay,
};
use super::procfs::{rss_kib, CpuMeter, RssSampler};
use super::workload;

/// The upstream key the relay's account (and the direct target) uses.
const UPSTREAM_KEY: &str = "sk-ant-api03-bench-upstream-key";

/// Run sizes: `--quick` (CI smoke, < 2 min) or full.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Added-latency rounds per target.
    pub rounds: usize,
    /// Requests per round (small bodies).
    pub per_round: u64,
    /// Requests per round (200 KB bodies).
    pub per_round_large: u64,
    /// Warm-up requests per target.
    pub warmup: u64,
    /// Duration of each throughput step.
    pub step: Duration,
    /// Streams per round for the TTFB measurement.
    pub streams_per_round: u64,
    /// Concurrency steps for held streams.
    pub stream_steps: &'static [usize],
    /// Pacing of held streams (20 deltas each).
    pub hold_interval: Duration,
}

impl Sizes {
    /// CI smoke sizes.
    pub const QUICK: Sizes = Sizes {
        rounds: 3,
        per_round: 300,
        per_round_large: 60,
        warmup: 200,
        step: Duration::from_secs(2),
        streams_per_round: 10,
        stream_steps: &[100, 400],
        hold_interval: Duration::from_millis(20),
    };
    /// Full-run sizes.
    pub const FULL: Sizes = Sizes {
        rounds: 7,
        per_round: 500,
        per_round_large: 200,
        warmup: 500,
        step: Duration::from_secs(10),
        streams_per_round: 40,
        stream_steps: &[250, 500, 1000, 2000],
        hold_interval: Duration::from_millis(50),
    };
}

/// Everything a scenario needs.
pub struct Bench {
    /// Run sizes.
    pub sizes: Sizes,
    client: HttpClient,
    mock_bin: PathBuf,
    relay_bin: Option<PathBuf>,
    mock_port: u16,
    mock: Option<Guard>,
    relay: Option<Relay>,
    direct: Target,
    via_relay: Option<Target>,
    /// The markdown report.
    pub report: String,
    /// Relay RSS right after start-up, before any traffic (KiB).
    pub idle_rss_kib: Option<u64>,
    /// How long the relay stayed busy after phases (only waits over 0.45 s).
    settle_waits: Vec<Duration>,
}

fn target(name: &'static str, base: &str, key: &str) -> Result<Target> {
    Ok(Target {
        name,
        uri: format!("{base}/v1/messages?beta=true").parse()?,
        key: key.to_owned(),
    })
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn signed_ms(us: f64) -> String {
    format!("{:+.3}", us / 1000.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Interquartile range of `v` (nearest-rank quartiles).
fn iqr(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.25), q(0.75))
}

fn q(h: &Histogram<u64>, p: f64) -> u64 {
    h.value_at_quantile(p)
}

/// Concurrent streams in part B of the streaming scenario (the issue's 64).
const WIDE: usize = 64;

/// The relay's CPU over the relay phases of a part, for its CPU %.
#[derive(Clone, Copy, Default)]
struct RelayLoad {
    cpu_us: u64,
    wall: Duration,
}

impl RelayLoad {
    /// Adds a phase (a relay phase: direct ones have no relay CPU).
    fn add(&mut self, t: &Target, ph: &Phase) {
        if t.name == "relay" {
            self.cpu_us += ph.relay_cpu_us;
            self.wall += ph.rec.elapsed;
        }
    }

    fn cpu_pct(&self) -> f64 {
        100.0 * self.cpu_us as f64 / self.wall.as_micros().max(1) as f64
    }
}

/// Interleaved stream rounds, per target (direct, relay).
struct StreamRounds {
    merged: [Recorder; 2],
    /// Each round's TTFB p50 (µs).
    ttfb50: [Vec<u64>; 2],
    load: RelayLoad,
}

/// One measured phase: the recorder plus the relay's CPU and RSS over it.
struct Phase {
    rec: Recorder,
    relay_cpu_us: u64,
    relay_rss_peak_kib: u64,
    mock_cpu_us: u64,
    driver_cpu_us: u64,
}

impl Bench {
    /// Starts the mock (and the relay unless `direct_only`).
    pub async fn start(
        sizes: Sizes,
        mock_bin: PathBuf,
        relay_bin: Option<PathBuf>,
    ) -> Result<Bench> {
        let mock_port = free_port()?;
        let mock = start_mock(&mock_bin, mock_port, &MockSettings::default())?;
        let mock_url = format!("http://127.0.0.1:{mock_port}");
        let direct = target("direct", &mock_url, UPSTREAM_KEY)?;
        let (relay, via_relay, idle) = match &relay_bin {
            Some(bin) => {
                let relay = start_relay(bin, &mock_url, UPSTREAM_KEY, &[]).await?;
                let idle = rss_kib(relay.guard.pid());
                let t = target("relay", &relay.base_url, &relay.key)?;
                (Some(relay), Some(t), idle)
            }
            None => (None, None, None),
        };
        Ok(Bench {
            sizes,
            client: client(),
            mock_bin,
            relay_bin,
            mock_port,
            mock: Some(mock),
            relay,
            direct,
            via_relay,
            report: String::new(),
            idle_rss_kib: idle,
            settle_waits: Vec::new(),
        })
    }

    fn targets(&self) -> Vec<Target> {
        let mut v = vec![self.direct.clone()];
        v.extend(self.via_relay.clone());
        v
    }

    fn relay_pid(&self) -> Option<u32> {
        self.relay.as_ref().map(|r| r.guard.pid())
    }

    /// Restarts the mock on the same port with new settings (the relay's account keeps
    /// pointing at it).
    async fn restart_mock(&mut self, settings: &MockSettings) -> Result<()> {
        self.mock = None;
        self.mock = Some(start_mock(&self.mock_bin, self.mock_port, settings)?);
        Ok(())
    }

    /// Whether the relay still runs; on its death, notes the exit and its log tail once
    /// and drops it from the targets.
    fn relay_alive(&mut self) -> bool {
        let Some(relay) = self.relay.as_mut() else {
            return false;
        };
        let Some(status) = relay.guard.exited() else {
            return true;
        };
        let tail = relay.log_tail(30);
        self.note(&format!(
            "\n**The relay process exited ({status}); relay measurements stop here.** Last lines of its log:\n\n```\n{tail}\n```\n"
        ));
        self.via_relay = None;
        false
    }

    /// Waits until the relay is idle (under 5 % of a core over 200 ms), so background
    /// work left over from the previous phase (publishing, projecting) neither disturbs
    /// the next phase nor is billed to it. Gives up after 60 s.
    async fn settle(&mut self) {
        if !self.relay_alive() {
            return;
        }
        let Some(pid) = self.relay_pid() else { return };
        let started = tokio::time::Instant::now();
        loop {
            let cpu = CpuMeter::start(pid);
            tokio::time::sleep(Duration::from_millis(200)).await;
            if cpu.elapsed_us() <= 10_000 || started.elapsed() > Duration::from_secs(60) {
                break;
            }
        }
        let waited = started.elapsed();
        if waited > Duration::from_millis(450) {
            self.settle_waits.push(waited);
        }
    }

    async fn phase<F, Fut>(&mut self, t: &Target, run: F) -> Phase
    where
        F: FnOnce(HttpClient, Target) -> Fut,
        Fut: std::future::Future<Output = Recorder>,
    {
        self.settle().await;
        let relay = if t.name == "relay" {
            self.relay_pid()
        } else {
            None
        };
        let cpu = relay.map(CpuMeter::start);
        let rss = relay.map(|pid| RssSampler::start(pid, Duration::from_millis(50)));
        let mock_cpu = self.mock.as_ref().map(|m| CpuMeter::start(m.pid()));
        let driver_cpu = CpuMeter::start(std::process::id());
        let rec = run(self.client.clone(), t.clone()).await;
        Phase {
            rec,
            relay_cpu_us: cpu.map(|c| c.elapsed_us()).unwrap_or(0),
            relay_rss_peak_kib: rss.map(RssSampler::finish).unwrap_or(0),
            mock_cpu_us: mock_cpu.map(|c| c.elapsed_us()).unwrap_or(0),
            driver_cpu_us: driver_cpu.elapsed_us(),
        }
    }

    async fn warm(&self, work: &Workload, n: u64) {
        for t in self.targets() {
            let _ = closed_loop(&self.client, &t, work, 1, Stop::Count(n), Duration::ZERO).await;
        }
    }

    fn note(&mut self, line: &str) {
        let _ = writeln!(self.report, "{line}");
    }

    fn progress(what: &str) {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "bench: {what}");
    }

    /// Scenarios 1 and 6: added latency at concurrency 1, small and 200 KB bodies.
    pub async fn latency(&mut self, large: bool) -> Result<()> {
        let (label, work, per_round) = if large {
            (
                "Claude-Code-sized (200 KB), non-streaming",
                Workload {
                    body: workload::claude_code(false, 200_000),
                    headers: workload::claude_code_headers(),
                    stream: false,
                    expected_events: 0,
                    stall_after: None,
                },
                self.sizes.per_round_large,
            )
        } else {
            (
                "small, non-streaming",
                Workload {
                    body: workload::small(false),
                    headers: Vec::new(),
                    stream: false,
                    expected_events: 0,
                    stall_after: None,
                },
                self.sizes.per_round,
            )
        };
        Self::progress(&format!("latency: {label}"));
        self.warm(&work, self.sizes.warmup.min(per_round * 2)).await;
        let mut merged = [Recorder::default(), Recorder::default()];
        let mut p50s: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        let mut p99s: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        let mut cpu_us = 0;
        for _ in 0..self.sizes.rounds {
            for (i, t) in self.targets().iter().enumerate() {
                let work = work.clone();
                let ph = self
                    .phase(t, |c, t| async move {
                        closed_loop(&c, &t, &work, 1, Stop::Count(per_round), Duration::ZERO).await
                    })
                    .await;
                p50s[i].push(q(&ph.rec.total, 0.5));
                p99s[i].push(q(&ph.rec.total, 0.99));
                cpu_us += ph.relay_cpu_us;
                merged[i].merge(&ph.rec);
            }
        }
        let title = if large {
            "6. Claude-Code-sized requests"
        } else {
            "1. Added latency"
        };
        self.note(&format!(
            "\n### {title}: concurrency 1, {label}\n\n{} rounds × {per_round} requests per target, interleaved direct/relay. Added = median over rounds of (relay − direct) for the same quantile; IQR across rounds in brackets.\n",
            self.sizes.rounds
        ));
        self.note("| target | ok | errors | p50 ms | p99 ms | p99.9 ms | relay CPU µs/req |");
        self.note("|---|---|---|---|---|---|---|");
        for (i, rec) in merged.iter().enumerate().take(self.targets().len()) {
            let cpu = if i == 1 && rec.ok > 0 {
                format!("{:.1}", cpu_us as f64 / rec.attempts() as f64)
            } else {
                "–".to_owned()
            };
            let name = self.targets()[i].name;
            self.note(&format!(
                "| {name} | {} | {} | {} | {} | {} | {cpu} |",
                rec.ok,
                rec.errors,
                ms(q(&rec.total, 0.5)),
                ms(q(&rec.total, 0.99)),
                ms(q(&rec.total, 0.999)),
            ));
        }
        if self.via_relay.is_some() {
            let diffs = |v: &[Vec<u64>; 2]| -> Vec<f64> {
                v[1].iter()
                    .zip(&v[0])
                    .map(|(r, d)| *r as f64 - *d as f64)
                    .collect()
            };
            let (mut d50, mut d99) = (diffs(&p50s), diffs(&p99s));
            let (a50, b50) = iqr(&mut d50.clone());
            let (a99, b99) = iqr(&mut d99.clone());
            self.note(&format!(
                "\n**Added latency: p50 {} ms [{} … {}], p99 {} ms [{} … {}]**",
                signed_ms(median(&mut d50)),
                signed_ms(a50),
                signed_ms(b50),
                signed_ms(median(&mut d99)),
                signed_ms(a99),
                signed_ms(b99)
            ));
        }
        if let Some(e) = merged.iter().find_map(|r| r.first_error.clone()) {
            self.note(&format!("\nFirst error: `{e}`"));
        }
        Ok(())
    }

    /// Scenario 2: throughput at fixed concurrency and at fixed rates.
    pub async fn throughput(&mut self) -> Result<()> {
        let work = Workload {
            body: workload::small(false),
            headers: Vec::new(),
            stream: false,
            expected_events: 0,
            stall_after: None,
        };
        self.warm(&work, self.sizes.warmup).await;
        let step = self.sizes.step;
        self.note(&format!(
            "\n### 2. Throughput: small non-streaming requests, {} s per step\n\nok req/s counts successful responses only; errors % = non-200, transport errors and shed requests; latency quantiles are over successful responses. Closed loop = fixed concurrency, back-to-back. Open loop = fixed arrival rate, latency from the intended send time (no coordinated omission); at most 8,000 in flight, the excess counted as errors. Driver, mock (1 worker) and relay share the 2 cores; CPU % columns are of one core (200 % = both cores).\n",
            step.as_secs()
        ));
        self.note("| load | target | ok req/s | p50 ms | p99 ms | p99.9 ms | errors % | relay CPU µs/req | relay CPU % | relay RSS peak MiB | mock CPU % | driver CPU % |");
        self.note("|---|---|---|---|---|---|---|---|---|---|---|---|");
        #[derive(Clone, Copy)]
        enum Load {
            Closed(usize),
            Open(f64),
        }
        let loads = [
            Load::Closed(32),
            Load::Closed(64),
            Load::Closed(256),
            Load::Open(1000.0),
            Load::Open(5000.0),
            Load::Open(10000.0),
        ];
        let mut errors = Vec::new();
        for load in loads {
            let label = match load {
                Load::Closed(c) => format!("closed c={c}"),
                Load::Open(r) => format!("open {r:.0}/s"),
            };
            Self::progress(&format!("throughput: {label}"));
            let mut p = Vec::new();
            for t in self.targets() {
                let work = work.clone();
                let ph = self
                    .phase(&t, |c, t| async move {
                        match load {
                            Load::Closed(n) => {
                                closed_loop(&c, &t, &work, n, Stop::After(step), Duration::ZERO)
                                    .await
                            }
                            Load::Open(r) => open_loop(&c, &t, &work, r, step, 8000).await,
                        }
                    })
                    .await;
                let rec = &ph.rec;
                let (cpu_req, cpu_pct, rss) = if t.name == "relay" {
                    (
                        format!(
                            "{:.1}",
                            ph.relay_cpu_us as f64 / rec.attempts().max(1) as f64
                        ),
                        format!(
                            "{:.0}",
                            100.0 * ph.relay_cpu_us as f64 / rec.elapsed.as_micros().max(1) as f64
                        ),
                        format!("{:.1}", ph.relay_rss_peak_kib as f64 / 1024.0),
                    )
                } else {
                    ("–".into(), "–".into(), "–".into())
                };
                let wall = rec.elapsed.as_micros().max(1) as f64;
                self.note(&format!(
                    "| {label} | {} | {:.0} | {} | {} | {} | {:.2} | {cpu_req} | {cpu_pct} | {rss} | {:.0} | {:.0} |",
                    t.name,
                    rec.throughput(),
                    ms(q(&rec.total, 0.5)),
                    ms(q(&rec.total, 0.99)),
                    ms(q(&rec.total, 0.999)),
                    rec.error_pct(),
                    100.0 * ph.mock_cpu_us as f64 / wall,
                    100.0 * ph.driver_cpu_us as f64 / wall,
                ));
                if let Some(e) = &rec.first_error {
                    errors.push(format!("{label} {}: `{e}`", t.name));
                }
                p.push((q(&rec.total, 0.5), q(&rec.total, 0.99), rec.throughput()));
            }
            if let [d, r] = p[..] {
                self.note(&format!(
                    "| {label} | relay ÷ direct | {:.2}× | {:.2}× | {:.2}× | | | | | | | |",
                    r.2 / d.2.max(1e-9),
                    r.0 as f64 / d.0.max(1) as f64,
                    r.1 as f64 / d.1.max(1) as f64,
                ));
            }
        }
        for e in errors {
            self.note(&format!("\nFirst error, {e}"));
        }
        Ok(())
    }

    /// Scenario 3: streaming — added time to first byte, inter-event gaps, time to the
    /// first content delta and per-event delay (at 1 and 64 streams), held streams.
    pub async fn streaming(&mut self) -> Result<()> {
        // Parts A and B: 20 deltas paced 5 ms apart, every event stamped with the mock's
        // send time.
        let paced = MockSettings {
            events: 20,
            interval: Duration::from_millis(5),
            first_byte: Duration::ZERO,
            stamp: true,
        };
        self.restart_mock(&paced).await?;
        let work = Workload {
            body: workload::small(true),
            headers: Vec::new(),
            stream: true,
            expected_events: paced.events_per_stream(),
            stall_after: Some(paced.interval * 10),
        };
        Self::progress("streaming: time to first byte");
        self.warm(&work, 5).await;
        let n = self.sizes.streams_per_round;
        let rounds = self.sizes.rounds.min(5);
        let one = self
            .stream_rounds(&work, rounds, 1, n, Duration::ZERO)
            .await;
        // Part B: the same streams, WIDE at a time (workers started evenly over one
        // stream's duration).
        Self::progress(&format!("streaming: {WIDE} concurrent streams"));
        let ramp = paced.interval * 20;
        let wide = self
            .stream_rounds(&work, rounds, WIDE, 2 * WIDE as u64, ramp)
            .await;
        let (merged, ttfb50) = (&one.merged, &one.ttfb50);
        self.note(&format!(
            "\n### 3. Streaming\n\n**A. Concurrency 1**: {} rounds × {n} streams per target; each stream has {} events, 20 text deltas paced {} ms apart against absolute deadlines. TTFB = first body byte (message_start). Gap = time between consecutive complete events (events sent back to back count as ~0).\n",
            self.sizes.rounds.min(5),
            paced.events_per_stream(),
            paced.interval.as_millis()
        ));
        self.note("| target | ok | lost | stalled | frames/stream | TTFB p50 ms | TTFB p99 ms | gap p50 ms | gap p99 ms | total p50 ms | relay CPU µs/stream |");
        self.note("|---|---|---|---|---|---|---|---|---|---|---|");
        for (i, rec) in merged.iter().enumerate().take(self.targets().len()) {
            let cpu = if i == 1 {
                format!(
                    "{:.1}",
                    one.load.cpu_us as f64 / rec.attempts().max(1) as f64
                )
            } else {
                "–".to_owned()
            };
            self.note(&format!(
                "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {cpu} |",
                self.targets()[i].name,
                rec.ok,
                rec.lost,
                rec.stalled,
                rec.frames as f64 / rec.ok.max(1) as f64,
                ms(q(&rec.ttfb, 0.5)),
                ms(q(&rec.ttfb, 0.99)),
                ms(q(&rec.gap, 0.5)),
                ms(q(&rec.gap, 0.99)),
                ms(q(&rec.total, 0.5)),
            ));
        }
        if self.via_relay.is_some() {
            let mut d: Vec<f64> = ttfb50[1]
                .iter()
                .zip(&ttfb50[0])
                .map(|(r, d)| *r as f64 - *d as f64)
                .collect();
            self.note(&format!(
                "\n**Added TTFB p50: {} ms** (median over rounds of relay − direct)",
                signed_ms(median(&mut d))
            ));
        }
        self.delay_table(&paced, rounds, [(1, &one), (WIDE, &wide)]);

        // Part C: many concurrent long streams.
        let hold = MockSettings {
            events: 20,
            interval: self.sizes.hold_interval,
            first_byte: Duration::ZERO,
            stamp: false,
        };
        self.restart_mock(&hold).await?;
        let work = Workload {
            body: workload::small(true),
            headers: Vec::new(),
            stream: true,
            expected_events: hold.events_per_stream(),
            stall_after: Some(hold.interval * 10),
        };
        self.warm(&work, 2).await;
        let ramp = hold.interval * 20;
        self.note(&format!(
            "\n**C. Concurrent streams**: at each step N workers (started evenly over one stream's duration) each run 2 streams back to back (≈{} ms per stream: 20 deltas paced {} ms). Lost = a stream without all its events or without message_stop; stalled = a gap over 10× the pace.\n",
            (hold.interval * 20).as_millis(),
            hold.interval.as_millis()
        ));
        self.note("| streams | target | ok | errors | lost | stalled | TTFB p50 ms | TTFB p99 ms | gap p99 ms | relay RSS peak MiB |");
        self.note("|---|---|---|---|---|---|---|---|---|---|");
        let mut held = None;
        let mut errors = Vec::new();
        for &c in self.sizes.stream_steps {
            Self::progress(&format!("streaming: {c} concurrent streams"));
            for t in self.targets() {
                let work = work.clone();
                let ph = self
                    .phase(&t, |cl, t| async move {
                        closed_loop(&cl, &t, &work, c, Stop::Count(2 * c as u64), ramp).await
                    })
                    .await;
                let rec = &ph.rec;
                let rss = if t.name == "relay" {
                    format!("{:.1}", ph.relay_rss_peak_kib as f64 / 1024.0)
                } else {
                    "–".into()
                };
                self.note(&format!(
                    "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {rss} |",
                    t.name,
                    rec.ok,
                    rec.errors,
                    rec.lost,
                    rec.stalled,
                    ms(q(&rec.ttfb, 0.5)),
                    ms(q(&rec.ttfb, 0.99)),
                    ms(q(&rec.gap, 0.99)),
                ));
                if let Some(e) = &rec.first_error {
                    errors.push(format!("{c} streams {}: `{e}`", t.name));
                }
                if t.name == "relay" && rec.errors == 0 && rec.lost == 0 && rec.stalled == 0 {
                    held = Some(c);
                }
            }
        }
        if self.via_relay.is_some() {
            match held {
                Some(c) => self.note(&format!(
                    "\n**Most concurrent streams held through the relay with no error, lost or stalled stream: {c}** (the largest step tried: {})",
                    self.sizes.stream_steps.last().copied().unwrap_or(0)
                )),
                None => self.note("\n**No step passed through the relay without errors.**"),
            }
        }
        for e in errors {
            self.note(&format!("\nFirst error, {e}"));
        }
        self.restart_mock(&MockSettings::default()).await?;
        Ok(())
    }

    /// `rounds` rounds of `count` streams at `concurrency` per target, interleaved
    /// direct → relay → direct…
    async fn stream_rounds(
        &mut self,
        work: &Workload,
        rounds: usize,
        concurrency: usize,
        count: u64,
        ramp: Duration,
    ) -> StreamRounds {
        let mut out = StreamRounds {
            merged: [Recorder::default(), Recorder::default()],
            ttfb50: [Vec::new(), Vec::new()],
            load: RelayLoad::default(),
        };
        for _ in 0..rounds {
            for (i, t) in self.targets().iter().enumerate() {
                let work = work.clone();
                let ph = self
                    .phase(t, |c, t| async move {
                        closed_loop(&c, &t, &work, concurrency, Stop::Count(count), ramp).await
                    })
                    .await;
                out.ttfb50[i].push(q(&ph.rec.ttfb, 0.5));
                out.load.add(t, &ph);
                out.merged[i].merge(&ph.rec);
            }
        }
        out
    }

    /// Part B of scenario 3: time to the first content delta and per-event delay, direct
    /// and through the relay, at each concurrency, with the relay's added value.
    fn delay_table(
        &mut self,
        paced: &MockSettings,
        rounds: usize,
        steps: [(usize, &StreamRounds); 2],
    ) {
        self.note(&format!(
            "\n**B. Time to first content delta and per-event delay**: the streams of A (1 at a time) and {rounds} rounds × {} streams run {WIDE} at a time (workers started evenly over one stream's duration), interleaved direct/relay. First delta = request sent → first `content_block_delta` event complete at the client. Event delay = for every event, its arrival (complete, at the client) − the time the mock handed it to its socket, stamped by the mock in an SSE comment (`: t=<µs>`) and read against the same real-time clock (all processes share one machine). Direct = mock → client, the baseline; relay − direct = what the relay adds (quantiles of the pooled samples). Relay CPU % of one core over its phases.\n",
            2 * WIDE
        ));
        self.note("| streams | target | ok | lost | events timed | first delta p50 ms | first delta p99 ms | event delay p50 ms | event delay p99 ms | event delay max ms | relay CPU % |");
        self.note("|---|---|---|---|---|---|---|---|---|---|---|");
        let stat = |r: &Recorder| {
            [
                q(&r.first_delta, 0.5),
                q(&r.first_delta, 0.99),
                q(&r.event_delay, 0.5),
                q(&r.event_delay, 0.99),
                r.event_delay.max(),
            ]
        };
        let mut added = Vec::new();
        for (streams, step) in steps {
            let recs = &step.merged;
            for (i, rec) in recs.iter().enumerate().take(self.targets().len()) {
                let cpu = if i == 1 {
                    format!("{:.0}", step.load.cpu_pct())
                } else {
                    "–".to_owned()
                };
                let cols: Vec<String> = stat(rec).into_iter().map(ms).collect();
                self.note(&format!(
                    "| {streams} | {} | {} | {} | {} | {} | {cpu} |",
                    self.targets()[i].name,
                    rec.ok,
                    rec.lost,
                    rec.event_delay.len(),
                    cols.join(" | "),
                ));
            }
            if self.via_relay.is_some() {
                let diff: Vec<f64> = stat(&recs[1])
                    .into_iter()
                    .zip(stat(&recs[0]))
                    .map(|(r, d)| r as f64 - d as f64)
                    .collect();
                let cols: Vec<String> = diff.iter().map(|d| signed_ms(*d)).collect();
                self.note(&format!(
                    "| {streams} | relay − direct | | | | {} | |",
                    cols.join(" | ")
                ));
                added.push((streams, diff));
            }
        }
        if let [(_, one), (_, many)] = &added[..] {
            self.note(&format!(
                "\n**Added by the relay: first content delta p50 {} ms at 1 stream, {} ms at {WIDE}; per-event delay p99 {} ms at 1 stream, {} ms at {WIDE}** ({} text deltas paced {} ms apart)",
                signed_ms(one[0]),
                signed_ms(many[0]),
                signed_ms(one[3]),
                signed_ms(many[3]),
                paced.events,
                paced.interval.as_millis()
            ));
        }
    }

    /// Scenario 4: response end → usage visible in the usage totals, read with
    /// `projections::read::usage_totals` (the admin API's query) on the relay's database,
    /// under background load; embedded event log and JetStream.
    pub async fn pipeline(&mut self) -> Result<()> {
        let Some(embedded) = self.relay.as_ref().map(|relay| {
            (
                target("relay", &relay.base_url, &relay.key),
                target("probe", &relay.base_url, &relay.probe_key),
                relay.db_url.clone(),
            )
        }) else {
            return Ok(());
        };
        let embedded = (embedded.0?, embedded.1?, embedded.2);
        let dur = if self.sizes.rounds < 5 {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(10)
        };
        self.note(&format!(
            "\n### 4. Pipeline: response end → usage visible in the totals\n\nA probe key (tenant `probe`) sends one non-streaming request at a time; after each response has been read to the end, the harness polls `projections::read::usage_totals` (tenant `probe`, the admin API's query) on the relay's database every 1 ms until the probe's usage event is counted. Background load from another key at the stated open-loop rate; {} s per step. Lag includes the 1 ms polling granularity.\n",
            dur.as_secs()
        ));
        self.note("| event log | background rate | probes | p50 ms | p99 ms | max ms | not visible within 10 s | background errors % |");
        self.note("|---|---|---|---|---|---|---|---|");
        for rate in [100.0, 1000.0] {
            Self::progress(&format!("pipeline: embedded, {rate}/s"));
            self.settle().await;
            let row = self.pipeline_step(&embedded, rate, dur).await?;
            self.note(&format!("| embedded SQLite | {rate:.0}/s | {row}"));
        }
        // JetStream: a second relay on a private nats-server, same mock.
        let nats = match start_nats().await {
            Ok(n) => n,
            Err(e) => {
                self.note(&format!("\nJetStream not measured: {e:#}"));
                return Ok(());
            }
        };
        let Some(bin) = self.relay_bin.clone() else {
            return Ok(());
        };
        let mock_url = format!("http://127.0.0.1:{}", self.mock_port);
        let js_relay = match start_relay(
            &bin,
            &mock_url,
            UPSTREAM_KEY,
            &[("NATS_URL", nats.url.clone())],
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                self.note(&format!(
                    "\nJetStream not measured: the relay did not start with NATS_URL: {e:#}"
                ));
                return Ok(());
            }
        };
        let js = (
            target("relay", &js_relay.base_url, &js_relay.key)?,
            target("probe", &js_relay.base_url, &js_relay.probe_key)?,
            js_relay.db_url.clone(),
        );
        for rate in [100.0, 1000.0] {
            Self::progress(&format!("pipeline: JetStream, {rate}/s"));
            let row = self.pipeline_step(&js, rate, dur).await?;
            self.note(&format!("| JetStream | {rate:.0}/s | {row}"));
        }
        drop(js_relay);
        drop(nats);
        Ok(())
    }

    /// One pipeline step; returns the table row after the first two columns.
    async fn pipeline_step(
        &self,
        (bench_t, probe_t, db_url): &(Target, Target, String),
        rate: f64,
        dur: Duration,
    ) -> Result<String> {
        use projections::read::{usage_totals, GroupBy, Period, UsageFilter};
        let db = projections::connect(db_url).await?;
        let today = chrono::Utc::now().date_naive();
        let filter = UsageFilter {
            tenant: Some("probe".to_owned()),
            api_key: None,
            account: None,
            model: None,
            from_day: today - chrono::Days::new(1),
            to_day: today + chrono::Days::new(1),
            period: Period::Total,
            group_by: GroupBy::default(),
            tz_offset_minutes: 0,
        };
        let seen =
            |rows: Vec<projections::read::UsageRow>| rows.iter().map(|r| r.requests).sum::<u64>();
        let mut base = seen(usage_totals(&db, &filter).await?);
        let work = Workload {
            body: workload::small(false),
            headers: Vec::new(),
            stream: false,
            expected_events: 0,
            stall_after: None,
        };
        let background = {
            let (c, t, w) = (self.client.clone(), bench_t.clone(), work.clone());
            tokio::spawn(async move { open_loop(&c, &t, &w, rate, dur, 8000).await })
        };
        let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let (mut probes, mut missing) = (0u64, 0u64);
        let started = tokio::time::Instant::now();
        while started.elapsed() < dur {
            let r = closed_loop(
                &self.client,
                probe_t,
                &work,
                1,
                Stop::Count(1),
                Duration::ZERO,
            )
            .await;
            let ended = tokio::time::Instant::now();
            if r.ok != 1 {
                continue;
            }
            probes += 1;
            loop {
                let n = seen(usage_totals(&db, &filter).await?);
                if n > base {
                    base = n;
                    let us = u64::try_from(ended.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = lag.record(us.clamp(1, 600_000_000));
                    break;
                }
                if ended.elapsed() > Duration::from_secs(10) {
                    missing += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let bg = background.await.unwrap_or_default();
        db.close().await;
        if probes > 0 && missing == probes {
            return Ok(format!(
                "{probes} | – | – | – | {missing} (never visible: are the relay's projectors running?) | {:.2} |",
                bg.error_pct()
            ));
        }
        Ok(format!(
            "{probes} | {} | {} | {} | {missing} | {:.2} |",
            ms(lag.value_at_quantile(0.5)),
            ms(lag.value_at_quantile(0.99)),
            ms(lag.max()),
            bg.error_pct()
        ))
    }

    /// Closing notes: idle RSS and what was not run.
    pub fn finish(&mut self) {
        if !self.settle_waits.is_empty() {
            let max = self.settle_waits.iter().max().copied().unwrap_or_default();
            self.note(&format!(
                "\nBefore each phase the harness waits until the relay uses < 5 % of a core; it stayed busy after {} phases, at most {:.1} s (background publishing/projection catching up).",
                self.settle_waits.len(),
                max.as_secs_f64()
            ));
        }
        if let Some(kib) = self.idle_rss_kib {
            self.note(&format!(
                "\nRelay idle RSS (after start-up, before traffic): {:.1} MiB",
                kib as f64 / 1024.0
            ));
        }
        if let Some(kib) = self.relay_pid().and_then(rss_kib) {
            self.note(&format!(
                "Relay RSS at the end of the run: {:.1} MiB",
                kib as f64 / 1024.0
            ));
        }
    }
}

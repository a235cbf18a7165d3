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
use super::procfs::{rss_kib, CpuMeter, RssParts, RssSampler};
use super::workload;

/// The upstream key the relay's account (and the direct target) uses.
const UPSTREAM_KEY: &str = "sk-ant-api03-bench-upstream-key";
/// `JWT_SECRET` of the JetStream relay (scale mode requires one, ≥ 32 characters).
const JWT_SECRET: &str = "bench-jwt-secret-not-for-production-use-0123456789";

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
    /// Concurrency-1 rounds per target of the limits scenario (even: each order of the
    /// two relay targets equally often).
    pub limits_rounds: usize,
    /// Closed-loop rounds (one step per target each) of the limits scenario.
    pub limits_steps: usize,
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
        limits_rounds: 4,
        limits_steps: 1,
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
        limits_rounds: 14,
        limits_steps: 2,
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
    /// Relay RSS right after start-up, before any traffic.
    pub idle_rss: Option<RssParts>,
    /// How long the relay stayed busy after phases (only waits over 0.45 s).
    settle_waits: Vec<Duration>,
    /// The limits of the `bench-limited` key, if it was created.
    key_limits: Option<String>,
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
        if t.through_relay() {
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

/// Interleaved rounds at concurrency 1 over several targets (index 0 = direct).
struct C1Rounds {
    /// Per target: every sample of every round.
    merged: Vec<Recorder>,
    /// Per target: each round's p50 (µs).
    p50s: Vec<Vec<u64>>,
    /// Per target: each round's p99 (µs).
    p99s: Vec<Vec<u64>>,
    /// Per target: the relay's CPU over the target's phases (µs; 0 for direct).
    cpu_us: Vec<u64>,
}

impl C1Rounds {
    /// The relay's CPU per request of target `i` (µs), if it goes through the relay.
    fn cpu_per_req(&self, i: usize, t: &Target) -> Option<f64> {
        let rec = &self.merged[i];
        (t.through_relay() && rec.ok > 0).then(|| self.cpu_us[i] as f64 / rec.ok as f64)
    }

    /// Per round: quantile of target `i` − the same quantile of target `j` (µs).
    fn diffs(per_round: &[Vec<u64>], i: usize, j: usize) -> Vec<f64> {
        per_round[i]
            .iter()
            .zip(&per_round[j])
            .map(|(a, b)| *a as f64 - *b as f64)
            .collect()
    }

    /// Median and IQR over rounds of (target `i` − target `j`) at p50 and p99 (µs).
    fn added(&self, i: usize, j: usize) -> [(f64, f64, f64); 2] {
        [&self.p50s, &self.p99s].map(|v| {
            let mut d = Self::diffs(v, i, j);
            let (a, b) = iqr(&mut d);
            (median(&mut d), a, b)
        })
    }
}

/// "p50 +x ms [a … b], p99 +y ms [c … d]" from [`C1Rounds::added`].
fn added_text(added: [(f64, f64, f64); 2]) -> String {
    let [(m50, a50, b50), (m99, a99, b99)] = added;
    format!(
        "p50 {} ms [{} … {}], p99 {} ms [{} … {}]",
        signed_ms(m50),
        signed_ms(a50),
        signed_ms(b50),
        signed_ms(m99),
        signed_ms(a99),
        signed_ms(b99)
    )
}

/// `a ÷ b` as "1.03×", or "n/a" when `b` is not positive.
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "n/a".to_owned()
    }
}

/// The order of the targets in round `round`: direct first, then the others, reversed
/// every other round with `alternate` (so no relay target always runs right after direct).
fn round_order(round: usize, n: usize, alternate: bool) -> Vec<usize> {
    let mut rest: Vec<usize> = (1..n).collect();
    if alternate && round % 2 == 1 {
        rest.reverse();
    }
    std::iter::once(0).chain(rest).take(n).collect()
}

/// Small non-streaming requests (scenarios 1, 2 and 7).
fn small_work() -> Workload {
    Workload {
        body: workload::small(false),
        headers: Vec::new(),
        stream: false,
        expected_events: 0,
        stall_after: None,
    }
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
    /// With `key_limits` (arguments of `relay keys limits`), the relay also gets the
    /// `bench-limited` key (scenario 7).
    pub async fn start(
        sizes: Sizes,
        mock_bin: PathBuf,
        relay_bin: Option<PathBuf>,
        key_limits: Option<String>,
    ) -> Result<Bench> {
        let mock_port = free_port()?;
        let mock = start_mock(&mock_bin, mock_port, &MockSettings::default())?;
        let mock_url = format!("http://127.0.0.1:{mock_port}");
        let direct = target("direct", &mock_url, UPSTREAM_KEY)?;
        let (relay, via_relay, idle) = match &relay_bin {
            Some(bin) => {
                let relay =
                    start_relay(bin, &mock_url, UPSTREAM_KEY, &[], key_limits.as_deref()).await?;
                let idle = RssParts::read(relay.guard.pid());
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
            idle_rss: idle,
            settle_waits: Vec::new(),
            key_limits,
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

    /// CPU used since `cpu` started, up to the moment the process went idle (under 5 %
    /// of a core over 200 ms; the idle window itself is not billed). Gives up after
    /// 60 s.
    async fn cpu_until_idle(cpu: &CpuMeter) -> u64 {
        let started = tokio::time::Instant::now();
        loop {
            let before = cpu.elapsed_us();
            tokio::time::sleep(Duration::from_millis(200)).await;
            if cpu.elapsed_us().saturating_sub(before) <= 10_000
                || started.elapsed() > Duration::from_secs(60)
            {
                return before;
            }
        }
    }

    async fn phase<F, Fut>(&mut self, t: &Target, run: F) -> Phase
    where
        F: FnOnce(HttpClient, Target) -> Fut,
        Fut: std::future::Future<Output = Recorder>,
    {
        self.settle().await;
        let relay = if t.through_relay() {
            self.relay_pid()
        } else {
            None
        };
        let cpu = relay.map(CpuMeter::start);
        let rss = relay.map(|pid| RssSampler::start(pid, Duration::from_millis(50)));
        let mock_cpu = self.mock.as_ref().map(|m| CpuMeter::start(m.pid()));
        let driver_cpu = CpuMeter::start(std::process::id());
        let rec = run(self.client.clone(), t.clone()).await;
        // The relay's CPU is billed until it has finished the phase's work, including
        // what continues after the last response (publishing, projecting).
        let relay_cpu_us = match &cpu {
            Some(c) => Self::cpu_until_idle(c).await,
            None => 0,
        };
        Phase {
            rec,
            relay_cpu_us,
            relay_rss_peak_kib: rss.map(RssSampler::finish).unwrap_or(0),
            mock_cpu_us: mock_cpu.map(|c| c.elapsed_us()).unwrap_or(0),
            driver_cpu_us: driver_cpu.elapsed_us(),
        }
    }

    async fn warm(&self, work: &Workload, n: u64) {
        self.warm_targets(&self.targets(), work, n).await;
    }

    async fn warm_targets(&self, targets: &[Target], work: &Workload, n: u64) {
        for t in targets {
            let _ = closed_loop(&self.client, t, work, 1, Stop::Count(n), Duration::ZERO).await;
        }
    }

    /// `rounds` rounds of `per_round` requests at concurrency 1 on each target in turn
    /// (see [`round_order`]).
    async fn c1_rounds(
        &mut self,
        targets: &[Target],
        work: &Workload,
        rounds: usize,
        per_round: u64,
        alternate: bool,
    ) -> C1Rounds {
        let n = targets.len();
        let mut out = C1Rounds {
            merged: (0..n).map(|_| Recorder::default()).collect(),
            p50s: vec![Vec::new(); n],
            p99s: vec![Vec::new(); n],
            cpu_us: vec![0; n],
        };
        for round in 0..rounds {
            for i in round_order(round, n, alternate) {
                let work = work.clone();
                let ph = self
                    .phase(&targets[i], |c, t| async move {
                        closed_loop(&c, &t, &work, 1, Stop::Count(per_round), Duration::ZERO).await
                    })
                    .await;
                out.p50s[i].push(q(&ph.rec.total, 0.5));
                out.p99s[i].push(q(&ph.rec.total, 0.99));
                out.cpu_us[i] += ph.relay_cpu_us;
                out.merged[i].merge(&ph.rec);
            }
        }
        out
    }

    /// The table of a [`C1Rounds`]: one row per target.
    fn c1_table(&mut self, targets: &[Target], r: &C1Rounds) {
        self.note("| target | ok | errors | p50 ms | p99 ms | p99.9 ms | relay CPU µs/req |");
        self.note("|---|---|---|---|---|---|---|");
        for (i, (t, rec)) in targets.iter().zip(&r.merged).enumerate() {
            let cpu = r
                .cpu_per_req(i, t)
                .map_or_else(|| "–".to_owned(), |c| format!("{c:.1}"));
            self.note(&format!(
                "| {} | {} | {} | {} | {} | {} | {cpu} |",
                t.name,
                rec.ok,
                rec.errors,
                ms(q(&rec.total, 0.5)),
                ms(q(&rec.total, 0.99)),
                ms(q(&rec.total, 0.999)),
            ));
        }
    }

    fn note(&mut self, line: &str) {
        let _ = writeln!(self.report, "{line}");
    }

    pub(crate) fn progress(what: &str) {
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
            ("small, non-streaming", small_work(), self.sizes.per_round)
        };
        Self::progress(&format!("latency: {label}"));
        self.warm(&work, self.sizes.warmup.min(per_round * 2)).await;
        let targets = self.targets();
        let r = self
            .c1_rounds(&targets, &work, self.sizes.rounds, per_round, false)
            .await;
        let title = if large {
            "6. Claude-Code-sized requests"
        } else {
            "1. Added latency"
        };
        self.note(&format!(
            "\n### {title}: concurrency 1, {label}\n\n{} rounds × {per_round} requests per target, interleaved direct/relay. Added = median over rounds of (relay − direct) for the same quantile; IQR across rounds in brackets.\n",
            self.sizes.rounds
        ));
        self.c1_table(&targets, &r);
        if targets.len() > 1 {
            self.note(&format!(
                "\n**Added latency: {}**",
                added_text(r.added(1, 0))
            ));
        }
        if let Some(e) = r.merged.iter().find_map(|r| r.first_error.clone()) {
            self.note(&format!("\nFirst error: `{e}`"));
        }
        Ok(())
    }

    /// Scenario 2: throughput at fixed concurrency and at fixed rates.
    pub async fn throughput(&mut self) -> Result<()> {
        let work = small_work();
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
                        format!("{:.1}", ph.relay_cpu_us as f64 / rec.ok.max(1) as f64),
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

    /// Scenario 7: what limits cost. Concurrency-1 latency and closed-loop throughput at
    /// c=32, direct, through the relay with the bench key (no limits) and with the
    /// `bench-limited` key (every limit set, none reached), interleaved on one relay.
    pub async fn limits(&mut self) -> Result<()> {
        let Some((unlimited, limited)) = self.via_relay.clone().zip(self.relay.as_ref()) else {
            return Ok(());
        };
        let limited = match &limited.limited_key {
            Ok(key) => target("relay+limits", &limited.base_url, key)?,
            Err(e) => {
                let e = e.clone();
                self.note(&format!(
                    "\n### 7. Limits\n\nNot measured: the `bench-limited` key could not be set up: {e}"
                ));
                return Ok(());
            }
        };
        let targets = [self.direct.clone(), unlimited, limited];
        let work = small_work();
        let (rounds, per_round) = (self.sizes.limits_rounds, self.sizes.per_round);
        Self::progress("limits: added latency at concurrency 1");
        self.warm_targets(&targets, &work, self.sizes.warmup).await;
        let r = self
            .c1_rounds(&targets, &work, rounds, per_round, true)
            .await;
        let limits = self.key_limits.clone().unwrap_or_default();
        let checks = if limits == super::processes::LIMITED_KEY_LIMITS {
            ": every request passes the model pattern, takes an rpm token and a concurrency permit, and reserves and settles its worst case against the daily and total budgets; none is refused"
        } else {
            " (not the default set)"
        };
        self.note(&format!(
            "\n### 7. Limits: the same relay, a key without limits and a key with limits\n\nTargets: `direct` (the mock), `relay` (the bench key, no limits) and `relay+limits` (the `bench-limited` key on the same relay process, set with `relay keys limits <id> {}`{checks}).\n\n**A. Added latency, concurrency 1, small, non-streaming**: {rounds} rounds × {per_round} requests per target; each round runs direct first, then the two relay targets, their order swapped every other round. Added = median over rounds of (target − direct) for the same quantile; IQR across rounds in brackets.\n",
            limits.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
        self.c1_table(&targets, &r);
        let (plain, with) = (r.added(1, 0), r.added(2, 0));
        let cpu = |i: usize| r.cpu_per_req(i, &targets[i]).unwrap_or(0.0);
        self.note(&format!(
            "\n**Added latency without limits: {}**\n\n**Added latency with limits: {}**\n\n**With limits ÷ without, same run: added p50 {}, added p99 {}, relay CPU per request {}**; per round, relay+limits − relay: {}",
            added_text(plain),
            added_text(with),
            ratio(with[0].0, plain[0].0),
            ratio(with[1].0, plain[1].0),
            ratio(cpu(2), cpu(1)),
            added_text(r.added(2, 1)),
        ));
        if let Some(e) = r.merged.iter().find_map(|r| r.first_error.clone()) {
            self.note(&format!("\nFirst error: `{e}`"));
        }

        // B: closed loop at concurrency 32.
        const C: usize = 32;
        let step = self.sizes.step;
        let n = targets.len();
        let mut merged: Vec<Recorder> = (0..n).map(|_| Recorder::default()).collect();
        let (mut wall, mut cpu_us) = (vec![Duration::ZERO; n], vec![0u64; n]);
        for round in 0..self.sizes.limits_steps {
            for i in round_order(round, n, true) {
                Self::progress(&format!("limits: closed c={C}, {}", targets[i].name));
                let work = work.clone();
                let ph = self
                    .phase(&targets[i], |c, t| async move {
                        closed_loop(&c, &t, &work, C, Stop::After(step), Duration::ZERO).await
                    })
                    .await;
                wall[i] += ph.rec.elapsed;
                cpu_us[i] += ph.relay_cpu_us;
                merged[i].merge(&ph.rec);
            }
        }
        self.note(&format!(
            "\n**B. Throughput, closed loop at concurrency {C}**: {} round(s) of one {} s step per target, in the order of A. ok req/s = successful responses ÷ wall time of the target's steps; relay CPU % of one core.\n",
            self.sizes.limits_steps,
            step.as_secs()
        ));
        self.note("| target | ok | ok req/s | p50 ms | p99 ms | p99.9 ms | errors % | relay CPU µs/req | relay CPU % |");
        self.note("|---|---|---|---|---|---|---|---|---|");
        let mut per_req = vec![0.0; n];
        let mut rate = vec![0.0; n];
        for (i, (t, rec)) in targets.iter().zip(&merged).enumerate() {
            rate[i] = rec.ok as f64 / wall[i].as_secs_f64().max(1e-9);
            per_req[i] = cpu_us[i] as f64 / rec.ok.max(1) as f64;
            let (cpu_req, cpu_pct) = if t.through_relay() {
                (
                    format!("{:.1}", per_req[i]),
                    format!(
                        "{:.0}",
                        100.0 * cpu_us[i] as f64 / wall[i].as_micros().max(1) as f64
                    ),
                )
            } else {
                ("–".into(), "–".into())
            };
            self.note(&format!(
                "| {} | {} | {:.0} | {} | {} | {} | {:.2} | {cpu_req} | {cpu_pct} |",
                t.name,
                rec.ok,
                rate[i],
                ms(q(&rec.total, 0.5)),
                ms(q(&rec.total, 0.99)),
                ms(q(&rec.total, 0.999)),
                rec.error_pct(),
            ));
        }
        self.note(&format!(
            "\n**With limits ÷ without at c={C}, same run: throughput {}, relay CPU per request {}**",
            ratio(rate[2], rate[1]),
            ratio(per_req[2], per_req[1]),
        ));
        for (t, rec) in targets.iter().zip(&merged) {
            if let Some(e) = &rec.first_error {
                self.note(&format!("\nFirst error, c={C} {}: `{e}`", t.name));
            }
        }

        // Evidence that the limits were in force: the x-relay-* headers of one more
        // request per relay target.
        let mut seen = Vec::new();
        for t in &targets[1..] {
            let h = match self.relay_headers(t).await {
                Ok(h) if h.is_empty() => "none".to_owned(),
                Ok(h) => h
                    .iter()
                    .map(|(k, v)| format!("`{k}: {v}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                Err(e) => format!("(request failed: {e:#})"),
            };
            seen.push(format!("{}: {h}", t.name));
        }
        self.note(&format!(
            "\n`x-relay-*` headers of one request per key after the run — {}.",
            seen.join("; ")
        ));
        Ok(())
    }

    /// The `x-relay-*` response headers of one small request to `t`.
    async fn relay_headers(&self, t: &Target) -> Result<Vec<(String, String)>> {
        use http_body_util::BodyExt as _;
        let req = http::Request::post(t.uri.clone())
            .header("x-api-key", &t.key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(workload::small(false)))?;
        let resp = self.client.request(req).await?;
        let status = resp.status();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-relay-"))
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        resp.into_body().collect().await?;
        anyhow::ensure!(status == http::StatusCode::OK, "status {status}");
        Ok(headers)
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
                format!("{:.1}", one.load.cpu_us as f64 / rec.ok.max(1) as f64)
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
            &[
                ("NATS_URL", nats.url.clone()),
                // Scale mode: every relay must share a login-token secret.
                ("JWT_SECRET", JWT_SECRET.to_owned()),
            ],
            None,
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
        let work = small_work();
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
        if let Some(idle) = self.idle_rss {
            let mib = |kib: u64| kib as f64 / 1024.0;
            self.note(&format!(
                "\nRelay idle RSS (after start-up, before traffic): {:.1} MiB \
                 (anonymous {:.1} MiB; file-backed {:.1} MiB, chiefly the binary's pages, \
                 which vary with how much of the file the page cache holds)",
                mib(idle.total),
                mib(idle.anon),
                mib(idle.file)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_order_keeps_direct_first_and_alternates_the_rest() {
        assert_eq!(round_order(0, 3, true), [0, 1, 2]);
        assert_eq!(round_order(1, 3, true), [0, 2, 1]);
        assert_eq!(round_order(1, 3, false), [0, 1, 2]);
        assert_eq!(round_order(1, 2, true), [0, 1]);
        assert_eq!(round_order(0, 1, true), [0]);
    }

    #[test]
    fn added_is_the_median_of_per_round_differences() {
        let r = C1Rounds {
            merged: (0..3).map(|_| Recorder::default()).collect(),
            p50s: vec![
                vec![10, 10, 10, 10],
                vec![110, 130, 120, 500],
                vec![120, 140, 130, 90],
            ],
            p99s: vec![vec![50; 4], vec![250; 4], vec![300; 4]],
            cpu_us: vec![0; 3],
        };
        let [(m50, _, _), (m99, _, _)] = r.added(1, 0);
        assert_eq!((m50, m99), (115.0, 200.0));
        let [(m50, _, _), (m99, _, _)] = r.added(2, 1);
        assert_eq!((m50, m99), (10.0, 50.0));
        assert_eq!(ratio(2.0, 1.0), "2.00×");
        assert_eq!(ratio(1.0, 0.0), "n/a");
    }
}

//! Process CPU and memory from /proc: the relay's cost, measured from outside.
//!
//! CPU is `utime + stime` from `/proc/<pid>/stat` (clock ticks, 10 ms each here; it
//! includes threads that already exited), so per-request figures are taken over phases
//! of thousands of requests. RSS is `VmRSS` from `/proc/<pid>/status`, sampled by a
//! background thread to catch the peak.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux x86-64).
const CLK_TCK: u64 = 100;

/// CPU time (user + system) the process has used, in microseconds.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat are utime and stime; `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / CLK_TCK)
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident set size split by kind, in KiB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RssParts {
    /// `VmRSS`: everything resident.
    pub total: u64,
    /// `RssAnon`: the heap, stacks and other private memory.
    pub anon: u64,
    /// `RssFile`: mapped file pages, chiefly the binary's own. How many of them are
    /// resident depends on how much of the file the page cache holds (a fault maps the
    /// cached neighbours of the page it needs), so this part moves between runs of the
    /// same binary.
    pub file: u64,
}

impl RssParts {
    /// Reads the three fields from the text of a `status` file.
    pub fn parse(status: &str) -> Option<RssParts> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        Some(RssParts {
            total: field("VmRSS:")?,
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
        })
    }

    /// Reads a live process's.
    pub fn read(pid: u32) -> Option<RssParts> {
        RssParts::parse(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
    }
}

/// Samples a process's RSS every `period` until finished; reports the peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32, period: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(period);
            }
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns the peak RSS in KiB.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// CPU used by a process over a phase.
pub struct CpuMeter {
    pid: u32,
    start_us: u64,
}

impl CpuMeter {
    /// Starts measuring `pid`.
    pub fn start(pid: u32) -> CpuMeter {
        CpuMeter {
            pid,
            start_us: cpu_us(pid).unwrap_or(0),
        }
    }

    /// CPU microseconds used since start.
    pub fn elapsed_us(&self) -> u64 {
        cpu_us(self.pid)
            .unwrap_or(self.start_us)
            .saturating_sub(self.start_us)
    }
}

/// The machine's CPU time counters (`cpu` line of `/proc/stat`, clock ticks summed over
/// every core).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostCpu {
    /// All time: user, nice, system, idle, iowait, irq, softirq and steal.
    pub total: u64,
    /// Idle and iowait.
    pub idle: u64,
    /// Time the hypervisor gave to other guests while this one wanted to run.
    pub steal: u64,
}

impl HostCpu {
    /// Parses the `cpu` line of `/proc/stat`'s text.
    pub fn parse(stat: &str) -> Option<HostCpu> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
            return None;
        };
        Some(HostCpu {
            total: user + nice + system + idle + iowait + irq + softirq + steal,
            idle: idle + iowait,
            steal,
        })
    }

    /// The counters now.
    pub fn read() -> Option<HostCpu> {
        HostCpu::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// The 1-minute load average as `/proc/loadavg` prints it.
fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// What the machine did during a scenario: its load, how busy its cores were and how
/// much time the hypervisor took (steal). A run with steal is noisy in its tails, for
/// direct and relay alike.
pub struct HostWatch {
    cpu: Option<HostCpu>,
    load: String,
}

impl HostWatch {
    /// Starts watching.
    pub fn start() -> HostWatch {
        HostWatch {
            cpu: HostCpu::read(),
            load: load1(),
        }
    }

    /// One line for the report, covering the time since `start`.
    pub fn note(&self) -> String {
        let shares = self
            .cpu
            .zip(HostCpu::read())
            .and_then(|(a, b)| host_shares(&a, &b));
        let (busy, steal) = match shares {
            Some((busy, steal)) => {
                // Steal accrues only while this machine wants to run: as a share of
                // that demand it says how often a runnable thread was kept waiting.
                let of_demand = if busy > 0.0 {
                    steal * 100.0 / busy
                } else {
                    0.0
                };
                (
                    format!("{busy:.0} %"),
                    format!("{steal:.1} % of all CPU time, {of_demand:.0} % of the time it wanted to run"),
                )
            }
            None => ("?".to_owned(), "?".to_owned()),
        };
        format!(
            "\n_Machine during this scenario: 1-minute load {} → {}; all cores together busy {busy} of the time, steal included; steal {steal} (time the hypervisor gave to other guests: with more than a few percent, tails are noisy for direct and relay alike)._\n",
            self.load,
            load1()
        )
    }
}

/// Busy and steal shares (percent of all CPU time) between two readings; `None` when
/// no time passed.
pub fn host_shares(a: &HostCpu, b: &HostCpu) -> Option<(f64, f64)> {
    let total = b.total.checked_sub(a.total).filter(|t| *t > 0)?;
    let idle = b.idle.saturating_sub(a.idle);
    let steal = b.steal.saturating_sub(a.steal);
    #[expect(clippy::cast_precision_loss, reason = "tick counts far below 2^52")]
    let pct = |n: u64| n as f64 * 100.0 / total as f64;
    Some((pct(total.saturating_sub(idle)), pct(steal)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        let before = cpu_us(pid).unwrap();
        // Burn a little CPU so the counter moves by at least one tick.
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_us(pid).unwrap() > before);
    }

    #[test]
    fn rss_parts_reads_the_status_fields() {
        let status = "Name:\trelay\nVmRSS:\t   20123 kB\nRssAnon:\t    4567 kB\n\
                      RssFile:\t   15500 kB\nRssShmem:\t      56 kB\n";
        assert_eq!(
            RssParts::parse(status),
            Some(RssParts {
                total: 20123,
                anon: 4567,
                file: 15500
            })
        );
        assert_eq!(RssParts::parse("VmRSS:\t1 kB\n"), None);
        let own = RssParts::read(std::process::id()).unwrap();
        assert!(own.total >= own.anon && own.anon > 0 && own.file > 0);
    }

    #[test]
    fn host_cpu_reads_the_cpu_line_and_shares_add_up() {
        let a = HostCpu::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n")
            .unwrap();
        assert_eq!(
            a,
            HostCpu {
                total: 1000,
                idle: 850,
                steal: 0
            }
        );
        let b = HostCpu::parse("cpu  400 0 100 1100 50 0 0 350 0 0\n").unwrap();
        // 1,000 ticks passed: 300 user + 50 system + 350 steal busy, 300 idle.
        let (busy, steal) = host_shares(&a, &b).unwrap();
        assert!((busy - 70.0).abs() < 1e-9, "{busy}");
        assert!((steal - 35.0).abs() < 1e-9, "{steal}");
        assert_eq!(host_shares(&a, &a), None);
        assert_eq!(HostCpu::parse("cpu  1 2 3\n"), None);
        assert_eq!(HostCpu::parse("intr 1 2 3\n"), None);
        assert!(HostCpu::read().is_some());
    }
}

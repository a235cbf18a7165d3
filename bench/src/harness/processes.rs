//! The processes under test: the mock upstream and the relay, each a child process.
//!
//! The mock runs out of process (the `mock-upstream` binary, one tokio worker) so that
//! neither its CPU nor its scheduling hides inside the driver or the relay; the relay's
//! CPU and RSS are read from its own /proc entry.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};

/// A child process killed (and reaped) on drop.
pub struct Guard {
    child: Child,
}

impl Guard {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sibling binary of the running executable (`target/release/<name>`).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("executable has no directory"))?;
    Ok(dir.join(name))
}

/// A free loopback port (bound then released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Settings of one mock process.
#[derive(Clone, Debug)]
pub struct MockSettings {
    /// text_delta events per stream.
    pub events: usize,
    /// Pacing between deltas.
    pub interval: Duration,
    /// Delay before the response head.
    pub first_byte: Duration,
    /// Stamp each SSE event with the mock's send time (`--stamp-events`).
    pub stamp: bool,
}

impl Default for MockSettings {
    fn default() -> Self {
        MockSettings {
            events: 6,
            interval: Duration::ZERO,
            first_byte: Duration::ZERO,
            stamp: false,
        }
    }
}

impl MockSettings {
    /// `event:` lines in one complete stream of the fast mock (no thinking, no tool):
    /// message_start, content_block_start, ping, deltas, content_block_stop,
    /// message_delta, message_stop.
    pub fn events_per_stream(&self) -> usize {
        self.events.max(1) + 6
    }
}

/// Starts `mock-upstream` on `port`; returns the guard once it prints its address.
pub fn start_mock(bin: &Path, port: u16, settings: &MockSettings) -> Result<Guard> {
    let mut command = Command::new(bin);
    if settings.stamp {
        command.arg("--stamp-events");
    }
    let mut child = command
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--threads",
            "1",
            "--events",
            &settings.events.to_string(),
            "--interval-us",
            &settings.interval.as_micros().to_string(),
            "--first-byte-us",
            &settings.first_byte.as_micros().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("mock stdout"))?;
    let guard = Guard { child };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the mock never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .context("mock-upstream did not report its address")?;
    if !line.starts_with("MOCK_LISTENING ") {
        bail!("unexpected mock output: {line}");
    }
    Ok(guard)
}

/// A running relay with one upstream account pointing at the mock.
pub struct Relay {
    /// The serving process.
    pub guard: Guard,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The relay-issued client key (tenant `default`).
    pub key: String,
    /// A second key, tenant `probe`, for the pipeline probe.
    pub probe_key: String,
    /// A third key, tenant `default`, with limits set so high that nothing is refused
    /// ([`LIMITED_KEY_LIMITS`] by default); `Err` says why there is none.
    pub limited_key: std::result::Result<String, String>,
    /// The relay's read-model database.
    pub db_url: String,
    /// Kept so the data directory lives as long as the relay.
    data_dir: tempfile::TempDir,
}

impl Relay {
    /// The last `lines` lines of the relay's log (stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        let log =
            std::fs::read_to_string(self.data_dir.path().join("relay.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn run_cli(
    bin: &Path,
    data_dir: &Path,
    env: &[(&str, String)],
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("DATA_DIR", data_dir)
        .env("LOG_LEVEL", "warn")
        // The mock upstream listens on loopback.
        .env("UPSTREAM_ALLOW_PRIVATE", "true")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
        pipe.write_all(b"\n")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "relay {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The limits set on the `bench-limited` key by default (`relay keys limits <id> …`):
/// every check runs on each request (model pattern, rpm bucket, concurrency permit, daily
/// and total budget reservations), none is reached.
pub const LIMITED_KEY_LIMITS: &str = "--rpm 1000000 --max-concurrency 100000 \
     --daily-budget-usd 1000000 --total-budget-usd 1000000 --allowed-models claude-*";

/// Creates the `bench-limited` key and sets `limits` (arguments of `relay keys limits`,
/// split at whitespace) on it; returns the key.
fn create_limited_key(
    bin: &Path,
    dir: &Path,
    env: &[(&str, String)],
    limits: &str,
) -> Result<String> {
    let out = run_cli(
        bin,
        dir,
        env,
        &["keys", "create", "--name", "bench-limited"],
        None,
    )?;
    // "created key key_… for tenant default (shown once):", then the key alone.
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .ok_or_else(|| anyhow!("relay keys create printed no key id: {out}"))?;
    let mut args = vec!["keys", "limits", id];
    args.extend(limits.split_whitespace());
    run_cli(bin, dir, env, &args, None)?;
    last_line(&out)
}

fn last_line(out: &str) -> Result<String> {
    Ok(out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| anyhow!("relay keys create printed no key"))?
        .to_owned())
}

/// Sets up a fresh relay (temp DATA_DIR, one account at `upstream_url` with
/// `upstream_key`, a client key, a probe key and, with `limited` (arguments of `relay
/// keys limits`), the `bench-limited` key) and starts `relay serve` with the extra environment `env` (e.g. `NATS_URL`).
pub async fn start_relay(
    bin: &Path,
    upstream_url: &str,
    upstream_key: &str,
    env: &[(&str, String)],
    limited: Option<&str>,
) -> Result<Relay> {
    if !bin.exists() {
        bail!(
            "relay binary not found at {} (build it: cargo build --release -p relay)",
            bin.display()
        );
    }
    let data_dir = tempfile::tempdir()?;
    let dir = data_dir.path();
    run_cli(
        bin,
        dir,
        env,
        &[
            "accounts",
            "add",
            "--name",
            "mock",
            "--base-url",
            upstream_url,
        ],
        Some(upstream_key),
    )?;
    let key = last_line(&run_cli(
        bin,
        dir,
        env,
        &["keys", "create", "--name", "bench"],
        None,
    )?)?;
    let probe_key = last_line(&run_cli(
        bin,
        dir,
        env,
        &["keys", "create", "--name", "probe", "--tenant", "probe"],
        None,
    )?)?;
    let limited_key = match limited {
        Some(limits) => create_limited_key(bin, dir, env, limits).map_err(|e| format!("{e:#}")),
        None => Err("not requested".to_owned()),
    };
    let db_url = format!("sqlite://{}", dir.join("relay.db").display());
    let port = free_port()?;
    let log = std::fs::File::create(data_dir.path().join("relay.log"))?;
    let child = Command::new(bin)
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("DATA_DIR", data_dir.path())
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("LOG_LEVEL", "warn")
        .env("UPSTREAM_ALLOW_PRIVATE", "true")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {} serve", bin.display()))?;
    let mut guard = Guard { child };
    let base_url = format!("http://127.0.0.1:{port}");
    wait_healthy(&base_url, &mut guard, Duration::from_secs(30))
        .await
        .with_context(|| {
            let log =
                std::fs::read_to_string(data_dir.path().join("relay.log")).unwrap_or_default();
            format!("relay did not become healthy; log:\n{log}")
        })?;
    Ok(Relay {
        guard,
        base_url,
        key,
        probe_key,
        limited_key,
        db_url,
        data_dir,
    })
}

/// Waits for `GET /health` = 200; gives up when the relay exits or after `timeout`.
async fn wait_healthy(base_url: &str, relay: &mut Guard, timeout: Duration) -> Result<()> {
    let client = super::driver::client();
    let uri: http::Uri = format!("{base_url}/health").parse()?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let req = http::Request::get(uri.clone()).body(http_body_util::Full::default())?;
        if let Ok(resp) = client.request(req).await {
            if resp.status() == http::StatusCode::OK {
                return Ok(());
            }
        }
        if let Some(status) = relay.exited() {
            bail!("the relay exited ({status}) before GET /health answered 200");
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("GET /health did not answer 200 within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A private nats-server with JetStream (`$NATS_SERVER_BIN` or `nats-server` on PATH).
pub struct Nats {
    /// The server process.
    _guard: Guard,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    _store: tempfile::TempDir,
}

/// Starts nats-server with JetStream on a free port; waits until it accepts connections.
pub async fn start_nats() -> Result<Nats> {
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
    let store = tempfile::tempdir()?;
    let port = free_port()?;
    let child = Command::new(&bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {bin}"))?;
    let guard = Guard { child };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if tokio::time::Instant::now() >= deadline {
            bail!("nats-server did not listen on {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Nats {
        _guard: guard,
        url: format!("nats://127.0.0.1:{port}"),
        _store: store,
    })
}

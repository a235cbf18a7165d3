//! Faults an operator meets, against the real `relay` binary: `kill -9` under
//! streaming and non-streaming load, then a restart on the same `DATA_DIR`. After each,
//! the billing invariant must hold: every response a client completed has exactly one
//! usage event, every attempt the mock served has one (or, cut short by the crash, one
//! of completeness `unknown`), nothing is counted twice, and the tenant's statement
//! is the sum of the events.

use crate::cli::run_ok;
use crate::ADMIN_PASSWORD;
use bench::mock::{MockConfig, MockUpstream, Step};
use ingest::EventLog;
use schema::{Completeness, Envelope, Event};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The CLI tests' command, with a first admin, quieter logs and `env`.
fn relay_cmd(data_dir: &Path, env: &[(String, String)]) -> Command {
    let mut c = crate::cli::relay_cmd(data_dir);
    c.env("LOG_LEVEL", "warn")
        // Short cooldowns, so that the faulty account comes back and meets every fault
        // of its script within a run (the defaults are 30 s and 10 s).
        .env("OVERLOAD_COOLDOWN", "1")
        .env("SERVER_ERROR_COOLDOWN", "1")
        .env("DEFAULT_ADMIN_USERNAME", "admin")
        .env("DEFAULT_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .envs(env.iter().map(|(k, v)| (k, v)));
    c
}

/// A relay process: `relay serve` on a fixed port (so a restart answers at the same
/// address), or `relay project`.
struct Proc {
    child: Child,
    /// The last lines of its stderr, for failure messages.
    log: Arc<Mutex<std::collections::VecDeque<String>>>,
}

impl Proc {
    fn spawn(data_dir: &Path, env: &[(String, String)], args: &[&str], port: u16) -> Proc {
        let mut child = relay_cmd(data_dir, env)
            .args(args)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let tail = log.clone();
        std::thread::spawn(move || {
            // Drained so the child never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut t = tail.lock().unwrap();
                if t.len() == 40 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        Proc { child, log }
    }

    fn log_tail(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `relay serve`, once `/health` answers.
    async fn serve(data_dir: &Path, env: &[(String, String)], port: u16) -> Proc {
        let mut proc = Proc::spawn(data_dir, env, &["serve"], port);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = http
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                return proc;
            }
            let exited = proc.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "relay did not come up ({exited:?}):\n{}",
                proc.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `relay project` (scale mode's projector process).
    fn project(data_dir: &Path, env: &[(String, String)]) -> Proc {
        Proc::spawn(data_dir, env, &["project"], 0)
    }

    /// SIGKILL: no shutdown, no drain, no flush.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private PostgreSQL server on a free port, which a test may restart. Debian's
/// newest server programs, else `initdb`'s folder on `PATH`; run as `postgres` when the
/// test runs as root (initdb refuses root). Missing programs fail the test.
struct PrivatePg {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePg {
    fn start() -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max_by_key(|b| {
                b.parent()
                    .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .or_else(|| {
                std::env::var_os("PATH").and_then(|p| {
                    std::env::split_paths(&p).find(|d| d.join("initdb").exists())
                })
            })
            .expect("PostgreSQL's server programs (initdb, pg_ctl) are needed: apt-get install postgresql");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pg = PrivatePg {
            bin,
            dir,
            port: free_port(),
        };
        if Self::as_root() {
            let st = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&data)
                .status()
                .unwrap();
            assert!(st.success(), "chown postgres {}", data.display());
        }
        pg.run("initdb", &["-A", "trust", "-U", "postgres"]);
        pg.ctl("start");
        pg
    }

    fn as_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    }

    /// `program -D <data> args…`, as `postgres` when we are root.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let prog = self.bin.join(program);
        let mut cmd = if Self::as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&prog);
            c
        } else {
            Command::new(&prog)
        };
        cmd.arg("-D").arg(self.dir.path().join("data")).args(args);
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program, args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl start|stop|restart`, waiting for it; `stop` and `restart` are
    /// `-m immediate`: every session is cut, as in a crash.
    fn ctl(&self, what: &str) {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            data.display()
        );
        let log = data.join("log");
        self.run(
            "pg_ctl",
            &[
                "-w",
                "-m",
                "immediate",
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                what,
            ],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl", &["-m", "immediate", "stop"])
            .output();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What goes wrong.
#[derive(Clone, Copy)]
enum Fault {
    /// SIGKILL of the relay (during the outage, for JetStream), then a restart.
    Kill9,
    /// JetStream away this long under load, no crash.
    Outage(Duration),
    /// JetStream away this long under load, then SIGKILL of the relay and a restart.
    OutageThenKill9(Duration),
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Request ids of responses read to their end (a stream to `message_stop`).
    completed: BTreeSet<String>,
    /// Responses started.
    started: u64,
}

/// One client: requests back to back, alternating streaming and not, until `stop`.
/// How a load client behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    /// Every n-th request streams (1: all).
    stream_every: u64,
    /// Streams are abandoned after this many body chunks (the client goes away).
    abandon_after: Option<usize>,
}

async fn client(
    port: u16,
    key: String,
    how: Behaviour,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    let Behaviour {
        stream_every,
        abandon_after,
    } = how;
    let http = reqwest::Client::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let stream = n.is_multiple_of(stream_every);
        let body = serde_json::json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "stream": stream,
            "messages": [{"role": "user", "content": format!("hello {n}")}],
        });
        let resp = http
            .post(format!("http://127.0.0.1:{port}/v1/messages"))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await;
        let Ok(resp) = resp else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if resp.status() != 200 {
            continue;
        }
        seen.lock().unwrap().started += 1;
        let id = resp
            .headers()
            .get("x-relay-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if let (true, Some(k)) = (stream, abandon_after) {
            let mut resp = resp;
            for _ in 0..k {
                if !matches!(resp.chunk().await, Ok(Some(_))) {
                    break;
                }
            }
            continue;
        }
        let Ok(text) = resp.text().await else {
            continue;
        };
        let complete = if stream {
            text.contains("event: message_stop")
        } else {
            serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v["usage"].is_object())
        };
        if complete {
            seen.lock().unwrap().completed.insert(id);
        }
    }
}

/// Where the relay's events are.
enum Backend {
    /// `DATA_DIR/events.db`.
    Embedded,
    /// A private nats-server.
    JetStream(Box<nats::testing::NatsServer>),
}

impl Backend {
    fn env(&self) -> Vec<(String, String)> {
        match self {
            Backend::Embedded => Vec::new(),
            Backend::JetStream(n) => vec![
                ("NATS_URL".into(), n.url()),
                (
                    "JWT_SECRET".into(),
                    "a-jwt-secret-for-the-fault-suite-0123456789".into(),
                ),
            ],
        }
    }

    async fn read_events(&self, data_dir: &Path) -> Vec<Envelope> {
        let log: Box<dyn EventLog> = match self {
            Backend::Embedded => Box::new(
                ingest::sqlite::SqliteLog::open(&data_dir.join("events.db"))
                    .await
                    .unwrap(),
            ),
            Backend::JetStream(n) => Box::new(
                nats::JetStreamLog::connect(&n.url(), nats::StreamSettings::default())
                    .await
                    .unwrap(),
            ),
        };
        ingest::testing::read_all(log.as_ref())
            .await
            .into_iter()
            .map(|s| s.envelope)
            .collect()
    }
}

/// Usage events by (request, attempt).
type UsageIndex<'a> = BTreeMap<(String, u32), Vec<&'a schema::UsageRecorded>>;

/// The usage of a request's last attempt.
fn final_attempt<'a>(usage: &UsageIndex<'a>, request: &str) -> Option<&'a schema::UsageRecorded> {
    usage
        .range((request.to_owned(), 0)..=(request.to_owned(), u32::MAX))
        .next_back()
        .map(|(_, v)| v[0])
}

/// Usage events by (request, attempt), and `request.finished` counts by request.
fn index(events: &[Envelope]) -> (UsageIndex<'_>, HashMap<String, u32>) {
    let mut usage = UsageIndex::new();
    let mut finished: HashMap<String, u32> = HashMap::new();
    let mut ids = BTreeSet::new();
    for e in events {
        // The log deduplicates on the id; a second copy would be a bug there.
        assert!(ids.insert(e.id), "event {} stored twice", e.id);
        let Some(r) = e.request_id.clone() else {
            continue;
        };
        match &e.event {
            Event::UsageRecorded(u) => usage.entry((r, u.attempt)).or_default().push(u),
            Event::RequestFinished(_) => *finished.entry(r).or_default() += 1,
            _ => {}
        }
    }
    (usage, finished)
}

#[tokio::test]
async fn kill_9_under_load_loses_no_usage_and_counts_nothing_twice() {
    kill_9_scenario(Backend::Embedded, Fault::Kill9, Mix::MIXED).await;
}

/// The first run: 50 streaming clients, `kill -9`, restart.
#[tokio::test]
async fn kill_9_under_50_streaming_clients_loses_no_usage() {
    let mix = Mix {
        clients: 50,
        streaming: Streaming::All,
    };
    kill_9_scenario(Backend::Embedded, Fault::Kill9, mix).await;
}

/// The second run: 32 non-streaming clients, `kill -9`, restart.
#[tokio::test]
async fn kill_9_under_32_non_streaming_clients_loses_no_usage() {
    let mix = Mix {
        clients: 32,
        streaming: Streaming::None,
    };
    kill_9_scenario(Backend::Embedded, Fault::Kill9, mix).await;
}

/// The log is away for 30 s under load, longer than the publisher's append timeout
/// (10 s), so events go through the journal's backlog; no crash. Reports how long the
/// backlog took to drain.
#[tokio::test]
async fn a_30_s_jetstream_outage_under_load_drains_with_nothing_lost() {
    kill_9_scenario(
        Backend::JetStream(Box::new(nats::testing::NatsServer::start().await)),
        Fault::Outage(Duration::from_secs(30)),
        Mix::MIXED,
    )
    .await;
}

#[tokio::test]
async fn kill_9_during_a_jetstream_outage_loses_no_usage_and_counts_nothing_twice() {
    kill_9_scenario(
        Backend::JetStream(Box::new(nats::testing::NatsServer::start().await)),
        Fault::Kill9,
        Mix::MIXED,
    )
    .await;
}

/// The third run: nats-server stopped for 20 s under load, the relay killed
/// during the outage, then both back.
#[tokio::test]
async fn kill_9_after_20_s_of_jetstream_outage_loses_no_usage() {
    kill_9_scenario(
        Backend::JetStream(Box::new(nats::testing::NatsServer::start().await)),
        Fault::OutageThenKill9(Duration::from_secs(20)),
        Mix::MIXED,
    )
    .await;
}

/// Upstream faults on the main account, one request in ten, those that take it out of
/// rotation last: a connection reset before the response head, one cut after three
/// events (non-streaming: reset), a stream that ends in an error event, a 500, a 529, a
/// 429, and a subscription's 429 with its unified reset 2 s ahead; and, from the 300th
/// request, a storm of 30 529s in a row. The rest answer.
fn upstream_faults(extra: &[Step]) -> Vec<Step> {
    let reset = u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 2;
    let faults = [
        Step::Reset,
        Step::Drop { after_events: 3 },
        Step::MidStreamError {
            after_events: 4,
            error_type: "api_error".into(),
        },
        Step::server_error(),
        Step::overloaded(),
        Step::rate_limited(1),
        Step::claim_rejected("five_hour", reset),
    ];
    extra
        .iter()
        .cloned()
        .chain((0..600).map(|i| {
            if (300..330).contains(&i) {
                Step::overloaded()
            } else if i % 10 == 9 {
                faults[(i / 10) % faults.len()].clone()
            } else {
                Step::Ok
            }
        }))
        .collect()
}

/// Two accounts on `mock` (the main one scripted with `script`, a spare to fail over
/// to) and a key of tenant `acme`, through the CLI; returns the key.
fn provision(
    data: &Path,
    env: &[(String, String)],
    mock: &MockUpstream,
    script: Vec<Step>,
) -> String {
    for (name, secret) in [
        ("main", "sk-ant-api03-fault-suite"),
        ("spare", "sk-ant-api03-fault-spare"),
    ] {
        let mut add = relay_cmd(data, env);
        add.args([
            "accounts",
            "add",
            "--name",
            name,
            "--base-url",
            &mock.base_url(),
        ]);
        run_ok(add, &format!("{secret}\n"));
    }
    mock.script("sk-ant-api03-fault-suite", script);
    let mut create = relay_cmd(data, env);
    create.args(["keys", "create", "--name", "load", "--tenant", "acme"]);
    run_ok(create, "").lines().last().unwrap().trim().to_owned()
}

/// A mock whose streams take about 60 ms (20 deltas, 3 ms apart), so crashes land
/// mid-stream.
async fn paced_mock() -> MockUpstream {
    MockUpstream::start_with(MockConfig {
        event_interval: Duration::from_millis(3),
        text_chunks: 20,
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// Which clients stream.
#[derive(Clone, Copy)]
enum Streaming {
    All,
    None,
    TwoThirds,
}

/// The load of a run.
#[derive(Clone, Copy)]
struct Mix {
    clients: usize,
    streaming: Streaming,
}

impl Mix {
    /// 24 clients, two thirds streaming.
    const MIXED: Mix = Mix {
        clients: 24,
        streaming: Streaming::TwoThirds,
    };
}

/// Load clients and what they saw.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `mix.clients` clients spread over `ports`.
    fn start(ports: &[u16], key: &str, mix: Mix) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let clients = (0..mix.clients)
            .map(|i| {
                let streams = match mix.streaming {
                    Streaming::All => true,
                    Streaming::None => false,
                    Streaming::TwoThirds => i % 3 != 0,
                };
                // Three of the streaming clients walk away: after 1, 3 and 8 events.
                let abandon_after = match (streams, i) {
                    (true, 1) => Some(1),
                    (true, 2) => Some(3),
                    (true, 4) => Some(8),
                    _ => None,
                };
                let how = Behaviour {
                    stream_every: if streams { 1 } else { u64::MAX },
                    abandon_after,
                };
                let port = ports[i % ports.len()];
                tokio::spawn(client(
                    port,
                    key.to_owned(),
                    how,
                    stop.clone(),
                    seen.clone(),
                ))
            })
            .collect();
        Load {
            stop,
            seen,
            clients,
        }
    }

    /// Waits until `n` responses completed in all.
    async fn completed(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.seen.lock().unwrap().completed.len() < n {
            assert!(Instant::now() < deadline, "the load never got going");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients, waits for them, returns the completed request ids.
    async fn finish(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
        self.seen.lock().unwrap().completed.clone()
    }
}

/// Load, then (JetStream) the log goes away while the load goes on, then `kill -9`,
/// then (JetStream) the log comes back and the relay restarts.
async fn kill_9_scenario(mut backend: Backend, fault: Fault, mix: Mix) {
    let mock = paced_mock().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let env = backend.env();
    let key = provision(&data, &env, &mock, upstream_faults(&[]));
    let port = free_port();
    let served = Proc::serve(&data, &env, port).await;
    let load = Load::start(&[port], &key, mix);
    // Load until a good number of responses completed, then the fault.
    load.completed(300).await;
    if let Backend::JetStream(n) = &mut backend {
        // The log goes away; the relay keeps serving (its events wait in the journal).
        n.stop().await;
        load.completed(600).await;
        if let Fault::Outage(d) | Fault::OutageThenKill9(d) = fault {
            tokio::time::sleep(d).await;
        }
    }
    let served = match fault {
        Fault::Kill9 | Fault::OutageThenKill9(_) => {
            served.kill9();
            None
        }
        Fault::Outage(_) => Some(served),
    };
    let completed = load.finish().await;
    let served_by_mock = mock.request_count();
    if let Backend::JetStream(n) = &mut backend {
        n.start_again().await;
    }
    let back = Instant::now();
    // After a crash, restart on the same data directory: the journal is replayed.
    let served = match served {
        Some(s) => s,
        None => Proc::serve(&data, &env, port).await,
    };
    let clients = format!(
        "{} clients, {}",
        mix.clients,
        match mix.streaming {
            Streaming::All => "all streaming",
            Streaming::None => "none streaming",
            Streaming::TwoThirds => "two thirds streaming",
        }
    );
    let label = match (&backend, fault) {
        (Backend::Embedded, _) => format!("kill -9, embedded, {clients}"),
        (Backend::JetStream(_), Fault::Kill9) => {
            format!("kill -9 during a JetStream outage, {clients}")
        }
        (Backend::JetStream(_), Fault::OutageThenKill9(d)) => {
            format!("JetStream away {d:?}, then kill -9, {clients}")
        }
        (Backend::JetStream(_), Fault::Outage(d)) => format!("JetStream away {d:?}, {clients}"),
    };
    let crashed = !matches!(fault, Fault::Outage(_));
    verify(
        &backend,
        &data,
        port,
        &completed,
        served_by_mock,
        crashed,
        back,
        &label,
    )
    .await;
    drop(served);
    mock.shutdown().await;
}

/// Scale mode as processes: two relays and a projector process on a private
/// nats-server and a private PostgreSQL, under load with upstream faults (including a
/// first byte after 30 s). In turn: the projector is killed mid-batch and restarted,
/// PostgreSQL is restarted (every session cut), a 1.1 MB `model` is sent (the poison
/// request: refused with 400, the pipeline keeps flowing), and one relay is killed and
/// restarted on its data directory. Then the billing invariant, and the statement as
/// the projector process folded it.
#[tokio::test]
async fn scale_mode_processes_survive_projector_kill_postgres_restart_and_relay_kill() {
    let backend = Backend::JetStream(Box::new(nats::testing::NatsServer::start().await));
    let pg = PrivatePg::start();
    let mock = paced_mock().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut env = backend.env();
    env.push(("DATABASE_URL".into(), pg.url()));
    env.push(("PROJECTORS".into(), "off".into()));
    // Processes sharing a database share the sealing key (each would generate its own).
    env.push(("ENCRYPTION_KEY".into(), "5a".repeat(32)));
    let key = provision(
        &tmp.path().join("cli"),
        &env,
        &mock,
        upstream_faults(&[Step::SlowFirstByte(Duration::from_secs(30))]),
    );
    let dirs = [tmp.path().join("r1"), tmp.path().join("r2")];
    let ports = [free_port(), free_port()];
    let r1 = Proc::serve(&dirs[0], &env, ports[0]).await;
    let r2 = Proc::serve(&dirs[1], &env, ports[1]).await;
    let proj_dir = tmp.path().join("projector");
    let projector = Proc::project(&proj_dir, &env);
    let load = Load::start(&ports, &key, Mix::MIXED);
    let started = Instant::now();

    load.completed(200).await;
    projector.kill9();
    let projector = Proc::project(&proj_dir, &env);

    load.completed(400).await;
    let pg_restart = Instant::now();
    pg.ctl("restart");
    let pg_restart = pg_restart.elapsed();

    // The poison request: refused at the edge, nothing sent or recorded.
    let before = mock.request_count();
    let poison = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/messages", ports[1]))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({
            "model": "m".repeat(1_100_000),
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(poison.status(), 400);
    let err: serde_json::Value = poison.json().await.unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");

    load.completed(600).await;
    r1.kill9();
    let r1 = Proc::serve(&dirs[0], &env, ports[0]).await;
    load.completed(800).await;
    let completed = load.finish().await;
    let served_by_mock = mock.request_count();
    assert!(
        served_by_mock > before,
        "the load went on after the poison request"
    );
    eprintln!(
        "scale mode: load ran {:?}; PostgreSQL restart (immediate) took {pg_restart:?}",
        started.elapsed()
    );
    // Relay 1's events were in its journal (replayed at its restart); relay 2's never
    // stopped flowing. The statement is read through relay 2, from what the projector
    // process wrote to PostgreSQL.
    verify(
        &backend,
        &dirs[0],
        ports[1],
        &completed,
        served_by_mock,
        true,
        Instant::now(),
        "scale mode (2 relays, projector process, PostgreSQL)",
    )
    .await;
    drop((r1, r2, projector));
    mock.shutdown().await;
}

/// The billing invariant over the log, then the tenant's statement through the relay
/// on `port`: every response a client completed has exactly one complete usage event,
/// every attempt the mock served has one (`unknown` if cut short by `crashed` or by a
/// broken connection), nothing twice, and the statement is the sum of the events.
#[expect(clippy::print_stderr, reason = "the figures of the run, for the docs")]
#[expect(clippy::too_many_arguments, reason = "a test's report")]
async fn verify(
    backend: &Backend,
    data: &Path,
    port: u16,
    completed: &BTreeSet<String>,
    served_by_mock: usize,
    crashed: bool,
    back: Instant,
    label: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = backend.read_events(data).await;
        let (usage, _) = index(&events);
        let missing = completed
            .iter()
            .filter(|r| final_attempt(&usage, r).is_none())
            .count();
        if missing == 0 && usage.len() >= served_by_mock {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} completed responses have no usage event; {} usage events for {served_by_mock} attempts the mock served",
            completed.len(),
            usage.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let drained = back.elapsed();
    let (usage, finished) = index(&events);
    // Nothing twice: one usage event per attempt, one end per request.
    for (k, v) in &usage {
        assert_eq!(v.len(), 1, "attempt {k:?} has {} usage events", v.len());
    }
    for (r, n) in &finished {
        assert_eq!(*n, 1, "request {r} finished {n} times");
    }
    // Every completed response was billed in full.
    for r in completed {
        let u = final_attempt(&usage, r).unwrap();
        assert_eq!(u.completeness, Completeness::Complete, "request {r}");
        assert!(u.input_tokens > 0, "request {r}");
        // Attempts before it were refused upstream or lost their connection, and
        // failed over; each has its usage.
        for a in 1..u.attempt {
            let earlier = usage
                .get(&(r.clone(), a))
                .unwrap_or_else(|| panic!("request {r} attempt {a} has no usage"));
            let e = earlier[0];
            assert!(
                e.status >= 400 || (e.status == 0 && e.completeness == Completeness::Unknown),
                "request {r} attempt {a}: {e:?}"
            );
        }
    }
    // Every attempt the mock served has a usage event; those cut short are `unknown`.
    let unknown = usage
        .values()
        .filter(|v| v[0].completeness == Completeness::Unknown)
        .count();
    // A reset before the head fails over: a later attempt of the same request follows
    // it. (An attempt cut short by a crash is its request's last.)
    let reset = usage
        .iter()
        .filter(|((r, a), v)| {
            v[0].completeness == Completeness::Unknown
                && v[0].status == 0
                && usage.contains_key(&(r.clone(), a + 1))
        })
        .count();
    let known = usage.len() - unknown;
    assert!(
        usage.len() >= served_by_mock,
        "{} usage events, {served_by_mock} attempts served",
        usage.len()
    );
    assert!(
        known <= served_by_mock,
        "{known} known usages, {served_by_mock} served"
    );
    assert!(
        completed.len() <= known,
        "{} completed, {known} known",
        completed.len()
    );
    assert!(
        reset > 0,
        "the upstream resets were recorded as unknown attempts and failed over: {unknown} unknown, {:?}",
        usage
            .iter()
            .filter(|(_, v)| v[0].completeness == Completeness::Unknown)
            .map(|((r, a), v)| (r.clone(), *a, v[0].status, usage.contains_key(&(r.clone(), a + 1))))
            .collect::<Vec<_>>()
    );
    // The faults were met: those before the first cooldown in every run, all of them
    // in the long runs (short cooldowns keep the account in the rotation).
    let statuses: BTreeSet<u16> = usage.values().map(|v| v[0].status).collect();
    let met: &[u16] = if crashed {
        &[500, 529]
    } else {
        &[500, 529, 429]
    };
    for s in met {
        assert!(
            statuses.contains(s),
            "no attempt answered {s}: {statuses:?}"
        );
    }
    if !crashed {
        assert_eq!(
            unknown, reset,
            "no crash, so the only unknown attempts are broken connections"
        );
    }
    // Shown with --nocapture: the figures docs/guarantees.md quotes.
    eprintln!(
        "{label}: {} responses completed, {served_by_mock} attempts served, {known} usage events with known tokens, {unknown} unknown; log complete {drained:?} after it was back",
        completed.len()
    );
    // Every request with usage has its end, real or recorded at recovery.
    for (r, _) in usage.keys() {
        assert!(finished.contains_key(r), "request {r} never finished");
    }

    // The statement is the sum of the events, the unknown attempts on their own line.
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let token: String = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let input: u64 = usage.values().map(|v| v[0].input_tokens).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st: serde_json::Value = http
            .get(format!(
                "{base}/api/v1/statements?tenant=acme&month={month}"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let t = &st["totals"];
        let seen = (
            t["requests"].as_u64(),
            t["input_tokens"].as_u64(),
            t["unknown_usage_attempts"].as_u64(),
        );
        if seen == (Some(known as u64), Some(input), Some(unknown as u64)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "statement {seen:?}, events say ({known}, {input}, {unknown}): {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With `JOURNAL_FSYNC=always`, a response's last chunk waits for the sync that covers
/// its events: responses still complete, and their events were synced.
#[tokio::test]
async fn with_journal_fsync_always_responses_complete_after_their_events_are_synced() {
    let mock = MockUpstream::start().await;
    let app = crate::spawn_app(&["--journal-fsync", "always"]).await;
    app.add_account(&mock, crate::Acc::new("a", "sk-ant-api03-fsync-always"))
        .await;
    let syncs_before = app.state.publisher.stats().journal.syncs_total;
    for stream in [true, false] {
        let resp = app.messages(&crate::body(stream)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        if stream {
            assert!(text.contains("event: message_stop"), "{text}");
        } else {
            assert!(text.contains("\"usage\""), "{text}");
        }
    }
    assert!(app.state.publisher.stats().journal.syncs_total > syncs_before);
    let events = app.events().await;
    let usages = crate::usages(&events);
    assert_eq!(usages.len(), 2);
    assert!(usages
        .iter()
        .all(|u| u.completeness == Completeness::Complete));
    app.stop().await;
}

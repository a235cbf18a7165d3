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
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The CLI tests' command, with a first admin, quieter logs and `env`.
fn relay_cmd(data_dir: &Path, env: &[(String, String)]) -> Command {
    let mut c = crate::cli::relay_cmd(data_dir);
    c.env("LOG_LEVEL", "warn")
        .env("DEFAULT_ADMIN_USERNAME", "admin")
        .env("DEFAULT_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .envs(env.iter().map(|(k, v)| (k, v)));
    c
}

/// `relay serve` on a fixed port, so a restart answers at the same address.
struct Served {
    child: Child,
}

impl Served {
    async fn start(data_dir: &Path, env: &[(String, String)], port: u16) -> Served {
        #[expect(clippy::zombie_processes, reason = "Drop kills and waits")]
        let mut child = relay_cmd(data_dir, env)
            .arg("serve")
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            // Drained so the child never blocks on a full pipe.
            for _ in BufReader::new(stderr).lines().map_while(Result::ok) {}
        });
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = http
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                return Served { child };
            }
            assert!(Instant::now() < deadline, "relay did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown, no drain, no flush.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    /// Streams are abandoned after the first chunk (the client goes away).
    abandon: bool,
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
        abandon,
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
        if stream && abandon {
            let mut resp = resp;
            let _ = resp.chunk().await;
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
    kill_9_scenario(Backend::Embedded, Fault::Kill9).await;
}

/// The log is away for longer than the publisher's append timeout (10 s), so events
/// go through the spool; no crash. Reports how long the backlog took to drain.
#[tokio::test]
async fn a_12_s_jetstream_outage_under_load_drains_with_nothing_lost() {
    kill_9_scenario(
        Backend::JetStream(Box::new(nats::testing::NatsServer::start().await)),
        Fault::Outage(Duration::from_secs(12)),
    )
    .await;
}

#[tokio::test]
async fn kill_9_during_a_jetstream_outage_loses_no_usage_and_counts_nothing_twice() {
    kill_9_scenario(
        Backend::JetStream(Box::new(nats::testing::NatsServer::start().await)),
        Fault::Kill9,
    )
    .await;
}

/// Load, then (JetStream) the log goes away while the load goes on, then `kill -9`,
/// then (JetStream) the log comes back and the relay restarts.
#[expect(clippy::print_stderr, reason = "the figures of the run, for the docs")]
async fn kill_9_scenario(mut backend: Backend, fault: Fault) {
    let mock = MockUpstream::start_with(MockConfig {
        event_interval: Duration::from_millis(3),
        text_chunks: 20,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let env = backend.env();
    let mut add = relay_cmd(&data, &env);
    add.args([
        "accounts",
        "add",
        "--name",
        "main",
        "--base-url",
        &mock.base_url(),
    ]);
    run_ok(add, "sk-ant-api03-fault-suite\n");
    let mut create = relay_cmd(&data, &env);
    create.args(["keys", "create", "--name", "load", "--tenant", "acme"]);
    let key = run_ok(create, "").lines().last().unwrap().trim().to_owned();

    let port = free_port();
    let served = Served::start(&data, &env, port).await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    // A second account to fail over to, and upstream faults on the first: refusals
    // (429, 529), a 500, and streams that end in an error event (non-streaming: the
    // matching HTTP error), spread through the run.
    let mut spare = relay_cmd(&data, &env);
    spare.args([
        "accounts",
        "add",
        "--name",
        "spare",
        "--base-url",
        &mock.base_url(),
    ]);
    run_ok(spare, "sk-ant-api03-fault-spare\n");
    let faults = [
        Step::rate_limited(1),
        Step::overloaded(),
        Step::server_error(),
        Step::MidStreamError {
            after_events: 4,
            error_type: "api_error".into(),
        },
    ];
    mock.script(
        "sk-ant-api03-fault-suite",
        (0..400).map(|i| {
            if i % 10 == 9 {
                faults[(i / 10) % faults.len()].clone()
            } else {
                Step::Ok
            }
        }),
    );
    let clients: Vec<_> = (0..24)
        .map(|i| {
            // Two thirds of the clients stream; two of the streaming ones walk away
            // after the first chunk.
            let how = Behaviour {
                stream_every: if i % 3 == 0 { 1_000_000 } else { 1 },
                abandon: i == 1 || i == 2,
            };
            tokio::spawn(client(port, key.clone(), how, stop.clone(), seen.clone()))
        })
        .collect();
    // Load until a good number of responses completed, then kill mid-flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    let wait_completed = |n: usize| {
        let seen = seen.clone();
        async move {
            while seen.lock().unwrap().completed.len() < n {
                assert!(Instant::now() < deadline, "the load never got going");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_completed(300).await;
    if let Backend::JetStream(n) = &mut backend {
        // The log goes away; the relay keeps serving (its events wait in memory for
        // the append timeout, in the journal, or in the spool).
        n.stop().await;
        wait_completed(600).await;
        if let Fault::Outage(d) = fault {
            tokio::time::sleep(d).await;
        }
    }
    let served = match fault {
        Fault::Kill9 => {
            served.kill9();
            None
        }
        Fault::Outage(_) => Some(served),
    };
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let served_by_mock = mock.request_count();
    if let Backend::JetStream(n) = &mut backend {
        n.start_again().await;
    }
    let back = Instant::now();

    // After a crash, restart on the same data directory: the journal is replayed.
    let served = match served {
        Some(s) => s,
        None => Served::start(&data, &env, port).await,
    };
    let completed = seen.lock().unwrap().completed.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = backend.read_events(&data).await;
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
    for r in &completed {
        let u = final_attempt(&usage, r).unwrap();
        assert_eq!(u.completeness, Completeness::Complete, "request {r}");
        assert!(u.input_tokens > 0, "request {r}");
        // Attempts before it were refused upstream and failed over; each has its
        // usage with upstream's status.
        for a in 1..u.attempt {
            let earlier = usage
                .get(&(r.clone(), a))
                .unwrap_or_else(|| panic!("request {r} attempt {a} has no usage"));
            assert!(earlier[0].status >= 400, "request {r} attempt {a}");
        }
    }
    // Every attempt the mock served has a usage event; those cut short are `unknown`.
    let unknown = usage
        .values()
        .filter(|v| v[0].completeness == Completeness::Unknown)
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
    if let Fault::Outage(_) = fault {
        assert_eq!(unknown, 0, "no crash, so no attempt of unknown usage");
    }
    // Shown with --nocapture: the figures docs/guarantees.md quotes.
    eprintln!(
        "fault: {} responses completed, {served_by_mock} attempts served, {known} usage events with known tokens, {unknown} unknown; log complete {drained:?} after it was back",
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
    let deadline = Instant::now() + Duration::from_secs(30);
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
    drop(served);
    mock.shutdown().await;
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

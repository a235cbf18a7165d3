//! Integration tests of the relay's API surface against the mock upstream
//! (`bench::mock`). One binary; modules by topic. Every test spawns its own relay on
//! 127.0.0.1:0 with a temporary `DATA_DIR` and its own mock.
//!
//! The relay's database is SQLite in that `DATA_DIR` unless a test names another, or
//! `TEST_APP_DATABASE=mysql` is set: then every relay that would have used SQLite gets a
//! fresh database on the MariaDB / MySQL server at `TEST_MYSQL_URL` (how `.ci/test`
//! runs the suite a second time on MariaDB).

// Test helpers and test proxies outside `#[test]` functions panic on purpose.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod admin;
mod admin_ops;
mod auth_input;
mod billing;
mod cli;
mod cli_projections;
mod clients;
mod console;
mod edge;
mod failover;
mod faults;
mod forwarding;
mod fuzz;
mod fuzz_http;
mod limits;
mod notifications;
mod oauth;
mod operator_hygiene;
mod proxies;
mod streams;
mod upstream_modes;

use bench::mock::MockUpstream;
use clap::{CommandFactory, FromArgMatches};
use relay::accounts::{AccountKind, NewAccount};
use relay::app::AppState;
use relay::config::{CommonConfig, ServeConfig};
use relay::crypto::Secret;
use relay::keys::NewKey;
use schema::{AccountId, Envelope, Event, TenantId};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    common: CommonConfig,
    #[command(flatten)]
    serve: ServeConfig,
}

/// A running relay.
pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    /// A relay key (no group) for the default tenant.
    pub key: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// The first admin's password in every test relay.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// Starts a relay with extra `serve` flags (e.g. `["--max-attempts", "2"]`).
/// Projectors are off unless the flags say `--projectors on`.
pub async fn spawn_app(flags: &[&str]) -> TestApp {
    spawn_app_on(None, flags).await
}

/// Starts a relay on the given database (`None`: SQLite in its `DATA_DIR`).
pub async fn spawn_app_on(database_url: Option<String>, flags: &[&str]) -> TestApp {
    spawn_app_with(database_url, None, flags).await
}

/// Starts a relay on the given database and event log (`None`: the embedded ones):
/// scale mode when both are shared.
pub async fn spawn_app_with(
    database_url: Option<String>,
    nats_url: Option<String>,
    flags: &[&str],
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let database_url = match database_url {
        None if std::env::var("TEST_APP_DATABASE").as_deref() == Ok("mysql") => {
            Some(MyDb::new().await.url)
        }
        other => other,
    };
    let mut argv: Vec<String> = vec![
        "relay".into(),
        "--data-dir".into(),
        data_dir,
        "--encryption-key".into(),
        "11".repeat(32),
        "--default-admin-password".into(),
        ADMIN_PASSWORD.into(),
        // The mock upstream listens on loopback.
        "--upstream-allow-private".into(),
    ];
    if !flags.contains(&"--projectors") {
        argv.extend(["--projectors".into(), "off".into()]);
    }
    argv.extend(flags.iter().map(|s| s.to_string()));
    // The settings are the flags above and the defaults, never the environment of the
    // shell running the tests (`DISCONNECT_POLICY`, `PRICE_TABLE`, `MAX_ATTEMPTS`, …).
    let matches = Args::command()
        .mut_args(|a| a.env(None))
        .try_get_matches_from(argv)
        .unwrap();
    let args = Args::from_arg_matches(&matches).unwrap();
    let mut common = args.common;
    // The tests choose their stores regardless of the environment.
    common.nats_url = nats_url;
    common.database_url = database_url;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let state = relay::startup::build_state(common, args.serve, shutdown.clone(), tracker)
        .await
        .unwrap();
    let (_, key) = state
        .keys
        .create(NewKey {
            name: "test".into(),
            tenant: TenantId::parse("tenant_a").unwrap(),
            group: None,
            expires_at: None,
            user_id: None,
        })
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(relay::startup::run_with_state(listener, state.clone()));
    TestApp {
        addr,
        state,
        key: key.expose().to_owned(),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        shutdown,
        server: Some(server),
        _dir: dir,
    }
}

/// Account options for [`TestApp::add_account`].
#[derive(Clone)]
pub struct Acc<'a> {
    pub name: &'a str,
    pub credential: &'a str,
    pub priority: i32,
    pub weight: u32,
    pub group: Option<&'a str>,
    pub concurrency: u32,
    pub proxy: Option<String>,
    pub kind: AccountKind,
}

impl<'a> Acc<'a> {
    pub fn new(name: &'a str, credential: &'a str) -> Self {
        Self {
            name,
            credential,
            priority: 0,
            weight: 1,
            group: None,
            concurrency: 0,
            proxy: None,
            kind: AccountKind::ApiKey,
        }
    }
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Logs in and returns the bearer token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let r = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 200, "login failed: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// An admin API call: method, path, bearer token, optional JSON body; returns the
    /// status and the JSON body (`Null` when the body is not JSON).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Adds an upstream account pointing at `mock` and reloads the pool.
    pub async fn add_account(&self, mock: &MockUpstream, a: Acc<'_>) -> AccountId {
        self.add_account_at(&mock.base_url(), a).await
    }

    /// Adds an upstream account at `base_url` and reloads the pool.
    pub async fn add_account_at(&self, base_url: &str, a: Acc<'_>) -> AccountId {
        let id = self
            .state
            .accounts
            .add(NewAccount {
                name: a.name.into(),
                kind: a.kind,
                base_url: base_url.to_owned(),
                credential: Secret::new(a.credential),
                priority: a.priority,
                weight: a.weight,
                group: a.group.map(str::to_owned),
                concurrency: a.concurrency,
                proxy_url: a.proxy,
            })
            .await
            .unwrap();
        relay::proxy::reload_accounts(&self.state).await.unwrap();
        id
    }

    /// `POST /v1/messages` with the test key and Claude Code-like headers.
    pub fn messages(&self, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.messages_as(&self.key, body)
    }

    /// `POST /v1/messages` with another key.
    pub fn messages_as(&self, key: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url("/v1/messages?beta=true"))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap())
    }

    /// Every event in the log, after the publisher has flushed.
    pub async fn events(&self) -> Vec<Envelope> {
        tokio::time::timeout(Duration::from_secs(10), self.state.publisher.wait_idle())
            .await
            .expect("publisher did not flush");
        let head = self.state.log.head().await.unwrap();
        let mut out = Vec::new();
        if head == 0 {
            return out;
        }
        use futures::StreamExt;
        let mut s = self.state.log.subscribe(0, None).await.unwrap();
        while let Some(e) = s.next().await {
            let e = e.unwrap();
            let pos = e.position;
            out.push(e.envelope);
            if pos >= head {
                break;
            }
        }
        out
    }

    /// Polls the log until `pred` holds for the events (10 s deadline).
    pub async fn wait_events(
        &self,
        what: &str,
        pred: impl Fn(&[Envelope]) -> bool,
    ) -> Vec<Envelope> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ev = self.events().await;
            if pred(&ev) {
                return ev;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {ev:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the server task to end; `false` when `limit` passes first.
    pub async fn wait_server(&mut self, limit: Duration) -> bool {
        match self.server.take() {
            Some(s) => tokio::time::timeout(limit, s).await.is_ok(),
            None => true,
        }
    }

    /// Shuts the relay down and asserts it stopped cleanly within 10 s.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            let ended = tokio::time::timeout(Duration::from_secs(10), s)
                .await
                .expect("the relay did not stop within 10 s");
            ended
                .expect("the server task panicked")
                .expect("the relay stopped with an error");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A fresh database on the MariaDB / MySQL server at `TEST_MYSQL_URL` (a private
/// server in `.ci/test`, whose databases go with it).
pub struct MyDb {
    pub url: String,
}

impl MyDb {
    pub async fn new() -> Self {
        use sqlx::Connection as _;
        let admin = std::env::var("TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".into());
        let name = format!("relay_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::MySqlConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("MariaDB or MySQL at {admin} is required: {e}"));
        sqlx::raw_sql(&format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Self { url }
    }
}

/// The usage events in `events`.
pub fn usages(events: &[Envelope]) -> Vec<&schema::UsageRecorded> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::UsageRecorded(u) => Some(u),
            _ => None,
        })
        .collect()
}

/// The request.finished events in `events`.
pub fn finished(events: &[Envelope]) -> Vec<&schema::RequestFinished> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::RequestFinished(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// The health events in `events`.
pub fn health(events: &[Envelope]) -> Vec<&schema::AccountHealthChanged> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::AccountHealthChanged(h) => Some(h),
            _ => None,
        })
        .collect()
}

/// A Claude Code-like request body.
pub fn body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "claude-sonnet-4-6",
        "max_tokens": 1024,
        "stream": stream,
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", "text": "Big system prompt ".repeat(40), "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        "messages": [{"role": "user", "content": "Say hello"}],
        "tools": [{"name": "search", "description": "Search", "input_schema": {"type": "object"}}],
        "thinking": {"type": "adaptive"},
        "unknown_future_field": {"kept": true}
    })
}

pub const KEY_A: &str = "sk-ant-api03-account-a";
pub const KEY_B: &str = "sk-ant-api03-account-b";
pub const KEY_C: &str = "sk-ant-api03-account-c";

//! Test support: databases on SQLite, PostgreSQL and MariaDB, an in-memory log that stores
//! duplicates at new positions (as JetStream does after its dedup window), event
//! builders and a row-by-row table dump.

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use ingest::{Appended, EventLog, EventStream, LogError, Position, StoredEvent};
use projections::{Error, Projection};
use schema::{
    AccountHealthChanged, AccountId, AdminAction, ApiKeyId, AuthFailed, AuthFailureReason,
    Completeness, Envelope, Event, HealthEvidence, HealthReason, HealthState, Outcome,
    RequestFinished, RoutingDecision, RoutingReason, ServerToolUse, TenantId, UsageRecorded,
};
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// Generates a `sqlite`, a `postgres` and a `mysql` (MariaDB) test for each named
/// `async fn(&TestDb)`.
#[macro_export]
macro_rules! each_backend {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::common::TestDb::sqlite().await;
                super::$name(&db).await;
                db.cleanup().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = $crate::common::TestDb::postgres().await;
                super::$name(&db).await;
                db.cleanup().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                let db = $crate::common::TestDb::mysql().await;
                super::$name(&db).await;
                db.cleanup().await;
            }
        }
    )* };
}

/// A migrated, empty read-model database.
pub struct TestDb {
    pub pool: AnyPool,
    pub backend: &'static str,
    /// The server's admin URL and the database's name (PostgreSQL, MySQL).
    server: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn pg_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn my_base() -> String {
    std::env::var("TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".to_owned())
}

/// `scheme://user@host:port` of a URL that names a database.
fn server_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("read.db").display());
        let pool = projections::connect(&url).await.unwrap();
        projections::migrate(&pool).await.unwrap();
        TestDb {
            pool,
            backend: "sqlite",
            server: None,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> TestDb {
        sqlx::any::install_default_drivers();
        let base = pg_base();
        let name = format!(
            "projections_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            Uuid::now_v7().simple()
        );
        let mut admin = AnyConnection::connect(&base).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {base} is required (set TEST_POSTGRES_URL): {e}")
        });
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = match base.rfind('/') {
            Some(i) if i > "postgres://".len() => format!("{}/{name}", &base[..i]),
            _ => format!("{base}/{name}"),
        };
        let pool = projections::connect(&url).await.unwrap();
        projections::migrate(&pool).await.unwrap();
        TestDb {
            pool,
            backend: "postgres",
            server: Some((base, name)),
            _dir: None,
        }
    }

    pub async fn mysql() -> TestDb {
        sqlx::any::install_default_drivers();
        let base = my_base();
        let name = format!(
            "projections_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            Uuid::now_v7().simple()
        );
        let mut admin = AnyConnection::connect(&base).await.unwrap_or_else(|e| {
            panic!("MariaDB or MySQL at {base} is required (set TEST_MYSQL_URL): {e}")
        });
        sqlx::raw_sql(&format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .execute(&mut admin)
        .await
        .unwrap();
        admin.close().await.unwrap();
        let url = format!("{}/{name}", server_of(&base));
        let pool = projections::connect(&url).await.unwrap();
        projections::migrate(&pool).await.unwrap();
        TestDb {
            pool,
            backend: "mysql",
            server: Some((base, name)),
            _dir: None,
        }
    }

    /// Another empty database on the same backend.
    pub async fn another(&self) -> TestDb {
        match self.backend {
            "sqlite" => TestDb::sqlite().await,
            "postgres" => TestDb::postgres().await,
            _ => TestDb::mysql().await,
        }
    }

    pub async fn cleanup(self) {
        self.pool.close().await;
        if let Some((base, name)) = self.server {
            let mut admin = AnyConnection::connect(&base).await.unwrap();
            let force = if self.backend == "postgres" {
                " WITH (FORCE)"
            } else {
                ""
            };
            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}{force}"))
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.unwrap();
        }
    }
}

// ------------------------------------------------------------------ in-memory log

/// A log that assigns a new position to every append, duplicates included.
pub struct MemLog {
    inner: Arc<MemInner>,
}

struct MemInner {
    events: Mutex<Vec<StoredEvent>>,
    head: watch::Sender<Position>,
}

impl MemInner {
    fn from(&self, after: Position, max: usize) -> Vec<StoredEvent> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .skip(after as usize)
            .take(max)
            .cloned()
            .collect()
    }
}

impl MemLog {
    pub fn new() -> Arc<MemLog> {
        let (head, _) = watch::channel(0);
        Arc::new(MemLog {
            inner: Arc::new(MemInner {
                events: Mutex::new(Vec::new()),
                head,
            }),
        })
    }

    pub fn push(&self, e: &Envelope) -> Position {
        let mut events = self.inner.events.lock().unwrap();
        let position = events.len() as u64 + 1;
        events.push(StoredEvent {
            position,
            envelope: e.clone(),
        });
        drop(events);
        self.inner.head.send_replace(position);
        position
    }

    pub fn push_all(&self, es: &[Envelope]) {
        for e in es {
            self.push(e);
        }
    }
}

#[async_trait::async_trait]
impl EventLog for MemLog {
    async fn append(&self, event: &Envelope) -> Result<Appended, LogError> {
        Ok(Appended {
            position: self.push(event),
            duplicate: false,
        })
    }

    async fn subscribe(
        &self,
        after: Position,
        filter: Option<schema::Category>,
    ) -> Result<EventStream, LogError> {
        assert!(filter.is_none(), "projections subscribe unfiltered");
        let head = self.inner.head.subscribe();
        let stream = futures::stream::unfold(
            (self.inner.clone(), head, after, Vec::<StoredEvent>::new()),
            |(me, mut head, mut at, mut buf)| async move {
                loop {
                    if let Some(e) = buf.pop() {
                        at = e.position;
                        return Some((Ok(e), (me, head, at, buf)));
                    }
                    let mut more = me.from(at, 256);
                    if more.is_empty() {
                        if head.changed().await.is_err() {
                            return None;
                        }
                        continue;
                    }
                    more.reverse();
                    buf = more;
                }
            },
        );
        Ok(stream.boxed())
    }

    async fn head(&self) -> Result<Position, LogError> {
        Ok(*self.inner.head.borrow())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

// ------------------------------------------------------------------ projections helpers

/// Fails the batch that contains `position`, once.
pub struct FailOnce {
    pub inner: Arc<dyn Projection>,
    pub position: Position,
    pub fired: AtomicBool,
}

#[async_trait::async_trait]
impl Projection for FailOnce {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn apply_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> Result<(), Error> {
        // Apply first so the failure happens after rows were written in the
        // transaction: the rollback must discard them.
        self.inner.apply_batch(tx, events).await?;
        if events.iter().any(|e| e.position == self.position)
            && !self.fired.swap(true, Ordering::SeqCst)
        {
            return Err(Error::InvalidInput("injected failure".into()));
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut AnyConnection) -> Result<(), Error> {
        self.inner.reset(tx).await
    }
}

pub fn prices() -> Arc<projections::PriceTable> {
    Arc::new(projections::PriceTable::embedded().unwrap())
}

/// Runs every projection until caught up with `log`.
pub async fn catch_up(db: &AnyPool, log: Arc<dyn EventLog>) {
    for p in projections::all(prices()) {
        projections::Projector::new(db.clone(), log.clone(), p)
            .run_until_caught_up()
            .await
            .unwrap();
    }
}

// ------------------------------------------------------------------ events

pub fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
}

#[derive(Clone)]
pub struct UsageSpec {
    pub tenant: &'static str,
    pub key: &'static str,
    pub account: &'static str,
    pub model: String,
    pub request: String,
    pub tokens: [u64; 5],
    pub at: DateTime<Utc>,
}

impl Default for UsageSpec {
    fn default() -> Self {
        UsageSpec {
            tenant: "acme",
            key: "key_a",
            account: "acc_1",
            model: "claude-sonnet-4-6".into(),
            request: "req_1".into(),
            tokens: [1_000, 500, 0, 0, 0],
            at: at(2026, 11, 3, 12),
        }
    }
}

pub fn usage(s: &UsageSpec) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        s.at,
        Event::UsageRecorded(UsageRecorded {
            account: AccountId::parse(s.account).unwrap(),
            attempt: 1,
            model: s.model.clone(),
            status: 200,
            stream: true,
            input_tokens: s.tokens[0],
            output_tokens: s.tokens[1],
            cache_read_input_tokens: s.tokens[2],
            cache_creation_5m_input_tokens: s.tokens[3],
            cache_creation_1h_input_tokens: s.tokens[4],
            server_tool_use: ServerToolUse::default(),
            service_tier: Some("standard".into()),
            speed: None,
            inference_geo: None,
            completeness: Completeness::Complete,
        }),
    )
    .with_request(s.request.clone())
    .with_key(
        Some(TenantId::parse(s.tenant).unwrap()),
        Some(ApiKeyId::parse(s.key).unwrap()),
    )
}

pub fn finished(request: &str, account: &str, outcome: Outcome, when: DateTime<Utc>) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        when,
        Event::RequestFinished(RequestFinished {
            endpoint: "/v1/messages".into(),
            status: if outcome == Outcome::Completed {
                200
            } else {
                529
            },
            outcome,
            model: Some("claude-sonnet-4-6".into()),
            stream: true,
            latency_us: 120_000,
            ttfb_us: Some(40_000),
            upstream_us: Some(110_000),
            attempts: 1,
            routing: Some(RoutingDecision {
                account: AccountId::parse(account).unwrap(),
                reason: RoutingReason::PriorityWeighted,
                priority: 1,
                weight: 1,
                eligible: 2,
                group: None,
            }),
            error_type: (outcome != Outcome::Completed).then(|| "overloaded_error".into()),
            upstream_request_id: Some(format!("up_{request}")),
            rejected_by: None,
        }),
    )
    .with_request(request)
    .with_key(
        Some(TenantId::parse("acme").unwrap()),
        Some(ApiKeyId::parse("key_a").unwrap()),
    )
    .with_account(Some(AccountId::parse(account).unwrap()))
}

pub fn health(
    account: &str,
    from: HealthState,
    to: HealthState,
    reason: HealthReason,
    when: DateTime<Utc>,
    evidence: HealthEvidence,
) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        when,
        Event::AccountHealthChanged(AccountHealthChanged {
            account: AccountId::parse(account).unwrap(),
            from,
            to,
            reason,
            until: (to != HealthState::Healthy).then(|| when + chrono::Duration::seconds(60)),
            evidence,
        }),
    )
}

pub fn admin(action: &str, when: DateTime<Utc>) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        when,
        Event::AdminAction(AdminAction {
            actor: "cli".into(),
            action: action.into(),
            target: "key:key_a".into(),
            summary: format!("{action} by test"),
        }),
    )
}

pub fn auth_failed(when: DateTime<Utc>) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        when,
        Event::AuthFailed(AuthFailed {
            reason: AuthFailureReason::Unknown,
            endpoint: "/v1/messages".into(),
            key_prefix: Some("sk-relay-abc".into()),
            client_addr: Some("10.0.0.7".into()),
            failures_in_window: None,
        }),
    )
}

// ------------------------------------------------------------------ dumps

/// Tables and their key columns, for row-by-row comparison.
pub const TABLES: [(&str, &str); 8] = [
    ("usage_ledger", "event_id"),
    ("usage_totals", "day, tenant, api_key, account, model"),
    ("account_status", "account"),
    ("account_status_events", "event_id"),
    ("request_log", "event_id"),
    ("audit_log", "event_id"),
    ("notification_outbox", "event_id"),
    ("projection_checkpoints", "projection"),
];

/// Every row of `table` as strings, ordered by key.
pub async fn dump(db: &AnyPool, table: &str, key: &str) -> Vec<Vec<String>> {
    let rows = sqlx::query(&format!("SELECT * FROM {table} ORDER BY {key}"))
        .fetch_all(db)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| match r.try_get::<Option<i64>, _>(i) {
                    Ok(v) => format!("{v:?}"),
                    Err(_) => format!("{:?}", projections::long_text(r, i).unwrap()),
                })
                .collect()
        })
        .collect()
}

pub async fn dump_all(db: &AnyPool) -> Vec<(String, Vec<Vec<String>>)> {
    let mut out = Vec::new();
    for (t, k) in TABLES {
        out.push((t.to_owned(), dump(db, t, k).await));
    }
    out
}

/// Polls `cond` until true or the deadline passes.
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! The publisher: events reach the log, are spooled while it is down, replayed in
//! order when it returns, never lost and never duplicated.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions"
)]

use ingest::publisher::{Backpressure, Publisher, PublisherConfig};
use ingest::sqlite::SqliteLog;
use ingest::testing::{self, FlakyLog};
use ingest::EventLog;
use schema::Envelope;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

struct Running {
    publisher: Publisher,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Running {
    async fn start(log: Arc<dyn EventLog>, config: PublisherConfig) -> Running {
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let publisher = Publisher::start(log, config, &tracker, shutdown.clone())
            .await
            .unwrap();
        Running {
            publisher,
            tracker,
            shutdown,
        }
    }

    async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(testing::WAIT, self.tracker.wait())
            .await
            .expect("the publisher finished shutting down");
    }

    async fn idle(&self) {
        tokio::time::timeout(testing::WAIT, self.publisher.wait_idle())
            .await
            .expect("the publisher became idle");
    }
}

fn config(dir: &Path) -> PublisherConfig {
    let mut c = PublisherConfig::new(dir.join("spool.db"));
    c.retry_initial = Duration::from_millis(10);
    c.retry_max = Duration::from_millis(50);
    c.append_timeout = Duration::from_secs(5);
    c
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + testing::WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn events(n: u64) -> Vec<Envelope> {
    (0..n)
        .map(|i| testing::sample_usage_event("acc_p", i))
        .collect()
}

async fn stored_ids(log: &dyn EventLog) -> Vec<Uuid> {
    testing::read_all(log)
        .await
        .into_iter()
        .map(|e| e.envelope.id)
        .collect()
}

fn ids(events: &[Envelope]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn published_events_reach_the_log_in_order() {
    let (dir, log) = testing::temp_sqlite_log().await;
    let log: Arc<dyn EventLog> = Arc::new(log);
    let p = Running::start(log.clone(), config(dir.path())).await;
    let sent = events(600);
    for e in &sent {
        let _admission = p.publisher.admit().unwrap();
        p.publisher.publish(e.clone());
    }
    p.idle().await;
    assert_eq!(stored_ids(&*log).await, ids(&sent));
    let s = p.publisher.stats();
    assert_eq!(
        (s.published_total, s.spooled_total, s.queue_depth),
        (600, 0, 0)
    );
    p.stop().await;
}

#[tokio::test]
async fn a_duplicate_publish_is_stored_once() {
    let (dir, log) = testing::temp_sqlite_log().await;
    let log: Arc<dyn EventLog> = Arc::new(log);
    let p = Running::start(log.clone(), config(dir.path())).await;
    let e = testing::sample_usage_event("acc_p", 1);
    p.publisher.publish(e.clone());
    p.publisher.publish(e.clone());
    p.idle().await;
    p.publisher.publish(e.clone());
    p.idle().await;
    assert_eq!(stored_ids(&*log).await, vec![e.id]);
    let s = p.publisher.stats();
    assert_eq!((s.published_total, s.duplicates_total), (3, 2));
    p.stop().await;
}

#[tokio::test]
async fn while_the_log_fails_events_are_spooled_then_replayed_in_order() {
    let (dir, log) = testing::temp_sqlite_log().await;
    let flaky = FlakyLog::new(Arc::new(log.clone()));
    let p = Running::start(flaky.clone(), config(dir.path())).await;

    let before = events(3);
    for e in &before {
        p.publisher.publish(e.clone());
    }
    p.idle().await;

    flaky.set_failing(true);
    let during = events(40);
    for (i, e) in during.iter().enumerate() {
        p.publisher.publish(e.clone());
        if i % 10 == 0 {
            // Several separate batches, so later ones find the spool in use.
            tokio::task::yield_now().await;
        }
    }
    wait_until("all events spooled", || {
        p.publisher.stats().spool_events == 40
    })
    .await;
    assert_eq!(
        log.head().await.unwrap(),
        3,
        "nothing reached the failing log"
    );
    // A replay attempt happens (and fails) while the log is still down.
    let failed = flaky.failed_appends();
    wait_until("a failed replay", || flaky.failed_appends() > failed).await;

    flaky.set_failing(false);
    p.idle().await;
    let mut expected = ids(&before);
    expected.extend(ids(&during));
    assert_eq!(
        stored_ids(&log).await,
        expected,
        "in order, none lost, none twice"
    );
    let s = p.publisher.stats();
    assert_eq!((s.spooled_total, s.spool_events, s.spool_bytes), (40, 0, 0));
    assert!(s.append_errors_total >= 2);
    p.stop().await;
}

#[tokio::test]
async fn a_full_spool_refuses_admission_until_it_drains() {
    let (dir, log) = testing::temp_sqlite_log().await;
    let flaky = FlakyLog::new(Arc::new(log.clone()));
    let mut cfg = config(dir.path());
    cfg.spool_max_events = 5;
    let p = Running::start(flaky.clone(), cfg).await;
    flaky.set_failing(true);
    let sent = events(5);
    for e in &sent {
        let _admission = p.publisher.admit().unwrap();
        p.publisher.publish(e.clone());
    }
    wait_until("the spool to fill", || {
        p.publisher.stats().spool_events == 5
    })
    .await;
    match p.publisher.admit() {
        Err(Backpressure::SpoolFull { events: 5, bytes }) => assert!(bytes > 0),
        other => panic!("expected SpoolFull, got {other:?}"),
    }
    flaky.set_failing(false);
    p.idle().await;
    assert!(
        p.publisher.admit().is_ok(),
        "admits again once the spool drained"
    );
    assert_eq!(stored_ids(&log).await, ids(&sent));
    p.stop().await;
}

#[tokio::test]
async fn a_full_queue_refuses_admission() {
    // The test runtime is single-threaded, so the worker cannot drain the queue
    // until this task yields.
    let (dir, log) = testing::temp_sqlite_log().await;
    let log: Arc<dyn EventLog> = Arc::new(log);
    let mut cfg = config(dir.path());
    cfg.queue_capacity = 3;
    let p = Running::start(log.clone(), cfg).await;
    for e in events(3) {
        let _admission = p.publisher.admit().unwrap();
        p.publisher.publish(e);
    }
    assert_eq!(
        p.publisher.admit().unwrap_err(),
        Backpressure::QueueFull {
            depth: 3,
            capacity: 3
        }
    );
    p.idle().await;
    assert!(p.publisher.admit().is_ok());
    assert_eq!(log.head().await.unwrap(), 3);
    p.stop().await;
}

#[tokio::test]
async fn shutdown_drains_the_queue_into_the_log() {
    let (dir, log) = testing::temp_sqlite_log().await;
    let log: Arc<dyn EventLog> = Arc::new(log);
    let p = Running::start(log.clone(), config(dir.path())).await;
    let sent = events(300);
    for e in &sent {
        p.publisher.publish(e.clone());
    }
    p.stop().await;
    assert_eq!(stored_ids(&*log).await, ids(&sent));
    assert_eq!(p.publisher.admit().unwrap_err(), Backpressure::ShuttingDown);
}

#[tokio::test]
async fn shutdown_waits_for_admitted_requests_to_publish() {
    let (dir, log) = testing::temp_sqlite_log().await;
    let log: Arc<dyn EventLog> = Arc::new(log);
    let p = Running::start(log.clone(), config(dir.path())).await;
    let admission = p.publisher.admit().unwrap();
    p.shutdown.cancel();
    p.tracker.close();
    // The request admitted before shutdown finishes afterwards.
    wait_until("shutdown to stop admitting", || {
        p.publisher.admit().is_err()
    })
    .await;
    assert!(
        !p.tracker.is_empty(),
        "the worker waits for the admitted request"
    );
    let late = testing::sample_request_event(200);
    p.publisher.publish(late.clone());
    drop(admission);
    tokio::time::timeout(testing::WAIT, p.tracker.wait())
        .await
        .unwrap();
    assert_eq!(stored_ids(&*log).await, vec![late.id]);
}

#[tokio::test]
async fn events_spooled_before_a_restart_are_replayed_at_start_up() {
    let (dir, log) = testing::temp_sqlite_log().await;
    let flaky = FlakyLog::new(Arc::new(log.clone()));
    flaky.set_failing(true);
    let first = Running::start(flaky.clone(), config(dir.path())).await;
    let sent = events(25);
    for e in &sent {
        first.publisher.publish(e.clone());
    }
    // Shut down with the log still down: the queue drains into the spool.
    first.stop().await;
    assert_eq!(first.publisher.stats().spool_events, 25);
    // Published after the task ended: written straight to the spool.
    let late = testing::sample_admin_event("late");
    first.publisher.publish(late.clone());
    tokio::time::timeout(testing::WAIT, first.tracker.wait())
        .await
        .unwrap();
    assert_eq!(first.publisher.stats().spool_events, 26);
    assert_eq!(log.head().await.unwrap(), 0);

    // The next process starts with a healthy log and replays the spool.
    let second = Running::start(Arc::new(log.clone()), config(dir.path())).await;
    assert_eq!(second.publisher.stats().spool_events, 26);
    second.idle().await;
    let mut expected = ids(&sent);
    expected.push(late.id);
    assert_eq!(stored_ids(&log).await, expected);
    second.stop().await;
}

#[tokio::test]
async fn respooling_the_same_event_is_idempotent() {
    // A replayed batch whose acknowledgement was lost is sent again: the log dedupes it.
    let (dir, log) = testing::temp_sqlite_log().await;
    let flaky = FlakyLog::new(Arc::new(log.clone()));
    flaky.set_failing(true);
    let p = Running::start(flaky.clone(), config(dir.path())).await;
    let e = testing::sample_usage_event("acc_p", 9);
    p.publisher.publish(e.clone());
    wait_until("spooled", || p.publisher.stats().spool_events == 1).await;
    p.publisher.publish(e.clone());
    wait_until("spooled twice", || p.publisher.stats().spooled_total == 2).await;
    assert_eq!(p.publisher.stats().spool_events, 1, "one row per event id");
    flaky.set_failing(false);
    p.idle().await;
    assert_eq!(stored_ids(&log).await, vec![e.id]);
    p.stop().await;
}

#[tokio::test]
async fn the_spool_file_lives_where_configured() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(&dir.path().join("events.db"))
        .await
        .unwrap();
    let p = Running::start(
        Arc::new(log),
        PublisherConfig::new(dir.path().join("nested").join("spool.db")),
    )
    .await;
    assert!(dir.path().join("nested").join("spool.db").exists());
    p.stop().await;
}

/// Records the size of every `append_batch` call.
struct BatchSizes {
    inner: Arc<dyn EventLog>,
    sizes: std::sync::Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl EventLog for BatchSizes {
    async fn append(&self, event: &Envelope) -> Result<ingest::Appended, ingest::LogError> {
        self.sizes.lock().unwrap().push(1);
        self.inner.append(event).await
    }
    async fn append_batch(
        &self,
        events: &[Envelope],
    ) -> Result<Vec<ingest::Appended>, ingest::LogError> {
        self.sizes.lock().unwrap().push(events.len());
        self.inner.append_batch(events).await
    }
    async fn subscribe(
        &self,
        after: ingest::Position,
        filter: Option<schema::Category>,
    ) -> Result<ingest::EventStream, ingest::LogError> {
        self.inner.subscribe(after, filter).await
    }
    async fn head(&self) -> Result<ingest::Position, ingest::LogError> {
        self.inner.head().await
    }
    fn backend(&self) -> &'static str {
        "batch-sizes"
    }
}

async fn batches_for_two_spaced_events(linger: Duration) -> Vec<usize> {
    let (dir, log) = testing::temp_sqlite_log().await;
    let counted = Arc::new(BatchSizes {
        inner: Arc::new(log),
        sizes: std::sync::Mutex::new(Vec::new()),
    });
    let mut c = config(dir.path());
    c.linger = linger;
    let run = Running::start(counted.clone(), c).await;
    let evs = events(2);
    run.publisher.publish(evs[0].clone());
    if linger.is_zero() {
        // Without a linger the first event is appended on its own.
        wait_until("the first append", || {
            !counted.sizes.lock().unwrap().is_empty()
        })
        .await;
    } else {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.publisher.publish(evs[1].clone());
    run.idle().await;
    run.stop().await;
    let sizes = counted.sizes.lock().unwrap().clone();
    sizes
}

#[tokio::test]
async fn events_close_together_share_one_append_while_the_batch_lingers() {
    assert_eq!(
        batches_for_two_spaced_events(Duration::from_secs(2)).await,
        vec![2]
    );
    assert_eq!(
        batches_for_two_spaced_events(Duration::ZERO).await,
        vec![1, 1]
    );
}

/// A log that refuses, for good, any event whose id is in `poison` (like JetStream
/// refusing a message above its payload limit).
struct PoisonLog {
    inner: Arc<dyn EventLog>,
    poison: std::collections::HashSet<Uuid>,
}

#[async_trait::async_trait]
impl EventLog for PoisonLog {
    async fn append(&self, event: &Envelope) -> Result<ingest::Appended, ingest::LogError> {
        let mut out = self.append_batch(std::slice::from_ref(event)).await?;
        out.pop()
            .ok_or_else(|| ingest::LogError::Backend("no acknowledgement".into()))
    }

    async fn append_batch(
        &self,
        events: &[Envelope],
    ) -> Result<Vec<ingest::Appended>, ingest::LogError> {
        // Like a pipelined publish: the events before the poison one land.
        let mut out = Vec::new();
        for e in events {
            if self.poison.contains(&e.id) {
                return Err(ingest::LogError::Rejected("message too large".into()));
            }
            out.extend(self.inner.append_batch(std::slice::from_ref(e)).await?);
        }
        Ok(out)
    }

    async fn subscribe(
        &self,
        after: ingest::Position,
        category: Option<schema::Category>,
    ) -> Result<ingest::EventStream, ingest::LogError> {
        self.inner.subscribe(after, category).await
    }

    async fn head(&self) -> Result<ingest::Position, ingest::LogError> {
        self.inner.head().await
    }

    fn backend(&self) -> &'static str {
        "poison"
    }
}

#[tokio::test]
async fn an_event_the_log_refuses_for_good_is_quarantined_and_blocks_nothing() {
    let (dir, log) = testing::temp_sqlite_log().await;
    let all = events(30);
    let poison = all[10].id;
    let poisoned = Arc::new(PoisonLog {
        inner: Arc::new(log.clone()),
        poison: [poison].into_iter().collect(),
    });
    let p = Running::start(poisoned, config(dir.path())).await;
    for e in &all {
        p.publisher.publish(e.clone());
    }
    p.idle().await;
    // Every other event is in the log, in order; the poison one is set aside.
    let mut expected = ids(&all);
    expected.retain(|id| *id != poison);
    assert_eq!(stored_ids(&log).await, expected);
    let s = p.publisher.stats();
    assert_eq!(
        (s.quarantine_events, s.queue_depth, s.spool_events),
        (1, 0, 0)
    );
    // Later events flow too.
    let later = events(5);
    for e in &later {
        p.publisher.publish(e.clone());
    }
    p.idle().await;
    assert_eq!(stored_ids(&log).await.len(), 34);
    p.stop().await;
    // The quarantine keeps the event, with the reason, for an operator.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("spool.db").display()
    ))
    .await
    .unwrap();
    let (id, reason): (String, String) = sqlx::query_as("SELECT id, reason FROM spool_quarantine")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        (id, reason.as_str()),
        (poison.to_string(), "message too large")
    );
}

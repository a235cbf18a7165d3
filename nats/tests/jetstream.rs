//! The JetStream event log against a real, private nats-server: the conformance
//! suite (with a server restart between append and subscribe), the stream settings,
//! and the publisher spooling while NATS is down.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
use ingest::publisher::{Publisher, PublisherConfig};
use ingest::testing::{self, Harness};
use ingest::{EventLog, LogError};
use nats::testing::NatsServer;
use nats::{JetStreamLog, StreamSettings};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

fn settings() -> StreamSettings {
    StreamSettings {
        timeout: Duration::from_secs(2),
        ..StreamSettings::default()
    }
}

async fn connect(server: &NatsServer) -> JetStreamLog {
    JetStreamLog::connect(&server.url(), settings())
        .await
        .unwrap_or_else(|e| panic!("connect to {} ({}): {e}", server.url(), server.binary()))
}

struct JetStreamHarness {
    server: Option<NatsServer>,
}

#[async_trait::async_trait]
impl Harness for JetStreamHarness {
    async fn open(&mut self) -> Arc<dyn EventLog> {
        let server = NatsServer::start().await;
        let log = connect(&server).await;
        self.server = Some(server);
        Arc::new(log)
    }

    async fn restart(&mut self) -> Arc<dyn EventLog> {
        let server = self.server.as_mut().unwrap();
        server.restart().await;
        Arc::new(connect(server).await)
    }
}

#[tokio::test]
async fn jetstream_log_passes_the_conformance_suite() {
    testing::run_conformance(&mut JetStreamHarness { server: None }).await;
}

#[tokio::test]
async fn acknowledged_events_survive_a_server_kill() {
    let mut server = NatsServer::start().await;
    let log = connect(&server).await;
    let sent: Vec<_> = (0..50)
        .map(|i| testing::sample_usage_event("acc_k", i))
        .collect();
    log.append_batch(&sent).await.unwrap();
    server.kill().await;
    server.start_again().await;
    let log = connect(&server).await;
    let ids: Vec<Uuid> = testing::read_all(&log)
        .await
        .iter()
        .map(|e| e.envelope.id)
        .collect();
    assert_eq!(ids, sent.iter().map(|e| e.id).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_stream_is_provisioned_as_an_audit_log_and_messages_carry_headers() {
    let server = NatsServer::start().await;
    let log = connect(&server).await;
    // Connecting again takes the update path and must accept the same settings.
    let _again = connect(&server).await;

    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(nats::STREAM_NAME).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, vec!["relay.events.>".to_owned()]);
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(config.retention, RetentionPolicy::Limits);
    assert_eq!(config.discard, DiscardPolicy::New);
    assert_eq!(config.duplicate_window, Duration::from_secs(600));
    assert_eq!(config.max_age, Duration::ZERO);
    assert!(config.deny_delete && config.deny_purge && config.allow_direct);

    let e = testing::sample_usage_event("acc_h", 3);
    let a = log.append(&e).await.unwrap();
    let raw = stream.get_raw_message(a.position).await.unwrap();
    assert_eq!(raw.subject.as_str(), "relay.events.usage.acc_h");
    let headers = raw.headers;
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("Nats-Msg-Id"), Some(e.id.to_string()));
    assert_eq!(
        header("Relay-Event-Type").as_deref(),
        Some("usage.recorded")
    );
    assert_eq!(header("Relay-Event-Version").as_deref(), Some("1"));
    assert_eq!(header("Relay-Request-Id").as_deref(), Some("req_3"));
    assert_eq!(schema::Envelope::from_json(&raw.payload).unwrap(), e);

    // The audit trail cannot be edited.
    assert!(
        stream.delete_message(a.position).await.is_err(),
        "deny_delete"
    );
    assert!(stream.purge().await.is_err(), "deny_purge");
}

#[tokio::test]
async fn connecting_to_an_absent_server_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match JetStreamLog::connect(&format!("nats://127.0.0.1:{port}"), settings()).await {
        Err(LogError::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test]
async fn with_nats_stopped_events_are_spooled_and_reach_jetstream_when_it_returns() {
    let mut server = NatsServer::start().await;
    let log: Arc<dyn EventLog> = Arc::new(connect(&server).await);
    let dir = tempfile::tempdir().unwrap();
    let mut config = PublisherConfig::new(dir.path().join("spool.db"));
    config.append_timeout = Duration::from_secs(4);
    config.retry_initial = Duration::from_millis(50);
    config.retry_max = Duration::from_millis(500);
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let publisher = Publisher::start(log.clone(), config, &tracker, shutdown.clone())
        .await
        .unwrap();
    let idle = |p: Publisher| async move {
        tokio::time::timeout(Duration::from_secs(60), p.wait_idle())
            .await
            .expect("publisher idle")
    };

    let before: Vec<_> = (0..5)
        .map(|i| testing::sample_request_event(200 + i))
        .collect();
    for e in &before {
        publisher.publish(e.clone());
    }
    idle(publisher.clone()).await;

    server.stop().await;
    let during: Vec<_> = (0..30)
        .map(|i| testing::sample_usage_event("acc_s", i))
        .collect();
    for e in &during {
        let _admission = publisher.admit().unwrap();
        publisher.publish(e.clone());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while publisher.stats().spool_events < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events were not spooled: {:?}",
            publisher.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(publisher.stats().append_errors_total >= 1);

    server.start_again().await;
    idle(publisher.clone()).await;

    let stored = testing::read_all(&*log).await;
    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for e in &stored {
        *counts.entry(e.envelope.id).or_default() += 1;
    }
    let expected: Vec<Uuid> = before.iter().chain(&during).map(|e| e.id).collect();
    assert_eq!(
        stored.len(),
        expected.len(),
        "no event missing or stored twice"
    );
    for id in &expected {
        assert_eq!(counts.get(id), Some(&1), "event {id} stored exactly once");
    }
    assert_eq!(log.head().await.unwrap(), 35);
    let s = publisher.stats();
    assert_eq!((s.spooled_total, s.spool_events, s.queue_depth), (30, 0, 0));

    shutdown.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(30), tracker.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_live_subscription_continues_after_a_server_restart() {
    let mut server = NatsServer::start().await;
    let log = connect(&server).await;
    let mut stream = log.subscribe(0, None).await.unwrap();
    let first = testing::sample_usage_event("acc_r", 1);
    log.append(&first).await.unwrap();
    assert_eq!(
        testing::take_events(&mut stream, 1).await[0].envelope.id,
        first.id
    );

    server.restart().await;
    // The client reconnects on its own; appends fail until it has.
    let second = testing::sample_usage_event("acc_r", 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = log.append(&second).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "append after restart: {e}"
        );
    }
    let got = testing::take_events(&mut stream, 1).await;
    assert_eq!((got[0].position, got[0].envelope.id), (2, second.id));
}

//! The conformance suite and SQLite-specific behaviour of the embedded log.
#![expect(
    clippy::unwrap_used,
    reason = "test harness code outside #[test] functions"
)]

use ingest::sqlite::SqliteLog;
use ingest::testing::{self, Harness};
use ingest::EventLog;
use std::path::PathBuf;
use std::sync::Arc;

struct SqliteHarness {
    _dir: tempfile::TempDir,
    path: PathBuf,
    current: Option<SqliteLog>,
}

impl SqliteHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("events.db");
        Self {
            _dir: dir,
            path,
            current: None,
        }
    }
}

#[async_trait::async_trait]
impl Harness for SqliteHarness {
    async fn open(&mut self) -> Arc<dyn EventLog> {
        let log = SqliteLog::open(&self.path).await.unwrap();
        self.current = Some(log.clone());
        Arc::new(log)
    }

    async fn restart(&mut self) -> Arc<dyn EventLog> {
        if let Some(old) = self.current.take() {
            old.close().await;
        }
        self.open().await
    }
}

#[tokio::test]
async fn sqlite_log_passes_the_conformance_suite() {
    testing::run_conformance(&mut SqliteHarness::new()).await;
}

#[tokio::test]
async fn a_second_handle_on_the_same_file_sees_appends_by_polling() {
    // Another process (the CLI) appending to the same file is modelled by a second,
    // independent handle: the subscriber's in-process wake-up never fires for it.
    let (dir, reader) = testing::temp_sqlite_log().await;
    let writer = SqliteLog::open(&dir.path().join("events.db"))
        .await
        .unwrap();
    let mut stream = reader.subscribe(0, None).await.unwrap();
    let e = testing::sample_usage_event("acc_x", 7);
    let a = writer.append(&e).await.unwrap();
    let got = testing::take_events(&mut stream, 1).await;
    assert_eq!((got[0].position, got[0].envelope.id), (a.position, e.id));
    assert_eq!(reader.head().await.unwrap(), a.position);
}

#[tokio::test]
async fn subscriptions_end_when_the_log_is_closed() {
    let (_dir, log) = testing::temp_sqlite_log().await;
    let mut stream = log.subscribe(0, None).await.unwrap();
    log.close().await;
    let next = tokio::time::timeout(testing::WAIT, futures::StreamExt::next(&mut stream))
        .await
        .unwrap();
    assert!(next.is_none(), "a closed log ends its subscriptions");
    assert!(log.append(&testing::sample_admin_event("x")).await.is_err());
}

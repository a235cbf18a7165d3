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

/// Subscribers of the appending process take new events from memory; an append by
/// another process in between is not in memory, and must still be read, in order,
/// once and only once, by every subscriber, filtered or not.
#[tokio::test]
async fn in_process_subscribers_miss_nothing_another_process_appends_in_between() {
    use schema::Category;
    let (dir, log) = testing::temp_sqlite_log().await;
    let other = SqliteLog::open(&dir.path().join("events.db"))
        .await
        .unwrap();
    // Each subscription is read continuously, as the projectors read theirs.
    let mut readers = Vec::new();
    for category in [None, Some(Category::Usage), Some(Category::Admin)] {
        let mut stream = log.subscribe(0, category).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(item) = futures::StreamExt::next(&mut stream).await {
                if tx.send(item.map(|e| (e.position, e.envelope.id))).is_err() {
                    break;
                }
            }
        });
        readers.push((rx, category));
    }
    let mut next_position = 1;
    let mut reads_in_rounds_from_memory = 0;
    for round in 0..20u64 {
        // Let every subscriber reach its wait for the next append.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let reads_before = log.table_reads();
        // Two of this process's events, then (every other round) one of the other
        // process's, at once followed by one of this process's: for that last one the
        // subscribers find the other process's event missing from memory.
        let mut want = Vec::new();
        let batch = [
            testing::sample_usage_event("acc_p", round),
            testing::sample_admin_event("key.update"),
        ];
        for (e, a) in batch.iter().zip(log.append_batch(&batch).await.unwrap()) {
            want.push((a.position, e.id, e.category()));
        }
        let from_other = round % 2 == 0;
        if from_other {
            let e = if round % 4 == 0 {
                testing::sample_usage_event("acc_o", round)
            } else {
                testing::sample_admin_event("key.create")
            };
            let a = other.append(&e).await.unwrap();
            want.push((a.position, e.id, e.category()));
        }
        let e = testing::sample_usage_event("acc_p", 1000 + round);
        let a = log.append(&e).await.unwrap();
        want.push((a.position, e.id, e.category()));
        let positions: Vec<u64> = want.iter().map(|w| w.0).collect();
        let n = u64::try_from(want.len()).unwrap();
        assert_eq!(
            positions,
            (next_position..next_position + n).collect::<Vec<_>>()
        );
        next_position += n;
        for (rx, category) in &mut readers {
            let expected: Vec<_> = want
                .iter()
                .filter(|w| category.is_none_or(|c| w.2 == c))
                .map(|w| (w.0, w.1))
                .collect();
            let mut got = Vec::new();
            while got.len() < expected.len() {
                let item = tokio::time::timeout(testing::WAIT, rx.recv()).await;
                got.push(item.unwrap().unwrap().unwrap());
            }
            assert_eq!(got, expected, "round {round}, {category:?}");
        }
        if !from_other {
            reads_in_rounds_from_memory += log.table_reads() - reads_before;
        }
    }
    // In the ten rounds with only this process's appends, three subscribers woken
    // at least once each would read the table 30 times or more without the copy in
    // memory; with it, only their 200 ms polls do.
    assert!(
        reads_in_rounds_from_memory < 15,
        "{reads_in_rounds_from_memory} table reads in rounds served from memory"
    );
    // And nothing more, once the poll has read the table again.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for (rx, category) in &mut readers {
        assert!(rx.try_recv().is_err(), "{category:?}: an extra event");
    }
}

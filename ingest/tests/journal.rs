//! The journal: what was written before a crash is found again, what the log already
//! holds is not, attempts that never ended come back as `unknown` usage, and segments
//! are reclaimed without forgetting an open attempt.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use chrono::Utc;
use ingest::journal::{AttemptStart, Fsync, Journal, JournalConfig};
use ingest::publisher::{Publisher, PublisherConfig};
use ingest::sqlite::SqliteLog;
use ingest::testing::{self};
use ingest::{Appended, EventLog, EventStream, LogError, Position};
use schema::{AccountId, Category, Completeness, Envelope, Event, Outcome};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

fn config(dir: &Path) -> JournalConfig {
    let mut c = JournalConfig::new(dir.join("journal"));
    c.fsync = Fsync::Never;
    c
}

fn usage(request: &str, attempt: u32) -> Envelope {
    let mut e = testing::sample_usage_event("acc_j", 10).with_request(request.to_owned());
    if let Event::UsageRecorded(u) = &mut e.event {
        u.attempt = attempt;
    }
    e
}

fn finished(request: &str) -> Envelope {
    testing::sample_request_event(200).with_request(request.to_owned())
}

fn attempt(request: &str, n: u32) -> AttemptStart {
    AttemptStart {
        request_id: request.to_owned(),
        attempt: n,
        account: AccountId::parse("acc_j").unwrap(),
        tenant: None,
        api_key: None,
        model: "claude-sonnet-4-5".into(),
        stream: true,
        endpoint: "/v1/messages".into(),
        started_at: Utc::now(),
    }
}

fn ids(events: &[Envelope]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

/// Segment files of every process directory.
fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(dir.join("journal")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|x| x == "log") {
                out.push(p);
            }
        }
    }
    out
}

fn segments(dir: &Path) -> usize {
    segment_files(dir).len()
}

#[test]
fn events_written_before_a_crash_are_recovered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<Envelope> = (0..5).map(|i| usage(&format!("r{i}"), 1)).collect();
    {
        let (j, rec) = Journal::open(&config(dir.path())).unwrap();
        assert!(rec.events.is_empty());
        for e in &events {
            j.append_events([e.clone()], |_, _| {}).unwrap();
        }
        // Dropped without `handled`: the log never acknowledged them.
    }
    let (_j, rec) = Journal::open(&config(dir.path())).unwrap();
    assert_eq!(ids(&rec.events), ids(&events));
    assert_eq!(rec.corrupt_records, 0);
}

#[test]
fn what_the_log_acknowledged_is_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<Envelope> = (0..6).map(|i| usage(&format!("r{i}"), 1)).collect();
    {
        let (j, _) = Journal::open(&config(dir.path())).unwrap();
        let mut seqs = Vec::new();
        for e in &events[..4] {
            seqs.push(j.append_events([e.clone()], |_, _| {}).unwrap());
        }
        j.handled(seqs[2]);
        // The marker travels with the next write.
        for e in &events[4..] {
            j.append_events([e.clone()], |_, _| {}).unwrap();
        }
    }
    let (_j, rec) = Journal::open(&config(dir.path())).unwrap();
    assert_eq!(ids(&rec.events), ids(&events[3..]));
}

#[test]
fn an_idle_journal_marks_what_the_log_holds_without_a_new_event() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(&config(dir.path())).unwrap();
        let seq = j
            .append_events([usage("r1", 1), usage("r2", 1)], |_, _| {})
            .unwrap();
        j.handled(seq);
        // No further event carries the marker; the publisher writes it when idle.
        j.mark();
    }
    let (_j, rec) = Journal::open(&config(dir.path())).unwrap();
    assert!(rec.events.is_empty(), "{:?}", ids(&rec.events));
}

#[test]
fn recovery_written_again_survives_a_second_crash_and_old_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<Envelope> = (0..3).map(|i| usage(&format!("r{i}"), 1)).collect();
    {
        let (j, _) = Journal::open(&config(dir.path())).unwrap();
        j.append_events(events.clone(), |_, _| {}).unwrap();
    }
    {
        // Recovered, written again, then a crash before the log took them.
        let (j, rec) = Journal::open(&config(dir.path())).unwrap();
        j.append_events(rec.into_events(Utc::now()), |_, _| {})
            .unwrap();
        j.retire_recovered();
        assert_eq!(segments(dir.path()), 1);
    }
    let (_j, rec) = Journal::open(&config(dir.path())).unwrap();
    // The usage, once each, and the ends the first recovery recorded for its requests
    // (they never finished), under the same derived ids.
    let usage: Vec<Envelope> = rec
        .events
        .iter()
        .filter(|e| matches!(e.event, Event::UsageRecorded(_)))
        .cloned()
        .collect();
    assert_eq!(ids(&usage), ids(&events));
    assert_eq!(
        rec.events.len(),
        6,
        "three usage events and their three ends"
    );
    let ends = rec.into_events(Utc::now()).len();
    assert_eq!(
        ends, 6,
        "recovering again derives the same ends, no new ones"
    );
}

#[test]
fn an_attempt_that_never_ended_becomes_unknown_usage_and_an_unfinished_request() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(&config(dir.path())).unwrap();
        // r1: attempt 1 ended with usage, attempt 2 in flight at the crash.
        j.attempt_started(&attempt("r1", 1)).unwrap();
        j.append_events([usage("r1", 1)], |_, _| {}).unwrap();
        j.attempt_started(&attempt("r1", 2)).unwrap();
        // r2: ended normally.
        j.attempt_started(&attempt("r2", 1)).unwrap();
        j.append_events([usage("r2", 1), finished("r2")], |_, _| {})
            .unwrap();
        // r3: failed before any usage, and its request finished.
        j.attempt_started(&attempt("r3", 1)).unwrap();
        j.append_events([finished("r3")], |_, _| {}).unwrap();
        assert_eq!(j.stats().open_attempts, 1);
    }
    let (_j, rec) = Journal::open(&config(dir.path())).unwrap();
    assert_eq!(
        rec.open_attempts,
        vec![attempt("r1", 2)]
            .into_iter()
            .map(|mut a| {
                a.started_at = rec.open_attempts[0].started_at;
                a
            })
            .collect::<Vec<_>>()
    );
    let now = Utc::now();
    let recovered: Vec<Envelope> = rec.into_events(now);
    let synthetic: Vec<&Envelope> = recovered
        .iter()
        .filter(|e| e.request_id.as_deref() == Some("r1") && e.occurred_at == now)
        .collect();
    assert_eq!(synthetic.len(), 2, "{synthetic:?}");
    match &synthetic[0].event {
        Event::UsageRecorded(u) => {
            assert_eq!(u.completeness, Completeness::Unknown);
            assert_eq!(u.attempt, 2);
            assert_eq!(u.input_tokens + u.output_tokens, 0);
        }
        other => panic!("expected usage, got {other:?}"),
    }
    match &synthetic[1].event {
        Event::RequestFinished(f) => {
            assert_eq!(f.outcome, Outcome::RelayError);
            assert_eq!(f.attempts, 2);
        }
        other => panic!("expected request.finished, got {other:?}"),
    }
    // The same recovery twice derives the same ids.
    assert_eq!(
        attempt("r1", 2).unknown_usage(now).id,
        attempt("r1", 2).unknown_usage(Utc::now()).id
    );
}

#[test]
fn a_request_that_died_between_attempts_still_gets_its_end() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(&config(dir.path())).unwrap();
        // Attempt 1 was refused upstream (its usage recorded); the relay died before
        // attempt 2 started.
        j.attempt_started(&attempt("r1", 1)).unwrap();
        j.append_events([usage("r1", 1)], |_, _| {}).unwrap();
        // r2 finished normally.
        j.append_events([usage("r2", 1), finished("r2")], |_, _| {})
            .unwrap();
    }
    let (_j, rec) = Journal::open(&config(dir.path())).unwrap();
    assert!(rec.open_attempts.is_empty());
    let ended: Vec<&str> = rec
        .ended_between_attempts
        .iter()
        .map(|a| a.request_id.as_str())
        .collect();
    assert_eq!(ended, ["r1"]);
    let out = rec.into_events(Utc::now());
    let ends: Vec<&Envelope> = out
        .iter()
        .filter(|e| matches!(e.event, Event::RequestFinished(_)))
        .collect();
    // r2's own end (replayed: never acknowledged) and the one recorded for r1.
    assert_eq!(ends.len(), 2);
    let r1 = ends
        .iter()
        .find(|e| e.request_id.as_deref() == Some("r1"))
        .unwrap();
    match &r1.event {
        Event::RequestFinished(f) => {
            assert_eq!(f.outcome, Outcome::RelayError);
            assert_eq!(f.attempts, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn full_segments_are_reclaimed_and_open_attempts_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 4096;
    {
        let (j, _) = Journal::open(&cfg).unwrap();
        j.attempt_started(&attempt("long", 1)).unwrap();
        for i in 0..200 {
            let seq = j
                .append_events([usage(&format!("r{i}"), 1)], |_, _| {})
                .unwrap();
            j.handled(seq);
        }
        assert!(
            segments(dir.path()) <= 3,
            "handled segments are deleted, {} remain",
            segments(dir.path())
        );
        assert_eq!(j.stats().open_attempts, 1);
        let bytes: u64 = segment_files(dir.path())
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(
            bytes < 4 * 4096,
            "200 events written, {bytes} bytes kept: segments rotate"
        );
    }
    let (_j, rec) = Journal::open(&cfg).unwrap();
    assert_eq!(
        rec.open_attempts.len(),
        1,
        "the open attempt survived rotation"
    );
    assert_eq!(rec.open_attempts[0].request_id, "long");
    assert!(rec.events.len() <= 1, "only the unmarked tail is replayed");
}

#[test]
fn a_torn_tail_is_skipped_and_what_precedes_it_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<Envelope> = (0..3).map(|i| usage(&format!("r{i}"), 1)).collect();
    {
        let (j, _) = Journal::open(&config(dir.path())).unwrap();
        j.append_events(events.clone(), |_, _| {}).unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 9, 9])
        .unwrap();
    let (_j, rec) = Journal::open(&config(dir.path())).unwrap();
    assert_eq!(ids(&rec.events), ids(&events));
    assert_eq!(rec.corrupt_records, 1);
}

#[tokio::test]
async fn with_fsync_always_a_record_is_durable_once_a_sync_covered_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.fsync = Fsync::Always;
    let (j, _) = Journal::open(&cfg).unwrap();
    assert!(j.syncs_each_record());
    let seq = j.append_events([usage("r", 1)], |_, _| {}).unwrap();
    tokio::time::timeout(testing::WAIT, j.durable(seq))
        .await
        .expect("synced");
    assert!(j.stats().syncs_total >= 1);
}

/// Segments rotate under the writers' lock; their sync happens on the sync thread. With
/// `always`, every record still becomes durable, across many rotations.
#[tokio::test]
async fn with_fsync_always_records_stay_durable_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.fsync = Fsync::Always;
    cfg.segment_bytes = 4096;
    let (j, _) = Journal::open(&cfg).unwrap();
    for i in 0..200 {
        let seq = j
            .append_events([usage(&format!("r{i}"), 1)], |_, _| {})
            .unwrap();
        tokio::time::timeout(testing::WAIT, j.durable(seq))
            .await
            .unwrap_or_else(|_| panic!("record {seq} never synced"));
        j.handled(seq);
    }
    assert!(j.stats().syncs_total >= 200);
    assert!(
        segments(dir.path()) <= 3,
        "{} segments",
        segments(dir.path())
    );
}

/// A log whose appends never return: the events stay in the publisher's memory, as
/// when a process dies while the log is slow.
struct HangingLog;

#[async_trait::async_trait]
impl EventLog for HangingLog {
    async fn append(&self, _: &Envelope) -> Result<Appended, LogError> {
        std::future::pending().await
    }
    async fn subscribe(&self, _: Position, _: Option<Category>) -> Result<EventStream, LogError> {
        Err(LogError::Unavailable("hanging".into()))
    }
    async fn head(&self) -> Result<Position, LogError> {
        Ok(0)
    }
    fn backend(&self) -> &'static str {
        "hanging"
    }
}

#[test]
fn a_live_process_journal_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (live, _) = Journal::open(&config(dir.path())).unwrap();
    live.append_events([usage("live", 1)], |_, _| {}).unwrap();
    // A second process (a CLI command beside the server) opens the same directory.
    let (_other, rec) = Journal::open(&config(dir.path())).unwrap();
    assert!(
        rec.events.is_empty(),
        "nothing of the live journal is taken"
    );
    _other.retire_recovered();
    assert_eq!(
        segments(dir.path()),
        2,
        "the live journal's segment is kept"
    );
    drop(live);
    // Once its process is gone, it is recovered.
    let (_third, rec) = Journal::open(&config(dir.path())).unwrap();
    assert_eq!(rec.events.len(), 1);
}

#[tokio::test]
async fn events_only_in_a_dead_publishers_memory_reach_the_log_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PublisherConfig::new(dir.path().join("spool.db"));
    cfg.append_timeout = Duration::from_secs(3600);
    let events: Vec<Envelope> = (0..20).map(|i| usage(&format!("r{i}"), 1)).collect();
    // The first "process" runs on its own runtime, which is then dropped with the
    // events still in the publisher's memory (its log never answers): a crash.
    let first = {
        let cfg = cfg.clone();
        let events = events.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let tracker = TaskTracker::new();
                let publisher = Publisher::start(
                    Arc::new(HangingLog),
                    cfg,
                    &tracker,
                    CancellationToken::new(),
                )
                .await
                .unwrap();
                for e in events {
                    publisher.publish(e);
                }
                publisher.attempt_started(&attempt("inflight", 1)).unwrap();
                // Let the worker take the events and hang on the append.
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(
                    publisher.stats().spool_events,
                    0,
                    "nothing reached the spool"
                );
            });
            drop(rt);
        })
    };
    first.join().unwrap();
    let log = Arc::new(
        SqliteLog::open(&dir.path().join("events.db"))
            .await
            .unwrap(),
    );
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let publisher = Publisher::start(log.clone(), cfg, &tracker, shutdown.clone())
        .await
        .unwrap();
    tokio::time::timeout(testing::WAIT, publisher.wait_idle())
        .await
        .expect("the recovered events were appended");
    let stored: Vec<Envelope> = testing::read_all(log.as_ref())
        .await
        .into_iter()
        .map(|s| s.envelope)
        .collect();
    assert_eq!(ids(&stored[..20]), ids(&events));
    let unknown: Vec<&Envelope> = stored[20..]
        .iter()
        .filter(|e| {
            matches!(&e.event, Event::UsageRecorded(u) if u.completeness == Completeness::Unknown)
        })
        .collect();
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0].request_id.as_deref(), Some("inflight"));
    assert_eq!(
        stored.len(),
        42,
        "20 events, an end for each of their requests (they never finished), the unknown usage and its end"
    );
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
}

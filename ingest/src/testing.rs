//! Test support (feature `testing`): the conformance suite every [`EventLog`]
//! implementation must pass, plus small helpers other crates' tests use.
//!
//! The suite is what makes "the embedded log and JetStream behave the same" a checked
//! property rather than a promise. An implementation provides a [`Harness`] that can
//! open its log and restart it (close and reopen the file, or restart the server
//! process) and calls [`run_conformance`].

use crate::sqlite::SqliteLog;
use crate::{Appended, EventLog, EventStream, LogError, Position, StoredEvent};
use chrono::Utc;
use futures::StreamExt;
use schema::{
    AccountId, AdminAction, Category, Completeness, Envelope, Event, RequestFinished,
    ServerToolUse, UsageRecorded,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How long the suite waits for an expected event before failing.
pub const WAIT: Duration = Duration::from_secs(15);

/// Opens and restarts the log under test.
#[async_trait::async_trait]
pub trait Harness: Send {
    /// Opens the log. Called once, on empty storage.
    async fn open(&mut self) -> Arc<dyn EventLog>;
    /// Stops the log (closing files, or stopping the server process) and opens it
    /// again on the same storage. The previous handle is no longer used.
    async fn restart(&mut self) -> Arc<dyn EventLog>;
}

/// A usage event for `account` with `input_tokens` tokens of input and a fresh id.
pub fn sample_usage_event(account: &str, input_tokens: u64) -> Envelope {
    let account = AccountId::parse(account).unwrap_or_else(|e| panic!("bad account id: {e}"));
    Envelope::new(
        Uuid::now_v7(),
        Utc::now(),
        Event::UsageRecorded(UsageRecorded {
            account,
            attempt: 1,
            model: "claude-sonnet-4-5".into(),
            status: 200,
            stream: false,
            input_tokens,
            output_tokens: 10,
            cache_read_input_tokens: 0,
            cache_creation_5m_input_tokens: 0,
            cache_creation_1h_input_tokens: 0,
            server_tool_use: ServerToolUse::default(),
            service_tier: Some("standard".into()),
            speed: None,
            inference_geo: None,
            completeness: Completeness::Complete,
        }),
    )
    .with_request(format!("req_{input_tokens}"))
}

/// A request-finished event with a fresh id.
pub fn sample_request_event(status: u16) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        Utc::now(),
        Event::RequestFinished(RequestFinished {
            endpoint: "/v1/messages".into(),
            status,
            outcome: schema::Outcome::Completed,
            model: Some("claude-sonnet-4-5".into()),
            stream: true,
            latency_us: 1_000,
            ttfb_us: Some(500),
            upstream_us: Some(900),
            attempts: 1,
            routing: None,
            error_type: None,
            upstream_request_id: None,
            rejected_by: None,
        }),
    )
}

/// An admin event (no account, so subject `relay.events.admin._`) with a fresh id.
pub fn sample_admin_event(action: &str) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        Utc::now(),
        Event::AdminAction(AdminAction {
            actor: "cli".into(),
            action: action.into(),
            target: "key:test".into(),
            summary: format!("{action} in a test"),
        }),
    )
}

/// A fresh [`SqliteLog`] in a temporary directory; keep the directory alive as long as
/// the log is used.
pub async fn temp_sqlite_log() -> (tempfile::TempDir, SqliteLog) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let log = SqliteLog::open(&dir.path().join("events.db"))
        .await
        .unwrap_or_else(|e| panic!("open sqlite log: {e}"));
    (dir, log)
}

/// Reads the next `n` events from `stream`, failing the test if they do not arrive
/// within [`WAIT`].
pub async fn take_events(stream: &mut EventStream, n: usize) -> Vec<StoredEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(e))) => out.push(e),
            Ok(Some(Err(e))) => panic!("subscription error after {} events: {e}", out.len()),
            Ok(None) => panic!("subscription ended after {} of {n} events", out.len()),
            Err(_) => panic!("only {} of {n} events arrived within {WAIT:?}", out.len()),
        }
    }
    out
}

/// Reads every event from position 1 up to the current head.
pub async fn read_all(log: &dyn EventLog) -> Vec<StoredEvent> {
    let head = log.head().await.unwrap_or_else(|e| panic!("head: {e}"));
    let mut stream = log
        .subscribe(0, None)
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let mut out = Vec::new();
    while out.last().is_none_or(|e: &StoredEvent| e.position < head) {
        out.extend(take_events(&mut stream, 1).await);
    }
    out
}

/// An [`EventLog`] wrapper whose appends fail with [`LogError::Unavailable`] while
/// [`FlakyLog::set_failing`] is on; reads pass through. For publisher tests.
pub struct FlakyLog {
    inner: Arc<dyn EventLog>,
    failing: AtomicBool,
    failed_appends: AtomicU64,
}

impl FlakyLog {
    /// Wraps `inner`, initially healthy.
    pub fn new(inner: Arc<dyn EventLog>) -> Arc<FlakyLog> {
        Arc::new(FlakyLog {
            inner,
            failing: AtomicBool::new(false),
            failed_appends: AtomicU64::new(0),
        })
    }

    /// Turns failures on or off.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// How many append calls were refused so far.
    pub fn failed_appends(&self) -> u64 {
        self.failed_appends.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), LogError> {
        if self.failing.load(Ordering::SeqCst) {
            self.failed_appends.fetch_add(1, Ordering::SeqCst);
            return Err(LogError::Unavailable(
                "FlakyLog is failing on purpose".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl EventLog for FlakyLog {
    async fn append(&self, event: &Envelope) -> Result<Appended, LogError> {
        self.check()?;
        self.inner.append(event).await
    }

    async fn append_batch(&self, events: &[Envelope]) -> Result<Vec<Appended>, LogError> {
        self.check()?;
        self.inner.append_batch(events).await
    }

    async fn subscribe(
        &self,
        after: Position,
        filter: Option<Category>,
    ) -> Result<EventStream, LogError> {
        self.inner.subscribe(after, filter).await
    }

    async fn head(&self) -> Result<Position, LogError> {
        self.inner.head().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// `(position, event id)` of what the suite has stored so far, in log order.
type Model = Vec<(Position, Uuid)>;

fn ids_of(events: &[StoredEvent]) -> Vec<(Position, Uuid)> {
    events.iter().map(|e| (e.position, e.envelope.id)).collect()
}

async fn append_ok(log: &dyn EventLog, e: &Envelope) -> Appended {
    log.append(e)
        .await
        .unwrap_or_else(|err| panic!("append {}: {err}", e.id))
}

async fn subscribe_ok(
    log: &dyn EventLog,
    after: Position,
    filter: Option<Category>,
) -> EventStream {
    log.subscribe(after, filter)
        .await
        .unwrap_or_else(|e| panic!("subscribe({after}, {filter:?}): {e}"))
}

async fn head_ok(log: &dyn EventLog) -> Position {
    log.head().await.unwrap_or_else(|e| panic!("head: {e}"))
}

/// Runs every conformance check, in order, against the harness's log.
pub async fn run_conformance(h: &mut impl Harness) {
    let log = h.open().await;
    let mut model: Model = Vec::new();

    empty_log_has_head_zero(&*log).await;
    appends_get_increasing_positions(&*log, &mut model).await;
    duplicate_append_returns_original_position(&*log, &model).await;
    batch_append_keeps_order_and_dedupes(&*log, &mut model).await;
    subscribe_after_yields_later_events_then_tails(&*log, &mut model).await;
    category_filter_yields_only_that_category(&*log, &mut model).await;
    caught_up_subscription_tails(&*log, &mut model).await;

    let log = h.restart().await;
    restart_loses_nothing_and_keeps_positions(&*log, &mut model).await;
}

/// A fresh log reports head 0 and a subscription from 0 waits for the first append.
pub async fn empty_log_has_head_zero(log: &dyn EventLog) {
    assert_eq!(head_ok(log).await, 0, "an empty log has head 0");
}

/// Positions are strictly increasing and `head` is the newest one.
pub async fn appends_get_increasing_positions(log: &dyn EventLog, model: &mut Model) {
    let mut stream = subscribe_ok(log, 0, None).await;
    let events = [
        sample_usage_event("acc_a", 1),
        sample_request_event(200),
        sample_admin_event("key.create"),
        sample_usage_event("acc_b", 2),
    ];
    let mut last = model.last().map_or(0, |m| m.0);
    for e in &events {
        let a = append_ok(log, e).await;
        assert!(!a.duplicate, "a new id is not a duplicate");
        assert!(a.position > last, "position {} after {last}", a.position);
        last = a.position;
        model.push((a.position, e.id));
    }
    assert_eq!(head_ok(log).await, last, "head is the newest position");
    // A subscription opened on the empty log sees the appends, in order.
    let got = take_events(&mut stream, events.len()).await;
    assert_eq!(ids_of(&got), *model);
    assert_eq!(
        got[1].envelope, events[1],
        "the envelope round-trips unchanged"
    );
}

/// Re-appending a stored id returns the original position, flags the duplicate and
/// stores nothing.
pub async fn duplicate_append_returns_original_position(log: &dyn EventLog, model: &Model) {
    let head = head_ok(log).await;
    let (position, id) = model[1];
    let mut again = sample_request_event(200);
    again.id = id;
    let a = append_ok(log, &again).await;
    assert_eq!(
        a,
        Appended {
            position,
            duplicate: true
        },
        "a duplicate id returns the original position"
    );
    assert_eq!(head_ok(log).await, head, "a duplicate stores nothing");
    let stored = read_all(log).await;
    assert_eq!(ids_of(&stored), *model, "the duplicate is not in the log");
}

/// A batch appends in order, one result per input, and dedupes both against the log
/// and inside the batch.
pub async fn batch_append_keeps_order_and_dedupes(log: &dyn EventLog, model: &mut Model) {
    let a = sample_usage_event("acc_a", 10);
    let b = sample_admin_event("account.add");
    let mut old = sample_request_event(500);
    old.id = model[0].1;
    let batch = vec![a.clone(), b.clone(), a.clone(), old];
    let out = log
        .append_batch(&batch)
        .await
        .unwrap_or_else(|e| panic!("append_batch: {e}"));
    assert_eq!(out.len(), batch.len(), "one result per input");
    let last = model.last().map_or(0, |m| m.0);
    assert!(!out[0].duplicate && !out[1].duplicate, "new ids are stored");
    assert!(out[0].position > last && out[1].position > out[0].position);
    assert_eq!(
        out[2],
        Appended {
            position: out[0].position,
            duplicate: true
        },
        "a duplicate inside the batch returns the first copy's position"
    );
    assert_eq!(
        out[3],
        Appended {
            position: model[0].0,
            duplicate: true
        },
        "a batch entry already in the log returns its original position"
    );
    model.push((out[0].position, a.id));
    model.push((out[1].position, b.id));
    assert_eq!(head_ok(log).await, out[1].position);
    assert_eq!(ids_of(&read_all(log).await), *model);

    let empty = log
        .append_batch(&[])
        .await
        .unwrap_or_else(|e| panic!("empty append_batch: {e}"));
    assert!(empty.is_empty(), "an empty batch appends nothing");
}

/// `subscribe(after)` yields exactly the events after `after`, in order, then the
/// events appended later.
pub async fn subscribe_after_yields_later_events_then_tails(log: &dyn EventLog, model: &mut Model) {
    let after = model[2].0;
    let mut stream = subscribe_ok(log, after, None).await;
    let expected: Model = model.iter().filter(|m| m.0 > after).copied().collect();
    let got = take_events(&mut stream, expected.len()).await;
    assert_eq!(ids_of(&got), expected, "exactly the later events, in order");

    let new = [
        sample_usage_event("acc_c", 3),
        sample_admin_event("key.revoke"),
    ];
    for e in &new {
        let a = append_ok(log, e).await;
        model.push((a.position, e.id));
    }
    let tailed = take_events(&mut stream, new.len()).await;
    assert_eq!(
        ids_of(&tailed),
        model[model.len() - new.len()..],
        "then the newly appended ones, in order, with nothing in between"
    );
}

/// A category filter yields only that category, in order, and tails it.
pub async fn category_filter_yields_only_that_category(log: &dyn EventLog, model: &mut Model) {
    let all = read_all(log).await;
    let usage: Model = all
        .iter()
        .filter(|e| e.envelope.category() == Category::Usage)
        .map(|e| (e.position, e.envelope.id))
        .collect();
    assert!(usage.len() >= 2, "the suite stored several usage events");
    let mut stream = subscribe_ok(log, 0, Some(Category::Usage)).await;
    let got = take_events(&mut stream, usage.len()).await;
    assert_eq!(ids_of(&got), usage, "only usage events, in order");

    // A non-matching append is skipped: the next item is the matching one after it.
    let other = sample_admin_event("key.update");
    let want = sample_usage_event("acc_d", 4);
    let a = append_ok(log, &other).await;
    model.push((a.position, other.id));
    let b = append_ok(log, &want).await;
    model.push((b.position, want.id));
    let tailed = take_events(&mut stream, 1).await;
    assert_eq!(ids_of(&tailed), vec![(b.position, want.id)]);

    // Filtering from the middle works too.
    let after = usage[0].0;
    let mut stream = subscribe_ok(log, after, Some(Category::Usage)).await;
    let got = take_events(&mut stream, usage.len()).await;
    let mut expected: Model = usage[1..].to_vec();
    expected.push((b.position, want.id));
    assert_eq!(ids_of(&got), expected);
}

/// A subscription starting at the head yields nothing old, then the next append.
pub async fn caught_up_subscription_tails(log: &dyn EventLog, model: &mut Model) {
    let head = head_ok(log).await;
    let mut stream = subscribe_ok(log, head, None).await;
    let e = sample_usage_event("acc_e", 5);
    let a = append_ok(log, &e).await;
    model.push((a.position, e.id));
    let got = take_events(&mut stream, 1).await;
    assert_eq!(
        ids_of(&got),
        vec![(a.position, e.id)],
        "no replay of the head"
    );
}

/// After a restart every event is still there at the same position, a duplicate is
/// still recognised, and new appends continue after the old head.
pub async fn restart_loses_nothing_and_keeps_positions(log: &dyn EventLog, model: &mut Model) {
    let last = model.last().map_or(0, |m| m.0);
    assert_eq!(head_ok(log).await, last, "head survives the restart");
    let stored = read_all(log).await;
    assert_eq!(ids_of(&stored), *model, "nothing lost, positions stable");
    let ids: HashSet<Uuid> = stored.iter().map(|e| e.envelope.id).collect();
    assert_eq!(ids.len(), stored.len(), "no event stored twice");

    let (position, id) = model[0];
    let mut again = sample_usage_event("acc_a", 1);
    again.id = id;
    let a = append_ok(log, &again).await;
    assert_eq!(
        a,
        Appended {
            position,
            duplicate: true
        },
        "a duplicate is still recognised after the restart"
    );

    let mut stream = subscribe_ok(log, last, None).await;
    let e = sample_admin_event("relay.restarted");
    let a = append_ok(log, &e).await;
    assert!(a.position > last, "new appends continue after the old head");
    model.push((a.position, e.id));
    let got = take_events(&mut stream, 1).await;
    assert_eq!(ids_of(&got), vec![(a.position, e.id)]);
}

//! The publisher: how the relay gets events into the log without ever waiting on it
//! and without ever losing one.
//!
//! The client path calls [`Publisher::admit`] before accepting a request and
//! [`Publisher::publish`] for every event it produces. `publish` only pushes onto an
//! in-memory queue; one background task drains the queue in batches with
//! [`EventLog::append_batch`]. Memory stays bounded because `admit` refuses new
//! requests once the queue holds `queue_capacity` events.
//!
//! When an append fails (the log is unreachable or slow), the batch goes to a local
//! durable spool: a SQLite file whose rows are keyed by event id, so spooling the same
//! event twice is harmless. While the spool holds anything, new events go to the spool
//! too, behind the older ones, so the log receives events in publish order. The task
//! replays the spool with exponential backoff and deletes a row only after the log
//! acknowledged it; replays reuse the event ids, so an append that succeeded but whose
//! acknowledgement was lost is deduplicated by the log. If the spool reaches its size
//! limit, `admit` refuses new requests: refusing service is recoverable, losing
//! billing data is not.
//!
//! On shutdown the task stops admitting, waits until every [`Admission`] is dropped,
//! drains the queue into the log (or the spool when the log is down) and ends.
//! Events left in the spool are replayed by the next start.
//!
//! Before an event enters the queue it is written to the [`Journal`], synchronously:
//! the memory queue is no longer the only copy, so a crash of the process loses
//! nothing that was published. The worker reports to the journal how far the log or
//! the spool holds the events; a restart republishes what follows (ids make that
//! idempotent) and records attempts that never ended as usage of completeness
//! `unknown`. While the journal cannot be written, `admit` refuses new requests.

use crate::journal::{AttemptStart, Fsync, Journal, JournalConfig, JournalStats};
use crate::{EventLog, LogError};
use schema::Envelope;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Publisher settings. [`PublisherConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The spool file, e.g. `DATA_DIR/spool.db`. Created if missing.
    pub spool_path: PathBuf,
    /// Events that may wait in memory before [`Publisher::admit`] refuses new
    /// requests. Default 10 000.
    pub queue_capacity: u64,
    /// Events per `append_batch` call and per spool transaction. Default 256.
    pub batch_size: usize,
    /// Events the spool may hold before `admit` refuses. Default 1 000 000.
    pub spool_max_events: u64,
    /// Payload bytes the spool may hold before `admit` refuses. Default 1 GiB.
    pub spool_max_bytes: u64,
    /// How long one append may take before it counts as failed and the batch is
    /// spooled. Default 10 s. (A timed-out append may still have been stored; the
    /// replay then comes back as a duplicate, which is why the log's deduplication
    /// window must be longer than the retry horizon.)
    pub append_timeout: Duration,
    /// First delay before replaying the spool after a failure. Default 100 ms.
    pub retry_initial: Duration,
    /// Longest delay between replay attempts. Default 5 s.
    pub retry_max: Duration,
    /// How long the first event of a batch may wait for company before the batch is
    /// appended. A few milliseconds let events of concurrent requests share one append
    /// (one transaction and fsync) instead of one each. Default 2 ms; zero disables.
    pub linger: Duration,
    /// The journal every event is written to first. Default: a `journal` directory
    /// next to the spool, synced every 100 ms.
    pub journal: JournalConfig,
}

impl PublisherConfig {
    /// The defaults, spooling to `spool_path`.
    pub fn new(spool_path: impl Into<PathBuf>) -> Self {
        let spool_path: PathBuf = spool_path.into();
        let journal_dir = spool_path.with_file_name("journal");
        Self {
            journal: JournalConfig::new(journal_dir),
            spool_path,
            queue_capacity: 10_000,
            batch_size: 256,
            spool_max_events: 1_000_000,
            spool_max_bytes: 1 << 30,
            append_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            linger: Duration::from_millis(2),
        }
    }
}

/// Why [`Publisher::admit`] refused a request. The relay answers with an overload
/// error rather than accept work whose events might be lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Backpressure {
    /// Too many events are waiting in memory for the log.
    #[error("event queue is full ({depth} of {capacity} events waiting)")]
    QueueFull {
        /// Events waiting.
        depth: u64,
        /// The configured limit.
        capacity: u64,
    },
    /// The log has been unreachable long enough to fill the local spool.
    #[error("event spool is full ({events} events, {bytes} bytes): the event log is unreachable")]
    SpoolFull {
        /// Events in the spool.
        events: u64,
        /// Payload bytes in the spool.
        bytes: u64,
    },
    /// The relay is shutting down.
    #[error("the relay is shutting down")]
    ShuttingDown,
    /// The journal cannot be written (e.g. the disk is full): events of a new request
    /// would exist in memory only.
    #[error("the event journal cannot be written")]
    JournalFailing,
}

/// Errors starting the publisher.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    /// The spool file could not be opened or read.
    #[error("cannot open the event spool {path}: {source}")]
    Spool {
        /// The spool file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// The journal could not be opened or read.
    #[error("cannot open the event journal {path}: {source}")]
    Journal {
        /// The journal directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The spool's directory could not be created.
    #[error("cannot create the directory for the event spool {path}: {source}")]
    Directory {
        /// The spool file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Events published but not yet appended or spooled.
    pub queue_depth: u64,
    /// Events in the spool, waiting for the log.
    pub spool_events: u64,
    /// Payload bytes in the spool.
    pub spool_bytes: u64,
    /// Events the log acknowledged (new or duplicate).
    pub published_total: u64,
    /// Of those, events the log already had (a retry whose first attempt had landed).
    pub duplicates_total: u64,
    /// Events written to the spool.
    pub spooled_total: u64,
    /// Failed or timed-out `append_batch` calls.
    pub append_errors_total: u64,
    /// Failed spool reads or writes.
    pub spool_errors_total: u64,
    /// Events the log refused for good, kept aside in the spool file's quarantine.
    pub quarantine_events: u64,
    /// The journal's counters.
    pub journal: JournalStats,
}

/// Handle to the publishing task. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

/// Proof that a request was admitted. Hold it until the request has published its
/// last event: the publisher's task does not finish shutting down while any admission
/// is alive, so events of requests still in flight at shutdown reach the log too.
#[must_use = "hold the admission until the request has published its events"]
pub struct Admission {
    _sender: mpsc::UnboundedSender<Queued>,
}

/// An event with its journal sequence number.
type Queued = (u64, Envelope);

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admission")
    }
}

#[derive(Default)]
struct Counters {
    queue_depth: AtomicU64,
    spool_events: AtomicU64,
    spool_bytes: AtomicU64,
    published: AtomicU64,
    duplicates: AtomicU64,
    spooled: AtomicU64,
    append_errors: AtomicU64,
    spool_errors: AtomicU64,
    quarantined: AtomicU64,
}

struct Shared {
    queue_capacity: u64,
    spool_max_events: u64,
    spool_max_bytes: u64,
    /// The strong sender until shutdown; taken then so the channel can close once the
    /// last [`Admission`] is dropped.
    sender: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
    /// Used by `publish`, so that publisher handles alone do not keep the task alive.
    weak: mpsc::WeakUnboundedSender<Queued>,
    journal: Arc<Journal>,
    counters: Counters,
    /// Bumped whenever the worker made progress; `wait_idle` listens.
    progress: watch::Sender<()>,
    spool: Spool,
    tracker: TaskTracker,
}

impl Publisher {
    /// Opens the spool and starts the publishing task on `tracker`. Events already in
    /// the spool (from a previous run) are replayed first. Cancelling `shutdown` makes
    /// the task drain and finish.
    pub async fn start(
        log: Arc<dyn EventLog>,
        config: PublisherConfig,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Publisher, PublisherError> {
        let (spool, events, bytes) = Spool::open(&config.spool_path).await?;
        let journal_err = |source| PublisherError::Journal {
            path: config.journal.dir.clone(),
            source,
        };
        let (journal, recovered) = Journal::open(&config.journal).map_err(journal_err)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Counters::default();
        counters.spool_events.store(events, Ordering::SeqCst);
        counters.spool_bytes.store(bytes, Ordering::SeqCst);
        if events > 0 {
            tracing::warn!(
                events,
                bytes,
                "event spool holds events from a previous run; replaying"
            );
        }
        let shared = Arc::new(Shared {
            queue_capacity: config.queue_capacity,
            spool_max_events: config.spool_max_events,
            spool_max_bytes: config.spool_max_bytes,
            weak: tx.downgrade(),
            sender: Mutex::new(Some(tx)),
            counters,
            progress: watch::Sender::new(()),
            spool: spool.clone(),
            tracker: tracker.clone(),
            journal: journal.clone(),
        });
        let publisher = Publisher { shared };
        if !recovered.events.is_empty() || !recovered.open_attempts.is_empty() {
            tracing::warn!(
                events = recovered.events.len(),
                unfinished_attempts = recovered.open_attempts.len(),
                corrupt_records = recovered.corrupt_records,
                "the journal holds events the log may not have, or attempts that never ended; republishing"
            );
        }
        let events = recovered.into_events(chrono::Utc::now());
        if !events.is_empty() {
            publisher.publish_all(events);
        }
        journal.retire_recovered();
        let shared = publisher.shared.clone();
        let worker = Worker {
            backoff: config.retry_initial,
            next_retry: Instant::now(),
            log,
            shared: shared.clone(),
            rx,
            spool,
            config,
            pending: Vec::new(),
            pending_seq: 0,
            stuck: false,
            pending_since: Instant::now(),
        };
        tracker.spawn(worker.run(shutdown));
        Ok(publisher)
    }

    /// Decides whether the relay may accept one more request. Refuses while the
    /// in-memory queue or the spool is at capacity, and after shutdown began.
    pub fn admit(&self) -> Result<Admission, Backpressure> {
        let c = &self.shared.counters;
        let depth = c.queue_depth.load(Ordering::SeqCst);
        if depth >= self.shared.queue_capacity {
            return Err(Backpressure::QueueFull {
                depth,
                capacity: self.shared.queue_capacity,
            });
        }
        let events = c.spool_events.load(Ordering::SeqCst);
        let bytes = c.spool_bytes.load(Ordering::SeqCst);
        if events >= self.shared.spool_max_events || bytes >= self.shared.spool_max_bytes {
            return Err(Backpressure::SpoolFull { events, bytes });
        }
        if self.shared.journal.failing() && !self.shared.journal.probe() {
            return Err(Backpressure::JournalFailing);
        }
        let sender = self
            .shared
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match sender {
            Some(sender) => Ok(Admission { _sender: sender }),
            None => Err(Backpressure::ShuttingDown),
        }
    }

    /// Writes an event to the journal and queues it for the log. Never fails and
    /// never waits on the log: admission control bounds the queue. Returns the
    /// event's journal sequence number, for [`Publisher::durable`]. After the task
    /// has finished (late in shutdown) the event is written straight to the spool, to
    /// be replayed by the next start.
    pub fn publish(&self, envelope: Envelope) -> u64 {
        self.publish_all(std::iter::once(envelope))
    }

    /// [`Publisher::publish`] for several events, written to the journal at once.
    /// Returns the last sequence number.
    pub fn publish_all(&self, events: impl IntoIterator<Item = Envelope>) -> u64 {
        let c = &self.shared.counters;
        let tx = self.shared.weak.upgrade();
        let mut late = Vec::new();
        let written = self.shared.journal.append_events(events, |seq, envelope| {
            c.queue_depth.fetch_add(1, Ordering::SeqCst);
            let rejected = match &tx {
                Some(tx) => tx.send((seq, envelope)).err().map(|e| e.0 .1),
                None => Some(envelope),
            };
            late.extend(rejected);
        });
        for envelope in late {
            self.spool_directly(envelope);
        }
        // On an error the events live in memory only, and new requests are refused
        // until the journal is writable again.
        written.unwrap_or_default()
    }

    /// Journals an upstream attempt before it is sent. An error means the journal
    /// cannot be written; the attempt should not be sent.
    pub fn attempt_started(&self, attempt: &AttemptStart) -> std::io::Result<u64> {
        self.shared.journal.attempt_started(attempt)
    }

    /// Waits until the event with journal sequence `seq` is as durable as the journal
    /// is configured to make it: ready at once unless it syncs every record.
    pub fn durable(&self, seq: u64) -> Option<impl std::future::Future<Output = ()> + Send> {
        self.shared
            .journal
            .syncs_each_record()
            .then(|| self.shared.journal.durable(seq))
    }

    /// The journal's sync policy.
    pub fn journal_fsync(&self) -> Fsync {
        self.shared.journal.fsync()
    }

    fn spool_directly(&self, envelope: Envelope) {
        let shared = self.shared.clone();
        let id = envelope.id;
        let task = async move {
            let c = &shared.counters;
            match shared.spool.insert(std::slice::from_ref(&envelope)).await {
                Ok(added) => {
                    c.spool_events.fetch_add(added.events, Ordering::SeqCst);
                    c.spool_bytes.fetch_add(added.bytes, Ordering::SeqCst);
                    c.spooled.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    c.spool_errors.fetch_add(1, Ordering::SeqCst);
                    tracing::error!(event_id = %id, error = %e, "event published after shutdown could not be spooled and is lost");
                }
            }
            c.queue_depth.fetch_sub(1, Ordering::SeqCst);
            shared.progress.send_replace(());
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            self.shared.tracker.spawn(task);
        } else {
            self.shared
                .counters
                .queue_depth
                .fetch_sub(1, Ordering::SeqCst);
            tracing::error!(event_id = %id, "event published outside a runtime after shutdown is lost");
        }
    }

    /// Current counters.
    pub fn stats(&self) -> PublisherStats {
        let c = &self.shared.counters;
        PublisherStats {
            queue_depth: c.queue_depth.load(Ordering::SeqCst),
            spool_events: c.spool_events.load(Ordering::SeqCst),
            spool_bytes: c.spool_bytes.load(Ordering::SeqCst),
            published_total: c.published.load(Ordering::SeqCst),
            duplicates_total: c.duplicates.load(Ordering::SeqCst),
            spooled_total: c.spooled.load(Ordering::SeqCst),
            append_errors_total: c.append_errors.load(Ordering::SeqCst),
            spool_errors_total: c.spool_errors.load(Ordering::SeqCst),
            quarantine_events: c.quarantined.load(Ordering::SeqCst),
            journal: self.shared.journal.stats(),
        }
    }

    /// Waits until nothing is queued or spooled, i.e. every event published so far is
    /// in the log. Does not return while the log is unreachable; wrap it in a timeout.
    pub async fn wait_idle(&self) {
        let mut progress = self.shared.progress.subscribe();
        loop {
            let s = self.stats();
            if s.queue_depth == 0 && s.spool_events == 0 {
                return;
            }
            // The sender lives in `Shared`, so this only fails if we are the last
            // handle, which cannot be since we hold one.
            if progress.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The background task.
struct Worker {
    log: Arc<dyn EventLog>,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Queued>,
    spool: Spool,
    config: PublisherConfig,
    /// Events taken off the queue and not yet appended or spooled.
    pending: Vec<Envelope>,
    /// Journal sequence number of the newest event in `pending`.
    pending_seq: u64,
    /// Set when `pending` could be neither appended nor spooled; retried at
    /// `next_retry`.
    stuck: bool,
    backoff: Duration,
    next_retry: Instant,
    /// When the oldest event in `pending` was taken off the queue.
    pending_since: Instant,
}

impl Worker {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut cancelled = false;
        let mut open = true;
        loop {
            let was_empty = self.pending.is_empty();
            if open {
                open = self.fill_pending();
            }
            if was_empty && !self.pending.is_empty() {
                self.pending_since = Instant::now();
            }
            let now = Instant::now();
            let retry_due = now >= self.next_retry;
            let linger_until = self.pending_since + self.config.linger;
            let lingering = open
                && !cancelled
                && !self.stuck
                && self.pending.len() < self.config.batch_size
                && now < linger_until;
            if !self.pending.is_empty() && !lingering && (!self.stuck || retry_due) {
                self.flush_pending().await;
                continue;
            }
            if self.spool_events() > 0 && retry_due {
                self.replay_batch().await;
                continue;
            }
            if !open && self.pending.is_empty() {
                break;
            }
            let waiting_for_retry = self.stuck || self.spool_events() > 0;
            let room = self.pending.len() < self.config.batch_size;
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if !cancelled => {
                    cancelled = true;
                    // Stop admitting; the channel closes when the last admission and
                    // in-flight `publish` are done.
                    self.shared
                        .sender
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take();
                }
                msg = self.rx.recv(), if open && room => match msg {
                    Some((seq, e)) => {
                        if self.pending.is_empty() {
                            self.pending_since = Instant::now();
                        }
                        self.pending.push(e);
                        self.pending_seq = seq;
                    }
                    None => open = false,
                },
                () = tokio::time::sleep_until(linger_until), if lingering && !self.pending.is_empty() => {}
                () = tokio::time::sleep_until(self.next_retry), if waiting_for_retry => {}
            }
        }
        // The queue is drained. Try once more to empty the spool so a clean shutdown
        // with a reachable log leaves nothing behind.
        while self.spool_events() > 0 {
            if !self.replay_batch().await {
                tracing::warn!(
                    events = self.spool_events(),
                    "event log unreachable at shutdown; events stay in the spool for the next start"
                );
                break;
            }
        }
        // Everything is in the log or the spool: a last marker lets the next start
        // skip it, and a last sync makes it durable.
        self.shared.journal.probe();
        self.shared.journal.close();
        self.shared.progress.send_replace(());
    }

    /// Moves queued events into `pending` without waiting, up to one batch. Returns
    /// false once the channel is closed and empty.
    fn fill_pending(&mut self) -> bool {
        while self.pending.len() < self.config.batch_size {
            match self.rx.try_recv() {
                Ok((seq, e)) => {
                    self.pending.push(e);
                    self.pending_seq = seq;
                }
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    fn spool_events(&self) -> u64 {
        self.shared.counters.spool_events.load(Ordering::SeqCst)
    }

    fn schedule_retry(&mut self) {
        self.next_retry = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.config.retry_max);
    }

    fn recovered(&mut self) {
        self.backoff = self.config.retry_initial;
        self.next_retry = Instant::now();
    }

    async fn append(&self, events: &[Envelope]) -> Result<(), LogError> {
        let results =
            tokio::time::timeout(self.config.append_timeout, self.log.append_batch(events))
                .await
                .map_err(|_| {
                    LogError::Unavailable(format!(
                        "append of {} events timed out after {:?}",
                        events.len(),
                        self.config.append_timeout
                    ))
                })??;
        let c = &self.shared.counters;
        let duplicates = results.iter().filter(|a| a.duplicate).count();
        c.published
            .fetch_add(len_u64(events.len()), Ordering::SeqCst);
        c.duplicates
            .fetch_add(len_u64(duplicates), Ordering::SeqCst);
        Ok(())
    }

    fn append_failed(&mut self, n: usize, e: &LogError) {
        self.shared
            .counters
            .append_errors
            .fetch_add(1, Ordering::SeqCst);
        tracing::warn!(events = n, error = %e, backend = self.log.backend(), "event log append failed; spooling");
        self.schedule_retry();
    }

    /// Appends `pending`, or spools it when the spool is in use or the append fails.
    async fn flush_pending(&mut self) {
        let seq = self.pending_seq;
        self.flush_pending_batch().await;
        if self.pending.is_empty() {
            // In the log, the spool or the quarantine: the journal may forget them.
            self.shared.journal.handled(seq);
            if self.rx.is_empty() {
                // Nothing follows to carry the marker: write it now.
                self.shared.journal.mark();
            }
        }
    }

    async fn flush_pending_batch(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        let n = len_u64(batch.len());
        let c = &self.shared.counters;
        let mut batch = batch;
        if self.spool_events() == 0 {
            match self.append(&batch).await {
                Ok(()) => {
                    c.queue_depth.fetch_sub(n, Ordering::SeqCst);
                    self.stuck = false;
                    self.recovered();
                    self.shared.progress.send_replace(());
                    return;
                }
                Err(LogError::Rejected(reason)) => {
                    // One event is poison: append them one by one, set the refused
                    // ones aside, and let the rest go on as usual.
                    let (rest, done) = self.isolate(batch, &reason).await;
                    self.shared
                        .counters
                        .queue_depth
                        .fetch_sub(len_u64(done), Ordering::SeqCst);
                    if rest.is_empty() {
                        self.stuck = false;
                        self.recovered();
                        self.shared.progress.send_replace(());
                        return;
                    }
                    batch = rest;
                }
                Err(e) => self.append_failed(batch.len(), &e),
            }
        }
        let n = len_u64(batch.len());
        match self.spool.insert(&batch).await {
            Ok(added) => {
                let c = &self.shared.counters;
                c.spool_events.fetch_add(added.events, Ordering::SeqCst);
                c.spool_bytes.fetch_add(added.bytes, Ordering::SeqCst);
                c.spooled.fetch_add(n, Ordering::SeqCst);
                c.queue_depth.fetch_sub(n, Ordering::SeqCst);
                self.stuck = false;
            }
            Err(e) => {
                self.shared
                    .counters
                    .spool_errors
                    .fetch_add(1, Ordering::SeqCst);
                tracing::error!(events = n, error = %e, "cannot write the event spool; keeping events in memory and retrying");
                self.pending = batch;
                self.stuck = true;
                self.schedule_retry();
            }
        }
        self.shared.progress.send_replace(());
    }

    /// Appends the oldest spooled events and deletes them once acknowledged. Returns
    /// whether it made progress.
    async fn replay_batch(&mut self) -> bool {
        let rows = match self.spool.oldest(self.config.batch_size).await {
            Ok(rows) => rows,
            Err(e) => {
                self.spool_failed(&e);
                return false;
            }
        };
        if rows.is_empty() {
            // Counters drifted (e.g. a row deleted by hand); resynchronise.
            let c = &self.shared.counters;
            c.spool_events.store(0, Ordering::SeqCst);
            c.spool_bytes.store(0, Ordering::SeqCst);
            self.shared.progress.send_replace(());
            return true;
        }
        let mut events = Vec::with_capacity(rows.len());
        let mut undecodable = Vec::new();
        for row in &rows {
            match Envelope::from_json(row.payload.as_bytes()) {
                Ok(e) => events.push(e),
                Err(e) => {
                    tracing::error!(event_id = %row.id, error = %e, "undecodable spool row; moving it aside");
                    undecodable.push(row.id.clone());
                }
            }
        }
        if !events.is_empty() {
            match self.append(&events).await {
                Ok(()) => {}
                Err(LogError::Rejected(reason)) => {
                    let (rest, _) = self.isolate(events, &reason).await;
                    if !rest.is_empty() {
                        // The rest could not be appended now: they stay spooled.
                        return false;
                    }
                }
                Err(e) => {
                    self.append_failed(events.len(), &e);
                    return false;
                }
            }
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        if let Err(e) = self.spool.remove(&ids, &undecodable).await {
            // The events are in the log; replaying them again yields duplicates.
            self.spool_failed(&e);
            return false;
        }
        let c = &self.shared.counters;
        let bytes: u64 = rows.iter().map(|r| r.bytes).sum();
        c.spool_events
            .fetch_sub(len_u64(rows.len()), Ordering::SeqCst);
        c.spool_bytes.fetch_sub(bytes, Ordering::SeqCst);
        self.recovered();
        self.shared.progress.send_replace(());
        true
    }

    /// Appends `events` one at a time after the log refused a batch: refused events go
    /// to the quarantine (they never block the events behind them again), appended
    /// ones are done. Returns the events that still wait (the log became unreachable)
    /// and how many are done (appended or quarantined).
    async fn isolate(
        &mut self,
        events: Vec<Envelope>,
        first_reason: &str,
    ) -> (Vec<Envelope>, usize) {
        tracing::error!(events = events.len(), reason = %first_reason, "the event log refused a batch; isolating the refused event");
        let mut done = 0;
        let mut rest = Vec::new();
        let mut unreachable = false;
        for event in events {
            if unreachable {
                rest.push(event);
                continue;
            }
            match self.append(std::slice::from_ref(&event)).await {
                Ok(()) => done += 1,
                Err(LogError::Rejected(reason)) => {
                    match self.spool.quarantine(&event, &reason).await {
                        Ok(()) => {
                            tracing::error!(event_id = %event.id, event_type = event.event.type_name(), reason = %reason, "event quarantined: the log refuses it for good");
                            self.shared
                                .counters
                                .quarantined
                                .fetch_add(1, Ordering::SeqCst);
                            done += 1;
                        }
                        Err(e) => {
                            tracing::error!(event_id = %event.id, error = %e, "cannot quarantine a refused event; keeping it");
                            unreachable = true;
                            rest.push(event);
                        }
                    }
                }
                Err(e) => {
                    self.append_failed(1, &e);
                    unreachable = true;
                    rest.push(event);
                }
            }
        }
        (rest, done)
    }

    fn spool_failed(&mut self, e: &sqlx::Error) {
        self.shared
            .counters
            .spool_errors
            .fetch_add(1, Ordering::SeqCst);
        tracing::error!(error = %e, "event spool read failed");
        self.schedule_retry();
    }
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The durable spool: a SQLite file of events waiting for the log, in publish order.
#[derive(Clone)]
struct Spool {
    pool: SqlitePool,
}

struct SpoolRow {
    id: String,
    bytes: u64,
    payload: String,
}

/// What an insert added (rows already present are not counted).
struct Added {
    events: u64,
    bytes: u64,
}

const SPOOL_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spool (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT    NOT NULL UNIQUE,
    bytes   INTEGER NOT NULL,
    payload TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS spool_undecodable (
    id      TEXT PRIMARY KEY,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS spool_quarantine (
    id      TEXT PRIMARY KEY,
    reason  TEXT NOT NULL,
    payload TEXT NOT NULL
);
";

impl Spool {
    /// Opens the file and returns it with its current event and byte counts.
    async fn open(path: &Path) -> Result<(Spool, u64, u64), PublisherError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| PublisherError::Directory {
                path: path.to_owned(),
                source,
            })?;
        }
        let err = |source| PublisherError::Spool {
            path: path.to_owned(),
            source,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        // One connection: the worker is the only regular user.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(err)?;
        sqlx::raw_sql(SPOOL_SCHEMA)
            .execute(&pool)
            .await
            .map_err(err)?;
        let (events, bytes): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM spool")
                .fetch_one(&pool)
                .await
                .map_err(err)?;
        Ok((
            Spool { pool },
            u64::try_from(events).unwrap_or(0),
            u64::try_from(bytes).unwrap_or(0),
        ))
    }

    async fn insert(&self, events: &[Envelope]) -> Result<Added, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut added = Added {
            events: 0,
            bytes: 0,
        };
        for e in events {
            let payload = e.to_json().map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            let payload =
                String::from_utf8(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            let bytes = len_u64(payload.len());
            let done = sqlx::query(
                "INSERT INTO spool (id, bytes, payload) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(e.id.to_string())
            .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
            .bind(payload)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                added.events += 1;
                added.bytes += bytes;
            }
        }
        tx.commit().await?;
        Ok(added)
    }

    async fn oldest(&self, limit: usize) -> Result<Vec<SpoolRow>, sqlx::Error> {
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT id, bytes, payload FROM spool ORDER BY seq LIMIT ?1")
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, bytes, payload)| SpoolRow {
                id,
                bytes: u64::try_from(bytes).unwrap_or(0),
                payload,
            })
            .collect())
    }

    /// Deletes acknowledged rows and moves undecodable ones aside, in one transaction.
    /// Keeps an event the log refused for good, with the reason, for an operator.
    async fn quarantine(&self, event: &Envelope, reason: &str) -> Result<(), sqlx::Error> {
        let payload = event
            .to_json()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let payload = String::from_utf8(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO spool_quarantine (id, reason, payload) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(event.id.to_string())
        .bind(reason.chars().take(500).collect::<String>())
        .bind(payload)
        .execute(&self.pool)
        .await?;
        // A quarantined spool row leaves the spool.
        sqlx::query("DELETE FROM spool WHERE id = ?1")
            .bind(event.id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn remove(&self, ids: &[&str], undecodable: &[String]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for id in undecodable {
            sqlx::query(
                "INSERT INTO spool_undecodable (id, payload)
                 SELECT id, payload FROM spool WHERE id = ?1
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        for id in ids {
            sqlx::query("DELETE FROM spool WHERE id = ?1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}

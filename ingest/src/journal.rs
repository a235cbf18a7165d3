//! The journal: every event the relay publishes is written here, to a local
//! append-only file, before it goes anywhere else, so that a crash of the process
//! loses nothing the client was told about.
//!
//! A write is one `write(2)` of a few hundred bytes into the OS page cache, done on
//! the publishing task under a mutex: microseconds, never a network round trip. What
//! survives an OS crash depends on [`Fsync`]: with [`Fsync::Always`] a caller may wait
//! for `fdatasync` (group commit: one sync covers every record written before it);
//! with [`Fsync::Interval`] a background thread syncs on a timer, so an OS crash loses
//! at most that interval.
//!
//! Besides events, the journal holds *attempt starts*: an upstream attempt is written
//! before its request is sent upstream. An attempt is closed by its `usage.recorded`
//! event or by its request's `request.finished`. After a crash, [`Journal::open`]
//! returns the events the log may not have acknowledged and the attempts that started
//! and never closed; the publisher turns the latter into usage of completeness
//! `unknown`, so that nothing upstream may have billed is silently missing.
//!
//! The publisher reports which records the log (or the spool) holds with
//! [`Journal::handled`]; that position is written into the journal as a marker, so a
//! restart replays only what follows it (and, as event ids are idempotency keys, a
//! replayed event the log already had is a harmless duplicate). The journal is a
//! series of segment files; a full segment is closed (and synced by the sync thread,
//! never under the writers' lock), and deleted once everything in it is handled. Attempts still open when a segment closes are copied into the next,
//! so the newest segments always describe every open attempt.
//!
//! Record format: `len: u32 LE | crc32(kind ‖ payload): u32 LE | kind: u8 | payload`.
//! A torn or corrupt tail (an OS crash mid-write) ends the scan of its segment.

use chrono::{DateTime, Utc};
use schema::{
    AccountId, ApiKeyId, Completeness, Envelope, Event, Outcome, RequestFinished, TenantId,
    UsageRecorded,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// When the journal calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Never: the OS page cache only. A process crash loses nothing; an OS crash loses
    /// what the kernel had not yet written back (normally up to about 30 s).
    Never,
    /// A background thread syncs at this interval: an OS crash loses at most about
    /// one interval.
    Interval(Duration),
    /// Every record is synced before the request that wrote it completes (group
    /// commit). An OS crash loses nothing a client saw completed.
    Always,
}

impl Fsync {
    /// Parses `never`, `always` or a number of milliseconds (`0` means `always`).
    pub fn parse(s: &str) -> Result<Fsync, String> {
        match s.trim() {
            "never" | "off" => Ok(Fsync::Never),
            "always" | "0" => Ok(Fsync::Always),
            ms => ms
                .trim_end_matches("ms")
                .parse::<u64>()
                .map(|ms| Fsync::Interval(Duration::from_millis(ms)))
                .map_err(|_| {
                    format!("journal fsync must be never, always or milliseconds, not {s:?}")
                }),
        }
    }
}

/// Journal settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The directory of segment files, e.g. `DATA_DIR/journal`. Created if missing.
    pub dir: PathBuf,
    /// A segment is closed once it holds this many bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// When to sync. Default every 100 ms.
    pub fsync: Fsync,
}

impl JournalConfig {
    /// The defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            fsync: Fsync::Interval(Duration::from_millis(100)),
        }
    }
}

/// An upstream attempt, journalled before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptStart {
    /// The relay's request id.
    pub request_id: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// The account the attempt goes to.
    pub account: AccountId,
    /// The tenant billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// The relay key used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyId>,
    /// The requested model.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The route, e.g. `/v1/messages`.
    pub endpoint: String,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
}

impl AttemptStart {
    /// The usage event recorded for an attempt that started and never closed (the
    /// process died): the account and request are known, the tokens are not. Its id is
    /// derived from the request and attempt, so recovering twice yields one event.
    pub fn unknown_usage(&self, now: DateTime<Utc>) -> Envelope {
        let ev = UsageRecorded {
            account: self.account.clone(),
            attempt: self.attempt,
            model: self.model.clone(),
            status: 0,
            stream: self.stream,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_input_tokens: 0,
            cache_creation_5m_input_tokens: 0,
            cache_creation_1h_input_tokens: 0,
            server_tool_use: schema::ServerToolUse::default(),
            service_tier: None,
            speed: None,
            inference_geo: None,
            completeness: Completeness::Unknown,
        };
        let id = derived_id(&format!(
            "usage-unknown/{}/{}",
            self.request_id, self.attempt
        ));
        Envelope::new(id, now, Event::UsageRecorded(ev))
            .with_request(self.request_id.clone())
            .with_key(self.tenant.clone(), self.api_key.clone())
            .with_account(Some(self.account.clone()))
    }

    /// The `request.finished` recorded for a request cut short by the process dying.
    pub fn unfinished_request(&self, attempts: u32, now: DateTime<Utc>) -> Envelope {
        let latency_us =
            u64::try_from((now - self.started_at).num_microseconds().unwrap_or(0)).unwrap_or(0);
        let ev = RequestFinished {
            endpoint: self.endpoint.clone(),
            status: 0,
            outcome: Outcome::RelayError,
            model: Some(self.model.clone()),
            stream: self.stream,
            latency_us,
            ttfb_us: None,
            upstream_us: None,
            attempts,
            routing: None,
            error_type: Some("relay_restarted".to_owned()),
            upstream_request_id: None,
            rejected_by: None,
        };
        let id = derived_id(&format!("request-unfinished/{}", self.request_id));
        Envelope::new(id, now, Event::RequestFinished(ev))
            .with_request(self.request_id.clone())
            .with_key(self.tenant.clone(), self.api_key.clone())
            .with_account(Some(self.account.clone()))
    }
}

fn derived_id(name: &str) -> Uuid {
    // A fixed namespace for ids the journal derives.
    const NAMESPACE: Uuid = Uuid::from_u128(0x6a0e_5c1f_3b7d_4c2e_9f10_8d2a_4e6b_7c91);
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

/// What [`Journal::open`] found from an earlier run.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Events after the last handled marker, in journal order: the log may not have
    /// them.
    pub events: Vec<Envelope>,
    /// Attempts that started and never closed.
    pub open_attempts: Vec<AttemptStart>,
    /// Of the requests of `open_attempts`, those whose `request.finished` was never
    /// written.
    pub unfinished_requests: HashSet<String>,
    /// Requests whose last attempt ended (with usage) and which never finished: the
    /// process died between attempts. Their newest attempt, as an attempt start.
    pub ended_between_attempts: Vec<AttemptStart>,
    /// Records skipped because they were torn or corrupt.
    pub corrupt_records: u64,
}

impl Recovered {
    /// Everything to publish: the unacknowledged events, then an `unknown` usage event
    /// per open attempt and a `request.finished` per unfinished request.
    pub fn into_events(self, now: DateTime<Utc>) -> Vec<Envelope> {
        let mut out = self.events;
        let mut attempts: BTreeMap<&str, u32> = BTreeMap::new();
        for a in &self.open_attempts {
            let n = attempts.entry(a.request_id.as_str()).or_default();
            *n = (*n).max(a.attempt);
        }
        let mut finished = HashSet::new();
        for a in &self.open_attempts {
            out.push(a.unknown_usage(now));
            if self.unfinished_requests.contains(&a.request_id)
                && finished.insert(a.request_id.clone())
            {
                let n = attempts.get(a.request_id.as_str()).copied().unwrap_or(1);
                out.push(a.unfinished_request(n, now));
            }
        }
        for a in &self.ended_between_attempts {
            out.push(a.unfinished_request(a.attempt, now));
        }
        out
    }
}

const KIND_EVENT: u8 = 1;
const KIND_HANDLED: u8 = 2;
const KIND_ATTEMPT: u8 = 3;
/// Kind and sequence number: the smallest record body.
const MIN_BODY: usize = 9;
/// A record larger than this is corrupt (events are bounded far below it).
const MAX_RECORD: usize = 64 << 20;

/// Counters for `/metrics` and `/api/v1/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records written.
    pub records_total: u64,
    /// Bytes written.
    pub bytes_total: u64,
    /// Failed writes (e.g. disk full).
    pub write_errors_total: u64,
    /// `fdatasync` calls.
    pub syncs_total: u64,
    /// Segment files on disk.
    pub segments: u64,
    /// Attempts started and not yet closed.
    pub open_attempts: u64,
    /// Whether the last write failed.
    pub failing: bool,
}

/// The journal. Cheap to share behind an `Arc`.
pub struct Journal {
    inner: Mutex<Inner>,
    /// Highest sequence number the publisher reported handled.
    handled: AtomicU64,
    /// Highest sequence number written.
    written: AtomicU64,
    failing: AtomicBool,
    records: AtomicU64,
    bytes: AtomicU64,
    write_errors: AtomicU64,
    syncer: Option<Arc<Syncer>>,
    fsync: Fsync,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    /// The current segment's file.
    path: PathBuf,
    size: u64,
    next_seq: u64,
    /// The handled position last written as a marker.
    marker: u64,
    /// Closed segments with the last sequence number each holds, oldest first.
    closed: VecDeque<(PathBuf, u64)>,
    /// Directories of dead processes, recovered, with their locks held until deleted.
    orphans: Vec<(PathBuf, File)>,
    /// This process's lock on its directory.
    _lock: File,
    /// Open attempts, by (request, attempt), with their encoded record.
    open: HashMap<(String, u32), Vec<u8>>,
    buf: Vec<u8>,
}

/// The background `fdatasync` thread and what it has synced.
struct Syncer {
    state: Mutex<SyncState>,
    wake: Condvar,
    synced: watch::Sender<u64>,
    syncs: AtomicU64,
    always: bool,
}

struct SyncState {
    file: Option<File>,
    /// Segments rotated out and not yet synced: synced before the current one, off the
    /// writers' lock.
    retired: Vec<File>,
    written: u64,
    stop: bool,
}

impl Journal {
    /// Opens the journal in `config.dir`, reads what an earlier run left, and starts a
    /// new segment. Old segments stay until [`Journal::retire_recovered`] is called,
    /// once what [`Recovered`] holds has been written again.
    pub fn open(config: &JournalConfig) -> std::io::Result<(Arc<Journal>, Recovered)> {
        std::fs::create_dir_all(&config.dir)?;
        // Each process writes its own directory and holds an exclusive lock on it for
        // its lifetime; the kernel releases the lock when the process dies. A
        // directory whose lock can be taken belongs to a process that is gone: it is
        // recovered (and deleted by `retire_recovered`). One that cannot is live
        // (e.g. the server, while a CLI command runs) and is left alone.
        let mut scan = Scan::default();
        let mut orphans = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&config.dir)?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        for dir in dirs {
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("LOCK"))?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
            let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)?
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let first = name.strip_prefix("segment-")?.strip_suffix(".log")?;
                    Some((first.parse::<u64>().ok()?, e.path()))
                })
                .collect();
            segments.sort();
            scan.begin_run();
            for (_, path) in &segments {
                scan.segment(path)?;
            }
            orphans.push((dir, lock));
        }
        let recovered = scan.recovered();
        let own = config.dir.join(format!("p-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&own)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(own.join("LOCK"))?;
        lock.try_lock().map_err(std::io::Error::from)?;
        let next_seq = 1;
        let path = segment_path(&own, next_seq);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        sync_dir(&own);
        sync_dir(&config.dir);
        let syncer = match config.fsync {
            Fsync::Never => None,
            Fsync::Interval(every) => Some(Syncer::start(file.try_clone()?, Some(every), false)),
            Fsync::Always => Some(Syncer::start(file.try_clone()?, None, true)),
        };
        let journal = Journal {
            inner: Mutex::new(Inner {
                dir: own,
                segment_bytes: config.segment_bytes.max(4096),
                file,
                path,
                size: 0,
                next_seq,
                marker: 0,
                closed: VecDeque::new(),
                orphans,
                _lock: lock,
                open: HashMap::new(),
                buf: Vec::with_capacity(4096),
            }),
            handled: AtomicU64::new(0),
            written: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            syncer,
            fsync: config.fsync,
        };
        Ok((Arc::new(journal), recovered))
    }

    /// Deletes what earlier runs left. Call it once everything [`Journal::open`]
    /// recovered has been written again (and synced, when syncing).
    pub fn retire_recovered(&self) {
        if let Some(s) = &self.syncer {
            s.sync_now();
        }
        let orphans = std::mem::take(&mut self.lock().orphans);
        for (dir, _lock) in orphans {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot delete an old journal directory");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `events` and hands each to `then` with its sequence number, under the
    /// journal's lock, so `then` sees them in journal order. Returns the last sequence
    /// number, or the error when the write failed (the events were still handed to
    /// `then`, so they are not lost while the process lives).
    pub fn append_events(
        &self,
        events: impl IntoIterator<Item = Envelope>,
        mut then: impl FnMut(u64, Envelope),
    ) -> Result<u64, std::io::Error> {
        // Serialised before taking the lock: concurrent requests wait on it only for
        // the copy and the `write`.
        let encoded: Vec<(Vec<u8>, Envelope)> = events
            .into_iter()
            .map(|e| (serde_json::to_vec(&e).unwrap_or_default(), e))
            .collect();
        let mut inner = self.lock();
        let handled = self.handled.load(Ordering::Acquire);
        inner.buf.clear();
        inner.marker_if_moved(handled);
        let mut written = Vec::with_capacity(encoded.len());
        for (payload, e) in encoded {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            encode(&mut inner.buf, KIND_EVENT, seq, &payload);
            inner.close_attempts_of(&e);
            written.push((seq, e));
        }
        let last = inner.next_seq - 1;
        let result = self.write(&mut inner, len_u64(written.len()), last, handled);
        for (seq, e) in written {
            then(seq, e);
        }
        result.map(|()| last)
    }

    /// Writes an attempt start. Returns its sequence number once it is written.
    pub fn attempt_started(&self, attempt: &AttemptStart) -> Result<u64, std::io::Error> {
        let payload = serde_json::to_vec(attempt).unwrap_or_default();
        let mut inner = self.lock();
        let handled = self.handled.load(Ordering::Acquire);
        inner.buf.clear();
        inner.marker_if_moved(handled);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let start = inner.buf.len();
        encode(&mut inner.buf, KIND_ATTEMPT, seq, &payload);
        let record = inner.buf[start..].to_vec();
        inner
            .open
            .insert((attempt.request_id.clone(), attempt.attempt), record);
        self.write(&mut inner, 1, seq, handled).map(|()| seq)
    }

    fn write(
        &self,
        inner: &mut Inner,
        records: u64,
        last: u64,
        handled: u64,
    ) -> std::io::Result<()> {
        let n = inner.buf.len();
        let result = inner.file.write_all(&inner.buf);
        match &result {
            Ok(()) => {
                inner.size += len_u64(n);
                self.records.fetch_add(records, Ordering::Relaxed);
                self.bytes.fetch_add(len_u64(n), Ordering::Relaxed);
                self.written.store(last, Ordering::Release);
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::warn!("the event journal is writable again");
                }
                if let Some(s) = &self.syncer {
                    s.written(last);
                }
                if inner.size >= inner.segment_bytes {
                    if let Err(e) = self.rotate(inner, handled) {
                        tracing::error!(error = %e, "cannot start a new journal segment; continuing in the current one");
                    }
                }
            }
            Err(e) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, "cannot write the event journal: new requests are refused until it is writable");
                }
            }
        }
        result
    }

    /// Closes the current segment and starts the next, copying the open attempts into
    /// it; deletes closed segments whose records are all handled.
    fn rotate(&self, inner: &mut Inner, handled: u64) -> std::io::Result<()> {
        let first = inner.next_seq;
        let path = segment_path(&inner.dir, first);
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut buf = Vec::new();
        encode(&mut buf, KIND_HANDLED, handled, &[]);
        for record in inner.open.values() {
            buf.extend_from_slice(record);
        }
        file.write_all(&buf)?;
        let old = std::mem::replace(&mut inner.file, file);
        if let Some(s) = &self.syncer {
            s.switch(inner.file.try_clone()?, old);
        }
        sync_dir(&inner.dir);
        let old_path = std::mem::replace(&mut inner.path, path);
        inner.closed.push_back((old_path, first - 1));
        inner.size = len_u64(buf.len());
        inner.marker = handled;
        self.retire(inner, handled);
        Ok(())
    }

    fn retire(&self, inner: &mut Inner, handled: u64) {
        while let Some((path, last)) = inner.closed.front() {
            if *last > handled {
                break;
            }
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete a journal segment");
            }
            inner.closed.pop_front();
        }
    }

    /// The publisher reports that every record up to `seq` is in the log or the spool.
    pub fn handled(&self, seq: u64) {
        self.handled.fetch_max(seq, Ordering::AcqRel);
    }

    /// Writes the handled position as a marker now if it moved since the last one, so
    /// that an idle relay's journal does not replay, after a crash, events the log
    /// acknowledged long ago (beyond JetStream's duplicate window).
    pub fn mark(&self) {
        let handled = self.handled.load(Ordering::Acquire);
        let mut inner = self.lock();
        if handled <= inner.marker {
            return;
        }
        inner.buf.clear();
        inner.marker_if_moved(handled);
        let last = self.written.load(Ordering::Acquire);
        // A failed marker only means a longer replay after a crash.
        let _ = self.write(&mut inner, 0, last, handled);
    }

    /// Whether the last write failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Tries an empty write (a marker) to learn whether the journal is writable again.
    pub fn probe(&self) -> bool {
        let mut inner = self.lock();
        let handled = self.handled.load(Ordering::Acquire);
        inner.buf.clear();
        encode(&mut inner.buf, KIND_HANDLED, handled, &[]);
        inner.marker = handled;
        let last = self.written.load(Ordering::Acquire);
        self.write(&mut inner, 0, last, handled).is_ok()
    }

    /// Waits until record `seq` is as durable as configured: at once unless the journal
    /// syncs every record, then until a sync covered it.
    pub fn durable(&self, seq: u64) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rx = self
            .syncer
            .as_ref()
            .filter(|s| s.always)
            .map(|s| s.synced.subscribe());
        async move {
            if let Some(mut rx) = rx {
                // The sender lives as long as the journal; an error means it is gone
                // and nothing more will be synced.
                let _ = rx.wait_for(|s| *s >= seq).await;
            }
        }
    }

    /// The sync policy.
    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    /// Whether waiting on [`Journal::durable`] can take time.
    pub fn syncs_each_record(&self) -> bool {
        self.syncer.as_ref().is_some_and(|s| s.always)
    }

    /// Current counters.
    pub fn stats(&self) -> JournalStats {
        let inner = self.lock();
        JournalStats {
            records_total: self.records.load(Ordering::Relaxed),
            bytes_total: self.bytes.load(Ordering::Relaxed),
            write_errors_total: self.write_errors.load(Ordering::Relaxed),
            syncs_total: self
                .syncer
                .as_ref()
                .map_or(0, |s| s.syncs.load(Ordering::Relaxed)),
            segments: len_u64(inner.closed.len()) + 1,
            open_attempts: len_u64(inner.open.len()),
            failing: self.failing(),
        }
    }

    /// Stops the sync thread after a last sync.
    pub fn close(&self) {
        if let Some(s) = &self.syncer {
            s.stop();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

impl Inner {
    fn marker_if_moved(&mut self, handled: u64) {
        if handled > self.marker {
            encode(&mut self.buf, KIND_HANDLED, handled, &[]);
            self.marker = handled;
        }
    }

    /// An event closes its attempt (`usage.recorded`) or every attempt of its request
    /// (`request.finished`).
    fn close_attempts_of(&mut self, e: &Envelope) {
        if self.open.is_empty() {
            return;
        }
        let Some(request) = e.request_id.as_deref() else {
            return;
        };
        match &e.event {
            Event::UsageRecorded(u) => {
                self.open.remove(&(request.to_owned(), u.attempt));
            }
            Event::RequestFinished(_) => self.open.retain(|(r, _), _| r != request),
            _ => {}
        }
    }
}

impl Syncer {
    fn start(file: File, every: Option<Duration>, always: bool) -> Arc<Syncer> {
        let syncer = Arc::new(Syncer {
            state: Mutex::new(SyncState {
                file: Some(file),
                retired: Vec::new(),
                written: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            synced: watch::Sender::new(0),
            syncs: AtomicU64::new(0),
            always,
        });
        let s = syncer.clone();
        let spawned = std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || s.run(every));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the journal sync thread; the journal is not synced");
        }
        syncer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn written(&self, seq: u64) {
        let mut st = self.lock();
        st.written = st.written.max(seq);
        if self.always {
            self.wake.notify_one();
        }
    }

    /// The current segment changed: follow the new one. The old one is synced by the
    /// sync thread before the new one, not here: a rotation happens under the writers'
    /// lock, and an `fdatasync` of a full segment would stall every request.
    fn switch(&self, new: File, old: File) {
        let mut st = self.lock();
        st.file = Some(new);
        st.retired.push(old);
        self.wake.notify_one();
    }

    fn sync_now(&self) {
        let (file, retired, target) = {
            let mut st = self.lock();
            (
                st.file.as_ref().and_then(|f| f.try_clone().ok()),
                std::mem::take(&mut st.retired),
                st.written,
            )
        };
        if let Some(f) = file {
            self.sync(&retired, &f, target);
        }
    }

    /// Syncs the retired segments, then `file`, then publishes `target` as synced.
    fn sync(&self, retired: &[File], file: &File, target: u64) {
        for old in retired {
            if let Err(e) = old.sync_data() {
                tracing::error!(error = %e, "journal fdatasync failed");
            }
        }
        match file.sync_data() {
            Ok(()) => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
                self.synced.send_if_modified(|s| {
                    let moved = target > *s;
                    *s = (*s).max(target);
                    moved
                });
            }
            Err(e) => tracing::error!(error = %e, "journal fdatasync failed"),
        }
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_one();
    }

    fn run(&self, every: Option<Duration>) {
        let mut synced = 0;
        loop {
            let (file, retired, target, stop) = {
                let mut st = self.lock();
                loop {
                    if st.stop
                        || (every.is_none() && (st.written > synced || !st.retired.is_empty()))
                    {
                        break;
                    }
                    match every {
                        Some(d) => {
                            st = self
                                .wake
                                .wait_timeout(st, d)
                                .map(|(g, _)| g)
                                .unwrap_or_else(|e| e.into_inner().0);
                            break;
                        }
                        None => {
                            st = self
                                .wake
                                .wait(st)
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                    }
                }
                (
                    st.file.as_ref().and_then(|f| f.try_clone().ok()),
                    std::mem::take(&mut st.retired),
                    st.written,
                    st.stop,
                )
            };
            if target > synced || !retired.is_empty() {
                if let Some(f) = &file {
                    self.sync(&retired, f, target);
                }
                synced = target;
            }
            if stop {
                return;
            }
        }
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("segment-{first:020}.log"))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Appends one record: header, then kind, sequence number and payload.
fn encode(buf: &mut Vec<u8>, kind: u8, seq: u64, payload: &[u8]) {
    let body_len = 1 + 8 + payload.len();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    buf.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// What reading the segments found.
#[derive(Default)]
struct Scan {
    /// Sequence numbers restart in every directory: events of finished runs are kept
    /// in `earlier`, the current run's in `events` until its last marker is known.
    handled: u64,
    earlier: Vec<Envelope>,
    events: Vec<(u64, Envelope)>,
    seen_events: HashSet<Uuid>,
    attempts: BTreeMap<(String, u32), AttemptStart>,
    finished: HashSet<String>,
    /// Requests with usage, by request: their newest attempt, as an attempt start.
    billed: BTreeMap<String, AttemptStart>,
    corrupt: u64,
}

impl Scan {
    /// Starts reading another directory.
    fn begin_run(&mut self) {
        let handled = self.handled;
        self.earlier.extend(
            std::mem::take(&mut self.events)
                .into_iter()
                .filter(|(seq, _)| *seq > handled)
                .map(|(_, e)| e),
        );
        self.handled = 0;
    }

    fn segment(&mut self, path: &Path) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let len = usize::try_from(le_u32(&bytes[at..at + 4])).unwrap_or(usize::MAX);
            if !(MIN_BODY..=MAX_RECORD).contains(&len) || len > bytes.len() - at - 8 {
                self.corrupt += 1;
                tracing::warn!(path = %path.display(), offset = at, "torn journal record; the rest of the segment is ignored");
                break;
            }
            let crc = le_u32(&bytes[at + 4..at + 8]);
            let end = at + 8 + len;
            let body = &bytes[at + 8..end];
            if crc32fast::hash(body) != crc {
                self.corrupt += 1;
                tracing::warn!(path = %path.display(), offset = at, "corrupt journal record; the rest of the segment is ignored");
                break;
            }
            let kind = body[0];
            let mut seq_bytes = [0u8; 8];
            seq_bytes.copy_from_slice(&body[1..9]);
            let seq = u64::from_le_bytes(seq_bytes);
            self.record(kind, seq, &body[9..]);
            at = end;
        }
        Ok(())
    }

    fn record(&mut self, kind: u8, seq: u64, payload: &[u8]) {
        match kind {
            KIND_HANDLED => self.handled = self.handled.max(seq),
            KIND_EVENT => match Envelope::from_json(payload) {
                Ok(e) => {
                    if let Some(r) = e.request_id.clone() {
                        match &e.event {
                            Event::UsageRecorded(u) => {
                                self.attempts.remove(&(r.clone(), u.attempt));
                                let newer =
                                    self.billed.get(&r).is_none_or(|b| b.attempt < u.attempt);
                                if newer {
                                    let a = AttemptStart {
                                        request_id: r.clone(),
                                        attempt: u.attempt,
                                        account: u.account.clone(),
                                        tenant: e.tenant.clone(),
                                        api_key: e.api_key.clone(),
                                        model: u.model.clone(),
                                        stream: u.stream,
                                        endpoint: "/v1/messages".to_owned(),
                                        started_at: e.occurred_at,
                                    };
                                    self.billed.insert(r, a);
                                }
                            }
                            Event::RequestFinished(_) => {
                                self.attempts.retain(|(req, _), _| *req != r);
                                self.finished.insert(r);
                            }
                            _ => {}
                        }
                    }
                    if self.seen_events.insert(e.id) {
                        self.events.push((seq, e));
                    }
                }
                Err(err) => {
                    self.corrupt += 1;
                    tracing::error!(seq, error = %err, "undecodable journal event skipped");
                }
            },
            KIND_ATTEMPT => {
                match serde_json::from_slice::<AttemptStart>(payload) {
                    Ok(a) => {
                        // A copy carried into a newer segment does not reopen an
                        // attempt whose close was already read.
                        if !self.finished.contains(&a.request_id) {
                            self.attempts
                                .entry((a.request_id.clone(), a.attempt))
                                .or_insert(a);
                        }
                    }
                    Err(err) => {
                        self.corrupt += 1;
                        tracing::error!(seq, error = %err, "undecodable journal attempt skipped");
                    }
                }
            }
            other => {
                self.corrupt += 1;
                tracing::error!(seq, kind = other, "unknown journal record skipped");
            }
        }
    }

    fn recovered(&mut self) -> Recovered {
        self.begin_run();
        let events = std::mem::take(&mut self.earlier);
        let open_attempts: Vec<AttemptStart> =
            std::mem::take(&mut self.attempts).into_values().collect();
        let unfinished_requests: HashSet<String> = open_attempts
            .iter()
            .filter(|a| !self.finished.contains(&a.request_id))
            .map(|a| a.request_id.clone())
            .collect();
        // A request can die between attempts: its last attempt ended (usage recorded)
        // and the next had not started. It still needs its end.
        let ended_between_attempts = std::mem::take(&mut self.billed)
            .into_values()
            .filter(|a| {
                !self.finished.contains(&a.request_id)
                    && !unfinished_requests.contains(&a.request_id)
            })
            .collect();
        Recovered {
            events,
            open_attempts,
            unfinished_requests,
            ended_between_attempts,
            corrupt_records: self.corrupt,
        }
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

//! The embedded event log: one SQLite file (e.g. `DATA_DIR/events.db`) in WAL mode,
//! written through a single connection and read through a separate pool.
//!
//! The log is kept apart from the read-model database on purpose: it is the source of
//! truth and is backed up, while read models are disposable; separate files also mean
//! separate write locks. Positions are SQLite `AUTOINCREMENT` row ids, which only grow.
//! Subscribers page through `WHERE seq > ?` and then tail: an in-process `watch` wakes
//! them on every append, and a short poll covers appends made by another process (the
//! CLI, or a projector running separately). A subscriber woken by an append of this
//! process takes the new events from memory ([`Recent`]) when they follow on from what
//! it has read, instead of querying and decoding them again.

use crate::{Appended, EventLog, EventStream, LogError, Position, StoredEvent};
use futures::StreamExt;
use schema::{Category, Envelope};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a caught-up subscriber re-reads the table to see other processes' appends.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Rows fetched per page by a subscriber.
const PAGE_SIZE: i64 = 1000;
/// Connections in the read pool; subscribers and `head` use it, never the writer.
const READ_POOL_SIZE: u32 = 4;
/// Events of this process's latest appends kept in memory for its subscribers.
const RECENT_CAPACITY: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    category       TEXT    NOT NULL,
    type           TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    account        TEXT,
    occurred_at_ms INTEGER NOT NULL,
    payload        TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_category_seq ON events (category, seq);
";

/// The embedded [`EventLog`] on a SQLite file.
///
/// Cheap to clone; clones share the connections. Appends from one process are
/// serialised through a single writer connection; other processes may append to the
/// same file (SQLite's lock and the busy timeout arbitrate).
#[derive(Clone)]
pub struct SqliteLog {
    inner: Arc<Inner>,
}

struct Inner {
    /// Exactly one connection: the single writer.
    writer: SqlitePool,
    /// Readers; in WAL mode they never block the writer.
    reader: SqlitePool,
    /// Bumped with the newest position after every committed append.
    appended: watch::Sender<Position>,
    /// This process's latest appended events, filled before `appended` is bumped.
    recent: Mutex<Recent>,
    /// Pages the subscriptions read from the table.
    table_reads: Arc<AtomicU64>,
}

/// The events this process appended last, at consecutive positions.
///
/// Invariant: the entries sit at consecutive positions and each is the event stored at
/// its position. Appends are recorded here in the order they were stored (while the
/// single writer connection is held), after their commit and before the subscribers
/// are woken. An append whose first position does not follow the newest entry (another
/// process appended in between) clears it first, so a subscriber can trust that every
/// event between the first entry and the newest one is here, and that whatever this
/// process stored after the newest one will wake it again.
#[derive(Default)]
struct Recent {
    events: VecDeque<StoredEvent>,
}

impl Recent {
    fn push(&mut self, position: Position, envelope: &Envelope) {
        if self
            .events
            .back()
            .is_some_and(|e| e.position.checked_add(1) != Some(position))
        {
            self.events.clear();
        }
        if self.events.len() >= RECENT_CAPACITY {
            self.events.pop_front();
        }
        self.events.push_back(StoredEvent {
            position,
            envelope: envelope.clone(),
        });
    }

    /// When nothing between `after` and the newest entry is missing from memory,
    /// copies every entry after `after` (only `category`'s, when given; possibly none)
    /// into `out` and returns the newest position held; otherwise `None`, and the
    /// caller reads the table.
    fn after(
        &self,
        after: Position,
        category: Option<Category>,
        out: &mut VecDeque<StoredEvent>,
    ) -> Option<Position> {
        let first = self.events.front()?.position;
        let newest = self.events.back()?.position;
        if after < first.saturating_sub(1) {
            return None;
        }
        let skip = usize::try_from(after.saturating_add(1) - first).unwrap_or(usize::MAX);
        out.extend(
            self.events
                .iter()
                .skip(skip)
                .filter(|e| category.is_none_or(|c| e.envelope.category() == c))
                .cloned(),
        );
        Some(newest)
    }
}

impl SqliteLog {
    /// Opens (creating if needed) the log file at `path`, enables WAL and creates the
    /// table.
    pub async fn open(path: &Path) -> Result<SqliteLog, LogError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| LogError::Backend(Box::new(e)))?;
        }
        let base = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(false);
        // FULL makes every committed append survive a power loss, not just a process
        // crash; the publisher batches appends so the extra fsync is amortised.
        let writer_options = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(writer_options)
            .await
            .map_err(map_sqlx)?;
        sqlx::raw_sql(SCHEMA)
            .execute(&writer)
            .await
            .map_err(map_sqlx)?;
        // A page of rows crosses from sqlx's connection thread without the thread
        // stopping for the reader every 50 rows (sqlx's default row buffer).
        let page_rows = usize::try_from(PAGE_SIZE).unwrap_or(1000);
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_POOL_SIZE)
            .connect_with(base.pragma("query_only", "ON").row_buffer_size(page_rows))
            .await
            .map_err(map_sqlx)?;
        let head = query_head(&reader).await?;
        let (appended, _) = watch::channel(head);
        Ok(SqliteLog {
            inner: Arc::new(Inner {
                writer,
                reader,
                appended,
                recent: Mutex::new(Recent::default()),
                table_reads: Arc::default(),
            }),
        })
    }

    /// How many pages this handle's subscriptions have read from the table (the rest
    /// came from memory).
    pub fn table_reads(&self) -> u64 {
        self.inner.table_reads.load(Ordering::Relaxed)
    }

    /// Closes the connections. Open subscriptions end; later calls fail.
    pub async fn close(&self) {
        self.inner.writer.close().await;
        self.inner.reader.close().await;
    }

    /// Records the newly stored events in [`Recent`] and wakes the subscribers.
    fn notify(&self, events: &[Envelope], appended: &[Appended]) {
        {
            let mut recent = self
                .inner
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (event, a) in events.iter().zip(appended).filter(|(_, a)| !a.duplicate) {
                recent.push(a.position, event);
            }
        }
        if let Some(max) = appended.iter().map(|a| a.position).max() {
            self.inner.appended.send_if_modified(|head| {
                let newer = max > *head;
                if newer {
                    *head = max;
                }
                newer
            });
        }
    }
}

/// The columns derived from an envelope, plus its canonical JSON.
struct Row {
    id: String,
    category: &'static str,
    type_name: &'static str,
    version: i64,
    account: Option<String>,
    occurred_at_ms: i64,
    payload: String,
}

impl Row {
    fn from_envelope(e: &Envelope) -> Result<Row, LogError> {
        let payload =
            String::from_utf8(e.to_json()?).map_err(|err| LogError::Backend(err.into()))?;
        Ok(Row {
            id: e.id.to_string(),
            category: e.category().as_str(),
            type_name: e.event.type_name(),
            version: i64::from(e.version),
            account: e.account.as_ref().map(|a| a.as_str().to_owned()),
            occurred_at_ms: e.occurred_at.timestamp_millis(),
            payload,
        })
    }
}

async fn insert(conn: &mut SqliteConnection, row: &Row) -> Result<Appended, LogError> {
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO events (id, category, type, version, account, occurred_at_ms, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (id) DO NOTHING
         RETURNING seq",
    )
    .bind(&row.id)
    .bind(row.category)
    .bind(row.type_name)
    .bind(row.version)
    .bind(&row.account)
    .bind(row.occurred_at_ms)
    .bind(&row.payload)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    if let Some(seq) = inserted {
        return Ok(Appended {
            position: to_position(seq),
            duplicate: false,
        });
    }
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM events WHERE id = ?1")
        .bind(&row.id)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    Ok(Appended {
        position: to_position(seq),
        duplicate: true,
    })
}

/// Rows per multi-row INSERT: 7 parameters each stays far below SQLite's limit.
const INSERT_CHUNK: usize = 64;

/// Inserts `rows` with one statement, appending one [`Appended`] per row, in order.
/// Rows whose id is already stored (earlier in this chunk, or before) are duplicates
/// and report the stored position.
async fn insert_chunk(
    conn: &mut SqliteConnection,
    rows: &[Row],
    out: &mut Vec<Appended>,
) -> Result<(), LogError> {
    if rows.len() == 1 {
        out.push(insert(conn, &rows[0]).await?);
        return Ok(());
    }
    let mut sql = String::with_capacity(120 + rows.len() * 40);
    sql.push_str(
        "INSERT INTO events (id, category, type, version, account, occurred_at_ms, payload) VALUES ",
    );
    // Anonymous `?` placeholders, bound in order: sqlx resolves a numbered one (`?N`)
    // by a linear scan of the statement's parameter names, n²/2 comparisons for the
    // 448 parameters of a full chunk (≈ 3 % of the relay's CPU under load).
    for i in 0..rows.len() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?)");
    }
    sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id, seq");
    let mut q = sqlx::query_as::<_, (String, i64)>(&sql);
    for row in rows {
        q = q
            .bind(&row.id)
            .bind(row.category)
            .bind(row.type_name)
            .bind(row.version)
            .bind(&row.account)
            .bind(row.occurred_at_ms)
            .bind(&row.payload);
    }
    let inserted: std::collections::HashMap<String, i64> = q
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?
        .into_iter()
        .collect();
    let mut first_seen = std::collections::HashSet::with_capacity(rows.len());
    for row in rows {
        let fresh = first_seen.insert(row.id.as_str());
        match inserted.get(&row.id) {
            Some(&seq) => out.push(Appended {
                position: to_position(seq),
                // A second copy of an id inside this chunk is a duplicate of the first.
                duplicate: !fresh,
            }),
            None => {
                let seq: i64 = sqlx::query_scalar("SELECT seq FROM events WHERE id = ?1")
                    .bind(&row.id)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(map_sqlx)?;
                out.push(Appended {
                    position: to_position(seq),
                    duplicate: true,
                });
            }
        }
    }
    Ok(())
}

async fn query_head(pool: &SqlitePool) -> Result<Position, LogError> {
    let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
        .fetch_one(pool)
        .await
        .map_err(map_sqlx)?;
    Ok(to_position(seq))
}

fn to_position(seq: i64) -> Position {
    // Row ids of this table start at 1 and only grow.
    u64::try_from(seq).unwrap_or(0)
}

fn to_seq(position: Position) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

/// Maps sqlx errors: lock contention, IO and pool exhaustion are transient.
pub(crate) fn map_sqlx(err: sqlx::Error) -> LogError {
    match &err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            LogError::Unavailable(err.to_string())
        }
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with('5') || c.starts_with('6')) =>
        {
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
            LogError::Unavailable(err.to_string())
        }
        _ => LogError::Backend(Box::new(err)),
    }
}

#[async_trait::async_trait]
impl EventLog for SqliteLog {
    async fn append(&self, event: &Envelope) -> Result<Appended, LogError> {
        let row = Row::from_envelope(event)?;
        let mut conn = self.inner.writer.acquire().await.map_err(map_sqlx)?;
        let appended = insert(&mut conn, &row).await?;
        // Still holding the only writer connection: memory learns of appends in the
        // order they were stored.
        self.notify(std::slice::from_ref(event), &[appended]);
        drop(conn);
        Ok(appended)
    }

    async fn append_batch(&self, events: &[Envelope]) -> Result<Vec<Appended>, LogError> {
        let rows = events
            .iter()
            .map(Row::from_envelope)
            .collect::<Result<Vec<_>, _>>()?;
        // One transaction for the whole batch: one fsync instead of one per event; and
        // multi-row statements: one round trip to SQLite's worker thread per chunk
        // instead of one per event.
        let mut conn = self.inner.writer.acquire().await.map_err(map_sqlx)?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(INSERT_CHUNK) {
            insert_chunk(&mut tx, chunk, &mut out).await?;
        }
        tx.commit().await.map_err(map_sqlx)?;
        // Still holding the only writer connection, as in `append`.
        self.notify(events, &out);
        drop(conn);
        Ok(out)
    }

    async fn subscribe(
        &self,
        after: Position,
        filter: Option<Category>,
    ) -> Result<EventStream, LogError> {
        if self.inner.reader.is_closed() {
            return Err(LogError::Unavailable("event log is closed".into()));
        }
        let tail = Tail {
            pool: self.inner.reader.clone(),
            after,
            category: filter,
            rows: VecDeque::new(),
            recent: VecDeque::new(),
            log: Arc::downgrade(&self.inner),
            table_reads: Arc::clone(&self.inner.table_reads),
            wake: self.inner.appended.subscribe(),
            wake_open: true,
            read_table: true,
            done: false,
        };
        Ok(futures::stream::unfold(tail, Tail::next).boxed())
    }

    async fn head(&self) -> Result<Position, LogError> {
        query_head(&self.inner.reader).await
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

/// The state of one subscription.
struct Tail {
    pool: SqlitePool,
    /// The last position yielded (or the subscription's start).
    after: Position,
    category: Option<Category>,
    /// Rows read from the table, not yet decoded and yielded.
    rows: VecDeque<(i64, String)>,
    /// Events taken from [`Recent`], not yet yielded. At most one of the two buffers
    /// holds anything: each is filled only when both are empty.
    recent: VecDeque<StoredEvent>,
    /// The log, for its [`Recent`] events; gone once every handle is dropped.
    log: std::sync::Weak<Inner>,
    table_reads: Arc<AtomicU64>,
    wake: watch::Receiver<Position>,
    /// False once the log handle that owns the sender is gone; we then only poll.
    wake_open: bool,
    /// Whether the next read must query the table: at the start, and after a poll
    /// interval (another process may have appended). Otherwise an append of this
    /// process woke us and its events may be in [`Recent`].
    read_table: bool,
    /// Set after an error has been yielded: the subscriber resubscribes from its
    /// checkpoint rather than skipping past a problem.
    done: bool,
}

impl Tail {
    async fn next(mut self) -> Option<(Result<StoredEvent, LogError>, Tail)> {
        if self.done {
            return None;
        }
        loop {
            if let Some(event) = self.recent.pop_front() {
                self.after = event.position;
                return Some((Ok(event), self));
            }
            if let Some((seq, payload)) = self.rows.pop_front() {
                let position = to_position(seq);
                self.after = position;
                let item = Envelope::from_json(payload.as_bytes())
                    .map(|envelope| StoredEvent { position, envelope })
                    .map_err(|e| LogError::Corrupt {
                        position,
                        message: e.to_string(),
                    });
                self.done = item.is_err();
                return Some((item, self));
            }
            // Mark the current head as seen before reading, so an append that commits
            // after the read still wakes us.
            self.wake.borrow_and_update();
            if !self.read_table {
                if let Some(newest) = self.take_recent() {
                    if self.recent.is_empty() {
                        // Caught up with this process's appends (events of other
                        // categories in between are passed over); another process's
                        // are found by the poll.
                        self.after = self.after.max(newest);
                        self.read_table = self.wait().await;
                    }
                    continue;
                }
            }
            match self.page().await {
                Ok(rows) if !rows.is_empty() => self.rows.extend(rows),
                Ok(_) => self.read_table = self.wait().await,
                Err(sqlx::Error::PoolClosed) => return None,
                Err(e) => {
                    self.done = true;
                    return Some((Err(map_sqlx(e)), self));
                }
            }
        }
    }

    /// Takes the events after `self.after` from the log's [`Recent`] into the buffer
    /// when it holds them all; returns the newest position covered.
    fn take_recent(&mut self) -> Option<Position> {
        let log = self.log.upgrade()?;
        let recent = log
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.after(self.after, self.category, &mut self.recent)
    }

    async fn page(&self) -> Result<Vec<(i64, String)>, sqlx::Error> {
        self.table_reads.fetch_add(1, Ordering::Relaxed);
        let after = to_seq(self.after);
        match self.category.map(Category::as_str) {
            Some(category) => {
                sqlx::query_as(
                    "SELECT seq, payload FROM events WHERE category = ?1 AND seq > ?2
                     ORDER BY seq LIMIT ?3",
                )
                .bind(category)
                .bind(after)
                .bind(PAGE_SIZE)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query_as(
                    "SELECT seq, payload FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .bind(after)
                .bind(PAGE_SIZE)
                .fetch_all(&self.pool)
                .await
            }
        }
    }

    /// Waits for an append of this process or the poll interval; true when the table
    /// must be read (the interval passed, or the log handle is gone).
    async fn wait(&mut self) -> bool {
        if !self.wake_open {
            tokio::time::sleep(POLL_INTERVAL).await;
            return true;
        }
        tokio::select! {
            changed = self.wake.changed() => {
                if changed.is_err() {
                    self.wake_open = false;
                }
                changed.is_err()
            }
            () = tokio::time::sleep(POLL_INTERVAL) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Recent, RECENT_CAPACITY};
    use crate::testing::{sample_admin_event, sample_usage_event};
    use crate::Position;
    use schema::Category;
    use std::collections::VecDeque;

    /// The positions `Recent::after` hands out, or `None`, and the newest it covers.
    fn after(
        recent: &Recent,
        after: Position,
        category: Option<Category>,
    ) -> Option<(Vec<Position>, Position)> {
        let mut out = VecDeque::new();
        let newest = recent.after(after, category, &mut out)?;
        let positions = out.into_iter().map(|e| e.position).collect();
        Some((positions, newest))
    }

    /// Where a subscriber is, its filter, and what it gets: the positions and the
    /// newest position covered, or `None` (read the table).
    type Case = (
        Position,
        Option<Category>,
        Option<(Vec<Position>, Position)>,
    );

    /// Positions 10..=14: usage, admin, usage, admin, usage.
    fn ten_to_fourteen() -> Recent {
        let mut recent = Recent::default();
        for p in 10..=14 {
            let e = if p % 2 == 0 {
                sample_usage_event("acc_r", p)
            } else {
                sample_admin_event("key.update")
            };
            recent.push(p, &e);
        }
        recent
    }

    #[test]
    fn hands_out_what_follows_only_when_it_holds_the_next_position() {
        let recent = ten_to_fourteen();
        let usage = Some(Category::Usage);
        let admin = Some(Category::Admin);
        let table: [Case; 9] = [
            // The subscriber is behind what memory holds: it must read the table.
            (0, None, None),
            (8, None, None),
            // From the position before the first entry, or from inside.
            (9, None, Some((vec![10, 11, 12, 13, 14], 14))),
            (11, None, Some((vec![12, 13, 14], 14))),
            (9, usage, Some((vec![10, 12, 14], 14))),
            (10, admin, Some((vec![11, 13], 14))),
            // Nothing of the category after it, but covered: it may skip to 14.
            (13, admin, Some((vec![], 14))),
            // Caught up, or ahead (it read another process's append from the table):
            // nothing to hand out, and nothing missing.
            (14, None, Some((vec![], 14))),
            (20, None, Some((vec![], 14))),
        ];
        for (from, category, want) in table {
            assert_eq!(
                after(&recent, from, category),
                want,
                "after {from} {category:?}"
            );
        }
    }

    #[test]
    fn an_append_that_does_not_follow_on_starts_afresh() {
        let mut recent = ten_to_fourteen();
        // Another process stored 15: this process's next append is 16.
        recent.push(16, &sample_usage_event("acc_r", 16));
        assert_eq!(after(&recent, 14, None), None, "15 is not in memory");
        assert_eq!(after(&recent, 15, None), Some((vec![16], 16)));
        // Out of order (two appends finishing in the other order) also starts afresh.
        recent.push(12, &sample_usage_event("acc_r", 12));
        assert_eq!(after(&recent, 10, None), None);
        assert_eq!(after(&recent, 11, None), Some((vec![12], 12)));
        assert_eq!(after(&recent, 16, None), Some((vec![], 12)));
    }

    #[test]
    fn holds_at_most_its_capacity_dropping_the_oldest() {
        let mut recent = Recent::default();
        let e = sample_usage_event("acc_r", 1);
        let n = u64::try_from(RECENT_CAPACITY).unwrap_or(u64::MAX) + 10;
        for p in 1..=n {
            recent.push(p, &e);
        }
        assert_eq!(recent.events.len(), RECENT_CAPACITY);
        // 1 to 10 were dropped.
        assert!(after(&recent, 9, None).is_none(), "10 is not in memory");
        let (got, newest) = after(&recent, 10, None).unwrap_or_default();
        assert_eq!(
            (got.len(), got.first(), newest),
            (RECENT_CAPACITY, Some(&11), n)
        );
    }
}

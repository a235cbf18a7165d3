//! The embedded event log: one SQLite file (e.g. `DATA_DIR/events.db`) in WAL mode,
//! written through a single connection and read through a separate pool.
//!
//! The log is kept apart from the read-model database on purpose: it is the source of
//! truth and is backed up, while read models are disposable; separate files also mean
//! separate write locks. Positions are SQLite `AUTOINCREMENT` row ids, which only grow.
//! Subscribers page through `WHERE seq > ?` and then tail: an in-process `watch` wakes
//! them on every append, and a short poll covers appends made by another process (the
//! CLI, or a projector running separately).

use crate::{Appended, EventLog, EventStream, LogError, Position, StoredEvent};
use futures::StreamExt;
use schema::{Category, Envelope};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
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
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_POOL_SIZE)
            .connect_with(base.pragma("query_only", "ON"))
            .await
            .map_err(map_sqlx)?;
        let head = query_head(&reader).await?;
        let (appended, _) = watch::channel(head);
        Ok(SqliteLog {
            inner: Arc::new(Inner {
                writer,
                reader,
                appended,
            }),
        })
    }

    /// Closes the connections. Open subscriptions end; later calls fail.
    pub async fn close(&self) {
        self.inner.writer.close().await;
        self.inner.reader.close().await;
    }

    fn notify(&self, appended: &[Appended]) {
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
        drop(conn);
        self.notify(&[appended]);
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
        let mut tx = self.inner.writer.begin().await.map_err(map_sqlx)?;
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(INSERT_CHUNK) {
            insert_chunk(&mut tx, chunk, &mut out).await?;
        }
        tx.commit().await.map_err(map_sqlx)?;
        self.notify(&out);
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
            category: filter.map(Category::as_str),
            buffer: VecDeque::new(),
            wake: self.inner.appended.subscribe(),
            wake_open: true,
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
    category: Option<&'static str>,
    buffer: VecDeque<(i64, String)>,
    wake: watch::Receiver<Position>,
    /// False once the log handle that owns the sender is gone; we then only poll.
    wake_open: bool,
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
            if let Some((seq, payload)) = self.buffer.pop_front() {
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
            match self.page().await {
                Ok(rows) if !rows.is_empty() => self.buffer.extend(rows),
                Ok(_) => self.wait().await,
                Err(sqlx::Error::PoolClosed) => return None,
                Err(e) => {
                    self.done = true;
                    return Some((Err(map_sqlx(e)), self));
                }
            }
        }
    }

    async fn page(&self) -> Result<Vec<(i64, String)>, sqlx::Error> {
        let after = to_seq(self.after);
        match self.category {
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

    async fn wait(&mut self) {
        if !self.wake_open {
            tokio::time::sleep(POLL_INTERVAL).await;
            return;
        }
        tokio::select! {
            changed = self.wake.changed() => {
                if changed.is_err() {
                    self.wake_open = false;
                }
            }
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

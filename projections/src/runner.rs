//! The [`Projection`] trait and the [`Projector`] that feeds one projection from the
//! event log.
//!
//! A projector loads its checkpoint, subscribes to the log after it, and applies the
//! events in batches (whatever is ready, up to `batch_size`). Each batch commits in ONE
//! transaction together with the checkpoint, which only moves forward (the upsert is
//! guarded with `WHERE last_seq < $position`). After an error it backs off and
//! re-subscribes from the stored checkpoint, so a crash or a killed task at any point
//! loses nothing and counts nothing twice.
//!
//! Only one runner per projection is active across processes: the runner holds a lease
//! row (`leases(name, holder, until_ms)`), renews it in every batch transaction and on a
//! timer, and a batch whose lease renewal fails is rolled back. The runner reads the
//! clock for the lease; projections never do.

use crate::Dialect as _;
use crate::{Backend, Error};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use ingest::{EventLog, LogError, Position, StoredEvent};
use sqlx::{AnyConnection, AnyPool};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// A read model built from the event log.
///
/// Implementations must be deterministic: no clock, network, environment or random
/// numbers inside `apply`/`apply_batch`, and an exhaustive `match` on
/// [`schema::Event`] so a new event type forces a decision. They must also be
/// idempotent per event id where they count: the same event may arrive again at a new
/// position (a duplicate published after JetStream's dedup window).
#[async_trait::async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the checkpoint and lease key, and the `relay rebuild` argument.
    fn name(&self) -> &'static str;

    /// Applies events in log order inside the runner's transaction (projections write
    /// multi-row statements). The result must not depend on how the log is cut into
    /// batches.
    async fn apply_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> Result<(), Error>;

    /// Applies one event inside the runner's transaction: a batch of one.
    async fn apply(&self, tx: &mut AnyConnection, event: &StoredEvent) -> Result<(), Error> {
        self.apply_batch(tx, std::slice::from_ref(event)).await
    }

    /// Deletes every row the projection owns (for a rebuild). The runner resets the
    /// checkpoint in the same transaction.
    async fn reset(&self, tx: &mut AnyConnection) -> Result<(), Error>;

    /// Secondary indexes of the projection's tables that a rebuild on SQLite drops
    /// while it replays into the emptied tables and creates again at the end: one
    /// sort per index instead of one B-tree insert per index and row. Each entry is
    /// `(index name, CREATE INDEX IF NOT EXISTS …)`, the same definition as the
    /// migration's. Default: none.
    fn rebuild_indexes(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
}

/// How far a projection is behind the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Last applied position.
    pub checkpoint: Position,
    /// Newest position in the log when last looked at.
    pub head: Position,
}

impl Lag {
    /// `head − checkpoint` (0 when caught up).
    pub fn behind(&self) -> u64 {
        self.head.saturating_sub(self.checkpoint)
    }
}

/// Tuning knobs of a [`Projector`].
#[derive(Debug, Clone)]
pub struct ProjectorOptions {
    /// Most events per transaction.
    pub batch_size: usize,
    /// Lease duration; renewed every batch and every third of this while idle.
    pub lease_ttl: Duration,
    /// First back-off after an error (doubles up to `retry_max`).
    pub retry_min: Duration,
    /// Longest back-off.
    pub retry_max: Duration,
    /// Lease holder name; unique per runner by default.
    pub holder: String,
    /// When following the live log, how long to let events accumulate after a batch
    /// smaller than `batch_size` before reading again. Under light load this turns one
    /// transaction per request into one per many; it delays visibility by at most this
    /// much. Default 25 ms; catch-up runs (`run_until_caught_up`, rebuilds) never wait.
    pub linger: Duration,
}

impl Default for ProjectorOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            linger: Duration::from_millis(25),
            lease_ttl: Duration::from_secs(30),
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            holder: holder::new_holder(),
        }
    }
}

/// Feeds one projection, or a group of projections sharing one subscription, from the
/// event log. See the module docs.
///
/// A group reads and decodes the log once for all its members; each member keeps its
/// own checkpoint and lease, and one transaction per batch applies the batch to every
/// member that has not seen it yet and advances each member's checkpoint.
pub struct Projector {
    db: AnyPool,
    log: Arc<dyn EventLog>,
    projections: Vec<Arc<dyn Projection>>,
    opts: ProjectorOptions,
    lag: watch::Sender<Lag>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn pos_i64(p: Position) -> i64 {
    i64::try_from(p).unwrap_or(i64::MAX)
}

/// The stored checkpoint of `projection` (0 when it has none).
pub async fn checkpoint(db: &AnyPool, projection: &str) -> Result<Position, Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        &db.sql("SELECT last_seq FROM projection_checkpoints WHERE projection = $1"),
    )
    .bind(projection)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| u64::try_from(r.0).unwrap_or(0)).unwrap_or(0))
}

/// Advances the checkpoint inside `tx`, only forward. Returns `false` when the stored
/// checkpoint is already at or past `position`.
pub async fn advance_checkpoint(
    tx: &mut AnyConnection,
    projection: &str,
    position: Position,
) -> Result<bool, Error> {
    // Portable (MySQL has no guarded upsert): move an existing row forward, else
    // create it; neither happens when the stored checkpoint is at or past `position`.
    let moved = sqlx::query(&tx.sql(
        "UPDATE projection_checkpoints SET last_seq = $1 WHERE projection = $2 AND last_seq < $3",
    ))
    .bind(pos_i64(position))
    .bind(projection)
    .bind(pos_i64(position))
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() == 1 {
        return Ok(true);
    }
    let created = sqlx::query(&tx.sql(
        "INSERT INTO projection_checkpoints (projection, last_seq) VALUES ($1, $2) \
         ON CONFLICT (projection) DO NOTHING",
    ))
    .bind(projection)
    .bind(pos_i64(position))
    .execute(&mut *tx)
    .await?;
    Ok(created.rows_affected() == 1)
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Takes (or renews) the lease `name` for `holder` when it is free, expired or already
/// ours. Returns whether we hold it now.
pub async fn try_lease(
    db: &AnyPool,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, Error> {
    let now = now_ms();
    let until = now.saturating_add(ttl_ms(ttl));
    // Portable (MySQL has no guarded upsert): renew ours or take an expired one, else
    // create it. The update's condition is evaluated on the row as it stands once
    // locked, so of two takers of an expired lease only one matches.
    let renewed = sqlx::query(&db.sql(
        "UPDATE leases SET holder = $1, until_ms = $2 \
         WHERE name = $3 AND (holder = $4 OR until_ms < $5)",
    ))
    .bind(holder)
    .bind(until)
    .bind(name)
    .bind(holder)
    .bind(now)
    .execute(db)
    .await?;
    if renewed.rows_affected() == 1 {
        return Ok(true);
    }
    let created = sqlx::query(&db.sql(
        "INSERT INTO leases (name, holder, until_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO NOTHING",
    ))
    .bind(name)
    .bind(holder)
    .bind(until)
    .execute(db)
    .await?;
    if created.rows_affected() == 1 {
        return Ok(true);
    }
    // Held and not expired. If the holder is a process of this machine that is gone
    // (a crash, a kill -9), waiting for the lease to expire only delays usage: take it
    // over now. The update names the dead holder, so two takers cannot both win.
    let current: Option<(String,)> =
        sqlx::query_as(&db.sql("SELECT holder FROM leases WHERE name = $1"))
            .bind(name)
            .fetch_optional(db)
            .await?;
    let Some((current,)) = current else {
        return Ok(false);
    };
    if !holder::is_dead(&current) {
        return Ok(false);
    }
    let taken = sqlx::query(
        &db.sql("UPDATE leases SET holder = $1, until_ms = $2 WHERE name = $3 AND holder = $4"),
    )
    .bind(holder)
    .bind(now.saturating_add(ttl_ms(ttl)))
    .bind(name)
    .bind(&current)
    .execute(db)
    .await?;
    let took = taken.rows_affected() == 1;
    if took {
        tracing::info!(lease = name, previous = %current, "took over the lease of a process that is gone");
    }
    Ok(took)
}

/// Lease holder names that say which process holds them, so that a restarted process
/// can prove the previous holder is gone instead of waiting for its lease to expire.
///
/// A holder is `host:<boot id>:<pid namespace>:<pid>:<start time>:<uuid>`. A holder
/// is provably dead when it names this machine's boot and pid namespace and no process
/// with that pid and start time exists. Anything else (another machine, another
/// container, an older name) is never taken over before its lease expires.
pub mod holder {
    /// This process's identity: boot id, pid namespace, pid, start time.
    fn me() -> Option<(String, String, u32, String)> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
        let pid = std::process::id();
        let start = start_time(pid)?;
        Some((
            boot.trim().to_owned(),
            ns.to_string_lossy().into_owned(),
            pid,
            start,
        ))
    }

    /// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
    fn start_time(pid: u32) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may contain anything.
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(19).map(str::to_owned)
    }

    /// A fresh holder name for this process.
    pub fn new_holder() -> String {
        let id = uuid::Uuid::now_v7().simple();
        match me() {
            Some((boot, ns, pid, start)) => format!("host:{boot}:{ns}:{pid}:{start}:{id}"),
            None => format!("pid{}-{id}", std::process::id()),
        }
    }

    /// Whether `holder` names a process of this machine and pid namespace that no
    /// longer runs.
    pub fn is_dead(holder: &str) -> bool {
        let Some((boot, ns, _, _)) = me() else {
            return false;
        };
        dead_by(holder, &boot, &ns, start_time)
    }

    /// [`is_dead`] with the process lookup passed in.
    pub fn dead_by(
        holder: &str,
        boot: &str,
        ns: &str,
        start_of: impl Fn(u32) -> Option<String>,
    ) -> bool {
        // The namespace reads `pid:[4026531836]` and holds the separator itself, so
        // the known prefixes are stripped rather than split.
        let Some(rest) = holder
            .strip_prefix("host:")
            .and_then(|r| r.strip_prefix(boot))
            .and_then(|r| r.strip_prefix(':'))
            .and_then(|r| r.strip_prefix(ns))
            .and_then(|r| r.strip_prefix(':'))
        else {
            return false;
        };
        let mut tail = rest.splitn(3, ':');
        let (Some(pid), Some(start)) = (tail.next(), tail.next()) else {
            return false;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            return false;
        };
        start_of(pid).as_deref() != Some(start)
    }

    #[cfg(test)]
    mod tests {
        use super::dead_by;

        const BOOT: &str = "b00t";
        const NS: &str = "pid:[4026531836]";

        fn lookup(pid: u32) -> Option<String> {
            match pid {
                10 => Some("555".into()),
                _ => None,
            }
        }

        #[test]
        fn only_a_gone_process_of_this_boot_and_namespace_is_dead() {
            let cases = [
                (
                    "host:b00t:pid:[4026531836]:10:555:u1",
                    false,
                    "alive, same start",
                ),
                (
                    "host:b00t:pid:[4026531836]:10:444:u1",
                    true,
                    "pid reused by another process",
                ),
                (
                    "host:b00t:pid:[4026531836]:11:555:u1",
                    true,
                    "no such process",
                ),
                (
                    "host:other:pid:[4026531836]:11:555:u1",
                    false,
                    "another boot or machine",
                ),
                (
                    "host:b00t:pid:[4026532000]:11:555:u1",
                    false,
                    "another pid namespace",
                ),
                ("pid11-u1", false, "an older holder name"),
                ("host:b00t:pid:[4026531836]:x:555:u1", false, "garbage"),
                ("", false, "empty"),
            ];
            for (holder, dead, why) in cases {
                assert_eq!(dead_by(holder, BOOT, NS, lookup), dead, "{why}: {holder}");
            }
        }
    }
}

/// Extends our lease inside `conn` (typically the batch transaction); `LeaseLost` when
/// someone else holds it now.
pub(crate) async fn renew_lease(
    conn: &mut AnyConnection,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<(), Error> {
    let done =
        sqlx::query(&conn.sql("UPDATE leases SET until_ms = $1 WHERE name = $2 AND holder = $3"))
            .bind(now_ms().saturating_add(ttl_ms(ttl)))
            .bind(name)
            .bind(holder)
            .execute(&mut *conn)
            .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(Error::LeaseLost(name.to_owned()))
    }
}

/// Takes the lease or fails with `LeaseHeld` naming the holder.
pub(crate) async fn lease_or_fail(
    db: &AnyPool,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<(), Error> {
    if try_lease(db, name, holder, ttl).await? {
        return Ok(());
    }
    let current: Option<(String,)> =
        sqlx::query_as(&db.sql("SELECT holder FROM leases WHERE name = $1"))
            .bind(name)
            .fetch_optional(db)
            .await?;
    Err(Error::LeaseHeld {
        projection: name.to_owned(),
        holder: current.map(|h| h.0).unwrap_or_default(),
    })
}

/// Gives the lease up (best effort: an unreleased lease simply expires).
pub async fn release_lease(db: &AnyPool, name: &str, holder: &str) {
    let done = sqlx::query(&db.sql("DELETE FROM leases WHERE name = $1 AND holder = $2"))
        .bind(name)
        .bind(holder)
        .execute(db)
        .await;
    if let Err(e) = done {
        tracing::warn!(lease = name, error = %e, "cannot release lease; it will expire");
    }
}

impl Projector {
    /// A projector for one projection, with default options.
    pub fn new(db: AnyPool, log: Arc<dyn EventLog>, projection: Arc<dyn Projection>) -> Self {
        Self::group(db, log, vec![projection])
    }

    /// A projector for several projections sharing one subscription, with default
    /// options. Members must have distinct names.
    pub fn group(
        db: AnyPool,
        log: Arc<dyn EventLog>,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Self {
        let (lag, _) = watch::channel(Lag::default());
        Self {
            db,
            log,
            projections,
            opts: ProjectorOptions::default(),
            lag,
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, opts: ProjectorOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The member projections' names joined with `+` (one name for a single
    /// projection).
    pub fn name(&self) -> String {
        self.names().join("+")
    }

    /// The member projections' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|p| p.name()).collect()
    }

    /// Watches the lag (the checkpoint is the lowest of the members'); updated after
    /// every batch and on the lease timer.
    pub fn lag(&self) -> watch::Receiver<Lag> {
        self.lag.subscribe()
    }

    /// Reads the current lag from the database and the log.
    pub async fn current_lag(&self) -> Result<Lag, Error> {
        let at = self.checkpoints().await?.into_iter().min().unwrap_or(0);
        Ok(Lag {
            checkpoint: at,
            head: self.log.head().await?,
        })
    }

    /// Runs until `shutdown` is cancelled: waits for the leases, then applies events as
    /// they arrive. Errors are logged and retried with back-off; the function returns
    /// only on shutdown.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), Error> {
        let mut noop = |_: Lag| {};
        match self.drive(None, &shutdown, &mut noop).await {
            Ok(_) | Err(Error::Cancelled) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Applies events until every checkpoint reaches the log's head as of this call,
    /// then returns the lowest checkpoint. Fails fast (`LeaseHeld`) when another runner
    /// holds a lease, and returns the first error instead of retrying.
    pub async fn run_until_caught_up(&self) -> Result<Position, Error> {
        let mut noop = |_: Lag| {};
        self.run_until_caught_up_with(&mut noop).await
    }

    /// [`Projector::run_until_caught_up`] with a progress callback.
    pub async fn run_until_caught_up_with(
        &self,
        progress: &mut (dyn FnMut(Lag) + Send),
    ) -> Result<Position, Error> {
        let target = self.log.head().await?;
        self.drive(Some(target), &CancellationToken::new(), progress)
            .await
    }

    /// Resets every member (rows and checkpoints, in one transaction) and replays the
    /// log up to its head as of the reset. Takes the leases like a runner, so it fails
    /// with `LeaseHeld` while another runner is active.
    pub async fn rebuild(&self, progress: &mut (dyn FnMut(Lag) + Send)) -> Result<Position, Error> {
        self.acquire_or_fail().await?;
        let result = async {
            let mut tx = self.db.begin().await?;
            self.renew_in(&mut tx).await?;
            for p in &self.projections {
                p.reset(&mut tx).await?;
                sqlx::query(&tx.sql(
                    "INSERT INTO projection_checkpoints (projection, last_seq) VALUES ($1, 0) \
                     ON CONFLICT (projection) DO UPDATE SET last_seq = 0",
                ))
                .bind(p.name())
                .execute(&mut *tx)
                .await?;
            }
            // The tables are empty now: replay without their secondary indexes and
            // build each once at the end. Dropped in the reset's transaction, so a
            // failed reset keeps them; a rebuild that dies before the end leaves them
            // missing until the next projector start creates them (`drive`).
            for (name, _) in self.bulk_indexes() {
                sqlx::query(&format!("DROP INDEX IF EXISTS {name}"))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            let target = self.log.head().await?;
            let replayed = self
                .drive_leased(Some(target), &CancellationToken::new(), progress)
                .await;
            let indexed = self.create_bulk_indexes().await;
            let at = replayed?;
            indexed.map(|()| at)
        }
        .await;
        self.release().await;
        result
    }

    /// The members' [`Projection::rebuild_indexes`] when the read model is SQLite;
    /// none on the other backends, where rebuilds keep their indexes.
    fn bulk_indexes(&self) -> impl Iterator<Item = &'static (&'static str, &'static str)> + '_ {
        let sqlite = self.db.backend() == Backend::Sqlite;
        self.projections
            .iter()
            .filter(move |_| sqlite)
            .flat_map(|p| p.rebuild_indexes().iter())
    }

    /// Creates the indexes a rebuild drops, where they are missing (a no-op otherwise).
    async fn create_bulk_indexes(&self) -> Result<(), Error> {
        for (_, create) in self.bulk_indexes() {
            sqlx::query(create).execute(&self.db).await?;
        }
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Position>, Error> {
        let mut out = Vec::with_capacity(self.projections.len());
        for p in &self.projections {
            out.push(checkpoint(&self.db, p.name()).await?);
        }
        Ok(out)
    }

    async fn drive(
        &self,
        target: Option<Position>,
        shutdown: &CancellationToken,
        progress: &mut (dyn FnMut(Lag) + Send),
    ) -> Result<Position, Error> {
        if target.is_some() {
            self.acquire_or_fail().await?;
        } else {
            let mut backoff = self.opts.retry_min;
            loop {
                match self.acquire().await {
                    Ok(true) => break,
                    Ok(false) => backoff = backoff.max(self.opts.lease_ttl / 3),
                    Err(e) => {
                        tracing::warn!(projection = %self.name(), error = %e, "cannot take lease");
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Error::Cancelled),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(self.opts.retry_max);
            }
        }
        // A rebuild that died before its end left its indexes dropped.
        let result = match self.create_bulk_indexes().await {
            Ok(()) => self.drive_leased(target, shutdown, progress).await,
            Err(e) => Err(e),
        };
        self.release().await;
        result
    }

    async fn drive_leased(
        &self,
        target: Option<Position>,
        shutdown: &CancellationToken,
        progress: &mut (dyn FnMut(Lag) + Send),
    ) -> Result<Position, Error> {
        let mut backoff = self.opts.retry_min;
        loop {
            match self.session(target, shutdown, progress).await {
                Ok(p) => return Ok(p),
                Err(e) if target.is_some() => return Err(e),
                Err(e) => {
                    tracing::warn!(projection = %self.name(), error = %e, "projector error; re-subscribing");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(Error::Cancelled),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.opts.retry_max);
                    if matches!(e, Error::LeaseLost(_)) {
                        // Another runner took over; wait for the leases again.
                        while !self.acquire().await.unwrap_or(false) {
                            tokio::select! {
                                _ = shutdown.cancelled() => return Err(Error::Cancelled),
                                _ = tokio::time::sleep(self.opts.lease_ttl / 3) => {}
                            }
                        }
                    }
                }
            }
        }
    }

    /// One subscription: from the lowest stored checkpoint until the target, shutdown
    /// or an error.
    async fn session(
        &self,
        target: Option<Position>,
        shutdown: &CancellationToken,
        progress: &mut (dyn FnMut(Lag) + Send),
    ) -> Result<Position, Error> {
        let mut at = self.checkpoints().await?;
        let low = |at: &[Position]| at.iter().copied().min().unwrap_or(0);
        self.report(low(&at), progress).await;
        if target.is_some_and(|t| low(&at) >= t) {
            return Ok(low(&at));
        }
        let stream = self.log.subscribe(low(&at), None).await?;
        let chunks = stream.ready_chunks(self.opts.batch_size.max(1));
        // Catching up, the log is read and decoded on a task of its own, up to two
        // batches ahead, while the current batch is written. A live runner reads on
        // demand, so that its linger lets events accumulate.
        let (mut chunks, _reader) = match target {
            Some(_) => read_ahead(chunks, 2),
            None => (chunks.boxed(), None),
        };
        let mut renew =
            tokio::time::interval((self.opts.lease_ttl / 3).max(Duration::from_millis(10)));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        loop {
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => return Ok(low(&at)),
                _ = renew.tick() => {
                    let mut conn = self.db.acquire().await?;
                    self.renew_in(&mut conn).await?;
                    self.report(low(&at), progress).await;
                    continue;
                }
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else {
                return Err(LogError::Unavailable("subscription ended".into()).into());
            };
            let mut events = Vec::with_capacity(chunk.len());
            let mut failure = None;
            for item in chunk {
                match item {
                    Ok(e) => events.push(e),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let small = events.len() < self.opts.batch_size;
            if !events.is_empty() {
                at = self.commit(&events, at).await?;
                self.report(low(&at), progress).await;
            }
            if let Some(e) = failure {
                return Err(e.into());
            }
            if target.is_some_and(|t| low(&at) >= t) {
                return Ok(low(&at));
            }
            if target.is_none() && small && !self.opts.linger.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(low(&at)),
                    _ = tokio::time::sleep(self.opts.linger) => {}
                }
            }
        }
    }

    /// Applies `events` to every member that has not seen them, in one transaction
    /// with the checkpoints; returns the new checkpoints.
    async fn commit(
        &self,
        events: &[StoredEvent],
        at: Vec<Position>,
    ) -> Result<Vec<Position>, Error> {
        let Some(last) = events.iter().map(|e| e.position).max() else {
            return Ok(at);
        };
        let low = at.iter().copied().min().unwrap_or(0);
        // A projector that meets a payload version newer than this build stops rather
        // than skipping it: skipping would corrupt billing.
        if let Some(e) = events
            .iter()
            .find(|e| e.position > low && e.envelope.version > e.envelope.event.current_version())
        {
            return Err(Error::UnsupportedVersion {
                position: e.position,
                event_type: e.envelope.event.type_name().to_owned(),
                version: e.envelope.version,
            });
        }
        if last <= low {
            return Ok(at);
        }
        let mut tx = self.db.begin().await?;
        // The lease renewal goes first: it takes SQLite's write lock at the start of
        // the transaction and fences out a runner whose lease was taken over.
        self.renew_in(&mut tx).await?;
        let in_order = events.windows(2).all(|w| w[0].position < w[1].position);
        let mut next = at.clone();
        for ((p, from), to) in self.projections.iter().zip(&at).zip(next.iter_mut()) {
            if last <= *from {
                continue;
            }
            // Logs deliver in position order, so the events a member has not seen are a
            // suffix of the batch; copy only if an out-of-order log ever breaks that.
            if in_order {
                let start = events.partition_point(|e| e.position <= *from);
                p.apply_batch(&mut tx, &events[start..]).await?;
            } else {
                let fresh: Vec<StoredEvent> = events
                    .iter()
                    .filter(|e| e.position > *from)
                    .cloned()
                    .collect();
                p.apply_batch(&mut tx, &fresh).await?;
            }
            if !advance_checkpoint(&mut tx, p.name(), last).await? {
                return Err(Error::CheckpointConflict(p.name().to_owned()));
            }
            *to = last;
        }
        tx.commit().await?;
        Ok(next)
    }

    async fn report(&self, at: Position, progress: &mut (dyn FnMut(Lag) + Send)) {
        let head = match self.log.head().await {
            Ok(h) => h,
            Err(_) => self.lag.borrow().head,
        };
        let lag = Lag {
            checkpoint: at,
            head: head.max(at),
        };
        self.lag.send_replace(lag);
        progress(lag);
    }

    /// Takes every member's lease, or none.
    async fn acquire(&self) -> Result<bool, Error> {
        for (i, p) in self.projections.iter().enumerate() {
            let taken = try_lease(&self.db, p.name(), &self.opts.holder, self.opts.lease_ttl).await;
            if !matches!(taken, Ok(true)) {
                for q in &self.projections[..i] {
                    release_lease(&self.db, q.name(), &self.opts.holder).await;
                }
                return taken;
            }
        }
        Ok(true)
    }

    async fn acquire_or_fail(&self) -> Result<(), Error> {
        for (i, p) in self.projections.iter().enumerate() {
            if let Err(e) =
                lease_or_fail(&self.db, p.name(), &self.opts.holder, self.opts.lease_ttl).await
            {
                for q in &self.projections[..i] {
                    release_lease(&self.db, q.name(), &self.opts.holder).await;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    async fn renew_in(&self, conn: &mut AnyConnection) -> Result<(), Error> {
        for p in &self.projections {
            renew_lease(conn, p.name(), &self.opts.holder, self.opts.lease_ttl).await?;
        }
        Ok(())
    }

    async fn release(&self) {
        for p in &self.projections {
            release_lease(&self.db, p.name(), &self.opts.holder).await;
        }
    }
}

/// Polls `chunks` on a task of its own, at most `ahead` chunks ahead of the returned
/// stream (whole chunks cross over, so the two sides wake each other once per chunk).
/// The task stops when the returned handle is dropped.
fn read_ahead<S>(
    mut chunks: S,
    ahead: usize,
) -> (BoxStream<'static, S::Item>, Option<AbortOnDropHandle<()>>)
where
    S: Stream + Send + Unpin + 'static,
    S::Item: Send,
{
    let (tx, rx) = mpsc::channel(ahead.max(1));
    let task = tokio::spawn(async move {
        while let Some(chunk) = chunks.next().await {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (chunks.boxed(), Some(AbortOnDropHandle::new(task)))
}

/// Runs `projections` as one group (one subscription, one task) until `shutdown`.
pub async fn run_all(
    db: AnyPool,
    log: Arc<dyn EventLog>,
    projections: Vec<Arc<dyn Projection>>,
    opts: ProjectorOptions,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    Projector::group(db, log, projections)
        .with_options(opts)
        .run(shutdown)
        .await
}

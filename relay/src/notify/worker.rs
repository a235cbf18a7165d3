//! The notifier: holds the `notifier` lease, turns new outbox rows into delivery rows
//! (one per receiving target, rate-limited), and sends the due ones. The IO lives
//! here; the decisions are in [`super::route`], [`super::retry`] and [`super::payload`].

use super::digest;
use super::ops::OpsAlerts;
use super::payload::{self, Alert, Destination};
use super::retry::{Next, RetryPolicy};
use super::route::{receives, Route, Subject};
use super::store::{NotifyStore, NotifyStoreError, Target};
use super::watch::LagWatch;
use super::NotifyConfig;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use futures::StreamExt;
use ingest::EventLog;
use projections::notifications::{Audience, OutboxRow};
use projections::Dialect as _;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The lease name: one process sends at a time.
pub const LEASE: &str = "notifier";

/// Outbox rows read per statement.
const OUTBOX_PAGE: i64 = 500;

/// Due deliveries sent per pass.
const SEND_PAGE: i64 = 100;

/// Deliveries in flight at once.
const PARALLEL: usize = 8;

/// The lease's lifetime; renewed every pass.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// The alerts' tenant: the event's, or for a key's budget the key's tenant.
const OUTBOX_SELECT: &str = "SELECT o.event_id, o.position, o.occurred_at_ms, o.kind, \
    o.severity, o.audience, o.api_key, o.account, o.title, o.message, o.details, \
    COALESCE(NULLIF(o.tenant, ''), k.tenant, '') AS owner \
    FROM notification_outbox o LEFT JOIN api_keys k ON k.id = o.api_key AND o.api_key <> ''";

/// An HTTP client for deliveries: no redirects, no environment proxy, destinations
/// checked against the egress policy after DNS.
pub fn http_client(
    egress: crate::egress::EgressPolicy,
    timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(crate::egress::GuardedResolver {
            policy: Arc::new(egress),
        }))
        .no_proxy()
        .build()
}

/// What a failed send reports: the receiver's status, if it answered, and why.
pub type SendError = (Option<u16>, String);

/// Sends one alert to one destination; the receiver's status when it accepted it.
/// Errors never carry the URL (it may hold a token).
pub async fn send(
    http: &reqwest::Client,
    dest: &Destination,
    alert: &Alert,
    now: DateTime<Utc>,
) -> Result<u16, SendError> {
    if dest.kind == payload::TargetKind::Email {
        return send_email(dest, alert, SMTP_TIMEOUT).await;
    }
    let out = payload::outgoing(dest, alert, now).map_err(|e| (None, e))?;
    let mut req = http
        .post(&out.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(out.body);
    for (k, v) in out.headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.map_err(|e| (None, describe(e)))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    payload::accepted(dest.kind, status, &body)
        .map(|()| status)
        .map_err(|e| (Some(status), e))
}

/// Timeout of one e-mail delivery.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The sender of an e-mail target: the URL's `from` parameter, else `relay@<host>`.
pub fn email_sender(url: &url::Url) -> String {
    url.query_pairs()
        .find(|(k, _)| k == "from")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| format!("relay@{}", url.host_str().unwrap_or("localhost")))
}

/// Sends one alert by e-mail (the reply code when the server accepted it).
async fn send_email(
    dest: &Destination,
    alert: &Alert,
    timeout: Duration,
) -> Result<u16, SendError> {
    use lettre::message::header::ContentType;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let fail = |e: String| (None, e);
    let mut url = url::Url::parse(&dest.url).map_err(|_| fail("the SMTP URL is invalid".into()))?;
    let (subject, body) = payload::email_text(alert);
    let from = email_sender(&url)
        .parse()
        .map_err(|e| fail(format!("bad sender: {e}")))?;
    let mut message = Message::builder().from(from).subject(subject);
    for to in dest
        .address
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        message = message.to(to
            .parse()
            .map_err(|e| fail(format!("bad recipient {to}: {e}")))?);
    }
    let message = message
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| fail(e.to_string()))?;
    // The password is the sealed secret; the URL names the user.
    if let Some(password) = &dest.secret {
        url.set_password(Some(password.expose()))
            .map_err(|()| fail("the SMTP URL cannot carry a password".into()))?;
    }
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.as_str())
        .map_err(|e| fail(e.to_string()))?
        .timeout(Some(timeout))
        .build();
    let response = transport
        .send(message)
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(response.code().to_string().parse().unwrap_or(250))
}

/// A transport error with its causes, without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Deliveries queued per target in the minute before `now`, for the rate limit.
async fn recent_deliveries(
    db: &sqlx::AnyPool,
    now: DateTime<Utc>,
) -> Result<HashMap<String, u32>, NotifyStoreError> {
    let mut recent: HashMap<String, u32> = HashMap::new();
    for r in sqlx::query(&db.sql(
        "SELECT target_id, COUNT(*) AS n FROM notification_deliveries \
         WHERE created_at_ms > $1 AND status <> 'dropped' AND kind <> 'test' \
         GROUP BY target_id",
    ))
    .bind(now.timestamp_millis() - 60_000)
    .fetch_all(db)
    .await?
    {
        let n: i64 = r.try_get("n")?;
        recent.insert(
            r.try_get("target_id")?,
            u32::try_from(n).unwrap_or(u32::MAX),
        );
    }
    Ok(recent)
}

/// Writes one delivery row per target that receives `subject` (`dropped` over a
/// target's rate limit); an existing row for the same alert and target stays as it is.
async fn queue(
    tx: &mut sqlx::AnyConnection,
    targets: &[(Target, Destination)],
    event_id: &str,
    subject: &Subject<'_>,
    recent: &mut HashMap<String, u32>,
    now: DateTime<Utc>,
) -> Result<(), NotifyStoreError> {
    for (t, _) in targets {
        let route = Route {
            tenant: t.tenant.as_deref(),
            events: &t.events,
            created_at_ms: t.created_at.timestamp_millis(),
        };
        if !receives(&route, subject) {
            continue;
        }
        let n = recent.entry(t.id.clone()).or_default();
        let admitted = t.rate_limit_per_minute == 0 || *n < t.rate_limit_per_minute;
        let (status, error) = if admitted {
            *n += 1;
            ("pending", String::new())
        } else {
            (
                "dropped",
                format!(
                    "rate limit: more than {} per minute",
                    t.rate_limit_per_minute
                ),
            )
        };
        sqlx::query(&tx.sql(
            "INSERT INTO notification_deliveries (event_id, target_id, tenant, kind, \
             status, attempts, created_at_ms, next_attempt_at_ms, last_error) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8) \
             ON CONFLICT (event_id, target_id) DO NOTHING",
        ))
        .bind(event_id)
        .bind(&t.id)
        .bind(t.tenant.clone().unwrap_or_default())
        .bind(subject.kind)
        .bind(status)
        .bind(now.timestamp_millis())
        .bind(now.timestamp_millis())
        .bind(error)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Writes rows the relay makes itself (ops alerts, digests) into the outbox at
/// position 0, where the notifier's cursor does not look, and queues their deliveries
/// to the enabled targets in the same transaction, together with `extra` (e.g. a
/// cursor update). A row already there (from the event, or an earlier try) stays;
/// deliveries are keyed by (id, target), so nothing is queued twice.
pub async fn write_direct(
    store: &NotifyStore,
    rows: &[OutboxRow],
    now: DateTime<Utc>,
    extra: Option<(&str, i64)>,
) -> Result<(), NotifyStoreError> {
    let db = store.db();
    let targets = store.enabled().await?;
    let mut recent = recent_deliveries(db, now).await?;
    let mut tx = db.begin().await?;
    for row in rows {
        projections::notifications::insert_direct(&mut tx, row).await?;
        let subject = Subject {
            kind: &row.kind,
            audience: if row.audience == Audience::Tenant.as_str() {
                Audience::Tenant
            } else {
                Audience::Operator
            },
            tenant: (!row.tenant.is_empty()).then_some(row.tenant.as_str()),
            occurred_at_ms: row.occurred_at_ms,
        };
        queue(&mut tx, &targets, &row.event_id, &subject, &mut recent, now).await?;
    }
    if let Some((name, position)) = extra {
        sqlx::query(&tx.sql(
            "INSERT INTO notifier_cursor (name, position) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        ))
        .bind(name)
        .bind(position)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn alert_of(r: &sqlx::any::AnyRow) -> Result<Alert, sqlx::Error> {
    let opt = |s: String| (!s.is_empty()).then_some(s);
    let details: String = r.try_get("details")?;
    Ok(Alert {
        id: r.try_get("event_id")?,
        kind: r.try_get("kind")?,
        severity: r.try_get("severity")?,
        occurred_at: DateTime::from_timestamp_millis(r.try_get("occurred_at_ms")?)
            .unwrap_or_default(),
        tenant: opt(r.try_get("owner")?),
        api_key: opt(r.try_get("api_key")?),
        account: opt(r.try_get("account")?),
        title: r.try_get("title")?,
        message: r.try_get("message")?,
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
    })
}

/// One due delivery.
struct Job {
    /// What to send.
    alert: Alert,
    /// Attempts made so far.
    attempts: i64,
    /// When it was queued (ms), for the maximum age.
    queued_ms: i64,
}

/// What the lease holder watches besides the outbox.
pub struct Sources {
    /// The event log, for the projectors' lag.
    pub log: Arc<dyn EventLog>,
    /// Writes ops alerts.
    pub alerts: OpsAlerts,
    /// The zone of the daily digest's days (`BILLING_TIMEZONE`); `None`: no digest.
    pub digest_tz: Option<Tz>,
}

/// The delivery worker.
pub struct Notifier {
    /// Targets and deliveries.
    store: NotifyStore,
    /// Sends.
    http: reqwest::Client,
    /// Retry schedule.
    retry: RetryPolicy,
    /// Poll interval.
    poll: Duration,
    /// Lease holder name, unique per process.
    holder: String,
    /// The log, the ops alerts, the digest's zone.
    sources: Sources,
    /// The projector lag watch (the lease holder's).
    lag: Mutex<LagWatch>,
    /// The lag alert threshold, for the text.
    lag_events: u64,
    /// The local hour after which yesterday's digest is made.
    digest_hour: u32,
    /// The log head the usage projection must reach before due digests are made
    /// (read when they became due).
    digest_head: Mutex<Option<u64>>,
}

/// A lock that outlives a panic elsewhere (the data is a plain state machine).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Notifier {
    /// A notifier over `store`.
    pub fn new(
        store: NotifyStore,
        egress: crate::egress::EgressPolicy,
        config: &NotifyConfig,
        sources: Sources,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            store,
            http: http_client(egress, config.timeout())?,
            retry: config.retry(),
            poll: config.poll(),
            holder: format!("notifier-{}", uuid::Uuid::now_v7().simple()),
            sources,
            lag: Mutex::new(LagWatch::new(
                config.notify_lag_events,
                Duration::from_secs(config.notify_lag_secs),
            )),
            lag_events: config.notify_lag_events,
            digest_hour: config.notify_digest_hour,
            digest_head: Mutex::new(None),
        })
    }

    /// Runs until `shutdown`: every poll interval, takes or renews the lease and, if
    /// held, makes one pass. Gives the lease up on the way out.
    pub async fn run(self, shutdown: CancellationToken) {
        let db = self.store.db().clone();
        loop {
            match projections::try_lease(&db, LEASE, &self.holder, LEASE_TTL).await {
                Ok(true) => {
                    if let Err(e) = self.pass(Utc::now()).await {
                        tracing::warn!(error = %e, "notifier pass failed");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "notifier cannot take its lease"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
        projections::release_lease(&db, LEASE, &self.holder).await;
    }

    /// One pass: watch the projectors' lag, make due digests, queue new outbox rows
    /// for their targets, then send what is due. `now` decides what is due (a test
    /// may pass tomorrow); attempts are stamped with the clock.
    pub async fn pass(&self, now: DateTime<Utc>) -> Result<(), NotifyStoreError> {
        let db = self.store.db();
        match projections::read::lag(
            db,
            self.sources.log.as_ref(),
            &projections::PROJECTION_NAMES,
        )
        .await
        {
            Ok(lag) => {
                if let Err(e) = self.watch_lag(now, &lag).await {
                    tracing::warn!(error = %e, "cannot write a projector lag alert");
                }
                if let Err(e) = self.digests(now, &lag).await {
                    tracing::warn!(error = %e, "cannot make the daily digests");
                }
            }
            Err(e) => tracing::debug!(error = %e, "projector lag unknown"),
        }
        let targets = self.store.enabled().await?;
        if targets.is_empty() {
            // Nothing to send to; the cursor catches up when a target appears (rows
            // older than a target are skipped then).
            return Ok(());
        }
        while self.enqueue(&targets, now).await? {}
        self.deliver_due(&targets, now).await
    }

    /// Feeds the lag watch; raises its notice when it changed.
    async fn watch_lag(
        &self,
        now: DateTime<Utc>,
        lag: &[projections::read::ProjectionLag],
    ) -> Result<(), NotifyStoreError> {
        let changed = lock(&self.lag).observe(now, &super::ops::readings(lag));
        if let Some((change, summary)) = changed {
            self.sources
                .alerts
                .lag_changed(now, change, &summary, self.lag_events)
                .await?;
        }
        Ok(())
    }

    /// Makes the digests of the days that are due, once the usage projection has
    /// applied what the log held when they became due. Each day's rows, their
    /// deliveries and the digest cursor are written in one transaction.
    async fn digests(
        &self,
        now: DateTime<Utc>,
        lag: &[projections::read::ProjectionLag],
    ) -> Result<(), NotifyStoreError> {
        let Some(tz) = self.sources.digest_tz else {
            return Ok(());
        };
        let db = self.store.db();
        let done =
            sqlx::query(&db.sql("SELECT position FROM notifier_cursor WHERE name = 'digest'"))
                .fetch_optional(db)
                .await?
                .map(|r| r.try_get::<i64, _>("position"))
                .transpose()?
                .and_then(|n| i32::try_from(n).ok())
                .and_then(NaiveDate::from_num_days_from_ce_opt);
        let days = digest::due_days(now, tz, self.digest_hour, done);
        if days.is_empty() {
            return Ok(());
        }
        let Some(usage) = lag.iter().find(|l| l.projection == "usage") else {
            return Ok(());
        };
        let wait_for = *lock(&self.digest_head).get_or_insert(usage.head);
        if usage.checkpoint < wait_for {
            return Ok(());
        }
        for day in days {
            let (from, to) = digest::day_bounds(day, tz);
            let rows: Vec<OutboxRow> =
                projections::read::tenant_usage_between(db, from, to, &day.to_string())
                    .await?
                    .iter()
                    .map(|u| digest::digest_row(day, tz, u))
                    .collect();
            write_direct(
                &self.store,
                &rows,
                now,
                Some(("digest", i64::from(day.num_days_from_ce()))),
            )
            .await?;
            tracing::info!(%day, tenants = rows.len(), "daily digests made");
        }
        *lock(&self.digest_head) = None;
        Ok(())
    }

    /// Turns the next page of outbox rows into delivery rows and moves the cursor past
    /// them, in one transaction. Returns whether a full page was read (more may wait).
    async fn enqueue(
        &self,
        targets: &[(Target, Destination)],
        now: DateTime<Utc>,
    ) -> Result<bool, NotifyStoreError> {
        let db = self.store.db();
        let cursor: i64 =
            sqlx::query(&db.sql("SELECT position FROM notifier_cursor WHERE name = 'outbox'"))
                .fetch_optional(db)
                .await?
                .map(|r| r.try_get::<i64, _>("position"))
                .transpose()?
                .unwrap_or(0);
        let rows = sqlx::query(&db.sql(&format!(
            "{OUTBOX_SELECT} WHERE o.position > $1 ORDER BY o.position LIMIT $2"
        )))
        .bind(cursor)
        .bind(OUTBOX_PAGE)
        .fetch_all(db)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(false);
        };
        let last: i64 = last.try_get("position")?;
        let mut recent = recent_deliveries(db, now).await?;
        let mut tx = db.begin().await?;
        for r in &rows {
            let event_id: String = r.try_get("event_id")?;
            let kind: String = r.try_get("kind")?;
            let audience: String = r.try_get("audience")?;
            let owner: String = r.try_get("owner")?;
            let subject = Subject {
                kind: &kind,
                audience: if audience == Audience::Tenant.as_str() {
                    Audience::Tenant
                } else {
                    Audience::Operator
                },
                tenant: (!owner.is_empty()).then_some(owner.as_str()),
                occurred_at_ms: r.try_get("occurred_at_ms")?,
            };
            queue(&mut tx, targets, &event_id, &subject, &mut recent, now).await?;
        }
        sqlx::query(&tx.sql(
            "INSERT INTO notifier_cursor (name, position) VALUES ('outbox', $1) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        ))
        .bind(last)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(i64::try_from(rows.len()).unwrap_or(0) >= OUTBOX_PAGE)
    }

    /// Sends the due deliveries of enabled targets, a few at a time.
    async fn deliver_due(
        &self,
        targets: &[(Target, Destination)],
        now: DateTime<Utc>,
    ) -> Result<(), NotifyStoreError> {
        let db = self.store.db();
        let rows = sqlx::query(&db.sql(&format!(
            "SELECT d.target_id, d.attempts, d.created_at_ms AS queued_at_ms, q.* \
             FROM notification_deliveries d JOIN ({OUTBOX_SELECT}) q ON q.event_id = d.event_id \
             WHERE d.status = 'pending' AND d.next_attempt_at_ms <= $1 \
             AND d.target_id IN (SELECT id FROM notification_targets WHERE enabled = 1) \
             ORDER BY q.position, q.occurred_at_ms, q.owner, q.event_id, d.target_id LIMIT $2"
        )))
        .bind(now.timestamp_millis())
        .bind(SEND_PAGE)
        .fetch_all(db)
        .await?;
        let by_id: HashMap<&str, &Destination> =
            targets.iter().map(|(t, d)| (t.id.as_str(), d)).collect();
        // One queue per target, in log order (the relay's own rows, all at position 0,
        // by time, then tenant, on every database): a target sees its alerts in the order
        // they happened; targets are served side by side. Owned jobs: the stream's
        // closure takes no borrowed arguments.
        let mut queues: Vec<(String, Destination, Vec<Job>)> = Vec::new();
        for r in &rows {
            let target: String = r.try_get("target_id")?;
            let Some(dest) = by_id.get(target.as_str()) else {
                continue;
            };
            let job = Job {
                alert: alert_of(r)?,
                attempts: r.try_get("attempts")?,
                queued_ms: r.try_get("queued_at_ms")?,
            };
            match queues.iter_mut().find(|(t, _, _)| *t == target) {
                Some((_, _, q)) => q.push(job),
                None => queues.push((target, (*dest).clone(), vec![job])),
            }
        }
        let results: Vec<Result<(), NotifyStoreError>> = futures::stream::iter(queues)
            .map(|(target, dest, jobs)| async move {
                for job in jobs {
                    self.attempt(&job, &target, &dest).await?;
                }
                Ok(())
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Claims one delivery (so no other process sends it), sends it and records the
    /// outcome.
    async fn attempt(
        &self,
        job: &Job,
        target: &str,
        dest: &Destination,
    ) -> Result<(), NotifyStoreError> {
        let Job {
            alert,
            attempts,
            queued_ms,
        } = job;
        let (attempts, queued_ms) = (*attempts, *queued_ms);
        let db = self.store.db();
        let started = Utc::now();
        let claimed = sqlx::query(&db.sql(
            "UPDATE notification_deliveries SET attempts = attempts + 1, \
             last_attempt_at_ms = $1, next_attempt_at_ms = $2 \
             WHERE event_id = $3 AND target_id = $4 AND status = 'pending' AND attempts = $5",
        ))
        .bind(started.timestamp_millis())
        .bind(started.timestamp_millis() + 2 * LEASE_TTL.as_millis() as i64)
        .bind(&alert.id)
        .bind(target)
        .bind(attempts)
        .execute(db)
        .await?;
        if claimed.rows_affected() != 1 {
            return Ok(());
        }
        let result = send(&self.http, dest, alert, started).await;
        let now = Utc::now();
        let tried = u32::try_from(attempts + 1).unwrap_or(u32::MAX);
        match result {
            Ok(status) => {
                sqlx::query(&db.sql(
                    "UPDATE notification_deliveries SET status = 'delivered', \
                     delivered_at_ms = $1, response_status = $2, last_error = '' \
                     WHERE event_id = $3 AND target_id = $4",
                ))
                .bind(now.timestamp_millis())
                .bind(i64::from(status))
                .bind(&alert.id)
                .bind(target)
                .execute(db)
                .await?;
            }
            Err((status, error)) => {
                let queued = DateTime::from_timestamp_millis(queued_ms).unwrap_or(now);
                let jitter: f64 = rand::random();
                let (state, next) = match self.retry.after_failure(tried, queued, now, jitter) {
                    Next::RetryAt(at) => ("pending", at.timestamp_millis()),
                    Next::GiveUp => ("failed", now.timestamp_millis()),
                };
                tracing::info!(
                    target_id = target, event = %alert.id, attempts = tried, status = state,
                    error = %error, "notification delivery failed"
                );
                sqlx::query(&db.sql(
                    "UPDATE notification_deliveries SET status = $1, next_attempt_at_ms = $2, \
                     response_status = $3, last_error = $4 WHERE event_id = $5 AND target_id = $6",
                ))
                .bind(state)
                .bind(next)
                .bind(status.map(i64::from))
                .bind(error)
                .bind(&alert.id)
                .bind(target)
                .execute(db)
                .await?;
            }
        }
        Ok(())
    }
}

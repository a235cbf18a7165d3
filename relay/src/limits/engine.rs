//! The limiter on the proxy path, and the leases that make its limits hold across
//! relays.
//!
//! Every limit is a *scope* (`budget:key:<id>:daily:<window start>`,
//! `conc:<key>`, `rpm:<key>`, `budget:tenant:<id>:monthly:<start>`). A relay serves
//! requests from what it holds locally and leases more from the database when that
//! runs out, in one short transaction that sees the ledger and every other relay's
//! fresh lease:
//!
//! - **budgets** (nanodollars): `ledger spent + Σ leases ≤ limit` always holds. A
//!   request reserves its worst case from the local lease; at the end it settles to the
//!   actual cost, which stays counted against the lease until the projection has put
//!   it in the ledger, then the lease shrinks by it. So spend never passes the limit
//!   (beyond an actual cost above its estimate), on one relay or many;
//! - **concurrency** (slots): `Σ leases ≤ max_concurrency`;
//! - **rpm** (tokens): a token bucket row that refills continuously; relays take
//!   tokens in slices.
//!
//! Leases not renewed within [`LEASE_TTL`] (a dead relay's) stop counting. Idle
//! relays give back what they do not use. When the database cannot be read the key
//! fails closed, unless the operator chose `LIMITS_FAIL_OPEN`.

use super::window::{self, Period};
use super::{rules, usd, KeyLimits, LimitName, Rejection};
use crate::keys::ApiKey;
use chrono::{DateTime, Utc, Weekday};
use chrono_tz::Tz;
use projections::Dialect as _;
use projections::{Backend, PriceTable};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A lease not renewed for this long no longer counts (its relay is gone).
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often leases are renewed, settled costs folded into the ledger view, and idle
/// capacity given back.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);
/// A scope unused for this long gives back its unused capacity.
pub const IDLE: Duration = Duration::from_secs(2);
/// A settled cost not seen in the ledger after this long is forgotten.
pub const UNPROJECTED_TTL: Duration = Duration::from_secs(300);

/// Settings of the limiter.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Zone of key windows (and of tenants without their own).
    pub tz: Tz,
    /// First day of a budget week.
    pub week_start: Weekday,
    /// Admit when the limits cannot be read.
    pub fail_open: bool,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            tz: chrono_tz::UTC,
            week_start: Weekday::Mon,
            fail_open: false,
        }
    }
}

/// A tenant's own budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantBudget {
    /// The tenant.
    pub tenant: String,
    /// USD per calendar month.
    pub monthly_budget_usd: rust_decimal::Decimal,
    /// The tenant's zone, if not the default.
    pub tz: Option<Tz>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Nanodollars spent in `[start, end)` by a key or a tenant.
    Budget {
        column: &'static str,
        owner: String,
        start_ms: i64,
        end_ms: Option<i64>,
        name: LimitName,
    },
    /// Requests in flight.
    Concurrency,
    /// Requests per minute.
    Rpm,
}

#[derive(Debug)]
struct Local {
    /// What this relay holds (the lease row's `granted`).
    granted: i64,
    /// Reserved by requests in flight (budget: nanodollars; concurrency: slots).
    inflight: i64,
    /// Settled costs not yet seen in the ledger: (request id, nanodollars, when).
    unprojected: Vec<(String, i64, Instant)>,
    /// Their sum, kept up to date (the admission path reads it on every request).
    unprojected_total: i64,
    /// Last time a request used the scope.
    last_used: Instant,
    /// The ledger and the other relays' leases, as last read.
    spent_known: i64,
    others_known: i64,
    /// Until when a lease attempt found nothing left (avoids a transaction per refusal).
    exhausted_until: Option<Instant>,
    /// Budget thresholds (50, 80, 100 %) already announced in this window: bits 0..3.
    crossed: u8,
    /// Last time the ledger was read for thresholds.
    checked_at: Option<Instant>,
}

impl Local {
    fn headroom(&self, kind: &Kind) -> i64 {
        match kind {
            Kind::Rpm => self.granted,
            _ => self.granted - self.inflight - self.unprojected_sum(),
        }
    }

    fn unprojected_sum(&self) -> i64 {
        self.unprojected_total
    }
}

struct Scope {
    name: String,
    kind: Kind,
    limit: Mutex<i64>,
    local: Mutex<Local>,
    /// One lease transaction (or sync) at a time per scope in this process.
    leasing: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

enum TakeError {
    Exhausted {
        current: i64,
        limit: i64,
        retry_after: Option<u64>,
    },
    Store(String),
}

/// What one lease transaction did.
struct Leased {
    /// The holding grew.
    grew: bool,
    /// Rpm: seconds until a token refills, when the bucket was empty.
    retry_after: Option<u64>,
}

/// What a request holds; released on drop (every exit path), settled to the actual
/// cost by [`Permit::settle`].
pub struct Permit {
    /// (scope, amount reserved).
    held: Vec<(Arc<Scope>, i64)>,
    /// The request's id (to find its cost in the ledger).
    request_id: String,
    /// Remaining budget after this reservation, the tightest one, and its limit.
    pub remaining: Option<(LimitName, rust_decimal::Decimal)>,
    /// The key's rpm, if limited.
    pub rpm: Option<u32>,
    /// The key's concurrency limit, if any.
    pub max_concurrency: Option<u32>,
    settled: bool,
}

impl Permit {
    /// Settles every budget to `actual` nanodollars and releases the slots.
    pub fn settle(mut self, actual_nanos: i64) {
        self.release(Some(actual_nanos));
    }

    fn release(&mut self, actual: Option<i64>) {
        if self.settled {
            return;
        }
        self.settled = true;
        let now = Instant::now();
        for (scope, amount) in self.held.drain(..) {
            let mut l = lock(&scope.local);
            match scope.kind {
                Kind::Rpm => {}
                Kind::Concurrency => l.inflight -= amount,
                Kind::Budget { .. } => {
                    l.inflight -= amount;
                    // Unsettled (a path that never finished): keep the worst case.
                    let cost = actual.unwrap_or(amount);
                    if cost > 0 {
                        l.unprojected.push((self.request_id.clone(), cost, now));
                        l.unprojected_total += cost;
                    }
                }
            }
            l.last_used = now;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release(None);
    }
}

/// What one limit looks like now, for `GET /api/v1/api-keys/{id}/limits`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LimitState {
    /// The limit.
    pub limit: LimitName,
    /// Its value (USD for budgets, requests otherwise).
    #[schema(value_type = String)]
    pub value: rust_decimal::Decimal,
    /// Used in the current window (budgets: the ledger, as `GET /api/v1/usage` shows).
    #[schema(value_type = String)]
    pub used: rust_decimal::Decimal,
    /// Held by requests in flight and costs not yet in the ledger, on every relay.
    #[schema(value_type = String)]
    pub reserved: rust_decimal::Decimal,
    /// `value − used − reserved`, never below zero.
    #[schema(value_type = String)]
    pub remaining: rust_decimal::Decimal,
    /// Start of the window.
    pub window_start: Option<DateTime<Utc>>,
    /// When the window resets.
    pub resets_at: Option<DateTime<Utc>>,
}

/// The limiter.
pub struct Limiter {
    db: AnyPool,
    backend: Backend,
    /// This process in the lease table.
    relay: String,
    prices: Arc<PriceTable>,
    settings: LimitSettings,
    scopes: Mutex<HashMap<String, Arc<Scope>>>,
    /// Where threshold announcements go (none in tests that drive the limiter alone).
    publisher: Option<ingest::publisher::Publisher>,
}

/// The thresholds announced, in percent.
pub const THRESHOLDS: [i64; 3] = [50, 80, 100];

impl Limiter {
    /// Announces budget thresholds through `publisher`.
    pub fn with_publisher(mut self, publisher: ingest::publisher::Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Publishes one `budget.threshold_crossed` per threshold the ledger has passed
    /// in the scope's window. The event id is derived from the scope and threshold, so
    /// relays and restarts announcing the same crossing produce one event.
    fn announce_thresholds(&self, scope: &Scope, spent: i64) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        let Kind::Budget {
            column,
            owner,
            start_ms,
            name,
            ..
        } = &scope.kind
        else {
            return;
        };
        let limit = *lock(&scope.limit);
        if limit <= 0 {
            return;
        }
        let mut l = lock(&scope.local);
        for (bit, pct) in THRESHOLDS.iter().enumerate() {
            let mask = 1u8 << bit;
            if l.crossed & mask != 0 || spent.saturating_mul(100) < limit.saturating_mul(*pct) {
                continue;
            }
            l.crossed |= mask;
            let target = format!(
                "{}:{owner}",
                if *column == "tenant" { "tenant" } else { "key" }
            );
            let id = uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_URL,
                format!("{}#{pct}", scope.name).as_bytes(),
            );
            let window = if *start_ms > 0 {
                DateTime::from_timestamp_millis(*start_ms)
                    .map(|t| format!(" (window from {})", t.to_rfc3339()))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let summary = format!(
                "{} of {target} passed {pct}%: ${} of ${}{window}",
                name.as_str(),
                usd(spent),
                usd(limit)
            );
            let mut env = schema::Envelope::new(
                id,
                Utc::now(),
                schema::Event::AdminAction(schema::AdminAction::new(
                    "relay",
                    schema::AdminVerb::BudgetThreshold,
                    target,
                    summary,
                )),
            );
            if *column == "tenant" {
                env = env.with_key(schema::TenantId::parse(owner.as_str()).ok(), None);
            } else {
                env = env.with_key(None, schema::ApiKeyId::parse(owner.as_str()).ok());
            }
            publisher.publish(env);
        }
    }

    async fn ledger_spent(&self, scope: &Scope) -> Result<Option<i64>, sqlx::Error> {
        let Kind::Budget {
            column,
            owner,
            start_ms,
            end_ms,
            ..
        } = &scope.kind
        else {
            return Ok(None);
        };
        let col = if *column == "tenant" {
            "tenant"
        } else {
            "api_key"
        };
        let row = sqlx::query(&self.db.sql(&format!(
            "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS n FROM usage_ledger \
             WHERE {col} = $1 AND occurred_at_ms >= $2 AND occurred_at_ms < $3"
        )))
        .bind(owner)
        .bind(*start_ms)
        .bind(end_ms.unwrap_or(i64::MAX))
        .fetch_one(&self.db)
        .await?;
        Ok(Some(row.try_get::<i64, _>("n")?))
    }
    /// A limiter over the database.
    pub fn new(
        db: AnyPool,
        backend: Backend,
        prices: Arc<PriceTable>,
        settings: LimitSettings,
    ) -> Self {
        Self {
            db,
            backend,
            relay: format!("relay_{}", uuid::Uuid::now_v7().simple()),
            prices,
            settings,
            scopes: Mutex::default(),
            publisher: None,
        }
    }

    /// The price table reservations are priced with.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    fn scope(&self, name: String, kind: Kind, limit: i64) -> Arc<Scope> {
        let mut map = lock(&self.scopes);
        let s = map
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Scope {
                    name,
                    kind,
                    limit: Mutex::new(limit),
                    local: Mutex::new(Local {
                        granted: 0,
                        inflight: 0,
                        unprojected: Vec::new(),
                        unprojected_total: 0,
                        last_used: Instant::now(),
                        spent_known: 0,
                        others_known: 0,
                        exhausted_until: None,
                        crossed: 0,
                        checked_at: None,
                    }),
                    leasing: tokio::sync::Mutex::new(()),
                })
            })
            .clone();
        *lock(&s.limit) = limit;
        s
    }

    /// The budget scopes of a request (key budgets, then the tenant's).
    fn budget_scopes(
        &self,
        key: &ApiKey,
        limits: &KeyLimits,
        tenant: Option<&TenantBudget>,
        now: DateTime<Utc>,
    ) -> Vec<(Arc<Scope>, i64)> {
        let mut out = Vec::new();
        for (period, budget) in limits.budgets() {
            let (start, end) =
                window::bounds(period, now, self.settings.tz, self.settings.week_start);
            let start_ms = if period == Period::Total {
                0
            } else {
                start.timestamp_millis()
            };
            let limit = projections::money::usd_to_nanos(budget).unwrap_or(i64::MAX);
            let name = format!("budget:key:{}:{}:{start_ms}", key.id, period.as_str());
            let kind = Kind::Budget {
                column: "api_key",
                owner: key.id.to_string(),
                start_ms,
                end_ms: end.map(|e| e.timestamp_millis()),
                name: LimitName::of_period(period),
            };
            out.push((self.scope(name, kind, limit), limit));
        }
        if let Some(t) = tenant {
            let tz = t.tz.unwrap_or(self.settings.tz);
            let (start, end) = window::bounds(Period::Monthly, now, tz, self.settings.week_start);
            let limit = projections::money::usd_to_nanos(t.monthly_budget_usd).unwrap_or(i64::MAX);
            let name = format!(
                "budget:tenant:{}:monthly:{}",
                t.tenant,
                start.timestamp_millis()
            );
            let kind = Kind::Budget {
                column: "tenant",
                owner: t.tenant.clone(),
                start_ms: start.timestamp_millis(),
                end_ms: end.map(|e| e.timestamp_millis()),
                name: LimitName::TenantMonthlyBudget,
            };
            out.push((self.scope(name, kind, limit), limit));
        }
        out
    }

    /// Admits a request or says which limit refuses it. `reservation` is the
    /// request's worst-case cost in nanodollars (0 for free endpoints).
    #[expect(
        clippy::too_many_arguments,
        reason = "one admission decision with its inputs"
    )]
    pub async fn admit(
        &self,
        key: &ApiKey,
        limits: &KeyLimits,
        tenant: Option<&TenantBudget>,
        model: Option<&str>,
        ip: Option<IpAddr>,
        reservation: i64,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Permit, Rejection> {
        if let Some(m) = model {
            if !rules::model_allowed(&limits.allowed_models, m) {
                return Err(Rejection {
                    limit: LimitName::Model,
                    message: format!(
                        "relay: this API key may not use model {:?}; allowed: {}",
                        m.chars().take(64).collect::<String>(),
                        limits.allowed_models.join(", ")
                    ),
                    retry_after: None,
                });
            }
        }
        if !rules::ip_allowed(&limits.allowed_ips, ip) {
            return Err(Rejection {
                limit: LimitName::Ip,
                message: format!(
                    "relay: this API key may not be used from {}",
                    ip.map(|i| i.to_string())
                        .unwrap_or_else(|| "an unknown address".into())
                ),
                retry_after: None,
            });
        }
        let mut permit = Permit {
            held: Vec::new(),
            request_id: request_id.to_owned(),
            remaining: None,
            rpm: limits.rpm,
            max_concurrency: limits.max_concurrency,
            settled: false,
        };
        if let Some(c) = limits.max_concurrency {
            let scope = self.scope(format!("conc:{}", key.id), Kind::Concurrency, i64::from(c));
            self.take(&scope, 1)
                .await
                .map_err(|e| self.reject(LimitName::Concurrency, e))?;
            permit.held.push((scope, 1));
        }
        if let Some(r) = limits.rpm {
            let scope = self.scope(format!("rpm:{}", key.id), Kind::Rpm, i64::from(r));
            self.take(&scope, 1)
                .await
                .map_err(|e| self.reject(LimitName::Rpm, e))?;
            permit.held.push((scope, 0));
        }
        if reservation > 0 || !limits.budgets().is_empty() || tenant.is_some() {
            for (scope, limit) in self.budget_scopes(key, limits, tenant, now) {
                let name = match &scope.kind {
                    Kind::Budget { name, .. } => *name,
                    _ => LimitName::Unavailable,
                };
                self.take(&scope, reservation.max(0))
                    .await
                    .map_err(|e| self.reject(name, e))?;
                let l = lock(&scope.local);
                let left =
                    limit - l.spent_known - l.others_known - (l.granted - l.headroom(&scope.kind));
                drop(l);
                let left = usd(left.max(0));
                if permit.remaining.as_ref().is_none_or(|(_, r)| left < *r) {
                    permit.remaining = Some((name, left));
                }
                permit.held.push((scope, reservation.max(0)));
            }
        }
        Ok(permit)
    }

    fn reject(&self, limit: LimitName, e: TakeError) -> Rejection {
        match e {
            TakeError::Store(msg) => {
                tracing::error!(error = %msg, "limits store unavailable; refusing (LIMITS_FAIL_OPEN=false)");
                Rejection {
                    limit: LimitName::Unavailable,
                    message: "relay: the limits of this API key cannot be checked right now; retry shortly".into(),
                    retry_after: Some(2),
                }
            }
            TakeError::Exhausted {
                current,
                limit: max,
                retry_after,
            } => {
                let message = match limit {
                    LimitName::Concurrency => format!(
                        "relay: max_concurrency reached: {current} of {max} requests in flight for this API key"
                    ),
                    LimitName::Rpm => format!(
                        "relay: rpm limit reached: {max} requests per minute for this API key; next request allowed in {} s",
                        retry_after.unwrap_or(1)
                    ),
                    other => format!(
                        "relay: {} exhausted: ${} of ${} used or reserved",
                        other.as_str(),
                        usd(current),
                        usd(max)
                    ),
                };
                Rejection {
                    limit,
                    message,
                    retry_after,
                }
            }
        }
    }

    /// Takes `amount` from the scope's local holding, leasing more when it runs out.
    async fn take(&self, scope: &Arc<Scope>, amount: i64) -> Result<(), TakeError> {
        let want = if matches!(scope.kind, Kind::Rpm) {
            1
        } else {
            amount
        };
        if self.take_local(scope, want) {
            return Ok(());
        }
        let _one = scope.leasing.lock().await;
        // A lease can be taken from under us by a request on the lock-free fast path:
        // lease again while leases still grow; only a lease that finds nothing left
        // means the limit is reached.
        for _ in 0..8 {
            if self.take_local(scope, want) {
                return Ok(());
            }
            {
                let l = lock(&scope.local);
                if l.exhausted_until.is_some_and(|t| t > Instant::now()) {
                    return Err(self.exhausted(scope, &l, None));
                }
            }
            match self.lease(scope, want).await {
                Ok(Leased { grew: true, .. }) => continue,
                Ok(Leased {
                    grew: false,
                    retry_after,
                }) => {
                    let mut l = lock(&scope.local);
                    l.exhausted_until = Some(Instant::now() + Duration::from_millis(100));
                    return Err(self.exhausted(scope, &l, retry_after));
                }
                Err(e) if self.settings.fail_open => {
                    tracing::warn!(scope = %scope.name, error = %e, "limits store unavailable; admitting (LIMITS_FAIL_OPEN)");
                    let mut l = lock(&scope.local);
                    if !matches!(scope.kind, Kind::Rpm) {
                        l.granted += want;
                        l.inflight += want;
                    }
                    return Ok(());
                }
                Err(e) => return Err(TakeError::Store(e.to_string())),
            }
        }
        let l = lock(&scope.local);
        Err(self.exhausted(scope, &l, Some(1)))
    }

    fn exhausted(&self, scope: &Scope, l: &Local, retry_after: Option<u64>) -> TakeError {
        let limit = *lock(&scope.limit);
        match scope.kind {
            Kind::Concurrency => TakeError::Exhausted {
                current: l.others_known + l.inflight,
                limit,
                retry_after: Some(1),
            },
            Kind::Rpm => TakeError::Exhausted {
                current: limit,
                limit,
                retry_after: Some(retry_after.unwrap_or(1)),
            },
            Kind::Budget { end_ms, .. } => TakeError::Exhausted {
                current: (l.spent_known + l.others_known + l.inflight + l.unprojected_sum())
                    .min(limit.max(0))
                    .max(l.spent_known),
                limit,
                retry_after: end_ms.map(|e| {
                    u64::try_from((e - Utc::now().timestamp_millis()).max(0) / 1000 + 1)
                        .unwrap_or(1)
                }),
            },
        }
    }

    fn take_local(&self, scope: &Scope, want: i64) -> bool {
        let mut l = lock(&scope.local);
        l.last_used = Instant::now();
        if l.headroom(&scope.kind) < want {
            return false;
        }
        match scope.kind {
            Kind::Rpm => l.granted -= want,
            _ => l.inflight += want,
        }
        true
    }

    /// A lease transaction. SQLite takes the write lock up front (`BEGIN IMMEDIATE`):
    /// a deferred transaction that reads the ledger and then writes would fail with
    /// `SQLITE_BUSY` instead of waiting when another writer got in between.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.db.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres | Backend::MySql => self.db.begin().await,
        }
    }

    async fn lock_scope(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        scope: &str,
    ) -> Result<(), sqlx::Error> {
        if self.backend != Backend::Sqlite {
            sqlx::query(
                &tx.sql(
                    "INSERT INTO limit_locks (scope) VALUES ($1) ON CONFLICT (scope) DO NOTHING",
                ),
            )
            .bind(scope)
            .execute(&mut **tx)
            .await?;
            sqlx::query(&tx.sql("SELECT scope FROM limit_locks WHERE scope = $1 FOR UPDATE"))
                .bind(scope)
                .fetch_one(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// One lease transaction: grows this relay's holding by at least `want` if the
    /// limit allows. Says whether it grew (the holding itself may meanwhile have been
    /// spent by requests on the fast path, so it cannot tell) and, for rpm, when a
    /// token refills.
    async fn lease(&self, scope: &Scope, want: i64) -> Result<Leased, sqlx::Error> {
        let limit = *lock(&scope.limit);
        let now_ms = Utc::now().timestamp_millis();
        let fresh = now_ms - i64::try_from(LEASE_TTL.as_millis()).unwrap_or(30_000);
        let mut tx = self.begin().await?;
        self.lock_scope(&mut tx, &scope.name).await?;
        if let Kind::Rpm = scope.kind {
            let hint = self
                .take_tokens(&mut tx, scope, limit, want, now_ms)
                .await?;
            tx.commit().await?;
            return Ok(Leased {
                grew: hint.is_none(),
                retry_after: hint,
            });
        }
        let spent = match &scope.kind {
            Kind::Budget {
                column,
                owner,
                start_ms,
                end_ms,
                ..
            } => {
                let col = if *column == "tenant" {
                    "tenant"
                } else {
                    "api_key"
                };
                let row = sqlx::query(&tx.sql(&format!(
                    "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS n FROM usage_ledger \
                     WHERE {col} = $1 AND occurred_at_ms >= $2 AND occurred_at_ms < $3"
                )))
                .bind(owner)
                .bind(*start_ms)
                .bind(end_ms.unwrap_or(i64::MAX))
                .fetch_one(&mut *tx)
                .await?;
                row.try_get::<i64, _>("n")?
            }
            _ => 0,
        };
        let others: i64 = sqlx::query(&tx.sql(
            "SELECT CAST(COALESCE(SUM(granted), 0) AS BIGINT) AS n FROM limit_leases \
             WHERE scope = $1 AND relay <> $2 AND updated_at_ms >= $3",
        ))
        .bind(&scope.name)
        .bind(&self.relay)
        .bind(fresh)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        let (own, headroom) = {
            let l = lock(&scope.local);
            (l.granted, l.headroom(&scope.kind))
        };
        let available = limit - spent - others - own;
        let need = want - headroom;
        let slice = match scope.kind {
            // A few slots at a time, so a busy relay does not lease on every request.
            Kind::Concurrency => need.max((limit / 20).min(16)),
            _ => need.max(limit / 20).max(want.saturating_mul(2)),
        };
        let grow = slice.min(available);
        if grow >= need && grow > 0 {
            sqlx::query(&tx.sql("INSERT INTO limit_leases (scope, relay, granted, updated_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (scope, relay) DO UPDATE SET granted = excluded.granted, updated_at_ms = excluded.updated_at_ms"))
            .bind(&scope.name)
            .bind(&self.relay)
            .bind(own + grow)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.announce_thresholds(scope, spent);
        let mut l = lock(&scope.local);
        l.spent_known = spent;
        l.others_known = others;
        let grew = grow >= need && grow > 0;
        if grew {
            l.granted += grow;
            l.exhausted_until = None;
        }
        Ok(Leased {
            grew,
            retry_after: None,
        })
    }

    /// Takes up to a slice of tokens from the shared bucket into the local holding.
    async fn take_tokens(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        scope: &Scope,
        rpm: i64,
        want: i64,
        now_ms: i64,
    ) -> Result<Option<u64>, sqlx::Error> {
        let cap = rpm.saturating_mul(1000);
        let row = sqlx::query(
            &tx.sql("SELECT tokens_milli, refilled_at_ms FROM limit_buckets WHERE scope = $1"),
        )
        .bind(&scope.name)
        .fetch_optional(&mut **tx)
        .await?;
        let (mut tokens, at) = match row {
            Some(r) => (
                r.try_get::<i64, _>("tokens_milli")?,
                r.try_get::<i64, _>("refilled_at_ms")?,
            ),
            None => (cap, now_ms),
        };
        // rpm tokens per 60 000 ms = rpm milli-tokens per 60 ms.
        tokens = (tokens + (now_ms - at).max(0).saturating_mul(rpm) / 60).min(cap);
        let slice = want.max(rpm / 20).max(1);
        let take = slice.min(tokens / 1000);
        tokens -= take * 1000;
        sqlx::query(&tx.sql("INSERT INTO limit_buckets (scope, tokens_milli, refilled_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (scope) DO UPDATE SET tokens_milli = excluded.tokens_milli, refilled_at_ms = excluded.refilled_at_ms"))
        .bind(&scope.name)
        .bind(tokens)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        let mut l = lock(&scope.local);
        l.granted += take;
        if take > 0 {
            l.exhausted_until = None;
            Ok(None)
        } else {
            // Until one whole token has refilled.
            let rpm = rpm.max(1);
            let ms = ((1000 - tokens).max(0) * 60 + rpm - 1) / rpm;
            Ok(Some(u64::try_from(ms / 1000 + 1).unwrap_or(1)))
        }
    }

    /// Background upkeep, every [`SYNC_EVERY`] until `shutdown`: renew leases, fold
    /// settled costs the ledger now has, give back idle capacity.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(SYNC_EVERY) => {}
            }
            if let Err(e) = self.sync().await {
                tracing::warn!(error = %e, "limit lease upkeep failed; retrying");
            }
        }
        // Give everything back so other relays need not wait for the TTL.
        let _ = sqlx::query(&self.db.sql("DELETE FROM limit_leases WHERE relay = $1"))
            .bind(&self.relay)
            .execute(&self.db)
            .await;
    }

    /// One round of upkeep.
    pub async fn sync(&self) -> Result<(), sqlx::Error> {
        let scopes: Vec<Arc<Scope>> = lock(&self.scopes).values().cloned().collect();
        let now_ms = Utc::now().timestamp_millis();
        for scope in scopes {
            let _one = scope.leasing.lock().await;
            // Settled costs the ledger now holds stop counting against the lease.
            let ids: Vec<String> = {
                let l = lock(&scope.local);
                l.unprojected.iter().map(|(id, _, _)| id.clone()).collect()
            };
            let mut absorbed: std::collections::HashSet<String> = std::collections::HashSet::new();
            for chunk in ids.chunks(200) {
                let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "SELECT DISTINCT request_id FROM usage_ledger WHERE request_id IN ({})",
                    marks.join(", ")
                );
                let sql = self.db.sql(&sql);
                let mut q = sqlx::query(&sql);
                for id in chunk {
                    q = q.bind(id);
                }
                for r in q.fetch_all(&self.db).await? {
                    absorbed.insert(r.try_get("request_id")?);
                }
            }
            let (granted, shrink_to) = {
                let mut l = lock(&scope.local);
                let stale = Instant::now() - UNPROJECTED_TTL;
                let before = l.unprojected_sum();
                l.unprojected
                    .retain(|(id, _, at)| !absorbed.contains(id) && *at > stale);
                l.unprojected_total = l.unprojected.iter().map(|(_, c, _)| *c).sum();
                let folded = before - l.unprojected_sum();
                l.granted -= folded;
                let idle = l.last_used.elapsed() > IDLE;
                let shrink_to = match scope.kind {
                    _ if !idle => None,
                    Kind::Rpm => Some(0),
                    _ => Some(l.inflight + l.unprojected_sum()),
                };
                (l.granted, shrink_to)
            };
            let (granted, give_back) = match (shrink_to, &scope.kind) {
                (Some(_), Kind::Rpm) if granted > 0 => (0, granted),
                (Some(to), _) if to < granted => (to, 0),
                _ => (granted, 0),
            };
            if give_back > 0 {
                let mut tx = self.begin().await?;
                self.lock_scope(&mut tx, &scope.name).await?;
                let cap = lock(&scope.limit).saturating_mul(1000);
                sqlx::query(&tx.sql("UPDATE limit_buckets SET tokens_milli = CASE WHEN tokens_milli + $1 > $2 THEN $3 ELSE tokens_milli + $4 END WHERE scope = $5"))
                    .bind(give_back * 1000)
                    .bind(cap)
                    .bind(cap)
                    .bind(give_back * 1000)
                    .bind(&scope.name)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            lock(&scope.local).granted = granted;
            let due = {
                let mut l = lock(&scope.local);
                let active =
                    l.last_used.elapsed() < Duration::from_secs(5) || !l.unprojected.is_empty();
                let due = active
                    && l.crossed != 0b111
                    && l.checked_at
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                if due {
                    l.checked_at = Some(Instant::now());
                }
                due
            };
            if due && self.publisher.is_some() {
                if let Some(spent) = self.ledger_spent(&scope).await? {
                    self.announce_thresholds(&scope, spent);
                }
            }
            if !matches!(scope.kind, Kind::Rpm) {
                sqlx::query(&self.db.sql("INSERT INTO limit_leases (scope, relay, granted, updated_at_ms) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (scope, relay) DO UPDATE SET granted = excluded.granted, updated_at_ms = excluded.updated_at_ms"))
                .bind(&scope.name)
                .bind(&self.relay)
                .bind(granted)
                .bind(now_ms)
                .execute(&self.db)
                .await?;
            }
        }
        // Scopes with nothing held and long unused are forgotten.
        lock(&self.scopes).retain(|_, s| {
            let l = lock(&s.local);
            !(l.granted == 0
                && l.inflight == 0
                && l.unprojected.is_empty()
                && l.last_used.elapsed() > Duration::from_secs(60))
        });
        let _ = sqlx::query(
            &self
                .db
                .sql("DELETE FROM limit_leases WHERE updated_at_ms < $1"),
        )
        .bind(now_ms - 10 * i64::try_from(LEASE_TTL.as_millis()).unwrap_or(30_000))
        .execute(&self.db)
        .await;
        Ok(())
    }

    /// Requests of a key in flight on this relay (its concurrency holding).
    pub fn in_flight(&self, key: &str) -> i64 {
        lock(&self.scopes)
            .get(&format!("conc:{key}"))
            .map(|s| lock(&s.local).inflight)
            .unwrap_or(0)
    }

    /// Every limit of a key as it stands, read from the database (all relays).
    pub async fn report(
        &self,
        key: &ApiKey,
        limits: &KeyLimits,
        tenant: Option<&TenantBudget>,
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitState>, sqlx::Error> {
        let fresh = now.timestamp_millis() - i64::try_from(LEASE_TTL.as_millis()).unwrap_or(30_000);
        let mut out = Vec::new();
        let held_elsewhere = |name: String| async move {
            let r = sqlx::query(&self.db.sql("SELECT CAST(COALESCE(SUM(granted), 0) AS BIGINT) AS n FROM limit_leases WHERE scope = $1 AND updated_at_ms >= $2"))
            .bind(name)
            .bind(fresh)
            .fetch_one(&self.db)
            .await?;
            r.try_get::<i64, _>("n")
        };
        for (scope, limit) in self.budget_scopes(key, limits, tenant, now) {
            let Kind::Budget {
                column,
                owner,
                start_ms,
                end_ms,
                name,
            } = &scope.kind
            else {
                continue;
            };
            let col = if *column == "tenant" {
                "tenant"
            } else {
                "api_key"
            };
            let spent: i64 = sqlx::query(&self.db.sql(&format!(
                "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS n FROM usage_ledger \
                 WHERE {col} = $1 AND occurred_at_ms >= $2 AND occurred_at_ms < $3"
            )))
            .bind(owner)
            .bind(*start_ms)
            .bind(end_ms.unwrap_or(i64::MAX))
            .fetch_one(&self.db)
            .await?
            .try_get("n")?;
            // Leases held against the window, less this relay's unused headroom: what
            // requests in flight and costs not yet projected hold.
            let leased = held_elsewhere(scope.name.clone()).await?;
            let own_headroom = lock(&scope.local).headroom(&scope.kind).max(0);
            let reserved = (leased - own_headroom).max(0);
            out.push(LimitState {
                limit: *name,
                value: usd(limit),
                used: usd(spent),
                reserved: usd(reserved),
                remaining: usd((limit - spent - reserved).max(0)),
                window_start: (*start_ms > 0)
                    .then(|| DateTime::from_timestamp_millis(*start_ms))
                    .flatten(),
                resets_at: end_ms.and_then(DateTime::from_timestamp_millis),
            });
        }
        if let Some(c) = limits.max_concurrency {
            let held = self.in_flight(key.id.as_str());
            out.push(LimitState {
                limit: LimitName::Concurrency,
                value: c.into(),
                used: held.into(),
                reserved: rust_decimal::Decimal::ZERO,
                remaining: (i64::from(c) - held).max(0).into(),
                window_start: None,
                resets_at: None,
            });
        }
        if let Some(r) = limits.rpm {
            out.push(LimitState {
                limit: LimitName::Rpm,
                value: r.into(),
                used: rust_decimal::Decimal::ZERO,
                reserved: rust_decimal::Decimal::ZERO,
                remaining: r.into(),
                window_start: None,
                resets_at: None,
            });
        }
        Ok(out)
    }
}

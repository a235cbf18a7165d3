//! Notification targets and the delivery record in the database. URLs and secrets are
//! sealed; what is shown is the URL's scheme and host only.

use super::payload::{Destination, TargetKind};
use crate::crypto::{Cipher, CryptoError, Secret};
use chrono::{DateTime, Utc};
use projections::Dialect as _;
use serde::Serialize;
use sqlx::{AnyPool, Row};

/// A target as the API shows it: never its URL path, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Target {
    /// Id (`ntf_…`).
    pub id: String,
    /// The tenant it belongs to; absent for an operator target.
    pub tenant: Option<String>,
    /// `webhook`, `slack`, `feishu`, `dingtalk` or `telegram`.
    #[serde(rename = "type")]
    pub kind: TargetKind,
    /// Display name.
    pub name: String,
    /// The URL's scheme and host (the path may hold a token, so it is not shown).
    pub url: String,
    /// Telegram chat id; empty otherwise.
    pub address: String,
    /// Whether a secret is stored (it is never shown).
    pub has_secret: bool,
    /// Event filters.
    pub events: Vec<String>,
    /// Most deliveries per minute; more are dropped (and logged as dropped).
    pub rate_limit_per_minute: u32,
    /// Whether it receives alerts.
    pub enabled: bool,
    /// Creation time: nothing that happened before is sent to it.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A new target, validated.
#[derive(Debug, Clone)]
pub struct NewTarget {
    /// `None` = operator.
    pub tenant: Option<String>,
    /// Kind.
    pub kind: TargetKind,
    /// Display name.
    pub name: String,
    /// Full URL (sealed at rest).
    pub url: String,
    /// Telegram chat id.
    pub address: String,
    /// Secret (sealed at rest).
    pub secret: Option<Secret>,
    /// Filters.
    pub events: Vec<String>,
    /// Rate limit.
    pub rate_limit_per_minute: u32,
    /// Enabled.
    pub enabled: bool,
}

/// A change to a target, validated; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TargetPatch {
    /// New name.
    pub name: Option<String>,
    /// New URL.
    pub url: Option<String>,
    /// New address.
    pub address: Option<String>,
    /// New secret (`Some(None)` removes it).
    pub secret: Option<Option<Secret>>,
    /// New filters.
    pub events: Option<Vec<String>>,
    /// New rate limit.
    pub rate_limit_per_minute: Option<u32>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// One row of the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The source event's id (`test-…` for a test message).
    pub event_id: String,
    /// The target.
    pub target_id: String,
    /// The target's tenant; absent for an operator target.
    pub tenant: Option<String>,
    /// The alert's kind (`test` for a test message).
    pub kind: String,
    /// `pending`, `delivered`, `failed`, `dropped` (rate limit) or `cancelled`
    /// (target deleted).
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// The receiver's last HTTP status.
    pub response_status: Option<i64>,
    /// The last error; empty when none.
    pub last_error: String,
}

/// Targets and deliveries.
#[derive(Clone)]
pub struct NotifyStore {
    /// The database.
    db: AnyPool,
    /// Seals URLs and secrets.
    cipher: Cipher,
}

fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// `scheme://host[:port]/…`: enough to recognise a URL, never its path or user-info.
pub fn display_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let more = if u.path().len() > 1 || u.query().is_some() {
                "/…"
            } else {
                ""
            };
            format!("{}://{host}{port}{more}", u.scheme())
        }
        Err(_) => String::new(),
    }
}

const TARGET_COLUMNS: &str = "id, tenant, kind, name, url_display, address, secret_sealed, \
    events, rate_per_min, enabled, created_at_ms, updated_at_ms";

fn row_to_target(r: &sqlx::any::AnyRow) -> Result<Target, sqlx::Error> {
    let tenant: String = r.try_get("tenant")?;
    let kind: String = r.try_get("kind")?;
    let events: String = r.try_get("events")?;
    let secret: Option<String> = r.try_get("secret_sealed")?;
    Ok(Target {
        id: r.try_get("id")?,
        tenant: (!tenant.is_empty()).then_some(tenant),
        kind: TargetKind::parse(&kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown target kind {kind}").into()))?,
        name: r.try_get("name")?,
        url: r.try_get("url_display")?,
        address: r.try_get("address")?,
        has_secret: secret.is_some(),
        events: serde_json::from_str(&events).unwrap_or_default(),
        rate_limit_per_minute: u32::try_from(r.try_get::<i64, _>("rate_per_min")?).unwrap_or(0),
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        created_at: ts(r.try_get("created_at_ms")?),
        updated_at: ts(r.try_get("updated_at_ms")?),
    })
}

const DELIVERY_COLUMNS: &str = "event_id, target_id, tenant, kind, status, attempts, \
    created_at_ms, next_attempt_at_ms, delivered_at_ms, response_status, last_error";

fn row_to_delivery(r: &sqlx::any::AnyRow) -> Result<Delivery, sqlx::Error> {
    let tenant: String = r.try_get("tenant")?;
    let status: String = r.try_get("status")?;
    let next: i64 = r.try_get("next_attempt_at_ms")?;
    Ok(Delivery {
        event_id: r.try_get("event_id")?,
        target_id: r.try_get("target_id")?,
        tenant: (!tenant.is_empty()).then_some(tenant),
        kind: r.try_get("kind")?,
        next_attempt_at: (status == "pending").then(|| ts(next)),
        status,
        attempts: r.try_get("attempts")?,
        created_at: ts(r.try_get("created_at_ms")?),
        delivered_at: r.try_get::<Option<i64>, _>("delivered_at_ms")?.map(ts),
        response_status: r.try_get("response_status")?,
        last_error: r.try_get("last_error")?,
    })
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum NotifyStoreError {
    /// The database.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// A sealed value would not open.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A read model (projector lag, usage) could not be read.
    #[error(transparent)]
    ReadModel(#[from] projections::Error),
}

impl NotifyStore {
    /// A store over `db`, sealing with `cipher`.
    pub fn new(db: AnyPool, cipher: Cipher) -> Self {
        Self { db, cipher }
    }

    /// The database.
    pub fn db(&self) -> &AnyPool {
        &self.db
    }

    /// Targets, one page, with the total; `tenant` limits them to one tenant's.
    pub async fn list(
        &self,
        tenant: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Target>, i64), NotifyStoreError> {
        let (filter, bind) = match tenant {
            Some(t) => ("WHERE tenant = $1", t),
            None => ("WHERE $1 = ''", ""),
        };
        let total: i64 = sqlx::query(&self.db.sql(&format!(
            "SELECT COUNT(*) AS n FROM notification_targets {filter}"
        )))
        .bind(bind)
        .fetch_one(&self.db)
        .await?
        .try_get("n")?;
        let rows = sqlx::query(&self.db.sql(&format!(
            "SELECT {TARGET_COLUMNS} FROM notification_targets {filter} \
             ORDER BY created_at_ms, id LIMIT $2 OFFSET $3"
        )))
        .bind(bind)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db)
        .await?;
        let items = rows.iter().map(row_to_target).collect::<Result<_, _>>()?;
        Ok((items, total))
    }

    /// Every enabled target with its destination opened (for the notifier).
    pub async fn enabled(&self) -> Result<Vec<(Target, Destination)>, NotifyStoreError> {
        let rows = sqlx::query(&self.db.sql(&format!(
            "SELECT {TARGET_COLUMNS}, url_sealed FROM notification_targets WHERE enabled = 1"
        )))
        .fetch_all(&self.db)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let t = row_to_target(r)?;
            let d = self.destination(&t, r)?;
            out.push((t, d));
        }
        Ok(out)
    }

    fn destination(
        &self,
        t: &Target,
        r: &sqlx::any::AnyRow,
    ) -> Result<Destination, NotifyStoreError> {
        let url: String = r.try_get("url_sealed")?;
        let secret: Option<String> = r.try_get("secret_sealed")?;
        Ok(Destination {
            kind: t.kind,
            url: self.cipher.open(&url)?.expose().to_owned(),
            address: t.address.clone(),
            secret: secret.map(|s| self.cipher.open(&s)).transpose()?,
        })
    }

    /// A target by id, with its destination opened.
    pub async fn get(&self, id: &str) -> Result<Option<(Target, Destination)>, NotifyStoreError> {
        let row = sqlx::query(&self.db.sql(&format!(
            "SELECT {TARGET_COLUMNS}, url_sealed FROM notification_targets WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.db)
        .await?;
        match row {
            Some(r) => {
                let t = row_to_target(&r)?;
                let d = self.destination(&t, &r)?;
                Ok(Some((t, d)))
            }
            None => Ok(None),
        }
    }

    /// Stores a new target and returns it.
    pub async fn create(&self, new: NewTarget) -> Result<Target, NotifyStoreError> {
        let id = format!("ntf_{}", uuid::Uuid::now_v7().simple());
        let now = Utc::now().timestamp_millis();
        sqlx::query(&self.db.sql(
            "INSERT INTO notification_targets (id, tenant, kind, name, url_sealed, url_display, \
             address, secret_sealed, events, rate_per_min, enabled, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        ))
        .bind(&id)
        .bind(new.tenant.unwrap_or_default())
        .bind(new.kind.as_str())
        .bind(&new.name)
        .bind(self.cipher.seal(&Secret::new(new.url.clone())))
        .bind(display_url(&new.url))
        .bind(&new.address)
        .bind(new.secret.as_ref().map(|s| self.cipher.seal(s)))
        .bind(serde_json::to_string(&new.events).unwrap_or_default())
        .bind(i64::from(new.rate_limit_per_minute))
        .bind(i64::from(new.enabled))
        .bind(now)
        .bind(now)
        .execute(&self.db)
        .await?;
        self.get(&id)
            .await?
            .map(|(t, _)| t)
            .ok_or(NotifyStoreError::Db(sqlx::Error::RowNotFound))
    }

    /// Applies a patch; `None` when there is no such target.
    pub async fn update(
        &self,
        id: &str,
        p: TargetPatch,
    ) -> Result<Option<Target>, NotifyStoreError> {
        let now = Utc::now().timestamp_millis();
        let mut changes: Vec<(&str, Option<String>, Option<i64>)> = Vec::new();
        if let Some(n) = p.name {
            changes.push(("name", Some(n), None));
        }
        if let Some(u) = &p.url {
            changes.push((
                "url_sealed",
                Some(self.cipher.seal(&Secret::new(u.clone()))),
                None,
            ));
            changes.push(("url_display", Some(display_url(u)), None));
        }
        if let Some(a) = p.address {
            changes.push(("address", Some(a), None));
        }
        if let Some(s) = &p.secret {
            changes.push((
                "secret_sealed",
                s.as_ref().map(|s| self.cipher.seal(s)),
                None,
            ));
        }
        if let Some(e) = &p.events {
            changes.push((
                "events",
                Some(serde_json::to_string(e).unwrap_or_default()),
                None,
            ));
        }
        if let Some(r) = p.rate_limit_per_minute {
            changes.push(("rate_per_min", None, Some(i64::from(r))));
        }
        if let Some(e) = p.enabled {
            changes.push(("enabled", None, Some(i64::from(e))));
        }
        let mut tx = self.db.begin().await?;
        for (col, text, int) in changes {
            // `col` is one of the literal column names above, never input.
            let sql = format!("UPDATE notification_targets SET {col} = $1 WHERE id = $2");
            let sql = tx.sql(&sql);
            let q = sqlx::query(&sql);
            let q = match int {
                Some(i) => q.bind(i),
                None => q.bind(text),
            };
            q.bind(id).execute(&mut *tx).await?;
        }
        let done = sqlx::query(
            &tx.sql("UPDATE notification_targets SET updated_at_ms = $1 WHERE id = $2"),
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        Ok(self.get(id).await?.map(|(t, _)| t))
    }

    /// Deletes a target; its pending deliveries are cancelled, its log is kept.
    pub async fn delete(&self, id: &str) -> Result<bool, NotifyStoreError> {
        let mut tx = self.db.begin().await?;
        let done = sqlx::query(&tx.sql("DELETE FROM notification_targets WHERE id = $1"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&tx.sql(
            "UPDATE notification_deliveries SET status = 'cancelled' \
             WHERE target_id = $1 AND status = 'pending'",
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// The delivery log, newest first, one page, with the total; `tenant` limits it
    /// to deliveries to that tenant's targets.
    pub async fn deliveries(
        &self,
        tenant: Option<&str>,
        target: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Delivery>, i64), NotifyStoreError> {
        let filter = "WHERE ($1 = '' OR tenant = $2) AND ($3 = '' OR target_id = $4)";
        let (tenant, target) = (tenant.unwrap_or_default(), target.unwrap_or_default());
        let total: i64 = sqlx::query(&self.db.sql(&format!(
            "SELECT COUNT(*) AS n FROM notification_deliveries {filter}"
        )))
        .bind(tenant)
        .bind(tenant)
        .bind(target)
        .bind(target)
        .fetch_one(&self.db)
        .await?
        .try_get("n")?;
        let rows = sqlx::query(&self.db.sql(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM notification_deliveries {filter} \
             ORDER BY created_at_ms DESC, event_id DESC LIMIT $5 OFFSET $6"
        )))
        .bind(tenant)
        .bind(tenant)
        .bind(target)
        .bind(target)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db)
        .await?;
        let items = rows.iter().map(row_to_delivery).collect::<Result<_, _>>()?;
        Ok((items, total))
    }

    /// Records a finished test message in the delivery log.
    pub async fn record_test(
        &self,
        target: &Target,
        event_id: &str,
        at: DateTime<Utc>,
        result: &Result<u16, (Option<u16>, String)>,
    ) -> Result<Delivery, NotifyStoreError> {
        let now = at.timestamp_millis();
        let (status, code, error) = match result {
            Ok(code) => ("delivered", Some(i64::from(*code)), String::new()),
            Err((code, e)) => ("failed", code.map(i64::from), e.clone()),
        };
        sqlx::query(&self.db.sql(
            "INSERT INTO notification_deliveries (event_id, target_id, tenant, kind, status, \
             attempts, created_at_ms, next_attempt_at_ms, last_attempt_at_ms, delivered_at_ms, \
             response_status, last_error) \
             VALUES ($1, $2, $3, 'test', $4, 1, $5, $6, $7, $8, $9, $10)",
        ))
        .bind(event_id)
        .bind(&target.id)
        .bind(target.tenant.clone().unwrap_or_default())
        .bind(status)
        .bind(now)
        .bind(now)
        .bind(now)
        .bind((status == "delivered").then_some(now))
        .bind(code)
        .bind(error)
        .execute(&self.db)
        .await?;
        let row = sqlx::query(&self.db.sql(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM notification_deliveries \
             WHERE event_id = $1 AND target_id = $2"
        )))
        .bind(event_id)
        .bind(&target.id)
        .fetch_one(&self.db)
        .await?;
        Ok(row_to_delivery(&row)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_keep_scheme_and_host_only() {
        for (url, shown) in [
            (
                "https://hooks.slack.com/services/T0/B0/XXXX",
                "https://hooks.slack.com/…",
            ),
            (
                "http://127.0.0.1:9000/hook?token=abc",
                "http://127.0.0.1:9000/…",
            ),
            ("https://user:pw@example.com", "https://example.com"),
            ("https://api.telegram.org", "https://api.telegram.org"),
            ("not a url", ""),
        ] {
            assert_eq!(display_url(url), shown, "{url}");
        }
    }
}

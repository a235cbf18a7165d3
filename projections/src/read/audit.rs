//! The audit log.

use super::{ts, u};
use crate::Dialect as _;
use crate::{sql, Error};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, Row};

/// What [`audit_log`] reads. All fields optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditFilter {
    /// `admin.action` or `auth.failed`.
    pub kind: Option<String>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Occurred at or after (epoch ms).
    pub from_ms: Option<i64>,
    /// Occurred before (epoch ms).
    pub to_ms: Option<i64>,
    /// Paging: only rows with a log position below this.
    pub before_position: Option<u64>,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Event id.
    pub event_id: String,
    /// Log position.
    pub position: u64,
    /// When.
    pub occurred_at: Option<DateTime<Utc>>,
    /// `admin.action` or `auth.failed`.
    pub kind: String,
    /// Request id, if any.
    pub request_id: String,
    /// Tenant, if any.
    pub tenant: String,
    /// API key, if any.
    pub api_key: String,
    /// Admin actions: who.
    pub actor: String,
    /// Admin actions: dotted verb.
    pub action: String,
    /// Admin actions: object.
    pub target: String,
    /// Admin actions: description.
    pub summary: String,
    /// Auth failures: why.
    pub reason: String,
    /// Auth failures: route.
    pub endpoint: String,
    /// Auth failures: first characters of the presented key.
    pub key_prefix: String,
    /// Auth failures: client address.
    pub client_addr: String,
}

/// The newest audit entries matching `filter`, newest first, at most `limit`.
pub async fn audit_log(
    db: &AnyPool,
    filter: &AuditFilter,
    limit: u32,
) -> Result<Vec<AuditEntry>, Error> {
    let w = sql::Where::default()
        .text("kind =", filter.kind.as_ref())
        .text("actor =", filter.actor.as_ref())
        .int("occurred_at_ms >=", filter.from_ms)
        .int("occurred_at_ms <", filter.to_ms)
        .int("position <", filter.before_position.map(sql::i));
    let text = format!(
        "SELECT {} FROM audit_log WHERE {} ORDER BY occurred_at_ms DESC, position DESC LIMIT {}",
        crate::audit::AUDIT_COLUMNS,
        w.clause(),
        limit
    );
    let text = db.sql(&text);
    let q = w.bind(sqlx::query(&text));
    let mut out = Vec::new();
    for r in q.fetch_all(db).await? {
        out.push(AuditEntry {
            event_id: r.try_get("event_id")?,
            position: u(r.try_get("position")?),
            occurred_at: ts(Some(r.try_get("occurred_at_ms")?)),
            kind: r.try_get("kind")?,
            request_id: r.try_get("request_id")?,
            tenant: r.try_get("tenant")?,
            api_key: r.try_get("api_key")?,
            actor: r.try_get("actor")?,
            action: r.try_get("action")?,
            target: r.try_get("target")?,
            summary: crate::long_text(&r, "summary")?.unwrap_or_default(),
            reason: r.try_get("reason")?,
            endpoint: r.try_get("endpoint")?,
            key_prefix: r.try_get("key_prefix")?,
            client_addr: r.try_get("client_addr")?,
        });
    }
    Ok(out)
}

//! Account status as the health and usage events left it.

use super::{ts, u};
use crate::Dialect as _;
use crate::Error;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AnyPool;
use std::collections::BTreeMap;

/// The last upstream error seen for an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// When.
    pub at: Option<DateTime<Utc>>,
    /// Upstream HTTP status.
    pub status: Option<u16>,
    /// Upstream error type.
    pub error_type: Option<String>,
    /// Upstream message (truncated by the relay, never a credential).
    pub message: Option<String>,
}

/// Status of one upstream account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountStatus {
    /// The account id.
    pub account: String,
    /// Health state (`healthy`, `rate_limited`, …); `healthy` until a change is seen.
    pub state: String,
    /// Cause of the last change (empty when none was seen).
    pub reason: String,
    /// End of the cooldown.
    pub until: Option<DateTime<Utc>>,
    /// When the state last changed.
    pub changed_at: Option<DateTime<Utc>>,
    /// The last upstream error.
    pub last_error: Option<LastError>,
    /// The last `anthropic-ratelimit-unified-*` headers seen (name without prefix →
    /// value), e.g. `5h-utilization`.
    pub unified: BTreeMap<String, String>,
    /// When those headers were seen.
    pub unified_at: Option<DateTime<Utc>>,
    /// Requests whose final attempt was routed here.
    pub requests: u64,
    /// Of those, how many ended `upstream_error` or `relay_error`.
    pub errors: u64,
    /// Usage events (attempts that reported usage).
    pub usage_events: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// Cache-write tokens (5m + 1h).
    pub cache_write_tokens: u64,
    /// Health transitions seen.
    pub health_changes: u64,
}

/// Every account the projection has seen, ordered by id.
pub async fn account_status(db: &AnyPool) -> Result<Vec<AccountStatus>, Error> {
    let text = format!(
        "SELECT {} FROM account_status ORDER BY account",
        crate::accounts::STATUS_COLUMNS
    );
    let rows = sqlx::query(&db.sql(&text)).fetch_all(db).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (account, s) = crate::accounts::StatusRow::from_row(&r)?;
        let last_error = s.last_error_at_ms.map(|at| LastError {
            at: ts(Some(at)),
            status: s.last_error_status.and_then(|v| u16::try_from(v).ok()),
            error_type: s.last_error_type.clone(),
            message: s.last_error_message.clone(),
        });
        out.push(AccountStatus {
            account,
            state: s.state,
            reason: s.reason,
            until: ts(s.until_ms),
            changed_at: ts(s.changed_at_ms),
            last_error,
            unified: serde_json::from_str(&s.unified).unwrap_or_default(),
            unified_at: ts(s.unified_at_ms),
            requests: u(s.requests),
            errors: u(s.errors),
            usage_events: u(s.usage_events),
            input_tokens: u(s.input_tokens),
            output_tokens: u(s.output_tokens),
            cache_read_tokens: u(s.cache_read_tokens),
            cache_write_tokens: u(s.cache_write_tokens),
            health_changes: u(s.health_changes),
        });
    }
    Ok(out)
}

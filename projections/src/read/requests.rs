//! The request log and the requests refused per limit.

use super::{ts, u};
use crate::money::nanos_to_usd;
use crate::Dialect as _;
use crate::{sql, Error};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;

/// What [`request_log`] reads. All fields optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestLogFilter {
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this API key.
    pub api_key: Option<String>,
    /// Only this account.
    pub account: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this outcome (`completed`, `upstream_error`, …).
    pub outcome: Option<String>,
    /// Only this request id.
    pub request_id: Option<String>,
    /// Only requests this limit refused (`rpm`, `daily_budget_usd`, …).
    pub rejected_by: Option<String>,
    /// Occurred at or after (epoch ms).
    pub from_ms: Option<i64>,
    /// Occurred before (epoch ms).
    pub to_ms: Option<i64>,
    /// Paging: only rows with a log position below this (pass the last row's).
    pub before_position: Option<u64>,
}

/// One request, metadata only, with its usage summed from the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestLogEntry {
    /// The `request.finished` event id.
    pub event_id: String,
    /// Its log position.
    pub position: u64,
    /// When the request finished.
    pub occurred_at: Option<DateTime<Utc>>,
    /// The relay's request id.
    pub request_id: String,
    /// Tenant.
    pub tenant: String,
    /// API key id.
    pub api_key: String,
    /// Account of the final attempt.
    pub account: String,
    /// Requested model.
    pub model: String,
    /// Route.
    pub endpoint: String,
    /// Status sent to the client.
    pub status: u16,
    /// Outcome.
    pub outcome: String,
    /// Streamed.
    pub stream: bool,
    /// Total latency, µs.
    pub latency_us: u64,
    /// Time to first byte, µs.
    pub ttfb_us: Option<u64>,
    /// Time spent upstream, µs.
    pub upstream_us: Option<u64>,
    /// Upstream attempts.
    pub attempts: u32,
    /// Routing reason of the final attempt.
    pub routing_reason: String,
    /// Error type returned, if any.
    pub error_type: String,
    /// Upstream request id.
    pub upstream_request_id: String,
    /// The tenant limit that refused the request (`rpm`, `max_concurrency`,
    /// `daily_budget_usd`, …); empty when none did.
    pub rejected_by: String,
    /// Usage events recorded for this request id (all attempts).
    pub usage_events: u64,
    /// Uncached input tokens, all attempts.
    pub input_tokens: u64,
    /// Output tokens, all attempts.
    pub output_tokens: u64,
    /// Cache-read tokens, all attempts.
    pub cache_read_tokens: u64,
    /// Cache-write tokens (5m + 1h), all attempts.
    pub cache_write_tokens: u64,
    /// Cost of all attempts, USD.
    pub cost: Decimal,
}

/// The newest requests matching `filter`, newest first, at most `limit`.
pub async fn request_log(
    db: &AnyPool,
    filter: &RequestLogFilter,
    limit: u32,
) -> Result<Vec<RequestLogEntry>, Error> {
    let w = sql::Where::default()
        .text("tenant =", filter.tenant.as_ref())
        .text("api_key =", filter.api_key.as_ref())
        .text("account =", filter.account.as_ref())
        .text("model =", filter.model.as_ref())
        .text("outcome =", filter.outcome.as_ref())
        .text("request_id =", filter.request_id.as_ref())
        .text("rejected_by =", filter.rejected_by.as_ref())
        .int("occurred_at_ms >=", filter.from_ms)
        .int("occurred_at_ms <", filter.to_ms)
        .int("position <", filter.before_position.map(sql::i));
    let text = format!(
        "SELECT {} FROM request_log WHERE {} ORDER BY occurred_at_ms DESC, position DESC LIMIT {}",
        crate::requests::REQUEST_COLUMNS,
        w.clause(),
        limit
    );
    let text = db.sql(&text);
    let q = w.bind(sqlx::query(&text));
    let rows = q.fetch_all(db).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(RequestLogEntry {
            event_id: r.try_get("event_id")?,
            position: u(r.try_get("position")?),
            occurred_at: ts(Some(r.try_get("occurred_at_ms")?)),
            request_id: r.try_get("request_id")?,
            tenant: r.try_get("tenant")?,
            api_key: r.try_get("api_key")?,
            account: r.try_get("account")?,
            model: r.try_get("model")?,
            endpoint: r.try_get("endpoint")?,
            status: u16::try_from(r.try_get::<i64, _>("status")?).unwrap_or(0),
            outcome: r.try_get("outcome")?,
            stream: r.try_get::<i64, _>("stream")? != 0,
            latency_us: u(r.try_get("latency_us")?),
            ttfb_us: r.try_get::<Option<i64>, _>("ttfb_us")?.map(u),
            upstream_us: r.try_get::<Option<i64>, _>("upstream_us")?.map(u),
            attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
            routing_reason: r.try_get("routing_reason")?,
            error_type: r.try_get("error_type")?,
            upstream_request_id: r.try_get("upstream_request_id")?,
            rejected_by: r.try_get("rejected_by")?,
            usage_events: 0,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cost: Decimal::ZERO,
        });
    }
    // Usage is joined by request id at read time: one grouped query for the page.
    let ids: Vec<String> = out
        .iter()
        .map(|e| e.request_id.clone())
        .filter(|id| !id.is_empty())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut usage: BTreeMap<String, [i64; 6]> = BTreeMap::new();
    let params = crate::sql::Params::of_pool(db)?;
    for chunk in ids.chunks(500) {
        let text = format!(
            "SELECT request_id, CAST(COUNT(*) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), \
             CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cache_read_tokens) AS BIGINT), \
             CAST(SUM(cache_write_5m_tokens + cache_write_1h_tokens) AS BIGINT), \
             CAST(SUM(cost_nanos) AS BIGINT) FROM usage_ledger \
             WHERE request_id IN ({}) GROUP BY request_id",
            params.list(chunk.len())
        );
        let text = db.sql(&text);
        let mut q = sqlx::query(&text);
        for id in chunk {
            q = q.bind(id.clone());
        }
        for r in q.fetch_all(db).await? {
            let id: String = r.try_get(0)?;
            let mut s = [0i64; 6];
            for (k, v) in s.iter_mut().enumerate() {
                *v = r.try_get::<Option<i64>, _>(k + 1)?.unwrap_or(0);
            }
            usage.insert(id, s);
        }
    }
    for e in &mut out {
        if let Some(s) = usage.get(&e.request_id) {
            e.usage_events = u(s[0]);
            e.input_tokens = u(s[1]);
            e.output_tokens = u(s[2]);
            e.cache_read_tokens = u(s[3]);
            e.cache_write_tokens = u(s[4]);
            e.cost = nanos_to_usd(s[5]);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- rejections

/// What [`rejections`] reads.
#[derive(Debug, Clone, Default)]
pub struct RejectionFilter {
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this API key.
    pub api_key: Option<String>,
    /// Occurred at or after (epoch ms).
    pub from_ms: i64,
    /// Occurred before (epoch ms).
    pub to_ms: i64,
}

/// How many requests one limit refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectionCount {
    /// The limit (`rpm`, `max_concurrency`, `daily_budget_usd`, …).
    pub rejected_by: String,
    /// Requests it refused in the range.
    pub requests: u64,
}

/// Requests refused by a tenant limit in a range, counted per limit, most first (then
/// by name). Reads the request log, so the range is bounded by its retention; only
/// refused rows are read (index on `rejected_by, occurred_at_ms`).
pub async fn rejections(db: &AnyPool, f: &RejectionFilter) -> Result<Vec<RejectionCount>, Error> {
    // `> ''` rather than `<> ''`: a range the (rejected_by, occurred_at_ms) index serves.
    let w = sql::Where::default()
        .always("rejected_by > ''")
        .int("occurred_at_ms >=", Some(f.from_ms))
        .int("occurred_at_ms <", Some(f.to_ms))
        .text("tenant =", f.tenant.as_ref())
        .text("api_key =", f.api_key.as_ref());
    let text = format!(
        "SELECT rejected_by, CAST(COUNT(*) AS BIGINT) FROM request_log WHERE {} \
         GROUP BY rejected_by",
        w.clause()
    );
    let text = db.sql(&text);
    let q = w.bind(sqlx::query(&text));
    let mut out = Vec::new();
    for r in q.fetch_all(db).await? {
        out.push(RejectionCount {
            rejected_by: r.try_get(0)?,
            requests: u(r.try_get(1)?),
        });
    }
    out.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| a.rejected_by.cmp(&b.rejected_by))
    });
    Ok(out)
}

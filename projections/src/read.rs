//! Queries over the read models, for the admin API, the CLI and the bench harness.
//!
//! These functions only read; they never apply events. Amounts come back as exact
//! `Decimal` dollars (scale 9) next to the raw nanodollars.

use crate::money::{nanos_to_usd, usd_to_nanos};
use crate::pricing::{token_cost_rounded, Tokens, UnitPrices};
use crate::Dialect as _;
use crate::{runner, Error};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Utc};
use ingest::EventLog;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;
use std::str::FromStr;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

// ---------------------------------------------------------------- usage totals

/// Time bucket of a usage row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// One row per hour (`YYYY-MM-DDTHH:00`, local time in the display offset).
    Hour,
    /// One row per day (`YYYY-MM-DD`).
    #[default]
    Day,
    /// One row per month (`YYYY-MM`).
    Month,
    /// One row per year (`YYYY`).
    Year,
    /// One row for the whole range (`total`).
    Total,
}

/// Which dimensions to keep; the others are summed over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupBy {
    /// Per tenant.
    #[serde(default)]
    pub tenant: bool,
    /// Per API key.
    #[serde(default)]
    pub api_key: bool,
    /// Per upstream account.
    #[serde(default)]
    pub account: bool,
    /// Per model.
    #[serde(default)]
    pub model: bool,
}

/// What [`usage_totals`] reads.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this API key.
    pub api_key: Option<String>,
    /// Only this upstream account.
    pub account: Option<String>,
    /// Only this model (as reported by upstream).
    pub model: Option<String>,
    /// First day, inclusive, in the display time zone.
    pub from_day: NaiveDate,
    /// Last day, inclusive, in the display time zone.
    pub to_day: NaiveDate,
    /// Bucket size of the result.
    pub period: Period,
    /// Dimensions kept.
    pub group_by: GroupBy,
    /// Display time zone as a fixed offset from UTC, in minutes (e.g. 120 for UTC+2).
    /// 0 reads the per-UTC-day totals table; any other offset, and hour buckets,
    /// re-bucket the ledger by local hour or day (exact, but scans the ledger rows of
    /// the range). Fixed offsets only: no IANA zones, so a range spanning a DST change
    /// is bucketed with one offset.
    pub tz_offset_minutes: i32,
}

/// One row of [`usage_totals`]. Dimensions not grouped by are `None`; so are absent
/// values (e.g. usage without a tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// `YYYY-MM-DDTHH:00`, `YYYY-MM-DD`, `YYYY-MM`, `YYYY` or `total`.
    pub period: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// API key.
    pub api_key: Option<String>,
    /// Upstream account.
    pub account: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Usage events (upstream attempts that reported usage).
    pub requests: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// 5-minute cache-write tokens.
    pub cache_write_5m_tokens: u64,
    /// 1-hour cache-write tokens.
    pub cache_write_1h_tokens: u64,
    /// Cost in USD, exact.
    pub cost: Decimal,
    /// Cost in nanodollars.
    pub cost_nanos: i64,
    /// Usage events priced by the unknown-model fallback (non-zero means the cost
    /// rests on a guess).
    pub fallback_requests: u64,
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn none_if_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn period_key(period: Period, start: NaiveDateTime) -> String {
    let day = start.date();
    match period {
        Period::Hour => start.format("%Y-%m-%dT%H:00").to_string(),
        Period::Day => day.format("%Y-%m-%d").to_string(),
        Period::Month => day.format("%Y-%m").to_string(),
        Period::Year => format!("{:04}", day.year()),
        Period::Total => "total".to_owned(),
    }
}

fn day_start_ms(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or(0)
}

/// Usage totals over a day range, bucketed by `period` and grouped by the chosen
/// dimensions, ordered by period then dimensions.
pub async fn usage_totals(db: &AnyPool, f: &UsageFilter) -> Result<Vec<UsageRow>, Error> {
    let g = f.group_by;
    let dim = |on: bool, col: &str| if on { col.to_owned() } else { "''".to_owned() };
    let dims = format!(
        "{}, {}, {}, {}",
        dim(g.tenant, "tenant"),
        dim(g.api_key, "api_key"),
        dim(g.account, "account"),
        dim(g.model, "model")
    );
    let offset_ms = i64::from(f.tz_offset_minutes) * 60_000;
    // The totals table holds UTC days; anything finer or shifted re-buckets the ledger.
    let from_ledger = offset_ms != 0 || f.period == Period::Hour;
    let unit_ms = if f.period == Period::Hour {
        HOUR_MS
    } else {
        DAY_MS
    };
    let mut args: Vec<String> = Vec::new();
    let mut conds: Vec<String> = Vec::new();
    let (bucket, from, requests, fallback_col) = if !from_ledger {
        conds.push("day >= $1 AND day <= $2".into());
        (
            "day".to_owned(),
            "usage_totals",
            "CAST(SUM(requests) AS BIGINT)",
            "fallback_requests",
        )
    } else {
        conds.push("occurred_at_ms >= $1 AND occurred_at_ms < $2".into());
        (
            format!(
                "CAST((occurred_at_ms + ({offset_ms})) {} {unit_ms} AS BIGINT)",
                db.int_div()
            ),
            "usage_ledger",
            "CAST(COUNT(*) AS BIGINT)",
            "priced_by_fallback",
        )
    };
    for (value, col) in [
        (&f.tenant, "tenant"),
        (&f.api_key, "api_key"),
        (&f.account, "account"),
        (&f.model, "model"),
    ] {
        if let Some(v) = value {
            args.push(v.clone());
            conds.push(format!("{col} = ${}", args.len() + 2));
        }
    }
    let text = format!(
        "SELECT {bucket} AS bucket, {dims}, {requests}, \
         CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
         CAST(SUM(cache_read_tokens) AS BIGINT), CAST(SUM(cache_write_5m_tokens) AS BIGINT), \
         CAST(SUM(cache_write_1h_tokens) AS BIGINT), CAST(SUM(cost_nanos) AS BIGINT), \
         CAST(SUM({fallback_col}) AS BIGINT) \
         FROM {from} WHERE {} GROUP BY 1, 2, 3, 4, 5",
        conds.join(" AND ")
    );
    let text = db.sql(&text);
    let mut q = sqlx::query(&text);
    if !from_ledger {
        q = q
            .bind(f.from_day.format("%Y-%m-%d").to_string())
            .bind(f.to_day.format("%Y-%m-%d").to_string());
    } else {
        q = q
            .bind(day_start_ms(f.from_day) - offset_ms)
            .bind(day_start_ms(f.to_day) + DAY_MS - offset_ms);
    }
    for a in args {
        q = q.bind(a);
    }
    type Key = (String, String, String, String, String);
    let mut out: BTreeMap<Key, [i64; 8]> = BTreeMap::new();
    for row in q.fetch_all(db).await? {
        let start = if !from_ledger {
            let s: String = row.try_get(0)?;
            NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .map_err(|e| Error::Corrupt(format!("bad day {s:?}: {e}")))?
                .and_time(chrono::NaiveTime::MIN)
        } else {
            let n: i64 = row.try_get(0)?;
            DateTime::from_timestamp_millis(n * unit_ms)
                .map(|t| t.naive_utc())
                .ok_or_else(|| Error::Corrupt(format!("bad bucket number {n}")))?
        };
        let key = (
            period_key(f.period, start),
            row.try_get::<String, _>(1)?,
            row.try_get::<String, _>(2)?,
            row.try_get::<String, _>(3)?,
            row.try_get::<String, _>(4)?,
        );
        let sums = out.entry(key).or_default();
        for (k, s) in sums.iter_mut().enumerate() {
            *s += row.try_get::<Option<i64>, _>(5 + k)?.unwrap_or(0);
        }
    }
    Ok(out
        .into_iter()
        .map(|((period, tenant, api_key, account, model), s)| {
            UsageRow::of_sums(period, [tenant, api_key, account, model], &s)
        })
        .collect())
}

impl UsageRow {
    /// A row from its period, its dimensions (tenant, key, account, model; empty:
    /// none) and its sums (requests, the five token kinds, cost in nanodollars,
    /// fallback-priced requests).
    fn of_sums(period: String, dims: [String; 4], s: &[i64; 8]) -> Self {
        let [tenant, api_key, account, model] = dims;
        UsageRow {
            period,
            tenant: none_if_empty(tenant),
            api_key: none_if_empty(api_key),
            account: none_if_empty(account),
            model: none_if_empty(model),
            requests: u(s[0]),
            input_tokens: u(s[1]),
            output_tokens: u(s[2]),
            cache_read_tokens: u(s[3]),
            cache_write_5m_tokens: u(s[4]),
            cache_write_1h_tokens: u(s[5]),
            cost: nanos_to_usd(s[6]),
            cost_nanos: s[6],
            fallback_requests: u(s[7]),
        }
    }
}

/// Usage per tenant between two instants (`[from, to)`, exact: any zone's day, DST
/// included), one row per tenant that had usage, labelled `period`, ordered by
/// tenant. Usage without a tenant is left out. For the daily digest: it scans the
/// ledger rows of the range, once a day.
pub async fn tenant_usage_between(
    db: &AnyPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    period: &str,
) -> Result<Vec<UsageRow>, Error> {
    let rows = sqlx::query(&db.sql(
        "SELECT tenant, CAST(COUNT(*) AS BIGINT), \
         CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
         CAST(SUM(cache_read_tokens) AS BIGINT), CAST(SUM(cache_write_5m_tokens) AS BIGINT), \
         CAST(SUM(cache_write_1h_tokens) AS BIGINT), CAST(SUM(cost_nanos) AS BIGINT), \
         CAST(SUM(priced_by_fallback) AS BIGINT) \
         FROM usage_ledger WHERE occurred_at_ms >= $1 AND occurred_at_ms < $2 \
         AND tenant <> '' GROUP BY tenant ORDER BY tenant",
    ))
    .bind(from.timestamp_millis())
    .bind(to.timestamp_millis())
    .fetch_all(db)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut s = [0i64; 8];
        for (k, v) in s.iter_mut().enumerate() {
            *v = row.try_get::<Option<i64>, _>(1 + k)?.unwrap_or(0);
        }
        let tenant: String = row.try_get(0)?;
        let none = String::new;
        out.push(UsageRow::of_sums(
            period.to_owned(),
            [tenant, none(), none(), none()],
            &s,
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------- account status

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

fn ts(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(DateTime::from_timestamp_millis)
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

// ---------------------------------------------------------------- request log

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
    let mut conds = vec!["1 = 1".to_owned()];
    let mut texts: Vec<String> = Vec::new();
    let mut ints: Vec<(usize, i64)> = Vec::new();
    let mut n = 0;
    for (value, col) in [
        (&filter.tenant, "tenant"),
        (&filter.api_key, "api_key"),
        (&filter.account, "account"),
        (&filter.model, "model"),
        (&filter.outcome, "outcome"),
        (&filter.request_id, "request_id"),
        (&filter.rejected_by, "rejected_by"),
    ] {
        if let Some(v) = value {
            n += 1;
            conds.push(format!("{col} = ${n}"));
            texts.push(v.clone());
        }
    }
    let int_conds = [
        (filter.from_ms, "occurred_at_ms >="),
        (filter.to_ms, "occurred_at_ms <"),
        (
            filter
                .before_position
                .map(|p| i64::try_from(p).unwrap_or(i64::MAX)),
            "position <",
        ),
    ];
    for (value, cond) in int_conds {
        if let Some(v) = value {
            n += 1;
            conds.push(format!("{cond} ${n}"));
            ints.push((n, v));
        }
    }
    let text = format!(
        "SELECT {} FROM request_log WHERE {} ORDER BY occurred_at_ms DESC, position DESC LIMIT {}",
        crate::requests::REQUEST_COLUMNS,
        conds.join(" AND "),
        limit
    );
    let text = db.sql(&text);
    let mut q = sqlx::query(&text);
    for t in texts {
        q = q.bind(t);
    }
    for (_, v) in ints {
        q = q.bind(v);
    }
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
    let mut conds = vec![
        "rejected_by > ''".to_owned(),
        "occurred_at_ms >= $1".to_owned(),
        "occurred_at_ms < $2".to_owned(),
    ];
    let mut texts = Vec::new();
    for (value, col) in [(&f.tenant, "tenant"), (&f.api_key, "api_key")] {
        if let Some(v) = value {
            texts.push(v.clone());
            conds.push(format!("{col} = ${}", texts.len() + 2));
        }
    }
    let text = format!(
        "SELECT rejected_by, CAST(COUNT(*) AS BIGINT) FROM request_log WHERE {} \
         GROUP BY rejected_by",
        conds.join(" AND ")
    );
    let text = db.sql(&text);
    let mut q = sqlx::query(&text).bind(f.from_ms).bind(f.to_ms);
    for t in texts {
        q = q.bind(t);
    }
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

// ---------------------------------------------------------------- audit log

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
    let mut conds = vec!["1 = 1".to_owned()];
    let mut n = 0;
    if filter.kind.is_some() {
        n += 1;
        conds.push(format!("kind = ${n}"));
    }
    if filter.actor.is_some() {
        n += 1;
        conds.push(format!("actor = ${n}"));
    }
    for (v, c) in [
        (filter.from_ms, "occurred_at_ms >="),
        (filter.to_ms, "occurred_at_ms <"),
        (
            filter
                .before_position
                .map(|p| i64::try_from(p).unwrap_or(i64::MAX)),
            "position <",
        ),
    ] {
        if v.is_some() {
            n += 1;
            conds.push(format!("{c} ${n}"));
        }
    }
    let text = format!(
        "SELECT {} FROM audit_log WHERE {} ORDER BY occurred_at_ms DESC, position DESC LIMIT {}",
        crate::audit::AUDIT_COLUMNS,
        conds.join(" AND "),
        limit
    );
    let text = db.sql(&text);
    let mut q = sqlx::query(&text);
    if let Some(k) = &filter.kind {
        q = q.bind(k.clone());
    }
    if let Some(a) = &filter.actor {
        q = q.bind(a.clone());
    }
    for v in [
        filter.from_ms,
        filter.to_ms,
        filter
            .before_position
            .map(|p| i64::try_from(p).unwrap_or(i64::MAX)),
    ]
    .into_iter()
    .flatten()
    {
        q = q.bind(v);
    }
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
            summary: r.try_get("summary")?,
            reason: r.try_get("reason")?,
            endpoint: r.try_get("endpoint")?,
            key_prefix: r.try_get("key_prefix")?,
            client_addr: r.try_get("client_addr")?,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------- statement

/// One line of a statement: a model's tokens at one set of unit prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementLine {
    /// Model as reported.
    pub model: String,
    /// Price-table version.
    pub price_version: String,
    /// Price entry used (`>N` marks a long-context tier).
    pub price_key: String,
    /// Priced by the unknown-model fallback.
    pub priced_by_fallback: bool,
    /// Unit prices, USD per million tokens, multipliers applied.
    pub unit_prices: UnitPrices,
    /// Usage events.
    pub requests: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// 5-minute cache-write tokens.
    pub cache_write_5m_tokens: u64,
    /// 1-hour cache-write tokens.
    pub cache_write_1h_tokens: u64,
    /// Cost of the tokens, USD (the sum of the events' costs less their server-tool
    /// charges, which have their own lines).
    pub cost: Decimal,
    /// Cost in nanodollars.
    pub cost_nanos: i64,
    /// The usage event ids behind this line, sorted.
    pub event_ids: Vec<String>,
}

/// One line of a statement: a server tool billed per use, at one price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerToolLine {
    /// The tool (`web_search`).
    pub tool: String,
    /// Price-table version.
    pub price_version: String,
    /// USD per use.
    pub unit_price: Decimal,
    /// Usage events with uses.
    pub requests: u64,
    /// Uses.
    pub uses: u64,
    /// Cost, USD.
    pub cost: Decimal,
    /// Cost in nanodollars.
    pub cost_nanos: i64,
    /// The usage event ids behind this line, sorted.
    pub event_ids: Vec<String>,
}

/// One line of a statement: upstream attempts of a model whose usage is unknown (the
/// relay died while they ran; see `Completeness::Unknown`). They carry no tokens and
/// no cost, and are listed so that nothing upstream may have billed is silently
/// missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownUsageLine {
    /// Model requested.
    pub model: String,
    /// Attempts.
    pub attempts: u64,
    /// The usage event ids behind this line, sorted.
    pub event_ids: Vec<String>,
}

/// Totals of a statement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatementTotals {
    /// Usage events.
    pub requests: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// 5-minute cache-write tokens.
    pub cache_write_5m_tokens: u64,
    /// 1-hour cache-write tokens.
    pub cache_write_1h_tokens: u64,
    /// Web searches.
    pub web_search_requests: u64,
    /// Web fetches (billed by their tokens only).
    pub web_fetch_requests: u64,
    /// Cost of the server-tool lines, USD.
    pub server_tool_cost: Decimal,
    /// Cost, USD: every line, server tools included.
    pub cost: Decimal,
    /// Cost in nanodollars.
    pub cost_nanos: i64,
    /// Usage events priced by the unknown-model fallback.
    pub fallback_priced_events: u64,
    /// Attempts whose usage is unknown (not in `requests`; see the unknown lines).
    pub unknown_usage_attempts: u64,
}

/// A tenant's monthly statement (UTC month).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// The tenant.
    pub tenant: String,
    /// `YYYY-MM`.
    pub month: String,
    /// Currency of every amount.
    pub currency: String,
    /// Token lines ordered by model, price version, price key, unit prices.
    pub lines: Vec<StatementLine>,
    /// Server-tool lines ordered by tool, price version, unit price.
    pub server_tool_lines: Vec<ServerToolLine>,
    /// Attempts of unknown usage, by model.
    pub unknown_usage_lines: Vec<UnknownUsageLine>,
    /// Sums over the lines.
    pub totals: StatementTotals,
}

/// Parses `YYYY-MM` into the first and last day of the month.
pub fn month_range(month: &str) -> Result<(NaiveDate, NaiveDate), Error> {
    let first = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
        .map_err(|_| Error::InvalidInput(format!("month {month:?} is not YYYY-MM")))?;
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    };
    let last = next
        .and_then(|d| d.pred_opt())
        .ok_or_else(|| Error::InvalidInput(format!("month {month:?} is out of range")))?;
    Ok((first, last))
}

fn dec(s: &str) -> Result<Decimal, Error> {
    Decimal::from_str(s).map_err(|e| Error::Corrupt(format!("bad unit price {s:?}: {e}")))
}

/// The server-tool part of a stored cost: the cost less its token part recomputed from
/// the stored unit prices (the pricing adds per-use charges to the token part after
/// rounding it, so this is exact). Zero when the event made no searches, or when the
/// remainder does not fit them (rows priced before searches were).
fn server_tool_nanos(
    units: &UnitPrices,
    tokens: [u64; 5],
    searches: u64,
    cost_nanos: i64,
) -> Result<i64, Error> {
    if searches == 0 {
        return Ok(0);
    }
    let t = Tokens {
        input: tokens[0],
        output: tokens[1],
        cache_read: tokens[2],
        cache_write_5m: tokens[3],
        cache_write_1h: tokens[4],
    };
    let rest = cost_nanos - usd_to_nanos(token_cost_rounded(units, t))?;
    let uses = i64::try_from(searches).unwrap_or(i64::MAX);
    Ok(if rest >= 0 && rest % uses == 0 {
        rest
    } else {
        0
    })
}

/// The statement of `tenant` for `month` (`YYYY-MM`, UTC), built from the usage ledger:
/// a line per model and unit prices, a line per server tool and per-use price. The
/// total is the exact sum of the per-event costs.
pub async fn statement(db: &AnyPool, tenant: &str, month: &str) -> Result<Statement, Error> {
    let (first, last) = month_range(month)?;
    let rows = sqlx::query(&db.sql(
        "SELECT model, price_version, price_key, priced_by_fallback, unit_input, unit_output, \
         unit_cache_read, unit_cache_write_5m, unit_cache_write_1h, event_id, input_tokens, \
         output_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, \
         cost_nanos, web_search_requests, web_fetch_requests, completeness FROM usage_ledger \
         WHERE tenant = $1 AND day >= $2 AND day <= $3 ORDER BY event_id",
    ))
    .bind(tenant)
    .bind(first.format("%Y-%m-%d").to_string())
    .bind(last.format("%Y-%m-%d").to_string())
    .fetch_all(db)
    .await?;
    type Key = (String, String, String, i64, [String; 5]);
    let mut lines: BTreeMap<Key, StatementLine> = BTreeMap::new();
    let mut tool_lines: BTreeMap<(String, String, Decimal), ServerToolLine> = BTreeMap::new();
    let mut totals = StatementTotals::default();
    let mut unknown: BTreeMap<String, UnknownUsageLine> = BTreeMap::new();
    for r in rows {
        let completeness: String = r.try_get(18)?;
        if completeness == "unknown" {
            let model: String = r.try_get(0)?;
            let line = unknown
                .entry(model.clone())
                .or_insert_with(|| UnknownUsageLine {
                    model,
                    attempts: 0,
                    event_ids: Vec::new(),
                });
            line.attempts += 1;
            line.event_ids.push(r.try_get(9)?);
            totals.unknown_usage_attempts += 1;
            continue;
        }
        let units: [String; 5] = [
            r.try_get(4)?,
            r.try_get(5)?,
            r.try_get(6)?,
            r.try_get(7)?,
            r.try_get(8)?,
        ];
        let key: Key = (
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            units,
        );
        let tokens: [u64; 5] = [
            u(r.try_get(10)?),
            u(r.try_get(11)?),
            u(r.try_get(12)?),
            u(r.try_get(13)?),
            u(r.try_get(14)?),
        ];
        let cost_nanos: i64 = r.try_get(15)?;
        let searches = u(r.try_get(16)?);
        let event_id: String = r.try_get(9)?;
        totals.web_search_requests += searches;
        totals.web_fetch_requests += u(r.try_get(17)?);
        let line = match lines.entry(key) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let k = v.key().clone();
                v.insert(StatementLine {
                    model: k.0,
                    price_version: k.1,
                    price_key: k.2,
                    priced_by_fallback: k.3 != 0,
                    unit_prices: UnitPrices {
                        input: dec(&k.4[0])?,
                        output: dec(&k.4[1])?,
                        cache_read: dec(&k.4[2])?,
                        cache_write_5m: dec(&k.4[3])?,
                        cache_write_1h: dec(&k.4[4])?,
                    },
                    requests: 0,
                    input_tokens: 0,
                    output_tokens: 0,
                    cache_read_tokens: 0,
                    cache_write_5m_tokens: 0,
                    cache_write_1h_tokens: 0,
                    cost: Decimal::ZERO,
                    cost_nanos: 0,
                    event_ids: Vec::new(),
                })
            }
        };
        let tool_nanos = server_tool_nanos(&line.unit_prices, tokens, searches, cost_nanos)?;
        line.requests += 1;
        line.input_tokens += tokens[0];
        line.output_tokens += tokens[1];
        line.cache_read_tokens += tokens[2];
        line.cache_write_5m_tokens += tokens[3];
        line.cache_write_1h_tokens += tokens[4];
        line.cost_nanos += cost_nanos - tool_nanos;
        line.event_ids.push(event_id.clone());
        if searches > 0 {
            let unit = (nanos_to_usd(tool_nanos) / Decimal::from(searches)).normalize();
            let version = line.price_version.clone();
            let tool = tool_lines
                .entry(("web_search".to_owned(), version.clone(), unit))
                .or_insert_with(|| ServerToolLine {
                    tool: "web_search".to_owned(),
                    price_version: version,
                    unit_price: unit,
                    requests: 0,
                    uses: 0,
                    cost: Decimal::ZERO,
                    cost_nanos: 0,
                    event_ids: Vec::new(),
                });
            tool.requests += 1;
            tool.uses += searches;
            tool.cost_nanos += tool_nanos;
            tool.event_ids.push(event_id);
        }
        totals.requests += 1;
        totals.input_tokens += tokens[0];
        totals.output_tokens += tokens[1];
        totals.cache_read_tokens += tokens[2];
        totals.cache_write_5m_tokens += tokens[3];
        totals.cache_write_1h_tokens += tokens[4];
        totals.cost_nanos += cost_nanos;
        if line.priced_by_fallback {
            totals.fallback_priced_events += 1;
        }
    }
    totals.cost = nanos_to_usd(totals.cost_nanos);
    let lines = lines
        .into_values()
        .map(|mut l| {
            l.cost = nanos_to_usd(l.cost_nanos);
            l
        })
        .collect();
    let server_tool_lines: Vec<ServerToolLine> = tool_lines
        .into_values()
        .map(|mut l| {
            l.cost = nanos_to_usd(l.cost_nanos);
            l
        })
        .collect();
    totals.server_tool_cost = nanos_to_usd(server_tool_lines.iter().map(|l| l.cost_nanos).sum());
    Ok(Statement {
        tenant: tenant.to_owned(),
        month: month.to_owned(),
        currency: "USD".to_owned(),
        lines,
        server_tool_lines,
        unknown_usage_lines: unknown.into_values().collect(),
        totals,
    })
}

impl Statement {
    /// CSV: a header, one row per token line, one per server-tool line (`model` names
    /// the tool, `price_key` is `per_use`, and `uses` / `unit_per_use_usd` are filled),
    /// then a `TOTAL` row. Event ids are space-separated.
    pub fn to_csv(&self) -> String {
        fn esc(s: &str) -> String {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_owned()
            }
        }
        let mut out = String::from(
            "tenant,month,model,price_version,price_key,priced_by_fallback,requests,\
             input_tokens,output_tokens,cache_read_tokens,cache_write_5m_tokens,\
             cache_write_1h_tokens,unit_input_usd_per_mtok,unit_output_usd_per_mtok,\
             unit_cache_read_usd_per_mtok,unit_cache_write_5m_usd_per_mtok,\
             unit_cache_write_1h_usd_per_mtok,cost_usd,event_ids,uses,unit_per_use_usd\n",
        );
        for l in &self.lines {
            let cells = [
                esc(&self.tenant),
                esc(&self.month),
                esc(&l.model),
                esc(&l.price_version),
                esc(&l.price_key),
                l.priced_by_fallback.to_string(),
                l.requests.to_string(),
                l.input_tokens.to_string(),
                l.output_tokens.to_string(),
                l.cache_read_tokens.to_string(),
                l.cache_write_5m_tokens.to_string(),
                l.cache_write_1h_tokens.to_string(),
                l.unit_prices.input.to_string(),
                l.unit_prices.output.to_string(),
                l.unit_prices.cache_read.to_string(),
                l.unit_prices.cache_write_5m.to_string(),
                l.unit_prices.cache_write_1h.to_string(),
                l.cost.to_string(),
                l.event_ids.join(" "),
                String::new(),
                String::new(),
            ];
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        for l in &self.server_tool_lines {
            let mut cells = vec![
                esc(&self.tenant),
                esc(&self.month),
                esc(&l.tool),
                esc(&l.price_version),
                "per_use".to_owned(),
                "false".to_owned(),
                l.requests.to_string(),
            ];
            cells.extend(std::iter::repeat_n(String::new(), 10));
            cells.extend([
                l.cost.to_string(),
                l.event_ids.join(" "),
                l.uses.to_string(),
                l.unit_price.to_string(),
            ]);
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        for l in &self.unknown_usage_lines {
            let mut cells = vec![
                esc(&self.tenant),
                esc(&self.month),
                esc(&l.model),
                String::new(),
                "unknown_usage".to_owned(),
                "false".to_owned(),
                l.attempts.to_string(),
            ];
            cells.extend(std::iter::repeat_n(String::new(), 10));
            cells.extend([
                "0".to_owned(),
                l.event_ids.join(" "),
                String::new(),
                String::new(),
            ]);
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        let t = &self.totals;
        let cells = [
            esc(&self.tenant),
            esc(&self.month),
            "TOTAL".to_owned(),
            String::new(),
            String::new(),
            (t.fallback_priced_events > 0).to_string(),
            t.requests.to_string(),
            t.input_tokens.to_string(),
            t.output_tokens.to_string(),
            t.cache_read_tokens.to_string(),
            t.cache_write_5m_tokens.to_string(),
            t.cache_write_1h_tokens.to_string(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            t.cost.to_string(),
            String::new(),
            t.web_search_requests.to_string(),
            String::new(),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
        out
    }
}

// ---------------------------------------------------------------- lag

/// Checkpoint and lag of one projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectionLag {
    /// Projection name.
    pub projection: String,
    /// Last applied position.
    pub checkpoint: u64,
    /// Log head.
    pub head: u64,
    /// `head − checkpoint`.
    pub behind: u64,
}

/// Lag of each named projection against `log`.
pub async fn lag(
    db: &AnyPool,
    log: &dyn EventLog,
    projections: &[&str],
) -> Result<Vec<ProjectionLag>, Error> {
    let head = log.head().await?;
    let mut out = Vec::with_capacity(projections.len());
    for name in projections {
        let checkpoint = runner::checkpoint(db, name).await?;
        out.push(ProjectionLag {
            projection: (*name).to_owned(),
            checkpoint,
            head,
            behind: head.saturating_sub(checkpoint),
        });
    }
    Ok(out)
}

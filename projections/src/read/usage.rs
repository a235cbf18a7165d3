//! Usage totals: bucketed by hour or day in a display offset, grouped by any of
//! tenant, key, account and model.

use super::{day_start_ms, day_str, none_if_empty, u, DAY_MS, HOUR_MS};
use crate::money::nanos_to_usd;
use crate::Dialect as _;
use crate::{sql, Error};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;

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
    let (from_day, to_day) = (day_str(f.from_day), day_str(f.to_day));
    let (bucket, from, requests, fallback_col, w) = if !from_ledger {
        (
            "day".to_owned(),
            "usage_totals",
            "CAST(SUM(requests) AS BIGINT)",
            "fallback_requests",
            sql::Where::default()
                .text("day >=", Some(&from_day))
                .text("day <=", Some(&to_day)),
        )
    } else {
        (
            format!(
                "CAST((occurred_at_ms + ({offset_ms})) {} {unit_ms} AS BIGINT)",
                db.int_div()
            ),
            "usage_ledger",
            "CAST(COUNT(*) AS BIGINT)",
            "priced_by_fallback",
            sql::Where::default()
                .int(
                    "occurred_at_ms >=",
                    Some(day_start_ms(f.from_day) - offset_ms),
                )
                .int(
                    "occurred_at_ms <",
                    Some(day_start_ms(f.to_day) + DAY_MS - offset_ms),
                ),
        )
    };
    let w = w
        .text("tenant =", f.tenant.as_ref())
        .text("api_key =", f.api_key.as_ref())
        .text("account =", f.account.as_ref())
        .text("model =", f.model.as_ref());
    let text = format!(
        "SELECT {bucket} AS bucket, {dims}, {requests}, \
         CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
         CAST(SUM(cache_read_tokens) AS BIGINT), CAST(SUM(cache_write_5m_tokens) AS BIGINT), \
         CAST(SUM(cache_write_1h_tokens) AS BIGINT), CAST(SUM(cost_nanos) AS BIGINT), \
         CAST(SUM({fallback_col}) AS BIGINT) \
         FROM {from} WHERE {} GROUP BY 1, 2, 3, 4, 5",
        w.clause()
    );
    let text = db.sql(&text);
    let q = w.bind(sqlx::query(&text));
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

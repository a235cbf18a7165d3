//! The daily digest: once a day, after the day ended in `BILLING_TIMEZONE` (and the
//! configured hour of the next day passed), one notice per tenant that had usage
//! that day, with its requests, tokens and exact cost. No IO; the time is passed in.
//!
//! A digest's id is derived from tenant and day, so it is written once and sent once
//! whatever restarts, lost cursors or rebuilds happen in between.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use projections::notifications::{Notice, OutboxRow, DIGEST_KIND};
use projections::read::UsageRow;
use std::collections::BTreeMap;

/// How many past days a notifier catches up on after being away.
pub const CATCH_UP_DAYS: u64 = 7;

/// The days whose digest is due at `now`, oldest first: those after `done` (the last
/// day made), up to the last day that ended at least `hour` hours ago (local time),
/// at most [`CATCH_UP_DAYS`] of them. Without `done` (the first run), only that last
/// day: a new relay does not send digests for history.
pub fn due_days(now: DateTime<Utc>, tz: Tz, hour: u32, done: Option<NaiveDate>) -> Vec<NaiveDate> {
    let local = now.with_timezone(&tz);
    let today = local.date_naive();
    let back = if local.time() >= NaiveTime::from_hms_opt(hour.min(23), 0, 0).unwrap_or_default() {
        1
    } else {
        2
    };
    let Some(latest) = today.checked_sub_days(Days::new(back)) else {
        return Vec::new();
    };
    let earliest = latest
        .checked_sub_days(Days::new(CATCH_UP_DAYS - 1))
        .unwrap_or(latest);
    let first = match done {
        None => latest,
        Some(d) => d.succ_opt().unwrap_or(d).max(earliest),
    };
    first.iter_days().take_while(|d| *d <= latest).collect()
}

/// The day's bounds, `[start, end)`, in `tz` (23 or 25 hours on DST changes).
pub fn day_bounds(day: NaiveDate, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = local_midnight(day, tz);
    let end = local_midnight(day.succ_opt().unwrap_or(day), tz);
    (start, end)
}

/// The instant a local date begins; past a DST gap at midnight, the first instant
/// that exists.
fn local_midnight(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = day.and_time(NaiveTime::MIN);
    for _ in 0..4 {
        if let Some(local) = tz.from_local_datetime(&t).earliest() {
            return local.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(30);
    }
    t.and_utc()
}

/// The digest id of a tenant's day.
pub fn digest_id(tenant: &str, day: NaiveDate) -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("relay:digest.daily:{tenant}:{day}").as_bytes(),
    )
}

/// The outbox row of one tenant's day (`usage.tenant` names the tenant).
pub fn digest_row(day: NaiveDate, tz: Tz, usage: &UsageRow) -> OutboxRow {
    let tenant = usage.tenant.clone().unwrap_or_default();
    let (_, end) = day_bounds(day, tz);
    let tokens = usage.input_tokens
        + usage.output_tokens
        + usage.cache_read_tokens
        + usage.cache_write_5m_tokens
        + usage.cache_write_1h_tokens;
    let mut details: BTreeMap<&'static str, serde_json::Value> = BTreeMap::new();
    details.insert("day", day.to_string().into());
    details.insert("timezone", tz.name().into());
    details.insert("requests", usage.requests.into());
    details.insert("input_tokens", usage.input_tokens.into());
    details.insert("output_tokens", usage.output_tokens.into());
    details.insert("cache_read_tokens", usage.cache_read_tokens.into());
    details.insert("cache_write_5m_tokens", usage.cache_write_5m_tokens.into());
    details.insert("cache_write_1h_tokens", usage.cache_write_1h_tokens.into());
    details.insert("tokens", tokens.into());
    // Exact, as the usage read model gives it: a string, never a float.
    details.insert("cost_usd", usage.cost.to_string().into());
    details.insert("fallback_requests", usage.fallback_requests.into());
    let notice = Notice {
        kind: DIGEST_KIND,
        severity: "info",
        title: format!("Usage of {tenant} on {day}"),
        message: format!(
            "{tenant} on {day} ({}): {} requests, {tokens} tokens, ${}.",
            tz.name(),
            usage.requests,
            usage.cost
        ),
        details,
    };
    OutboxRow::new(
        digest_id(&tenant, day).to_string(),
        end.timestamp_millis(),
        notice,
        tenant,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn a_day_is_due_once_it_ended_and_the_hour_passed_in_the_billing_zone() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        /// (now, zone, digest hour, last day made) → days due
        type Case<'a> = (&'a str, Tz, u32, Option<&'a str>, &'a [&'a str]);
        let cases: [Case<'_>; 9] = [
            // UTC, hour 1: at 00:30 the day before yesterday, at 01:00 yesterday.
            ("2026-11-03T00:30:00Z", Tz::UTC, 1, None, &["2026-11-01"]),
            ("2026-11-03T01:00:00Z", Tz::UTC, 1, None, &["2026-11-02"]),
            ("2026-11-03T00:00:00Z", Tz::UTC, 0, None, &["2026-11-02"]),
            // Already made: nothing.
            ("2026-11-03T12:00:00Z", Tz::UTC, 1, Some("2026-11-02"), &[]),
            // Away for two days: both, oldest first.
            (
                "2026-11-03T12:00:00Z",
                Tz::UTC,
                1,
                Some("2026-10-31"),
                &["2026-11-01", "2026-11-02"],
            ),
            // Away for a month: the last week only.
            (
                "2026-11-10T12:00:00Z",
                Tz::UTC,
                1,
                Some("2026-10-01"),
                &[
                    "2026-11-03",
                    "2026-11-04",
                    "2026-11-05",
                    "2026-11-06",
                    "2026-11-07",
                    "2026-11-08",
                    "2026-11-09",
                ],
            ),
            // 23:30 UTC is 00:30 the next day in Berlin (winter, UTC+1).
            ("2026-11-02T23:30:00Z", berlin, 0, None, &["2026-11-02"]),
            ("2026-11-02T23:30:00Z", Tz::UTC, 0, None, &["2026-11-01"]),
            ("2026-11-02T23:30:00Z", berlin, 1, None, &["2026-11-01"]),
        ];
        for (now, tz, hour, done, want) in cases {
            let got = due_days(at(now), tz, hour, done.map(d));
            let want: Vec<NaiveDate> = want.iter().map(|s| d(s)).collect();
            assert_eq!(got, want, "{now} in {tz} at hour {hour} after {done:?}");
        }
    }

    #[test]
    fn days_are_local_and_dst_days_have_their_real_length() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let (s, e) = day_bounds(d("2026-11-03"), berlin);
        assert_eq!(s, at("2026-11-02T23:00:00Z"));
        assert_eq!(e, at("2026-11-03T23:00:00Z"));
        // 2026-10-25: clocks go back, 25 hours.
        let (s, e) = day_bounds(d("2026-10-25"), berlin);
        assert_eq!((e - s).num_hours(), 25);
        let (s, e) = day_bounds(d("2026-03-29"), berlin);
        assert_eq!((e - s).num_hours(), 23);
    }

    #[test]
    fn a_digest_row_carries_the_days_figures_exactly_under_a_stable_id() {
        let usage = UsageRow {
            period: "2026-11-03".into(),
            tenant: Some("tenant_a".into()),
            api_key: None,
            account: None,
            model: None,
            requests: 3,
            input_tokens: 100,
            output_tokens: 20,
            cache_read_tokens: 5,
            cache_write_5m_tokens: 2,
            cache_write_1h_tokens: 1,
            cost: Decimal::from_str("0.001234567").unwrap(),
            cost_nanos: 1_234_567,
            fallback_requests: 0,
        };
        let row = digest_row(d("2026-11-03"), Tz::UTC, &usage);
        assert_eq!(row.kind, "digest.daily");
        assert_eq!(row.audience, "tenant");
        assert_eq!(row.tenant, "tenant_a");
        assert_eq!(
            row.event_id,
            digest_id("tenant_a", d("2026-11-03")).to_string()
        );
        assert_ne!(
            row.event_id,
            digest_id("tenant_b", d("2026-11-03")).to_string()
        );
        assert_ne!(
            row.event_id,
            digest_id("tenant_a", d("2026-11-04")).to_string()
        );
        assert_eq!(
            row.occurred_at_ms,
            at("2026-11-04T00:00:00Z").timestamp_millis()
        );
        let details: serde_json::Value = serde_json::from_str(&row.details).unwrap();
        assert_eq!(details["cost_usd"], "0.001234567");
        assert_eq!(details["tokens"], 128);
        assert_eq!(details["requests"], 3);
        assert_eq!(details["day"], "2026-11-03");
        assert_eq!(
            row.message,
            "tenant_a on 2026-11-03 (UTC): 3 requests, 128 tokens, $0.001234567."
        );
        assert_eq!(digest_row(d("2026-11-03"), Tz::UTC, &usage), row);
    }
}

//! Budget windows: calendar days, weeks and months in a time zone, DST included. No
//! IO; the time is passed in.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// A budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A calendar day.
    Daily,
    /// A calendar week starting on the configured day.
    Weekly,
    /// A calendar month.
    Monthly,
    /// Forever.
    Total,
}

impl Period {
    /// Spelling in scopes and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Total => "total",
        }
    }
}

/// The window containing `now`: `[start, end)`; `end` is `None` for `Total`.
pub fn bounds(
    period: Period,
    now: DateTime<Utc>,
    tz: Tz,
    week_start: Weekday,
) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
    let today = now.with_timezone(&tz).date_naive();
    let (first, next) = match period {
        Period::Total => return (DateTime::<Utc>::MIN_UTC, None),
        Period::Daily => (today, today.checked_add_days(Days::new(1))),
        Period::Weekly => {
            let back = (7 + today.weekday().num_days_from_monday()
                - week_start.num_days_from_monday())
                % 7;
            let first = today
                .checked_sub_days(Days::new(u64::from(back)))
                .unwrap_or(today);
            (first, first.checked_add_days(Days::new(7)))
        }
        Period::Monthly => {
            let first = today.with_day(1).unwrap_or(today);
            (first, first.checked_add_months(Months::new(1)))
        }
    };
    (
        local_midnight(first, tz),
        next.map(|d| local_midnight(d, tz)),
    )
}

/// The instant a local date begins. Where midnight does not exist (a DST gap at
/// 00:00), the first instant of the day that does.
fn local_midnight(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..4 {
        if let Some(local) = tz.from_local_datetime(&t).earliest() {
            return local.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(30);
    }
    t.and_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn windows_follow_the_zone_and_its_dst_changes() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let ny: Tz = "America/New_York".parse().unwrap();
        let cases = [
            // (period, now, zone, week start, start, end)
            (
                Period::Daily,
                "2026-03-15T10:00:00Z",
                chrono_tz::UTC,
                Weekday::Mon,
                "2026-03-15T00:00:00Z",
                Some("2026-03-16T00:00:00Z"),
            ),
            // Berlin is UTC+1 in winter: its day starts at 23:00 UTC the day before.
            (
                Period::Daily,
                "2026-01-10T23:30:00Z",
                berlin,
                Weekday::Mon,
                "2026-01-10T23:00:00Z",
                Some("2026-01-11T23:00:00Z"),
            ),
            // The day clocks spring forward (29 March 2026) is 23 hours long.
            (
                Period::Daily,
                "2026-03-29T12:00:00Z",
                berlin,
                Weekday::Mon,
                "2026-03-28T23:00:00Z",
                Some("2026-03-29T22:00:00Z"),
            ),
            // The day clocks fall back (1 November 2026 in New York) is 25 hours long.
            (
                Period::Daily,
                "2026-11-01T12:00:00Z",
                ny,
                Weekday::Mon,
                "2026-11-01T04:00:00Z",
                Some("2026-11-02T05:00:00Z"),
            ),
            // 2026-12-02 is a Wednesday.
            (
                Period::Weekly,
                "2026-12-02T12:00:00Z",
                chrono_tz::UTC,
                Weekday::Mon,
                "2026-11-30T00:00:00Z",
                Some("2026-12-07T00:00:00Z"),
            ),
            (
                Period::Weekly,
                "2026-12-02T12:00:00Z",
                chrono_tz::UTC,
                Weekday::Sun,
                "2026-11-29T00:00:00Z",
                Some("2026-12-06T00:00:00Z"),
            ),
            (
                Period::Weekly,
                "2026-11-30T00:00:00Z",
                chrono_tz::UTC,
                Weekday::Mon,
                "2026-11-30T00:00:00Z",
                Some("2026-12-07T00:00:00Z"),
            ),
            (
                Period::Monthly,
                "2026-12-31T23:59:59Z",
                chrono_tz::UTC,
                Weekday::Mon,
                "2026-12-01T00:00:00Z",
                Some("2027-01-01T00:00:00Z"),
            ),
            // 23:30 UTC on 31 January is already February in Berlin.
            (
                Period::Monthly,
                "2026-01-31T23:30:00Z",
                berlin,
                Weekday::Mon,
                "2026-01-31T23:00:00Z",
                Some("2026-02-28T23:00:00Z"),
            ),
        ];
        for (period, now, tz, ws, start, end) in cases {
            let (s, e) = bounds(period, utc(now), tz, ws);
            assert_eq!(s, utc(start), "{period:?} {now} {tz}");
            assert_eq!(e, end.map(utc), "{period:?} {now} {tz}");
        }
        assert_eq!(
            bounds(
                Period::Total,
                utc("2026-01-01T00:00:00Z"),
                berlin,
                Weekday::Mon
            )
            .1,
            None
        );
    }

    #[test]
    fn a_daily_window_resets_at_local_midnight() {
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        let before = bounds(
            Period::Daily,
            utc("2026-06-01T14:59:59Z"),
            tokyo,
            Weekday::Mon,
        );
        let after = bounds(
            Period::Daily,
            utc("2026-06-01T15:00:00Z"),
            tokyo,
            Weekday::Mon,
        );
        assert_eq!(before.1, Some(after.0));
        assert_eq!(after.0, utc("2026-06-01T15:00:00Z"));
    }
}

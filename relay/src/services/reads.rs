//! The read side over HTTP: usage, rejections by limit, statements, the request log,
//! the audit log and the service status, all from the projections. A `user` reads only
//! their own tenant.

use super::{Actor, ServiceError, Services};
use chrono::{NaiveDate, Offset, TimeZone, Utc};
use projections::read::{
    self, AuditEntry, AuditFilter, GroupBy, Period, RejectionCount, RejectionFilter,
    RequestLogEntry, RequestLogFilter, Statement, UsageFilter, UsageRow,
};
use serde::Serialize;

/// Query of `GET /api/v1/usage`, as typed.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    /// First day `YYYY-MM-DD` (default: 29 days before `to`).
    pub from: Option<String>,
    /// Last day `YYYY-MM-DD` (default: today in `tz`).
    pub to: Option<String>,
    /// `hour`, `day`, `month`, `year` or `total`.
    pub granularity: Option<String>,
    /// Comma list of `tenant`, `key`, `account`, `model`.
    pub group_by: Option<String>,
    /// `UTC`, an offset (`+08:00`) or an IANA zone (its offset at `from`).
    pub tz: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this key.
    pub api_key: Option<String>,
    /// Only this account.
    pub account: Option<String>,
    /// Only this model.
    pub model: Option<String>,
}

/// Answer of `GET /api/v1/usage`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageAnswer {
    /// First day.
    pub from: NaiveDate,
    /// Last day.
    pub to: NaiveDate,
    /// Bucket size.
    #[schema(value_type = super::schemas::Period)]
    pub granularity: Period,
    /// Display offset in minutes east of UTC.
    pub tz_offset_minutes: i32,
    /// Rows.
    #[schema(value_type = Vec<super::schemas::UsageRow>)]
    pub items: Vec<UsageRow>,
}

/// Query of `GET /api/v1/usage/rejections`, as typed.
#[derive(Debug, Clone, Default)]
pub struct RejectionQuery {
    /// First day `YYYY-MM-DD` (default: 29 days before `to`).
    pub from: Option<String>,
    /// Last day `YYYY-MM-DD` (default: today in `tz`).
    pub to: Option<String>,
    /// `UTC`, an offset (`+08:00`) or an IANA zone (its offset at `from`).
    pub tz: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this key.
    pub api_key: Option<String>,
}

/// Answer of `GET /api/v1/usage/rejections`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RejectionsAnswer {
    /// First day.
    pub from: NaiveDate,
    /// Last day.
    pub to: NaiveDate,
    /// Display offset in minutes east of UTC.
    pub tz_offset_minutes: i32,
    /// Requests refused by any limit.
    pub total: u64,
    /// Per limit, most first.
    #[schema(value_type = Vec<super::schemas::RejectionCount>)]
    pub items: Vec<RejectionCount>,
}

/// A range of whole days in a display zone, parsed from a query.
struct DayRange {
    from: NaiveDate,
    to: NaiveDate,
    tz_offset_minutes: i32,
}

impl DayRange {
    /// `from` defaults to 29 days before `to`, `to` to today in `tz`.
    fn parse(
        from: Option<&str>,
        to: Option<&str>,
        tz: Option<&str>,
    ) -> Result<DayRange, ServiceError> {
        let tz = tz.unwrap_or("UTC");
        let now = Utc::now();
        let to = match to {
            Some(s) => day("to", s)?,
            None => {
                let offset = tz_offset(tz, now.date_naive())?;
                (now + chrono::Duration::minutes(i64::from(offset))).date_naive()
            }
        };
        let from = from
            .map(|s| day("from", s))
            .transpose()?
            .unwrap_or_else(|| to - chrono::Duration::days(29));
        if from > to {
            return Err(bad("from must not be after to"));
        }
        if (to - from).num_days() > 3660 {
            return Err(bad("the range must be at most ten years"));
        }
        let tz_offset_minutes = tz_offset(tz, from)?;
        Ok(DayRange {
            from,
            to,
            tz_offset_minutes,
        })
    }

    /// The range as epoch milliseconds, end exclusive.
    fn millis(&self) -> (i64, i64) {
        let start = |d: NaiveDate| d.and_time(chrono::NaiveTime::MIN).and_utc();
        let offset = i64::from(self.tz_offset_minutes) * 60_000;
        (
            start(self.from).timestamp_millis() - offset,
            start(self.to + chrono::Duration::days(1)).timestamp_millis() - offset,
        )
    }
}

fn bad(m: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(m.into())
}

fn day(what: &str, s: &str) -> Result<NaiveDate, ServiceError> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| bad(format!("{what} must be a date YYYY-MM-DD")))
}

/// Parses a display zone into a fixed offset in minutes, at `at`.
pub fn tz_offset(tz: &str, at: NaiveDate) -> Result<i32, ServiceError> {
    let tz = tz.trim();
    if tz.is_empty() || tz.eq_ignore_ascii_case("utc") || tz == "Z" {
        return Ok(0);
    }
    if let Some(sign) = tz.chars().next().filter(|c| *c == '+' || *c == '-') {
        let rest = &tz[1..];
        let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
        let (h, m): (i32, i32) = (
            h.parse()
                .map_err(|_| bad("tz offset must look like +08:00"))?,
            m.parse()
                .map_err(|_| bad("tz offset must look like +08:00"))?,
        );
        if h > 14 || m > 59 {
            return Err(bad("tz offset out of range"));
        }
        let v = h * 60 + m;
        return Ok(if sign == '-' { -v } else { v });
    }
    let zone: chrono_tz::Tz = tz
        .parse()
        .map_err(|_| bad("tz must be UTC, an offset like +08:00 or an IANA zone name"))?;
    let noon = at.and_hms_opt(12, 0, 0).unwrap_or_default();
    let off = zone.offset_from_utc_datetime(&noon).fix().local_minus_utc();
    Ok(off / 60)
}

impl Services {
    /// The tenant a read is limited to: the user's own; an admin's choice. A user
    /// naming another tenant gets "not found".
    fn read_scope(
        &self,
        actor: &Actor,
        asked: Option<String>,
    ) -> Result<Option<String>, ServiceError> {
        match actor.tenant_scope() {
            None => Ok(asked.filter(|t| !t.is_empty())),
            Some(own) => match asked.filter(|t| !t.is_empty()) {
                Some(t) if t != own.as_str() => Err(ServiceError::NotFound("tenant")),
                _ => Ok(Some(own.as_str().to_owned())),
            },
        }
    }

    /// Usage totals.
    pub async fn usage(&self, actor: &Actor, q: UsageQuery) -> Result<UsageAnswer, ServiceError> {
        let tenant = self.read_scope(actor, q.tenant)?;
        let DayRange {
            from,
            to,
            tz_offset_minutes,
        } = DayRange::parse(q.from.as_deref(), q.to.as_deref(), q.tz.as_deref())?;
        let period = match q.granularity.as_deref().unwrap_or("day") {
            "hour" => Period::Hour,
            "day" => Period::Day,
            "month" => Period::Month,
            "year" => Period::Year,
            "total" => Period::Total,
            _ => return Err(bad("granularity must be hour, day, month, year or total")),
        };
        if period == Period::Hour && (to - from).num_days() > 30 {
            return Err(bad("hour granularity takes a range of at most 31 days"));
        }
        let mut group_by = GroupBy::default();
        for g in q
            .group_by
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
        {
            match g {
                "tenant" => group_by.tenant = true,
                "key" | "api_key" => group_by.api_key = true,
                "account" => group_by.account = true,
                "model" => group_by.model = true,
                _ => return Err(bad("group_by takes tenant, key, account and model")),
            }
        }
        for (what, v) in [
            ("api_key", &q.api_key),
            ("account", &q.account),
            ("model", &q.model),
        ] {
            if v.as_ref().is_some_and(|v| v.len() > 256) {
                return Err(bad(format!("{what} is too long")));
            }
        }
        let filter = UsageFilter {
            tenant,
            api_key: q.api_key,
            account: q.account,
            model: q.model,
            from_day: from,
            to_day: to,
            period,
            group_by,
            tz_offset_minutes,
        };
        let items = read::usage_totals(&self.db, &filter).await?;
        Ok(UsageAnswer {
            from,
            to,
            granularity: period,
            tz_offset_minutes,
            items,
        })
    }

    /// Requests refused by a tenant limit, counted per limit, over whole days.
    pub async fn rejections(
        &self,
        actor: &Actor,
        q: RejectionQuery,
    ) -> Result<RejectionsAnswer, ServiceError> {
        let tenant = self.read_scope(actor, q.tenant)?;
        if q.api_key.as_ref().is_some_and(|v| v.len() > 256) {
            return Err(bad("api_key is too long"));
        }
        let range = DayRange::parse(q.from.as_deref(), q.to.as_deref(), q.tz.as_deref())?;
        let (from_ms, to_ms) = range.millis();
        let filter = RejectionFilter {
            tenant,
            api_key: q.api_key,
            from_ms,
            to_ms,
        };
        let items = read::rejections(&self.db, &filter).await?;
        Ok(RejectionsAnswer {
            from: range.from,
            to: range.to,
            tz_offset_minutes: range.tz_offset_minutes,
            total: items.iter().map(|c| c.requests).sum(),
            items,
        })
    }

    /// A tenant's monthly statement.
    pub async fn statement(
        &self,
        actor: &Actor,
        tenant: Option<String>,
        month: Option<&str>,
    ) -> Result<Statement, ServiceError> {
        let tenant = self
            .read_scope(actor, tenant)?
            .ok_or_else(|| bad("tenant is required"))?;
        let month = month
            .map(str::to_owned)
            .unwrap_or_else(|| Utc::now().format("%Y-%m").to_string());
        if month.len() != 7 || read::month_range(&month).is_err() {
            return Err(bad("month must be YYYY-MM"));
        }
        Ok(read::statement(&self.db, &tenant, &month).await?)
    }

    /// The newest requests, newest first; page with `before_position`.
    pub async fn request_log(
        &self,
        actor: &Actor,
        mut filter: RequestLogFilter,
        limit: u32,
    ) -> Result<Vec<RequestLogEntry>, ServiceError> {
        filter.tenant = self.read_scope(actor, filter.tenant.take())?;
        Ok(read::request_log(&self.db, &filter, limit).await?)
    }

    /// The audit log (admin).
    pub async fn audit_log(
        &self,
        actor: &Actor,
        filter: AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, ServiceError> {
        actor.require_admin()?;
        Ok(read::audit_log(&self.db, &filter, limit).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_zones_become_offsets() {
        let winter = NaiveDate::from_ymd_opt(2026, 1, 15).unwrap();
        let summer = NaiveDate::from_ymd_opt(2026, 7, 15).unwrap();
        assert_eq!(tz_offset("UTC", winter).unwrap(), 0);
        assert_eq!(tz_offset("+08:00", winter).unwrap(), 480);
        assert_eq!(tz_offset("-05:30", winter).unwrap(), -330);
        assert_eq!(tz_offset("Europe/Berlin", winter).unwrap(), 60);
        assert_eq!(tz_offset("Europe/Berlin", summer).unwrap(), 120);
        assert!(tz_offset("Mars/Olympus", winter).is_err());
        assert!(tz_offset("+25:00", winter).is_err());
    }

    #[test]
    fn a_day_range_covers_whole_local_days() {
        let r = DayRange::parse(Some("2026-11-02"), Some("2026-11-03"), Some("+02:00")).unwrap();
        let (from, to) = r.millis();
        let utc = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis()
        };
        assert_eq!(from, utc("2026-11-01T22:00:00Z"));
        assert_eq!(to, utc("2026-11-03T22:00:00Z"));
        assert!(DayRange::parse(Some("2026-11-04"), Some("2026-11-03"), None).is_err());
    }
}

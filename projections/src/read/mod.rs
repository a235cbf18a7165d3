//! Queries over the read models, for the admin API, the CLI and the bench harness.
//!
//! These functions only read; they never apply events. Amounts come back as exact
//! `Decimal` dollars (scale 9) next to the raw nanodollars.
//!
//! One module per read model: [`usage`] (totals), [`accounts`] (status), [`requests`]
//! (the request log, refusals per limit), [`audit`], [`statement`] (monthly
//! statements); lag here. Filters become `WHERE` clauses through one builder
//! (`sql::Where`); every statement goes through `Dialect::sql`.

mod accounts;
mod audit;
mod requests;
mod statement;
mod usage;

pub use accounts::*;
pub use audit::*;
pub use requests::*;
pub use statement::*;
pub use usage::*;

use crate::{runner, Error};
use chrono::{DateTime, NaiveDate, Utc};
use ingest::EventLog;
use serde::Serialize;
use sqlx::AnyPool;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn none_if_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn day_str(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

fn day_start_ms(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or(0)
}

fn ts(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(DateTime::from_timestamp_millis)
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

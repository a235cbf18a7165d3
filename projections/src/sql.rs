//! Small helpers for hand-written, portable SQL.

use chrono::{DateTime, Utc};
use std::fmt::Write as _;

/// How a backend spells bind parameters in the multi-row statements built here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Params {
    /// `$1, $2, …` (PostgreSQL, which binds by position).
    Numbered,
    /// `?, ?, …` (SQLite). sqlx resolves a *named* SQLite parameter (`$N`, `?N`) by
    /// asking SQLite for its name, a linear scan of the statement's names, so binding
    /// n of them costs n²/2 string comparisons (a third of a replay's CPU at 300 per
    /// statement). Anonymous parameters bind in order at constant cost.
    Anonymous,
}

impl Params {
    /// The style of `conn`'s backend.
    pub(crate) fn of(conn: &sqlx::AnyConnection) -> Self {
        Self::for_backend(conn.backend_name())
    }

    /// The style of `pool`'s backend.
    pub(crate) fn of_pool(pool: &sqlx::AnyPool) -> Result<Self, crate::Error> {
        Ok(match crate::Backend::of(pool)? {
            crate::Backend::Postgres => Params::Numbered,
            crate::Backend::Sqlite | crate::Backend::MySql => Params::Anonymous,
        })
    }

    /// The style of a backend named as sqlx names it (`"PostgreSQL"`, `"SQLite"`).
    pub(crate) fn for_backend(name: &str) -> Self {
        if name.eq_ignore_ascii_case("postgresql") {
            Params::Numbered
        } else {
            Params::Anonymous
        }
    }

    /// Rows per multi-row statement of `cols` columns.
    ///
    /// Both backends bind in linear time with these styles; big statements save round
    /// trips (to SQLite's worker thread, or to the PostgreSQL server). PostgreSQL
    /// allows 65535 parameters and SQLite (3.32+) 32766; 8000 stays far below both.
    pub(crate) fn rows_per_statement(self, cols: usize) -> usize {
        (8_000 / cols.max(1)).max(1)
    }

    /// `($1,$2,…),(…)` or `(?,?,…),(…)` for `rows` rows of `cols` columns; the only
    /// parameters of the statement.
    pub(crate) fn values(self, rows: usize, cols: usize) -> String {
        let mut s = String::with_capacity(rows * cols * 6);
        let mut n = 1;
        for r in 0..rows {
            if r > 0 {
                s.push(',');
            }
            s.push('(');
            for c in 0..cols {
                if c > 0 {
                    s.push(',');
                }
                self.push(&mut s, n);
                n += 1;
            }
            s.push(')');
        }
        s
    }

    /// `$1,$2,…` or `?,?,…` (`count` placeholders), for an `IN (…)` list that is the
    /// statement's only parameters.
    pub(crate) fn list(self, count: usize) -> String {
        let mut s = String::with_capacity(count * 6);
        for n in 1..=count {
            if n > 1 {
                s.push(',');
            }
            self.push(&mut s, n);
        }
        s
    }

    fn push(self, s: &mut String, n: usize) {
        match self {
            Params::Numbered => {
                let _ = write!(s, "${n}");
            }
            Params::Anonymous => s.push('?'),
        }
    }
}

/// The UTC day of a timestamp, `YYYY-MM-DD`.
pub(crate) fn day_of(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// Tokens and counters are `u64` in events and BIGINT in SQL; real counts never reach
/// 2^63, and saturating keeps a corrupt event from wrapping negative.
pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An optional id as stored: absent is `''`.
pub(crate) fn opt<T: std::fmt::Display>(v: Option<&T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// The snake_case wire name of a unit enum (`Outcome`, `HealthState`, …).
pub(crate) fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert_eq!(Params::Numbered.values(2, 2), "($1,$2),($3,$4)");
        assert_eq!(Params::Anonymous.values(2, 2), "(?,?),(?,?)");
        assert_eq!(Params::Numbered.list(2), "$1,$2");
        assert_eq!(Params::Anonymous.list(3), "?,?,?");
        assert_eq!(Params::for_backend("PostgreSQL"), Params::Numbered);
        assert_eq!(Params::for_backend("SQLite"), Params::Anonymous);
    }
}
